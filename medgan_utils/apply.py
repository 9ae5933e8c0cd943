"""Image-to-image models on a user's own scans: tiled inference, and what ``medgan apply`` writes.

:func:`apply_tiled` runs any image-to-image model (super-resolution, reconstruction, CycleGAN)
on an image of any size in overlapping tiles, so memory stays bounded; :func:`apply_to_files`
reads PNG/JPEG/DICOM/NIfTI files or folders at their own size
(:func:`~medgan_utils.data.read_images`), applies the model and writes ``<stem>.png`` (uint8)
and ``<stem>.npy`` (float32 in [-1, 1]) per image, with ``apply_note.json`` and ``README.txt``
saying what was done.

The model protocol: ``model.apply(x)`` maps float (B, C, h, w) in [-1, 1] on ``model.device`` to
(B, C, s*h, s*w) in [-1, 1], with s = ``model.config.scale`` (1 when the config has none). An
inpainting model (``config.task == "inpaint"``) takes the image and a hole mask (``--mask FILE``:
a picture of the image's size, white or any value above its minimum = missing) as two channels.

Introduced for ``medgan apply`` with the image-to-image chapters (05-07).
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import ImageReadError, read_images, to_float, to_uint8
from .data.folder import DICOM_SUFFIXES, NIFTI_SUFFIXES, RASTER_SUFFIXES

NOTE = "apply_note.json"
README = "README.txt"


def model_scale(model: Any) -> int:
    """How many times larger than its input a model's output is (``config.scale``, else 1)."""
    return int(getattr(model.config, "scale", 1))


def _spans(n: int, tile: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ceil(n / tile) near-equal pieces of 0..n (no thin sliver at the end)."""
    k = -(-n // tile)
    cuts = [round(i * n / k) for i in range(k + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


@torch.no_grad()
def apply_tiled(model: Any, x: torch.Tensor, tile: int = 256, overlap: int = 32) -> torch.Tensor:
    """``model.apply`` on overlapping tiles of one image, stitched: memory bounded by the tile.

    Each tile (side at most ``tile`` input pixels) is given ``overlap`` input pixels of context on
    every side where the image has them; the model's output for the context is cropped away
    before stitching. With ``overlap`` at least the model's receptive-field radius (in input
    pixels) the result equals ``model.apply(x)`` (the course's SRResNet, 8 blocks: 24 pixels;
    the default leaves a margin); an image no larger than a tile goes in one piece.

    Args:
        model: an image-to-image model (``apply``, ``config``, optionally ``device``).
        x: float (1, C, H, W) in [-1, 1], on any device.
        tile: tile side in input pixels.
        overlap: context around each tile in input pixels.

    Returns:
        float32 (1, C', s*H, s*W) in [-1, 1] on the CPU, s = :func:`model_scale`.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"apply_tiled takes one image (1, C, H, W), got shape {tuple(x.shape)}")
    if tile < 1 or overlap < 0:
        raise ValueError(f"tile must be >= 1 and overlap >= 0, got tile={tile}, overlap={overlap}")
    s = model_scale(model)
    device = torch.device(getattr(model, "device", None) or "cpu")
    _, _, H, W = x.shape
    out = None
    for top, bottom in _spans(H, tile):
        for left, right in _spans(W, tile):
            t0, b0 = max(0, top - overlap), min(H, bottom + overlap)
            l0, r0 = max(0, left - overlap), min(W, right + overlap)
            y = model.apply(x[:, :, t0:b0, l0:r0].to(device)).float().cpu()
            if tuple(y.shape[-2:]) != ((b0 - t0) * s, (r0 - l0) * s):
                raise ValueError(f"the model turned a {b0 - t0}x{r0 - l0} input into "
                                 f"{y.shape[-2]}x{y.shape[-1]}, not {s}x larger (its config.scale)")
            if out is None:
                out = torch.empty(1, y.shape[1], H * s, W * s)
            out[:, :, top * s:bottom * s, left * s:right * s] = \
                y[:, :, (top - t0) * s:(bottom - t0) * s, (left - l0) * s:(right - l0) * s]
    return out


def default_tiling(model: Any) -> tuple[int, int]:
    """``(tile, overlap)`` in input pixels for a model: its own ``tiling`` attribute, else (256,
    32), exact for the course's SRResNet (receptive radius 24). A U-Net (chapter 06) sees about
    94 px each side and pools four times, so tiles would only be exact with a large overlap and
    tile edges on multiples of 16: :class:`~.models.recon.ReconModel` asks for whole images."""
    return tuple(getattr(model, "tiling", (256, 32)))


def needs_mask(model: Any) -> bool:
    """Whether the model fills holes and so takes a mask beside each image."""
    return getattr(model.config, "task", None) == "inpaint"


def read_mask(path: str | os.PathLike) -> torch.Tensor:
    """A hole mask from an image file: (1, H, W) float, 1 where the file's value is above its
    minimum (a black-and-white PNG: white = missing). An error for a file of several images or
    one without any hole."""
    images, _ = read_images(Path(path).expanduser(), None)
    if len(images) != 1:
        raise ValueError(f"--mask {path}: expected one 2D image, found {len(images)}")
    lo, hi = images[0].stored_range
    mask = (images[0].image > -1.0).float() if hi > lo else torch.zeros_like(images[0].image)
    if not mask.any():
        raise ValueError(f"--mask {path} marks no pixel as missing (it is uniform): white (or any "
                         f"value above the file's minimum) marks the hole")
    return mask


def check_scale(model: Any, scale: int | None) -> int:
    """The model's scale; a ValueError explaining the mismatch when ``scale`` asks for another."""
    s = model_scale(model)
    if scale is not None and scale != s:
        does = f"enlarges its input {s}x" if s > 1 else "keeps the image size"
        raise ValueError(f"--scale {scale}: this model {does} (config.scale = {s}), it cannot make "
                         f"{scale}x outputs. The input is the low-resolution image as it is; drop "
                         f"--scale or use a model trained for {scale}x.")
    return s


def read_npz_images(path: str | os.PathLike) -> tuple[torch.Tensor, str]:
    """A MedMNIST-like ``.npz`` (``images`` uint8 (N, H, W) or (N, H, W, C), as ``medgan sample``
    writes; or float (N, [C,] H, W) in [-1, 1]) -> float32 (N, C, H, W) in [-1, 1] and a line on
    the intensity mapping."""
    try:
        with np.load(path) as f:
            if "images" not in f.files:
                raise ValueError(f"{path} has no 'images' array (it has {f.files})")
            arr = f["images"]
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ImageReadError(f"cannot read {path} as a .npz archive "
                             f"({type(err).__name__}: {err})") from err
    if arr.dtype == np.uint8:
        return to_float(torch.from_numpy(arr)), "uint8 0-255 -> [-1, 1]"
    x = torch.as_tensor(arr, dtype=torch.float32)
    x = x[:, None] if x.ndim == 3 else x
    if x.numel() and (x.min() < -1.001 or x.max() > 1.001):
        raise ValueError(f"{path}: float images must be (N, C, H, W) in [-1, 1], got values in "
                         f"[{x.min():.3g}, {x.max():.3g}]; store uint8 0-255 instead")
    return x, "float, stored in [-1, 1]"


@dataclass(frozen=True)
class _Item:
    image: torch.Tensor  # (C, H, W) in [-1, 1]
    source: str  # the input as the note names it
    path: Path  # the file it came from
    stem: str  # output path relative to the output folder, without suffix
    intensity: str
    stored_range: tuple[float, float]  # the input's values that became -1 and 1
    flags: tuple[str, ...] = ()


def _stem(rel: Path) -> str:
    """``ct/IM1.dcm`` -> ``ct/IM1``; only image suffixes go (``1.2.840.5``, a DICOM, stays)."""
    name = rel.name
    cut = next((len(x) for x in NIFTI_SUFFIXES + RASTER_SUFFIXES + DICOM_SUFFIXES
                if name.lower().endswith(x)), 0)
    return (rel.parent / name[:len(name) - cut]).as_posix()


AUTO = "auto"
EIGHT_BIT = "the course's 8-bit mapping (stored 0 -> -1, 255 -> 1)"


def _eight_bit(image: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """A per-file min-max image (stored ``lo`` -> -1, ``hi`` -> 1) re-mapped to 0 -> -1, 255 -> 1."""
    stored = lo + (image + 1) / 2 * (hi - lo)
    return stored / 127.5 - 1


def _read_inputs(inputs: Iterable[str | os.PathLike], window: tuple[float, float] | str | None
                 ) -> tuple[list[_Item], list[str]]:
    items: list[_Item] = []
    notes: list[str] = []
    for given in inputs:
        p = Path(given).expanduser()
        if p.is_file() and p.suffix.lower() == ".npz":
            x, how = read_npz_images(p)
            span = (0.0, 255.0) if how.startswith("uint8") else (-1.0, 1.0)
            items += [_Item(img, f"{p}[{i}]", p, f"{p.stem}_{i:04d}", how, span)
                      for i, img in enumerate(x)]
            continue
        auto = window == AUTO
        images, more = read_images(p, None if auto else window)
        notes += more
        base = p.parent if p.is_file() else p
        for im in images:
            stem = _stem(im.path.relative_to(base))
            if im.index is not None:
                stem += f"_{'z' if im.kind == 'nifti' else 'f'}{im.index:03d}"
            lo, hi = im.stored_range
            image = im.image
            if auto and im.kind == "raster" and 0 <= lo and hi <= 255 and "MONOCHROME1" not in im.flags:
                # An 8-bit file (PNG/JPEG): the fixed mapping every course model was trained with.
                image, how, (lo, hi) = _eight_bit(im.image, lo, hi), EIGHT_BIT, (0.0, 255.0)
            else:
                fixed = window is not None and not auto
                how = f"window {window[0]:g}/{window[1]:g}" if fixed else "min-max of the file"
                how += f": stored {lo:g} -> -1, {hi:g} -> 1" + (", clipped" if fixed else "")
                how += ", inverted (MONOCHROME1)" if "MONOCHROME1" in im.flags else ""
            items.append(_Item(image, str(base / im.source), im.path, stem, how, (lo, hi),
                               im.flags))
    return items, notes


def _unique(stems: list[str]) -> list[str]:
    """Stems made unique (case-insensitively, for macOS/Windows disks) with -2, -3... suffixes."""
    taken: set[str] = set()
    out = []
    for stem in stems:
        new, k = stem, 1
        while new.lower() in taken:
            k += 1
            new = f"{stem}-{k}"
        taken.add(new.lower())
        out.append(new)
    return out


def _write(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename: a killed run leaves no half-written output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png(y: torch.Tensor) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8(y[None])[0]).save(buf, format="PNG")
    return buf.getvalue()


def _npy(y: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    arr = y.clamp(-1, 1).numpy().astype(np.float32)
    np.save(buf, arr[0] if len(arr) == 1 else arr)
    return buf.getvalue()


def apply_to_files(
    model: Any,
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    scale: int | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    window: tuple[float, float] | str | None = AUTO,
    force: bool = False,
    checkpoint: str | os.PathLike = "",
    mask: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Apply an image-to-image model to image files at their own size; write PNG, NPY and a note.

    Every input (a file or folder that :func:`~medgan_utils.data.load_image_folder` reads, or a
    MedMNIST-like ``.npz``) is read and every output planned before anything is written:
    ``<out_dir>/<stem>.png`` (uint8, 0-255 for [-1, 1]) and ``<out_dir>/<stem>.npy`` (float32
    (s*H, s*W) in [-1, 1]; (C, s*H, s*W) for C > 1), where the stem keeps a folder's subfolders,
    slice K of a NIfTI volume adds ``_z00K``, frame K of a DICOM ``_f00K``, image K of a ``.npz``
    ``_000K``, and stems that clash get ``-2``, ``-3``... Then ``apply_note.json`` (checkpoint,
    model header, version, tiling and, per image: source, sizes, intensity mapping, outputs)
    and ``README.txt``.

    Args:
        model: an image-to-image model (see the module docstring).
        inputs: files or folders.
        out_dir: output folder (created).
        scale: the enlargement the caller expects; an error if the model's differs.
        tile, overlap: see :func:`apply_tiled` (input pixels); None: :func:`default_tiling`.
        window: ``"auto"`` (default): 8-bit raster files (PNG/JPEG with values in 0-255) get the
            fixed mapping 0 -> -1, 255 -> 1 that every course model was trained with, other files
            (16-bit, DICOM, NIfTI) per-file min-max; ``(center, width)`` in stored units (HU for
            CT) for every file; None: per-file min-max for every file.
        force: overwrite existing outputs.
        checkpoint: the model's file, recorded in the note with its header.
        mask: for an inpainting model, the hole mask for every input (:func:`read_mask`; it
            must have the images' size); an error for any other model.

    Returns:
        One record per output image, as in the note's ``"images"``.

    Raises:
        ValueError: ``scale`` differs from the model's, channels differ, an output would
            replace an input.
        FileExistsError: outputs exist and not ``force`` (nothing is written).
        ImageReadError: an input cannot be read (nothing is written).
        FileNotFoundError: an input does not exist or holds no image.
    """
    s = check_scale(model, scale)
    tile_default, overlap_default = default_tiling(model)
    tile = tile_default if tile is None else tile
    overlap = overlap_default if overlap is None else overlap
    if needs_mask(model) and mask is None:
        raise ValueError("this is an inpainting model: give the hole with --mask FILE (a picture of "
                         "the image's size, white = missing)")
    if mask is not None and not needs_mask(model):
        raise ValueError("--mask is for inpainting models; this model restores whole images")
    hole = read_mask(mask) if mask is not None else None
    channels = getattr(model.config, "channels", None)
    items, read_notes = _read_inputs(inputs, window)
    for item in items:
        if channels is not None and item.image.shape[0] != channels:
            raise ValueError(f"{item.source} gives {item.image.shape[0]}-channel images; the model "
                             f"takes {channels}")
        if hole is not None and hole.shape[-2:] != item.image.shape[-2:]:
            raise ValueError(f"--mask {mask} is {hole.shape[-2]}x{hole.shape[-1]}, but {item.source} "
                             f"is {item.image.shape[-2]}x{item.image.shape[-1]}: they must match")
    out = Path(out_dir).expanduser()
    stems = _unique([item.stem for item in items])
    plan = [(out / f"{stem}.png", out / f"{stem}.npy") for stem in stems]
    every = [p for pair in plan for p in pair] + [out / NOTE, out / README]
    sources = {item.path.resolve() for item in items}
    if clobbered := [p for p in every if p.resolve() in sources]:
        raise ValueError(f"writing to {out} would replace the input {clobbered[0]}: "
                         f"choose another --out")
    if (existing := [p for p in every if p.exists()]) and not force:
        names = ", ".join(str(p) for p in existing[:5]) + (f" and {len(existing) - 5} more"
                                                           if len(existing) > 5 else "")
        raise FileExistsError(f"{len(existing)} output file(s) exist already: {names}. Nothing "
                              f"was written; pass --force (force=True) to overwrite, or choose "
                              f"another --out.")
    records = []
    for item, (png, npy) in zip(items, plan, strict=True):
        x = item.image if hole is None else torch.cat([item.image * (1 - hole) - hole, hole])
        y = apply_tiled(model, x[None], tile, overlap)[0]
        _write(png, _png(y))
        _write(npy, _npy(y))
        H, W = item.image.shape[1:]
        records.append({"source": item.source, "input_size": [H, W],
                        "output_size": list(y.shape[1:]),
                        "intensity": item.intensity, "stored_range": list(item.stored_range),
                        "flags": list(item.flags),
                        "tiles": len(_spans(H, tile)) * len(_spans(W, tile)),
                        **({"mask": str(Path(mask).resolve()),
                            "hole_fraction": round(float(hole.mean()), 6)} if hole is not None else {}),
                        "outputs": [f.relative_to(out).as_posix() for f in (png, npy)]})
    _write_note(out, model, checkpoint, s, tile, overlap, window, read_notes, records)
    return records


def _write_note(out: Path, model: Any, checkpoint: str | os.PathLike, s: int, tile: int,
                overlap: int, window: tuple[float, float] | str | None, read_notes: list[str],
                records: list[dict[str, Any]]) -> None:
    from . import __version__
    from .pretrained import read_facts
    from .utils import git_commit, write_json

    facts = (read_facts(checkpoint) if checkpoint and Path(checkpoint).is_file()
             else {"model": type(model).__name__, "config": model.config.to_dict()})
    when = time.strftime("%Y-%m-%d %H:%M:%S %z")
    version = f"medgan_utils {__version__}, commit {git_commit()}"
    intensity = ("min-max of each file" if window is None else
                 "8-bit files: 0 -> -1, 255 -> 1; others: min-max of each file" if window == AUTO else
                 f"window {window[0]:g}/{window[1]:g}")
    write_json(out / NOTE, {
        "command": "medgan apply", "created": when, "version": version,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else "", "model": facts,
        "scale": s, "tiling": {"tile": tile, "overlap": overlap, "unit": "input pixels"},
        **({"direction": model.direction} if hasattr(model, "direction") else {}),
        "intensity": intensity + " to [-1, 1]; stored_range: the stored values of -1 and 1",
        "formats": {"png": "uint8, 0-255 for -1..1", "npy": "float32 (H, W) in [-1, 1]"},
        "read_notes": read_notes, "images": records})
    _write(out / README, "\n".join([
        f"Outputs of `medgan apply` ({version}), {when}.",
        f"Model: {facts.get('kind', facts.get('model'))} from {checkpoint or '(no file)'}"
        + (f", direction {model.direction}" if hasattr(model, "direction") else "") + "; outputs "
        + (f"{s}x larger than the input." if s > 1 else "of the input's size."),
        f"{len(records)} image(s), each read at its own size, {intensity} to [-1, 1], processed in "
        f"tiles of {tile} input pixels with {overlap} of context; written as <name>.png (uint8, "
        f"0-255 for -1..1) and <name>.npy (float32 in [-1, 1]).",
        f"{NOTE} lists every input, its sizes, intensity mapping (stored values of -1 and 1) "
        f"and outputs.",
        "A GAN can invent plausible detail: these images are for teaching and research, not for "
        "diagnosis.", ""]).encode())
