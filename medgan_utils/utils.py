"""Environment helpers used by every notebook: seeding, device choice, version report.

Introduced in ``notebooks/00_getting_started.ipynb``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"  # shipped weights (safetensors, < 10 MB each)
RUNS_DIR = REPO_ROOT / "runs"  # training runs, resumable (git-ignored)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON atomically (a temporary file beside ``path``, then a rename),
    so a killed process never leaves a half-written file behind; returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a CPU run repeats bit for bit.

    Args:
        seed: any non-negative integer.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the enclosed CPU work on one intra-op thread, then restore the thread count.

    PyTorch's CPU convolution sums a weight gradient over the batch in one partial sum per
    thread, so the gradients (and, through early stopping, a small-data study's AUC by up to
    0.1) depend on how many threads the machine has; the forward pass and the input gradients
    of the course's classifier measured the same on one and two threads. A backward pass on one thread
    gives the same numbers whatever the core count or ``OMP_NUM_THREADS``, and the same as a run
    made with one thread throughout (so the committed one-thread numbers stand).
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)



def get_device(prefer: str | None = None) -> torch.device:
    """The best device here: CUDA, then Apple MPS, then CPU.

    Args:
        prefer: force a device ("cpu", "cuda", "mps"); ``$MEDGAN_DEVICE`` does the same.
    """
    prefer = prefer or os.environ.get("MEDGAN_DEVICE")
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def versions() -> dict[str, str]:
    """Versions of Python and the libraries whose behaviour the numbers depend on."""
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "monai", "medmnist", "numpy", "medgan-utils"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict[str, Any]:
    """What a CPU result depends on beyond the device's name, recorded in every results file: the
    vector instruction set torch dispatches to (``AVX2``, ``AVX512``...; MKL and oneDNN choose
    their kernels the same way, and each rounds differently), the CPU model, torch's threads."""
    import platform

    import torch

    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu,
            "torch_threads": int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())}



def git_commit(default: str = "unknown") -> str:
    """The commit of the checkout this package runs from, with ``+dirty`` if files of the package or
    of benchmarks/ differ from it or are not yet committed (the notebooks, the other code behind
    results files, are committed before they are executed)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
            text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "medgan_utils", "benchmarks"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return default


def print_config(device: torch.device | None = None) -> dict[str, str]:
    """Print (and return) versions, device and thread count, the first thing each notebook shows."""
    info = versions()
    info["device"] = str(device or get_device())
    info["torch_threads"] = str(torch.get_num_threads())
    info["platform"] = f"{platform.system()} {platform.machine()}"
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}} : {value}")
    sys.stdout.flush()
    return info
