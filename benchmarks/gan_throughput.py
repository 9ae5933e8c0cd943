"""Training throughput (real images/s through D) and peak memory of each GAN of chapters 01-03.

    python benchmarks/gan_throughput.py [--steps 30] [--threads 2]

Writes results/benchmark_gan_throughput.json so a reader can plan a full run (peak memory on CPU
is the process's peak RSS so far, torch included: it only grows from model to model); runs on CUDA
when one is present (MEDGAN_DEVICE=cpu forces the CPU). Timings live here, never in tests.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from medgan_utils.data import TensorLoader, load_arrays
from medgan_utils.models import GAN, GANConfig
from medgan_utils.results import start_run
from medgan_utils.train import FitConfig, fit
from medgan_utils.utils import get_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    ns = p.parse_args()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    device = get_device()
    run = start_run("benchmark_gan_throughput", vars(ns) | {"threads": torch.get_num_threads()}, device)
    train = load_arrays(ns.dataset, "train", 28)
    presets = {"gan": {}, "dcgan": {}, "dcgan_ema": {"ema": 0.999}, "wgan-gp": {},
               "wgan-gp_w32": {"width": 32}}
    metrics = {}
    for name, extra in presets.items():
        cfg = GANConfig.preset(name.split("_")[0], channels=train.n_channels, image_size=28, **extra)
        gan = GAN(cfg, device)
        loader = TensorLoader(train.images, train.labels, ns.batch_size, device)
        fit(gan, loader, FitConfig(steps=3), progress=False)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fit(gan, loader, FitConfig(steps=ns.steps, log_every=ns.steps), progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        imgs = ns.steps * ns.batch_size * (cfg.n_critic + 1)
        metrics[f"{name}/g_steps_per_s"] = ns.steps / dt
        metrics[f"{name}/images_per_s"] = imgs / dt
        metrics[f"{name}/peak_memory_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                                             else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(f"{name:12s} {ns.steps / dt:6.2f} G-steps/s {imgs / dt:8.0f} img/s")
    print(run.finish(metrics))


if __name__ == "__main__":
    main()
