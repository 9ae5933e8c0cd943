"""Index splits: class-stratified subsets (small-data chapters) and simulated hospitals (federated).

Both work on label arrays only and return indices, so they apply to :class:`~.medmnist.Arrays`,
to a ``TensorLoader``'s images or to any data set with labels. Everything is a pure function of
its arguments: the same ``seed`` gives the same indices on every machine (NumPy's
``default_rng``/PCG64 stream is stable across platforms and versions).

Introduced in ``notebooks/`` chapters on data-efficient GANs (:func:`stratified_subset`) and
federated GANs (:func:`partition_clients`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np


def _class_ids(labels: np.ndarray | list) -> tuple[np.ndarray, int]:
    """Labels (N,), (N, 1) or multi-label (N, L) -> class ids (N,) in [0, K) and K.

    A multi-label row is one class (its exact label combination), so ChestMNIST-style labels
    are stratified by combination rather than by one arbitrary column.
    """
    y = np.asarray(labels)
    if y.ndim == 0 or len(y) == 0:
        raise ValueError("labels must be a non-empty array of shape (N,), (N, 1) or (N, L)")
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        _, ids = np.unique(y.reshape(len(y)), return_inverse=True)
    elif y.ndim == 2:
        _, ids = np.unique(y, axis=0, return_inverse=True)
    else:
        raise ValueError(f"labels must have shape (N,), (N, 1) or (N, L), got {y.shape}")
    ids = ids.reshape(len(y)).astype(np.int64)
    return ids, int(ids.max()) + 1


def _class_rng(seed: int, class_id: int) -> np.random.Generator:
    # One independent stream per (seed, class): a class's permutation does not depend on the
    # fraction asked for or on the other classes, which is what makes the subsets nested.
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(class_id)]))


def stratified_subset(labels: np.ndarray | list, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified random subset: each class keeps about ``fraction`` of its items.

    Each class is shuffled once per ``seed`` and its first ``max(1, round(fraction * n_class))``
    items are taken. Hence the subsets are *nested*: for one seed the 5 % subset is contained in
    the 10 % subset, so a "how much data does the GAN need" curve compares like with like.

    Args:
        labels: class labels, shape (N,) or (N, 1); multi-label (N, L) rows are stratified by
            their label combination.
        fraction: share of each class to keep, in (0, 1]. Every class present keeps at least 1.
        seed: the subset is a pure function of ``(labels, fraction, seed)``.

    Returns:
        int64 indices into ``labels``, sorted ascending (the subset keeps the original order).

    Raises:
        ValueError: ``fraction`` outside (0, 1] or badly shaped ``labels``.

    Example:
        >>> y = np.array([0] * 90 + [1] * 10)
        >>> idx = stratified_subset(y, 0.1, seed=0)
        >>> np.bincount(y[idx]).tolist()
        [9, 1]
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    ids, n_classes = _class_ids(labels)
    keep = []
    for c in range(n_classes):
        members = np.flatnonzero(ids == c)
        k = max(1, int(round(fraction * len(members))))
        keep.append(members[_class_rng(seed, c).permutation(len(members))[:k]])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def label_histogram(labels: np.ndarray | list, parts: list[np.ndarray]) -> np.ndarray:
    """Counts per part and class: an (n_parts, K) int64 table, the usual way to show non-IID-ness.

    Args:
        labels: the labels given to :func:`partition_clients`.
        parts: its output (one index array per client).
    """
    ids, n_classes = _class_ids(labels)
    return np.stack([np.bincount(ids[p], minlength=n_classes) for p in parts]).astype(np.int64)


def partition_clients(
    labels: np.ndarray | list,
    n_clients: int,
    scheme: Literal["iid", "dirichlet"] = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 10,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Split a data set among simulated hospitals (clients) for federated training.

    * ``"iid"``: a random permutation cut into ``n_clients`` parts whose sizes differ by at most
      one; every client sees the global label mix.
    * ``"dirichlet"``: the standard label-skew recipe (Hsu et al. 2019, "Measuring the effects of
      non-identical data distribution"; Li et al. 2022, NIID-Bench): for each class draw client
      shares ``p ~ Dir(alpha * 1)`` and cut that class's shuffled items at ``cumsum(p)``. Small
      ``alpha`` (0.1) gives hospitals that see mostly one class, large ``alpha`` (100) is close
      to IID. A draw in which some client has fewer than ``min_size`` items is redrawn (up to
      ``max_tries`` times, as in NIID-Bench); if all fail, items are moved one by one from the
      largest client to the smallest, so the guarantee always holds when it can.

    Every index in ``range(N)`` is assigned to exactly one client.

    Args:
        labels: class labels, shape (N,) or (N, 1); multi-label (N, L) rows count as one class
            per label combination.
        n_clients: number of clients, >= 1.
        scheme: ``"iid"`` or ``"dirichlet"``.
        alpha: Dirichlet concentration (> 0); used by ``"dirichlet"`` only.
        seed: the partition is a pure function of the arguments.
        min_size: each client gets at least this many items (>= 0).
        max_tries: Dirichlet redraws before the repair step.

    Returns:
        ``n_clients`` int64 index arrays, each sorted ascending.

    Raises:
        ValueError: unknown ``scheme``, ``n_clients < 1``, ``alpha <= 0``, negative
            ``min_size``, or fewer than ``n_clients * min_size`` items.
    """
    ids, n_classes = _class_ids(labels)
    n = len(ids)
    if int(n_clients) != n_clients or n_clients < 1:
        raise ValueError(f"n_clients must be a positive integer, got {n_clients!r}")
    if scheme not in ("iid", "dirichlet"):
        raise ValueError(f"scheme must be 'iid' or 'dirichlet', got {scheme!r}")
    if scheme == "dirichlet" and not alpha > 0:
        raise ValueError(f"alpha must be > 0 (small = more skewed), got {alpha!r}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size!r}")
    if n < n_clients * min_size:
        raise ValueError(
            f"cannot give {n_clients} clients at least {min_size} items each from {n} items; "
            f"lower min_size or n_clients"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), n_clients)
        return [np.sort(p).astype(np.int64) for p in parts]

    by_class = [np.flatnonzero(ids == c) for c in range(n_classes)]
    for _ in range(max(1, max_tries)):
        buckets: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for members in by_class:
            members = rng.permutation(members)
            shares = rng.dirichlet(np.full(n_clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for j, chunk in enumerate(np.split(members, cuts)):
                buckets[j].append(chunk)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) >= min_size:
            break
    else:
        parts = _repair(parts, min_size, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _repair(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    # Last resort after max_tries redraws (tiny data, tiny alpha, many clients): move random items
    # from the largest client to the smallest. Taking from the largest disturbs the label skew
    # least, and it terminates because n >= n_clients * min_size was checked.
    parts = [rng.permutation(p) for p in parts]
    while True:
        sizes = [len(p) for p in parts]
        small, large = int(np.argmin(sizes)), int(np.argmax(sizes))
        if sizes[small] >= min_size:
            return parts
        parts[small] = np.append(parts[small], parts[large][-1])
        parts[large] = parts[large][:-1]
