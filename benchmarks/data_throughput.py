"""Images/s of the two data paths: medmnist's PIL Dataset + DataLoader vs the uint8 TensorLoader.

    python benchmarks/data_throughput.py [--dataset pneumoniamnist] [--batch-size 128]

Writes results/benchmark_data_throughput.json. Timings live here, never in tests.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision.transforms as T

from medgan_utils.data import TensorLoader, load_arrays, load_medmnist
from medgan_utils.results import start_run
from medgan_utils.utils import get_device


def rate(iterable, n_images: int) -> float:
    seen, t0 = 0, time.perf_counter()
    for x, _ in iterable:
        x = x.float()
        seen += len(x)
        if seen >= n_images:
            break
    return seen / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=20000)
    ns = p.parse_args()
    device = get_device()
    run = start_run("benchmark_data_throughput", vars(ns), device)
    tf = T.Compose([T.ToTensor(), T.Normalize([0.5], [0.5])])
    ds = load_medmnist(ns.dataset, "train", ns.size, transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=ns.batch_size, shuffle=True, num_workers=0)
    arr = load_arrays(ns.dataset, "train", ns.size)
    tl = TensorLoader(arr.images, arr.labels, ns.batch_size, device)

    def cycle(loader):
        while True:
            yield from loader

    pil = rate(cycle(dl), ns.images)
    fast = rate(cycle(tl), ns.images)
    path = run.finish({"pil_dataloader_images_per_s": pil, "tensor_loader_images_per_s": fast,
                       "speedup": fast / pil})
    print(f"PIL Dataset+DataLoader: {pil:,.0f} img/s | TensorLoader: {fast:,.0f} img/s "
          f"({fast / pil:.1f}x) on {device} -> {path}")


if __name__ == "__main__":
    main()
