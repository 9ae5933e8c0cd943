"""Which filtered back-projection filter to use as chapter 06's FBP baseline, per setting: PSNR of
each of skimage's filters against the clean slice on validation slices (the test slices never
choose anything).

    python benchmarks/fbp_filters.py [--n 25] [--size 256]

Writes results/benchmark_fbp_filters.json; ``medgan_utils.reconstruction.FBP_FILTERS`` holds the
winners. The slices are every third of the CT validation block (25 of 75); the attenuation scale
is the training split's (``reconstruction.ct_mu``), the noise seed the validation split's. PSNR
is over the whole slice in [0, 1] display units.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from medgan_utils.data.ct import load_ct
from medgan_utils.data.ctsim import simulate
from medgan_utils.reconstruction import REFERENCE_PHOTONS, SPLIT_SEEDS, ct_mu
from medgan_utils.results import start_run

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
SETTINGS = {
    "lowdose_100": {"photons": REFERENCE_PHOTONS},
    "lowdose_25": {"photons": 0.25 * REFERENCE_PHOTONS},
    "lowdose_10": {"photons": 0.1 * REFERENCE_PHOTONS},
    "sparse_60": {"n_views": 60},
    "sparse_30": {"n_views": 30},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=25)
    p.add_argument("--size", type=int, default=256)
    ns = p.parse_args()
    run = start_run("benchmark_fbp_filters", vars(ns))
    val = load_ct("val", ns.size).images
    clean = val[:: max(1, len(val) // ns.n)][:ns.n] / 255.0
    mu = ct_mu(ns.size)
    out: dict[str, float] = {"mu_per_pixel": mu, "n_slices": len(clean)}
    best: dict[str, str] = {}
    for name, kw in SETTINGS.items():
        for f in FILTERS:
            t0 = time.perf_counter()
            rec = simulate(clean, mu=mu, seed=SPLIT_SEEDS["val"], filter_name=f, **kw)
            out[f"{name}/{f}/psnr"] = float(np.mean([10 * np.log10(1 / np.mean((r - c) ** 2))
                                                     for r, c in zip(rec, clean)]))
            out[f"{name}/{f}/seconds_per_slice"] = (time.perf_counter() - t0) / len(clean)
            print(f"{name:12s} {f:12s} PSNR {out[f'{name}/{f}/psnr']:6.2f} dB", flush=True)
        best[name] = max(FILTERS, key=lambda f: out[f"{name}/{f}/psnr"])
    print(f"best: {best}\n-> {run.finish(out, extra={'best_filter': best})}")


if __name__ == "__main__":
    main()
