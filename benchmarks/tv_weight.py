"""Total variation's weight for chapter 06's CT baselines, per task: PSNR inside the head mask of
``denoise_tv_chambolle`` on the FBP of validation slices, for every weight of
``reconstruction.TV_GRID``, chosen by ``reconstruction.choose_weight`` (best mean PSNR); the test
slices choose nothing.

    python benchmarks/tv_weight.py [--n 12] [--size 256]

Writes results/benchmark_tv.json; ``medgan_utils.reconstruction.TV_WEIGHT`` holds the winners
(tests/test_recon.py checks that they agree, and that the scan settings recorded here are still
the package's), so notebook 06 does not re-tune them in every run. The slices are
``held_out(name, "val", n)``: n spread evenly over the validation block, with their inputs exactly
as the notebook scores them (the same slices as ``benchmarks/bm3d_sigma.py``). ``medgan
evaluate`` chooses afresh on validation slices at another size or dose
(``reconstruction.needs_tuning``).
"""

from __future__ import annotations

import argparse
import time

from medgan_utils import reconstruction as rc
from medgan_utils.data.ct import head_mask
from medgan_utils.results import start_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--size", type=int, default=256)
    ns = p.parse_args()
    names = [name for name, t in rc.TASKS.items() if t.task != "inpaint"]
    scans = {name: rc.scan_settings(rc.TASKS[name].task, rc.TASKS[name].level) for name in names}
    run = start_run("benchmark_tv", vars(ns) | {"grid": list(rc.TV_GRID), "scan_settings": scans})
    out: dict[str, float] = {}
    best: dict[str, float] = {}
    for name in names:
        v = rc.held_out(name, "val", ns.n, ns.size)
        t0 = time.perf_counter()
        best[name], scores = rc.choose_weight(rc.tv, v["inputs"], v["truth"], rc.TV_GRID, head_mask(v["truth"]))
        out[f"{name}/n_slices"] = len(v["truth"])
        out[f"{name}/seconds_per_slice_and_weight"] = (time.perf_counter() - t0) / len(v["truth"]) / len(rc.TV_GRID)
        out |= {f"{name}/{w:g}/psnr": s for w, s in scores.items()}
        print(f"{name:11s} " + ", ".join(f"{w:g}: {s:.2f}" for w, s in scores.items()) + f"  -> {best[name]:g}", flush=True)
    print("->", run.finish(out, extra={"best_weight": best}))


if __name__ == "__main__":
    main()
