"""Degradations: resolution, masks and noise behave as their physics says, and repeat per seed."""

from __future__ import annotations

import math

import pytest
import torch

from medgan_utils.data import (
    apply_mask,
    box_mask,
    downsample,
    gaussian_noise,
    poisson_noise,
    rician_noise,
    stroke_mask,
    upsample,
)

H = 64


def _checkerboard(amplitude: float = 0.8) -> torch.Tensor:
    """(1, 1, H, H): the finest pattern a grid can hold, all of it above any coarser Nyquist."""
    i = torch.arange(H)
    return (((-1.0) ** (i[:, None] + i[None, :])) * amplitude)[None, None]


def _stripes(cycles_per_pixel: float) -> torch.Tensor:
    """(1, 1, H, H) vertical cosine stripes of the given frequency, mean 0."""
    j = torch.arange(H, dtype=torch.float32)
    return (0.8 * torch.cos(2 * math.pi * cycles_per_pixel * j)).expand(H, H)[None, None].clone()


def _smooth(batch: int = 2) -> torch.Tensor:
    """(B, 1, H, H) smooth blobs in [-1, 1]: little content above any Nyquist."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, H), indexing="ij")
    blob = torch.exp(-((xx - 0.2) ** 2 + (yy + 0.1) ** 2) / 0.3) * 1.6 - 0.8
    return blob.expand(batch, 1, H, H).clone()


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_downsample_shape_and_range(factor, mode):
    x = torch.rand(3, 2, H, H) * 2 - 1
    y = downsample(x, factor, mode=mode)
    assert y.shape == (3, 2, H // factor, H // factor)
    assert y.dtype == x.dtype and y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("factor", [2, 4])
def test_antialiasing_removes_aliasing_energy(factor):
    # Detail finer than the new grid must vanish (go to the mean, 0), not fold back as a pattern.
    for x in (_checkerboard(), _stripes(0.8 / factor)):
        plain = x[..., ::factor, ::factor]
        alias_plain = plain.pow(2).mean()
        alias_aa = downsample(x, factor).pow(2).mean()
        assert alias_plain > 0.3
        assert alias_aa < 0.01 * alias_plain


def test_upsample_restores_shape_and_smooth_content():
    x = _smooth()
    for factor in (2, 4):
        up = upsample(downsample(x, factor), factor)
        assert up.shape == x.shape
        assert (up - x).abs().mean() < 0.02
    assert upsample(x[..., :16, :16], 4, mode="nearest").shape == (2, 1, 64, 64)


def test_resolution_errors():
    x = torch.zeros(1, 1, 30, 30)
    with pytest.raises(ValueError, match="divisible"):
        downsample(x, 4)
    with pytest.raises(ValueError, match="factor"):
        downsample(x, 0)
    with pytest.raises(ValueError, match="mode"):
        downsample(x, 2, mode="nearest")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        downsample(torch.zeros(30, 30), 2)


# --------------------------------------------------------------------------- masks


def test_box_mask_single_box_area_and_shape():
    m = box_mask((16, 3, H, H), n_boxes=1, size=(0.25, 0.5), seed=0)
    assert m.shape == (16, 1, H, H) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    cover = m.mean(dim=(1, 2, 3))
    # One box with sides in [16, 32] px of 64: between 1/16 and 1/4 of the image.
    assert cover.min() >= 0.0625 - 1e-6 and cover.max() <= 0.25 + 1e-6
    for k in range(16):  # a single box is a filled rectangle: its bounding box is all ones
        rows, cols = m[k, 0].nonzero(as_tuple=True)
        box = m[k, 0, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()
    assert len({tuple(c.tolist()) for c in m.flatten(1)}) > 1  # independent draws per image


def test_box_mask_deterministic_and_seed_dependent():
    a = box_mask((4, H, H), n_boxes=(1, 3), seed=5)
    assert torch.equal(a, box_mask((4, H, H), n_boxes=(1, 3), seed=5))
    assert not torch.equal(a, box_mask((4, H, H), n_boxes=(1, 3), seed=6))


def test_box_mask_seed_none_follows_torch_global_seed():
    torch.manual_seed(0)
    a = box_mask((2, H, H))
    b = box_mask((2, H, H))
    torch.manual_seed(0)
    assert torch.equal(a, box_mask((2, H, H)))
    assert not torch.equal(a, b)  # each call (each batch) gets new holes


def test_stroke_mask_plausible_coverage_and_deterministic():
    m = stroke_mask((32, 1, H, H), seed=0)
    assert m.shape == (32, 1, H, H)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    cover = m.mean(dim=(1, 2, 3))
    assert (cover > 0).all()
    assert 0.03 < cover.mean() < 0.5
    assert torch.equal(m, stroke_mask((32, 1, H, H), seed=0))
    assert not torch.equal(m, stroke_mask((32, 1, H, H), seed=1))


def test_stroke_mask_wider_brush_covers_the_narrow_one():
    # Same seed, same paths; only the brush differs, so the wide mask contains the narrow one.
    thin = stroke_mask((8, H, H), width=0.03, seed=3)
    wide = stroke_mask((8, H, H), width=0.15, seed=3)
    assert (wide >= thin).all()
    assert wide.mean() > 2 * thin.mean()


def test_mask_argument_errors():
    with pytest.raises(ValueError, match="shape"):
        box_mask((H, H))
    with pytest.raises(ValueError, match="size"):
        box_mask((1, H, H), size=(0.5, 0.2))
    with pytest.raises(ValueError):
        stroke_mask((1, H, H), width=0)


def test_apply_mask_fills_holes_and_keeps_the_rest():
    x = torch.rand(4, 3, H, H) * 2 - 1
    m = box_mask(x.shape, seed=1)
    y = apply_mask(x, m, fill=-1.0)
    holes = m.expand_as(x).bool()
    assert (y[holes] == -1).all()
    assert torch.equal(y[~holes], x[~holes])
    assert torch.equal(apply_mask(x, m, fill=0.0)[holes], torch.zeros(int(holes.sum())))
    with pytest.raises(ValueError, match="does not fit"):
        apply_mask(x, m[..., :32])


# --------------------------------------------------------------------------- noise

SIGMA = 0.1
MID = torch.zeros(8, 1, H, H)  # mid-grey: far from the clamp at +-1


def test_gaussian_residual_std_matches_sigma():
    y = gaussian_noise(MID, SIGMA, seed=0)
    residual = y - MID
    assert residual.std().item() == pytest.approx(SIGMA, rel=0.03)
    assert abs(residual.mean().item()) < 0.005
    assert type(y) is torch.Tensor and y.dtype == MID.dtype and y.shape == MID.shape


@pytest.mark.parametrize("noise, level", [(gaussian_noise, 0.1), (poisson_noise, 100.0),
                                          (rician_noise, 0.1)])
def test_noise_deterministic_seed_dependent_and_in_range(noise, level):
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    a = noise(x, level, seed=0)
    assert torch.equal(a, noise(x, level, seed=0))
    assert not torch.equal(a, noise(x, level, seed=1))
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(x, x.clone())  # input untouched


def test_gaussian_noise_zero_sigma_is_identity_and_clamps():
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.allclose(gaussian_noise(x, 0.0, seed=0), x)
    assert gaussian_noise(torch.ones(2, 1, 16, 16), 0.5, seed=0).max() <= 1
    with pytest.raises(ValueError, match="sigma"):
        gaussian_noise(x, -0.1)


def test_poisson_noise_grows_as_photons_fall():
    stds = [(poisson_noise(MID, p, seed=0) - MID).std().item() for p in (1e4, 1e3, 1e2)]
    assert stds[0] < stds[1] < stds[2]
    # At mid-grey the expected count is photons / 2: std on the [-1, 1] scale = 2 sqrt(0.5 / N).
    assert stds[2] == pytest.approx(2 * math.sqrt(0.5 / 1e2), rel=0.1)
    assert abs((poisson_noise(MID, 1e2, seed=0) - MID).mean().item()) < 0.01  # unbiased
    black = -torch.ones(1, 1, 16, 16)
    assert torch.equal(poisson_noise(black, 10.0, seed=0), black)  # no photons, no noise
    with pytest.raises(ValueError, match="photons"):
        poisson_noise(MID, 0)


def test_rician_bias_positive_on_dark_regions_gaussian_like_on_bright():
    dark = -torch.ones(8, 1, H, H)
    y = rician_noise(dark, SIGMA, seed=0)
    # Magnitude of pure noise is Rayleigh: mean s * sqrt(pi / 2) with s = sigma / 2 on [0, 1],
    # i.e. sigma * sqrt(pi / 2) on the [-1, 1] scale. Gaussian noise would leave the mean at -1.
    assert (y + 1).mean().item() == pytest.approx(SIGMA * math.sqrt(math.pi / 2), rel=0.05)
    assert (y >= -1).all()
    bright = torch.full((8, 1, H, H), 0.6)
    residual = rician_noise(bright, SIGMA, seed=0) - bright
    assert residual.std().item() == pytest.approx(SIGMA, rel=0.05)
    assert abs(residual.mean().item()) < 0.01
