"""Chapter 07: judging unpaired CT <-> MRI translation when no paired truth exists.

There is no MRI of the patient whose CT we translate, so no PSNR against a truth. What can be
measured, each beside a classical baseline and a yardstick:

* **Domain verdict**: a CT-vs-MRI classifier trained on the training split
  (:func:`train_domain_classifier`) says which modality a translation looks like. Easy to fool
  (a global intensity change may do), so never alone.
* **Distribution distance**: FD, precision and recall of the translated test images against real
  held-out images of the target modality, in the label-free feature space of the evaluation
  toolkit (the autoencoder trained on CT and MRI, ``checkpoints/autoencoder_ctmri_64``), and FD
  in a texture space (:func:`texture_features`; the autoencoder does not see noise), next to the
  source's own distance (what doing nothing scores), the baseline's, and the floor (real training
  images of the target modality against the same reference).
* **Structure preservation**: Dice of head masks and F1 of edges between each input and its
  translation. A translation that moves the skull or the ventricles is wrong however real it
  looks; the baseline (a monotone intensity map) moves nothing by construction, so it is the
  ceiling here, not a competitor.
* **Cycle error**: PSNR/SSIM (inside the head) of input vs translated-and-back. High cycle PSNR
  says the information survived the round trip, *not* that the translation is faithful: a
  CycleGAN can hide what it needs in faint patterns (Chu et al. 2017).

The head is found relative to each image's own background (:func:`outline_mask`), so a grey
background is not mistaken for anatomy. The baseline (:func:`classical_translation`): invert the
intensities inside the head (bone bright in CT is dark in MRI; CSF dark in CT is bright on T2),
then match the histogram of head pixels to the target modality's training histogram.

Held-out images: the test split of each modality is translated; the reference of the target
modality is its validation and test images (34 + 74 MRI, 75 + 150 CT), which no model saw.
The domain classifier and the autoencoder work at 64 px (:data:`FEATURE_SIZE`): images are
shrunk by area averaging (:func:`~medgan_utils.data.ctmri.shrink`) exactly as their training
images were; the texture space, Dice, edges and cycle error work at 128 px. Translations are
rounded to 8 bits first, as ``medgan apply`` writes them.

Introduced in ``notebooks/07_cyclegan.ipynb``.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import gaussian_blur, gaussian_noise, to_float, to_uint8
from .data.ctmri import CTMRI_SIZE, DOMAINS, head_region, load_ctmri, shrink
from .metrics import frechet_distance, prdc
from .utils import CHECKPOINT_DIR

DATASET = "ctmri"
FEATURE_SIZE = 64
DOMAIN_CLASSIFIER = CHECKPOINT_DIR / "domain_ctmri_64.safetensors"
PRDC_K = 5


# -- data ---------------------------------------------------------------------------------------


def domain_images(label: int, split: str, size: int = CTMRI_SIZE) -> torch.Tensor:
    """Float (N, 1, size, size) in [-1, 1] of one modality (0 CT, 1 MRI) of a split."""
    data = load_ctmri(split, size)
    return to_float(torch.from_numpy(np.array(data.images[np.asarray(data.labels) == label])))


def spread(x: torch.Tensor, n: int | None) -> torch.Tensor:
    """``n`` images spread evenly over ``x`` (all when ``n`` is None or too large): a subset that
    is not one contiguous block of file numbers, i.e. not a few heads."""
    if n is None or n >= len(x):
        return x
    return x[torch.linspace(0, len(x) - 1, n).round().long()]


def eight_bit(x: torch.Tensor) -> torch.Tensor:
    """Images rounded to 8 bits on the CPU, as files and ``medgan apply`` hold them."""
    return to_float(torch.from_numpy(to_uint8(x.detach().cpu())))


def reference_images(label: int, size: int = CTMRI_SIZE) -> torch.Tensor:
    """The held-out real images of a modality: its validation and test slices."""
    return torch.cat([domain_images(label, "val", size), domain_images(label, "test", size)])


def to_feature_size(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, S, S) in [-1, 1] at any multiple of 64 px -> (N, 1, 64, 64), via 8 bits and area
    averaging, as :func:`~medgan_utils.data.ctmri.load_ctmri` makes its 64 px images."""
    side = x.shape[-1]
    if side % FEATURE_SIZE:
        raise ValueError(f"images of {side} px: expected a multiple of {FEATURE_SIZE}")
    return to_float(torch.from_numpy(shrink(to_uint8(x.cpu()), side // FEATURE_SIZE)))


# -- the classical baseline ---------------------------------------------------------------------


def _head_pixels(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    m = outline_mask(x).numpy()
    return x.cpu().numpy(), m


def target_histogram(label: int, size: int = CTMRI_SIZE) -> np.ndarray:
    """Sorted head-pixel values of a modality's training images (the matching reference)."""
    x, m = _head_pixels(domain_images(label, "train", size))
    return np.sort(x[m])


def classical_translation(x: torch.Tensor, target: np.ndarray) -> torch.Tensor:
    """Intensity inversion inside the head, then histogram matching of the head pixels to
    ``target`` (:func:`target_histogram` of the target modality), image by image; the
    background stays black.

    Args:
        x: (N, 1, H, W) in [-1, 1], source modality.
        target: sorted head-pixel values of the target modality.
    """
    from scipy.stats import rankdata

    arr, mask = _head_pixels(x)
    out = np.full_like(arr, -1.0)
    q = (np.arange(len(target)) + 0.5) / len(target)
    for i in range(len(arr)):
        m = mask[i]
        vals = -arr[i][m]  # inverted
        if not vals.size:
            continue
        # Rank-based matching: each pixel takes the target value at its own quantile (equal
        # inputs share their mean rank, so the map is a function of intensity).
        ranks = (rankdata(vals) - 0.5) / vals.size
        out[i][m] = np.interp(ranks, q, target)
    return torch.from_numpy(out).float().to(x.device)


# -- the domain classifier ----------------------------------------------------------------------


def train_domain_classifier(path: str | os.PathLike = DOMAIN_CLASSIFIER, *, seed: int = 0,
                            device: torch.device | str = "cpu") -> tuple[Path, dict[str, Any]]:
    """Train the CT-vs-MRI classifier on the training split at 64 px (the course's classifier
    recipe, with flips and rotations; a small network with a stride-2 stem: the task is easy)
    and save it with its validation and test accuracy."""
    from .classify import (
        ClassifierTrainConfig,
        auc_acc,
        predict_proba,
        save_classifier,
        train_classifier,
    )
    from .models.classifier import ClassifierConfig

    tr, va, te = (load_ctmri(s, FEATURE_SIZE) for s in ("train", "val", "test"))
    t0 = time.perf_counter()
    net, rec = train_classifier(np.array(tr.images), np.array(tr.labels), va, 2,
                                ClassifierTrainConfig(max_epochs=8, patience=3, seed=seed),
                                ClassifierConfig(channels=1, num_classes=2, width=16, stem_stride=2),
                                device=device)
    test = auc_acc(predict_proba(net, np.array(te.images)), np.array(te.labels))
    facts = {"dataset": DATASET, "size": FEATURE_SIZE, "classes": DOMAINS, "seed": seed,
             "val_acc": rec["val_acc"], "test_acc": test["acc"], "test_auc": test["auc"],
             "best_epoch": rec["best_epoch"], "train_seconds": round(time.perf_counter() - t0, 1)}
    return save_classifier(net.cpu(), path, **facts), facts


def load_domain_classifier(path: str | os.PathLike = DOMAIN_CLASSIFIER):
    from .classify import load_classifier

    if not Path(path).exists():
        raise FileNotFoundError(f"no domain classifier at {path}. Train it (about a minute) with:\n  python -c "
                                "\"from medgan_utils.translation import train_domain_classifier; "
                                "train_domain_classifier()\"")
    return load_classifier(path)


def verdict(net, x: torch.Tensor) -> np.ndarray:
    """P(MRI) of each image (N, 1, S, S) in [-1, 1] at 128 px (shrunk to 64 px first)."""
    from .classify import predict_proba

    return predict_proba(net, to_uint8(to_feature_size(x)))[:, 1]


# -- structure ----------------------------------------------------------------------------------


def outline_mask(x: torch.Tensor) -> torch.Tensor:
    """The head of each image (N, 1, H, W) in [-1, 1] as :func:`~medgan_utils.data.ctmri.head_region`
    finds it (relative to the image's own background): bool (N, 1, H, W)."""
    return torch.from_numpy(np.stack([head_region((img + 1) / 2) for img in x.detach().cpu().numpy()[:, 0]])[:, None])


def mask_dice(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per image, the Dice overlap of the head outlines (:func:`outline_mask`) of ``x`` and ``y``
    (N, 1, H, W). A fixed threshold would not do: a translation with a faintly grey background
    (as many MRI files have) would score like one that moved the head (see the calibration in
    :func:`evaluate_model`)."""
    mx, my = outline_mask(x), outline_mask(y)
    inter = (mx & my).flatten(1).sum(1).float()
    total = (mx.flatten(1).sum(1) + my.flatten(1).sum(1)).float()
    return (2 * inter / total.clamp_min(1)).numpy()


def edge_f1(x: torch.Tensor, y: torch.Tensor, sigma: float = 2.0, tolerance: int = 2) -> np.ndarray:
    """Per image, the F1 of Canny edges of ``y`` against those of ``x`` inside ``x``'s head,
    an edge counting as matched within ``tolerance`` px (the boundary F-score of segmentation
    benchmarks). Edges of the head outline are included: it should not move."""
    from scipy import ndimage
    from skimage.feature import canny

    mask = outline_mask(x).numpy()[:, 0]
    grow = ndimage.generate_binary_structure(2, 1)
    out = []
    for a, b, m in zip(x.cpu().numpy()[:, 0], y.cpu().numpy()[:, 0], mask):
        region = ndimage.binary_dilation(m, grow, iterations=tolerance + 1)
        ea, eb = canny(a, sigma) & region, canny(b, sigma) & region
        if not ea.any() and not eb.any():
            out.append(1.0)
            continue
        da = ndimage.binary_dilation(ea, grow, iterations=tolerance)
        db = ndimage.binary_dilation(eb, grow, iterations=tolerance)
        precision = (eb & da).sum() / max(eb.sum(), 1)
        recall = (ea & db).sum() / max(ea.sum(), 1)
        out.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return np.asarray(out)


def cycle_scores(x: torch.Tensor, back: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image PSNR and SSIM of the round trip ``back`` against the input ``x``, inside ``x``'s head."""
    from .superres import masked_psnr, masked_ssim

    m = outline_mask(x)
    return {"psnr": masked_psnr(back, x, m).numpy(), "ssim": masked_ssim(back, x, m).numpy()}


# -- distribution distance ----------------------------------------------------------------------


def features(x: torch.Tensor) -> torch.Tensor:
    """Label-free features (the ctmri autoencoder at 64 px) of images at 128 px."""
    from .evaluation import feature_space, network_features

    net, _ = feature_space("autoencoder", DATASET, FEATURE_SIZE)
    return network_features(net, to_feature_size(x))


TEXTURE_ENCODER = CHECKPOINT_DIR / "encoder_ctmri_texture.safetensors"
# The first stage only (32 channels at half resolution): fewer features than held-out MRI
# (FD needs more images than features), and the stage that sees noise and blur most directly.
TEXTURE_STAGES = 1


@functools.lru_cache(maxsize=2)
def _texture_net(path: str):
    from .superres import load_patch_encoder

    return load_patch_encoder(path)


@torch.no_grad()
def texture_features(x: torch.Tensor, path: str | os.PathLike = TEXTURE_ENCODER) -> torch.Tensor:
    """A second label-free space, for fine texture: the log standard deviation, over the head,
    of each channel of the first stage of a fully convolutional autoencoder trained on 64 px
    crops of CT and MRI training slices at 128 px (32 numbers per image). The whole-image
    autoencoder at 64 px sees layout and contrast but barely sees noise; this one does (the
    calibration in :func:`evaluate_model` checks both)."""
    net = _texture_net(str(path))
    out = []
    for i in range(0, len(x), 64):
        xb = x[i:i + 64].float()
        mask = outline_mask(xb).float()
        feats = []
        for fmap in net.feature_maps(xb)[:TEXTURE_STAGES]:
            m = F.adaptive_max_pool2d(mask, fmap.shape[-2:])
            n = m.flatten(1).sum(1).clamp_min(1)[:, None]
            mean = (fmap * m).flatten(2).sum(2) / n
            var = ((fmap - mean[..., None, None]).square() * m).flatten(2).sum(2) / n
            feats.append(0.5 * torch.log(var + 1e-6))
        out.append(torch.cat(feats, 1))
    return torch.cat(out)


def distribution(feats: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """FD, precision, recall, density and coverage of ``feats`` against the reference features."""
    return {"fd": frechet_distance(feats, ref), **prdc(ref, feats, k=PRDC_K)}


# -- the whole evaluation -----------------------------------------------------------------------


def _directions(model: Any) -> list[tuple[str, int, int]]:
    ab, ba = model.config.directions
    return [(ab, 0, 1), (ba, 1, 0)]


def _target_rate(p_mri: np.ndarray, target: int) -> float:
    """The fraction of images the domain classifier calls the ``target`` modality."""
    return float(((p_mri > 0.5) == (target == 1)).mean())


class _Judge:
    """The reference features of one target modality in both label-free spaces."""

    def __init__(self, ref_images: torch.Tensor):
        self.ref = {"": features(ref_images), "texture_": texture_features(ref_images)}

    def fd(self, x: torch.Tensor) -> dict[str, float]:
        return {f"{space}fd": frechet_distance(f(x), self.ref[space])
                for space, f in (("", features), ("texture_", texture_features))}

    def scores(self, x: torch.Tensor) -> dict[str, float]:
        feats = features(x)
        return {"fd": frechet_distance(feats, self.ref[""]),
                "texture_fd": frechet_distance(texture_features(x), self.ref["texture_"]),
                **prdc(self.ref[""], feats, k=PRDC_K)}


@torch.no_grad()
def evaluate_model(model: Any, dataset: str = DATASET, n: int | None = None,
                   classifier=None, with_calibration: bool = True) -> dict[str, Any]:
    """Every chapter-07 number for a CycleGAN in both directions, with the baseline and yardsticks.

    Keys ``<direction>/<metric>`` (``ct2mr/domain_acc``...) for the model and
    ``<direction>/baseline_<metric>`` for the classical translation, plus ``<direction>/fd_source``
    (source vs target: doing nothing), ``<direction>/floor_fd`` (real training images of the
    target vs the reference), ``<direction>/real_domain_acc`` (the classifier on real held-out
    target images), each FD also in the texture space (``texture_fd``...), and, with
    ``with_calibration``, FDs of degraded real target images (noise, blur: they must score
    above the floor).

    Args:
        model: a :class:`~medgan_utils.models.cyclegan.CycleGAN` trained on ``ctmri``.
        n: translate ``n`` test images of each modality, spread over the split (None: all).
        classifier: the domain classifier (default: the shipped one).
    """
    if dataset != DATASET:
        raise ValueError(f"chapter 07's evaluation is for {DATASET} (CT and MRI); got {dataset}")
    net = classifier or load_domain_classifier()
    size = CTMRI_SIZE
    out: dict[str, Any] = {"feature_space": f"autoencoder_{DATASET}_{FEATURE_SIZE}", "size": size}
    for direction, src, tgt in _directions(model):
        x = spread(domain_images(src, "test", size), n)
        ref_imgs = reference_images(tgt, size)
        judge = _Judge(ref_imgs)
        # Scored as `medgan apply` writes them: 8 bits, on the CPU.
        y, back = (eight_bit(t) for t in model.cycle(x, direction))
        base = classical_translation(x, target_histogram(tgt, size))
        res: dict[str, float] = {"n": float(len(x)), "n_reference": float(len(ref_imgs))}
        for name, imgs in (("", y), ("baseline_", base)):
            res[f"{name}domain_acc"] = _target_rate(verdict(net, imgs), tgt)
            res.update({f"{name}{k}": v for k, v in judge.scores(imgs).items()})
            res[f"{name}mask_dice"] = float(mask_dice(x, imgs).mean())
            res[f"{name}edge_f1"] = float(edge_f1(x, imgs).mean())
        base_back = classical_translation(eight_bit(base), target_histogram(src, size))
        for name, returned in (("", back), ("baseline_", base_back)):
            cyc = cycle_scores(x, returned)
            res[f"{name}cycle_psnr"] = float(cyc["psnr"].mean())
            res[f"{name}cycle_ssim"] = float(cyc["ssim"].mean())
        res.update({f"{k}_source": v for k, v in judge.fd(x).items()})
        res["source_domain_acc"] = _target_rate(verdict(net, x), tgt)
        # Test slices only: the classifier chose its epoch on the validation slices.
        res["real_domain_acc"] = _target_rate(verdict(net, domain_images(tgt, "test", size)), tgt)
        gen = torch.Generator().manual_seed(0)
        train_tgt = domain_images(tgt, "train", size)
        floor = train_tgt[torch.randperm(len(train_tgt), generator=gen)[:len(x)]]
        res.update({f"floor_{k}": v for k, v in judge.fd(floor).items()})
        if with_calibration:
            # Dice must ignore what is not anatomy (a grey background) and see what is (a shift).
            bg = x < -0.9
            haze = torch.where(bg, gaussian_noise(x + 0.12, 0.04, seed=3), x)
            res["calib_dice_haze"] = float(mask_dice(x, haze).mean())
            for px in (2, 4, 8):
                res[f"calib_dice_shift{px}"] = float(mask_dice(x, torch.roll(x, px, -1)).mean())
            for name, bad in (("noise0.1", gaussian_noise(floor, 0.1, seed=1)),
                              ("noise0.2", gaussian_noise(floor, 0.2, seed=2)),
                              ("blur1", gaussian_blur(floor, 1.0)), ("blur2", gaussian_blur(floor, 2.0))):
                res.update({f"calib_{name}_{k}": v for k, v in judge.fd(bad.clamp(-1, 1)).items()})
        out.update({f"{direction}/{k}": v for k, v in res.items()})
    return out
