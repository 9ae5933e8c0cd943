"""Unpaired head CT and brain MRI slices for chapter 07 (CycleGAN), as one labelled data set.

``ct_mri/`` holds 744 axial head-CT slices ``ctN.png`` and 744 brain-MRI slices ``mriN.jpg`` from
different patients (a subset of the Kaggle set "CT to MRI cGAN"; no licence is stated, so the
course uses them for teaching only: see ``data/README.md``). :func:`load_ctmri` returns one split
of both as :class:`~.medmnist.Arrays` named ``"ctmri"``: uint8 (N, size, size) images with label 0
for CT and 1 for MRI, so the course's classifier learns the domain verdict and its autoencoder a
feature space of both modalities, and the CycleGAN loader splits the two domains by label.

Preparation, fixed and tested:

* **Framing**: every slice, CT and MRI, is cropped to a square around the head (its bounding box
  plus 5 % on each side; :func:`head_box`), then its longest side is resized to ``size`` with
  antialiasing and the rest padded with black. In the files, heads fill a median 37 % of a CT
  frame and 51 % of an MRI frame (the CT show the scanner table and more air); a CycleGAN
  trained on whole frames learns to *resize heads* to match (chapter 07 measures it), which no
  translation should do. ``crop=False`` (data set ``ctmri_uncropped``) keeps the whole frames.
* **CT**: chapter 05's slices (:func:`~.ct.load_ct`), already 8-bit grayscale, 512 px.
* **MRI**: the files are mostly RGB JPEGs (a few grayscale, one RGBA, one palette) of 150 to
  1024 px, of mixed sequences (T1, T2, FLAIR, post-contrast), some with tumours. Each is made
  grayscale (PIL's ``convert("L")``), framed as above, and its intensities stretched so that the
  99.5th percentile of the pixels brighter than 5 % of its maximum becomes 255. MRI intensities
  have no units, and the files' contrast differs from scanner to web page; without the stretch
  the domain classifier and the GAN would learn file brightness as "MRI".
* **Duplicates**: 17 groups of byte-identical MRI files (md5); only the lowest file number of
  each is kept. Beyond those, the same MRI slice often appears several times, resized, cropped
  or re-encoded (the images were collected from the web): a validation or test MRI that is a
  near-copy of a training MRI (at 32 px, correlation above 0.97 or a mean absolute difference
  under 4 grey levels) is dropped too (:func:`held_out_mri`), about 100 files, so no held-out
  MRI is a copy or a close neighbour of a training slice. CT needs no such step (its blocks are
  contiguous scans, and no held-out slice is a copy: chapter 05's tests check).
* **Split**: by contiguous blocks of file numbers, the chapter-05 blocks for both modalities
  (train < 1758 <= val < 2008 <= test). The two folders number their files the same way.

=========  ======  =========================
split      CT      MRI (after dropping copies)
=========  ======  =========================
train      519     513
val        75      34
test       150     74
=========  ======  =========================

Introduced in ``notebooks/07_cyclegan.ipynb``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch

from .ct import CT_SIZE, ct_split_of, load_ct
from .medmnist import SPLITS, Arrays

CTMRI_NAME = "ctmri"
# The same slices, whole frames (crop=False): chapter 07's demonstration of what framing does.
UNCROPPED_NAME = "ctmri_uncropped"
CTMRI_SIZE = 128
DOMAINS = {0: "CT", 1: "MRI"}
# The stretch: the 99.5th percentile of pixels brighter than 5 % of the image's maximum -> 255.
MRI_PERCENTILE = 99.5
MRI_FLOOR = 0.05
# A held-out MRI this close to a training MRI (at COPY_SIDE px) is dropped: see held_out_mri.
COPY_SIDE = 32
# Margin around the head's bounding box when a slice is cropped to it (a fraction of its side).
HEAD_MARGIN = 0.05
COPY_CORRELATION = 0.97
COPY_MAD = 4.0


def mri_folder(root: str | os.PathLike | None = None) -> Path:
    """The folder of ``mriN.jpg``: ``root`` or its ``mri/`` folder, else the ``mri/`` folder of
    the ``ct_mri`` data set in ``../shared/data/`` or ``data/`` (the error names the folders
    searched and how to fetch the set)."""
    if root:
        for cand in (Path(root), Path(root) / "mri"):
            if cand.is_dir() and mri_numbers(cand):
                return cand
        raise FileNotFoundError(f"no mriN.jpg files in {root} or {Path(root) / 'mri'}; point root at "
                                "the ct_mri folder, or leave it unset to search ../shared/data and data/")
    from .fetch import find_dataset

    return find_dataset("ct_mri", verify=False) / "mri"


def mri_numbers(folder: str | os.PathLike) -> list[int]:
    """The file numbers of ``mriN.jpg`` in ``folder``, sorted."""
    return sorted(int(m.group(1)) for p in Path(folder).iterdir()
                  if (m := re.fullmatch(r"mri(\d+)\.jpg", p.name)))


def unique_mri_numbers(folder: str | os.PathLike) -> tuple[list[int], dict[int, int]]:
    """The numbers kept (the lowest of each group of byte-identical files) and, for each copy
    dropped, the number it copies."""
    first: dict[str, int] = {}
    dropped: dict[int, int] = {}
    for n in mri_numbers(folder):
        digest = hashlib.md5((Path(folder) / f"mri{n}.jpg").read_bytes()).hexdigest()
        if digest in first:
            dropped[n] = first[digest]
        else:
            first[digest] = n
    return sorted(first.values()), dropped


def head_region(image: np.ndarray) -> np.ndarray:
    """Where the head is in one grayscale image in [0, 1], whatever the modality: the largest
    region brighter than the background (the median of a 4 px frame around the smoothed image,
    plus 0.05), holes filled. Relative to the image's own background, so a grey or noisy
    background (many MRI JPEGs) does not grow the region, and a monotone change of contrast
    inside the head does not move it. bool (H, W); all False when nothing is brighter."""
    from scipy import ndimage

    sm = ndimage.gaussian_filter(image.astype(np.float32), max(1.0, image.shape[0] / 256))
    frame = np.concatenate([sm[:4].ravel(), sm[-4:].ravel(), sm[:, :4].ravel(), sm[:, -4:].ravel()])
    labels, n = ndimage.label(sm > np.median(frame) + 0.05)
    if not n:
        return np.zeros(image.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == sizes.argmax())


def head_box(image: np.ndarray, margin: float = HEAD_MARGIN) -> tuple[int, int, int]:
    """``(top, left, side)`` of a square around the head (:func:`head_region`) of one grayscale
    image in [0, 1]: its bounding box's longer side plus ``margin`` on each side, centred on the
    box. May reach past the image (the crop pads with black)."""
    region = head_region(image)
    if not region.any():
        h, w = image.shape
        return 0, 0, max(h, w)
    rows, cols = np.nonzero(region)
    cy, cx = (rows.min() + rows.max() + 1) / 2, (cols.min() + cols.max() + 1) / 2
    side = int(round(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) * (1 + 2 * margin)))
    return int(round(cy - side / 2)), int(round(cx - side / 2)), side


def crop_square(image: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    """``image[top:top+side, left:left+side]``, padded with 0 where the box leaves the image."""
    top, left, side = box
    out = np.zeros((side, side), image.dtype)
    h, w = image.shape
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + side, h), min(left + side, w)
    out[t0 - top:t1 - top, l0 - left:l1 - left] = image[t0:t1, l0:l1]
    return out


def _framed(gray: np.ndarray, size: int, crop: bool) -> np.ndarray:
    """float (H, W) in [0, 1] -> (size, size): cropped to the head (``crop``), then the longest
    side resized to ``size`` and the rest padded with black."""
    from .folder import _fit_square

    if crop:
        gray = crop_square(gray, head_box(gray))
    return _fit_square(torch.from_numpy(np.ascontiguousarray(gray)), size, 0.0, 1.0)[0].numpy()


def prepare_mri(image, size: int = CTMRI_SIZE, crop: bool = True) -> np.ndarray:
    """One MRI file (a PIL image of any mode and size) -> uint8 (size, size), as described above."""
    x = _framed(np.asarray(image.convert("L"), np.float32) / 255.0, size, crop)
    bright = x[x > MRI_FLOOR * max(float(x.max()), 1e-6)]
    top = float(np.percentile(bright, MRI_PERCENTILE)) if bright.size else 1.0
    return np.round(np.clip(x / max(top, 1e-6), 0, 1) * 255).astype(np.uint8)


def _read_mri(folder: Path, nums: list[int], size: int, crop: bool = True) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(nums), size, size), np.uint8)
    for i, n in enumerate(nums):
        with Image.open(folder / f"mri{n}.jpg") as im:
            out[i] = prepare_mri(im, size, crop)
    return out


def _similarity(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation and mean absolute difference (grey levels) of every image of ``a``
    with every image of ``b`` (uint8, same size), at :data:`COPY_SIDE` px."""
    za, zb = (torch.from_numpy(shrink(x, x.shape[-1] // COPY_SIDE)).float().flatten(1) for x in (a, b))
    mad = torch.cdist(za, zb, p=1) / za.shape[1]
    ca, cb = (z - z.mean(1, keepdim=True) for z in (za, zb))
    ca, cb = (c / c.norm(dim=1, keepdim=True).clamp_min(1e-6) for c in (ca, cb))
    return (ca @ cb.T).numpy(), mad.numpy()


@functools.lru_cache(maxsize=2)
def held_out_mri(folder: str) -> dict[str, tuple[list[int], dict[int, int]]]:
    """For each split, the MRI file numbers kept and, for each dropped, the file it copies.

    Train keeps every file but byte-identical copies. A validation or test file is also dropped
    when it is a *near-copy* of a training file: at 32 px, correlation above
    :data:`COPY_CORRELATION` or a mean absolute difference under :data:`COPY_MAD` grey levels.
    The MRI were collected from the web, and the same slice often appears several times,
    resized, cropped or re-encoded (the check finds about a third of the held-out files); a
    slice that close to a training slice, a copy or a neighbouring slice of the same head,
    cannot test how a model does on unseen images.
    """
    path = Path(folder)
    keep, dropped = unique_mri_numbers(path)
    out: dict[str, tuple[list[int], dict[int, int]]] = {}
    train = [n for n in keep if ct_split_of(n) == "train"]
    out["train"] = (train, {n: m for n, m in dropped.items() if ct_split_of(n) == "train"})
    train_imgs = _read_mri(path, train, CTMRI_SIZE)
    for split in ("val", "test"):
        nums = [n for n in keep if ct_split_of(n) == split]
        corr, mad = _similarity(_read_mri(path, nums, CTMRI_SIZE), train_imgs)
        near = (corr > COPY_CORRELATION) | (mad < COPY_MAD)
        gone = {n: m for n, m in dropped.items() if ct_split_of(n) == split}
        gone |= {n: train[int(corr[i].argmax())] for i, n in enumerate(nums) if near[i].any()}
        out[split] = ([n for n in nums if n not in gone], gone)
    return out


def load_mri(split: str = "train", size: int = CTMRI_SIZE, root: str | os.PathLike | None = None,
             crop: bool = True) -> np.ndarray:
    """One split of the MRI slices (copies dropped: :func:`held_out_mri`) as uint8
    (N, size, size), in file-number order."""
    folder = mri_folder(root)
    return _read_mri(folder, held_out_mri(str(folder))[split][0], size, crop)


def _ct_at(split: str, size: int, root: str | os.PathLike | None, crop: bool = True) -> np.ndarray:
    full = load_ct(split, CT_SIZE, root and Path(root) / "ct").images
    return np.stack([np.round(_framed(im / 255.0, size, crop) * 255).astype(np.uint8) for im in full])


def shrink(images_u8: np.ndarray, factor: int) -> np.ndarray:
    """uint8 (N, H, W) -> (N, H/factor, W/factor) by area averaging, rounded: how the smaller
    sizes of this data set are made from the 128 px one, and how translations made at 128 px are
    brought to a feature space's size (so real and translated images are shrunk alike)."""
    if factor == 1:
        return np.asarray(images_u8)
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).float()[:, None]
    return torch.nn.functional.avg_pool2d(x, factor)[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


@functools.lru_cache(maxsize=6)
def _load(split: str, size: int, root: str | None, crop: bool = True) -> Arrays:
    if size < CTMRI_SIZE and CTMRI_SIZE % size == 0:  # 64, 32...: area averages of the 128 px set
        big = _load(split, CTMRI_SIZE, root, crop)
        images = shrink(big.images, CTMRI_SIZE // size)
        return Arrays(big.name, split, size, images, big.labels, classes=dict(DOMAINS))
    ct = _ct_at(split, size, root, crop)
    mri = load_mri(split, size, root, crop)
    images = np.concatenate([ct, mri])
    labels = np.concatenate([np.zeros(len(ct), np.int64), np.ones(len(mri), np.int64)])
    return Arrays(CTMRI_NAME if crop else UNCROPPED_NAME, split, size, images, labels, classes=dict(DOMAINS))


def load_ctmri(split: str = "train", size: int = CTMRI_SIZE,
               root: str | os.PathLike | None = None, crop: bool = True) -> Arrays:
    """One split of CT (label 0) and MRI (label 1) slices, CT first, each in file-number order.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: the side of the square images (128 for the CPU run, 256 on a GPU). Divisors of
            128 (64, 32) are area averages of the 128 px images (:func:`shrink`); other sizes are
            prepared from the files.
        root: the ``ct_mri`` folder (default: ``../shared/data/ct_mri``, then ``data/ct_mri``).
        crop: crop each slice to a square around the head first (:func:`head_box`). False
            keeps the whole frame (chapter 07 shows what that does to a CycleGAN); the set is
            then named ``"ctmri_uncropped"`` (``load_split("ctmri_uncropped", ...)``).

    Returns:
        :class:`~.medmnist.Arrays` named ``"ctmri"`` with ``class_names`` {0: "CT", 1: "MRI"}.
        Cached in memory (loading reads 1,488 files: a few seconds): copy before changing them.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if size < 8:
        raise ValueError(f"size must be at least 8 px, got {size}")
    return _load(split, int(size), str(root) if root else None, bool(crop))


def domain(data: Arrays, label: int) -> np.ndarray:
    """The images of one domain (0: CT, 1: MRI) of a ``ctmri`` split."""
    return data.images[np.asarray(data.labels) == label]
