"""Differentiable augmentation for the discriminator (Zhao et al. 2020, "DiffAugment").

On a few hundred images the discriminator memorises the training set and its feedback to G
becomes useless. Augmenting BOTH real and fake images (differentiably, so G still gets gradients)
before D sees them prevents that without leaking augmentations into G's outputs.
Policies: ``color`` (brightness, contrast), ``translation`` (up to 1/8 of the size, zero pad),
``cutout`` (a square of half the size). Written here because neither MONAI nor torchvision
applies one random transform per image differentiably in a batch.

Introduced in ``notebooks/03_wgan_gp.ipynb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diff_augment(x: torch.Tensor, policy: str = "color,translation,cutout") -> torch.Tensor:
    """Apply the comma-separated ``policy`` to (B, C, H, W) images in [-1, 1]; differentiable."""
    for p in filter(None, (s.strip() for s in policy.split(","))):
        if p not in _OPS:
            raise ValueError(f"unknown DiffAugment policy {p!r}; choose from {sorted(_OPS)}")
        x = _OPS[p](x)
    return x


def _color(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    x = x + (torch.rand(b, 1, 1, 1, device=x.device) - 0.5)  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device) + 0.5) + mean  # contrast


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    ty = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    gi, gj = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device),
                            indexing="ij")
    gi = (gi.unsqueeze(0) + tx + 1).clamp(0, h + 1)
    gj = (gj.unsqueeze(0) + ty + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # pad with 0 = mid-grey in [-1, 1]
    idx = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[idx, gi, gj].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    oy = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    gi, gj = torch.meshgrid(torch.arange(ch, device=x.device), torch.arange(cw, device=x.device),
                            indexing="ij")
    gi = (gi.unsqueeze(0) + ox - ch // 2).clamp(0, h - 1)
    gj = (gj.unsqueeze(0) + oy - cw // 2).clamp(0, w - 1)
    mask = torch.ones(b, h, w, device=x.device, dtype=x.dtype)
    mask[torch.arange(b, device=x.device).view(b, 1, 1), gi, gj] = 0
    return x * mask.unsqueeze(1)


_OPS = {"color": _color, "translation": _translation, "cutout": _cutout}
