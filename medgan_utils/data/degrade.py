"""Degradations for the super-resolution, inpainting and denoising/reconstruction chapters.

Every function takes images as float (B, C, H, W) in [-1, 1] (the package's convention, see
:func:`~.medmnist.to_float`) and returns the same convention, so a degraded batch can go straight
into a generator. Randomness comes only from ``seed``:

* ``seed=<int>``: the output is a pure function of the arguments (tests, figures, a fixed
  validation set of corrupted images).
* ``seed=None``: a seed is drawn from torch's global generator, so each training batch gets new
  corruptions while ``medgan_utils.seed_everything`` still makes the whole run repeatable.

MONAI is used where it fits (``RandCoarseDropout`` for boxes, ``RandGaussianNoise``,
``RandRicianNoise``); each is seeded with ``set_random_state`` and applied with ``prob=1`` and a
fixed ``std``. Those transforms draw their numbers with NumPy on the CPU and copy them to the
image's device, which is fine at course sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SizeRange = float | tuple[float, float]
CountRange = int | tuple[int, int]


def _seed(seed: int | None) -> int:
    # None -> a seed from torch's global RNG: fresh per call, yet repeatable under seed_everything.
    if seed is None:
        return int(torch.randint(0, 2**31 - 1, (1,)).item())
    return int(seed)


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a float tensor (B, C, H, W) in [-1, 1], got {shape}")


def _plain(t) -> torch.Tensor:
    # MONAI transforms return MetaTensor; the package passes plain tensors around.
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def _pair(v, name: str, cast=float) -> tuple:
    lo, hi = (v, v) if not isinstance(v, Sequence) else tuple(v)
    lo, hi = cast(lo), cast(hi)
    if lo > hi:
        raise ValueError(f"{name} range must be (min, max) with min <= max, got {v!r}")
    return lo, hi


def _mask_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise ValueError(f"shape must be (B, H, W) or (B, C, H, W), e.g. x.shape; got {shape}")
    return shape[0], shape[-2], shape[-1]


# --------------------------------------------------------------------------- resolution


def downsample(x: torch.Tensor, factor: int, mode: str = "bicubic") -> torch.Tensor:
    """Low-resolution version of ``x`` for the super-resolution chapter, with antialiasing.

    Plain subsampling (``x[..., ::f, ::f]``) folds detail finer than the new pixel grid back into
    the image as false patterns (aliasing), which a network would then learn to "undo". The
    antialiased resize low-pass filters first, as a scanner with larger pixels would.

    Args:
        x: float (B, C, H, W) in [-1, 1]; H and W divisible by ``factor``.
        factor: integer downsampling factor, e.g. 2 or 4.
        mode: ``"bicubic"`` (sharper) or ``"bilinear"``.

    Returns:
        float (B, C, H // factor, W // factor) in [-1, 1] (bicubic overshoot is clamped).
    """
    _check_images(x)
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"mode must be 'bicubic' or 'bilinear', got {mode!r}")
    factor = int(factor)
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by factor {factor}; crop or pad first")
    y = F.interpolate(x, size=(h // factor, w // factor), mode=mode, antialias=True,
                      align_corners=False)
    return y.clamp(-1.0, 1.0)


def upsample(x: torch.Tensor, factor: int, mode: str = "bicubic") -> torch.Tensor:
    """Interpolate back to full size: the no-learning baseline a super-resolution GAN must beat.

    Args:
        x: float (B, C, h, w) in [-1, 1].
        factor: integer upsampling factor.
        mode: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.

    Returns:
        float (B, C, h * factor, w * factor) in [-1, 1].
    """
    _check_images(x)
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if mode not in ("bicubic", "bilinear", "nearest"):
        raise ValueError(f"mode must be 'bicubic', 'bilinear' or 'nearest', got {mode!r}")
    size = (x.shape[-2] * int(factor), x.shape[-1] * int(factor))
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(x, size=size, mode=mode, **kwargs).clamp(-1.0, 1.0)


# --------------------------------------------------------------------------- masks


def box_mask(
    shape: Sequence[int],
    n_boxes: CountRange = (1, 3),
    size: SizeRange = (0.2, 0.4),
    seed: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random rectangular holes (1 = missing), one independent draw per image.

    Uses MONAI's ``RandCoarseDropout`` on an all-zero image filled with 1 inside the holes, so
    the box sampling is MONAI's (holes may overlap and are kept inside the image).

    Args:
        shape: ``(B, H, W)`` or ``(B, C, H, W)`` (pass ``x.shape``).
        n_boxes: number of boxes per image, an int or an inclusive range ``(min, max)``.
        size: box side as a fraction of the image side, a float or a range ``(min, max)``;
            height and width are drawn independently.
        seed: see the module docstring.
        device: where the mask is returned.

    Returns:
        float (B, 1, H, W) with values in {0, 1}.
    """
    from monai.transforms import RandCoarseDropout

    b, h, w = _mask_shape(shape)
    lo_n, hi_n = _pair(n_boxes, "n_boxes", int)
    lo_s, hi_s = _pair(size, "size")
    if lo_n < 1 or not 0.0 < lo_s <= hi_s <= 1.0:
        raise ValueError(f"need n_boxes >= 1 and 0 < size <= 1, got n_boxes={n_boxes!r}, "
                         f"size={size!r}")

    def px(frac: float, side: int) -> int:
        return min(side, max(1, round(frac * side)))

    drop = RandCoarseDropout(
        holes=lo_n, max_holes=hi_n, fill_value=1.0, prob=1.0,
        spatial_size=(px(lo_s, h), px(lo_s, w)), max_spatial_size=(px(hi_s, h), px(hi_s, w)),
    )
    drop.set_random_state(seed=_seed(seed))
    masks = [_plain(drop(torch.zeros(1, h, w))) for _ in range(b)]
    return torch.stack(masks).float().to(device)


def stroke_mask(
    shape: Sequence[int],
    n_strokes: CountRange = (1, 4),
    max_vertices: int = 6,
    length: SizeRange = (0.1, 0.3),
    width: SizeRange = (0.05, 0.12),
    seed: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Free-form brush-stroke holes (1 = missing), like the masks of DeepFill v2.

    Each stroke is a random polyline (Yu et al. 2019, "Free-form image inpainting with gated
    convolution"): a random start, then up to ``max_vertices`` segments of random direction and
    length, drawn with a round brush. Written by hand because neither MONAI nor torchvision
    generates free-form masks; ``skimage.draw.line`` draws the centre line and a binary dilation
    with ``skimage.morphology.disk`` gives the brush width.

    Args:
        shape: ``(B, H, W)`` or ``(B, C, H, W)`` (pass ``x.shape``).
        n_strokes: strokes per image, an int or an inclusive range ``(min, max)``.
        max_vertices: most segments per stroke (each stroke has 1 to ``max_vertices``).
        length: segment length as a fraction of the image's shorter side, float or range.
        width: brush diameter as a fraction of the shorter side, float or range.
        seed: see the module docstring.
        device: where the mask is returned.

    Returns:
        float (B, 1, H, W) with values in {0, 1}.
    """
    from scipy.ndimage import binary_dilation
    from skimage.draw import line
    from skimage.morphology import disk

    b, h, w = _mask_shape(shape)
    lo_n, hi_n = _pair(n_strokes, "n_strokes", int)
    lo_l, hi_l = _pair(length, "length")
    lo_w, hi_w = _pair(width, "width")
    if lo_n < 0 or max_vertices < 1 or lo_l <= 0 or lo_w <= 0:
        raise ValueError("need n_strokes >= 0, max_vertices >= 1, length > 0 and width > 0")
    rng = np.random.default_rng(_seed(seed))
    side = min(h, w)
    out = np.zeros((b, 1, h, w), dtype=np.float32)
    for i in range(b):
        for _ in range(rng.integers(lo_n, hi_n + 1)):
            centre = np.zeros((h, w), dtype=bool)
            r, c = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
            for _ in range(rng.integers(1, max_vertices + 1)):
                angle = rng.uniform(0, 2 * np.pi)
                step = rng.uniform(lo_l, hi_l) * side
                r2 = float(np.clip(r + step * np.sin(angle), 0, h - 1))
                c2 = float(np.clip(c + step * np.cos(angle), 0, w - 1))
                rr, cc = line(round(r), round(c), round(r2), round(c2))
                centre[rr, cc] = True
                r, c = r2, c2
            radius = max(0, round(rng.uniform(lo_w, hi_w) * side / 2))
            out[i, 0] += binary_dilation(centre, structure=disk(radius)) if radius else centre
    return torch.from_numpy(np.minimum(out, 1.0)).to(device)


def apply_mask(x: torch.Tensor, mask: torch.Tensor, fill: float = -1.0) -> torch.Tensor:
    """Blank the masked pixels: ``x * (1 - mask) + fill * mask``.

    Args:
        x: float (B, C, H, W) in [-1, 1].
        mask: (B, 1, H, W) or (B, C, H, W), 1 = missing (soft values blend).
        fill: value written into the holes; -1 is black, 0 is mid-grey.

    Returns:
        float (B, C, H, W): ``x`` with the holes filled.
    """
    _check_images(x)
    if mask.ndim != 4 or mask.shape[-2:] != x.shape[-2:] or mask.shape[0] not in (1, x.shape[0]) \
            or mask.shape[1] not in (1, x.shape[1]):
        raise ValueError(f"mask {tuple(mask.shape)} does not fit images {tuple(x.shape)}; "
                         f"expected (B, 1, H, W)")
    mask = mask.to(device=x.device, dtype=x.dtype)
    return x * (1 - mask) + fill * mask


def inpaint_biharmonic(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fill the holes with the smoothest surface that joins their borders
    (``skimage.restoration.inpaint_biharmonic``), image by image, on the CPU.

    Args:
        x: float (B, 1, H, W) in [-1, 1] (values inside the holes are ignored).
        mask: (B, 1, H, W), 1 = missing.

    Returns:
        float (B, 1, H, W) in [-1, 1] on ``x``'s device; pixels outside the holes unchanged.
    """
    from skimage.restoration import inpaint_biharmonic as fill

    _check_images(x)
    if x.shape[1] != 1:
        raise ValueError(f"inpaint_biharmonic takes one-channel images, got {x.shape[1]} channels")
    a = x.detach().cpu().double().numpy()[:, 0]
    m = mask.detach().cpu().numpy()[:, 0] > 0.5
    out = np.stack([fill(i, k) if k.any() else i for i, k in zip(a, m)])
    return torch.from_numpy(out).to(x.device, x.dtype).clamp(-1, 1)[:, None]


# --------------------------------------------------------------------------- noise


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, C, H, W) images with standard deviation ``sigma`` px (torchvision's
    ``gaussian_blur``, kernel side 2 * ceil(3 sigma) + 1): the evaluation batteries' known-worse
    images."""
    from torchvision.transforms.functional import gaussian_blur as _tv_blur

    k = 2 * int(np.ceil(3 * sigma)) + 1
    return _tv_blur(x, [k, k], [sigma, sigma])


def gaussian_noise(x: torch.Tensor, sigma: float, seed: int | None = None) -> torch.Tensor:
    """Additive white Gaussian noise, clamped to [-1, 1].

    MONAI's ``RandGaussianNoise`` with ``prob=1`` and ``sample_std=False`` (a fixed ``sigma``
    rather than one drawn in [0, sigma]), seeded through ``set_random_state``.

    Args:
        x: float (B, C, H, W) in [-1, 1].
        sigma: noise standard deviation in the units of ``x`` (0.1 = 5 % of the full range).
        seed: see the module docstring.

    Returns:
        float (B, C, H, W) in [-1, 1].
    """
    from monai.transforms import RandGaussianNoise

    _check_images(x)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    noise = RandGaussianNoise(prob=1.0, mean=0.0, std=float(sigma), sample_std=False, dtype=None)
    noise.set_random_state(seed=_seed(seed))
    return _plain(noise(x)).to(x.dtype).clamp(-1.0, 1.0)


def poisson_noise(x: torch.Tensor, photons: float, seed: int | None = None) -> torch.Tensor:
    """Photon-counting (shot) noise, the main effect of lowering the dose.

    Intensities are mapped to [0, 1], scaled to expected counts (``photons`` at the brightest
    value), replaced by a Poisson sample and scaled back: fewer photons, relatively more noise
    (relative std = 1 / sqrt(counts)). This is an image-domain approximation: in real low-dose
    CT the counts are in the projections (sinogram) and the noise is spread by reconstruction.
    Written with ``torch.poisson`` because MONAI has no Poisson-noise transform.

    Args:
        x: float (B, C, H, W) in [-1, 1].
        photons: expected count at intensity 1 (> 0); e.g. 1e4 mild, 1e2 severe.
        seed: see the module docstring.

    Returns:
        float (B, C, H, W) in [-1, 1].
    """
    _check_images(x)
    if not photons > 0:
        raise ValueError(f"photons must be > 0, got {photons!r}")
    gen = torch.Generator().manual_seed(_seed(seed))
    # Sampled on the CPU with a CPU generator: the same seed gives the same noise on any device.
    rate = ((x.detach().float().cpu() + 1) / 2).clamp_min(0) * float(photons)
    counts = torch.poisson(rate, generator=gen)
    y = counts / float(photons) * 2 - 1
    return y.to(device=x.device, dtype=x.dtype).clamp(-1.0, 1.0)


def rician_noise(x: torch.Tensor, sigma: float, seed: int | None = None) -> torch.Tensor:
    """MRI magnitude noise: Gaussian noise on the real and imaginary channels, then the modulus.

    On the [0, 1] magnitude scale ``m = (x + 1) / 2`` the output is
    ``sqrt((m + n1)^2 + n2^2)`` with ``n1, n2 ~ N(0, s)`` (MONAI's ``RandRicianNoise``, fixed
    ``std``). Dark regions get brighter on average (the Rician bias, about ``1.25 s`` where
    ``m = 0``), bright regions look like Gaussian noise.

    Args:
        x: float (B, C, H, W) in [-1, 1].
        sigma: noise level in the units of ``x``, as in :func:`gaussian_noise`, so both give
            the same noise on bright tissue; on the [0, 1] scale ``s = sigma / 2``.
        seed: see the module docstring.

    Returns:
        float (B, C, H, W) in [-1, 1].
    """
    from monai.transforms import RandRicianNoise

    _check_images(x)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    noise = RandRicianNoise(prob=1.0, mean=0.0, std=float(sigma) / 2, sample_std=False,
                            relative=False, channel_wise=False, dtype=np.float32)
    noise.set_random_state(seed=_seed(seed))
    magnitude = _plain(noise((x.float() + 1) / 2))
    return (magnitude * 2 - 1).to(device=x.device, dtype=x.dtype).clamp(-1.0, 1.0)
