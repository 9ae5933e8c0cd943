"""Simulated CT acquisitions (chapter 06's data): physics-shaped behaviour, seeding and the cache."""

from __future__ import annotations

import numpy as np
import pytest

from medgan_utils.data.ctsim import TARGET_MAX_INTEGRAL, mu_scale, simulate, simulate_split


def _phantom(n: int = 2, size: int = 64) -> np.ndarray:
    # A bright skull ring around softer tissue with a few details, on black air.
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    r = np.hypot(xx / 0.8, yy / 0.9)
    img = np.where(r < 0.9, 0.45, 0.0) + np.where((r > 0.8) & (r < 0.9), 0.5, 0.0)
    out = np.stack([img] * n)
    out[:, size // 2 - 3:size // 2 + 3, size // 3:size // 3 + 4] = 0.8   # a small bright structure
    return np.clip(out, 0, 1)


def _psnr(x, y):
    return 10 * np.log10(1.0 / np.mean((x - y) ** 2))


def test_mu_scale_sets_the_longest_line_integral():
    from skimage.transform import radon

    a = _phantom()
    mu = mu_scale(a)
    longest = max(radon(s * mu, np.linspace(0, 180, 60, endpoint=False), circle=False).max() for s in a)
    assert longest == pytest.approx(TARGET_MAX_INTEGRAL, rel=1e-6)


def test_less_dose_and_fewer_views_reconstruct_worse():
    a = _phantom()
    mu = mu_scale(a)
    clean = np.mean([_psnr(r, s) for r, s in zip(simulate(a, mu=mu), a)])
    def score(**kw):
        return np.mean([_psnr(r, s) for r, s in zip(simulate(a, mu=mu, **kw), a)])
    assert clean > score(photons=1e5) > score(photons=1e4) > score(photons=1e3)
    assert clean > score(n_views=60) > score(n_views=20)
    out = simulate(a, mu=mu, photons=1e3)
    assert out.dtype == np.float32 and out.shape == a.shape and out.min() >= 0 and out.max() <= 1


def test_noise_is_seeded_per_slice():
    a = _phantom(3)
    mu = mu_scale(a)
    x, y = simulate(a, mu=mu, photons=1e3, seed=1), simulate(a, mu=mu, photons=1e3, seed=1)
    assert np.array_equal(x, y)
    assert not np.array_equal(x, simulate(a, mu=mu, photons=1e3, seed=2))
    # Slice i's noise depends on (seed, i) only: a subset gives the same first slice.
    assert np.array_equal(simulate(a[:1], mu=mu, photons=1e3, seed=1)[0], x[0])


def test_slices_on_threads_give_the_one_thread_arrays(monkeypatch):
    """simulate runs slices on one thread per core: the arrays must be those of one thread."""
    import medgan_utils.data.ctsim as ctsim

    a = _phantom(4)
    mu = mu_scale(a)
    monkeypatch.setattr(ctsim.os, "cpu_count", lambda: 4)
    threaded = simulate(a, mu=mu, photons=1e3, seed=3, keys=np.array([7, 1, 5, 2]))
    monkeypatch.setattr(ctsim.os, "cpu_count", lambda: 1)
    serial = simulate(a, mu=mu, photons=1e3, seed=3, keys=np.array([7, 1, 5, 2]))
    assert np.array_equal(threaded, serial) and len({float(s.sum()) for s in serial}) == 4


def test_simulate_split_caches_by_content_and_settings(tmp_path):
    u8 = np.round(_phantom() * 255).astype(np.uint8)
    mu = mu_scale(u8 / 255.0)
    first = simulate_split(u8, photons=1e4, mu=mu, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = simulate_split(u8, photons=1e4, mu=mu, cache_dir=tmp_path)
    assert np.array_equal(first, again) and len(list(tmp_path.glob("*.npz"))) == 1
    simulate_split(u8, photons=1e3, mu=mu, cache_dir=tmp_path)   # another setting: another file
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert first.dtype == np.uint8 and first.shape == u8.shape


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="display values"):
        simulate(np.full((1, 8, 8), 2.0))
    with pytest.raises(ValueError, match="square"):
        simulate(np.zeros((1, 8, 9)))
    with pytest.raises(ValueError, match="photons"):
        simulate(_phantom(1), photons=0)
    with pytest.raises(TypeError, match="uint8"):
        simulate_split(_phantom(1), mu=0.1)
