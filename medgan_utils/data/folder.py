"""Your own images: a folder of PNG/JPEG/DICOM/NIfTI files as one [-1, 1] tensor.

:func:`load_image_folder` turns whatever a hospital export or a downloaded data set contains
(8- or 16-bit PNG, RGB JPEG, CT/MR DICOM with or without ``.dcm``, 2D/3D/4D NIfTI) into the
package's convention: float (N, 1, size, size) in [-1, 1], one row per 2D image or volume slice,
with the name of the file (and slice) each row came from; or, with ``keep_range=True``, in the
files' own units (Hounsfield units, raw 16-bit values) for chapters that need them.
:func:`read_images` reads the same files at their own sizes (for ``medgan apply``). Pixels stay in
floating point from the file to the tensor: 16-bit images keep all their levels. Files are read
by MONAI's ``LoadImage`` with an explicit reader per format, so the axis order is known:

* PNG/JPEG/BMP/TIFF: ``PILReader(reverse_indexing=False)`` -> (H, W) or (H, W, C) as displayed.
* DICOM: ``PydicomReader(swap_ij=False)`` -> (rows, cols), (frames, rows, cols), with a trailing
  colour axis when ``SamplesPerPixel > 1``. MONAI applies ``RescaleSlope``/``RescaleIntercept``,
  so CT values are Hounsfield units.
* NIfTI: ``NibabelReader`` gives the voxels in *stored* order (the meta "space: RAS" only says
  that the affine maps to RAS world coordinates); the array is reoriented here to RAS with
  nibabel's ``io_orientation``/``apply_orientation`` (which, unlike ``as_closest_canonical``,
  also works on 2D slices).

Introduced in the chapter that trains a GAN on your own data (the CT/MRI folder).
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# PIL modes that become a (H, W) or (H, W, 3/4) array with meaningful values; anything else
# (palette "P", "LA", "CMYK", "YCbCr"...) is converted to RGBA first, so a palette image gives
# its colours rather than its palette indices.
_PLAIN_PIL_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F", "RGB", "RGBA")


class ImageReadError(ValueError):
    """A file that looks like an image (by name or DICOM header) could not be read as one."""


@dataclass(frozen=True)
class ImageFolder:
    """What :func:`load_image_folder` returns.

    Attributes:
        images: float32 (N, 1, size, size) in [-1, 1]; in stored units with ``keep_range=True``
            (see :func:`load_image_folder`).
        sources: N names, the file path relative to the folder, plus ``[z=K]`` for slice K of a
            NIfTI volume or ``[frame=K]`` for frame K of a multi-frame DICOM.
        notes: human-readable lines on what was done (intensity mapping and windowing, aspect
            handling, orientation, colour conversion, skipped and ignored files); print them in
            the notebook's data cell.
    """

    images: torch.Tensor
    sources: list[str]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _kind(path: Path) -> str | None:
    """'raster', 'dicom', 'nifti' or None (not an image file: ignored, not an error)."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name == "dicomdir":  # the index of a DICOM CD/export, no pixels of its own
        return None
    if path.suffix == "":
        # Scanners and PACS exports often write DICOM files without an extension; the
        # 'DICM' marker at byte 128 identifies them without parsing the file.
        from pydicom.misc import is_dicom

        try:
            return "dicom" if is_dicom(path) else None
        except OSError:
            return None
    return None


class _NoPixels(Exception):
    """A valid DICOM without pixel data (DICOMDIR, structured report, RT plan): not an image."""


@contextmanager
def _quiet_monai():
    # Building LoadImage instantiates every registered reader, and MONAI's GPU DICOM reader
    # logs and warns "nvImageCodec is not available" on every CPU machine; PydicomReader warns
    # when a 2D DICOM has no ImageOrientationPatient, but its affine is not used here. Noise.
    logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
            yield
    finally:
        logger.setLevel(level)


def _pil_converter(img):
    return img if img.mode in _PLAIN_PIL_MODES else img.convert("RGBA")


@cache
def _loader(kind: str):
    """One MONAI ``LoadImage`` per format, built once per process (building one is slow)."""
    from monai.data import NibabelReader, PILReader, PydicomReader
    from monai.transforms import LoadImage

    readers = {
        "raster": lambda: PILReader(converter=_pil_converter, reverse_indexing=False),
        "dicom": lambda: PydicomReader(swap_ij=False),
        "nifti": lambda: NibabelReader(),
    }
    with _quiet_monai():
        return LoadImage(image_only=True, reader=readers[kind](), dtype=np.float32)


def _to_gray(arr: np.ndarray) -> np.ndarray:
    """(..., 3) RGB or (..., 4) RGBA in stored units -> (...) luminance in the same units."""
    from skimage.color import rgb2gray

    if arr.shape[-1] == 4:
        # Composite on black: transparent areas of a medical image are background, not white.
        alpha = arr[..., 3:] / (65535.0 if arr[..., 3:].max() > 255 else 255.0)
        arr = arr[..., :3] * alpha
    # Float input keeps the stored units (skimage rescales only integer images), so a window
    # given in pixel values still applies after the BT.709 luma weights.
    return rgb2gray(arr.astype(np.float64))


def _read_slices(path: Path, kind: str) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Read one file -> (2D float arrays in display orientation, source suffixes, notes)."""
    header = None
    if kind == "dicom":
        import pydicom

        # defer_size leaves the pixel bytes unread: a cheap look at what the file holds.
        header = pydicom.dcmread(path, defer_size=1024, force=True)
        if not any(t in header for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            # force=True "parses" anything, so only a real DICOM object (it names its class)
            # counts as an image-less DICOM to ignore; a text file named .dcm is an error.
            meta = getattr(header, "file_meta", None) or {}
            if "SOPClassUID" in header or "MediaStorageSOPClassUID" in meta \
                    or "DirectoryRecordSequence" in header:
                raise _NoPixels(path)
            raise ValueError("not a DICOM file: no DICOM object class and no pixel data")
    img = _loader(kind)(str(path))
    arr = np.asarray(img.detach().cpu().numpy(), dtype=np.float64)
    notes: list[str] = []
    if kind == "raster":
        if arr.ndim == 3:
            arr = _to_gray(arr)
            notes.append("colour")
        return [arr], [""], notes
    if header is not None:
        if int(header.get("SamplesPerPixel", 1)) > 1:
            arr = _to_gray(arr)
            notes.append("colour")
        if str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            notes.append("MONOCHROME1")  # inverted after windowing, see load_image_folder
        if arr.ndim == 2:
            return [arr], [""], notes
        return list(arr), [f"[frame={k}]" for k in range(len(arr))], notes
    # NIfTI: reorient the voxel array to RAS, then take axial slices (axis 2, inferior ->
    # superior) in radiological display: anterior at the top, patient's right on the image left.
    from nibabel.orientations import apply_orientation, io_orientation

    affine = np.asarray(img.affine)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim == 4:
        arr = arr[..., 0]
        notes.append("4D")
    if arr.ndim != 3:
        raise ImageReadError(f"{path}: NIfTI with shape {arr.shape} is not 2D, 3D or 4D")
    arr = apply_orientation(arr, io_orientation(affine))
    slices = [arr[:, :, k].T[::-1, ::-1] for k in range(arr.shape[2])]
    suffixes = [""] if len(slices) == 1 else [f"[z={k}]" for k in range(len(slices))]
    return slices, suffixes, notes


def _to_unit_range(arrays: list[np.ndarray], window: tuple[float, float] | None
                   ) -> tuple[torch.Tensor, float, float]:
    """One file's slices, (S, H, W) float -> [-1, 1]: the file's min-max, or the window.

    Returns the float32 stack and the stored values ``(lo, hi)`` that became -1 and 1.
    The formula of MONAI's ``ScaleIntensityRange(clip=True)``, written in NumPy because the
    MetaTensor round trip costs ~6 ms per 512 px image against 0.3 ms here (2-core CPU).
    """
    stack = np.stack(arrays)
    if window is None:
        lo, hi = float(stack.min()), float(stack.max())
        if hi <= lo:  # a constant image has no contrast to stretch: show it black
            return torch.full(stack.shape, -1.0), lo, hi
    else:
        lo, hi = window[0] - window[1] / 2, window[0] + window[1] / 2
    unit = np.clip((stack - lo) / (hi - lo), 0.0, 1.0)
    return torch.from_numpy(unit * 2 - 1).float(), lo, hi


def _stored_units(arrays: list[np.ndarray], window: tuple[float, float] | None
                  ) -> tuple[torch.Tensor, float, float]:
    """One file's slices, (S, H, W) float, kept in stored units (clipped to the window if any).

    Returns the float32 stack and its black and white ends ``(lo, hi)``: the file's min and max,
    or the window's ends. float32 holds every integer up to 2**24 exactly, so 16-bit values and
    Hounsfield units come through unchanged.
    """
    stack = np.stack(arrays)
    if window is None:
        lo, hi = float(stack.min()), float(stack.max())
    else:
        lo, hi = window[0] - window[1] / 2, window[0] + window[1] / 2
        stack = np.clip(stack, lo, hi)
    return torch.from_numpy(stack).float(), lo, hi


def _fit_square(image: torch.Tensor, size: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """(H, W) in [lo, hi] -> (size, size): longest side resized to ``size``, then padded with
    ``lo`` (black: -1 in the default [-1, 1] range, the file's minimum or the window's lower end
    in stored units).

    torch's antialiased ``interpolate`` (PIL-style resampling filter) rather than MONAI's
    ``Resize(anti_aliasing=True)``, which Gaussian-smooths at full resolution first: 36 ms per
    512 px image against 0.7 ms, i.e. minutes against seconds for the 1,488-image CT/MRI folder.
    """
    h, w = image.shape
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    x = image[None, None]
    if (new_h, new_w) != (h, w):
        # antialias matters only when shrinking (a 512 px CT to 64 px would alias otherwise).
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True,
                          align_corners=False)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    x = F.pad(x, (left, size - new_w - left, top, size - new_h - top), value=lo)
    return x[0].clamp(lo, hi)


def _some(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _list_files(root: Path, recursive: bool) -> list[Path]:
    pattern = root.rglob("*") if recursive else root.glob("*")
    files = [p for p in pattern if p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _check_args(window: tuple[float, float] | None, on_error: str) -> tuple[float, float] | None:
    """The window as two floats (or None); a ValueError for a bad window or ``on_error``."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if window is not None:
        if len(window) != 2 or not window[1] > 0:
            raise ValueError(f"window must be (center, width) with width > 0, got {window!r}")
        window = (float(window[0]), float(window[1]))
    return window


def _candidates(path: str | os.PathLike, recursive: bool
                ) -> tuple[Path, Path, list[tuple[Path, str]], list[Path]]:
    """``(root, base, [(file, kind)...], ignored files)`` for a folder or one file; names are
    relative to ``base`` (the folder, or a single file's parent)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root.resolve()} does not exist; check the path "
                                f"(relative paths start from {Path.cwd()})")
    if root.is_file():
        files, base = [root], root.parent
    else:
        files, base = _list_files(root, recursive), root
    kinds = [(f, _kind(f)) for f in files]
    return root, base, [(f, k) for f, k in kinds if k is not None], [f for f, k in kinds if k is None]


def _read_file(f: Path, kind: str, name: str, window: tuple[float, float] | None,
               on_error: str, keep_range: bool
               ) -> tuple[torch.Tensor, list[str], list[str], float, float] | None:
    """One file -> ``(slices (S, H, W), source suffixes, flags, lo, hi)``, mapped to [-1, 1]
    (stored units with ``keep_range``); ``lo``/``hi`` are the stored values of black and white.

    Returns None for an unreadable file with ``on_error="skip"`` (after a warning naming it);
    raises :class:`_NoPixels` for a DICOM without pixels, which the caller ignores.
    """
    try:
        with _quiet_monai():
            slices, suffixes, flags = _read_slices(f, kind)
    except _NoPixels:
        raise
    except Exception as err:  # any reader failure of one file: MONAI/PIL/pydicom raise many kinds
        msg = f"cannot read {f} as a {kind} image ({type(err).__name__}: {err})"
        if on_error == "raise":
            raise ImageReadError(f"{msg}. Remove the file, or pass on_error='skip' to skip "
                                 f"unreadable files with a warning.") from err
        warnings.warn(f"skipping {name}: {msg}", stacklevel=3)  # the public function's caller
        return None
    if keep_range:
        scaled, lo, hi = _stored_units(slices, window)
    else:
        scaled, lo, hi = _to_unit_range(slices, window)
    if "MONOCHROME1" in flags:
        # MONOCHROME1 displays high values dark. Mirroring after the window (which is in
        # stored units) keeps the window's meaning and makes bright = bright as elsewhere
        # (in [-1, 1] the mirror lo + hi - x is a negation).
        scaled = (lo + hi) - scaled if keep_range else -scaled
    return scaled, suffixes, flags, lo, hi


def _nothing_found(root: Path, recursive: bool, skipped: list[str], ignored: list[Path]
                   ) -> FileNotFoundError:
    what = (f"{len(skipped)} unreadable file(s) skipped: {_some(skipped)}"
            if skipped else "no file with a supported extension")
    return FileNotFoundError(
        f"no images found in {root.resolve()} ({'recursive' if recursive else 'top level only'};"
        f" {what}; {len(ignored)} other file(s) ignored). Supported: "
        f"{' '.join(RASTER_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES)} and DICOM without "
        f"extension."
    )


def _intensity_note(window: tuple[float, float] | None, keep_range: bool) -> str:
    if keep_range:
        clip = "" if window is None else (f", clipped to the window [{window[0] - window[1] / 2:g}, "
                                          f"{window[0] + window[1] / 2:g}]")
        return (f"intensity: stored units kept (keep_range=True){clip}: HU for CT DICOM "
                f"after RescaleSlope/Intercept, pixel values for PNG/JPEG, not [-1, 1]")
    if window is None:
        return "intensity: min-max per file to [-1, 1] (no windowing)"
    c, w = window
    return (f"intensity: window center {c:g}, width {w:g} -> [{c - w / 2:g}, "
            f"{c + w / 2:g}] mapped to [-1, 1], clipped, in stored units "
            f"(HU for CT DICOM after RescaleSlope/Intercept; pixel values for PNG/JPEG)")


def _other_notes(n_volumes: int, seen: dict[str, list[str]], skipped: list[str],
                 ignored: list[str]) -> list[str]:
    """The notes on volumes, colour, MONOCHROME1, 4D, skipped and ignored files."""
    notes = []
    if n_volumes:
        notes.append(f"{n_volumes} NIfTI volume(s): axial slices (axis 2 in RAS), radiological "
                     f"view (anterior up, patient's right on the left)")
    if seen["colour"]:
        notes.append(f"{len(seen['colour'])} colour file(s) converted to grayscale (BT.709 luma)")
    if seen["MONOCHROME1"]:
        notes.append(f"{len(seen['MONOCHROME1'])} MONOCHROME1 DICOM(s) inverted (there, high "
                     f"stored values display dark)")
    if seen["4D"]:
        notes.append(f"4D NIfTI, first volume only: {_some(seen['4D'])}")
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable file(s): {_some(skipped)}")
    if ignored:
        notes.append(f"ignored {len(ignored)} file(s) that are not images (other extension, "
                     f"DICOM without pixels): {_some(ignored)}")
    return notes


def _each_read(candidates, base: Path, window, on_error: str, keep_range: bool,
               ignored: list[Path], skipped: list[str], seen: dict[str, list[str]]):
    """Read each candidate file in turn: yields ``(file, kind, name, read)`` for every readable
    image; files without pixels go to ``ignored``, unreadable ones (``on_error="skip"``) to
    ``skipped``, and each file's flags (colour, MONOCHROME1, 4D) to ``seen``."""
    for f, kind in candidates:
        name = f.relative_to(base).as_posix()
        try:
            read = _read_file(f, kind, name, window, on_error, keep_range)
        except _NoPixels:
            ignored.append(f)
            continue
        if read is None:
            skipped.append(name)
            continue
        for flag in read[2]:
            seen[flag].append(name)
        yield f, kind, name, read


def load_image_folder(
    path: str | os.PathLike,
    size: int = 64,
    window: tuple[float, float] | None = None,
    recursive: bool = True,
    on_error: Literal["raise", "skip"] = "raise",
    keep_range: bool = False,
) -> ImageFolder:
    """Load every image in a folder (or one file) as float (N, 1, size, size) in [-1, 1].

    What is read: ``.png .jpg .jpeg .bmp .tif .tiff`` (8/16-bit, grayscale, RGB, RGBA,
    palette), DICOM (``.dcm .dicom .ima`` or no extension with a DICOM header) and NIfTI
    (``.nii .nii.gz``). Files that are not images are ignored and counted in ``notes``: other
    extensions (``.txt``, ``.md5``, ``.json``...), hidden files, ``DICOMDIR`` and DICOM files
    without pixel data (reports, RT plans). Files are taken in sorted relative-path order.

    What each file becomes:

    * A 2D image gives one row; a 3D NIfTI gives its axial slices (axis 2 after reorientation
      to RAS, inferior to superior, shown radiologically: anterior up, patient's right on the
      left); a 4D NIfTI gives the slices of its first volume; a multi-frame DICOM one row per
      frame (as stored). DICOM files are not assembled into series: each file is read alone.
    * Colour (RGB/RGBA/palette/YBR) becomes grayscale with the BT.709 luma weights
      (``skimage.color.rgb2gray``); transparent pixels count as black.
    * Intensity: by default each *file* is min-max scaled to [-1, 1] (a volume as a whole, so
      its slices keep their relative brightness; a constant image becomes -1). With
      ``window=(center, width)`` the values in ``[center - width/2, center + width/2]`` map
      linearly to [-1, 1] and values outside are clipped, in the *stored units*: Hounsfield
      units for CT DICOM (MONAI's reader has applied ``RescaleSlope``/``RescaleIntercept``),
      nibabel's scaled values for NIfTI, pixel values (0-255, 0-65535) for PNG/JPEG. E.g.
      brain window ``(40, 80)``, soft tissue ``(40, 400)``, lung ``(-600, 1500)``.
      Pixels are floating point from the reader on (MONAI reads to float32, the scaling is
      done in float64): a 16-bit PNG keeps all 65,536 levels, nothing goes through 8 bits.
    * ``keep_range=True`` skips the mapping to [-1, 1]: values stay in the stored units above
      (Hounsfield units for CT DICOM, 0-65535 for a 16-bit PNG, nibabel's scaled values for
      NIfTI), as float32, which holds every integer up to 2**24 exactly. With a window, they
      are clipped to ``[center - width/2, center + width/2]``, still in stored units. Padding
      then uses the file's minimum (or the window's lower end) as black, and a MONOCHROME1
      image ``x`` becomes ``min + max - x`` (the window's ends with a window). For chapters
      that work in physical units (HU thresholds, dose, their own normalisation); the networks
      of the course expect the default [-1, 1].
    * Aspect ratio is kept: the longest side is resized to ``size`` (bilinear, antialiased)
      and the shorter one padded symmetrically with -1 (black). Padding rather than cropping
      because a crop can cut anatomy (a lesion at the edge) out of a training image.

    Args:
        path: a folder, or a single image file.
        size: output side in pixels.
        window: ``(center, width)`` in stored units, or None for per-file min-max.
        recursive: also read subfolders.
        on_error: what to do with a file that has an image name (or DICOM header) but cannot
            be read (corrupt, truncated, a text file named ``.png``, an unsupported codec):
            ``"raise"`` (default) raises :class:`ImageReadError` naming the file, so a bad
            export is noticed; ``"skip"`` leaves it out with a ``warnings.warn`` naming it.
        keep_range: return stored units instead of [-1, 1] (see above).

    Returns:
        :class:`ImageFolder` with ``images`` float32 (N, 1, size, size) in [-1, 1] (stored
        units with ``keep_range=True``), ``sources`` (N names) and ``notes`` (what was done,
        for the notebook's data cell).

    Raises:
        FileNotFoundError: ``path`` does not exist, or holds no readable image.
        ImageReadError: a file could not be read and ``on_error="raise"``.
        ValueError: bad ``size``, ``window`` or ``on_error``.
    """
    window = _check_args(window, on_error)
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    root, base, candidates, ignored = _candidates(path, recursive)

    images: list[torch.Tensor] = []
    sources: list[str] = []
    skipped: list[str] = []
    seen: dict[str, list[str]] = {"colour": [], "MONOCHROME1": [], "4D": []}
    n_volumes = n_files = 0
    for _f, kind, name, (scaled, suffixes, _flags, lo, hi) in _each_read(
            candidates, base, window, on_error, keep_range, ignored, skipped, seen):
        n_files += 1
        n_volumes += kind == "nifti" and len(suffixes) > 1
        if not keep_range:
            lo, hi = -1.0, 1.0
        for img2d, suffix in zip(scaled, suffixes, strict=True):
            images.append(_fit_square(img2d, int(size), lo, hi))
            sources.append(name + suffix)

    if not images:
        raise _nothing_found(root, recursive, skipped, ignored)

    notes = [f"{len(images)} image(s) of {size}x{size} from {n_files} file(s) "
             f"in {root.resolve()}" + (" (recursive)" if recursive and root.is_dir() else ""),
             _intensity_note(window, keep_range),
             f"aspect kept: longest side resized to {size} px (bilinear, antialiased), "
             f"shorter side padded with -1"]
    notes += _other_notes(n_volumes, seen, skipped, [f.relative_to(base).as_posix() for f in ignored])
    return ImageFolder(torch.stack(images), sources, notes)


@dataclass(frozen=True)
class NativeImage:
    """One 2D image at its own size, as :func:`read_images` returns it.

    Attributes:
        image: float32 (1, H, W) in [-1, 1], H x W as stored (display orientation).
        source: the file path relative to the folder (a single file: its name), plus ``[z=K]``
            or ``[frame=K]`` as in :attr:`ImageFolder.sources`.
        path: the file it came from.
        kind: ``"raster"``, ``"dicom"`` or ``"nifti"``.
        index: K, the slice of a NIfTI volume or frame of a multi-frame DICOM; None for 2D.
        stored_range: the stored values (HU, pixel values) that became -1 and 1: the file's
            min and max, or the window's ends; a MONOCHROME1 image is mirrored, so there the
            first became 1.
        flags: what else was done: ``"colour"`` (to grayscale), ``"MONOCHROME1"`` (inverted),
            ``"4D"`` (first volume only).
    """

    image: torch.Tensor
    source: str
    path: Path
    kind: str
    index: int | None
    stored_range: tuple[float, float]
    flags: tuple[str, ...] = ()


def read_images(
    path: str | os.PathLike,
    window: tuple[float, float] | None = None,
    recursive: bool = True,
    on_error: Literal["raise", "skip"] = "raise",
) -> tuple[list[NativeImage], list[str]]:
    """Read every image in a folder (or one file) at its own size, each (1, H, W) in [-1, 1].

    Reads what :func:`load_image_folder` reads, in the same order, with the same intensity
    mapping (per-file min-max, or ``window=(center, width)`` in stored units), colour, DICOM and
    NIfTI handling, but neither resizes nor pads: for models applied to a user's own scans
    (``medgan apply``), whose outputs must line up pixel for pixel with the inputs.

    Args:
        path: a folder, or a single image file.
        window: ``(center, width)`` in stored units, or None for per-file min-max.
        recursive: also read subfolders.
        on_error: ``"raise"`` (default): an unreadable file raises :class:`ImageReadError`
            naming it; ``"skip"``: it is left out with a warning naming it.

    Returns:
        ``(images, notes)``: one :class:`NativeImage` per 2D image or slice, and human-readable
        lines on what was done.

    Raises:
        FileNotFoundError: ``path`` does not exist, or holds no readable image.
        ImageReadError: a file could not be read and ``on_error="raise"``.
        ValueError: bad ``window`` or ``on_error``.
    """
    window = _check_args(window, on_error)
    root, base, candidates, ignored = _candidates(path, recursive)
    images: list[NativeImage] = []
    skipped: list[str] = []
    seen: dict[str, list[str]] = {"colour": [], "MONOCHROME1": [], "4D": []}
    n_volumes = 0
    for f, kind, name, (scaled, suffixes, flags, lo, hi) in _each_read(
            candidates, base, window, on_error, False, ignored, skipped, seen):
        n_volumes += kind == "nifti" and len(suffixes) > 1
        for k, (img2d, suffix) in enumerate(zip(scaled, suffixes, strict=True)):
            images.append(NativeImage(img2d[None].clone(), name + suffix, f, kind,
                                      k if suffix else None, (lo, hi), tuple(flags)))
    if not images:
        raise _nothing_found(root, recursive, skipped, ignored)
    sizes = sorted({tuple(im.image.shape[1:]) for im in images})
    notes = [f"{len(images)} image(s) at their own size ({_some([f'{h}x{w}' for h, w in sizes])})"
             f" from {root.resolve()}" + (" (recursive)" if recursive and root.is_dir() else ""),
             _intensity_note(window, keep_range=False)]
    notes += _other_notes(n_volumes, seen, skipped, [f.relative_to(base).as_posix() for f in ignored])
    return images, notes
