"""Seconds to score 2,000 fakes with ``medgan_utils.evaluation.score_generator`` (warm cache).

    python benchmarks/eval_speed.py [--dataset pneumoniamnist] [--n 2000] [--threads 0]

Writes results/benchmark_eval_speed.json. Timings live here, never in tests. The first call fills
the real-feature cache (``runs/feature_cache/``) and the floor; it is timed separately
(``cold_s``). Then best of ``--repeats`` warm calls (``warm_s``, the target is < 5 s on a 2-core
CPU) in both feature spaces, with the time of the two forward passes alone beside it
(``extract_s``) to show where the rest goes (FD's matrix square root, KID, k-NN metrics). The
fakes are the shipped DCGAN's (PneumoniaMNIST) or uniform noise for another data set. The
machine's load average is recorded: on a shared machine it explains slow runs.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from medgan_utils import evaluation as ev
from medgan_utils.results import start_run
from medgan_utils.utils import CHECKPOINT_DIR


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ns = p.parse_args()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    run = start_run("benchmark_eval_speed", vars(ns) | {"torch_threads": torch.get_num_threads()},
                    torch.device("cpu"))
    name = f"dcgan_{ns.dataset}_{ns.size}"
    if (CHECKPOINT_DIR / f"{name}.safetensors").exists():
        fakes = ev.sample_shipped(name, ns.n, seed=0)
    else:
        fakes = torch.rand(ns.n, 1, ns.size, ns.size, generator=torch.Generator().manual_seed(0)) * 2 - 1

    ev.clear_cache()  # memory only: the disk cache, if any, is what a later session finds
    t0 = time.perf_counter()
    ev.score_generator(fakes, ns.dataset, ns.size)
    cold = time.perf_counter() - t0
    warm, extract = float("inf"), float("inf")
    for _ in range(ns.repeats):
        t0 = time.perf_counter()
        ev.score_generator(fakes, ns.dataset, ns.size)
        warm = min(warm, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for space in ev.SPACES:
            ev.network_features(ev.feature_space(space, ns.dataset, ns.size)[0], fakes)
        extract = min(extract, time.perf_counter() - t0)
    load1 = os.getloadavg()[0]
    path = run.finish({"cold_s": cold, "warm_s": warm, "extract_s": extract,
                       "metrics_s": warm - extract, "load_average_1min": load1})
    print(f"score_generator on {ns.n} fakes, {ns.dataset}: cold {cold:.1f} s, warm {warm:.2f} s "
          f"(forward passes {extract:.2f} s) on {torch.get_num_threads()} thread(s), "
          f"load {load1:.1f} -> {path}")


if __name__ == "__main__":
    main()
