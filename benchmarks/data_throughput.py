"""Images/s of the two data paths: medmnist's PIL Dataset + DataLoader vs the uint8 TensorLoader.

    python benchmarks/data_throughput.py [--dataset pneumoniamnist] [--batch-size 128] [--threads 1]

Writes results/benchmark_data_throughput.json. Timings live here, never in tests. Notebook 00
measures the same way (and shows this file's stored result beside its own): one untimed
warm-up batch, then at least ``--images`` images, best of ``--repeats``, on ``--threads``
threads (a batch is ~100k pixels: a second thread saves little, and on a shared machine a
thread waiting for a busy core costs more than the work).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator

import torch
import torchvision.transforms as T

from medgan_utils.data import TensorLoader, load_arrays, load_medmnist
from medgan_utils.results import start_run
from medgan_utils.utils import get_device


def forever(loader: Iterable) -> Iterator:
    while True:
        yield from loader


def images_per_s(batches: Iterator, n_images: int, repeats: int = 3) -> float:
    """Best of ``repeats``: one untimed warm-up batch, then at least ``n_images`` images."""
    best = 0.0
    for _ in range(repeats):
        next(batches)  # first-call costs (allocations, a new epoch's permutation) are not throughput
        seen, t0 = 0, time.perf_counter()
        while seen < n_images:
            seen += len(next(batches)[0])
        best = max(best, seen / (time.perf_counter() - t0))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ns = p.parse_args()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    device = get_device()
    run = start_run("benchmark_data_throughput", vars(ns) | {"torch_threads": torch.get_num_threads()}, device)
    tf = T.Compose([T.ToTensor(), T.Normalize([0.5], [0.5])])
    ds = load_medmnist(ns.dataset, "train", ns.size, transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=ns.batch_size, shuffle=True, num_workers=0,
                                     generator=torch.Generator().manual_seed(0))
    arr = load_arrays(ns.dataset, "train", ns.size)
    tl = TensorLoader(arr.images, arr.labels, ns.batch_size, device)

    pil = images_per_s(forever(dl), ns.images, ns.repeats)
    fast = images_per_s(forever(tl), ns.images, ns.repeats)
    path = run.finish({"pil_dataloader_images_per_s": pil, "tensor_loader_images_per_s": fast,
                       "speedup": fast / pil})
    print(f"PIL Dataset+DataLoader: {pil:,.0f} img/s | TensorLoader: {fast:,.0f} img/s "
          f"({fast / pil:.1f}x) on {device}, {torch.get_num_threads()} thread(s) -> {path}")


if __name__ == "__main__":
    main()
