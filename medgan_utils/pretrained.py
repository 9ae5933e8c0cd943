"""Shipped weights and the load-else-train pattern every notebook uses.

A shipped generator is ``checkpoints/<name>.safetensors`` (the EMA generator when there is one,
stored as ``G``; its :class:`GANConfig`, data set and training facts in the header) plus
``checkpoints/<name>.history.json`` (the loss curves of the run that produced it).

Introduced in ``notebooks/01_vanilla_gan.ipynb``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint, read_metadata, save_checkpoint
from .models.gan import GAN, GANConfig
from .train import FitConfig, History, fit
from .utils import CHECKPOINT_DIR, RUNS_DIR


def export_gan(gan: GAN, path: str | os.PathLike, history: History | None = None, **facts: Any) -> Path:
    """Write the generator to ship (EMA if any) + config + facts, and the history beside it."""
    path = Path(path)
    meta = {"gan": gan.config.to_dict(), **facts}
    save_checkpoint(path, {"G": gan.generator_for_export()}, metadata=meta)
    if history is not None:
        history.to_json(history_path(path))
    return path


def history_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".history.json")


def load_gan(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[GAN, dict]:
    """Rebuild a GAN from a shipped export or a training ``last.safetensors``.

    Returns:
        ``(gan, metadata)``; for an export only ``gan.G`` holds trained weights (``sample`` uses it).
    """
    meta = read_metadata(path)
    if "gan" not in meta:
        raise ValueError(f"{path} is not a medgan GAN checkpoint (no 'gan' config in its header)")
    cfg = GANConfig(**meta["gan"])
    gan = GAN(cfg, device)
    stored = load_checkpoint(path)["tensors"]
    names = {k.split(".")[0] for k in stored}
    if names == {"G"}:  # an export: its G is what sample() should use
        load_checkpoint(path, {"G": gan.G})
        gan.G_ema = None
    else:
        load_checkpoint(path, gan.modules())
    gan.G.eval()
    return gan, meta


def load_or_train(
    name: str,
    config: GANConfig,
    data,
    fit_config: FitConfig,
    *,
    train_from_scratch: bool = False,
    device: torch.device | str = "cpu",
    class_prior: torch.Tensor | None = None,
    facts: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[GAN, History, str]:
    """Load ``checkpoints/<name>.safetensors`` or train it (the UvA ``pretrained_filename`` idea).

    Training goes to ``runs/<name>/`` (checkpoints, resume, samples) and the result is exported
    to ``runs/<name>/<name>.safetensors``; copy it into ``checkpoints/`` to ship it.

    Returns:
        ``(gan, history, source)`` with source ``"shipped"`` or ``"trained"``.
    """
    shipped = CHECKPOINT_DIR / f"{name}.safetensors"
    if shipped.exists() and not train_from_scratch:
        gan, meta = load_gan(shipped, device)
        if GANConfig(**meta["gan"]) != config:
            print(f"note: the shipped {name} was trained with {meta['gan']}")
        hp = history_path(shipped)
        history = History.from_json(hp) if hp.exists() else History()
        return gan, history, "shipped"
    gan = GAN(config, device, class_prior=class_prior)
    out = RUNS_DIR / name
    if train_from_scratch and out.exists() and not fit_config.resume:
        shutil.rmtree(out)
    history = fit(gan, data, fit_config, out_dir=out, progress=progress,
                  metadata={"gan": config.to_dict(), **(facts or {})})
    export_gan(gan, out / f"{name}.safetensors", history,
               steps=history.step, wall_s=history.wall_s, **(facts or {}))
    return gan, history, "trained"


def read_facts(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a shipped checkpoint, pretty-printable."""
    return json.loads(json.dumps(read_metadata(path), default=str))
