"""BM3D's noise sigma for chapter 06's low-dose baseline, and which of the ``bm3d`` package's
profiles to run: PSNR inside the head mask of BM3D on the low-dose FBP of validation slices (the
test slices never choose anything), for every sigma of a grid and both profiles, with the time
per slice.

    python benchmarks/bm3d_sigma.py [--n 12] [--size 256]

Writes results/benchmark_bm3d.json; ``medgan_utils.reconstruction.BM3D_SIGMA`` holds the sigma
with the best mean PSNR for the profile ``BM3D_PROFILE`` (tests/test_reconstruction.py checks that
they agree). The slices are the ones notebook 06 chooses TV's weight on (``held_out(name, "val",
n)``: n spread evenly over the validation block), with their inputs exactly as the notebook
scores them. The normal profile ("np") costs about three times the low-complexity one ("lc");
``extra.np_minus_lc_db`` is what the cheaper one gives up at each profile's best sigma.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from medgan_utils import reconstruction as rc
from medgan_utils.data.ct import head_mask
from medgan_utils.results import start_run
from medgan_utils.superres import masked_psnr

GRID = (0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1)
PROFILES = ("lc", "np")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--size", type=int, default=256)
    ns = p.parse_args()
    run = start_run("benchmark_bm3d", vars(ns) | {"grid": list(GRID)})
    out: dict[str, float] = {}
    best: dict[str, dict[str, float]] = {prof: {} for prof in PROFILES}
    gap: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache:  # every call computes: the timings are real
        for name, task in rc.TASKS.items():
            if task.task != "lowdose":
                continue
            v = rc.held_out(name, "val", ns.n, ns.size)
            region = head_mask(v["truth"])
            out[f"{name}/n_slices"] = len(v["truth"])
            for prof in PROFILES:
                for s in GRID:
                    t0 = time.perf_counter()
                    y = rc.bm3d_denoise(v["inputs"][:, :1], s, cache_dir=cache, profile=prof)
                    out[f"{name}/{prof}/{s:g}/seconds_per_slice"] = (time.perf_counter() - t0) / len(y)
                    out[f"{name}/{prof}/{s:g}/psnr"] = float(masked_psnr(y, v["truth"], region).mean())
                    print(f"{name:11s} {prof} sigma {s:<6g} PSNR {out[f'{name}/{prof}/{s:g}/psnr']:.3f} dB "
                          f"{out[f'{name}/{prof}/{s:g}/seconds_per_slice']:.2f} s/slice", flush=True)
                best[prof][name] = max(GRID, key=lambda s: out[f"{name}/{prof}/{s:g}/psnr"])
            gap[name] = (out[f"{name}/np/{best['np'][name]:g}/psnr"] - out[f"{name}/lc/{best['lc'][name]:g}/psnr"])
    print(f"best sigma: {best}; np - lc at each one's best: {gap}")
    print("->", run.finish(out, extra={"best_sigma": best, "np_minus_lc_db": gap}))


if __name__ == "__main__":
    main()
