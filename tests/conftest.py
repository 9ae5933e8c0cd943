"""Fixtures shared by the suite: tiny MedMNIST-layout files, fake INFO entries, the shared data.

The loader checks every file's md5 against medmnist's ``INFO``, so a file made in a test only
loads under a name whose INFO entry carries that file's md5: :func:`register_fake_medmnist` adds
such an entry (a copy of a real one) for the duration of one test.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# A few tiny splits: small enough to write in milliseconds, big enough for several batches.
TINY_SPLITS = {"train": 48, "val": 8, "test": 16}


def write_medmnist_npz(path: Path, *, size: int = 28, channels: int = 1, n_classes: int = 2,
                       splits: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write a valid MedMNIST-layout npz: ``<split>_images`` uint8 (N, H, W) or (N, H, W, 3),
    ``<split>_labels`` uint8 (N, 1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (splits or TINY_SPLITS).items():
        shape = (n, size, size) if channels == 1 else (n, size, size, channels)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, n_classes, (n, 1)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    """A grey 28 px MedMNIST-layout file (48/8/16 images, labels (N, 1)) in ``tmp_path/tiny``."""
    return write_medmnist_npz(tmp_path / "tiny" / "tinymnist.npz")


@pytest.fixture
def register_fake_medmnist(monkeypatch) -> Callable[..., dict]:
    """Register a temporary medmnist ``INFO`` entry whose md5 is that of a file made in the test.

    Call as ``register(name, path, template="bloodmnist", size=28, channels=3)``; the entry is a
    copy of ``INFO[template]`` with the md5, channel count and split sizes of ``path``. It is
    removed again after the test (``monkeypatch.setitem`` on medmnist's own dict).
    """

    def register(name: str, path: Path, template: str = "bloodmnist", size: int = 28,
                 channels: int | None = None) -> dict:
        import medmnist  # imported here: a slow import that only the data tests need

        entry = copy.deepcopy(medmnist.INFO[template])
        entry["MD5" if size == 28 else f"MD5_{size}"] = md5_of(path)
        with np.load(path) as npz:
            entry["n_samples"] = {s: len(npz[f"{s}_images"]) for s in ("train", "val", "test")}
            shape = npz["train_images"].shape
        entry["n_channels"] = channels if channels is not None else (1 if len(shape) == 3 else shape[-1])
        monkeypatch.setitem(medmnist.INFO, name, entry)
        return entry

    return register


@pytest.fixture
def fake_rgb(tmp_path: Path, register_fake_medmnist) -> tuple[str, Path]:
    """``("fakergbmnist", root)``: an RGB 28 px file registered as a copy of BloodMNIST (8 classes)."""
    root = tmp_path / "rgb"
    path = write_medmnist_npz(root / "fakergbmnist.npz", channels=3, n_classes=8, seed=1)
    register_fake_medmnist("fakergbmnist", path, template="bloodmnist", channels=3)
    return "fakergbmnist", root


@pytest.fixture(scope="session")
def medmnist_root() -> Path:
    """The folder with the real MedMNIST files ($MEDMNIST_ROOT, else ../shared/data/medmnist).

    Skips only when neither exists (CI always sets MEDMNIST_ROOT).
    """
    candidates = [os.environ.get("MEDMNIST_ROOT"), REPO.parent / "shared" / "data" / "medmnist"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c).resolve()
    pytest.skip("no MedMNIST folder: set MEDMNIST_ROOT (CI does) or provide ../shared/data/medmnist")


def _ct_available() -> bool:
    from medgan_utils.data.ct import ct_folder

    try:
        ct_folder()
        return True
    except Exception:
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_ct: needs the head-CT slices (ct_mri/ct; `make data`)")


def pytest_collection_modifyitems(config, items):
    # Tests marked needs_ct skip, saying why, where the CT slices are not installed.
    if any("needs_ct" in item.keywords for item in items) and not _ct_available():
        skip = pytest.mark.skip(reason="the ct_mri slices are not here (make data)")
        for item in items:
            if "needs_ct" in item.keywords:
                item.add_marker(skip)
