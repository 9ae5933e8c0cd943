"""Safe, atomic checkpoints: weights as safetensors, trainer state as a weights-only torch file.

Nothing here ever unpickles arbitrary objects. Model weights live in ``NAME.safetensors``
(a flat tensor file with a JSON header: no code can hide in it). Optimizer moments, the step
counter and RNG state live in ``NAME.state.pt``, written by ``torch.save`` and read back with
``torch.load(weights_only=True)``, which refuses any pickle that would build other objects
(so a file whose ``__reduce__`` runs code is rejected before that code runs).

Every write goes to a temporary file in the same folder and is then renamed over the target,
so a run killed mid-write leaves the previous checkpoint intact.

Introduced in ``notebooks/00_getting_started.ipynb``.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a checkpoint at all."""


def _write_tmp(path: Path, write) -> str:
    """Run ``write(tmp)`` on a temporary file beside ``path``; return it, synced (nothing replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the checkpoint the permissions a normal file gets.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return tmp


def write_atomic(path: str | os.PathLike, write) -> Path:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``: a
    reader (another process, a killed run) never sees a half-written file."""
    path = Path(path)
    os.replace(_write_tmp(path, write), path)
    return path


def state_path(path: str | os.PathLike) -> Path:
    """Where the trainer state that goes with weights file ``path`` lives."""
    p = Path(path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".state.pt")


def save_checkpoint(
    path: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    *,
    metadata: Mapping[str, Any] | None = None,
    trainer_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``modules`` to ``path`` (safetensors) and, if given, ``trainer_state`` beside it.

    Args:
        path: file name ending in ``.safetensors``.
        modules: name -> module, e.g. ``{"G": G, "D": D}``; keys are stored as ``G.weight`` etc.
        metadata: JSON-serialisable facts stored in the header (config, dataset, step).
        trainer_state: optimizer state dicts, step, RNG tensors: anything made of tensors,
            numbers, strings, lists and dicts (what ``weights_only`` loading accepts).

    Returns:
        The path of the weights file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors, got {path}")
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
    header = {"medgan": json.dumps(dict(metadata or {}), default=str),
              "modules": json.dumps(sorted(modules))}
    # Both files are written completely before either replaces the old pair, so a failed or
    # interrupted write leaves the previous weights AND state intact. Only a kill between the two
    # renames below can pair a newer state with older weights; load_checkpoint detects that
    # through the step stored in both.
    done: list[tuple[str, Path]] = []
    try:
        if trainer_state is not None:
            sp = state_path(path)
            done.append((_write_tmp(sp, lambda tmp: torch.save(dict(trainer_state), tmp)), sp))
        done.append((_write_tmp(path, lambda tmp: save_file(tensors, tmp, metadata=header)), path))
    except BaseException:
        for tmp, _ in done:
            os.unlink(tmp)
        raise
    for tmp, target in done:
        os.replace(tmp, target)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata stored in a checkpoint's header (config, dataset, step...)."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise _corrupt(path, err) from None
    return json.loads(meta.get("medgan", "{}"))


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return path


def _corrupt(path: Path, err: Exception) -> CheckpointError:
    with open(path, "rb") as fh:
        head = fh.read(2)
    hint = ""
    if head[:1] == b"\x80" or head == b"PK":
        hint = (" It looks like a pickle/torch.save file: medgan never unpickles weights. "
                "Convert it with a trusted script to safetensors first.")
    return CheckpointError(
        f"{path} is not a valid safetensors checkpoint (truncated, corrupt or another "
        f"format; {path.stat().st_size} bytes): {err}.{hint}"
    )


def load_checkpoint(
    path: str | os.PathLike,
    modules: Mapping[str, nn.Module] | None = None,
    *,
    strict: bool = True,
    with_state: bool = False,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load weights from ``path`` into ``modules`` (in place) and return what was stored.

    Args:
        path: a ``.safetensors`` file written by :func:`save_checkpoint`.
        modules: name -> module to fill; missing or unexpected keys raise when ``strict``.
        strict: passed to ``load_state_dict``.
        with_state: also read the trainer state (``.state.pt``) beside the weights.
        map_location: device for the loaded tensors.

    Returns:
        ``{"metadata": dict, "tensors": dict, "state": dict | None}``.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, a pickle, or does not match.
    """
    path = _existing(path)
    try:
        tensors = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _corrupt(path, err) from None
    meta = read_metadata(path)
    for name, module in (modules or {}).items():
        prefix = f"{name}."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sub:
            raise CheckpointError(f"{path} holds no weights for module '{name}' "
                                  f"(it has: {sorted({k.split('.')[0] for k in tensors})})")
        try:
            module.load_state_dict(sub, strict=strict)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights for '{name}' do not fit the model: {err}") from None
    state = None
    if with_state:
        state = load_state(state_path(path), map_location=map_location)
        if "step" in meta and state.get("step") != meta["step"]:
            raise CheckpointError(
                f"{path} (step {meta['step']}) and its state file (step {state.get('step')}) "
                "disagree: the run was killed between the two writes. Delete both to restart."
            )
    return {"metadata": meta, "tensors": tensors, "state": state}


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a trainer-state file with ``weights_only=True`` (refuses code-carrying pickles)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no trainer state at {path} (needed to resume)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it contains objects other than tensors and plain data, "
            f"so it was not written by medgan and may run code if unpickled ({err})."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is truncated or corrupt: {err}") from None
