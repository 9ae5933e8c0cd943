"""Evaluation toolkit for generated images: FD, KID, precision/recall/density/coverage, memorization.

Every chapter judges its generator with the same numbers, measured on the penultimate features of
the course's in-domain classifier (``medgan_utils.models.Classifier.features``), because no
ImageNet Inception network can be downloaded here and ImageNet features judge X-rays poorly
anyway. The numbers are therefore *not* comparable with published FID/KID values; they are
comparable between runs of this course that use the same extractor checkpoint.

Layers, lowest first:

* feature-set metrics, tensors ``(N, F)`` in, Python floats out: :func:`frechet_distance`,
  :func:`kid`, :func:`prdc`, :func:`memorization`, :func:`nearest_neighbours`, and
  :func:`feature_metrics`, which returns all of them in one flat dict;
* image metrics, ``(B, C, H, W)`` in [-1, 1]: :func:`psnr`, :func:`ssim` (for the
  super-resolution and reconstruction chapters), :func:`class_coverage` (mode collapse,
  class balance);
* :func:`evaluate`: images in, features extracted, metrics *and their floor* out. The floor is
  what a perfect generator would score with the same number of samples (real training images
  against the same test images). FD in particular is biased upwards at small n, so a bare FD
  means little: compare ``fd`` with ``floor_fd`` (``fd_ratio``), always at equal n.

Introduced in ``notebooks/03_wgan_gp.ipynb``; every later chapter imports it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import FIDMetric, PSNRMetric, SSIMMetric
from torch import nn
from torchmetrics.image.kid import KernelInceptionDistance

__all__ = [
    "class_coverage", "copy_fraction", "evaluate", "extract_features", "fd_floor_over_seeds",
    "feature_metrics",
    "attack_auc", "frechet_distance", "kid", "membership_auc", "memorization", "nearest_neighbours", "prdc", "psnr",
    "ssim",
]

# Pairwise-distance blocks are computed a row chunk at a time so that N = M = 5000 never holds
# the full (N, M) float64 matrix (200 MB): at most this many entries per block (64 MB).
_MAX_BLOCK = 2**23

# The keys of ``feature_metrics`` that describe distributions (and so have a floor in
# ``evaluate``); the memorization keys compare against the training set and have none.
_DIST_KEYS = ("fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage")


def _as_features(x: torch.Tensor, name: str) -> torch.Tensor:
    """Validate an (N, F) feature tensor and return it as float64 (distances, covariances)."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim != 2:
        raise ValueError(f"{name} must be features of shape (N, F), got {tuple(x.shape)}; "
                         "pass images through extract_features(extractor, images) first.")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {x.shape[0]}.")
    return x.detach().to(torch.float64)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()  # CPU: index draws are cheap and then identical on every device
    g.manual_seed(seed)
    return g


def _row_chunks(n_rows: int, n_cols: int) -> Iterable[slice]:
    step = max(1, _MAX_BLOCK // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


# ----------------------------------------------------------------------------------------------
# Distribution distances
# ----------------------------------------------------------------------------------------------


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID without Inception).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, computed in float64 by MONAI's
    :class:`monai.metrics.FIDMetric`. Biased upwards at small n: compare values only at equal
    sample sizes, and against the real-vs-real floor (see :func:`evaluate`).

    Args:
        feats_a: features (N_a, F), e.g. of generated images.
        feats_b: features (N_b, F), e.g. of real test images.

    Returns:
        The distance (>= 0 up to rounding), in squared feature units.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}.")
    if min(a.shape[0], b.shape[0]) <= a.shape[1]:
        warnings.warn(f"FD with {min(a.shape[0], b.shape[0])} samples of {a.shape[1]} features: "
                      "the covariance is rank-deficient and the value unreliable; use more "
                      "samples than features.", stacklevel=2)
    with warnings.catch_warnings():
        # MONAI (1.6) still passes scipy.linalg.sqrtm(disp=False), deprecated in SciPy 1.17.
        warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated.*",
                                category=DeprecationWarning)
        # A collapsed generator gives a singular covariance; sqrtm then warns, but the distance
        # is still finite and (correctly) large, which is the answer we want to report.
        warnings.filterwarnings("ignore", message=".*[Ss]ingular.*")
        warnings.filterwarnings("ignore", message=".*invalid value encountered in scalar divide.*")
        return float(FIDMetric()(a.cpu(), b.cpu()))


def kid(
    feats_a: torch.Tensor,
    feats_b: torch.Tensor,
    subsets: int = 50,
    subset_size: int | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the kernel ``(x.y / F + 1)^3``.

    Binkowski et al. 2018, via :class:`torchmetrics.image.KernelInceptionDistance` fed
    precomputed features (its documented custom-extractor path, with ``nn.Identity`` as the
    "extractor"). Its subset draws use torch's global RNG, so they run inside a forked RNG seeded
    with ``seed``: repeatable, and the caller's random stream is left untouched.

    Unlike FD, the estimate is unbiased at any n (so it can be slightly negative), which makes it
    the better number for small sample sizes. Kernels are computed in float64 (MMD^2 is a small
    difference of large kernel means); 50 subsets of 1000 128-d features take ~10 s on a 2-core
    CPU, so quick runs should pass fewer ``subsets``.

    Args:
        feats_a: features (N_a, F) (treated as "real"; the value is symmetric).
        feats_b: features (N_b, F).
        subsets: number of random subsets the MMD is averaged over.
        subset_size: samples per subset, drawn without replacement. Default
            ``min(1000, N_a // 2, N_b // 2)``: half the data, so that subsets differ and the
            std means something (with ``subset_size == N`` every subset is the full set).
        seed: seeds the subset draws.

    Returns:
        ``(mean, std)`` of the MMD^2 estimates over subsets.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    n = min(a.shape[0], b.shape[0])
    if subset_size is None:
        subset_size = min(1000, n // 2)
    if not 2 <= subset_size <= n:
        raise ValueError(f"subset_size must be in [2, {n}] (the smaller set's size), got "
                         f"{subset_size}; KID needs at least 4 samples per set by default.")
    with warnings.catch_warnings():
        # "will save all extracted features in buffer": they are ours already, held anyway.
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = KernelInceptionDistance(feature=nn.Identity(), subsets=subsets,
                                         subset_size=subset_size)
    metric.update(a, real=True)
    metric.update(b, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


# ----------------------------------------------------------------------------------------------
# Fidelity / diversity and memorization (k-NN based)
# ----------------------------------------------------------------------------------------------


def _kth_nn_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of ``x`` (N, F) to its k-th nearest other row, (N,)."""
    radii = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for rows in _row_chunks(x.shape[0], x.shape[0]):
        d = torch.cdist(x[rows], x)
        # k + 1 smallest: the first is the point itself (distance 0).
        radii[rows] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020).

    Each real sample gets a ball reaching its k-th nearest real neighbour (likewise for fakes).

    * precision: fraction of fakes inside at least one real ball (fidelity);
    * recall: fraction of reals inside at least one fake ball (diversity; ~0 under mode collapse);
    * density: mean number of real balls containing a fake, divided by k (~1 when the
      distributions match, > 1 when fakes crowd into dense real regions; robust to outliers);
    * coverage: fraction of reals whose ball contains at least one fake.

    Hand-written: neither MONAI nor torchmetrics has these, and the reference ``prdc`` package
    (numpy, sklearn) builds full N x N matrices; this computes the same quantities block by block
    with ``torch.cdist`` (N = M = 5000 in about 64 MB).

    Args:
        real: real features (N, F).
        fake: generated features (M, F).
        k: neighbourhood size (5 in both papers).

    Returns:
        ``{"precision", "recall", "density", "coverage"}``, each a float.
    """
    real, fake = _as_features(real, "real"), _as_features(fake, "fake")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"prdc needs more than k={k} samples per set, got "
                         f"{real.shape[0]} real and {fake.shape[0]} fake.")
    fake = fake.to(real.device)
    r_real = _kth_nn_radius(real, k)
    r_fake = _kth_nn_radius(fake, k)
    balls_per_fake = torch.zeros(fake.shape[0], dtype=torch.float64, device=real.device)
    real_recalled = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    real_covered = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    for rows in _row_chunks(real.shape[0], fake.shape[0]):
        d = torch.cdist(real[rows], fake)  # (chunk, M)
        inside_real = d < r_real[rows, None]
        balls_per_fake += inside_real.sum(dim=0)
        real_recalled[rows] = (d < r_fake[None, :]).any(dim=1)
        real_covered[rows] = inside_real.any(dim=1)
    return {
        "precision": float((balls_per_fake > 0).double().mean()),
        "recall": float(real_recalled.double().mean()),
        "density": float(balls_per_fake.mean() / k),
        "coverage": float(real_covered.double().mean()),
    }


def _nn(query: torch.Tensor, ref: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest rows of ``ref`` for each row of ``query``: (distances, indices), each (M, k)."""
    dists, idx = [], []
    for rows in _row_chunks(query.shape[0], ref.shape[0]):
        top = torch.cdist(query[rows], ref).topk(k, dim=1, largest=False)
        dists.append(top.values)
        idx.append(top.indices)
    return torch.cat(dists), torch.cat(idx)


def nearest_neighbours(
    fake_feats: torch.Tensor, train_feats: torch.Tensor, k: int = 1
) -> torch.Tensor:
    """Indices of each fake's k nearest training samples in feature space.

    For showing generated images beside their closest training images (the visual
    memorization check that goes with :func:`memorization`).

    Args:
        fake_feats: generated features (M, F).
        train_feats: training features (N, F).
        k: neighbours per fake, nearest first.

    Returns:
        LongTensor (M, k) of row indices into ``train_feats``, on the CPU.
    """
    fake = _as_features(fake_feats, "fake_feats")
    train = _as_features(train_feats, "train_feats").to(fake.device)
    if not 1 <= k <= train.shape[0]:
        raise ValueError(f"k must be in [1, {train.shape[0]}], got {k}.")
    return _nn(fake, train, k)[1].cpu()


def _equal_n(a: torch.Tensor, b: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Subsample the larger of two feature sets (seeded) to the size of the smaller:
    nearest-neighbour distances shrink as a set grows, so sets compared by them need equal n."""
    n = min(a.shape[0], b.shape[0])
    g = _generator(seed)
    if a.shape[0] > n:
        a = a[torch.randperm(a.shape[0], generator=g)[:n].to(a.device)]
    if b.shape[0] > n:
        b = b[torch.randperm(b.shape[0], generator=g)[:n].to(b.device)]
    return a, b


def _real_pair_and_fakes(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str, fake: torch.Tensor,
                         seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two real feature sets and the fakes' features, checked, on one device, the real sets at
    equal n (:func:`_equal_n`): the common start of the nearest-neighbour comparisons."""
    a = _as_features(a, a_name)
    b = _as_features(b, b_name).to(a.device)
    fake = _as_features(fake, "fake_feats").to(a.device)
    a, b = _equal_n(a, b, seed)
    return a, b, fake


def memorization(
    train_feats: torch.Tensor,
    heldout_feats: torch.Tensor,
    fake_feats: torch.Tensor,
    seed: int = 0,
) -> dict[str, float]:
    """Do generated samples sit closer to the training set than to unseen real data?

    For each fake, the distance to its nearest neighbour in the training set and in a held-out
    real set. The larger of the two reference sets is subsampled (seeded) to the size of the
    smaller, because nearest-neighbour distances shrink as a set grows. A generator that learned
    the distribution is as close to unseen real images as to training ones; one that copies
    training images is much closer to them. Caveat: subsampling a large training set can drop
    the very images a fake copies, so supply a held-out set as large as you can. Read these
    numbers only when precision is reasonable: fakes far from all real data share one nearest
    neighbour (the most extreme point of each set), and ``frac_closer_to_train`` then swings
    towards 0 or 1 for reasons that have nothing to do with copying.

    Hand-written (no library provides it); in the spirit of the data-copying tests of
    Meehan et al. 2020 and the nearest-neighbour checks of Carlini et al. 2023.

    Args:
        train_feats: training-set features (N_train, F).
        heldout_feats: features of real images the generator never saw (N_heldout, F).
        fake_feats: generated features (M, F).
        seed: seeds the subsampling.

    Returns:
        ``nn_train_median`` and ``nn_heldout_median``: median NN distances of the fakes;
        ``nn_ratio``: their ratio, train / held-out (~1 fine, << 1 memorization warning);
        ``frac_closer_to_train``: fraction of fakes whose training NN is nearer than their
        held-out NN (~0.5 fine, -> 1 copying).
    """
    train, held, fake = _real_pair_and_fakes(train_feats, "train_feats", heldout_feats, "heldout_feats",
                                             fake_feats, seed)
    d_train = _nn(fake, train, 1)[0][:, 0]
    d_held = _nn(fake, held, 1)[0][:, 0]
    med_train, med_held = float(d_train.median()), float(d_held.median())
    return {
        "nn_train_median": med_train,
        "nn_heldout_median": med_held,
        "nn_ratio": med_train / med_held if med_held > 0 else float("inf"),
        "frac_closer_to_train": float((d_train < d_held).double().mean()),
    }


def copy_fraction(
    train_feats: torch.Tensor,
    heldout_feats: torch.Tensor,
    fake_feats: torch.Tensor,
    quantile: float = 0.05,
) -> dict[str, float]:
    """Fraction of fakes nearer to a training image than almost any unseen real image is.

    The threshold is the ``quantile`` of the nearest-training-neighbour distances of held-out
    real images (which the generator never saw); a fake closer than that to some training image
    is a (near-)copy. Unseen real images therefore score about ``quantile`` by construction, a
    generator that copies scores up to 1. Unlike :func:`memorization`, it compares with the
    *whole* training set (no subsampling to the held-out size), so an exact copy of any training
    image is caught (its distance is 0). Hand-written (no library provides it); the
    nearest-neighbour test of Carlini et al. 2023, calibrated on held-out data.

    Args:
        train_feats: training-set features (N_train, F).
        heldout_feats: features of real images the generator never saw (N_heldout, F).
        fake_feats: generated features (M, F).
        quantile: share of held-out images allowed below the threshold (the false-alarm rate).

    Returns:
        ``copy_frac`` (fraction of fakes below the threshold) and ``copy_threshold``.
    """
    train = _as_features(train_feats, "train_feats")
    held = _as_features(heldout_feats, "heldout_feats").to(train.device)
    fake = _as_features(fake_feats, "fake_feats").to(train.device)
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    threshold = float(torch.quantile(_nn(held, train, 1)[0][:, 0], quantile))
    d_fake = _nn(fake, train, 1)[0][:, 0]
    return {"copy_frac": float((d_fake < threshold).double().mean()), "copy_threshold": threshold}


def membership_auc(
    member_feats: torch.Tensor,
    nonmember_feats: torch.Tensor,
    fake_feats: torch.Tensor,
    seed: int = 0,
) -> dict[str, float]:
    """A black-box membership-inference attack on a generator: its ROC AUC.

    The attacker holds generated samples and a candidate real image and guesses "member of the
    training set" when the image lies close to some fake: the score is minus its distance to the
    nearest fake (the full black-box attack of GAN-Leaks, Chen et al. 2020). Members are training
    images, non-members real images the generator never saw; the larger set is subsampled
    (seeded) to the size of the smaller, so the AUC is not biased by their sizes. 0.5 = the
    attacker learns nothing; 1 = every training image is betrayed by a nearby fake (a generator
    that copies). Small training sets make the attack stronger. Hand-written on ``cdist`` (no
    library implements attacks on generators); the AUC is scikit-learn's.

    Args:
        member_feats: features of training images (N_member, F).
        nonmember_feats: features of unseen real images (N_nonmember, F).
        fake_feats: generated features (M, F).
        seed: seeds the subsampling.

    Returns:
        ``mia_auc``, and ``mia_member_median`` / ``mia_nonmember_median`` (median distances to the
        nearest fake) and ``n`` (images per side).
    """
    member, non, fake = _real_pair_and_fakes(member_feats, "member_feats", nonmember_feats, "nonmember_feats",
                                             fake_feats, seed)
    d_member, d_non = _nn(member, fake, 1)[0][:, 0], _nn(non, fake, 1)[0][:, 0]
    return {"mia_auc": attack_auc(-d_member, -d_non), "mia_member_median": float(d_member.median()),
            "mia_nonmember_median": float(d_non.median()), "n": float(member.shape[0])}


def attack_auc(member_scores: torch.Tensor | np.ndarray, nonmember_scores: torch.Tensor | np.ndarray) -> float:
    """ROC AUC of a membership attack that calls an image a member when its score is high.

    Any attack reduces to a score per candidate image: minus the distance to the nearest fake
    (:func:`membership_auc`), a discriminator's logit (the white-box attack of LOGAN, Hayes et
    al. 2019: an overfitted D scores its training images higher)... 0.5 = no better than a coin.
    Compare sets of equal size (or subsample: :func:`membership_auc` does)."""
    from sklearn.metrics import roc_auc_score

    m = np.asarray(torch.as_tensor(member_scores).detach().cpu(), dtype=np.float64).reshape(-1)
    n = np.asarray(torch.as_tensor(nonmember_scores).detach().cpu(), dtype=np.float64).reshape(-1)
    if not len(m) or not len(n):
        raise ValueError(f"an attack AUC needs members and non-members, got {len(m)} and {len(n)}")
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise ValueError("attack scores must be finite")
    return float(roc_auc_score(np.r_[np.ones(len(m)), np.zeros(len(n))], np.r_[m, n]))


def feature_metrics(
    real_train: torch.Tensor,
    real_test: torch.Tensor,
    fake: torch.Tensor,
    seed: int = 0,
    *,
    k: int = 5,
    kid_subsets: int = 50,
) -> dict[str, float]:
    """All feature-space metrics of ``fake`` against ``real_test`` (memorization also uses train).

    Args:
        real_train: features of the generator's training images (N_train, F).
        real_test: features of held-out real images (N_test, F): the reference distribution.
        fake: features of generated images (M, F).
        seed: seeds KID subsets and memorization subsampling.
        k: neighbourhood size for precision/recall/density/coverage.
        kid_subsets: number of KID subsets.

    Returns:
        ``fd, kid_mean, kid_std, precision, recall, density, coverage, nn_train_median,
        nn_heldout_median, nn_ratio, frac_closer_to_train`` (floats).
    """
    kid_mean, kid_std = kid(real_test, fake, subsets=kid_subsets, seed=seed)
    return {
        "fd": frechet_distance(fake, real_test),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        **prdc(real_test, fake, k=k),
        **memorization(real_train, real_test, fake, seed=seed),
    }


# ----------------------------------------------------------------------------------------------
# From images
# ----------------------------------------------------------------------------------------------


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def _batched(
    module: nn.Module,
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """Run ``fn`` over ``images`` in batches with ``module`` in eval mode (mode restored after)."""
    device, was_training = _device_of(module), module.training
    module.eval()
    try:
        outs = [fn(images[i:i + batch_size].to(device)).float().cpu()
                for i in range(0, len(images), batch_size)]
    finally:
        module.train(was_training)
    return torch.cat(outs)


def extract_features(extractor: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features of ``images`` from ``extractor.features`` (or the module itself if it has none).

    Args:
        extractor: e.g. a trained :class:`medgan_utils.models.Classifier`.
        images: (N, C, H, W) in [-1, 1], on any device.
        batch_size: images per forward pass.

    Returns:
        Features (N, F), float32, on the CPU.
    """
    fn = getattr(extractor, "features", extractor)
    feats = _batched(extractor, fn, images, batch_size)
    if feats.ndim != 2:
        raise ValueError(f"the extractor returned shape {tuple(feats.shape)}, expected (B, F): "
                         "pool its feature maps to vectors (e.g. adaptive_avg_pool2d + flatten).")
    return feats


def _subset(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return x[torch.randperm(x.shape[0], generator=_generator(seed))[:n]]


def evaluate(
    extractor: nn.Module,
    fake_images: torch.Tensor,
    real_train_images: torch.Tensor,
    real_test_images: torch.Tensor,
    batch_size: int = 256,
    seed: int = 0,
    floor: bool = True,
    *,
    kid_subsets: int = 50,
    real_heldout_images: torch.Tensor | None = None,
) -> dict[str, float]:
    """Extract features and score generated images against held-out real ones, with the floor.

    The floor is what a *perfect* generator would score with the same number of samples: a
    random subset of real training images, as many as there are fakes, scored against the same
    test images. FD is biased upwards at small n (with 500 samples a perfect generator does not
    get 0), so read ``fd`` next to ``floor_fd`` and report ``fd_ratio = fd / floor_fd``
    (1 is as good as real data), always with the same number of fakes. Memorization metrics
    have no floor: the floor set *is* training data, so it would trivially "memorize".

    Args:
        extractor: feature network with ``.features(x) -> (B, F)``, e.g. a trained
            :class:`medgan_utils.models.Classifier`; run in eval mode without gradients on its
            own device (its mode is restored afterwards).
        fake_images: generated images (M, C, H, W) in [-1, 1].
        real_train_images: the generator's training images (N_train, C, H, W) in [-1, 1].
        real_test_images: held-out real images (N_test, C, H, W) in [-1, 1].
        batch_size: images per forward pass.
        seed: seeds KID subsets, memorization and the floor's training subset.
        floor: also compute the real-vs-real floor (adds ``floor_*`` keys and ``fd_ratio``).
        kid_subsets: KID subsets per comparison. KID dominates the cost: 50 subsets of 1000
            128-d features take ~10 s on a 2-core CPU (twice with the floor); use ~10 in quick
            runs.
        real_heldout_images: real images that neither the generator nor the extractor saw
            (e.g. the validation split). The extractor was trained on the training split, so
            training images sit slightly apart from unseen ones in its feature space and the
            train-vs-test floor is somewhat pessimistic (a generator can score below it). With
            this set, ``heldout_floor_fd`` (held-out vs test) and ``heldout_fd`` (as many fakes vs
            test) give a floor free of that bias, and ``heldout_fd_ratio`` their ratio.

    Returns:
        The keys of :func:`feature_metrics`; with ``floor``, also ``floor_fd``,
        ``floor_kid_mean``, ``floor_kid_std``, ``floor_precision``, ``floor_recall``,
        ``floor_density``, ``floor_coverage`` and ``fd_ratio``.
    """
    fake = extract_features(extractor, fake_images, batch_size)
    train = extract_features(extractor, real_train_images, batch_size)
    test = extract_features(extractor, real_test_images, batch_size)
    out = feature_metrics(train, test, fake, seed=seed, kid_subsets=kid_subsets)
    if floor:
        n = fake.shape[0]
        if train.shape[0] < n:
            warnings.warn(f"floor: only {train.shape[0]} training images for {n} fakes; the floor "
                          "uses fewer samples than the fakes and is biased upwards. Pass fewer "
                          "fakes or more training images.", stacklevel=2)
        ref = _subset(train, n, seed)
        kid_mean, kid_std = kid(test, ref, subsets=kid_subsets, seed=seed)
        base = {"fd": frechet_distance(ref, test), "kid_mean": kid_mean, "kid_std": kid_std,
                **prdc(test, ref)}
        out.update({f"floor_{key}": base[key] for key in _DIST_KEYS})
        out["fd_ratio"] = out["fd"] / out["floor_fd"] if out["floor_fd"] > 0 else float("inf")
    if real_heldout_images is not None:
        held = extract_features(extractor, real_heldout_images, batch_size)
        m = min(held.shape[0], fake.shape[0])
        out["heldout_floor_fd"] = frechet_distance(_subset(held, m, seed), test)
        out["heldout_fd"] = frechet_distance(_subset(fake, m, seed), test)
        out["heldout_fd_ratio"] = out["heldout_fd"] / out["heldout_floor_fd"]
        out["heldout_n"] = float(m)
    return out


def fd_floor_over_seeds(
    extractor: nn.Module,
    train: torch.Tensor,
    test: torch.Tensor,
    n: int,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    batch_size: int = 256,
) -> tuple[float, float, list[float]]:
    """The FD floor's spread: FD of ``n`` random training images vs the test set, per seed.

    Tells how much of a difference between two generators' FDs is just sampling noise.

    Args:
        extractor: as in :func:`evaluate`.
        train: real training images (N_train, C, H, W) in [-1, 1], N_train >= n.
        test: held-out real images (N_test, C, H, W) in [-1, 1].
        n: samples per draw; use the number of fakes you evaluate.
        seeds: one draw per seed.
        batch_size: images per forward pass.

    Returns:
        ``(mean, std, values)``: mean and sample std (ddof=1; 0 for one seed) of the FDs, and
        the FDs in ``seeds`` order.
    """
    if n > len(train):
        raise ValueError(f"n={n} exceeds the {len(train)} training images available.")
    f_train = extract_features(extractor, train, batch_size)
    f_test = extract_features(extractor, test, batch_size)
    values = [frechet_distance(_subset(f_train, n, s), f_test) for s in seeds]
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), std, values


def class_coverage(
    classifier: nn.Module, images: torch.Tensor, num_classes: int, batch_size: int = 256
) -> np.ndarray:
    """Fraction of ``images`` that ``classifier`` assigns to each class (argmax of its logits).

    Compare with the real class frequencies: missing classes reveal mode collapse, skewed ones
    a class imbalance the generator made up (or a conditional GAN ignoring its label).

    Args:
        classifier: images (B, C, H, W) in [-1, 1] -> logits (B, num_classes).
        images: (N, C, H, W) in [-1, 1].
        num_classes: length of the result.
        batch_size: images per forward pass.

    Returns:
        float array (num_classes,) summing to 1.
    """
    logits = _batched(classifier, classifier, images, batch_size)
    counts = torch.bincount(logits.argmax(dim=1), minlength=num_classes)
    return (counts.double() / counts.sum()).numpy()


# ----------------------------------------------------------------------------------------------
# Paired image similarity (super-resolution, reconstruction)
# ----------------------------------------------------------------------------------------------


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB, mean over the batch (MONAI's :class:`PSNRMetric`).

    Args:
        x: images (B, C, H, W) (or (B, C, D, H, W)) in [-1, 1], e.g. reconstructions.
        y: reference images of the same shape.
        data_range: max - min of the intensity scale (2 for [-1, 1]).

    Returns:
        Mean PSNR; ``inf`` if any pair is identical.
    """
    return float(PSNRMetric(max_val=data_range)(y_pred=x, y=y).mean())


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> float:
    """Structural similarity, mean over the batch (MONAI's :class:`SSIMMetric`, 11 px window).

    Args:
        x: images (B, C, H, W) (or (B, C, D, H, W)) in [-1, 1]; every spatial side >= 11 px.
        y: reference images of the same shape.
        data_range: max - min of the intensity scale (2 for [-1, 1]).

    Returns:
        Mean SSIM, 1 for identical images.
    """
    if min(x.shape[2:]) < 11:
        raise ValueError(f"SSIM's 11 px window needs images >= 11 px, got {tuple(x.shape)}.")
    metric = SSIMMetric(spatial_dims=x.ndim - 2, data_range=data_range)
    return float(metric(y_pred=x, y=y).mean())


@torch.no_grad()
def evaluate_paired(model: Any, kind: Any, images: torch.Tensor, seed: int = 0,
                    batch_size: int = 256) -> dict[str, float]:
    """An image-to-image model against its kind's classical baseline, on held-out pairs.

    ``kind.make_pairs(images, config, seed)`` degrades clean test images (N, C, H, W) in [-1, 1]
    into ``(inputs, targets)``; the model's ``apply`` and ``kind.baseline`` (bicubic upsampling,
    a filter...) each restore the inputs, and both are scored against the targets, so a number
    is never shown without the classical method beside it.

    Returns:
        ``model_psnr``, ``model_ssim``, ``baseline_psnr``, ``baseline_ssim`` and ``n``.
    """
    if kind.make_pairs is None or kind.baseline is None:
        raise ValueError(f"model kind {kind.name!r} declares no make_pairs/baseline to evaluate with")
    inputs, targets = kind.make_pairs(images, model.config, seed)
    device = getattr(model, "device", "cpu")
    out = torch.cat([model.apply(inputs[i:i + batch_size].to(device)).cpu()
                     for i in range(0, len(inputs), batch_size)])
    base = kind.baseline(inputs, model.config)
    return {"model_psnr": psnr(out, targets), "model_ssim": ssim(out, targets),
            "baseline_psnr": psnr(base, targets), "baseline_ssim": ssim(base, targets),
            "n": float(len(targets))}
