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
from .evaluation import SPACES, fd_to_reference, generator_training_arrays, score_generator
from .metrics import class_coverage
from .models.gan import GANConfig
from .pretrained import train_model
from .results import key, run_key, split_run_key
from .stats import mean_ci
from .train import FitConfig


def fd_callback(dataset: str, size: int = 28, n: int = 1000, seed: int = 0) -> Callable:
    """A ``fit`` callback logging ``fd`` and ``fd_ratio`` against the reference of
    :mod:`medgan_utils.evaluation` (classifier space, fixed noise seed). Never the test split:
    ranking recipes on it every few dozen steps would be model selection on the test set."""

    def callback(step: int, model, logs) -> dict[str, float]:
        fake = model.sample(n, generator=torch.Generator().manual_seed(seed))
        return fd_to_reference(fake, dataset, size, seed=seed)

    return callback


def train_and_score(
    config: GANConfig, train: Arrays, fit_config: FitConfig, *, seed: int = 0, batch_size: int = 64,
    eval_every: int = 0, n_eval: int = 1000, device: torch.device | str = "cpu",
    judge: torch.nn.Module | None = None, progress: bool = False,
) -> dict:
    """Train one GAN from scratch (no checkpoints) on ``train`` and score it: the unit of every grid.

    Scored by :func:`medgan_utils.evaluation.score_generator` (``n_eval`` fakes, against held-out
    images of ``train``'s distribution, in the classifier's and the autoencoder's features).

    Returns:
        ``{"config", "history", "stopped", "steps", "wall_s", "metrics", "class_fractions",
        "reference"}``; a diverged run keeps its history and scores its last weights if they are
        finite.
    """
    callbacks = [(eval_every, fd_callback(train.name, train.size, n_eval, seed))] if eval_every else []
    t0 = time.perf_counter()
    gan, hist = train_model(config, train, replace(fit_config, on_divergence="stop", resume=False), seed=seed,
                            batch_size=batch_size, device=device, callbacks=callbacks, progress=progress)
    out = {"config": config.to_dict(), "history": hist.records, "stopped": hist.stopped,
           "steps": hist.step, "wall_s": round(time.perf_counter() - t0, 1), "n_train": len(train)}
    fake = gan.sample(n_eval, generator=torch.Generator().manual_seed(seed + 1))
    if torch.isfinite(fake).all():
        scores = score_generator(fake, train.name, train.size, seed=seed)
        out["reference"] = scores.pop("reference")
        out["metrics"] = {k: v for k, v in scores.items() if isinstance(v, (int, float))}
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


def run_grid(which: str, train: Arrays, judge: torch.nn.Module, *,
             lrs: Sequence[float] = (1e-4, 1e-3, 5e-3), seeds: Sequence[int] = (0, 1), steps: int = 300,
             eval_every: int = 50, n_eval: int = 600, batch_size: int = 64,
             device: torch.device | str = "cpu") -> tuple[dict, dict]:
    """One of chapter 03's grids (``which`` in :data:`GRIDS`); returns ``(runs, summary)``.

    Every GAN trains on :func:`~medgan_utils.evaluation.generator_training_arrays` of ``train``
    (the whole training split for PneumoniaMNIST; for BreastMNIST the half that is not the
    evaluation reference) and is scored by :func:`train_and_score`. ``judge`` (the shipped
    classifier) reports the class mix of the fakes. Run by ``medgan experiment stability|small-data``.
    """
    if which not in GRIDS:
        raise ValueError(f"unknown grid {which!r}; choose from {sorted(GRIDS)}")
    part = generator_training_arrays(train)
    configs = GRIDS[which](dict(channels=train.n_channels, image_size=train.size), lrs)
    runs = grid(configs, seeds, train=part,
                fit_config=FitConfig(steps=steps, log_every=max(1, eval_every // 2), ckpt_every=0),
                batch_size=batch_size, eval_every=eval_every, n_eval=n_eval, device=device,
                judge=judge)
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
                  f"{results[rk]['wall_s']} s, fd_ratio classifier "
                  f"{m.get('classifier_fd_ratio', float('nan')):.2f}, autoencoder "
                  f"{m.get('autoencoder_fd_ratio', float('nan')):.2f}",
                  flush=True)
    return results


def summarize(results: dict[str, dict], keys=("fd_ratio", "recall", "coverage", "precision")) -> dict:
    """Per configuration name: mean, sample std (ddof=1) and the half-width of the 95 % Student-t
    interval over seeds (``<metric>_mean``, ``_std``, ``_ci95``; :func:`medgan_utils.stats.mean_ci`)
    of each metric, for every ``"<space>_<metric>"`` key of the runs' metrics."""
    by_name: dict[str, list[dict]] = {}
    for rk, res in results.items():
        by_name.setdefault(split_run_key(rk)[0], []).append(res)
    out = {}
    for name, runs in by_name.items():
        row = {"diverged": sum(r["stopped"] == "diverged" for r in runs), "runs": len(runs)}
        scored = [r["metrics"] for r in runs if "metrics" in r]
        for k in [f"{sp}_{m}" for sp in SPACES for m in keys]:
            vals = [m[k] for m in scored if k in m]
            if vals:
                ci = mean_ci(vals)
                row[f"{k}_mean"] = ci.mean
                row[f"{k}_std"] = ci.sd if ci.n > 1 else 0.0
                if np.isfinite(ci.half):
                    row[f"{k}_ci95"] = ci.half
        out[name] = row
    return out
