"""MedMNIST loading (offline, md5-verified), its error messages, and the fast TensorLoader path."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medgan_utils.data import (
    DataIntegrityError,
    DataNotFoundError,
    TensorLoader,
    dataset_info,
    load_arrays,
    load_medmnist,
    search_roots,
    to_float,
    to_uint8,
)
from medgan_utils.data import medmnist as mm

# --- the real files -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "size"), [("pneumoniamnist", 28), ("breastmnist", 28),
                                            ("breastmnist", 64)])
def test_load_arrays_shapes_dtypes_and_split_sizes(medmnist_root, name, size):
    info = dataset_info(name)
    raw = np.load(medmnist_root / mm.file_name(name, size))
    for split in ("train", "val", "test"):
        arr = load_arrays(name, split, size, root=medmnist_root)
        n = info["n_samples"][split]
        assert arr.images.shape == (n, size, size)
        assert arr.images.dtype == np.uint8
        assert arr.labels.shape == (n,), "single-label tasks are squeezed from (N, 1) to (N,)"
        assert arr.labels.dtype == np.int64
        np.testing.assert_array_equal(arr.labels, raw[f"{split}_labels"][:, 0])
        np.testing.assert_array_equal(arr.images, raw[f"{split}_images"])
        assert arr.n_channels == 1 and len(arr) == n
        assert set(np.unique(arr.labels)) <= {int(k) for k in info["label"]}
    x = load_arrays(name, "val", size, root=medmnist_root).tensors()
    assert x.shape == (info["n_samples"]["val"], 1, size, size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1


def test_load_medmnist_returns_medmnist_dataset(medmnist_root):
    ds = load_medmnist("pneumoniamnist", "test", root=medmnist_root)
    assert len(ds) == dataset_info("pneumoniamnist")["n_samples"]["test"]
    img, label = ds[0]
    assert img.size == (28, 28)
    assert label.shape == (1,)
    with pytest.raises(ValueError, match="split"):
        load_medmnist("pneumoniamnist", "training", root=medmnist_root)


# --- errors a user can hit ----------------------------------------------------------------------


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError) as err:
        load_arrays("pneumonia", root=tmp_path)
    msg = str(err.value)
    assert "pneumonia" in msg
    for valid in ("pneumoniamnist", "breastmnist", "bloodmnist", "dermamnist"):
        assert valid in msg
    assert "organmnist3d" not in msg, "only 2D sets are valid here"


def test_unknown_size_lists_sizes(tmp_path):
    with pytest.raises(ValueError) as err:
        load_arrays("breastmnist", size=32, root=tmp_path)
    assert "32" in str(err.value)
    for s in ("28", "64", "128", "224"):
        assert s in str(err.value)


def test_missing_file_names_every_searched_path_and_the_fix(tmp_path, monkeypatch):
    empty_env = tmp_path / "env_root"
    empty_env.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MEDMNIST_ROOT", str(empty_env))
    monkeypatch.setenv("HOME", str(home))
    # The repo's own data/medmnist may hold real files on a developer machine: point it elsewhere.
    monkeypatch.setattr(mm, "REPO_ROOT", tmp_path / "repo")
    explicit = tmp_path / "explicit"
    roots = search_roots(explicit)
    assert roots == [explicit.resolve(), empty_env.resolve(),
                     (tmp_path / "repo" / "data" / "medmnist").resolve(),
                     (home / ".medmnist").resolve()]
    with pytest.raises(DataNotFoundError) as err:
        load_arrays("breastmnist", root=explicit)
    msg = str(err.value)
    for r in roots:
        assert str(r / "breastmnist.npz") in msg
    assert "MEDMNIST_ROOT" in msg
    assert "medgan download breastmnist --size 28" in msg
    assert isinstance(err.value, FileNotFoundError)


def _copy_shared(medmnist_root: Path, dst: Path) -> Path:
    dst.mkdir()
    target = dst / "breastmnist.npz"
    shutil.copyfile(medmnist_root / "breastmnist.npz", target)
    return target


def test_truncated_file_is_reported_not_badzipfile(medmnist_root, tmp_path):
    target = _copy_shared(medmnist_root, tmp_path / "root")
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    for loader in (load_arrays, load_medmnist):
        with pytest.raises(DataIntegrityError) as err:
            loader("breastmnist", "train", root=tmp_path / "root")
        assert "truncated" in str(err.value)
        assert str(target) in str(err.value)
        assert dataset_info("breastmnist")["MD5"] in str(err.value)


def test_altered_file_is_reported(medmnist_root, tmp_path):
    target = _copy_shared(medmnist_root, tmp_path / "root")
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0xFF  # one byte inside the compressed images
    target.write_bytes(bytes(data))
    assert zipfile.is_zipfile(target), "still looks like a zip: only the md5 can tell"
    with pytest.raises(DataIntegrityError, match="altered"):
        load_arrays("breastmnist", "train", root=tmp_path / "root")


def test_root_argument_is_searched_first(tiny_npz, register_fake_medmnist, tmp_path, monkeypatch):
    register_fake_medmnist("tinymnist", tiny_npz, template="pneumoniamnist")
    monkeypatch.setenv("MEDMNIST_ROOT", str(tmp_path / "nowhere"))
    assert mm.find_medmnist("tinymnist", root=tiny_npz.parent) == tiny_npz
    arr = load_arrays("tinymnist", "train", root=tiny_npz.parent)
    assert arr.images.shape == (48, 28, 28) and arr.labels.shape == (48,)


# --- an RGB data set made here ------------------------------------------------------------------


def test_rgb_file_has_three_channels(fake_rgb):
    name, root = fake_rgb
    arr = load_arrays(name, "train", root=root)
    assert arr.n_channels == 3
    assert arr.images.shape == (48, 28, 28, 3)
    assert len(arr.class_names) == 8
    loader = TensorLoader(arr.images, arr.labels, batch_size=16, seed=0)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 28, 28) and y.shape == (16,)
    # Channel order survives the (N, H, W, C) -> (B, C, H, W) transpose.
    np.testing.assert_array_equal(to_uint8(x), arr.images[loader._order(0)[:16].numpy()])


def test_modified_fake_file_fails_its_registered_md5(fake_rgb):
    name, root = fake_rgb
    with np.load(root / f"{name}.npz") as npz:
        arrays = dict(npz)
    arrays["train_images"][0, 0, 0, 0] ^= 1
    np.savez_compressed(root / f"{name}.npz", **arrays)
    with pytest.raises(DataIntegrityError, match="altered"):
        load_arrays(name, root=root)


# --- TensorLoader -------------------------------------------------------------------------------


def _indexed_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose every pixel is their index, labels = index: batches say which images they hold."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 4, 4)).copy()
    return images, np.arange(n)


def _ids(batch) -> list[int]:
    x, y = batch
    ids = to_uint8(x)[:, 0, 0].astype(int).tolist()
    assert ids == y.tolist()
    return ids


def test_loader_values_range_and_dtype():
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    loader = TensorLoader(images, batch_size=40, shuffle=False)
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and x.shape == (40, 1, 8, 8)
    assert x.min() == -1.0 and x.max() == 1.0
    assert y.dtype == torch.int64 and torch.equal(y, torch.zeros(40, dtype=torch.long))
    with pytest.raises(TypeError):
        TensorLoader(images.astype(np.float32))


def test_loader_every_image_once_per_epoch_and_reshuffles():
    images, labels = _indexed_images(30)
    loader = TensorLoader(images, labels, batch_size=7, seed=3, drop_last=False)
    assert len(loader) == 5
    epochs = [[i for b in loader for i in _ids(b)] for _ in range(2)]
    for ids in epochs:
        assert sorted(ids) == list(range(30))
    assert epochs[0] != epochs[1], "each epoch has its own order"
    dropped = TensorLoader(images, labels, batch_size=7, seed=3, drop_last=True)
    ids = [i for b in dropped for i in _ids(b)]
    assert len(ids) == 28 and len(set(ids)) == 28


def test_loader_deterministic_under_seed():
    images, labels = _indexed_images(32)

    def order(seed: int) -> list[int]:
        loader = TensorLoader(images, labels, batch_size=8, seed=seed)
        return [i for _ in range(2) for b in loader for i in _ids(b)]

    assert order(5) == order(5)
    assert order(5) != order(6)


def _stream(loader: TensorLoader):
    """Batches across epochs, as fit() draws them."""
    while True:
        yield from loader


@pytest.mark.parametrize("consumed", [3, 4, 9], ids=["mid-epoch", "epoch-end", "second-epoch"])
def test_loader_state_dict_resumes_exact_sequence(consumed):
    images, labels = _indexed_images(32)  # 4 batches of 8 per epoch
    reference = TensorLoader(images, labels, batch_size=8, seed=7)
    stream = _stream(reference)
    ref = [_ids(next(stream)) for _ in range(consumed + 6)]

    first = TensorLoader(images, labels, batch_size=8, seed=7)
    stream = _stream(first)
    for _ in range(consumed):
        next(stream)
    state = first.state_dict()

    resumed = TensorLoader(images, labels, batch_size=8, seed=0)
    resumed.load_state_dict(state)
    # The first pass after a resume must yield (fit() treats an empty pass as "no data"), even
    # when the state was saved right after an epoch's last batch.
    it = iter(resumed)
    got = [_ids(next(it, None) or pytest.fail("resumed loader yielded nothing"))]
    stream = _stream(resumed)
    got += [_ids(next(stream)) for _ in range(5)]
    assert got == ref[consumed:]


def test_uint8_float_round_trip_is_exact():
    grey = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 5, 3), dtype=np.uint8)
    for images in (grey, rgb):
        x = to_float(torch.from_numpy(images))
        assert x.shape[1] == (1 if images.ndim == 3 else 3)
        assert x.min() >= -1 and x.max() <= 1
        back = to_uint8(x)
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, images)
