"""Geometric augmentation on tensors: the one affine warp behind the classifier's random
rotations (:func:`medgan_utils.classify.augment_batch`) and chapter 04's classical augmentation
baseline (:func:`medgan_utils.augmentation.classic_copies`).

Introduced in ``notebooks/04_cgan_augmentation.ipynb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def affine(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor | None = None,
           shift: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate, zoom and shift each image of a batch about its centre.

    Args:
        x: float (B, C, H, W).
        angle: (B,) rotation in radians.
        scale: (B,) zoom factors (> 1 enlarges); None for 1.
        shift: (B, 2) shifts in normalised coordinates ([-1, 1] spans the image); None for 0.

    Returns:
        float (B, C, H, W). Pixels that come from outside repeat the image's own border rather
        than black (-1 would paint artificial corners a classifier could learn).
    """
    cos, sin = angle.cos(), angle.sin()
    if scale is not None:
        cos, sin = cos / scale, sin / scale
    tx, ty = (shift[:, 0], shift[:, 1]) if shift is not None else (torch.zeros_like(cos),) * 2
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)
