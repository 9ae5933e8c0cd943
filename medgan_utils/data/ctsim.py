"""Simulated CT acquisitions for chapter 06: low-dose (Poisson counting noise) and sparse-view scans
of the head-CT slices, reconstructed by filtered back-projection (FBP).

The slices are 8-bit *display* images, not Hounsfield units, so the simulation makes one stated
approximation: display value v in [0, 1] (black = air) is taken as proportional to the linear
attenuation, ``mu = v * mu_max`` per pixel, with ``mu_max`` chosen so that the longest line
integrals through a head are about 4 (as for a real head at diagnostic energies; LoDoPaB scales
its data the same way). Then, for each slice:

1. projection: ``skimage.transform.radon`` at ``n_angles`` angles over 180 degrees (line integrals
   p of mu, in pixel units times ``mu_max``);
2. low dose: expected counts ``I0 * exp(-p)``, Poisson counts drawn from a seeded generator,
   clamped below at 0.1 (a zero count has no logarithm), ``p' = -log(counts / I0)``;
   sparse view: keep ``n_views`` evenly spaced angles of the 180 (``linspace(0, 180, n,
   endpoint=False)``; a slice of consecutive angles would be a *limited-angle* scan instead);
3. FBP: ``skimage.transform.iradon`` with a ramp (or Hann) filter, back to display units and
   clipped to [0, 1]; pixels outside the reconstruction circle are 0.

Measured here (``../shared/research/stage2-apis.md``): 256 px slices, I0 = 4096 with a ramp filter
give about 28.5 dB PSNR against the clean slice, 30 / 60 / 90 views 21.4 / 27.6 / 31.6 dB. FBP costs
about 0.3 s a slice at 256 px: :func:`simulate_split` caches each split's result on disk, keyed by
every setting, so training and notebooks do not redo it.

Introduced for ``notebooks/06_reconstruction.ipynb`` (issue #10).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..utils import RUNS_DIR

CACHE_DIR = RUNS_DIR / "ct_sim_cache"
# Line integrals through the widest head at 256 px reach about this many pixels of bright tissue:
# scaling by MU_MAX / 256 per pixel keeps the longest integrals near 4.
TARGET_MAX_INTEGRAL = 4.0


def _check(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"expected square slices (N, H, H) in [0, 1], got shape {a.shape}")
    if a.size and (a.min() < -1e-6 or a.max() > 1 + 1e-6):
        raise ValueError("slices must be display values in [0, 1] (uint8 / 255)")
    return a


def mu_scale(images: np.ndarray) -> float:
    """Attenuation per unit display value and pixel such that the largest line integral over
    ``images`` (N, H, H) in [0, 1] is :data:`TARGET_MAX_INTEGRAL` (one scale for a whole data set)."""
    from skimage.transform import radon

    a = _check(images)
    # The brightest slice's sinogram bounds the data set's line integrals (a few slices suffice).
    heavy = a[np.argsort(a.reshape(len(a), -1).sum(1))[-3:]]
    longest = max(float(radon(s, np.linspace(0, 180, 60, endpoint=False), circle=False).max()) for s in heavy)
    return TARGET_MAX_INTEGRAL / longest


def fbp(sinogram: np.ndarray, angles: np.ndarray, size: int, filter_name: str = "ramp") -> np.ndarray:
    """Filtered back-projection of one sinogram (detector, angles) -> (size, size)."""
    from skimage.transform import iradon

    return iradon(sinogram, angles, output_size=size, filter_name=filter_name, circle=False)


def simulate(images: np.ndarray, *, photons: float | None = None, n_views: int = 180,
             mu: float | None = None, seed: int = 0, filter_name: str = "ramp",
             keys: np.ndarray | None = None) -> np.ndarray:
    """Low-dose and/or sparse-view scans of display slices, reconstructed by FBP.

    Args:
        images: (N, H, H) display values in [0, 1] (uint8 slices / 255).
        photons: incident photons per detector bin I0 (None: no counting noise).
        n_views: evenly spaced projection angles over 180 degrees (180: one per degree).
        mu: attenuation scale (:func:`mu_scale`); pass the training split's for every split, so
            that all splits are scanned alike. None: computed from ``images``.
        seed: seeds the Poisson noise: slice i uses ``(seed, keys[i])``.
        filter_name: FBP filter, ``"ramp"``, ``"hann"``, ... (skimage's names).
        keys: one integer per slice, e.g. its index in its split, so that a slice gets the same
            noise in any subset or order; default ``0..N-1`` (its position in ``images``).

    Returns:
        (N, H, H) float32 reconstructions in display units, clipped to [0, 1].
    """
    from skimage.transform import radon

    a = _check(images)
    if n_views < 1 or n_views > 720:
        raise ValueError(f"n_views must be in 1..720, got {n_views}")
    if photons is not None and photons <= 0:
        raise ValueError(f"photons must be > 0, got {photons}")
    mu = mu_scale(a) if mu is None else float(mu)
    angles = np.linspace(0, 180, n_views, endpoint=False)
    keys = np.arange(len(a)) if keys is None else np.asarray(keys, dtype=np.int64)
    if keys.shape != (len(a),):
        raise ValueError(f"keys must hold one integer per slice ({len(a)}), got shape {keys.shape}")
    out = np.empty(a.shape, np.float32)

    def one(i: int) -> None:  # each slice alone, its noise keyed by (seed, keys[i]): any order gives the same
        p = radon(a[i] * mu, angles, circle=False)
        if photons is not None:
            rng = np.random.default_rng([seed, int(keys[i])])
            counts = np.maximum(rng.poisson(photons * np.exp(-p)), 0.1)
            p = -np.log(counts / photons)
        out[i] = np.clip(fbp(p, angles, a.shape[1], filter_name) / mu, 0.0, 1.0)

    # skimage's radon and iradon run on one core and release the GIL for most of their work: slices
    # on every core's thread (measured: 1.9x faster on two cores, the same arrays).
    workers = min(len(a), os.cpu_count() or 1)
    if workers > 1:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(a))))
    else:
        for i in range(len(a)):
            one(i)
    return out


def simulate_split(images_u8: np.ndarray, *, photons: float | None = None, n_views: int = 180,
                   mu: float, seed: int = 0, filter_name: str = "ramp",
                   cache_dir: str | os.PathLike | None = None, keys: np.ndarray | None = None) -> np.ndarray:
    """:func:`simulate` on uint8 slices (N, H, H), cached on disk under a key of the slices'
    bytes and every setting (a changed setting or slice never reuses a stale file). Returns
    uint8 (N, H, H) reconstructions, the layout of the clean slices."""
    u8 = np.asarray(images_u8)
    if u8.dtype != np.uint8:
        raise TypeError(f"simulate_split takes uint8 slices, got {u8.dtype}")
    settings = {"photons": photons, "n_views": n_views, "mu": round(mu, 12), "seed": seed,
                "filter": filter_name, "version": 1}
    if keys is not None:  # (absent for the default keys, so those cache files keep their names)
        settings["keys"] = hashlib.sha256(np.asarray(keys, np.int64).tobytes()).hexdigest()[:16]
    return cached_array(u8, settings, lambda: np.round(
        simulate(u8 / 255.0, photons=photons, n_views=n_views, mu=mu, seed=seed, filter_name=filter_name,
                 keys=keys) * 255).astype(np.uint8), cache_dir)


def cached_array(data: np.ndarray, settings: dict, compute, cache_dir: str | os.PathLike | None = None,
                 prefix: str = "") -> np.ndarray:
    """``compute()``'s array, cached on disk (``runs/ct_sim_cache`` by default) under a key of
    ``data``'s bytes and ``settings`` (JSON): the simulated scans and the BM3D baseline share it.
    Written atomically (:func:`~medgan_utils.checkpoint.write_atomic`), so a killed run or a
    second process never reads a half-written file."""
    from ..checkpoint import write_atomic

    tag = json.dumps(settings, sort_keys=True)
    h = hashlib.sha256(np.ascontiguousarray(data).tobytes() + tag.encode()).hexdigest()[:20]
    path = Path(cache_dir or CACHE_DIR) / f"{prefix}{h}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["images"]
    out = np.asarray(compute())

    def write(tmp):
        with open(tmp, "wb") as fh:  # a file object: savez would add ".npz" to a path
            np.savez_compressed(fh, images=out, settings=tag)

    write_atomic(path, write)
    return out
