"""Loaders for the image-to-image chapters: aligned pairs and two unpaired domains.

* :class:`PairedLoader`: (input, target) pairs that belong together pixel for pixel, e.g. a
  low-resolution image and its high-resolution original (super-resolution), or a corrupted
  image and the clean one (inpainting, denoising); optionally cut into random aligned patches.
  :func:`make_sr_pairs` makes such pairs from high-resolution images alone.
* :class:`UnpairedLoader`: batches from two domains of different sizes that do not correspond
  image by image (CycleGAN's T1 and T2 scans of different patients).

Both follow :class:`~.medmnist.TensorLoader`'s contract and reuse its bookkeeping: one epoch per
``__iter__``, ``len()`` batches per epoch, an order that depends only on ``seed`` and the epoch,
and ``state_dict()``/``load_state_dict()`` with which a resumed run sees exactly the batches an
uninterrupted one would. The data are held as float tensors on ``device``.

Introduced in the image-to-image chapters (super-resolution, inpainting, CycleGAN).
"""

from __future__ import annotations

import numpy as np
import torch

from .degrade import downsample
from .medmnist import _Batches, mix_seed, seeded_generator, to_float

Images = np.ndarray | torch.Tensor


def _as_images(x: Images, name: str) -> torch.Tensor:
    """uint8 (N, H, W)/(N, H, W, C) in MedMNIST's layout, or float (N, H, W)/(N, C, H, W)
    -> float32 (N, C, H, W); uint8 becomes [-1, 1] with :func:`~.medmnist.to_float`, floats are
    taken as already normalised."""
    t = torch.as_tensor(x)
    if t.dtype == torch.uint8:
        if t.ndim not in (3, 4):
            raise ValueError(f"{name}: uint8 images must be (N, H, W) or (N, H, W, C) "
                             f"(MedMNIST's layout), got shape {tuple(t.shape)}")
        t = to_float(t)
    elif t.is_floating_point():
        if t.ndim == 3:
            t = t.unsqueeze(1)
        if t.ndim != 4:
            raise ValueError(f"{name}: float images must be (N, C, H, W) or (N, H, W), got shape "
                             f"{tuple(t.shape)}")
        t = t.float()
    else:
        raise TypeError(f"{name}: expected uint8 or float images, got {t.dtype}")
    if len(t) == 0 or t.shape[-1] == 0 or t.shape[-2] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    return t


def _crop_each(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), image i cut at row ``top[i]``, column ``left[i]``."""
    ramp = torch.arange(size, device=images.device)
    rows = (top.to(images.device)[:, None] + ramp)[:, :, None]  # (B, size, 1)
    cols = (left.to(images.device)[:, None] + ramp)[:, None, :]  # (B, 1, size)
    batch = torch.arange(len(images), device=images.device)[:, None, None]
    # One gather for the whole batch instead of B slices: channels last, index, back.
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def make_sr_pairs(hr: torch.Tensor, factor: int, mode: str = "bicubic") -> tuple[torch.Tensor, torch.Tensor]:
    """Low-/high-resolution pairs for super-resolution from high-resolution images alone.

    The low-resolution input is :func:`~.degrade.downsample` of ``hr`` (antialiased, so the
    network learns to undo a blur rather than aliasing).

    Args:
        hr: float (N, C, H, W) in [-1, 1]; H and W divisible by ``factor``.
        factor: integer downsampling factor, e.g. 2 or 4.
        mode: ``"bicubic"`` or ``"bilinear"``.

    Returns:
        ``(lr, hr)``: float (N, C, H // factor, W // factor) and ``hr`` itself, both in [-1, 1],
        ready for ``PairedLoader(lr, hr, ...)``.
    """
    return downsample(hr, factor, mode), hr


class PairedLoader(_Batches):
    """Shuffled mini-batches of aligned (input, target) pairs, optionally as random patches.

    The targets are ``scale`` times larger than the inputs on both sides (an integer; 1 for
    same-size pairs such as corrupted/clean). With ``patch`` set, every pair of a batch is cut
    at its own random place: a ``patch x patch`` target crop at ``(y, x)`` and the input crop of
    side ``patch / scale`` at ``(y / scale, x / scale)``, with ``y``, ``x`` multiples of
    ``scale`` so that both crops cover the same anatomy. Training on patches gives more varied
    batches from few images and lets a fully convolutional generator see large images in
    pieces. The crop positions are drawn from a generator seeded by ``(seed, epoch, batch)``:
    the global RNG is not touched, and a resumed run cuts the same patches.

    Args:
        inputs: float (N, C, h, w) (or (N, h, w)), already normalised, e.g. in [-1, 1]; or
            uint8 (N, h, w)/(N, h, w, C) in MedMNIST's layout, converted to [-1, 1].
        targets: the same for (N, C', H, W), with H = scale * h and W = scale * w.
        batch_size: pairs per batch.
        device: where the pairs are held and batches yielded.
        seed: fixes every epoch's order and every patch position.
        drop_last: leave out the last, smaller batch of an epoch.
        shuffle: a new order each epoch (False: 0..N-1).
        patch: side of the target patch in target pixels, divisible by ``scale`` and at most
            H and W; None yields whole images.

    Yields:
        ``(inputs, targets)``: float (B, C, p, p) and (B, C', P, P) on ``device``, where
        P = ``patch`` and p = P / scale (whole images: (B, C, h, w) and (B, C', H, W)).

    Raises:
        ValueError: different numbers of inputs and targets, sizes that are not an integer
            multiple of each other, a bad ``patch``, or empty arrays.
    """

    def __init__(self, inputs: Images, targets: Images, batch_size: int = 64,
                 device: torch.device | str = "cpu", seed: int = 0, drop_last: bool = True,
                 shuffle: bool = True, patch: int | None = None):
        x, y = _as_images(inputs, "inputs"), _as_images(targets, "targets")
        if len(x) != len(y):
            raise ValueError(f"inputs and targets must be aligned pairs, one target per input; "
                             f"got {len(x)} inputs and {len(y)} targets")
        (h, w), (big_h, big_w) = x.shape[-2:], y.shape[-2:]
        if big_h % h or big_w % w or big_h // h != big_w // w:
            raise ValueError(f"targets ({big_h}x{big_w}) must be the inputs ({h}x{w}) times one "
                             f"integer scale on both sides (1 for same-size pairs); crop or "
                             f"resize them first")
        self.scale = big_h // h
        if patch is not None:
            if int(patch) != patch or patch < 1 or patch % self.scale:
                raise ValueError(f"patch must be a positive multiple of the scale {self.scale} "
                                 f"(in target pixels), got {patch!r}")
            if patch > min(big_h, big_w):
                raise ValueError(f"patch {patch} is larger than the targets ({big_h}x{big_w}); "
                                 f"use patch <= {min(big_h, big_w)} or None for whole images")
            patch = int(patch)
        super().__init__(len(x), batch_size, seed, drop_last, shuffle)
        self.patch = patch
        self.device = torch.device(device)
        self.inputs, self.targets = x.to(self.device), y.to(self.device)

    def __iter__(self):
        for epoch, step, idx in self._steps():
            idx = idx.to(self.device)
            x, y = self.inputs[idx], self.targets[idx]
            if self.patch is not None:
                x, y = self._crop(x, y, seeded_generator(self.seed, epoch, step))
            yield x, y

    def _crop(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        side = self.patch // self.scale  # input patch side
        h, w = x.shape[-2:]
        # Positions drawn on the input grid and multiplied up: the target crop then starts on a
        # multiple of scale, exactly where the input crop's first pixel came from.
        top = torch.randint(0, h - side + 1, (len(x),), generator=gen)
        left = torch.randint(0, w - side + 1, (len(x),), generator=gen)
        return (_crop_each(x, top, left, side),
                _crop_each(y, top * self.scale, left * self.scale, self.patch))


class UnpairedLoader(_Batches):
    """Batches from two unpaired domains A and B (CycleGAN), each shuffled on its own.

    The domains may differ in size. An epoch is one pass over the larger domain (A when they
    are equal); the smaller one cycles through as many of its own epochs as that takes, each
    with a new order. The two orders come from different seeds (both derived from ``seed``),
    so which A meets which B changes from epoch to epoch. Batches are always full and of the
    same size in both domains (``batch_size`` is capped at the smaller domain's size), since an
    incomplete last batch of one domain would have no partner of its size in the other.

    ``state_dict()`` holds only ``epoch``, ``position`` and ``seed``: the smaller domain's place
    follows from them (it has drawn ``epoch * len(self) + position`` batches), so a resumed run
    continues exactly in both domains.

    Args:
        a: domain A, uint8 (N_A, H, W)/(N_A, H, W, C) in MedMNIST's layout (converted to
            [-1, 1]) or float (N_A, C, H, W)/(N_A, H, W), already normalised.
        b: domain B, the same for N_B images (sizes may differ from A's).
        batch_size: images per batch from each domain.
        device: where the images are held and batches yielded.
        seed: fixes both domains' orders.
        shuffle: a new order each epoch in each domain (False: 0..N-1, cycling).

    Yields:
        ``(a, b)``: float (B, C_A, H_A, W_A) and (B, C_B, H_B, W_B) on ``device``.
    """

    def __init__(self, a: Images, b: Images, batch_size: int = 64,
                 device: torch.device | str = "cpu", seed: int = 0, shuffle: bool = True):
        xa, xb = _as_images(a, "a"), _as_images(b, "b")
        # The larger domain is the one the base class walks through; drop_last keeps batches full.
        super().__init__(max(len(xa), len(xb)), min(batch_size, len(xa), len(xb)), seed,
                         drop_last=True, shuffle=shuffle)
        self.device = torch.device(device)
        self.a, self.b = xa.to(self.device), xb.to(self.device)

    def _smaller(self) -> _Batches:
        """The smaller domain's batches: its own seed, so its order is unrelated to the larger's."""
        # Reduced to 31 bits because _Batches multiplies the seed by 100_003 for torch's seed.
        seed = mix_seed(self.seed, 1) % 2**31
        return _Batches(min(len(self.a), len(self.b)), self.batch_size, seed, True, self.shuffle)

    def __iter__(self):
        smaller = self._smaller()
        a_is_larger = len(self.a) >= len(self.b)
        for epoch, step, idx in self._steps():
            # Batches the smaller domain has drawn since epoch 0, in its own epochs.
            small_epoch, small_step = divmod(epoch * len(self) + step, len(smaller))
            other = smaller._indices(small_epoch, small_step)
            ia, ib = (idx, other) if a_is_larger else (other, idx)
            yield self.a[ia.to(self.device)], self.b[ib.to(self.device)]
