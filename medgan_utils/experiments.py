"""The experiments behind chapters 03-04, as functions the CLI and the notebooks share.

Each returns plain dicts (and writes ``results/<name>.json`` through the CLI), so a notebook's
default run can show the full experiment's numbers and its ``train_from_scratch`` run can repeat it.

Introduced in ``notebooks/03_wgan_gp.ipynb``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np
import torch

from .data import Arrays
from .metrics import class_coverage, evaluate, extract_features, frechet_distance
from .models.gan import GANConfig
from .pretrained import train_model
from .results import key, run_key, split_run_key
from .train import FitConfig


def fd_callback(extractor: torch.nn.Module, test_images: torch.Tensor, n: int = 1000,
                seed: int = 0) -> Callable:
    """A ``fit`` callback logging ``fd`` (generated vs test features) with a fixed noise seed."""
    test_feats = extract_features(extractor, test_images[:n])

    def callback(step: int, model, logs) -> dict[str, float]:
        fake = model.sample(len(test_feats), generator=torch.Generator().manual_seed(seed))
        return {"fd": frechet_distance(extract_features(extractor, fake), test_feats)}

    return callback


def train_and_score(
    config: GANConfig, train: Arrays, test: Arrays, extractor: torch.nn.Module,
    fit_config: FitConfig, *, seed: int = 0, batch_size: int = 64, eval_every: int = 0,
    n_eval: int = 1000, device: torch.device | str = "cpu", judge: torch.nn.Module | None = None,
    progress: bool = False,
) -> dict:
    """Train one GAN from scratch (no checkpoints) and score it: the unit of every grid.

    Returns:
        ``{"config", "history", "stopped", "steps", "wall_s", "metrics", "class_fractions"}``;
        a diverged run keeps its history and scores its last weights if they are finite.
    """
    callbacks = [(eval_every, fd_callback(extractor, test.tensors(), n_eval, seed))] if eval_every else []
    t0 = time.perf_counter()
    gan, hist = train_model(config, train, replace(fit_config, on_divergence="stop", resume=False), seed=seed,
                            batch_size=batch_size, device=device, callbacks=callbacks, progress=progress)
    out = {"config": config.to_dict(), "history": hist.records, "stopped": hist.stopped,
           "steps": hist.step, "wall_s": round(time.perf_counter() - t0, 1)}
    fake = gan.sample(n_eval, generator=torch.Generator().manual_seed(seed + 1))
    if torch.isfinite(fake).all():
        out["metrics"] = evaluate(extractor, fake, train.tensors(), test.tensors()[:n_eval], seed=seed,
                                  kid_subsets=10)
        if judge is not None:
            out["class_fractions"] = class_coverage(judge, fake, len(train.class_names)).tolist()
    return out


def stability_configs(base: dict, lrs: Sequence[float]) -> list[tuple[str, GANConfig]]:
    """Chapter 03's stability grid: DCGAN and WGAN-GP at each learning rate (G and D alike)."""
    return [(key(p, f"lr{lr:g}"), GANConfig.preset(p, **{"lr_g": lr, "lr_d": lr, **base}))
            for p in ("dcgan", "wgan-gp") for lr in lrs]


SMALL_DATA_AUGMENT = "color,translation,cutout"


def small_data_configs(base: dict) -> list[tuple[str, GANConfig]]:
    """Chapter 03's small-data grid: WGAN-GP plain, with EMA, with DiffAugment, with both."""
    wg = GANConfig.preset("wgan-gp", **base)
    return [("plain", wg), ("ema", replace(wg, ema=0.999)),
            ("diffaugment", replace(wg, diffaugment=SMALL_DATA_AUGMENT)),
            ("ema+diffaugment", replace(wg, ema=0.999, diffaugment=SMALL_DATA_AUGMENT))]


GRIDS = {"stability": stability_configs,
         "small-data": lambda base, lrs: small_data_configs(base)}  # one grid needs no learning rates


def run_grid(which: str, train: Arrays, test: Arrays, extractor: torch.nn.Module, *,
             lrs: Sequence[float] = (1e-4, 1e-3, 5e-3), seeds: Sequence[int] = (0, 1), steps: int = 300,
             eval_every: int = 50, n_eval: int = 600, batch_size: int = 64,
             device: torch.device | str = "cpu") -> tuple[dict, dict]:
    """One of chapter 03's grids (``which`` in :data:`GRIDS`); returns ``(runs, summary)``.

    The extractor also judges class coverage. Run by ``medgan experiment stability|small-data``.
    """
    if which not in GRIDS:
        raise ValueError(f"unknown grid {which!r}; choose from {sorted(GRIDS)}")
    configs = GRIDS[which](dict(channels=train.n_channels, image_size=train.size), lrs)
    runs = grid(configs, seeds, train=train, test=test, extractor=extractor,
                fit_config=FitConfig(steps=steps, log_every=max(1, eval_every // 2), ckpt_every=0),
                batch_size=batch_size, eval_every=eval_every, n_eval=n_eval, device=device,
                judge=extractor)
    return runs, summarize(runs)


def grid(configs: Iterable[tuple[str, GANConfig]], seeds: Sequence[int], **kwargs) -> dict[str, dict]:
    """``train_and_score`` for every (name, config) x seed; keys ``"<name>/seed<k>"``."""
    results = {}
    for name, cfg in configs:
        for seed in seeds:
            rk = run_key(name, seed)
            print(f"-- {rk}", flush=True)
            results[rk] = train_and_score(cfg, seed=seed, **kwargs)
            m = results[rk].get("metrics", {})
            print(f"   {results[rk]['stopped']} after {results[rk]['steps']} steps, "
                  f"{results[rk]['wall_s']} s, fd_ratio={m.get('fd_ratio', float('nan')):.2f}",
                  flush=True)
    return results


def summarize(results: dict[str, dict], keys=("fd_ratio", "recall", "coverage", "precision")) -> dict:
    """Mean and std over seeds of each metric, per configuration name."""
    by_name: dict[str, list[dict]] = {}
    for rk, res in results.items():
        by_name.setdefault(split_run_key(rk)[0], []).append(res)
    out = {}
    for name, runs in by_name.items():
        row = {"diverged": sum(r["stopped"] == "diverged" for r in runs), "runs": len(runs)}
        for k in keys:
            vals = [r["metrics"][k] for r in runs if "metrics" in r]
            if vals:
                row[f"{k}_mean"], row[f"{k}_std"] = float(np.mean(vals)), float(np.std(vals))
        out[name] = row
    return out
