"""PairedLoader, UnpairedLoader, make_sr_pairs and TensorLoader's Poisson sampling: shapes,
alignment of patches, independent shuffling, determinism and exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgan_utils.data import (
    PairedLoader,
    TensorLoader,
    UnpairedLoader,
    downsample,
    make_sr_pairs,
    to_float,
)


def _stream(loader):
    """Batches across epochs, as fit() draws them."""
    while True:
        yield from loader


def _equal(batch_a, batch_b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(batch_a, batch_b, strict=True))


def _ids(x: torch.Tensor) -> list[int]:
    """Images whose pixels all hold their index (see _indexed) -> those indices."""
    return x[:, 0, 0, 0].long().tolist()


def _indexed(n: int, side: int = 2, offset: int = 0) -> torch.Tensor:
    """float (n, 1, side, side), every pixel of image i equal to offset + i."""
    return (torch.arange(n, dtype=torch.float32) + offset)[:, None, None, None].expand(n, 1, side, side).clone()


def _coords(n: int, side: int) -> torch.Tensor:
    """float (n, 1, side, side) holding i * side**2 + row * side + col: a crop says where it is from."""
    return torch.arange(n * side * side, dtype=torch.float32).reshape(n, 1, side, side)


def _where(crop: torch.Tensor, side: int) -> tuple[int, int, int]:
    """(image, row, col) of a crop's top-left pixel, decoded from a _coords channel."""
    image, rest = divmod(int(crop[0, 0]), side * side)
    return image, *divmod(rest, side)


# --------------------------------------------------------------------------- PairedLoader


def test_paired_shapes_dtypes_and_every_pair_once_per_epoch():
    lr, hr = _indexed(10, 4), _indexed(10, 8)
    loader = PairedLoader(lr, hr, batch_size=3, seed=1, drop_last=False)
    assert len(loader) == 4 and loader.scale == 2
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(3, 1, 4, 4)] * 3 + [(1, 1, 4, 4)]
    assert [tuple(y.shape) for _, y in batches] == [(3, 1, 8, 8)] * 3 + [(1, 1, 8, 8)]
    assert all(x.dtype == y.dtype == torch.float32 for x, y in batches)
    ids = [i for x, y in batches for i in _ids(x)]
    assert sorted(ids) == list(range(10))
    assert [i for _, y in batches for i in _ids(y)] == ids, "inputs and targets stay paired"
    assert len(PairedLoader(lr, hr, batch_size=3)) == 3  # drop_last


def test_paired_accepts_uint8_medmnist_layout_and_same_size_pairs():
    clean = np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    corrupted = clean.copy()
    corrupted[:, 2:5, 2:5] = 0
    loader = PairedLoader(corrupted, clean, batch_size=6, shuffle=False)
    assert loader.scale == 1
    x, y = next(iter(loader))
    assert x.shape == y.shape == (6, 1, 8, 8)
    assert torch.equal(y, to_float(torch.from_numpy(clean)))
    assert x.min() == -1 and torch.equal(x[:, :, 5:], y[:, :, 5:])


def test_patches_are_aligned_crops_of_sr_pairs():
    n, side, factor, patch = 6, 16, 2, 8
    hr = torch.rand(n, 1, side, side) * 2 - 1
    lr, hr_out = make_sr_pairs(hr, factor)
    assert hr_out is hr and torch.equal(lr, downsample(hr, factor))
    # A second channel holds each pixel's coordinates, so every crop says where it was cut.
    inputs = torch.cat([lr, _coords(n, side // factor)], dim=1)
    targets = torch.cat([hr, _coords(n, side)], dim=1)
    loader = PairedLoader(inputs, targets, batch_size=3, seed=4, patch=patch)
    places = set()
    for _ in range(3):
        for x, y in loader:
            assert x.shape == (3, 2, patch // factor, patch // factor)
            assert y.shape == (3, 2, patch, patch)
            for xi, yi in zip(x, y, strict=True):
                i, r, c = _where(xi[1], side // factor)
                j, big_r, big_c = _where(yi[1], side)
                assert (i, big_r, big_c) == (j, r * factor, c * factor), "same image, same place"
                assert torch.equal(xi[0], lr[i, 0, r:r + patch // factor, c:c + patch // factor])
                assert torch.equal(yi[0], hr[i, 0, big_r:big_r + patch, big_c:big_c + patch])
                places.add((r, c))
    assert len(places) > 5, "crops are drawn at many places, not one"


def test_patches_deterministic_and_leave_the_global_rng_alone():
    inputs, targets = _coords(8, 8), _coords(8, 16)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    run = [list(PairedLoader(inputs, targets, batch_size=4, seed=2, patch=4)) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), before)
    assert all(_equal(a, b) for a, b in zip(*run, strict=True))
    other = list(PairedLoader(inputs, targets, batch_size=4, seed=3, patch=4))
    assert not all(_equal(a, b) for a, b in zip(run[0], other, strict=True))


@pytest.mark.parametrize("inputs, targets, kwargs, match", [
    (torch.zeros(4, 1, 4, 4), torch.zeros(5, 1, 8, 8), {}, "4 inputs and 5 targets"),
    (torch.zeros(4, 1, 4, 4), torch.zeros(4, 1, 10, 10), {}, "integer scale"),
    (torch.zeros(4, 1, 4, 4), torch.zeros(4, 1, 8, 12), {}, "integer scale"),
    (torch.zeros(4, 1, 4, 4), torch.zeros(4, 1, 8, 8), {"patch": 3}, "multiple of the scale 2"),
    (torch.zeros(4, 1, 4, 4), torch.zeros(4, 1, 8, 8), {"patch": 10}, "larger than the targets"),
    (torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 8, 8), {}, "empty"),
    (torch.zeros(4, 1, 4, 4), torch.zeros(4, 1, 8, 8), {"batch_size": 0}, "batch_size"),
])
def test_paired_rejects_bad_inputs(inputs, targets, kwargs, match):
    with pytest.raises(ValueError, match=match):
        PairedLoader(inputs, targets, **kwargs)


def test_paired_rejects_integer_non_uint8_images():
    with pytest.raises(TypeError, match="int64"):
        PairedLoader(torch.zeros(4, 1, 4, 4, dtype=torch.long), torch.zeros(4, 1, 4, 4))


# --------------------------------------------------------------------------- UnpairedLoader


def test_unpaired_larger_domain_defines_the_epoch_smaller_one_cycles():
    a, b = _indexed(20), _indexed(7, offset=100)
    loader = UnpairedLoader(a, b, batch_size=3, seed=0)
    assert len(loader) == 6  # 20 // 3
    epochs = [list(loader) for _ in range(2)]
    for batches in epochs:
        assert all(x.shape == y.shape == (3, 1, 2, 2) for x, y in batches)
        ids_a = [i for x, _ in batches for i in _ids(x)]
        assert len(set(ids_a)) == 18 and set(ids_a) <= set(range(20)), "A: each image once"
    ids_b = [i - 100 for batches in epochs for _, y in batches for i in _ids(y)]
    # B has 2 batches (6 of 7 images) per epoch of its own: 12 batches make 6 B-epochs.
    b_epochs = [ids_b[k:k + 6] for k in range(0, 36, 6)]
    assert all(len(set(e)) == 6 and set(e) <= set(range(7)) for e in b_epochs)
    assert len({tuple(e) for e in b_epochs}) > 1, "B is reshuffled in each of its epochs"


def test_unpaired_b_larger_and_domains_shuffled_independently():
    loader = UnpairedLoader(_indexed(5), _indexed(12, offset=100), batch_size=4, seed=0)
    assert len(loader) == 3  # the epoch follows B, the larger domain
    ids_b = [i - 100 for _, y in loader for i in _ids(y)]
    assert len(set(ids_b)) == 12
    same = UnpairedLoader(_indexed(16), _indexed(16, offset=100), batch_size=4, seed=0)
    ids = [(_ids(x), [i - 100 for i in _ids(y)]) for x, y in same]
    assert [a for a, _ in ids] != [b for _, b in ids], "equal sizes, yet different orders"


def test_unpaired_accepts_uint8_and_float_layouts_and_rejects_empty():
    a = np.zeros((6, 8, 8, 3), dtype=np.uint8)  # MedMNIST RGB layout
    b = np.ones((9, 8, 8), dtype=np.float64)  # float (N, H, W)
    x, y = next(iter(UnpairedLoader(a, b, batch_size=10)))
    assert x.shape == (6, 3, 8, 8) and y.shape == (6, 1, 8, 8)  # batch capped at the smaller
    assert x.dtype == y.dtype == torch.float32 and x.min() == -1 and y.max() == 1
    with pytest.raises(ValueError, match="b is empty"):
        UnpairedLoader(a, np.zeros((0, 8, 8), dtype=np.uint8))


# --------------------------------------------------------------------------- shared contract

MAKERS = {
    "paired-patch": lambda seed: PairedLoader(_coords(10, 4), _coords(10, 8), batch_size=3,
                                              seed=seed, patch=4),
    # B: 2 batches per epoch of its own against A's 3, so resumes land mid-B-epoch too.
    "unpaired": lambda seed: UnpairedLoader(_indexed(13), _indexed(8, offset=100), batch_size=4,
                                            seed=seed),
    "poisson": lambda seed: TensorLoader(np.arange(12, dtype=np.uint8)[:, None, None], np.arange(12),
                                         batch_size=4, seed=seed, sampling="poisson"),
}


@pytest.mark.parametrize("kind", MAKERS)
def test_same_seed_same_batches(kind):
    make = MAKERS[kind]
    first, second, other = (_stream(make(s)) for s in (5, 5, 6))
    ref = [next(first) for _ in range(8)]
    assert all(_equal(b, next(second)) for b in ref)
    assert not all(_equal(b, next(other)) for b in ref)


@pytest.mark.parametrize("kind", MAKERS)
@pytest.mark.parametrize("consumed", [2, 3, 7], ids=["mid-epoch", "epoch-end", "second-epoch"])
def test_state_dict_resumes_exact_sequence(kind, consumed):
    make = MAKERS[kind]  # 3 batches per epoch for each of them
    assert len(make(0)) == 3
    stream = _stream(make(7))
    ref = [next(stream) for _ in range(consumed + 5)]

    first = make(7)
    stream = _stream(first)
    for _ in range(consumed):
        next(stream)
    state = first.state_dict()
    assert set(state) == {"epoch", "position", "seed"}

    resumed = make(0)
    resumed.load_state_dict(state)
    # The first pass after a resume must yield, even when the state was saved right after an
    # epoch's last batch (fit() reads an empty pass as "no data").
    got = [next(iter(resumed), None) or pytest.fail("resumed loader yielded nothing")]
    stream = _stream(resumed)
    got += [next(stream) for _ in range(4)]
    assert all(_equal(a, b) for a, b in zip(got, ref[consumed:], strict=True))


# --------------------------------------------------------------------------- Poisson sampling


def _poisson(n: int, batch_size: int, seed: int = 0) -> TensorLoader:
    """Images and labels equal to their index, so a batch's labels say who is in it."""
    images = np.zeros((n, 1, 1), dtype=np.uint8)
    return TensorLoader(images, np.arange(n), batch_size=batch_size, seed=seed, sampling="poisson")


def test_poisson_batches_are_independent_bernoulli_draws():
    n, batch_size, epochs = 200, 20, 150
    loader = _poisson(n, batch_size)
    assert len(loader) == 10 and loader.sample_rate == pytest.approx(0.1)
    included = torch.stack([torch.bincount(y, minlength=n) for _ in range(epochs) for _, y in loader])
    assert included.shape == (1500, n) and included.max() == 1, "no image twice in one batch"
    sizes = included.sum(1).double()
    q = batch_size / n
    assert sizes.mean() == pytest.approx(batch_size, abs=0.5)
    # Binomial(n, q): variance n q (1 - q) = 18; a fixed-size sampler would give 0.
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.25)
    rate = included.double().mean(0)
    assert (rate - q).abs().max() < 0.05, "every image has the same inclusion probability"
    # Steps are not a partition of the epoch: an image can be drawn in several steps of one
    # epoch, or in none.
    per_epoch = included.reshape(epochs, 10, n).sum(1)
    assert per_epoch.max() >= 3 and (per_epoch == 0).any()


def test_poisson_empty_batch_has_the_right_shape():
    images = np.zeros((10, 5, 5, 3), dtype=np.uint8)
    loader = TensorLoader(images, batch_size=1, seed=0, sampling="poisson")  # q = 0.1
    batches = [b for _ in range(5) for b in loader]
    empty = [(x, y) for x, y in batches if len(y) == 0]
    assert empty, "with q = 0.1 and 10 images, about a third of the batches are empty"
    x, y = empty[0]
    assert x.shape == (0, 3, 5, 5) and x.dtype == torch.float32
    assert y.shape == (0,) and y.dtype == torch.int64


def test_poisson_leaves_global_rng_alone_and_checks_arguments():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    list(_poisson(30, 5))
    assert torch.equal(torch.get_rng_state(), before)
    images = np.zeros((8, 2, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="shuffle=True"):
        TensorLoader(images, sampling="poisson", shuffle=False)
    with pytest.raises(ValueError, match="batch_size <= number of images"):
        TensorLoader(images, batch_size=9, sampling="poisson", drop_last=False)
    with pytest.raises(ValueError, match="sampling"):
        TensorLoader(images, sampling="uniform")


def test_default_shuffle_mode_unchanged():
    n, batch_size = 37, 8
    images = np.zeros((n, 1, 1), dtype=np.uint8)
    loader = TensorLoader(images, np.arange(n), batch_size=batch_size, seed=0)
    assert loader.sampling == "shuffle" and len(loader) == 4
    first = torch.randperm(n, generator=torch.Generator().manual_seed(0 * 100_003 + 0))[:batch_size]
    assert torch.equal(next(iter(loader))[1], first)
    # Whole epochs: consecutive slices of randperm(n) seeded with seed * 100_003 + epoch.
    loader = TensorLoader(images, np.arange(n), batch_size=batch_size, seed=3, drop_last=False)
    for epoch in range(2):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(3 * 100_003 + epoch))
        assert torch.equal(torch.cat([y for _, y in loader]), order)
