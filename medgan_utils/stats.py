"""Confidence intervals: the one place the course turns a handful of seeds into an interval.

With 2-5 seeds the normal quantile 1.96 understates the uncertainty badly: the half-width of a
95 % interval for a mean of n values is ``t(0.975, n-1) * s / sqrt(n)``, and ``t(0.975, 4) =
2.776`` (42 % wider than 1.96), ``t(0.975, 1) = 12.7``. Every interval in the notebooks, the
results files and the article comes from :func:`mean_ci` (or :func:`paired_ci` for differences
of arms run with the same seeds), so its scope is stated once: it covers the variation of what
was repeated (the seeds), nothing that was held fixed.

Introduced in ``notebooks/03_wgan_gp.ipynb`` (seed spread of the grids) and used for chapter 04's
augmentation gains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

__all__ = ["CI", "mean_ci", "paired_ci", "t_quantile"]


def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for a mean of ``n`` values (``n - 1`` degrees of freedom)."""
    if n < 2:
        return float("nan")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(_st.t.ppf(0.5 + level / 2, n - 1))


@dataclass(frozen=True)
class CI:
    """A mean with the half-width of its t-interval; ``lo``/``hi`` its ends."""

    mean: float
    half: float
    n: int
    level: float = 0.95
    sd: float = float("nan")  # sample standard deviation (ddof=1); NaN for one value

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (False when undefined, n < 2)."""
        return math.isfinite(self.half) and (self.lo > 0 or self.hi < 0)

    def __str__(self) -> str:
        return f"{self.mean:.3g} ± {self.half:.2g} ({self.level:.0%} t-CI, n={self.n})"


def mean_ci(values: Sequence[float], level: float = 0.95) -> CI:
    """Mean of ``values`` and the half-width of its Student-t confidence interval.

    ``half = t(level, n-1) * std(ddof=1) / sqrt(n)``; NaN for fewer than two values (an
    interval from one run does not exist, and printing ``± 0`` would claim certainty).
    Non-finite values raise: a diverged run must be counted, not averaged.
    """
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.isfinite(x).all():
        raise ValueError(f"mean_ci got non-finite values {x.tolist()}; drop or count them first")
    sd = float(x.std(ddof=1)) if x.size > 1 else float("nan")
    half = t_quantile(x.size, level) * sd / math.sqrt(x.size) if x.size > 1 else float("nan")
    return CI(float(x.mean()), float(half), int(x.size), level, sd)


def paired_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> CI:
    """CI of the mean of ``a[i] - b[i]``: two arms run with the same seeds, paired by seed."""
    a, b = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_ci needs equal lengths (paired by seed), got {a.size} and {b.size}")
    return mean_ci(a - b, level)
