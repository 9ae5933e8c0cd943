"""Chapter 06: inpainting, low-dose CT and sparse-view CT on the head-CT slices, the classical
baselines, and one scoring for all three tasks.

* The five scored tasks (:data:`TASKS`): ``inpaint_ct`` (holes on the head, half boxes, half
  brush strokes), ``lowdose_25`` and ``lowdose_10`` (25 % and 10 % of a reference dose of
  :data:`REFERENCE_PHOTONS` photons per detector bin), ``sparse_60`` and ``sparse_30`` (60 and
  30 of 180 projection angles). The slices are the chapter-05 block split at 256 px.
* Scans (:func:`scan`): :mod:`~.data.ctsim`'s simulation, cached on disk, with a fixed noise
  seed per split and the FBP filter that scored best on the validation slices for that setting
  (:data:`FBP_FILTERS`, from ``benchmarks/fbp_filters.py``), so the FBP baseline is the best FBP.
* Holes (:func:`hole_masks`, :func:`scored_holes`): box and stroke masks of fixed *pixel* sizes,
  so a 128 px training patch and a 256 px test slice get holes of the same size; scored holes lie
  on the head (at least 90 % of their pixels), since a hole over the black background is trivial.
* Baselines: FBP itself, total variation (:func:`tv`) and BM3D (:func:`bm3d_denoise`, the
  ``bm3d`` package), their weights :data:`TV_WEIGHT` and :data:`BM3D_SIGMA` chosen on validation
  slices by ``benchmarks/tv_weight.py`` and ``benchmarks/bm3d_sigma.py`` (best mean PSNR in the head,
  as :func:`choose_weight` picks),
  and biharmonic inpainting (:func:`biharmonic`).
* Scoring (:func:`evaluate_task`): :func:`~.superres.score_outputs` inside the head mask (CT
  tasks) or inside the hole (inpainting), every method against every baseline image by image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .data.ct import head_mask, load_ct
from .data.ctsim import cached_array, mu_scale, simulate_split
from .data.degrade import apply_mask, box_mask, inpaint_biharmonic, stroke_mask
from .data.medmnist import mix_seed, seeded_generator, to_float, to_uint8
from .data.paired import PairedLoader
from .superres import (
    encoder_path,
    flatten_summary,
    load_patch_encoder,
    masked_psnr,
    run_method,
    score_outputs,
)

__all__ = ["BM3D_GRID", "BM3D_PROFILE", "BM3D_SIGMA", "FBP_FILTERS", "REFERENCE_PHOTONS", "TASKS",
           "TV_GRID", "TV_WEIGHT", "Task", "biharmonic", "bm3d_denoise", "choose_weight",
           "classical_baselines", "ct_mu", "evaluate_model", "evaluate_task", "held_out",
           "hole_masks", "InpaintLoader", "needs_tuning", "scan", "scored_holes", "task_data", "tv"]

CT_SIZE = 256
REFERENCE_PHOTONS = 4e4  # full dose; 10 % of it (4,000) is LoDoPaB's low dose (4,096)
# Noise seeds of the simulated scans, one per split (slice i of a split uses (seed, i)).
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
# The FBP filter with the best PSNR on 25 validation slices for each setting (measured by
# benchmarks/fbp_filters.py -> results/benchmark_fbp_filters.json): the ramp filter is best
# only at full dose; noise and streaks favour smoother filters.
FBP_FILTERS = {("lowdose", 1.0): "ramp", ("lowdose", 0.25): "cosine", ("lowdose", 0.1): "cosine",
               ("sparseview", 60): "cosine", ("sparseview", 30): "hann"}
# BM3D, the low-dose baseline: its noise sigma per dose, and the package's profile, chosen on
# validation slices by benchmarks/bm3d_sigma.py (-> results/benchmark_bm3d.json). The
# low-complexity profile ("lc") came within 0.04 dB of the normal one ("np") there, each at its
# best sigma, in about a third of the time (0.7 s a slice, not 2 s, on a 2-core CPU): that keeps a
# first run of notebook 06 within its 3 minutes.
BM3D_PROFILE = "lc"
BM3D_SIGMA = {("lowdose", 0.25): 0.03, ("lowdose", 0.1): 0.05}
BM3D_GRID = (0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1)  # noise std in [0, 1] units
# Total variation's weight per setting, chosen on the same validation slices by
# benchmarks/tv_weight.py (-> results/benchmark_tv.json).
TV_WEIGHT = {("lowdose", 0.25): 0.01, ("lowdose", 0.1): 0.02, ("sparseview", 60): 0.002, ("sparseview", 30): 0.02}
# Hole sizes in pixels (for 256 px slices and 128 px training patches alike).
BOX_PX = (26, 64)
STROKE_WIDTH_PX = (8, 16)
STROKE_LENGTH_PX = (26, 64)
# Redraws of a training hole that misses the head (InpaintLoader's on_head).
ON_HEAD_TRIES = 20


@dataclass(frozen=True)
class Task:
    """One scored task: the model task (``inpaint``/``lowdose``/``sparseview``) and its level
    (dose fraction, view count; None for inpainting, which mixes boxes and strokes)."""

    task: str
    level: float | int | None
    title: str


TASKS = {
    "inpaint_ct": Task("inpaint", None, "inpainting, boxes and strokes on the head"),
    "lowdose_25": Task("lowdose", 0.25, "low-dose CT, 25 % of the reference dose"),
    "lowdose_10": Task("lowdose", 0.1, "low-dose CT, 10 % of the reference dose"),
    "sparse_60": Task("sparseview", 60, "sparse-view CT, 60 of 180 views"),
    "sparse_30": Task("sparseview", 30, "sparse-view CT, 30 of 180 views"),
}


@lru_cache(maxsize=4)
def ct_mu(size: int = CT_SIZE) -> float:
    """The attenuation scale of every simulated scan: from the CT training split at ``size`` px
    (:func:`~.data.ctsim.mu_scale`), so all splits and the user's images are scanned alike."""
    return mu_scale(load_ct("train", size).images / 255.0)


def scan_settings(task: str, level: float | int, reference_photons: float = REFERENCE_PHOTONS) -> dict[str, Any]:
    """``simulate`` keyword arguments for a dose fraction (``lowdose``) or view count (``sparseview``)."""
    if task == "lowdose":
        return {"photons": reference_photons * float(level), "n_views": 180,
                "filter_name": FBP_FILTERS.get(("lowdose", float(level)), "cosine")}
    if task == "sparseview":
        return {"photons": None, "n_views": int(level),
                "filter_name": FBP_FILTERS.get(("sparseview", int(level)), "hann")}
    raise ValueError(f"only lowdose and sparseview are scans, not {task!r}")


def scan(images_u8: np.ndarray, task: str, level: float | int, split: str,
         reference_photons: float = REFERENCE_PHOTONS, index: np.ndarray | None = None) -> np.ndarray:
    """Simulated scans of uint8 slices (N, H, H), reconstructed by FBP (uint8, cached on disk).
    The noise seed is the split's (:data:`SPLIT_SEEDS`); slice i's noise is keyed by
    ``index[i]``, its index in the split (default: its position), so a test slice gets the same
    noise in every subset of the split that is scored."""
    u8 = np.asarray(images_u8)
    return simulate_split(u8, mu=ct_mu(u8.shape[-1]), seed=SPLIT_SEEDS[split], keys=index,
                          **scan_settings(task, level, reference_photons))


def _to_tensor(u8: np.ndarray) -> torch.Tensor:
    return to_float(torch.from_numpy(np.ascontiguousarray(u8)))


# -- holes ------------------------------------------------------------------------------------


def hole_masks(shape: Sequence[int], kind: str, seed: int, image_side: int | None = None) -> torch.Tensor:
    """Holes (1 = missing), one draw per image: ``"box"`` (one rectangle of :data:`BOX_PX` sides)
    or ``"stroke"`` (one to three brush strokes). Sizes are in pixels of a 256 px slice, scaled to
    ``image_side`` (the whole image's side; default the side of ``shape``), so a 128 px training
    patch of a 256 px slice gets holes of the test slices' size. (B, 1, H, W) float."""
    h = min(int(shape[-2]), int(shape[-1]))
    k = (image_side or h) / CT_SIZE
    if BOX_PX[0] * k > h:
        raise ValueError(f"holes of at least {BOX_PX[0] * k:.0f} px (of a {image_side or h} px image) do not fit "
                         f"a {h} px patch: train inpainting on patches of at least {BOX_PX[1] * k:.0f} px")

    def frac(px: tuple[int, int]) -> tuple[float, float]:
        return max(1.0, px[0] * k) / h, min(1.0, max(1.0, px[1] * k) / h)

    if kind == "box":
        return box_mask(shape, n_boxes=1, size=frac(BOX_PX), seed=seed)
    if kind == "stroke":
        return stroke_mask(shape, n_strokes=(1, 3), max_vertices=4, length=frac(STROKE_LENGTH_PX),
                           width=frac(STROKE_WIDTH_PX), seed=seed)
    raise ValueError(f"hole kind must be 'box' or 'stroke', got {kind!r}")


def scored_holes(images: torch.Tensor, seed: int = 0, min_inside: float = 0.9,
                 kinds: Sequence[str] = ("box", "stroke"), index: Sequence[int] | None = None,
                 skip: bool = False) -> tuple[torch.Tensor, list[str | None]]:
    """One hole per held-out slice, on the head: the slice with index k in its split (``index``;
    default its position) gets ``kinds[k % len(kinds)]``, redrawn (seed ``(seed, k, try)``) until
    at least ``min_inside`` of it lies in the head mask, so a slice gets the same hole in any
    scored subset. A slice with no such hole in 100 draws (a small head, near the crown) is an
    error, or with ``skip`` gets kind None and an empty mask.

    Returns:
        ``(masks (N, 1, H, W) float, kinds per slice)``.
    """
    heads = head_mask(images)
    keys = range(len(images)) if index is None else [int(k) for k in index]
    masks, names = [], []
    for i, k in enumerate(keys):
        kind = kinds[k % len(kinds)]
        for t in range(100):
            m = hole_masks(images[i:i + 1].shape, kind, seed=mix_seed(seed, k, t) % 2**31)
            if float((m.bool() & heads[i:i + 1]).sum()) >= min_inside * float(m.sum()):
                break
        else:
            if not skip:
                raise ValueError(f"image {i}: no {kind} hole in 100 draws lies {min_inside:.0%} on the head "
                                 f"(is it a head CT slice?)")
            m, kind = torch.zeros_like(m), None
        masks.append(m)
        names.append(kind)
    return torch.cat(masks), names


def inpaint_input(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The generator's input for inpainting: the image with the holes blanked, and the mask."""
    return torch.cat([apply_mask(images, masks), masks.to(images)], 1)


class InpaintLoader(PairedLoader):
    """Random patches of clean images with fresh holes in every batch (row r of batch b gets
    ``kinds[(r + b) % len(kinds)]``: boxes and strokes alternate, whatever the batch size),
    seeded by ``(seed, epoch, batch)`` so a resumed run sees the same holes. Hole sizes are in
    pixels of the whole image (:func:`hole_masks`). Yields ``(inpaint_input, clean)``:
    (B, C + 1, p, p) and (B, C, p, p).

    ``on_head`` > 0 (CT slices) redraws a row's hole, up to :data:`ON_HEAD_TRIES` times, until
    that fraction of it lies on the head (:func:`~.data.ct.head_mask` of the patch), as the
    scored holes do (:func:`scored_holes`); a patch with too little head keeps its last draw.
    Unfocused, 41 % of the holes on 128 px patches of the CT training slices lie 90 % on the head
    and 8 % lie almost wholly on the black background, where the biharmonic prefill is already
    exact and the hole teaches nothing."""

    def __init__(self, images, batch_size: int = 8, device: torch.device | str = "cpu", seed: int = 0,
                 patch: int | None = None, kinds: Sequence[str] = ("box", "stroke"), on_head: float = 0.0):
        super().__init__(images, images, batch_size, device, seed=seed, patch=patch)
        if not 0.0 <= on_head <= 1.0:
            raise ValueError(f"on_head is a fraction of the hole in [0, 1], got {on_head}")
        self.kinds = tuple(kinds)
        self.on_head = float(on_head)
        self.image_side = int(min(self.targets.shape[-2:]))

    def _holes(self, y: torch.Tensor, which: torch.Tensor, rows: torch.Tensor, seed: int,
               m: torch.Tensor) -> None:
        for j, k in enumerate(self.kinds):
            sel = rows[which[rows] == j]
            if len(sel):
                m[sel] = hole_masks((len(sel), 1, *y.shape[-2:]), k, seed + j, self.image_side)

    def __iter__(self):
        for epoch, step, idx in self._steps():
            idx = idx.to(self.device)
            y = self.targets[idx]
            if self.patch is not None:
                y, _ = self._crop(y, y, seeded_generator(self.seed, epoch, step))
            seed = mix_seed(self.seed, epoch, step, 7) % 2**31
            which = (torch.arange(len(y)) + step) % len(self.kinds)
            m = torch.empty(len(y), 1, *y.shape[-2:])
            self._holes(y, which, torch.arange(len(y)), seed, m)
            if self.on_head:
                heads = head_mask(y.cpu())
                for t in range(1, ON_HEAD_TRIES + 1):
                    inside = (m.bool() & heads).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
                    bad = (inside < self.on_head).nonzero().flatten()
                    if not len(bad):
                        break
                    self._holes(y, which, bad, mix_seed(seed, t) % 2**31, m)
            yield inpaint_input(y, m.to(y.device)), y


def task_data(images_u8: np.ndarray, task: str, levels: Sequence, split: str = "train",
              reference_photons: float = REFERENCE_PHOTONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pairs of a CT task: the FBP of every slice at every level, stacked, and the clean
    slices repeated to match: (L N, 1, H, W) each, in [-1, 1]."""
    clean = _to_tensor(np.asarray(images_u8))
    inputs = [_to_tensor(scan(images_u8, task, lv, split, reference_photons)) for lv in levels]
    return torch.cat(inputs), clean.repeat(len(levels), 1, 1, 1)


# -- classical baselines ----------------------------------------------------------------------


def _per_image(fn: Callable[[np.ndarray], np.ndarray], x: torch.Tensor) -> torch.Tensor:
    a = (x.detach().cpu().numpy()[:, 0].astype(np.float64) + 1) / 2
    return torch.from_numpy(np.stack([fn(i) for i in a])).float().mul(2).sub(1).clamp(-1, 1)[:, None]


def tv(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Total-variation denoising (``skimage.restoration.denoise_tv_chambolle``) of each image,
    ``weight`` in [0, 1] display units."""
    from skimage.restoration import denoise_tv_chambolle

    return _per_image(lambda a: denoise_tv_chambolle(a, weight=weight), x)


def bm3d_denoise(x: torch.Tensor, sigma: float, cache_dir: str | os.PathLike | None = None,
                 profile: str | None = None) -> torch.Tensor:
    """BM3D (Dabov et al. 2007; the ``bm3d`` package) of each image, noise ``sigma`` in [0, 1] units.

    ``profile``: ``"np"``, the package's normal profile (about 2 s per 256 px slice on a 2-core
    CPU; the package already uses every core), or ``"lc"``, its low-complexity one (about 0.7 s);
    None: :data:`BM3D_PROFILE`, the chapter's (its comment says why). The result is cached on
    disk beside the simulated scans (``runs/ct_sim_cache/bm3d_*.npz``,
    :func:`~.data.ctsim.cached_array`), under a key of the input's bytes and shape, ``sigma``, the
    profile and the package's version: a second run reads it back. The package's multithreaded aggregation can differ in the last float
    bits between runs; the cache also keeps a scored baseline fixed."""
    from importlib.metadata import version

    import bm3d

    profile = profile or BM3D_PROFILE
    profiles = {"np": "np", "lc": bm3d.BM3DProfileLC()}
    if profile not in profiles:
        raise ValueError(f"profile must be one of {sorted(profiles)}, got {profile!r}")
    a = x.detach().cpu().float().contiguous()
    settings = {"sigma": float(sigma), "shape": list(a.shape), "bm3d": version("bm3d"), "v": 2,
                **({"profile": profile} if profile != "np" else {})}  # "np" keeps the older files' keys
    out = cached_array(a.numpy(), settings, cache_dir=cache_dir, prefix="bm3d_",
                       compute=lambda: _per_image(lambda im: np.asarray(
                           bm3d.bm3d(im, sigma_psd=sigma, profile=profiles[profile])), a).numpy())
    return torch.from_numpy(out)


def biharmonic(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Biharmonic inpainting (``skimage.restoration.inpaint_biharmonic``): the smoothest fill that
    joins the hole's border. ``x`` (N, 1, H, W) with holes, ``masks`` (N, 1, H, W), 1 = missing.
    (:func:`~.data.degrade.inpaint_biharmonic`, which the inpainting generator also starts from.)"""
    return inpaint_biharmonic(x, masks).cpu()


def choose_weight(method: Callable[[torch.Tensor, float], torch.Tensor], inputs: torch.Tensor,
                  truth: torch.Tensor, grid: Sequence[float], mask: torch.Tensor | None = None) -> tuple[float, dict[float, float]]:
    """The ``grid`` value with the best mean PSNR (in ``mask``) of ``method(inputs, value)``
    against ``truth``: call it on *validation* slices, never on the test slices it will score."""
    scores = {float(w): float(masked_psnr(method(inputs, w), truth, mask).mean()) for w in grid}
    return max(scores, key=scores.get), scores


# -- scoring ----------------------------------------------------------------------------------


def evaluate_task(name: str, models: Mapping[str, Any], truth: torch.Tensor,
                  inputs: torch.Tensor, masks: torch.Tensor | None = None,
                  baselines: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                  judge: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Run baselines and models on one task's held-out inputs and score them all.

    Args:
        name: a key of :data:`TASKS`, or a model task (``"inpaint"``, ...) for other data.
        models: name -> model with ``apply`` (inputs as the model takes them).
        truth: clean slices (N, 1, H, W) in [-1, 1].
        inputs: the degraded slices (CT: the FBP; inpainting: :func:`inpaint_input`).
        masks: inpainting holes (N, 1, H, W); the scores are inside them.
        baselines: name -> function of the degraded image (inpainting: of ``(image, masks)``
            through :func:`biharmonic`); the FBP itself is always reported for CT tasks.
        judge: the encoder of the label-free feature distance.

    Returns:
        ``(outputs, scores)`` as :func:`~.superres.compare_methods` returns them, every method
        compared with every baseline (``<metric>_vs_<baseline>``).
    """
    kind = TASKS[name].task if name in TASKS else name
    if kind not in ("inpaint", "lowdose", "sparseview"):
        raise ValueError(f"unknown task {name!r}: one of {sorted(TASKS)} or inpaint/lowdose/sparseview")
    outputs, ms = {}, {}
    image = inputs[:, :1]
    if kind != "inpaint":
        outputs["baseline_fbp"], ms["baseline_fbp"] = image, 0.0
    for b, fn in (baselines or {}).items():
        outputs[b], ms[b] = run_method(fn, inputs)
    for m, model in models.items():
        outputs[m], ms[m] = run_method(model.apply, inputs)
    region = masks.bool() if kind == "inpaint" else head_mask(truth)
    against = tuple(k for k in outputs if k.startswith("baseline_"))
    scores = score_outputs(outputs, truth, judge, region, against=against)
    for m in outputs:
        scores["summary"][m]["ms_per_image"] = ms[m]
    return outputs, scores


# -- the chapter's study, as the notebook and `medgan evaluate` run it --------------------------

TV_GRID = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.16)


def evenly(n_total: int, n: int | None) -> np.ndarray:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them for None)."""
    return np.arange(n_total) if n is None or n >= n_total else np.linspace(0, n_total - 1, n).round().astype(int)


def held_out(name: str, split: str = "test", n: int | None = None, size: int = CT_SIZE,
             images_u8: np.ndarray | None = None, index: np.ndarray | None = None,
             reference_photons: float = REFERENCE_PHOTONS) -> dict[str, Any]:
    """One task's held-out slices: ``truth`` (N, 1, H, W) in [-1, 1], the model ``inputs`` (CT:
    the FBP; inpainting: image with hole + mask), ``masks`` and hole ``kinds`` (inpainting), the
    slices' ``index`` in the split. ``images_u8`` replaces the split's slices (e.g. a modified
    copy of them), ``index`` then says which slices of the split they are (default 0..N-1), which
    keys their scan noise and holes. Inpainting leaves out the slices whose head has no room for
    a scored hole (:func:`scored_holes`): ``index`` says which slices remain."""
    task = TASKS[name]
    if images_u8 is None:
        u8 = load_ct(split, size).images
        idx = evenly(len(u8), n)
        u8 = u8[idx]
    else:
        u8 = np.asarray(images_u8)
        idx = np.arange(len(u8)) if index is None else np.asarray(index)
    truth = _to_tensor(u8)
    out: dict[str, Any] = {"truth": truth, "index": idx, "masks": None, "kinds": None}
    if task.task == "inpaint":
        masks, kinds = scored_holes(truth, seed=SPLIT_SEEDS[split], index=idx, skip=True)
        keep = [i for i, k in enumerate(kinds) if k is not None]
        if not keep:
            raise ValueError(f"none of the {len(kinds)} slices has room for a hole on the head")
        truth, masks = truth[keep], masks[keep]
        out |= {"truth": truth, "index": idx[keep], "inputs": inpaint_input(truth, masks), "masks": masks,
                "kinds": [kinds[i] for i in keep]}
    else:
        out["inputs"] = _to_tensor(scan(u8, task.task, task.level, split, reference_photons, index=idx))
    return out


def classical_baselines(name: str, val: Mapping[str, Any] | None = None, bm3d: bool = True
                        ) -> tuple[dict[str, Callable[[torch.Tensor], torch.Tensor]], dict[str, Any]]:
    """The classical methods for a task: for the CT tasks TV and, for low dose when ``bm3d``,
    BM3D (profile :data:`BM3D_PROFILE`); biharmonic for inpainting. Returns ``(name -> function
    of the inputs, choices)``.

    Their settings are :data:`TV_WEIGHT` and :data:`BM3D_SIGMA`, chosen on 12 validation slices at
    256 px and the reference dose by ``benchmarks/tv_weight.py`` and ``benchmarks/bm3d_sigma.py``
    (too slow to choose in every run of notebook 06: BM3D alone costs most of a second a slice).
    Given validation slices ``val`` (:func:`held_out` of the ``"val"`` split, e.g. at another size
    or dose), both are chosen on them instead, over :data:`TV_GRID` and :data:`BM3D_GRID`
    (``choices`` then holds each value's PSNR)."""
    task = TASKS.get(name)
    kind = task.task if task else name
    if kind == "inpaint":
        return {"baseline_biharmonic": lambda x: biharmonic(x[:, :1], x[:, 1:])}, {}
    setting = (kind, task.level) if task else None
    if val is None and setting not in TV_WEIGHT:
        raise ValueError(f"the baselines' settings are chosen for {sorted(TASKS)} only; for {name!r} pass "
                         "val=held_out(<task>, 'val') to choose them on validation slices")
    choices: dict[str, Any] = {}
    region = head_mask(val["truth"]) if val is not None else None
    if val is not None:
        w_tv, choices["tv_grid_psnr"] = choose_weight(tv, val["inputs"], val["truth"], TV_GRID, region)
    else:
        w_tv = TV_WEIGHT[setting]
    fns = {"baseline_tv": lambda x, w=w_tv: tv(x, w)}
    choices["tv_weight"] = w_tv
    if bm3d and kind == "lowdose":
        if val is not None:
            s_bm3d, choices["bm3d_grid_psnr"] = choose_weight(bm3d_denoise, val["inputs"], val["truth"],
                                                              BM3D_GRID, region)
        elif setting in BM3D_SIGMA:
            s_bm3d = BM3D_SIGMA[setting]
        else:
            raise ValueError(f"BM3D's sigma is chosen for {sorted(BM3D_SIGMA)} only; for {name!r} pass val=")
        fns["baseline_bm3d"] = lambda x, s=s_bm3d, p=BM3D_PROFILE: bm3d_denoise(x, s, profile=p)
        choices |= {"bm3d_sigma": s_bm3d, "bm3d_profile": BM3D_PROFILE}
    return fns, choices


def needs_tuning(name: str, size: int, reference_photons: float = REFERENCE_PHOTONS) -> bool:
    """Whether a task scored at ``size`` px and this reference dose needs its classical baselines
    chosen afresh on validation slices: :data:`TV_WEIGHT` and :data:`BM3D_SIGMA` hold for 256 px
    and :data:`REFERENCE_PHOTONS` (the dose matters only for low dose)."""
    kind = TASKS[name].task
    return kind != "inpaint" and (size != CT_SIZE or (kind == "lowdose" and reference_photons != REFERENCE_PHOTONS))


def evaluate_model(model: Any, images: torch.Tensor | None = None, dataset: str = "ct",
                   n: int | None = None, bm3d: bool = False) -> dict[str, float]:
    """``medgan evaluate`` for a chapter-06 model: every level of its task on held-out CT slices
    (the test split, or ``images``), against the classical baselines (their settings chosen on 12
    validation slices: the package's constants at 256 px and the reference dose, else afresh,
    :func:`needs_tuning`), scored inside the head mask (CT) or the hole (inpainting).

    Returns:
        ``"<task>/<method>/<metric>"`` -> number, the model as ``model``; paired differences to
        each baseline as ``..._vs_<baseline>_mean`` and ``_ci95``.
    """
    if dataset != "ct":
        # Other data (PneumoniaMNIST): inpainting only, holes alternating box/stroke, vs biharmonic.
        if model.config.task != "inpaint" or images is None:
            raise ValueError(f"on {dataset} only inpainting models are scored (the CT tasks simulate "
                             f"scans of the head-CT slices)")
        masks = torch.cat([hole_masks(images[i:i + 1].shape, ("box", "stroke")[i % 2], seed=i)
                           for i in range(len(images))])
        _, scores = evaluate_task("inpaint", {"model": model}, images, inpaint_input(images, masks), masks,
                                  classical_baselines("inpaint")[0])
        return _flat(f"inpaint_{dataset}", scores, len(images))
    names = [k for k, t in TASKS.items() if t.task == model.config.task
             and (t.level is None or t.level in model.config.levels())]
    if not names:
        raise ValueError(f"no scored task matches this model's corruptions {model.config.levels()}")
    u8 = None if images is None else to_uint8(images)
    judge_path = encoder_path("ct", "judge")
    judge = load_patch_encoder(judge_path) if judge_path.exists() else None
    out: dict[str, float] = {}
    photons = getattr(model.config, "reference_photons", REFERENCE_PHOTONS)
    for name in names:
        test = held_out(name, "test", n, images_u8=u8, reference_photons=photons)
        side = test["truth"].shape[-1]
        val = (held_out(name, "val", 12, size=side, reference_photons=photons)
               if needs_tuning(name, side, photons) else None)
        fns, _ = classical_baselines(name, val, bm3d)
        _, scores = evaluate_task(name, {"model": model}, test["truth"], test["inputs"], test["masks"], fns, judge)
        out |= _flat(name, scores, len(test["truth"]))
    return out


def _flat(name: str, scores: Mapping[str, Any], n: int) -> dict[str, float]:
    return {f"{name}/n": float(n)} | flatten_summary(scores["summary"], f"{name}/")

