"""MedMNIST loading: offline-first, md5-verified, and fast enough to train on a CPU.

Two paths to the same images:

* :func:`load_medmnist` returns medmnist's own ``Dataset`` (PIL images, one per ``__getitem__``),
  after finding the file offline and verifying its md5 against medmnist's ``INFO``.
* :func:`load_arrays` / :class:`TensorLoader` hold a whole split as one uint8 tensor and turn each
  batch into floats in [-1, 1] on the training device: no PIL, no per-item Python. This is what
  ``fit`` trains on (``benchmarks/data_throughput.py`` measures both).

Introduced in ``notebooks/00_getting_started.ipynb``.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..utils import REPO_ROOT

SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)


class DataNotFoundError(FileNotFoundError):
    """A MedMNIST file is in none of the searched folders."""


class DataIntegrityError(ValueError):
    """A MedMNIST file exists but is truncated, corrupt or not the official one."""


def _info():
    from medmnist import INFO

    return INFO


def medmnist_2d_names() -> list[str]:
    """Every 2D MedMNIST flag (``pneumoniamnist``, ``bloodmnist``...)."""
    return sorted(k for k, v in _info().items() if not k.endswith("3d") and "n_channels" in v)


def dataset_info(name: str) -> dict:
    """medmnist's ``INFO`` entry for ``name`` (labels, task, channels, licence, md5, urls)."""
    _check_name(name)
    return dict(_info()[name])


def _check_name(name: str) -> None:
    names = medmnist_2d_names()
    if name not in names:
        raise ValueError(f"unknown MedMNIST 2D data set {name!r}; valid names: {', '.join(names)}")


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise ValueError(f"unknown MedMNIST size {size!r}; valid sizes: {', '.join(map(str, SIZES))}")


def file_name(name: str, size: int = 28) -> str:
    """``breastmnist.npz`` for 28 px, ``breastmnist_64.npz`` for 64 px (medmnist's names)."""
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def search_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched, in order: ``root``, ``$MEDMNIST_ROOT``, ``data/medmnist/``, ``~/.medmnist``."""
    roots = []
    if root is not None:
        roots.append(Path(root))
    if os.environ.get("MEDMNIST_ROOT"):
        roots.append(Path(os.environ["MEDMNIST_ROOT"]))
    roots += [REPO_ROOT / "data" / "medmnist", Path.home() / ".medmnist"]
    out: list[Path] = []
    for r in roots:
        r = r.expanduser().resolve()
        if r not in out:
            out.append(r)
    return out


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=64)
def _verified(path: str, mtime_ns: int, size_bytes: int, expected: str) -> bool:
    # Cached per (path, mtime, size): the md5 is computed once per file per process.
    return _md5(Path(path)) == expected


def find_medmnist(name: str, size: int = 28, root: str | os.PathLike | None = None,
                  download: bool = False, verify: bool = True) -> Path:
    """Path of a verified MedMNIST file, searching the roots in order (see :func:`search_roots`).

    With ``download=True`` a file found nowhere is downloaded (md5-verified, atomically; see
    :func:`~medgan_utils.data.fetch.fetch_medmnist_file`) into ``root``, else ``data/medmnist/``.

    Raises:
        ValueError: unknown name or size (the message lists the valid ones).
        DataNotFoundError: in no searched folder; the message lists them and how to get the file.
        DataIntegrityError: found, but its md5 differs from medmnist's INFO (truncated/altered).
    """
    _check_name(name)
    _check_size(size)
    fname = file_name(name, size)
    roots = search_roots(root)
    for r in roots:
        candidate = r / fname
        if candidate.is_file():
            if verify:
                verify_file(candidate, name, size)
            return candidate
    reason = ""
    if download:
        from .fetch import FetchError, fetch_medmnist_file  # fetch imports this module

        # Never into $MEDMNIST_ROOT, which may be a read-only shared copy.
        target = Path(root) if root is not None else REPO_ROOT / "data" / "medmnist"
        try:
            fetch_medmnist_file(name, size, target)
        except FetchError as err:
            reason = f"The download failed: {err}\n"
        else:
            return find_medmnist(name, size, target, download=False, verify=verify)
    searched = "\n".join(f"  - {r / fname}" for r in roots)
    url = dataset_info(name).get("url" if size == 28 else f"url_{size}", "?")
    raise DataNotFoundError(
        f"MedMNIST file {fname} not found. Searched:\n{searched}\n{reason}"
        f"Fix one of these ways:\n"
        f"  * point MEDMNIST_ROOT at a folder that holds {fname} "
        f"(e.g. export MEDMNIST_ROOT=../shared/data/medmnist), or copy it into data/medmnist/;\n"
        f"  * when online, download it: medgan download {name} --size {size}\n"
        f"    (or python -c \"import medmnist; medmnist.{_info()[name]['python_class']}"
        f"(split='train', size={size}, root='data/medmnist', download=True)\");\n"
        f"  * the course's files (and its other data sets) at once: make data;\n"
        f"  * or fetch {url} by hand into data/medmnist/."
    )


def verify_file(path: str | os.PathLike, name: str, size: int = 28) -> None:
    """Check ``path`` against the official md5 in medmnist's INFO (medmnist itself only checks
    when it downloads). Raises :class:`DataIntegrityError` with what to do."""
    path = Path(path)
    key = "MD5" if size == 28 else f"MD5_{size}"
    expected = dataset_info(name).get(key)
    if expected is None:
        return
    st = path.stat()
    if not _verified(str(path), st.st_mtime_ns, st.st_size, expected):
        kind = "truncated or corrupt" if not zipfile.is_zipfile(path) else "altered"
        raise DataIntegrityError(
            f"{path} is {kind}: its md5 is {_md5(path)}, the official {name} ({size} px) file "
            f"has md5 {expected} ({st.st_size} bytes here). Delete it and copy the official file "
            f"again (see data/README.md)."
        )


def _dataset_class(name: str):
    import medmnist

    return getattr(medmnist, _info()[name]["python_class"])


def load_medmnist(name: str, split: str = "train", size: int = 28,
                  root: str | os.PathLike | None = None, download: bool = False, **kwargs):
    """medmnist's own ``Dataset`` for one split, found offline and md5-verified first.

    Args:
        name: a 2D MedMNIST flag, e.g. ``"pneumoniamnist"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: 28, 64, 128 or 224.
        root: folder to search first (then ``$MEDMNIST_ROOT``, ``data/medmnist/``, ``~/.medmnist``).
        download: fetch through medmnist when the file is missing (needs the internet).
        **kwargs: passed to the medmnist class (``transform``, ``as_rgb``, ``mmap_mode``).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = find_medmnist(name, size, root, download)
    return _dataset_class(name)(split=split, size=size, root=str(path.parent), **kwargs)


@dataclass(frozen=True)
class Arrays:
    """One split held in memory: ``images`` uint8 (N, H, W) or (N, H, W, 3), ``labels`` int64 (N,)
    (multi-label sets keep (N, L))."""

    name: str
    split: str
    size: int
    images: np.ndarray
    labels: np.ndarray
    # Label names of a data set that is not MedMNIST (chapter 07's {0: "CT", 1: "MRI"}).
    classes: dict[int, str] | None = None

    @property
    def n_channels(self) -> int:
        return 1 if self.images.ndim == 3 else self.images.shape[-1]

    @property
    def class_names(self) -> dict[int, str]:
        if self.classes is not None:
            return dict(self.classes)
        return {int(k): v for k, v in dataset_info(self.name)["label"].items()}

    def __len__(self) -> int:
        return len(self.images)

    def tensors(self) -> torch.Tensor:
        """All images as float (N, C, H, W) in [-1, 1] (small sets only: 4 bytes/pixel)."""
        return to_float(torch.from_numpy(self.images))


def load_arrays(name: str, split: str = "train", size: int = 28,
                root: str | os.PathLike | None = None, download: bool = False) -> Arrays:
    """A whole split as numpy arrays (no PIL), md5-verified, labels squeezed for single-label
    tasks. See :func:`load_medmnist` for the arguments."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = find_medmnist(name, size, root, download)
    try:
        with np.load(path) as npz:
            images = npz[f"{split}_images"]
            labels = npz[f"{split}_labels"]
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as err:
        raise DataIntegrityError(f"{path} could not be read as a MedMNIST file: {err}") from None
    if dataset_info(name)["task"] != "multi-label, binary-class":
        labels = labels.reshape(len(labels), -1)[:, 0]
    return Arrays(name, split, size, images, labels.astype(np.int64))


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) or (B, H, W, C) -> float32 (B, C, H, W) in [-1, 1]."""
    x = images_u8.unsqueeze(1) if images_u8.ndim == 3 else images_u8.permute(0, 3, 1, 2)
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W) or (B, H, W, C), MedMNIST's layout."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x[:, 0] if x.shape[1] == 1 else x.permute(0, 2, 3, 1)
    return x.contiguous().numpy()


def mix_seed(*keys: int) -> int:
    """One 64-bit seed that depends only on ``keys``, e.g. ``(seed, epoch, step)``.

    NumPy's ``SeedSequence`` mixes the keys, so neighbouring keys ((0, 1, 2) and (0, 2, 1)) give
    unrelated streams, which a linear formula such as ``seed * 100_003 + epoch`` does not promise
    once there are three keys.
    """
    entropy = [int(k) % 2**64 for k in keys]  # SeedSequence takes non-negative integers only
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`mix_seed` of ``keys``.

    Draws made with it leave the global RNG alone and can be repeated after a resume without
    replaying anything before them.
    """
    return torch.Generator().manual_seed(mix_seed(*keys))


class _Batches:
    """Which rows each batch holds, epoch after epoch, and where the iteration stands.

    The bookkeeping every loader of this package shares: one epoch per ``__iter__``, ``len()``
    batches per epoch, and a position saved by ``state_dict`` so that a resumed run continues
    with exactly the batches an uninterrupted one would. A subclass turns the row indices of
    :meth:`_steps` into tensors.

    Args:
        n: number of rows (images or pairs).
        batch_size: rows per batch (the expected number with ``sampling="poisson"``).
        seed: fixes every epoch's order (and every Poisson draw).
        drop_last: leave out the last, smaller batch of an epoch (shuffle sampling only).
        shuffle: a new random order each epoch, else 0..n-1 every epoch.
        sampling: ``"shuffle"`` (each row once per epoch) or ``"poisson"`` (each row in each
            batch independently with probability ``batch_size / n``, see :class:`TensorLoader`).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, drop_last: bool = True,
                 shuffle: bool = True, sampling: str = "shuffle"):
        if n == 0:
            raise ValueError(f"{type(self).__name__} got an empty image array")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if sampling not in ("shuffle", "poisson"):
            raise ValueError(f"sampling must be 'shuffle' or 'poisson', got {sampling!r}")
        if sampling == "poisson":
            if not shuffle:
                raise ValueError("sampling='poisson' draws random batches by definition; "
                                 "leave shuffle=True")
            if batch_size > n:
                raise ValueError(f"sampling='poisson' needs batch_size <= number of images "
                                 f"({n}): the rate batch_size / N is a probability")
        self.n = n
        self.batch_size = min(batch_size, n) if drop_last else batch_size
        self.seed, self.drop_last, self.shuffle, self.sampling = seed, drop_last, shuffle, sampling
        self.epoch, self.position = 0, 0
        self._cached_order: tuple[tuple[int, int], torch.Tensor] | None = None

    @property
    def sample_rate(self) -> float:
        """Probability q that a given image is in a given batch: ``batch_size / N``.

        With ``sampling="poisson"`` this is the q of the privacy accountant (Opacus'
        ``sample_rate``); with shuffling it is the average rate.
        """
        return self.batch_size / self.n

    def __len__(self) -> int:
        if self.sampling == "poisson" or self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def _indices(self, epoch: int, step: int) -> torch.Tensor:
        """int64 (B,) CPU row indices of batch ``step`` of ``epoch`` (B varies under Poisson)."""
        if self.sampling == "poisson":
            # One fresh generator per step, so any step can be redrawn alone after a resume.
            gen = seeded_generator(self.seed, epoch, step)
            return torch.nonzero(torch.rand(self.n, generator=gen) < self.sample_rate).squeeze(1)
        key = (self.seed, epoch)
        if self._cached_order is None or self._cached_order[0] != key:
            # One permutation per epoch, not per batch.
            self._cached_order = (key, self._order(epoch))
        return self._cached_order[1][step * self.batch_size:(step + 1) * self.batch_size]

    def _steps(self):
        """One epoch from the saved position: yields ``(epoch, step, indices)``."""
        if self.position >= len(self):
            # State saved right after an epoch's last batch: that epoch is done, start the next
            # (else the first pass after a resume would be empty and fit() would stop).
            self.epoch, self.position = self.epoch + 1, 0
        epoch = self.epoch
        for step in range(self.position, len(self)):
            self.position = step + 1
            yield epoch, step, self._indices(epoch, step)
        self.epoch, self.position = epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])


class TensorLoader(_Batches):
    """Shuffled mini-batches of a uint8 image array, converted to [-1, 1] on ``device``.

    The whole split is one uint8 tensor (on the device when it fits), so a batch costs one index
    and one multiply: the training fast path. Shuffling depends only on ``seed`` and the epoch,
    and the position is saved in checkpoints (``state_dict``), so a resumed run sees exactly the
    batches an uninterrupted one would.

    ``sampling="poisson"`` is the sampling that differential-privacy accounting assumes (Opacus'
    ``DPDataLoader``): each of the ``len()`` = N // batch_size steps of an epoch includes every
    image independently with probability ``sample_rate`` = batch_size / N, so batch sizes vary
    around ``batch_size`` and a batch can be empty (then ``(0, C, H, W)`` and ``(0,)`` tensors
    are yielded, as Opacus does; a model trained on them must accept an empty batch, which is
    why this mode is for DP training only). Each step's draw comes from a generator seeded by
    ``(seed, epoch, step)``, so it is repeatable and resumes exactly; ``drop_last`` has no effect.

    Args:
        images: uint8 (N, H, W) or (N, H, W, C), MedMNIST's layout.
        labels: (N,) or (N, L) integer labels; None gives zeros.
        batch_size: images per batch (the expected number with Poisson sampling).
        device: where batches are yielded (and the array is held).
        seed: fixes every epoch's order and every Poisson draw.
        drop_last: leave out the last, smaller batch of an epoch.
        shuffle: a new order each epoch (False: 0..N-1; not allowed with Poisson sampling).
        sampling: ``"shuffle"`` (default: each image once per epoch) or ``"poisson"``.

    Yields:
        ``(images, labels)``: float (B, C, H, W) in [-1, 1] and int64 (B,) on ``device``.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | None = None,
                 batch_size: int = 64, device: torch.device | str = "cpu", seed: int = 0,
                 drop_last: bool = True, shuffle: bool = True, sampling: str = "shuffle"):
        imgs = torch.as_tensor(images)
        if imgs.dtype != torch.uint8:
            raise TypeError(f"TensorLoader expects uint8 images, got {imgs.dtype}")
        n = len(imgs)
        super().__init__(n, batch_size, seed, drop_last, shuffle, sampling)
        self.device = torch.device(device)
        self.images = imgs.to(self.device)
        lab = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
        self.labels = lab.to(self.device)

    def __iter__(self):
        for _, _, idx in self._steps():
            idx = idx.to(self.device)
            yield to_float(self.images[idx]), self.labels[idx]
