"""Chapter 06's simulated CT scans: PSNR of the FBP reconstruction against the clean slice, and
seconds per slice, for each dose and view setting (medgan_utils.data.ctsim).

    python benchmarks/ct_sim.py [--n 4] [--size 256]

Writes results/benchmark_ct_sim.json. The slices are the first ``--n`` of the CT validation
block; the attenuation scale comes from the first 40 training slices, as the chapter's splits
will share one scale. PSNR is over the whole slice in [0, 1] display units.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from medgan_utils.data.ct import load_ct
from medgan_utils.data.ctsim import mu_scale, simulate
from medgan_utils.results import start_run

SETTINGS = {
    "clean_fbp": {},
    "i0_4096_ramp": {"photons": 4096},
    "i0_4096_hann": {"photons": 4096, "filter_name": "hann"},
    "i0_10000_ramp": {"photons": 1e4},
    "views_60": {"n_views": 60},
    "views_30": {"n_views": 30},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    ns = p.parse_args()
    run = start_run("benchmark_ct_sim", vars(ns))
    clean = load_ct("val", ns.size).images[:ns.n] / 255.0
    mu = mu_scale(load_ct("train", ns.size).images[:40] / 255.0)
    out = {"mu_per_pixel": mu}
    for name, kw in SETTINGS.items():
        t0 = time.perf_counter()
        rec = simulate(clean, mu=mu, **kw)
        out[f"{name}/seconds_per_slice"] = (time.perf_counter() - t0) / len(clean)
        out[f"{name}/psnr"] = float(np.mean([10 * np.log10(1 / np.mean((r - c) ** 2)) for r, c in zip(rec, clean)]))
        print(f"{name:14s} PSNR {out[f'{name}/psnr']:6.2f} dB  {out[f'{name}/seconds_per_slice']:.2f} s/slice")
    print(f"-> {run.finish(out)}")


if __name__ == "__main__":
    main()
