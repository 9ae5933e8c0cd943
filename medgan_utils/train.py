"""The one training loop of the course: :func:`fit`.

Every model in the course (vanilla GAN, DCGAN, WGAN-GP, conditional GANs, the downstream
classifier, and later SRGAN, CycleGAN, diffusion) plugs into the same loop. A model is any
object with:

* ``train_step(batches) -> dict[str, float]``: one training step, drawing as many batches as it
  needs with ``next(batches)``. The model owns the order of its updates: a WGAN-GP runs its
  ``n_critic`` critic updates and then its generator update, SRGAN/pix2pix/CycleGAN update G and
  D on the same fakes, a classifier makes one supervised update. Returns numbers to log.
* ``modules() -> dict[str, nn.Module]`` and ``optimizers() -> dict[str, Optimizer]``: what a
  checkpoint stores.
* ``state_dict()``/``load_state_dict(state)`` (optional): any other state a resumed run needs
  (learning-rate schedulers, an image history pool, a privacy accountant), saved with each
  checkpoint and restored on resume.
* ``visuals(generator) -> dict[str, Tensor]`` (optional): image batches in [-1, 1] drawn as grids
  every ``sample_every`` steps (samples for a generator; input/output/target for image-to-image).

``fit`` owns the step counter, the ``tqdm`` bar with live losses, the history (returned and
written as JSON), sample grids, checkpoints every ``ckpt_every`` steps, exact resume, a wall-clock
budget, callbacks (evaluation, early stopping) and the NaN/inf guard.

Introduced in ``notebooks/01_vanilla_gan.ipynb``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .utils import write_json


@runtime_checkable
class Trainable(Protocol):
    """What :func:`fit` needs from a model (``state_dict`` and ``visuals`` are optional)."""

    def train_step(self, batches: Iterator) -> Mapping[str, float]: ...

    def modules(self) -> dict[str, nn.Module]: ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...


class DivergenceError(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint was kept."""


@dataclass(frozen=True)
class FitConfig:
    """How long and how often: everything ``fit`` decides, printed and saved with the run.

    Attributes:
        steps: calls of the model's ``train_step`` (for a GAN: generator updates; how many critic
            updates each takes is the model's own setting, e.g. ``GANConfig.n_critic``).
        log_every: steps between history entries (losses averaged over the interval).
        ckpt_every: steps between checkpoints (0: only at the end).
        sample_every: steps between sample grids written as PNG (0: never).
        max_seconds: stop (with a final checkpoint) after this much wall time; 0 = no limit.
        resume: continue from ``out_dir/last.safetensors`` when it exists.
        on_divergence: "raise" a DivergenceError, or "stop" and return the history.
    """

    steps: int = 1000
    log_every: int = 50
    ckpt_every: int = 500
    sample_every: int = 0
    max_seconds: float = 0.0
    resume: bool = True
    on_divergence: str = "raise"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.log_every < 1:
            raise ValueError(f"steps>=1 and log_every>=1 are required, got {self}")
        if self.on_divergence not in ("raise", "stop"):
            raise ValueError("on_divergence must be 'raise' or 'stop'")


@dataclass
class History:
    """What happened during :func:`fit`: one record per ``log_every`` steps."""

    records: list[dict[str, float]] = field(default_factory=list)
    stopped: str = ""  # "", "done", "time", "callback", "diverged"
    step: int = 0
    wall_s: float = 0.0

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one logged quantity, for plotting."""
        pts = [(r["step"], r[key]) for r in self.records if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    def to_json(self, path: str | os.PathLike) -> None:
        write_json(path, asdict(self))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> History:
        return cls(**json.loads(Path(path).read_text()))


Callback = Callable[[int, Any, dict[str, float]], "bool | None | dict[str, float]"]


def _infinite(data: Iterable) -> Iterator:
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training data yielded no batch")


def fit(
    model: Trainable,
    data: Iterable,
    config: FitConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    callbacks: Iterable[tuple[int, Callback]] = (),
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` on ``data`` for ``config.steps`` steps and return the :class:`History`.

    Args:
        model: see the module docstring.
        data: re-iterable batches, e.g. :class:`medgan_utils.data.TensorLoader`. If it has
            ``state_dict``/``load_state_dict`` its position is checkpointed, so resume is exact.
        config: a :class:`FitConfig` (defaults if None).
        out_dir: where ``last.safetensors`` (+ ``last.state.pt``), ``history.json``,
            ``config.json`` and ``samples/step_XXXXXX.png`` go. None: keep nothing on disk.
        callbacks: ``(every, fn)`` pairs; ``fn(step, model, logs)`` runs every ``every`` steps.
            It may return a dict of extra numbers to log, or ``True`` to stop training.
        metadata: stored in every checkpoint header (model config, dataset...).
        progress: show a tqdm bar.

    Raises:
        DivergenceError: a loss became NaN/inf (``on_divergence="raise"``). The last
            checkpoint on disk is the last one written before it, so nothing good is lost.
    """
    config = config or FitConfig()
    out = Path(out_dir) if out_dir is not None else None
    history = History()
    step = 0
    ckpt = out / "last.safetensors" if out else None
    meta = {"fit": asdict(config), **dict(metadata or {})}

    if ckpt and config.resume and ckpt.exists():
        _check_same_model(ckpt, meta)
        step, history = _resume(ckpt, model, data, out)
        if step >= config.steps:
            history.stopped = history.stopped or "done"
            return history
    if out:  # after the resume check: a refused resume must not overwrite the run's record
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", meta)

    if not callable(getattr(model, "train_step", None)):
        raise TypeError(f"{type(model).__name__} has no train_step(batches): see medgan_utils.train")
    batches = _infinite(data)
    t0 = time.perf_counter() - history.wall_s
    acc: dict[str, list[float]] = {}
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="fit", leave=True)

    def checkpoint(at: int) -> None:
        if not ckpt:
            return
        history.step, history.wall_s = at, time.perf_counter() - t0
        state = {
            "step": at,
            "optimizers": {k: o.state_dict() for k, o in model.optimizers().items()},
            "rng_cpu": torch.get_rng_state(),
            "data": data.state_dict() if hasattr(data, "state_dict") else {},
            "model": model.state_dict() if callable(getattr(model, "state_dict", None)) else {},
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        save_checkpoint(ckpt, model.modules(), metadata={**meta, "step": at},
                        trainer_state=state)
        history.to_json(out / "history.json")

    try:
        while step < config.steps:
            logs = dict(model.train_step(batches))
            step += 1
            bad = [k for k, v in logs.items() if not math.isfinite(float(v))]
            if bad:
                msg = (f"step {step}: {', '.join(bad)} became {logs[bad[0]]}; training stopped. "
                       + (f"The last good checkpoint is {ckpt} (step {history.step}). "
                          if ckpt and ckpt.exists() else "")
                       + "Lower the learning rate, check the data range, or use WGAN-GP.")
                history.stopped = "diverged"
                history.records.append({"step": step, "diverged": 1.0})
                if out:
                    history.to_json(out / "diverged_history.json")
                if config.on_divergence == "raise":
                    raise DivergenceError(msg)
                bar.write(msg)
                break
            for k, v in logs.items():
                acc.setdefault(k, []).append(float(v))
            extra_stop = False
            for every, fn in callbacks:
                if step % every == 0 or step == config.steps:
                    res = fn(step, model, logs)
                    if res is True:
                        extra_stop = True
                    elif isinstance(res, Mapping):
                        acc.update({k: [float(v)] for k, v in res.items()})
            out_of_time = bool(config.max_seconds) and time.perf_counter() - t0 > config.max_seconds
            if step % config.log_every == 0 or step == config.steps or extra_stop or out_of_time:
                rec = {"step": step, **{k: sum(v) / len(v) for k, v in acc.items()}}
                rec["wall_s"] = time.perf_counter() - t0
                history.records.append(rec)
                bar.set_postfix({k: f"{v:.3g}" for k, v in rec.items()
                                 if k not in ("step", "wall_s")}, refresh=False)
                acc = {}
            bar.update(1)
            if out and config.sample_every and step % config.sample_every == 0:
                _save_grid(model, out / "samples" / f"step_{step:06d}.png")
            if extra_stop:
                history.stopped = "callback"
                break
            if out_of_time:
                history.stopped = "time"
                break
            if ckpt and config.ckpt_every and step % config.ckpt_every == 0:
                checkpoint(step)
    finally:
        bar.close()

    history.step, history.wall_s = step, time.perf_counter() - t0
    history.stopped = history.stopped or "done"
    if history.stopped != "diverged":
        checkpoint(step)
    if out:
        history.to_json(out / "history.json")
    return history


# Header entries that define the model: a run resumed under different ones would train a hybrid
# (optimizer state, learning rates included, comes from the checkpoint) while recording the new.
_MODEL_KEYS = ("kind", "config", "gan")


def _with_defaults(header: Mapping[str, Any]) -> dict[str, Any]:
    """The header with its config completed by the config class's defaults, so a run saved before
    a field was added (e.g. a learning-rate schedule, default off) matches the same config now."""
    from .registry import config_from_dict, get_kind

    header = dict(header)
    try:
        config = config_from_dict(get_kind(header["kind"]), header["config"])
        header["config"] = json.loads(json.dumps(asdict(config), default=str))
    except (KeyError, TypeError, ValueError):
        pass  # not a registered kind's header: compared as it is
    return header


def _check_same_model(ckpt: Path, meta: Mapping[str, Any]) -> None:
    from .checkpoint import read_metadata

    try:
        saved = read_metadata(ckpt)
    except CheckpointError:
        return  # _resume reports the unreadable file
    saved, now = _with_defaults(saved), _with_defaults(json.loads(json.dumps(dict(meta), default=str)))
    differ = [k for k in _MODEL_KEYS if k in saved and k in now and saved[k] != now[k]]
    if differ:
        fields = sorted({f for k in differ if isinstance(saved[k], dict)
                         for f in set(saved[k]) | set(now[k]) if saved[k].get(f) != now[k].get(f)})
        raise CheckpointError(
            f"{ckpt} was trained with another model ({', '.join(fields or differ)} differ); resuming "
            "would keep its optimizer state and settings while recording the new ones. Pass "
            "resume=False (medgan train --no-resume) to start over there, or choose a new out_dir "
            "(--out).")


def _resume(ckpt: Path, model: Trainable, data: Any, out: Path) -> tuple[int, History]:
    try:
        state = load_checkpoint(ckpt, with_state=True)["state"]
        # The model's own state first: a model may refuse the resume (chapter 09's DP-GAN refuses
        # another privacy plan), and then nothing of the caller's model has changed yet.
        if state.get("model") and callable(getattr(model, "load_state_dict", None)):
            model.load_state_dict(state["model"])
        load_checkpoint(ckpt, model.modules())
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume from {ckpt}: {err}. Pass resume=False or "
                              "delete the folder to start over.") from None
    for name, opt in model.optimizers().items():
        opt.load_state_dict(state["optimizers"][name])
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    if state.get("data") and hasattr(data, "load_state_dict"):
        data.load_state_dict(state["data"])
    hist_path = out / "history.json"
    history = History.from_json(hist_path) if hist_path.exists() else History()
    history.records = [r for r in history.records if r["step"] <= state["step"]]
    history.stopped = ""
    return int(state["step"]), history


@torch.no_grad()
def _save_grid(model: Any, path: Path) -> None:
    if not callable(getattr(model, "visuals", None)):
        return
    from .viz import save_image_grid

    # A private generator: sample grids never touch the global RNG, so runs with and without
    # grids (or a resumed run) draw the same training noise.
    visuals = model.visuals(generator=torch.Generator().manual_seed(0))
    for i, (name, images) in enumerate(visuals.items()):
        save_image_grid(images, path if i == 0 else path.with_name(f"{path.stem}_{name}.png"))
