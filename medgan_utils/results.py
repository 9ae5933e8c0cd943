"""``results/<notebook>.json``: the numbers a notebook reports, written by one helper.

Every notebook ends with ``run.finish(metrics)``; the file records what produced the numbers
(params, commit, versions, device, wall time, peak memory) so the reproducibility command can
re-run the notebook with papermill and compare ``metrics`` within tolerances.

Introduced in ``notebooks/00_getting_started.ipynb``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .utils import REPO_ROOT, get_device, git_commit, machine, versions, write_json

RESULTS_DIR = REPO_ROOT / "results"
QUICK_RESULTS_DIR = REPO_ROOT / "runs" / "quick_results"

# Published yardsticks the findings cite: MedMNIST v2's ResNet-18 (28 px) test AUC and ACC
# (Yang et al. 2023, Scientific Data 10:41, Table 3).
MEDMNIST_RESNET18_28 = {"pneumoniamnist": {"auc": 0.944, "acc": 0.854},
                        "breastmnist": {"auc": 0.901, "acc": 0.863}}


# -- result keys: built and parsed here only ---------------------------------------------------
# A metric's name is its path: "<model or data set>/<setting>/.../<statistic>", e.g.
# "wgan_gp/fd_ratio", "dcgan/lr0.001/recall_mean" or "0.1/real+syn1:1/auc_gain_mean".


def key(*parts: Any) -> str:
    """``key("0.1", "real", "auc_mean") == "0.1/real/auc_mean"``; floats print as ``0.1``, ``1``."""
    return "/".join(f"{p:g}" if isinstance(p, float) else str(p) for p in parts)


def title_key(title: str) -> str:
    """A plot title as a key: ``"saturating, lr 2e-3 (10 steps)"`` -> ``"saturating/lr_2e-3"``."""
    return title.split(" (")[0].replace(", ", "/").replace(" ", "_")


def run_key(name: str, seed: int) -> str:
    """A grid run's key: ``run_key("dcgan/lr0.001", 1) == "dcgan/lr0.001/seed1"``."""
    return f"{name}/seed{seed}"


def split_run_key(run: str) -> tuple[str, int]:
    """``"dcgan/lr0.001/seed1"`` -> ``("dcgan/lr0.001", 1)``."""
    name, seed = run.rsplit("/seed", 1)
    return name, int(seed)


def groups(metrics: Mapping[str, Any]) -> list[str]:
    """The distinct names before each key's last part (the rows of a grid's table)."""
    return sorted({k.rsplit("/", 1)[0] for k in metrics if "/" in k})


def heads(metrics: Mapping[str, Any], ending: str) -> list[str]:
    """The first parts of the keys that end in ``/ending``, in numeric order where numeric:
    ``heads(m, "real/auc_mean") == ["0.05", "0.1", "0.25", "1"]`` for chapter 04's study."""
    found = {k.split("/", 1)[0] for k in metrics if k.endswith("/" + ending)}

    def order(h: str):
        try:
            return (0, float(h), h)
        except ValueError:
            return (1, 0.0, h)

    return sorted(found, key=order)


def under(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The metrics whose key starts with ``prefix/``, with that prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in metrics.items() if k.startswith(prefix + "/")}


def results_dir(quick: bool = False) -> Path:
    """Where results go: ``$MEDGAN_RESULTS_DIR`` if set, else ``results/``, except that quick
    (smoke) runs write to ``runs/quick_results/`` so they never overwrite the real numbers."""
    if os.environ.get("MEDGAN_RESULTS_DIR"):
        return Path(os.environ["MEDGAN_RESULTS_DIR"])
    return QUICK_RESULTS_DIR if quick else RESULTS_DIR


def quick_mode(quick: bool = False) -> bool:
    """True when the notebook's ``quick`` parameter or ``$MEDGAN_QUICK=1`` asks for a seconds-long run."""
    return bool(quick) or os.environ.get("MEDGAN_QUICK", "0") not in ("", "0", "false", "False")


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak memory of this process: GPU memory allocated on CUDA, else the process's max RSS."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _flat(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, name + "/"))
        elif isinstance(value, (bool, int, float)) or hasattr(value, "item"):
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(f"metric {name} is {v}: results must be finite numbers")
            out[name] = v
        else:
            raise TypeError(f"metric {name} must be a number, got {type(value).__name__}")
    return out


@dataclass
class NotebookRun:
    """Started at the top of a notebook, finished at the bottom: ``run.finish(metrics)``."""

    notebook: str
    params: dict[str, Any] = field(default_factory=dict)
    device: torch.device | None = None
    t0: float = field(default_factory=time.perf_counter)
    # The code that ran is the code at the start: a long run must not record a later commit.
    commit: str = field(default_factory=git_commit)

    def finish(self, metrics: Mapping[str, Any], out_dir: str | os.PathLike | None = None,
               extra: Mapping[str, Any] | None = None) -> Path:
        """Write ``results/<notebook>.json`` (atomically) and return its path.

        Args:
            metrics: name -> number; nested dicts are flattened to ``"a/b"`` names.
            extra: non-numeric facts to keep beside the metrics (tables, commands).
        """
        device = self.device or get_device()
        record = {
            "notebook": self.notebook,
            "params": {k: v for k, v in self.params.items()},
            "commit": self.commit,
            "versions": versions(),
            "device": str(device),
            "machine": machine(),
            "wall_s": round(time.perf_counter() - self.t0, 2),
            "peak_memory_mb": round(peak_memory_mb(device), 1),
            "metrics": _flat(metrics),
        }
        if extra:
            record["extra"] = dict(extra)
        out = Path(out_dir or results_dir(bool(self.params.get("quick"))))
        out.mkdir(parents=True, exist_ok=True)
        return write_json(out / f"{self.notebook}.json", record)


def start_run(notebook: str, params: Mapping[str, Any], device: torch.device | None = None) -> NotebookRun:
    """Begin timing a notebook; ``params`` are its parameters cell's values."""
    return NotebookRun(notebook, dict(params), device)


def combine_results(name: str, parts: Mapping[str, str], root: str | os.PathLike | None = None) -> Path:
    """Write ``results/<name>.json`` from several results files, e.g. one per data set.

    ``parts`` maps a prefix to a results name: ``{"breastmnist": "04_augmentation_breastmnist"}``.
    Metrics become ``"<prefix>/<metric>"``; each part's provenance (params, commit, versions,
    device, wall time, command) is kept under ``extra.parts``, so nothing about how each number
    was produced is lost. Missing parts are skipped; at least one must exist.
    """
    out = Path(root or RESULTS_DIR)
    found = {k: out / f"{v}.json" for k, v in parts.items() if (out / f"{v}.json").exists()}
    if not found:
        raise FileNotFoundError(f"none of {[f'{v}.json' for v in parts.values()]} exists in {out}")
    metrics, provenance = {}, {}
    for prefix, path in found.items():
        rec = json.loads(path.read_text())
        metrics.update({f"{prefix}/{k}": v for k, v in rec["metrics"].items()})
        provenance[prefix] = {"file": path.name, **{k: rec.get(k) for k in (
            "params", "commit", "versions", "device", "wall_s", "peak_memory_mb")},
            "command": rec.get("extra", {}).get("command")}
    record = {"notebook": name, "commit": git_commit(), "metrics": metrics,
              "wall_s": round(sum(p["wall_s"] or 0 for p in provenance.values()), 2),
              "extra": {"parts": provenance}}
    return write_json(out / f"{name}.json", record)


def load_results(notebook: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read ``results/<notebook>.json`` (e.g. to show the full experiment's table)."""
    path = Path(root or RESULTS_DIR) / f"{notebook}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist yet: run the command or notebook that "
                                "writes it (see the README's table of experiments)")
    return json.loads(path.read_text())
