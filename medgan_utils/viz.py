"""Plots every notebook uses: image grids, real-vs-fake panels, loss curves.

Introduced in ``notebooks/00_getting_started.ipynb``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.utils import make_grid


def to_display(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W) or (B, H, W, 3) floats in [0, 1] for imshow."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)


def grid(images: torch.Tensor, nrow: int = 8) -> np.ndarray:
    """Tile (B, C, H, W) images in [-1, 1] into one (H', W', 3) array in [0, 1]."""
    g = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, normalize=True,
                  value_range=(-1, 1), padding=1, pad_value=1.0)
    return g.permute(1, 2, 0).numpy()


def show_grid(images: torch.Tensor, title: str = "", nrow: int = 8, ax=None):
    """Show a grid of images in [-1, 1]; returns the matplotlib axis."""
    if ax is None:
        side = max(2.5, 0.45 * nrow)
        _, ax = plt.subplots(figsize=(side, side * images.shape[0] / nrow / nrow + 0.3))
    ax.imshow(grid(images, nrow), cmap="gray", interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    return ax


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> Path:
    """Write a grid of images in [-1, 1] as a PNG (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, grid(images, nrow))
    return path


def real_vs_fake(real: torch.Tensor, fake: torch.Tensor, nrow: int = 8, titles=("real", "generated")):
    """Two grids side by side: the picture every training notebook ends with."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    show_grid(real[: nrow * nrow], titles[0], nrow, axes[0])
    show_grid(fake[: nrow * nrow], titles[1], nrow, axes[1])
    fig.tight_layout()
    return fig


def plot_history(records: Sequence[Mapping[str, float]], keys: Sequence[str] | None = None,
                 ax=None, title: str = "", logy: bool = False, ylabel: str = "value"):
    """Loss curves from ``History.records`` (one line per key), both axes labelled."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    keys = keys or sorted({k for r in records for k in r} - {"step", "wall_s", "diverged"})
    for key in keys:
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key)
    ax.set_xlabel("generator step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def markdown_table(rows: Mapping[str, Mapping[str, float]], keys: Sequence[str] | None = None,
                   digits: int = 3) -> str:
    """A markdown table, one row per name (display it with ``IPython.display.Markdown``)."""
    keys = list(keys or sorted({k for r in rows.values() for k in r}))
    lines = ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in rows.items():
        cells = []
        for k in keys:
            v = row.get(k, "")
            cells.append(f"{v:.{digits}g}" if isinstance(v, float) else str(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# What a chapter records of evaluation.score_generator's output (results/<notebook>.json), for both
# feature spaces: the headline fd_ratio with its parts, KID beside its own floor (KID is unbiased,
# so it suits small samples, but it is not 0 for real data either), precision (fidelity), recall
# and coverage (diversity), the test split's shift as a labelled second number, and memorization.
_PER_SPACE = ("fd", "floor_fd", "fd_ratio", "kid_mean", "floor_kid_mean", "precision", "recall",
              "coverage", "floor_recall")
METRIC_KEYS = tuple(f"{space}_{m}" for space in ("classifier", "autoencoder") for m in _PER_SPACE) + (
    "classifier_test_shift_fd", "classifier_floor_test_fd", "classifier_frac_closer_to_train",
    "classifier_copy_frac")
# The columns of a score table in the notebooks: FD/floor, recall and precision in each space.
TABLE_KEYS = ("classifier_fd_ratio", "classifier_precision", "classifier_recall",
              "autoencoder_fd_ratio", "autoencoder_precision", "autoencoder_recall")


# -- samples of the same latents over training (notebook 01) ------------------------------------


class FixedNoiseGrids:
    """A :func:`~medgan_utils.train.fit` callback that keeps samples of the *same* latents.

    Every ``every`` steps it draws ``n`` samples from the model with a private
    ``torch.Generator`` seeded with ``seed`` (so the same ``z`` each time, and the training's
    random stream is never touched: a run with the callback trains exactly like one without),
    keeps them in :attr:`frames` (step -> (n, C, H, W) in [-1, 1], on the CPU) and, with
    ``out_dir``, writes ``fixed_step_XXXXXX.png``. It returns nothing, so ``fit`` logs nothing
    extra. Use it through :func:`fixed_noise_callback`.
    """

    def __init__(self, every: int, n: int = 16, seed: int = 0,
                 out_dir: str | os.PathLike | None = None):
        if every < 1 or n < 1:
            raise ValueError(f"every and n must be >= 1, got every={every}, n={n}")
        self.every, self.n, self.seed = every, n, seed
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.frames: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def samples(self, model) -> torch.Tensor:
        """``n`` samples of the fixed latents: ``model.sample`` if it has one, else its first visual."""
        g = torch.Generator().manual_seed(self.seed)
        if callable(getattr(model, "sample", None)):
            return model.sample(self.n, generator=g).detach().cpu()
        return next(iter(model.visuals(generator=g).values()))[: self.n].detach().cpu()

    def __call__(self, step: int, model, logs: Mapping[str, float] | None = None) -> None:
        self.frames[step] = self.samples(model)
        if self.out_dir is not None:
            save_image_grid(self.frames[step], self.out_dir / f"fixed_step_{step:06d}.png",
                            nrow=int(np.ceil(np.sqrt(self.n))))

    def callback(self) -> tuple[int, FixedNoiseGrids]:
        """The ``(every, fn)`` pair ``fit(callbacks=[...])`` takes."""
        return self.every, self


def fixed_noise_callback(every: int, n: int = 16, seed: int = 0, model=None,
                         out_dir: str | os.PathLike | None = None) -> FixedNoiseGrids:
    """Grids of the same ``n`` latents every ``every`` steps of ``fit``; with ``model`` the
    untrained generator is recorded as step 0 right away.

    Example::

        grids = fixed_noise_callback(every=100, n=16, model=gan)
        fit(gan, loader, FitConfig(steps=800), callbacks=[grids.callback()])
        show_fixed_noise(grids.frames)
    """
    grids = FixedNoiseGrids(every, n, seed, out_dir)
    if model is not None:
        grids(0, model)
    return grids


def show_fixed_noise(frames: Mapping[int, torch.Tensor], axes=None, label: str = "fixed z",
                     nrow: int | None = None, max_frames: int = 9):
    """A strip of grids, one per recorded step (at most ``max_frames``, evenly spaced, always the
    first and the last), each labelled ``step N`` under it; ``label`` names the row."""
    steps = sorted(frames)
    if len(steps) > max_frames:
        idx = np.unique(np.linspace(0, len(steps) - 1, max_frames).round().astype(int))
        steps = [steps[i] for i in idx]
    if axes is None:
        _, axes = plt.subplots(1, len(steps), figsize=(1.6 * len(steps), 1.9))
    axes = np.atleast_1d(axes)
    for ax, s in zip(axes, steps):
        x = frames[s]
        ax.imshow(grid(x, nrow or int(np.ceil(np.sqrt(len(x))))), cmap="gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"step {s}", fontsize=8)
    for ax in axes[len(steps):]:
        ax.axis("off")
    axes[0].set_ylabel(label, fontsize=8)
    return axes
