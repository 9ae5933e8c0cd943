"""Milliseconds per 512 x 512 output slice for chapter 05's methods (x4 from 128 x 128).

    python benchmarks/sr_speed.py [--n 8] [--repeats 3] [--threads 0] [--device cpu]

Writes results/benchmark_sr_speed.json. Timings live here, never in tests. The inputs are the
first ``--n`` held-out CT test slices downsampled x4; each method runs one slice at a time (what
``medgan apply`` does with a user's files), best of ``--repeats`` passes over the ``--n`` slices,
after one warm-up slice. Methods: nearest, bicubic (torch), Lanczos (PIL) and every shipped
chapter 05 CT model (``checkpoints/sr*_ct.safetensors``). The machine's load average is recorded:
on a shared machine it explains slow runs. On a GPU (``--device cuda``) the models are timed with
``torch.cuda.synchronize`` around each pass.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from medgan_utils.pretrained import load
from medgan_utils.results import start_run
from medgan_utils.superres import BASELINES, held_out_pairs, interpolate
from medgan_utils.utils import CHECKPOINT_DIR, get_device


def _best_ms(fn, xs: torch.Tensor, repeats: int, sync) -> float:
    fn(xs[:1])  # warm-up: first-call allocations and kernel selection
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for i in range(len(xs)):
            fn(xs[i:i + 1])
        sync()
        best = min(best, (time.perf_counter() - t0) / len(xs))
    return 1000 * best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    ns = p.parse_args()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    device = get_device(ns.device)
    run = start_run("benchmark_sr_speed", vars(ns) | {"torch_threads": torch.get_num_threads()}, device)
    lr, _, _ = held_out_pairs(n=ns.n)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ms = {f"{m}_ms_per_slice": _best_ms(lambda x, m=m: interpolate(x, 4, m), lr, ns.repeats, sync)
          for m in BASELINES}
    for path in sorted(CHECKPOINT_DIR.glob("sr*_ct.safetensors")):
        model, _ = load(path, device)
        name = path.name.removesuffix("_ct.safetensors")
        ms[f"{name}_ms_per_slice"] = _best_ms(lambda x, m=model: m.apply(x.to(device)).cpu(), lr,
                                              ns.repeats, sync)
    load1 = os.getloadavg()[0]
    out = run.finish(ms | {"load_average_1min": load1})
    print("\n".join(f"{k:32s} {v:8.1f}" for k, v in ms.items()))
    print(f"on {torch.get_num_threads()} thread(s), {device}, load {load1:.1f} -> {out}")


if __name__ == "__main__":
    main()
