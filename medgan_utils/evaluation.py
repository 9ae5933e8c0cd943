"""Judging a generator against held-out images *of its own training distribution*, in two spaces.

:func:`medgan_utils.metrics.evaluate` scores fakes and its floor against the test split. On
PneumoniaMNIST the test split is shifted away from train/val (FD val vs test ~2.9 in the
classifier's features), and that shift swamps the generators' differences: the DCGAN and the
WGAN-GP both score FD/floor ~0.55 there, although their sample grids are not equal (issue #8).
This module scores them where the ranking is visible:

* **Reference** (:func:`reference_split`): the validation split when it has >= 500 images
  (PneumoniaMNIST: 524); otherwise a seeded, class-stratified half of the training split
  (BreastMNIST: validation has 78 images, too few for a stable FD of 64-128-d features). The
  **floor** is the rest of the training split (:func:`training_part`) against that reference at
  equal n. Distance to the test split stays available as ``test_shift_fd`` / ``floor_test_fd``
  (the split's shift), never the headline. Every result says which reference it used.
* **Two feature spaces**: ``"classifier"`` (the shipped ResNet extractor, penultimate features)
  and ``"autoencoder"`` (the bottleneck of a small autoencoder trained without labels on the
  training split, :mod:`medgan_utils.models.autoencoder`), so no single network's blind spot
  decides.
* **Feature cache**: real-set features are cached per (feature space, checkpoint bytes' hash,
  data set, split, size) in memory and under ``runs/feature_cache/`` (safetensors, atomic
  writes; git-ignored), and the floor per n; scoring 2,000 fakes then costs two forward passes
  and the metrics (``benchmarks/eval_speed.py``).
* :func:`calibration_battery`: known-worse sets (noise, blur, down-then-up sampling, intensity
  shift, one class only) must score above the floor and monotonically in their severity, exact
  copies of training images must be caught. ``tests/test_evaluation.py`` asserts it.

Honest caveat for BreastMNIST: the shipped BreastMNIST generators (and the classifier extractor)
were trained on *all* of the training split, so its held-out half is not unseen by them. We keep
it anyway, as the least bad option: its distribution is the generator's own (the validation split
is the same distribution but, at 78 images, its FD is dominated by small-n bias; the test split is
the same size problem twice over), and the floor (the other half) was seen by the generator and the
extractor just as much, so fakes and floor are compared on equal terms. What it cannot show is a
generator that copies: memorization is therefore always measured against the validation split,
the only real images no generator saw (``frac_closer_to_train``, ``copy_frac``). A generator
trained for this protocol on :func:`training_part` only would make the reference truly unseen.

Introduced for ``notebooks/03_wgan_gp.ipynb`` (issue #8, section 1).
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import load_checkpoint, read_metadata, save_checkpoint, write_atomic
from .data import (
    Arrays,
    TensorLoader,
    downsample,
    gaussian_blur,
    gaussian_noise,
    stratified_subset,
    upsample,
)
from .data.ct import load_split
from .metrics import copy_fraction, extract_features, frechet_distance, kid, memorization, prdc
from .models.autoencoder import Autoencoder, AutoencoderConfig, AutoencoderModel
from .train import FitConfig, fit
from .utils import CHECKPOINT_DIR, RUNS_DIR

__all__ = [
    "SPACES", "autoencoder_path", "calibration_battery", "clear_cache", "fd_to_reference", "feature_space",
    "generator_training_arrays",
    "load_autoencoder", "membership_audit", "real_features", "reference_split", "reference_table",
    "score_generator",
    "train_autoencoder", "training_part",
]

SPACES = ("classifier", "autoencoder")
FEATURE_CACHE_DIR = RUNS_DIR / "feature_cache"
# A validation split smaller than this gives FDs dominated by small-n bias (BreastMNIST: 78).
MIN_VAL_REFERENCE = 500
# Share of the training split held out as the reference when validation is too small.
HELDOUT_FRACTION = 0.5
HELDOUT_SEED = 0

# ----------------------------------------------------------------------------------------------
# The label-free feature space: train, ship, load
# ----------------------------------------------------------------------------------------------


def autoencoder_path(dataset: str, size: int = 28, root: str | os.PathLike | None = None) -> Path:
    """Where the shipped autoencoder for ``dataset`` at ``size`` px lives."""
    return Path(root or CHECKPOINT_DIR) / f"autoencoder_{dataset}_{size}.safetensors"


@torch.no_grad()
def _recon_mse(net: Autoencoder, x: torch.Tensor, batch_size: int = 512) -> float:
    net.eval()
    total = sum(float(net.reconstruction_loss(x[i:i + batch_size])) * len(x[i:i + batch_size])
                for i in range(0, len(x), batch_size))
    return total / len(x)


def train_autoencoder(
    dataset: str,
    size: int = 28,
    *,
    steps: int = 3000,
    batch_size: int = 128,
    seed: int = 0,
    config: AutoencoderConfig | None = None,
    path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Train the label-free feature space on the whole training split through ``fit``; save it.

    All of the training split, like the classifier extractor, so that the floor's images and (for
    BreastMNIST) the held-out reference half are equally familiar to both feature networks.
    The validation split only measures reconstruction error (stored in the header).

    Args:
        dataset: MedMNIST flag, e.g. ``"pneumoniamnist"``.
        size: image side in px.
        steps: AdamW updates (batches of ``batch_size``).
        seed: weight init and batch order.
        config: network and optimiser settings (defaults for the data set's channels/size).
        path: where to save (default :func:`autoencoder_path`).
        device: training device.
        progress: show fit's progress bar.

    Returns:
        ``(path, facts)``: the checkpoint and what its header records (``val_mse``,
        ``train_mse``, ``train_seconds``...).
    """
    tr, va = load_split(dataset, "train", size), load_split(dataset, "val", size)
    torch.manual_seed(seed)
    net = Autoencoder(config or AutoencoderConfig(channels=tr.n_channels, image_size=size))
    model = AutoencoderModel(net, device)
    loader = TensorLoader(tr.images, None, batch_size, device, seed=seed)
    t0 = time.perf_counter()
    hist = fit(model, loader, FitConfig(steps=steps, log_every=max(1, steps // 20), ckpt_every=0,
                                        resume=False), progress=progress)
    seconds = time.perf_counter() - t0
    net.cpu()
    train_x, val_x = tr.tensors(), va.tensors()
    net.set_feature_stats(train_x)
    net.eval()
    facts = {
        "dataset": dataset, "size": size, "trained_on": f"train split, all {len(tr)} images",
        "steps": steps, "batch_size": batch_size, "seed": seed,
        "train_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
        "train_mse": _recon_mse(net, train_x), "val_mse": _recon_mse(net, val_x),
        "final_loss": hist.records[-1]["loss"] if hist.records else float("nan"),
    }
    out = save_checkpoint(path or autoencoder_path(dataset, size), {"net": net},
                          metadata={"autoencoder": net.config.to_dict(), **facts})
    return out, facts


def load_autoencoder(dataset: str, size: int = 28, device: torch.device | str = "cpu",
                     root: str | os.PathLike | None = None) -> Autoencoder:
    """The shipped autoencoder feature space (offline: reads ``checkpoints/``, downloads nothing).

    Raises:
        FileNotFoundError: none shipped for ``dataset``/``size``; the message names the call
            that trains one.
    """
    path = autoencoder_path(dataset, size, root)
    if not path.exists():
        raise FileNotFoundError(
            f"no autoencoder for {dataset} at {size} px ({path}). Train one (a few CPU minutes) with:\n"
            f"  python -c \"from medgan_utils.evaluation import train_autoencoder; "
            f"train_autoencoder('{dataset}', {size})\"")
    meta = read_metadata(path)
    net = Autoencoder(AutoencoderConfig(**meta["autoencoder"]))
    load_checkpoint(path, {"net": net})
    return net.to(device).eval()


def _checkpoint_of(space: str, dataset: str, size: int) -> Path:
    from .classify import extractor_path

    if space == "classifier":
        return extractor_path(dataset, size)
    if space == "autoencoder":
        return autoencoder_path(dataset, size)
    raise ValueError(f"unknown feature space {space!r}; use one of {SPACES}")


@functools.lru_cache(maxsize=16)
def _network(space: str, dataset: str, size: int, key: str) -> nn.Module:
    # ``key`` (the checkpoint's hash) is part of the cache key so a retrained file is reloaded.
    from .classify import load_extractor

    net = load_extractor(dataset, size) if space == "classifier" else load_autoencoder(dataset, size)
    # channels_last lets oneDNN pick its fast CPU convolutions: 2.5x faster for the ResNet
    # extractor on 2 cores (4 s instead of 11 s for 2,000 images), same features up to rounding.
    return net.eval().to(memory_format=torch.channels_last)


def network_features(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Features (N, F) of images (N, C, H, W) in [-1, 1], fed channels_last like the network."""
    return extract_features(net, images.contiguous(memory_format=torch.channels_last), 500)


@functools.lru_cache(maxsize=64)
def _file_hash(path: str, mtime_ns: int, size_bytes: int) -> str:
    # Keyed on (mtime, size) so the bytes are hashed once per version of the file (~10 ms).
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def feature_space(space: str, dataset: str, size: int = 28) -> tuple[nn.Module, str]:
    """The network of a feature space and its identity (hash of its checkpoint's bytes).

    Args:
        space: ``"classifier"`` or ``"autoencoder"``.

    Returns:
        ``(network, key)``: a module with ``features(x) -> (B, F)`` in eval mode on the CPU, and
        a 16-hex-digit key that changes whenever the checkpoint file does.
    """
    path = _checkpoint_of(space, dataset, size)
    if not path.exists():  # let the loaders raise their explanatory errors
        _network.__wrapped__(space, dataset, size, "")
    st = path.stat()
    key = _file_hash(str(path), st.st_mtime_ns, st.st_size)
    return _network(space, dataset, size, key), key


# ----------------------------------------------------------------------------------------------
# Which real images: reference, the generator's training part, and their cached features
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    ref_split: str
    ref_idx: np.ndarray | None  # rows of ref_split; None = all
    train_idx: np.ndarray  # rows of "train" forming the generator's training part (the floor)
    code: str
    description: str


@functools.lru_cache(maxsize=16)
def _arrays(dataset: str, split: str, size: int):
    return load_split(dataset, split, size)


@functools.lru_cache(maxsize=16)
def _plan(dataset: str, size: int) -> _Plan:
    n_val = len(_arrays(dataset, "val", size))
    labels = _arrays(dataset, "train", size).labels
    if n_val >= MIN_VAL_REFERENCE:
        return _Plan("val", None, np.arange(len(labels)), "val",
                     f"{dataset} validation split (n={n_val}); floor: training split")
    held = stratified_subset(labels, HELDOUT_FRACTION, seed=HELDOUT_SEED)
    rest = np.setdiff1d(np.arange(len(labels)), held)
    return _Plan("train", held, rest, f"train-heldout{HELDOUT_FRACTION:g}-seed{HELDOUT_SEED}",
                 f"{dataset}: class-stratified {HELDOUT_FRACTION:.0%} of the training split "
                 f"(seed {HELDOUT_SEED}, n={len(held)}; validation has only {n_val} images); "
                 f"floor: the other {len(rest)} training images")


def reference_split(dataset: str, size: int = 28) -> tuple[torch.Tensor, str]:
    """The real images a generator of ``dataset`` is judged against, and a description.

    The validation split when it has >= ``MIN_VAL_REFERENCE`` (500) images, else a seeded,
    class-stratified ``HELDOUT_FRACTION`` of the training split (see the module docstring for
    what that means for generators trained on all of train).

    Returns:
        ``(images, description)``: float (N, C, H, W) in [-1, 1] and a sentence saying which
        images they are (print it beside every number).
    """
    p = _plan(dataset, size)
    arr = _arrays(dataset, p.ref_split, size)
    images = arr.images if p.ref_idx is None else arr.images[p.ref_idx]
    return _to_float(images), p.description


def training_part(dataset: str, size: int = 28) -> tuple[torch.Tensor, np.ndarray]:
    """The training images that are *not* the reference: the floor's pool and the battery's source.

    Returns:
        ``(images, labels)``: float (N, C, H, W) in [-1, 1] and int64 (N,).
    """
    p = _plan(dataset, size)
    arr = _arrays(dataset, "train", size)
    return _to_float(arr.images[p.train_idx]), arr.labels[p.train_idx]


def generator_training_arrays(train: Arrays) -> Arrays:
    """The images a generator judged by this module should train on: all of ``train`` when the
    reference is the validation split, else :func:`training_part`'s rows (so the reference half
    is truly unseen by the generator; see the module docstring)."""
    if train.split != "train":
        raise ValueError(f"expected the training split, got {train.name}/{train.split}")
    p = _plan(train.name, train.size)
    if p.ref_split != "train":
        return train
    return replace(train, images=train.images[p.train_idx], labels=train.labels[p.train_idx])


def _to_float(images_u8: np.ndarray) -> torch.Tensor:
    from .data import to_float

    return to_float(torch.from_numpy(np.ascontiguousarray(images_u8)))


_MEMORY: dict[tuple, Any] = {}


def clear_cache(disk: bool = False) -> None:
    """Forget cached features and floors (in memory; with ``disk`` also ``runs/feature_cache/``)."""
    _MEMORY.clear()
    if disk and FEATURE_CACHE_DIR.is_dir():
        for f in FEATURE_CACHE_DIR.glob("*.safetensors"):
            f.unlink()


def _save_features(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    # Another process (a notebook, a test worker) may read the same file: never show it half-written.
    write_atomic(path, lambda tmp: save_file(tensors, tmp))


def real_features(space: str, dataset: str, split: str, size: int = 28) -> torch.Tensor:
    """Features (N, F) of a whole real split, cached in memory and under ``runs/feature_cache/``.

    The cache key holds the hash of the feature network's checkpoint bytes, so retraining the
    extractor or the autoencoder invalidates it; a cache file that cannot be read is recomputed.

    Args:
        space: ``"classifier"`` or ``"autoencoder"``.
        dataset: MedMNIST flag.
        split: ``"train"``, ``"val"`` or ``"test"`` (all rows, in the file's order).
        size: image side in px.
    """
    net, key = feature_space(space, dataset, size)
    mem_key = ("feats", space, key, dataset, split, size)
    if mem_key in _MEMORY:
        return _MEMORY[mem_key]
    path = FEATURE_CACHE_DIR / f"{space}_{dataset}_{size}_{split}_{key}.safetensors"
    feats = None
    if path.exists():
        try:
            feats = load_file(str(path))["features"]
        except Exception:  # noqa: BLE001 - a corrupt cache is recomputed, never trusted
            feats = None
    if feats is None:
        feats = network_features(net, _to_float(_arrays(dataset, split, size).images))
        _save_features(path, {"features": feats.contiguous()})
    _MEMORY[mem_key] = feats
    return feats


def _sets(space: str, dataset: str, size: int) -> dict[str, torch.Tensor]:
    """Features of the reference, training part, all of train, val and test."""
    p = _plan(dataset, size)
    ref = real_features(space, dataset, p.ref_split, size)
    train = real_features(space, dataset, "train", size)
    return {"ref": ref if p.ref_idx is None else ref[torch.from_numpy(p.ref_idx)],
            "train_part": train[torch.from_numpy(p.train_idx)], "train": train,
            "val": real_features(space, dataset, "val", size),
            "test": real_features(space, dataset, "test", size)}


def _subset_rows(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if n >= x.shape[0]:
        return x
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]


def _distribution(ref: torch.Tensor, x: torch.Tensor, seed: int, kid_subsets: int, k: int,
                  fd: bool = True) -> dict[str, float]:
    # fd=False for a class of a few dozen images: FD's covariance would be rank-deficient there.
    out = {"fd": frechet_distance(x, ref)} if fd else {}
    if kid_subsets:
        out["kid_mean"], out["kid_std"] = kid(ref, x, subsets=kid_subsets, seed=seed)
    out.update(prdc(ref, x, k=k))
    return out


# The floor is the mean over this many draws of the training part: one draw's FD moves by up to
# ~2x between seeds on PneumoniaMNIST (the floor FD is small, so its noise is large relative to
# it), which would make every fd_ratio inherit that draw's luck.
FLOOR_DRAWS = 5


def _floor_draws(part: torch.Tensor, n: int, seed: int, score) -> tuple[dict[str, float], list[dict]]:
    """``score`` of ``FLOOR_DRAWS`` seeded n-image draws of ``part`` (one when n is all of it):
    the mean of each metric, and the draws."""
    draws = [score(_subset_rows(part, n, seed + i)) for i in range(FLOOR_DRAWS if n < part.shape[0] else 1)]
    return {m: float(np.mean([d[m] for d in draws])) for m in draws[0]}, draws


def _floor(space: str, dataset: str, size: int, n: int, seed: int, kid_subsets: int, k: int
           ) -> dict[str, float]:
    """The floor at n: n images of the training part vs the reference, mean of ``FLOOR_DRAWS``
    seeded draws (``fd_std`` their spread; 0 when n is the whole part). Cached: no fake enters."""
    _, key = feature_space(space, dataset, size)
    mem_key = ("floor", space, key, dataset, size, n, seed, kid_subsets, k)
    if mem_key not in _MEMORY:
        s = _sets(space, dataset, size)

        def score(real: torch.Tensor) -> dict[str, float]:
            return {**_distribution(s["ref"], real, seed, kid_subsets, k),
                    "test_fd": frechet_distance(real, s["test"])}

        out, draws = _floor_draws(s["train_part"], n, seed, score)
        out["fd_std"] = float(np.std([d["fd"] for d in draws], ddof=1)) if len(draws) > 1 else 0.0
        _MEMORY[mem_key] = out
    return _MEMORY[mem_key]


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


def _score_features(space: str, dataset: str, size: int, fake: torch.Tensor, seed: int,
                    kid_subsets: int, k: int, n_floor: int | None = None) -> dict[str, float]:
    s = _sets(space, dataset, size)
    # Equal n: FD is biased upwards at small n, so fakes and floor use the same number of images.
    n = min(fake.shape[0], s["train_part"].shape[0], n_floor or fake.shape[0])
    fake = _subset_rows(fake, n, seed)
    out = _distribution(s["ref"], fake, seed, kid_subsets, k)
    floor = _floor(space, dataset, size, n, seed, kid_subsets, k)
    out.update({f"floor_{key}": v for key, v in floor.items() if key != "test_fd"})
    out["fd_ratio"] = out["fd"] / out["floor_fd"] if out["floor_fd"] > 0 else float("inf")
    # The test split's shift: a labelled second number, never the headline.
    out["test_shift_fd"] = frechet_distance(fake, s["test"])
    out["floor_test_fd"] = floor["test_fd"]
    # Memorization against the validation split: the only real images no generator saw.
    out.update(memorization(s["train"], s["val"], fake, seed=seed))
    out.update(copy_fraction(s["train"], s["val"], fake))
    out["n"] = float(n)
    return out


def fd_to_reference(fake_images: torch.Tensor, dataset: str, size: int = 28, *,
                    space: str = "classifier", seed: int = 0, with_prdc: bool = False) -> dict[str, float]:
    """Just ``fd`` and ``fd_ratio`` against the reference (no KID or memorization): cheap enough
    to log every few dozen training steps without touching the test split. ``with_prdc`` adds
    ``precision`` and ``recall`` (k = 5) against the same reference, from the same features."""
    net, _ = feature_space(space, dataset, size)
    s = _sets(space, dataset, size)
    feats = network_features(net, fake_images.detach().float().cpu())
    n = min(feats.shape[0], s["train_part"].shape[0])
    sub = _subset_rows(feats, n, seed)
    fd = frechet_distance(sub, s["ref"])
    floor = _floor(space, dataset, size, n, seed, 0, 5)["fd"]
    out = {"fd": fd, "fd_ratio": fd / floor if floor > 0 else float("inf")}
    if with_prdc:
        pr = prdc(s["ref"], sub, k=5)
        out.update(precision=pr["precision"], recall=pr["recall"])
    return out


def membership_audit(fake_images: torch.Tensor, dataset: str, size: int = 28, *,
                     member_images: torch.Tensor | None = None,
                     nonmember_images: torch.Tensor | None = None, space: str = "classifier",
                     seed: int = 0) -> dict[str, float]:
    """The black-box membership-inference attack (:func:`medgan_utils.metrics.membership_auc`)
    on a generator of ``dataset``, in ``space``'s features, at equal n.

    Members are the images the generator trained on: ``member_images`` (float (N, C, H, W) in
    [-1, 1], e.g. one hospital's share in chapter 08), else the whole training split. Non-members
    are ``nonmember_images``, else the validation split, real images no generator of the course
    trained on (a generator trained on BreastMNIST's training part, ``--holdout-reference``,
    has the other half as non-members of its own distribution). ``mia_auc`` near 0.5: the
    generated images do not betray who was in the training set.

    Non-members must come from the members' own distribution. The validation split has the data
    set's overall class mix, so for a skewed member set (one hospital's share) the AUC measures
    the class-mix difference as well as membership: hold out part of that member set instead.
    """
    from .metrics import membership_auc

    net, _ = feature_space(space, dataset, size)
    s = _sets(space, dataset, size)
    feats = network_features(net, fake_images.detach().float().cpu())
    members = s["train"] if member_images is None else network_features(net, member_images.float().cpu())
    non = s["val"] if nonmember_images is None else network_features(net, nonmember_images.float().cpu())
    return membership_auc(members, non, feats, seed=seed)


def score_generator(
    fake_images: torch.Tensor,
    dataset: str,
    size: int = 28,
    *,
    spaces: Sequence[str] = SPACES,
    n: int | None = None,
    seed: int = 0,
    kid_subsets: int = 10,
    k: int = 5,
) -> dict[str, Any]:
    """Score generated images against held-out images of their training distribution.

    For each feature space: FD, KID, precision/recall/density/coverage against the reference
    (:func:`reference_split`), the floor (as many training-part images vs the same reference)
    and ``fd_ratio = fd / floor_fd`` (about 1: as good as real data); ``test_shift_fd`` and
    ``floor_test_fd`` (fakes and floor vs the test split: the split's shift, a second number);
    memorization against the validation split (``frac_closer_to_train``, ``nn_ratio``,
    ``copy_frac``). Real features and the floor come from the cache, so after the first call
    the cost is one forward pass per space plus the metrics (< 5 s for 2,000 fakes on 2 CPU
    cores: ``benchmarks/eval_speed.py``).

    Args:
        fake_images: generated images (M, C, H, W) in [-1, 1].
        dataset: the MedMNIST flag the generator was trained on.
        size: image side in px.
        spaces: feature spaces, any of ``("classifier", "autoencoder")``.
        n: use at most this many images (fakes and floor alike); default all fakes, capped at
            the training part's size (BreastMNIST: 272) so that the floor has equal n.
        seed: seeds subsets, KID draws and memorization subsampling.
        kid_subsets: KID subsets (0: skip KID). KID is unbiased, so fewer subsets only widen
            ``kid_std``. 10 subsets of (reference size / 2) images: KID was half of the
            metrics' time with 20 on a loaded 2-core machine.
        k: neighbourhood size of precision/recall/density/coverage.

    Returns:
        A flat dict: ``"<space>_<metric>"`` floats for each space (metrics: ``fd, kid_mean,
        kid_std, precision, recall, density, coverage, floor_fd, floor_kid_mean, ...,
        fd_ratio, test_shift_fd, floor_test_fd, nn_train_median, nn_heldout_median, nn_ratio,
        frac_closer_to_train, copy_frac, copy_threshold, n``), plus ``reference`` (what the
        images were judged against, a sentence), ``reference_code`` and ``n_fakes``.
    """
    if fake_images.ndim != 4:
        raise ValueError(f"fake_images must be (M, C, H, W) in [-1, 1], got {tuple(fake_images.shape)}")
    fake_images = fake_images.detach().float().cpu()
    if n is not None:
        fake_images = fake_images[:n]
    p = _plan(dataset, size)
    out: dict[str, Any] = {"reference": p.description, "reference_code": p.ref_split if p.ref_idx is None
                           else p.code, "n_fakes": int(fake_images.shape[0])}
    for space in spaces:
        net, _ = feature_space(space, dataset, size)
        feats = network_features(net, fake_images)
        for key, v in _score_features(space, dataset, size, feats, seed, kid_subsets, k, n).items():
            out[f"{space}_{key}"] = v
    return out


# ----------------------------------------------------------------------------------------------
# Calibration: known-worse sets must score worse, in order
# ----------------------------------------------------------------------------------------------

# (name, family, severity rank, degradation of (B, C, H, W) images in [-1, 1]).
NOISE_SIGMAS = (0.1, 0.3)
BLUR_SIGMAS = (0.6, 1.2)
DOWNUP_FACTORS = (2, 4)
SHIFTS = (0.1, 0.3)
# Pairs (milder, harsher) of battery sets that a trustworthy feature space scores in this order
# (asserted in tests/test_evaluation.py, shown in notebook 03).
BATTERY_ORDER = tuple((f"{fam}_{a:g}", f"{fam}_{b:g}") for fam, (a, b) in
                      (("noise", NOISE_SIGMAS), ("blur", BLUR_SIGMAS), ("downup", DOWNUP_FACTORS),
                       ("shift", SHIFTS)))


def _degradations(seed: int) -> list[tuple[str, str, Any]]:
    out: list[tuple[str, str, Any]] = []
    for s in NOISE_SIGMAS:
        out.append((f"noise_{s:g}", "noise", lambda x, s=s: gaussian_noise(x, s, seed=seed)))
    for s in BLUR_SIGMAS:
        out.append((f"blur_{s:g}", "blur", lambda x, s=s: gaussian_blur(x, s)))
    for f in DOWNUP_FACTORS:
        out.append((f"downup_{f}", "downup", lambda x, f=f: upsample(downsample(x, f), f)))
    for s in SHIFTS:
        out.append((f"shift_{s:g}", "shift", lambda x, s=s: (x + 2 * s).clamp(-1, 1)))
    return out


def calibration_battery(
    dataset: str,
    size: int = 28,
    space: str = "classifier",
    n: int = 1000,
    seed: int = 0,
    *,
    kid_subsets: int = 0,
    k: int = 5,
) -> dict[str, dict[str, float]]:
    """Score real and known-worse image sets the way :func:`score_generator` scores fakes.

    Sets, each made from ``n`` seeded images of the generator's training part
    (:func:`training_part`):

    * ``floor``: the images themselves, one draw of the floor (its fd_ratio is about 1, not
      exactly: the floor FD is a mean over several draws on PneumoniaMNIST; its spread comes
      from ``floor_seed1``, another draw scored against the floor of the first);
    * ``noise_<sigma>`` (Gaussian, sigma 0.1 and 0.3 in [-1, 1] units), ``blur_<sigma>``
      (Gaussian blur, sigma 0.6 and 1.2 px), ``downup_<f>`` (bicubic down then up by 2 and 4),
      ``shift_<s>`` (brightness + s of the full range, 0.1 and 0.3, clamped);
    * ``one_class``: images of the majority class only (the minority mode dropped);
    * ``copies``: exact copies of training images: caught when ``copy_frac`` is near 1
      (``frac_closer_to_train`` is reported too, but :func:`~medgan_utils.metrics.memorization`
      subsamples train to the validation split's size, so most copied images are not in its
      comparison set and it reads ~0.55 for copies; ``copy_frac`` uses all of train).

    Args:
        dataset: MedMNIST flag.
        size: image side in px.
        space: ``"classifier"`` or ``"autoencoder"``.
        n: images per set (capped at the training part's size). 1000 keeps the floor's own
            spread at a few percent in both spaces.
        seed: which images, the noise, KID draws.
        kid_subsets: also KID (0: skip; FD's ratio is what is asserted).
        k: neighbourhood size of precision/recall/density/coverage.

    Returns:
        set name -> the keys of :func:`score_generator` for one space, unprefixed (``fd``,
        ``fd_ratio``, ``precision``, ``recall``, ..., ``frac_closer_to_train``, ``copy_frac``).
    """
    net, _ = feature_space(space, dataset, size)
    images, labels = training_part(dataset, size)
    m = min(n, len(images))
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(images), generator=g)[:m]
    base = images[pick]
    # Another draw of the same size (overlapping when the part is small): the floor's spread.
    other = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + 1))[:m]]
    sets: dict[str, torch.Tensor] = {"floor_seed1": other}
    for name, _family, fn in _degradations(seed):
        sets[name] = fn(base)
    majority = int(np.bincount(labels).argmax())
    one = torch.from_numpy(np.flatnonzero(labels == majority))
    sets["one_class"] = images[one[torch.randperm(len(one), generator=g)[:m]]]
    sets["copies"] = base
    # The floor is exactly ``base``'s features when the fakes are the same images and the seeds
    # agree: score with the floor of seed ``seed`` so that "floor" reads 1.0 and the others are
    # directly comparable with it.
    out = {}
    train_feats = _subset_rows(_sets(space, dataset, size)["train_part"], m, seed)
    out["floor"] = _score_features(space, dataset, size, train_feats, seed, kid_subsets, k)
    for name, x in sets.items():
        feats = network_features(net, x)
        out[name] = _score_features(space, dataset, size, feats, seed, kid_subsets, k, len(x))
    return out


# ----------------------------------------------------------------------------------------------
# Issue #8's table, by the package's own code
# ----------------------------------------------------------------------------------------------


def sample_shipped(name: str, n: int = 2000, seed: int = 0) -> torch.Tensor:
    """``n`` images (n, C, H, W) in [-1, 1] from ``checkpoints/<name>.safetensors`` (fixed seed)."""
    from .pretrained import load

    model, _ = load(CHECKPOINT_DIR / f"{name}.safetensors")
    with torch.no_grad():
        return model.sample(n, generator=torch.Generator().manual_seed(seed)).cpu()


def reference_table(
    dataset: str = "pneumoniamnist",
    size: int = 28,
    generators: Sequence[str] = ("gan", "dcgan", "wgan-gp"),
    n: int = 2000,
    seed: int = 0,
    spaces: Sequence[str] = SPACES,
) -> list[dict[str, Any]]:
    """FD of the floor and of shipped generators against three references (issue #8's table).

    References: the test split (what :func:`medgan_utils.metrics.evaluate` uses; floor = n
    training images vs test), the validation split (floor = n training images vs val) and the
    other half of train (train split in two seeded, class-stratified halves; floor = n images of
    the first half vs n images of the second). Fakes: ``n`` samples of each generator
    (``checkpoints/<generator>_<dataset>_<size>.safetensors``) with seed ``seed``.

    Returns:
        One row per (space, reference): ``space``, ``reference``, ``n``, ``floor`` and one FD
        per generator (keys are the generator names).
    """
    fakes = {g: sample_shipped(f"{g}_{dataset}_{size}", n, seed) for g in generators}
    labels = _arrays(dataset, "train", size).labels
    half = torch.from_numpy(stratified_subset(labels, 0.5, seed=seed))
    other = torch.from_numpy(np.setdiff1d(np.arange(len(labels)), half.numpy()))
    rows = []
    for space in spaces:
        net, _ = feature_space(space, dataset, size)
        train = real_features(space, dataset, "train", size)
        fake_f = {g: network_features(net, x) for g, x in fakes.items()}
        refs = {
            f"test split (n={len(_arrays(dataset, 'test', size))})":
                (real_features(space, dataset, "test", size), _subset_rows(train, n, seed)),
            f"validation split (n={len(_arrays(dataset, 'val', size))})":
                (real_features(space, dataset, "val", size), _subset_rows(train, n, seed)),
            f"other half of train (n={min(n, len(other))})":
                (_subset_rows(train[other], n, seed + 1), _subset_rows(train[half], n, seed)),
        }
        for ref_name, (ref, floor_set) in refs.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row = {"space": space, "reference": ref_name, "n": n,
                       "floor": frechet_distance(floor_set, ref)}
                row.update({g: frechet_distance(f, ref) for g, f in fake_f.items()})
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Per class: is every class as diverse as its real images? (issue #8, chapter 04)
# ----------------------------------------------------------------------------------------------

__all__ += ["classifier_labels", "reference_labels", "score_per_class"]


def reference_labels(dataset: str, size: int = 28) -> np.ndarray:
    """Labels (N,) of :func:`reference_split`'s images, in the same order."""
    p = _plan(dataset, size)
    labels = _arrays(dataset, p.ref_split, size).labels
    return labels if p.ref_idx is None else labels[p.ref_idx]


def classifier_labels(fake_images: torch.Tensor, dataset: str, size: int = 28) -> np.ndarray:
    """Labels (M,) for images of an unconditional generator: the argmax of the shipped classifier
    (:func:`medgan_utils.classify.load_extractor`, the network of the ``"classifier"`` space).

    Args:
        fake_images: (M, C, H, W) in [-1, 1].
    """
    from .classify import predict_proba

    net, _ = feature_space("classifier", dataset, size)
    x = fake_images.detach().float().cpu().contiguous(memory_format=torch.channels_last)
    return predict_proba(net, x).argmax(1)


def score_per_class(
    fake_images: torch.Tensor,
    fake_labels: np.ndarray | torch.Tensor | None,
    dataset: str,
    size: int = 28,
    *,
    spaces: Sequence[str] = SPACES,
    n: int | None = None,
    seed: int = 0,
    kid_subsets: int = 10,
    k: int = 5,
) -> dict[str, Any]:
    """Score a generator class by class: fakes of class c against the reference images of class c.

    For each class c and feature space: precision, recall, density and coverage (Kynkaanniemi et
    al.; Naeem et al.) and KID, each beside its **floor**: as many training-part images of class
    c (true labels; mean of ``FLOOR_DRAWS`` seeded draws) against the same reference images of
    class c. Recall and coverage near their floors mean the class is as diverse as real images
    of it; a generator that draws one prototype per class has recall near 0 there. FD is not
    computed: a class of the reference has 42-400 images, fewer than or close to the 64-128
    features, so its covariance is rank-deficient (KID is unbiased at any n).

    Equal n: per class, fakes and floor use ``n_c = min(fakes of c, training-part images of c,
    n)`` images, since recall and coverage depend on the number of fakes (their k-NN balls shrink
    as the set grows: a diverse set covers more, a narrow one can cover less). Compare two
    generators at the same ``n`` (give each at least ``n`` fakes per class).

    Args:
        fake_images: generated images (M, C, H, W) in [-1, 1].
        fake_labels: (M,) class of each fake: the conditioning label of a conditional
            generator; None for an unconditional one, whose fakes are then labelled by the shipped
            classifier (:func:`classifier_labels`). Caveat: in the ``"classifier"`` space those
            labels come from the very network whose features are compared, which flatters an
            unconditional generator a little there; the ``"autoencoder"`` space is label-free.
        dataset: the MedMNIST flag the generator was trained on.
        size: image side in px.
        spaces: feature spaces, any of ``("classifier", "autoencoder")``.
        n: at most this many images per class (fakes and floor alike).
        seed: seeds subsets, KID draws and the floor's draws.
        kid_subsets: KID subsets (0: skip KID).
        k: neighbourhood size of precision/recall/density/coverage.

    Returns:
        ``{"reference": sentence, "labels": "conditioning" or "classifier", "classes": {name:
        row}}`` where ``name`` is the class's name (its index if the data set has none) and
        ``row`` holds ``n``, ``n_ref``, ``share`` (fraction of the fakes with that label) and, per
        space, ``<space>_<metric>`` and ``<space>_floor_<metric>`` for ``precision, recall,
        density, coverage, kid_mean, kid_std`` and ``<space>_recall_ratio`` (recall / floor).

    Raises:
        ValueError: images not (M, C, H, W), labels of another length, or a class with at most
            ``k`` images among the fakes, the training part or the reference.
    """
    if fake_images.ndim != 4:
        raise ValueError(f"fake_images must be (M, C, H, W) in [-1, 1], got {tuple(fake_images.shape)}")
    fake_images = fake_images.detach().float().cpu()
    source = "conditioning" if fake_labels is not None else "classifier"
    labels = (classifier_labels(fake_images, dataset, size) if fake_labels is None
              else np.asarray(torch.as_tensor(fake_labels).cpu()).reshape(-1))
    if len(labels) != len(fake_images):
        raise ValueError(f"{len(labels)} labels for {len(fake_images)} images")
    p = _plan(dataset, size)
    ref_y, part_y = reference_labels(dataset, size), _arrays(dataset, "train", size).labels[p.train_idx]
    names = _class_names(dataset, size)
    rows: dict[str, dict[str, float]] = {}
    for c in sorted(set(np.unique(ref_y).tolist())):
        n_c = min(int((labels == c).sum()), int((part_y == c).sum()), n or len(labels))
        n_ref = int((ref_y == c).sum())
        if min(n_c, n_ref) <= k:
            raise ValueError(f"class {names.get(c, c)!r}: {int((labels == c).sum())} fakes, "
                             f"{int((part_y == c).sum())} training-part and {n_ref} reference images; "
                             f"each must exceed k={k}: generate more images of it")
        row: dict[str, float] = {"n": float(n_c), "n_ref": float(n_ref), "share": float((labels == c).mean())}
        for space in spaces:
            net, key = feature_space(space, dataset, size)
            s = _sets(space, dataset, size)
            ref = s["ref"][torch.from_numpy(ref_y == c)]
            fake = _subset_rows(network_features(net, fake_images[torch.from_numpy(labels == c)]), n_c, seed)
            # No FD per class: 42-400 images of 64-128 features give a rank-deficient covariance.
            got = _distribution(ref, fake, seed, kid_subsets, k, fd=False)
            mem_key = ("class_floor", space, key, dataset, size, c, n_c, seed, kid_subsets, k)
            if mem_key not in _MEMORY:
                part = s["train_part"][torch.from_numpy(part_y == c)]
                _MEMORY[mem_key] = _floor_draws(
                    part, n_c, seed, lambda x, ref=ref: _distribution(ref, x, seed, kid_subsets, k, fd=False))[0]
            floor = _MEMORY[mem_key]
            row.update({f"{space}_{m}": v for m, v in got.items()})
            row.update({f"{space}_floor_{m}": v for m, v in floor.items()})
            row[f"{space}_recall_ratio"] = got["recall"] / floor["recall"] if floor["recall"] > 0 else float("nan")
        rows[str(names.get(c, c))] = row
    return {"reference": p.description, "labels": source, "classes": rows}


def _class_names(dataset: str, size: int) -> dict[int, str]:
    return {int(i): str(v) for i, v in _arrays(dataset, "train", size).class_names.items()}
