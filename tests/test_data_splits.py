"""Stratified subsets and federated client partitions: proportions, determinism, coverage."""

from __future__ import annotations

import numpy as np
import pytest

from medgan_utils.data import label_histogram, partition_clients, stratified_subset

# Imbalanced like the MedMNIST sets (PneumoniaMNIST is ~3:1, BreastMNIST ~1:3).
LABELS = np.repeat([0, 1, 2], [600, 300, 100])


def _skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    hist = label_histogram(labels, parts).astype(float)
    local = hist / hist.sum(1, keepdims=True)
    global_ = np.bincount(labels) / len(labels)
    return float(np.mean(0.5 * np.abs(local - global_).sum(1)))


# --------------------------------------------------------------------------- stratified_subset


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5])
def test_stratified_subset_keeps_each_class_proportion(fraction):
    idx = stratified_subset(LABELS, fraction, seed=0)
    counts = np.bincount(LABELS[idx], minlength=3)
    expected = np.round(fraction * np.array([600, 300, 100]))
    np.testing.assert_array_equal(counts, expected)
    assert len(np.unique(idx)) == len(idx)
    assert np.all(np.diff(idx) > 0)  # sorted: the subset keeps the original order


def test_stratified_subset_is_deterministic_and_seed_dependent():
    a = stratified_subset(LABELS, 0.1, seed=3)
    np.testing.assert_array_equal(a, stratified_subset(LABELS, 0.1, seed=3))
    assert not np.array_equal(a, stratified_subset(LABELS, 0.1, seed=4))


def test_stratified_subsets_are_nested_across_fractions():
    small = stratified_subset(LABELS, 0.05, seed=7)
    large = stratified_subset(LABELS, 0.10, seed=7)
    assert set(small) <= set(large)
    assert len(large) > len(small)


def test_stratified_subset_keeps_at_least_one_per_class_and_accepts_n_by_1():
    labels = np.array([0] * 200 + [1] * 3)[:, None]  # MedMNIST's (N, 1) label layout
    idx = stratified_subset(labels, 0.01, seed=0)
    assert np.bincount(labels[idx, 0]).tolist() == [2, 1]
    np.testing.assert_array_equal(stratified_subset(labels, 1.0, seed=0), np.arange(203))


def test_stratified_subset_multilabel_rows_are_classes():
    labels = np.array([[1, 0]] * 40 + [[0, 1]] * 20 + [[1, 1]] * 10)
    idx = stratified_subset(labels, 0.5, seed=0)
    rows, counts = np.unique(labels[idx], axis=0, return_counts=True)
    found = {tuple(r): c for r, c in zip(rows.tolist(), counts.tolist(), strict=True)}
    assert found == {(0, 1): 10, (1, 0): 20, (1, 1): 5}


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_stratified_subset_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        stratified_subset(LABELS, fraction, seed=0)


# --------------------------------------------------------------------------- partition_clients


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_every_index_assigned_exactly_once(scheme):
    parts = partition_clients(LABELS, 5, scheme=scheme, alpha=0.3, seed=1)
    assert len(parts) == 5
    everything = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(LABELS)))
    assert all(p.dtype == np.int64 for p in parts)


def test_iid_sizes_equal_and_label_mix_global():
    parts = partition_clients(LABELS, 4, scheme="iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert _skew(LABELS, parts) < 0.06


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partition_is_deterministic_and_seed_dependent(scheme):
    a = partition_clients(LABELS, 4, scheme=scheme, seed=11)
    b = partition_clients(LABELS, 4, scheme=scheme, seed=11)
    c = partition_clients(LABELS, 4, scheme=scheme, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_small_alpha_is_more_skewed_than_large_alpha():
    for seed in range(3):
        skewed = _skew(LABELS, partition_clients(LABELS, 5, "dirichlet", alpha=0.1, seed=seed))
        near_iid = _skew(LABELS, partition_clients(LABELS, 5, "dirichlet", alpha=100.0, seed=seed))
        assert skewed > 0.25 > 0.08 > near_iid


def test_dirichlet_respects_min_size_even_when_hard():
    # Tiny alpha, many clients, few items: redraws rarely succeed, the repair step must.
    labels = np.repeat([0, 1], [30, 10])
    parts = partition_clients(labels, 8, "dirichlet", alpha=0.01, seed=0, min_size=5)
    assert min(len(p) for p in parts) >= 5
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(40))


def test_label_histogram_counts():
    parts = [np.array([0, 1, 600]), np.array([999])]
    np.testing.assert_array_equal(label_histogram(LABELS, parts), [[2, 1, 0], [0, 0, 1]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_clients": 0}, "n_clients"),
        ({"n_clients": 2.5}, "n_clients"),
        ({"n_clients": 3, "scheme": "pathological"}, "scheme"),
        ({"n_clients": 3, "scheme": "dirichlet", "alpha": 0}, "alpha"),
        ({"n_clients": 3, "min_size": -1}, "min_size"),
        ({"n_clients": 200, "min_size": 10}, "at least 10"),
    ],
)
def test_partition_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        partition_clients(LABELS, **kwargs)


def test_bad_labels_rejected():
    with pytest.raises(ValueError, match="labels"):
        partition_clients(np.array([]), 2)
    with pytest.raises(ValueError, match="labels"):
        stratified_subset(np.zeros((4, 2, 2)), 0.5)
