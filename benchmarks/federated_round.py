"""Seconds and bytes of a federated round on Flower's simulation engine (chapter 08).

    python benchmarks/federated_round.py [--hospitals 4] [--rounds 3] [--local-steps 20] [--share all]

Writes results/benchmark_federated_round.json. Timings live here, never in tests. One federation
of the chapter's DCGAN on PneumoniaMNIST (alpha 0.5) is run with ``medgan_utils.federated.run_federated``;
per round the server records its wall clock, bytes sent and received and the resident memory of
itself and Ray's workers. Reported: the start-up (Ray and the first round's imports, ``first_round_s``),
the steady round (median of the later rounds, ``round_s``), bytes per round and the memory change
from the second to the last round. The machine's load average is recorded: on a
shared 2-core machine it explains slow runs.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from medgan_utils import federated as fl
from medgan_utils.results import start_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hospitals", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--share", default="all", choices=["all", "generator"])
    ns = p.parse_args()
    run = start_run("benchmark_federated_round", vars(ns), torch.device("cpu"))
    cfg = fl.FederatedConfig(n_clients=ns.hospitals, rounds=ns.rounds, local_steps=ns.local_steps,
                             share=ns.share, n_eval=0)
    t0 = time.perf_counter()
    result = fl.run_federated(cfg)
    total = time.perf_counter() - t0
    rounds = result.rounds[1:]
    walls = np.diff([r["wall_s"] for r in result.rounds])
    out = {
        "total_s": total,
        "first_round_s": float(walls[0]),
        "round_s": float(np.median(walls[1:])) if len(walls) > 1 else float(walls[0]),
        "bytes_per_round": float(rounds[-1]["bytes_down"] + rounds[-1]["bytes_up"]),
        "bytes_per_hospital_per_direction": float(rounds[-1]["bytes_down"] / rounds[-1]["sampled"]),
        "rss_mb_change_round2_to_last": float(rounds[-1]["total_rss_mb"] - rounds[min(1, len(rounds) - 1)]["total_rss_mb"]),
        "load_average_1min": os.getloadavg()[0],
    }
    path = run.finish(out)
    print({k: round(v, 2) for k, v in out.items()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
