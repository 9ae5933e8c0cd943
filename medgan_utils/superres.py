"""Chapter 05's toolkit: the CT feature space, the classical baselines and a fair scoring of
super-resolution.

* The feature space: :class:`~.models.autoencoder.PatchAutoencoder` trained on high-resolution CT
  patches of the training slices (:func:`train_patch_encoder`). Two are shipped, trained alike
  with different seeds: ``encoder_ct_loss`` is SRGAN's content loss, ``encoder_ct_judge`` measures
  the feature distance in the results. A model trained to lower one network's feature distance
  could exploit that network's quirks; judging it with a second, independently initialised one
  tells a real gain from an adversarial one (the two are still similar: same data, same design).
* Baselines (:func:`interpolate`): nearest, bicubic (torch) and Lanczos (PIL, Lanczos-3).
* Scoring (:func:`score_sr`): per-image PSNR and SSIM inside the head mask (headline) and on the
  whole image, the judge's feature distance, and each method's per-image difference to bicubic
  with a t-interval (:func:`medgan_utils.stats.paired_ci`).

Introduced in ``notebooks/05_super_resolution.ipynb``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics.regression import compute_ssim_and_cs

from .checkpoint import load_checkpoint, read_metadata, save_checkpoint
from .data import PairedLoader, downsample, gaussian_noise, upsample
from .data.ct import head_mask, load_split
from .models.autoencoder import AutoencoderModel, PatchAutoencoder, PatchAutoencoderConfig
from .stats import paired_ci
from .train import FitConfig, fit
from .utils import CHECKPOINT_DIR, REPO_ROOT

__all__ = ["METHODS", "encoder_path", "feature_distance", "feature_distances", "interpolate", "load_patch_encoder",
           "compare_methods", "detail_ratio", "evaluate_model", "flatten_summary", "high_frequency_excess", "held_out_pairs", "lr_images", "masked_psnr", "masked_ssim", "resolve", "ssim_in", "ssim_map", "score_outputs", "score_sr", "train_patch_encoder"]

BASELINES = ("nearest", "bicubic", "lanczos")
METHODS = BASELINES  # models are added by name in the notebook
SSIM_WINDOW = 11


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint path as stored in configs (relative to the repository), made absolute."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else REPO_ROOT / p


def encoder_path(dataset: str = "ct", role: str = "loss") -> Path:
    """``checkpoints/encoder_<dataset>_<role>.safetensors``; role ``"loss"`` or ``"judge"``."""
    return CHECKPOINT_DIR / f"encoder_{dataset}_{role}.safetensors"


def train_patch_encoder(path: str | os.PathLike, dataset: str = "ct", size: int = 512, *,
                        seed: int = 0, steps: int = 800, batch_size: int = 16, patch: int = 64,
                        config: PatchAutoencoderConfig | None = None,
                        device: torch.device | str = "cpu", progress: bool = False) -> tuple[Path, dict]:
    """Train a :class:`PatchAutoencoder` on random ``patch`` px crops of the training split
    (with flips), through ``fit``, and save it with its facts (reconstruction MSE on validation
    crops). Test slices are never seen."""
    tr, va = load_split(dataset, "train", size), load_split(dataset, "val", size)
    x = tr.tensors()
    torch.manual_seed(seed)
    net = PatchAutoencoder(config or PatchAutoencoderConfig(channels=x.shape[1]))
    loader = PairedLoader(x, x, batch_size, device, seed=seed, patch=min(patch, size))
    t0 = time.perf_counter()
    hist = fit(AutoencoderModel(net, device), loader,
               FitConfig(steps=steps, log_every=max(1, steps // 20), ckpt_every=0, resume=False),
               progress=progress)
    net.cpu().eval()
    with torch.no_grad():
        v = va.tensors()
        val_mse = float(np.mean([float(net.reconstruction_loss(v[i:i + 8])) for i in range(0, len(v), 8)]))
    facts = {"dataset": dataset, "size": size, "patch": patch, "steps": steps, "batch_size": batch_size,
             "seed": seed, "trained_on": f"train split, {len(tr)} images, random {patch} px crops",
             "train_seconds": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads(),
             "final_loss": hist.records[-1]["loss"], "val_mse_whole_images": val_mse}
    out = save_checkpoint(path, {"net": net}, metadata={"patch_autoencoder": net.config.to_dict(), **facts})
    return out, facts


def load_patch_encoder(path: str | os.PathLike, device: torch.device | str = "cpu") -> PatchAutoencoder:
    """A shipped :class:`PatchAutoencoder` (frozen, eval mode)."""
    path = resolve(path)
    if not path.exists():
        raise FileNotFoundError(f"no encoder at {path}. Train one (a few CPU minutes) with:\n  python -c "
                                f"\"from medgan_utils.superres import train_patch_encoder; "
                                f"train_patch_encoder('{path}', DATASET, SIZE, seed=SEED)\" (the shipped "
                                "ones: ct at 512 px, breastmnist at 64 px; seed 0 for the loss, 1 for the judge)")
    net = PatchAutoencoder(PatchAutoencoderConfig(**read_metadata(path)["patch_autoencoder"]))
    load_checkpoint(path, {"net": net})
    return net.to(device).eval().requires_grad_(False)


def lr_images(hr: torch.Tensor, scale: int, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """The degradation of chapter 05: antialiased bicubic downsampling by ``scale``
    (:func:`~medgan_utils.data.downsample`), then optional Gaussian noise of std ``noise`` (in
    [-1, 1] units), clamped to [-1, 1]. (B, C, H, W) -> (B, C, H / scale, W / scale)."""
    lr = downsample(hr, scale)
    return gaussian_noise(lr, noise, seed=seed) if noise > 0 else lr


def _lanczos(lr: torch.Tensor, scale: int) -> torch.Tensor:
    # PIL's Lanczos-3 on float images (mode "F"): torch has no Lanczos kernel.
    from PIL import Image

    out = np.empty((*lr.shape[:2], lr.shape[2] * scale, lr.shape[3] * scale), np.float32)
    for i, img in enumerate(lr.detach().cpu().numpy()):
        for c, ch in enumerate(img):
            im = Image.fromarray(ch.astype(np.float32), mode="F")
            out[i, c] = np.asarray(im.resize((ch.shape[1] * scale, ch.shape[0] * scale), Image.LANCZOS))
    return torch.from_numpy(out).clamp(-1, 1)


def interpolate(lr: torch.Tensor, scale: int, method: str = "bicubic") -> torch.Tensor:
    """A classical upsampling of (B, C, h, w) in [-1, 1]: ``"nearest"``, ``"bicubic"`` or
    ``"lanczos"`` -> (B, C, scale h, scale w) in [-1, 1]."""
    if method == "lanczos":
        return _lanczos(lr, scale)
    if method not in ("nearest", "bicubic", "bilinear"):
        raise ValueError(f"method must be one of {BASELINES + ('bilinear',)}, got {method!r}")
    return upsample(lr, scale, method)


def masked_psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None,
                data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) against (B, C, H, W), over the pixels where ``mask``
    (bool (B, 1, H, W)) is true, or all pixels."""
    sq = (x - y).square()
    if mask is None:
        mse = sq.flatten(1).mean(1)
    else:
        m = mask.expand_as(sq).float()
        mse = (sq * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """MONAI's SSIM map (11 px Gaussian window) of (B, C, H, W) against (B, C, H, W), averaged over
    channels: (B, 1, H - 10, W - 10), one value per window centre."""
    smap, _ = compute_ssim_and_cs(x.float(), y.float(), spatial_dims=2, kernel_size=[SSIM_WINDOW] * 2,
                                  kernel_sigma=[1.5, 1.5], data_range=data_range)
    return smap.mean(1, keepdim=True)


def ssim_in(smap: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image mean of an :func:`ssim_map` over the window centres where ``mask`` (B, 1, H, W)
    is true (cropped to the map), or over all of it."""
    if mask is None:
        return smap.flatten(1).mean(1)
    r = SSIM_WINDOW // 2
    m = mask[..., r:-r, r:-r].float()
    return (smap * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


def masked_ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None,
                data_range: float = 2.0) -> torch.Tensor:
    """Per-image SSIM (MONAI's 11 px Gaussian window) averaged over the window centres where
    ``mask`` is true (the SSIM map is 10 px smaller than the image: the mask is cropped to it)."""
    return ssim_in(ssim_map(x, y, data_range), mask)


@torch.no_grad()
def feature_distances(encoder: PatchAutoencoder, xs: Mapping[str, torch.Tensor], y: torch.Tensor,
                      batch_size: int = 4) -> dict[str, torch.Tensor]:
    """:func:`feature_distance` of several methods' outputs to the same ``y``, encoding each batch
    of ``y`` once (the same numbers as one call per method, in fewer encoder passes)."""
    dev = next(encoder.parameters()).device
    out: dict[str, list[torch.Tensor]] = {k: [] for k in xs}
    for i in range(0, len(y), batch_size):
        fy = encoder.feature_maps(y[i:i + batch_size].to(dev))
        for k, x in xs.items():
            fx = encoder.feature_maps(x[i:i + batch_size].to(dev))
            d = sum((a - b).square().flatten(1).mean(1) / b.square().flatten(1).mean(1).clamp_min(1e-6)
                    for a, b in zip(fx, fy)) / len(fx)
            out[k].append(d.cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def feature_distance(encoder: PatchAutoencoder, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int = 4) -> torch.Tensor:
    """Per-image distance of ``x`` to ``y`` (B, C, H, W) in an encoder's feature maps: the mean
    over its stages of the MSE between the maps, divided by the mean square of ``y``'s map (per
    image here; :func:`~.models.sr.feature_loss` divides by the batch's). 0 for identical images."""
    return feature_distances(encoder, {"x": x}, y, batch_size)["x"]


def run_method(fn: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor, batch_size: int = 4) -> tuple[torch.Tensor, float]:
    """``fn`` over ``lr`` in batches; returns the outputs (on the CPU) and ms per image."""
    t0 = time.perf_counter()
    with torch.no_grad():
        out = torch.cat([fn(lr[i:i + batch_size]).cpu() for i in range(0, len(lr), batch_size)])
    return out, 1000 * (time.perf_counter() - t0) / len(lr)


def _head_crops(x: torch.Tensor, mask: torch.Tensor | None, side: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, side, side) centred on each head (image centre without a mask)."""
    if side >= min(x.shape[-2:]):
        return x
    out = []
    for i in range(len(x)):
        if mask is not None:
            top, left = crop_box(mask[i], side)
        else:
            top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
        out.append(x[i, :, top:top + side, left:left + side])
    return torch.stack(out)


def score_outputs(outputs: Mapping[str, torch.Tensor], hr: torch.Tensor, judge: PatchAutoencoder | None = None,
                  mask: torch.Tensor | None = None, against: str | Sequence[str] = "bicubic", *,
             loss_net: PatchAutoencoder | None = None, feature_side: int = 256) -> dict[str, Any]:
    """Score every method's outputs against the high-resolution truth, image by image.

    Args:
        outputs: method name -> (N, C, H, W) in [-1, 1], all for the same inputs.
        hr: the truth (N, C, H, W).
        judge: the encoder of the feature distance (None: not reported).
        mask: where the headline PSNR/SSIM are computed (CT: :func:`head_mask`); None: whole image.
        against: the method (or methods: every baseline) each other is compared with, image by
            image.
        loss_net: also report the distance in this encoder's space (``feature_loss_net``): SRGAN's
            own loss network, to compare with the independent judge.
        feature_side: feature distances are computed on a ``feature_side`` px square centred on
            the head (the mask's centroid; the image centre without a mask), which holds the
            brain, at a quarter of the cost of a whole 512 px slice.

    Returns:
        ``{"per_image": {method: {metric: (N,) tensor}}, "summary": {method: {metric: mean,
        metric + "_vs_" + against: CI of the per-image difference}}}``; metrics ``psnr``, ``ssim``
        (in the mask), ``psnr_whole``, ``ssim_whole``, ``feature`` and ``feature_loss_net``
        (lower is better).
    """
    per: dict[str, dict[str, torch.Tensor]] = {}
    for name, out in outputs.items():
        smap = ssim_map(out, hr)  # once for the masked and the whole-image SSIM
        m = {"psnr": masked_psnr(out, hr, mask), "ssim": ssim_in(smap, mask), "detail": detail_ratio(out, hr, mask)}
        if mask is not None:
            m |= {"psnr_whole": masked_psnr(out, hr), "ssim_whole": ssim_in(smap)}
        per[name] = m
    if judge is not None or loss_net is not None:
        hr_crop = _head_crops(hr, mask, feature_side)
        crops = {name: _head_crops(out, mask, feature_side) for name, out in outputs.items()}
        for key, net in (("feature", judge), ("feature_loss_net", loss_net)):
            if net is not None:
                for name, d in feature_distances(net, crops, hr_crop).items():
                    per[name][key] = d
    summary: dict[str, dict[str, Any]] = {}
    refs = (against,) if isinstance(against, str) else tuple(against)
    for name, m in per.items():
        s: dict[str, Any] = {k: float(v.mean()) for k, v in m.items()}
        for ref in refs:
            if ref in per and name != ref:
                for k, v in m.items():
                    s[f"{k}_vs_{ref}"] = paired_ci(v.numpy(), per[ref][k].numpy())
        summary[name] = s
    return {"per_image": per, "summary": summary}


score_sr = score_outputs  # the name chapter 05 introduces it by


def _detail_energy(x: torch.Tensor, sigma: float) -> np.ndarray:
    from scipy import ndimage

    a = x.detach().cpu().numpy()[:, 0].astype(np.float64)
    energy = [ndimage.laplace(i) ** 2 for i in a]
    return np.stack([ndimage.gaussian_filter(e, sigma) if sigma > 0 else e for e in energy])


def high_frequency_excess(out: torch.Tensor, hr: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Where a method has more fine detail than the truth: local energy of the Laplacian of
    ``out`` minus that of ``hr``, both smoothed by a Gaussian of ``sigma`` px.

    Positive where the output is busier than the truth (texture a GAN invents, ringing), negative
    where it is smoother (blur). (N, 1, H, W) -> (N, 1, H, W), in squared intensity units.
    """
    return torch.from_numpy(_detail_energy(out, sigma) - _detail_energy(hr, sigma)).float()[:, None]


def detail_ratio(out: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per image, the fine-detail energy of ``out`` (mean squared Laplacian, inside ``mask``) over
    that of the truth: 1 = as much fine detail as the real slice, < 1 smoother, > 1 busier.

    A *realism* number, not an accuracy one: it ignores where the detail is, so a method can
    score 1 with the wrong texture. It is the other axis of the perception-distortion trade-off
    (Blau & Michaeli 2018), which PSNR, SSIM and paired feature distances do not measure.
    (N, 1, H, W) -> (N,).
    """
    eo, eh = _detail_energy(out, 0.0), _detail_energy(hr, 0.0)
    m = np.ones_like(eo, bool) if mask is None else mask.cpu().numpy()[:, 0]
    return torch.tensor([float(a[k].mean() / max(b[k].mean(), 1e-12)) for a, b, k in zip(eo, eh, m)])


def compare_methods(models: Mapping[str, Any], lr: torch.Tensor, hr: torch.Tensor,
                    mask: torch.Tensor | None = None, judge: PatchAutoencoder | None = None,
                    loss_net: PatchAutoencoder | None = None, scale: int = 4,
                    baselines: tuple[str, ...] = BASELINES) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Run the classical baselines and every model (``name -> model with apply``) on ``lr`` and
    score all against ``hr`` (:func:`score_sr`, compared with bicubic).

    Returns:
        ``(outputs, scores)``: outputs by method (N, C, H, W); the scores of :func:`score_sr`
        with ``ms_per_image`` added to each method's summary (wall time on this machine).
    """
    outputs, ms = {}, {}
    for name in baselines:
        outputs[name], ms[name] = run_method(lambda x, m=name: interpolate(x, scale, m), lr)
    for name, model in models.items():
        outputs[name], ms[name] = run_method(model.apply, lr)
    scores = score_outputs(outputs, hr, judge, mask, loss_net=loss_net)
    for name in outputs:
        scores["summary"][name]["ms_per_image"] = ms[name]
    return outputs, scores


def evaluate_model(model: Any, hr: torch.Tensor, dataset: str = "ct") -> dict[str, float]:
    """``medgan evaluate`` for a super-resolution model: the model, nearest, bicubic and Lanczos on
    held-out images ``hr`` (N, C, H, W) degraded by :func:`lr_images`, scored by :func:`score_sr`
    (inside the head mask for CT; the judge encoder where one is shipped for ``dataset``).

    Returns:
        ``"<method>/<metric>"`` -> number; the per-image difference to bicubic as
        ``"<method>/<metric>_vs_bicubic_mean"`` and ``..._ci95`` (the interval's half-width).
    """
    scale = model.config.scale
    lr = lr_images(hr, scale)
    mask = head_mask(hr) if dataset == "ct" else None
    judge_path = encoder_path(dataset, "judge")
    judge = load_patch_encoder(judge_path) if judge_path.exists() else None
    _, scores = compare_methods({"model": model}, lr, hr, mask, judge, scale=scale)
    return {"n": float(len(hr))} | flatten_summary(scores["summary"])


def flatten_summary(summary: Mapping[str, Mapping[str, Any]], prefix: str = "") -> dict[str, float]:
    """:func:`score_outputs`'s summary as flat numbers: ``"<prefix><method>/<metric>"``, and each
    paired interval as ``..._mean`` and ``..._ci95`` (its half-width), as ``medgan evaluate`` prints."""
    out: dict[str, float] = {}
    for method, s in summary.items():
        for k, v in s.items():
            if hasattr(v, "half"):
                out[f"{prefix}{method}/{k}_mean"], out[f"{prefix}{method}/{k}_ci95"] = v.mean, v.half
            else:
                out[f"{prefix}{method}/{k}"] = v
    return out


def held_out_pairs(dataset: str = "ct", size: int = 512, scale: int = 4, n: int | None = None,
               noise: float = 0.0, split: str = "test") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(lr, hr, mask)`` of held-out images: the first ``n`` of the split (all: None), the
    degradation of :func:`lr_images`, and the head mask for CT (None for other data)."""
    hr = load_split(dataset, split, size).tensors()
    if n is not None:
        hr = hr[:n]
    mask = head_mask(hr) if dataset == "ct" else None
    return lr_images(hr, scale, noise), hr, mask


def crop_box(mask: torch.Tensor, side: int) -> tuple[int, int]:
    """Top-left corner of a ``side`` px square centred on a head mask's centroid (for zoomed crops)."""
    ys, xs = torch.nonzero(mask.reshape(mask.shape[-2:]), as_tuple=True)
    h, w = mask.shape[-2:]
    cy, cx = (int(ys.float().mean()), int(xs.float().mean())) if len(ys) else (h // 2, w // 2)
    return min(max(cy - side // 2, 0), h - side), min(max(cx - side // 2, 0), w - side)

