"""BM3D's noise sigma for chapter 06's low-dose baseline, and which of the ``bm3d`` package's
profiles to run: PSNR and SSIM inside the head mask of BM3D on the low-dose FBP of validation
slices, for every sigma of ``reconstruction.BM3D_GRID`` and both profiles, with the time per slice.
The sigma with the best mean PSNR is chosen per profile (as ``reconstruction.choose_weight``
picks); the test slices choose nothing.

    python benchmarks/bm3d_sigma.py [--n 12] [--n-test 24] [--size 256]

Writes results/benchmark_bm3d.json; ``medgan_utils.reconstruction.BM3D_SIGMA`` holds the sigmas
chosen for the profile ``BM3D_PROFILE`` (tests/test_recon.py checks that they agree, and that the
scan settings recorded here are still the package's). The slices are ``held_out(name, "val", n)``:
n spread evenly over the validation block, with their inputs exactly as notebook 06 scores them
(the same slices as ``benchmarks/tv_weight.py``).

The normal profile ("np") costs about three times the low-complexity one ("lc"), which the chapter
runs. What that gives up is measured twice: ``extra.np_minus_lc_db`` on the validation slices, and
``test/<task>/<profile>/psnr`` and ``/ssim``: each profile at its own chosen sigma on notebook 06's
``n_test`` test slices (and slice by slice in ``extra.test_per_image``, with the slices' indices),
so the notebook can say, with paired intervals, whether its verdicts against BM3D also hold
against the normal profile.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from medgan_utils import reconstruction as rc
from medgan_utils.data.ct import head_mask
from medgan_utils.results import start_run
from medgan_utils.superres import masked_psnr, masked_ssim

PROFILES = ("lc", "np")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--n-test", type=int, default=24)
    p.add_argument("--size", type=int, default=256)
    ns = p.parse_args()
    doses = [name for name, t in rc.TASKS.items() if t.task == "lowdose"]
    scans = {name: rc.scan_settings("lowdose", rc.TASKS[name].level) for name in doses}
    run = start_run("benchmark_bm3d", vars(ns) | {"grid": list(rc.BM3D_GRID), "scan_settings": scans})
    out: dict[str, float] = {}
    best: dict[str, dict[str, float]] = {prof: {} for prof in PROFILES}
    gap: dict[str, float] = {}
    per_image: dict[str, dict] = {}  # the test scores slice by slice, for paired intervals
    with tempfile.TemporaryDirectory() as cache:  # every call computes: the timings are real
        for name in doses:
            v = rc.held_out(name, "val", ns.n, ns.size)
            region = head_mask(v["truth"])
            out[f"{name}/n_slices"] = len(v["truth"])
            for prof in PROFILES:
                for s in rc.BM3D_GRID:
                    t0 = time.perf_counter()
                    y = rc.bm3d_denoise(v["inputs"][:, :1], s, cache_dir=cache, profile=prof)
                    k = f"{name}/{prof}/{s:g}"
                    out[f"{k}/seconds_per_slice"] = (time.perf_counter() - t0) / len(y)
                    out[f"{k}/psnr"] = float(masked_psnr(y, v["truth"], region).mean())
                    out[f"{k}/ssim"] = float(masked_ssim(y, v["truth"], region).mean())
                    print(f"{name:11s} {prof} sigma {s:<6g} PSNR {out[f'{k}/psnr']:.3f} dB, SSIM {out[f'{k}/ssim']:.4f}, "
                          f"{out[f'{k}/seconds_per_slice']:.2f} s/slice", flush=True)
                best[prof][name] = max(rc.BM3D_GRID, key=lambda s: out[f"{name}/{prof}/{s:g}/psnr"])
            gap[name] = out[f"{name}/np/{best['np'][name]:g}/psnr"] - out[f"{name}/lc/{best['lc'][name]:g}/psnr"]
            t = rc.held_out(name, "test", ns.n_test, ns.size)
            region = head_mask(t["truth"])
            out[f"test/{name}/n_slices"] = len(t["truth"])
            per_image[name] = {"index": [int(i) for i in t["index"]]}
            for prof in PROFILES:
                y = rc.bm3d_denoise(t["inputs"][:, :1], best[prof][name], cache_dir=cache, profile=prof)
                psnr, ssim = masked_psnr(y, t["truth"], region), masked_ssim(y, t["truth"], region)
                out[f"test/{name}/{prof}/psnr"], out[f"test/{name}/{prof}/ssim"] = float(psnr.mean()), float(ssim.mean())
                per_image[name][prof] = {"psnr": psnr.tolist(), "ssim": ssim.tolist()}
                print(f"{name:11s} {prof} on {len(y)} test slices, sigma {best[prof][name]:g}: "
                      f"PSNR {out[f'test/{name}/{prof}/psnr']:.3f} dB, SSIM {out[f'test/{name}/{prof}/ssim']:.4f}", flush=True)
    print(f"best sigma: {best}; np - lc at each one's best: {gap}")
    print("->", run.finish(out, extra={"best_sigma": best, "np_minus_lc_db": gap, "test_per_image": per_image}))


if __name__ == "__main__":
    main()
