"""Behaviour of the evaluation toolkit on synthetic features and a tiny random conv extractor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from medgan_utils import metrics as M

F_DIM = 16


def gauss(n: int, seed: int, dim: int = F_DIM) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g)


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return gauss(400, 0)


@pytest.fixture(scope="module")
def real2() -> torch.Tensor:
    """An independent sample from the same distribution as ``real``."""
    return gauss(400, 1)


class TinyExtractor(nn.Module):
    """Fixed random conv net: (B, 1, 28, 28) -> features (B, 8), logits (B, 3)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(8, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) * 1.6 - 0.8 + shift).clamp(-1, 1)


# --- Frechet distance ---------------------------------------------------------------------------


def scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def test_fd_matches_scipy_reference():
    a = gauss(200, 3, 8).numpy().astype(np.float64)
    b = (gauss(150, 4, 8) * 1.5 + 0.3).numpy().astype(np.float64)
    assert M.frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(
        scipy_fd(a, b), rel=1e-6)


def test_fd_identical_sets_is_zero(real):
    scale = float(torch.cov(real.T.double()).trace())
    assert abs(M.frechet_distance(real, real)) < 1e-3 * scale


def test_fd_and_kid_grow_with_noise(real, real2):
    noise = gauss(400, 7)
    fds, kids = [], []
    for sigma in (0.0, 0.5, 1.0, 2.0):
        other = real2 + sigma * noise
        fds.append(M.frechet_distance(real, other))
        kids.append(M.kid(real, other, subsets=10, seed=0)[0])
    assert fds == sorted(fds) and fds[-1] > 10 * fds[0]
    assert kids == sorted(kids) and kids[-1] > 10 * abs(kids[0])


def test_fd_warns_when_fewer_samples_than_features():
    with pytest.warns(UserWarning, match="rank-deficient"):
        M.frechet_distance(gauss(10, 0), gauss(10, 1))


# --- KID ----------------------------------------------------------------------------------------


def test_kid_same_distribution_is_zero_within_std(real, real2):
    mean, std = M.kid(real, real2, subsets=20, seed=0)
    assert std > 0
    assert abs(mean) < 2 * std


def test_kid_deterministic_under_seed_and_varies_between_seeds(real, real2):
    shifted = real2 + 0.5
    first = M.kid(real, shifted, subsets=5, seed=3)
    assert M.kid(real, shifted, subsets=5, seed=3) == first
    assert M.kid(real, shifted, subsets=5, seed=4) != first
    # The caller's global RNG stream is untouched.
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    M.kid(real, shifted, subsets=2, seed=0)
    assert torch.equal(torch.rand(1), expected)


def test_kid_rejects_too_large_subsets(real):
    with pytest.raises(ValueError, match="subset_size"):
        M.kid(real, real[:50], subset_size=100)


# --- precision / recall / density / coverage ---------------------------------------------------


def test_prdc_identical_sets(real):
    out = M.prdc(real, real.clone())
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0
    assert out["density"] == pytest.approx(1.0, abs=1e-9)


def test_prdc_same_distribution_near_one(real, real2):
    out = M.prdc(real, real2)
    assert out["precision"] > 0.7 and out["recall"] > 0.7 and out["coverage"] > 0.7
    assert 0.7 < out["density"] < 1.3


def test_shifted_set_scores_worse(real, real2):
    good = M.prdc(real, real2)
    bad = M.prdc(real, real2 + 1.5)
    assert bad["precision"] < good["precision"] - 0.3
    assert bad["density"] < good["density"] - 0.3
    assert M.frechet_distance(real, real2 + 1.5) > 10 * M.frechet_distance(real, real2)


def test_prdc_mode_collapse(real):
    collapsed = real[:1].repeat(300, 1)
    out = M.prdc(real, collapsed)
    assert out["precision"] == 1.0  # every fake is a perfectly plausible image...
    assert out["recall"] < 0.01  # ...but the real diversity is not reproduced
    assert out["coverage"] < 0.05


def test_prdc_chunked_equals_unchunked(real, real2, monkeypatch):
    full = M.prdc(real, real2)
    monkeypatch.setattr(M, "_MAX_BLOCK", 1000)  # forces many row chunks
    assert M.prdc(real, real2) == full


# --- memorization -------------------------------------------------------------------------------


def test_memorization_detects_copies(real, real2):
    copies = real[:200] + 1e-3 * gauss(200, 9)
    out = M.memorization(real, real2, copies)
    assert out["frac_closer_to_train"] == 1.0
    assert out["nn_ratio"] < 0.01


def test_memorization_fresh_samples_are_neutral(real, real2):
    fresh = gauss(400, 2)
    out = M.memorization(real, real2, fresh)
    assert out["frac_closer_to_train"] == pytest.approx(0.5, abs=0.1)
    assert out["nn_ratio"] == pytest.approx(1.0, abs=0.15)


def test_memorization_subsamples_larger_set_deterministically(real, real2):
    big_train = torch.cat([real, gauss(400, 5)])
    fresh = gauss(100, 6)
    first = M.memorization(big_train, real2, fresh, seed=0)
    assert M.memorization(big_train, real2, fresh, seed=0) == first
    assert M.memorization(big_train, real2, fresh, seed=1) != first


def test_nearest_neighbours_finds_the_copied_image(real):
    idx = torch.tensor([5, 17, 300])
    nn_idx = M.nearest_neighbours(real[idx] + 1e-4, real, k=3)
    assert nn_idx.shape == (3, 3) and nn_idx.dtype == torch.int64
    assert torch.equal(nn_idx[:, 0], idx)


# --- image metrics ------------------------------------------------------------------------------


def test_psnr_and_ssim():
    x = images(4, 0)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert M.psnr(x, x) == math.inf or M.psnr(x, x) > 100
    values = [M.psnr((x + s * noise).clamp(-1, 1), x) for s in (0.01, 0.1, 0.3)]
    assert values == sorted(values, reverse=True)
    assert M.ssim(x, x) == pytest.approx(1.0, abs=1e-5)
    assert M.ssim((x + 0.3 * noise).clamp(-1, 1), x) < 0.9


def test_class_coverage():
    model = TinyExtractor()
    cov = M.class_coverage(model, images(50, 0), num_classes=3, batch_size=16)
    assert cov.shape == (3,) and cov.sum() == pytest.approx(1.0) and (cov >= 0).all()
    with torch.no_grad():  # a "collapsed" judge: every image lands in class 2
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    np.testing.assert_array_equal(M.class_coverage(model, images(20, 1), num_classes=4),
                                  [0.0, 0.0, 1.0, 0.0])


# --- end to end ---------------------------------------------------------------------------------


def test_evaluate_end_to_end():
    model = TinyExtractor().train()
    train, test = images(300, 1), images(200, 2)
    good = M.evaluate(model, images(120, 3), train, test, batch_size=64, kid_subsets=10)
    assert model.training  # mode restored
    keys = {"fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
            "nn_train_median", "nn_heldout_median", "nn_ratio", "frac_closer_to_train",
            "floor_fd", "floor_kid_mean", "floor_precision", "floor_coverage", "fd_ratio"}
    assert keys <= good.keys()
    assert all(isinstance(v, float) and math.isfinite(v) for v in good.values())
    assert good["floor_fd"] > 0 and good["fd_ratio"] == good["fd"] / good["floor_fd"]
    assert M.evaluate(model, images(120, 3), train, test, batch_size=64, kid_subsets=10) == good
    bad = M.evaluate(model, images(120, 3, shift=0.5), train, test, batch_size=64, floor=False)
    assert "floor_fd" not in bad
    assert bad["fd"] > 5 * good["fd"] and bad["precision"] < good["precision"]


def test_fd_floor_over_seeds():
    model = TinyExtractor()
    mean, std, values = M.fd_floor_over_seeds(model, images(200, 1), images(150, 2), n=100,
                                              seeds=[0, 1, 2])
    assert len(values) == 3 and len(set(values)) == 3
    assert mean == pytest.approx(np.mean(values)) and std > 0


def test_membership_auc_betrays_copies_and_not_fresh_samples():
    from medgan_utils.metrics import membership_auc

    g = torch.Generator().manual_seed(0)
    members, nonmembers = torch.randn(300, 16, generator=g), torch.randn(200, 16, generator=g)
    copies = members + 0.01 * torch.randn(300, 16, generator=g)      # a generator that memorised
    fresh = torch.randn(600, 16, generator=g)                         # one that learned the law
    leaky = membership_auc(members, nonmembers, copies)
    assert leaky["mia_auc"] > 0.95 and leaky["n"] == 200.0  # equal n: members subsampled to 200
    assert leaky["mia_member_median"] < 0.1 < leaky["mia_nonmember_median"]
    assert abs(membership_auc(members, nonmembers, fresh)["mia_auc"] - 0.5) < 0.08
