"""A model's life outside a notebook cell, for every registered kind: train it
(:func:`train_model`, the one recipe "build the model, make its loader, fit"), ship it
(:func:`export`), serve it (:func:`load`) and the load-else-train pattern every notebook uses
(:func:`load_or_train`).

A shipped model is ``checkpoints/<name>.safetensors`` (the networks its kind exports, e.g. a GAN's
EMA generator stored as ``G``; its kind, config, data set and training facts in the header) plus
``checkpoints/<name>.history.json`` (the loss curves of the run that produced it).

Introduced in ``notebooks/01_vanilla_gan.ipynb``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint, read_metadata, save_checkpoint
from .data import Arrays
from .registry import ModelKind, config_from_dict, get_kind, kind_of
from .train import Callback, FitConfig, History, fit
from .utils import CHECKPOINT_DIR, RUNS_DIR


def header(config: Any, **facts: Any) -> dict[str, Any]:
    """The checkpoint header of a model: its kind, its config and any facts."""
    return {"kind": kind_of(config).name, "config": config.to_dict(), **facts}


def kind_and_config(meta: Mapping[str, Any], path: str | os.PathLike = "") -> tuple[ModelKind, Any]:
    """The kind and config a checkpoint header describes (also the chapter 01-04 ``"gan"`` form)."""
    if "kind" in meta:
        kind = get_kind(meta["kind"])
        return kind, config_from_dict(kind, meta["config"])
    if "gan" in meta:  # headers written before the registry
        kind = get_kind("gan")
        return kind, config_from_dict(kind, meta["gan"])
    raise ValueError(f"{path} is not a medgan model checkpoint (no 'kind' in its header)")


def train_model(
    config: Any,
    data: Arrays | Iterable,
    fit_config: FitConfig,
    *,
    seed: int | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    out_dir: str | os.PathLike | None = None,
    callbacks: Iterable[tuple[int, Callback]] = (),
    facts: Mapping[str, Any] | None = None,
    progress: bool = True,
    model: Any = None,
) -> tuple[Any, History]:
    """Build the model ``config`` describes, make its loader and :func:`fit` it.

    Args:
        config: any registered kind's config (a :class:`~medgan_utils.models.GANConfig`...).
        data: the training split as :class:`~medgan_utils.data.Arrays` (the kind makes the
            loader: batches of ``batch_size`` shuffled with ``seed``), or a ready loader; then the
            model is built without the data's facts (a conditional GAN's class prior is uniform:
            pass ``Arrays``, or a ``model`` built with its prior).
        seed: seeds torch before the model is built (None: the caller's RNG state as it is).
        model: a model built by the caller (e.g. with its own networks or optimizers).
        facts: stored in the checkpoint headers with the kind and config.

    Returns:
        ``(model, history)``.
    """
    kind = kind_of(config)
    check = getattr(config, "check_fit", None)
    if callable(check):  # a config whose settings depend on the run's length (CycleGAN's LR schedule)
        check(fit_config)
    if seed is not None:
        torch.manual_seed(seed)
    arrays = data if isinstance(data, Arrays) else None
    if model is None:
        model = kind.build(config, device, arrays)
    loader = kind.loader(arrays, config, batch_size, device, seed or 0) if arrays is not None else data
    callbacks = [*callbacks, *kind.prepare(model, loader, fit_config)]  # e.g. Opacus (chapter 09)
    hist = fit(model, loader, fit_config, out_dir=out_dir, callbacks=callbacks,
               metadata=header(config, **kind.header_facts(model), **(facts or {})), progress=progress)
    return model, hist


def export(model: Any, path: str | os.PathLike, history: History | None = None, **facts: Any) -> Path:
    """Write the networks ``model``'s kind ships + kind, config and facts; the history beside it.

    The header also records ``machine`` (instruction set, CPU, torch threads: :func:`utils.machine`)
    unless ``facts`` give it: every course command exports right after training, so a quoted
    training time comes with the thread count it was measured at."""
    from .utils import machine

    facts.setdefault("machine", machine())
    path = Path(path)
    kind = kind_of(model.config)
    save_checkpoint(path, kind.export_modules(model),
                    metadata=header(model.config, **kind.header_facts(model), **facts))
    if history is not None:
        history.to_json(history_path(path))
    return path


def history_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".history.json")


def load(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[Any, dict]:
    """Rebuild any registered model from a shipped export or a training ``last.safetensors``.

    Returns:
        ``(model, metadata)``, in eval mode; for an export only the shipped networks hold
        trained weights (what ``sample``/``apply`` use).
    """
    meta = read_metadata(path)
    kind, config = kind_and_config(meta, path)
    model = kind.build(config, device, header=meta)
    stored = {k.split(".")[0] for k in load_checkpoint(path)["tensors"]}
    load_checkpoint(path, kind.serve_modules(model, stored))
    for module in model.modules().values():
        module.eval()
    return model, meta


def load_or_train(
    name: str,
    config: Any,
    data: Arrays | Iterable,
    fit_config: FitConfig,
    *,
    train_from_scratch: bool = False,
    device: torch.device | str = "cpu",
    facts: dict[str, Any] | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> tuple[Any, History, str]:
    """Load ``checkpoints/<name>.safetensors`` or train it (the UvA ``pretrained_filename`` idea).

    Training goes to ``runs/<name>/`` (checkpoints, resume, samples) through :func:`train_model`
    and the result is exported to ``runs/<name>/<name>.safetensors``; copy it into
    ``checkpoints/`` to ship it.

    Returns:
        ``(model, history, source)`` with source ``"shipped"`` or ``"trained"``.
    """
    shipped = CHECKPOINT_DIR / f"{name}.safetensors"
    if shipped.exists() and not train_from_scratch:
        model, meta = load(shipped, device)
        if model.config != config:
            print(f"note: the shipped {name} was trained with {model.config}")
        hp = history_path(shipped)
        history = History.from_json(hp) if hp.exists() else History()
        return model, history, "shipped"
    out = RUNS_DIR / name
    if train_from_scratch and out.exists() and not fit_config.resume:
        shutil.rmtree(out)
    model, history = train_model(config, data, fit_config, device=device, out_dir=out,
                                 facts=facts, progress=progress, **train_kwargs)
    export(model, out / f"{name}.safetensors", history,
           steps=history.step, wall_s=history.wall_s, **(facts or {}))
    return model, history, "trained"


# What a joined export keeps of each run it was trained in (see join_runs).
STAGE_FACTS = ("command", "steps", "wall_s", "stopped", "machine")


def join_runs(first: str | os.PathLike, second: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Ship a model trained in two runs, the second started from the first's generator
    (``init_from``), as one export: the second run's weights and header, with ``steps`` and
    ``wall_s`` the totals and ``stages`` each run's command, steps, time and machine (a joined
    ``first`` brings its own stages), and one history with the second run's steps counted on from
    the first's, so a loss curve shows the whole training. ``out`` may be ``first``'s path.

    The header's config is the second run's: its ``init_from`` names the file the run started
    from *when it ran*; ``stages[0]["command"]`` says how that file was made."""
    m1, (model, m2) = read_metadata(first), load(second)
    h1, h2 = History.from_json(history_path(first)), History.from_json(history_path(second))
    later = [{**r, "step": r["step"] + h1.step, **({"wall_s": r["wall_s"] + h1.wall_s} if "wall_s" in r else {})}
             for r in h2.records]
    history = History(records=h1.records + later,
                      stopped=h2.stopped, step=h1.step + h2.step, wall_s=h1.wall_s + h2.wall_s)
    stages = [*m1.get("stages", [{k: m1[k] for k in STAGE_FACTS if k in m1}]),
              {k: m2[k] for k in STAGE_FACTS if k in m2}]
    facts = {k: v for k, v in m2.items() if k not in ("kind", "config", *kind_of(model.config).header_facts(model))}
    facts |= {"steps": history.step, "wall_s": round(history.wall_s, 1), "stages": stages}
    return export(model, out, history, **facts)


def read_facts(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a shipped checkpoint, pretty-printable."""
    return json.loads(json.dumps(read_metadata(path), default=str))
