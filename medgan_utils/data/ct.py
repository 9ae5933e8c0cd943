"""The head-CT slices of chapter 05 (super-resolution), split by contiguous blocks of file numbers.

``ct_mri/ct/`` holds 744 axial head-CT slices ``ctN.png`` (512 x 512, 8-bit grayscale), a subset
of the Kaggle set "CT to MRI cGAN" (see ``data/README.md`` for source and licence). Which patient
a slice comes from is not recorded. The file numbers come in runs (8, 9, 10, 18, 19, 20, ...);
if numbers were assigned scan by scan, a random split could put slices of one head on both
sides and flatter the test score. The split is therefore by *contiguous blocks of file numbers*,
cut between two runs, fixed and written down once. It cannot promise more: consecutive numbers
are no more alike than random pairs, and some held-out slices look like neighbouring slices of a
training head (same outline and table; :func:`nearest_training_distance` finds them). No held-out
slice is a copy of a training slice (``tests/test_superres.py`` checks), and chapter 05 reports
its gains separately on the test slices farthest from every training slice.

=========  ===================  ======
split      file numbers          slices
=========  ===================  ======
train      8 to 1750             519
val        1758 to 2000          75
test       2008 to 2500          150
=========  ===================  ======

:func:`load_ct` returns a split as :class:`~.medmnist.Arrays` (uint8 (N, 512, 512), labels all 0:
the slices have none), so every loader, model kind and the CLI take it like a MedMNIST split
(``--dataset ct``). :func:`head_mask` gives the region inside the head where chapter 05 scores
its methods: two thirds of a slice is black background, which any method reproduces perfectly
and which would inflate PSNR.

Introduced in ``notebooks/05_super_resolution.ipynb``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from .medmnist import SPLITS, Arrays

CT_NAME = "ct"
CT_SIZE = 512
# First file number of val and of test: each starts a new run of file numbers (see the table).
CT_BOUNDS = (1758, 2008)


def ct_numbers(folder: str | os.PathLike) -> list[int]:
    """The file numbers of ``ctN.png`` in ``folder``, sorted."""
    nums = [int(m.group(1)) for p in Path(folder).iterdir() if (m := re.fullmatch(r"ct(\d+)\.png", p.name))]
    return sorted(nums)


def ct_split_of(number: int) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a file number (the fixed blocks above)."""
    return "train" if number < CT_BOUNDS[0] else "val" if number < CT_BOUNDS[1] else "test"


def ct_folder(root: str | os.PathLike | None = None) -> Path:
    """The folder of ``ctN.png`` files: ``root`` itself if it holds them, else the ``ct/``
    folder, then ``$MEDGAN_CT_ROOT`` likewise, then the ``ct/`` folder of the ``ct_mri`` data
    set in ``../shared/data/`` or ``data/`` (:func:`~.fetch.find_dataset`, which names the folders searched and how to
    fetch the set when none holds it)."""
    given = root or os.environ.get("MEDGAN_CT_ROOT")
    if given:
        for cand in (Path(given), Path(given) / "ct"):
            if cand.is_dir() and ct_numbers(cand):
                return cand
        # A folder named for the CT slices that holds none: say so rather than read another copy.
        raise FileNotFoundError(f"no ctN.png files in {given} or {Path(given) / 'ct'} "
                                f"({'MEDGAN_CT_ROOT' if root is None else 'root'}); point it at the "
                                "ct_mri/ct folder, or leave it unset to search ../shared/data and data/")
    from .fetch import find_dataset  # imported late: fetch.py also runs as a script

    return find_dataset("ct_mri", verify=False) / "ct"


def load_ct(split: str = "train", size: int = CT_SIZE, root: str | os.PathLike | None = None) -> Arrays:
    """One split of the head-CT slices as uint8 (N, size, size), in file-number order.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (the contiguous blocks above).
        size: 512 (the files' own size) or a divisor of it; smaller sizes are antialiased
            area averages (PIL's ``reduce``), for quick experiments.
        root: a folder of ``ctN.png`` files or the ``ct_mri`` folder (default: see
            :func:`ct_folder`).

    Returns:
        :class:`~.medmnist.Arrays` named ``"ct"`` with ``labels`` all 0 and the file numbers in
        ``numbers`` order available from :func:`ct_numbers`.
    """
    from PIL import Image

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if size < 1 or CT_SIZE % size:
        raise ValueError(f"size must divide {CT_SIZE} (512, 256, 128...), got {size}")
    folder = ct_folder(root)
    nums = [n for n in ct_numbers(folder) if ct_split_of(n) == split]
    images = np.empty((len(nums), size, size), np.uint8)
    for i, n in enumerate(nums):
        with Image.open(folder / f"ct{n}.png") as im:
            if im.size != (CT_SIZE, CT_SIZE):
                raise ValueError(f"{folder / f'ct{n}.png'} is {im.size}, expected {CT_SIZE}x{CT_SIZE}")
            im = im.convert("L")
            images[i] = np.asarray(im.reduce(CT_SIZE // size) if size != CT_SIZE else im)
    return Arrays(CT_NAME, split, size, images, np.zeros(len(nums), np.int64))


def nearest_training_distance(split: str = "test", size: int = 64,
                              root: str | os.PathLike | None = None) -> torch.Tensor:
    """For each slice of ``split``, the mean absolute difference (in [0, 1] units, at ``size`` px)
    to its most similar training slice: small values flag slices that may come from a training
    patient. (N,) float, in ``load_ct`` order."""
    held = torch.from_numpy(load_ct(split, size, root).images).float().flatten(1) / 255
    train = torch.from_numpy(load_ct("train", size, root).images).float().flatten(1) / 255
    return (torch.cdist(held, train, p=1) / train.shape[1]).min(1).values


def load_split(name: str, split: str = "train", size: int = 28,
               root: str | os.PathLike | None = None) -> Arrays:
    """A split of any data set a model kind trains on: MedMNIST by name, ``"ct"`` (chapter 05's
    head CT) or ``"ctmri"`` (chapter 07's unpaired CT and MRI, labelled by modality, cropped to
    the head; ``"ctmri_uncropped"``: whole frames)."""
    if name == CT_NAME:
        return load_ct(split, size, root)
    if name in ("ctmri", "ctmri_uncropped"):
        from .ctmri import load_ctmri

        return load_ctmri(split, size, root, crop=name == "ctmri")
    from .medmnist import load_arrays

    return load_arrays(name, split, size, root)


def head_mask(hr: torch.Tensor, threshold: float = -0.85) -> torch.Tensor:
    """Where the head is in CT slices: the largest bright region with its holes filled.

    Thresholding finds skull and brain (background is pure black, -1); keeping the largest
    connected component drops the patient table's arc and specks; filling holes adds the dark
    regions the skull encloses (ventricles, air in the sinuses). Computed from the
    high-resolution image, so every method is scored on the same pixels. scipy's ``ndimage``
    rather than MONAI's ``KeepLargestConnectedComponent``/``FillHoles``: the same masks
    (measured: 1 pixel in 2 million differs), 4 ms a slice instead of 0.5 s.

    Args:
        hr: float (B, 1, H, W) in [-1, 1].
        threshold: intensity above which a pixel counts as tissue (-0.85 is 19 of 255).

    Returns:
        bool (B, 1, H, W).
    """
    from scipy import ndimage

    if hr.ndim != 4 or hr.shape[1] != 1:
        raise ValueError(f"head_mask expects (B, 1, H, W), got {tuple(hr.shape)}")
    out = np.zeros(hr.shape, bool)
    for i, img in enumerate(hr.detach().cpu().numpy()[:, 0]):
        labels, n = ndimage.label(img > threshold)
        if n:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            out[i, 0] = ndimage.binary_fill_holes(labels == sizes.argmax())
    return torch.from_numpy(out)
