"""medgan_utils.evaluation: the reference, two feature spaces, the cache, the calibration battery
and the shipped generators' ranking (issue #8, section 1).

The data-set tests need the real MedMNIST files (skipped without them) and the shipped
checkpoints. They share one feature cache (``runs/feature_cache/``): cold, they take ~1 min on a
2-core CPU, mostly the classifier's forward passes; warm, ~30 s. Battery sizes: n = 500 on
PneumoniaMNIST (the degraded sets sit >= 3x the floor, far outside the floor's +-50 % spread at
that n) and the whole BreastMNIST training part (272 images).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from medgan_utils import evaluation as ev
from medgan_utils.metrics import copy_fraction
from medgan_utils.models.autoencoder import Autoencoder, AutoencoderConfig, AutoencoderModel

DATASETS = ("pneumoniamnist", "breastmnist")
# The floor set is one draw of the training part; the floor is the mean of ev.FLOOR_DRAWS draws.
FLOOR_TOLERANCE = 0.5  # |ratio - 1| allowed for a real draw (observed: <= 0.3 at n = 500)
# Pairs (milder, harsher) that must score in this order.
MONOTONE = list(ev.BATTERY_ORDER)
DEGRADED = [name for pair in MONOTONE for name in pair] + ["one_class"]


# ------------------------------------------------------------------ no data needed


def test_autoencoder_shapes_range_and_gradients():
    net = Autoencoder(AutoencoderConfig())
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    out = net(x)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert net.features(x).shape == (4, 66)  # bottleneck + 2 residual energies
    net.reconstruction_loss(x).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_autoencoder_step_changes_weights_and_standardises():
    torch.manual_seed(0)
    net = Autoencoder(AutoencoderConfig(width=8, latent_dim=16))
    model = AutoencoderModel(net)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    logs = model.train_step(iter([(x, torch.zeros(8))]))
    assert math.isfinite(logs["loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    net.set_feature_stats(x)
    f = net.features(x).detach()
    assert torch.allclose(f.mean(0), torch.zeros(18), atol=1e-4)
    assert torch.allclose(f.std(0), torch.ones(18), atol=1e-3)


def test_copy_fraction_catches_copies_only():
    g = torch.Generator().manual_seed(0)
    train, held, fresh = (torch.randn(n, 8, generator=g) for n in (400, 200, 200))
    copies = train[:100]
    assert copy_fraction(train, held, copies)["copy_frac"] == 1.0
    assert copy_fraction(train, held, fresh, quantile=0.05)["copy_frac"] < 0.15


def test_missing_autoencoder_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_autoencoder"):
        ev.load_autoencoder("pneumoniamnist", 28, root=tmp_path)


# ------------------------------------------------------------------ real data


@functools.cache
def _battery(dataset: str, space: str) -> dict:
    return ev.calibration_battery(dataset, space=space, n=500, seed=0)


@pytest.fixture(scope="module")
def data(medmnist_root):
    """The real data (skips without it); MEDMNIST_ROOT points the loaders at it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDMNIST_ROOT", str(medmnist_root))
    yield medmnist_root
    mp.undo()


def test_reference_is_val_or_documented_heldout(data):
    _, desc = ev.reference_split("pneumoniamnist")
    assert "validation split (n=524)" in desc
    ref, desc = ev.reference_split("breastmnist")
    part, labels = ev.training_part("breastmnist")
    assert "validation has only 78" in desc and len(ref) + len(part) == 546
    assert len(ref) == 274 and len(labels) == len(part)


@pytest.mark.parametrize("space", ev.SPACES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_battery_calibrated(data, dataset, space):
    b = _battery(dataset, space)
    assert abs(b["floor"]["fd_ratio"] - 1) <= FLOOR_TOLERANCE
    assert abs(b["floor_seed1"]["fd_ratio"] - 1) <= FLOOR_TOLERANCE
    for name in DEGRADED:
        # Above the floor by more than two standard deviations of the floor's own draws (at the
        # set's n). The weakest case is BreastMNIST's one-class set in the autoencoder space
        # (~1.1x): a label-free space barely tells benign from malignant at 28 px.
        r = b[name]
        assert r["fd_ratio"] > 1 + 2 * r["floor_fd_std"] / r["floor_fd"], (name, r["fd_ratio"])
        assert r["fd_ratio"] > 1.05, (name, r["fd_ratio"])
    for mild, harsh in MONOTONE:
        assert b[harsh]["fd_ratio"] > b[mild]["fd_ratio"], (mild, harsh)
    # Exact copies of training images are caught (copy_frac uses all of train).
    assert b["copies"]["copy_frac"] > 0.95


def test_score_generator_reports_reference_and_equal_n(data):
    fakes = torch.rand(400, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = ev.score_generator(fakes, "breastmnist", kid_subsets=5)
    assert out["reference_code"] == "train-heldout0.5-seed0" and out["n_fakes"] == 400
    for space in ev.SPACES:
        assert out[f"{space}_n"] == 272  # capped at the training part: the floor has equal n
        assert out[f"{space}_fd_ratio"] > 5  # noise is no X-ray
        assert out[f"{space}_fd_ratio"] == pytest.approx(out[f"{space}_fd"] / out[f"{space}_floor_fd"])
        assert {f"{space}_test_shift_fd", f"{space}_floor_test_fd", f"{space}_copy_frac",
                f"{space}_kid_mean", f"{space}_coverage"} <= out.keys()


def test_feature_cache_roundtrip(data, tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "FEATURE_CACHE_DIR", tmp_path)
    ev.clear_cache()
    first = ev.real_features("autoencoder", "breastmnist", "val")
    files = list(tmp_path.glob("autoencoder_breastmnist_28_val_*.safetensors"))
    assert len(files) == 1 and first.shape == (78, 66)
    ev.clear_cache()  # memory only: the next call reads the file
    assert torch.equal(ev.real_features("autoencoder", "breastmnist", "val"), first)
    ev.clear_cache()


@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_generators_rank_as_their_grids(data, dataset):
    fakes = {g: ev.sample_shipped(f"{g}_{dataset}_28", 1000, seed=0)
             for g in ("gan", "dcgan", "wgan-gp")}
    scores = {g: ev.score_generator(x, dataset, kid_subsets=0) for g, x in fakes.items()}
    for space in ev.SPACES:
        r = {g: s[f"{space}_fd_ratio"] for g, s in scores.items()}
        assert r["gan"] > 2 * max(r["dcgan"], r["wgan-gp"]), (space, r)  # the MLP GAN is far worst
        if dataset == "pneumoniamnist":
            assert r["wgan-gp"] > r["dcgan"], (space, r)  # its grids are blotchier (issue #8)
    # BreastMNIST (272 training images, --holdout-reference): DCGAN and WGAN-GP are within one
    # another's draw-to-draw spread in both spaces (chapter 03 shows it), so no order is asserted.


def test_generators_train_on_the_part_that_is_not_the_reference(data):
    from medgan_utils.data import load_arrays

    breast = load_arrays("breastmnist", "train", 28)
    part = ev.generator_training_arrays(breast)
    images, _ = ev.training_part("breastmnist")
    assert len(part) == len(images) < len(breast)  # BreastMNIST: the reference half is held out
    assert torch.equal(part.tensors(), images)
    pneu = load_arrays("pneumoniamnist", "train", 28)
    assert ev.generator_training_arrays(pneu) is pneu  # reference is the validation split
    with pytest.raises(ValueError, match="training split"):
        ev.generator_training_arrays(load_arrays("breastmnist", "test", 28))


# ------------------------------------------------------------------ per class (chapter 04)


@functools.cache
def _pneumonia_part() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = ev.training_part("pneumoniamnist")
    return images, torch.as_tensor(labels)


def _per_class(images, labels, n=300):
    return ev.score_per_class(images, labels, "pneumoniamnist", n=n, kid_subsets=5)["classes"]


def test_per_class_real_images_score_at_their_floor(data):
    images, labels = _pneumonia_part()
    g = torch.Generator().manual_seed(7)  # other images than the floor's first draw
    pick = torch.cat([torch.nonzero(labels == c).view(-1)[torch.randperm(int((labels == c).sum()), generator=g)[:300]]
                      for c in (0, 1)])
    out = ev.score_per_class(images[pick], labels[pick], "pneumoniamnist", n=300, kid_subsets=5)
    assert out["labels"] == "conditioning" and "validation split" in out["reference"]
    rows = out["classes"]
    assert set(rows) == {"normal", "pneumonia"}
    assert rows["normal"]["n_ref"] == 135 and rows["pneumonia"]["n_ref"] == 389  # validation split
    for name, r in rows.items():
        assert r["n"] == 300 and r["share"] == 0.5
        for space in ev.SPACES:
            assert abs(r[f"{space}_recall"] - r[f"{space}_floor_recall"]) < 0.1, (name, space, r)
            assert abs(r[f"{space}_coverage"] - r[f"{space}_floor_coverage"]) < 0.1, (name, space, r)
            assert abs(r[f"{space}_kid_mean"]) < 0.05 + 5 * r[f"{space}_kid_std"], (name, space, r)
            assert f"{space}_fd" not in r  # FD at 135 images of 64-128 features: rank-deficient


def test_per_class_catches_a_collapsed_class_and_a_missing_one(data):
    images, labels = _pneumonia_part()
    normal, pneu = images[labels == 0][:300], images[labels == 1][:300]
    g = torch.Generator().manual_seed(0)
    # "normal" collapsed to one prototype (+ faint noise), "pneumonia" drawn from real images.
    proto = (normal[:1] + 0.02 * torch.randn(300, *normal.shape[1:], generator=g)).clamp(-1, 1)
    rows = _per_class(torch.cat([proto, pneu]), torch.tensor([0] * 300 + [1] * 300))
    for space in ev.SPACES:
        assert rows["normal"][f"{space}_recall"] < 0.1 < rows["pneumonia"][f"{space}_recall"]
        assert rows["normal"][f"{space}_recall_ratio"] < 0.1
        assert rows["normal"][f"{space}_coverage"] < 0.2 * rows["normal"][f"{space}_floor_coverage"]
    # A generator that ignores its label and always draws pneumonia: "normal" is missing. The
    # classifier's space separates the classes; the label-free space hardly does at 28 px.
    # Recall is not ~0 here (observed 0.25 against 0.96): a few outlying pneumonia images have
    # k-NN balls wide enough to reach normal ones. Coverage, which uses the real balls, is ~0.1.
    rows = _per_class(torch.cat([pneu, pneu.flip(-1)]), torch.tensor([0] * 300 + [1] * 300))
    r = rows["normal"]
    assert r["classifier_recall"] < 0.4 * r["classifier_floor_recall"], r
    assert r["classifier_coverage"] < 0.2 * r["classifier_floor_coverage"], r
    assert r["classifier_kid_mean"] > 10 * abs(r["classifier_floor_kid_mean"]) + 3 * r["classifier_kid_std"], r


def test_per_class_labels_an_unconditional_generator_with_the_classifier(data):
    images, labels = _pneumonia_part()
    x = images[:600]
    out = ev.score_per_class(x, None, "pneumoniamnist", n=100, kid_subsets=0, spaces=("autoencoder",))
    assert out["labels"] == "classifier"
    predicted = ev.classifier_labels(x, "pneumoniamnist")
    assert (predicted == labels[:600].numpy()).mean() > 0.9  # the shipped classifier knows train
    assert out["classes"]["normal"]["share"] == pytest.approx((predicted == 0).mean())
    with pytest.raises(ValueError, match="labels for"):
        ev.score_per_class(x, labels[:10], "pneumoniamnist")
    with pytest.raises(ValueError, match="exceed k=5"):  # no fakes of "normal"
        ev.score_per_class(x[:50], torch.ones(50), "pneumoniamnist", kid_subsets=0)


def test_membership_audit_betrays_a_copying_generator_and_not_the_shipped_dcgan(data):
    members, _ = ev.training_part("pneumoniamnist")
    members = members[:400]  # a generator trained on these 400 images only ...
    copies = ev.membership_audit(members.repeat(3, 1, 1, 1), "pneumoniamnist", member_images=members)
    assert copies["mia_auc"] > 0.95 and copies["n"] == 400.0  # ... that copies them is caught
    dcgan = ev.membership_audit(ev.sample_shipped("dcgan_pneumoniamnist_28", 2000, seed=0), "pneumoniamnist")
    assert abs(dcgan["mia_auc"] - 0.5) < 0.1 and dcgan["n"] == 524.0  # members: train, subsampled to val's 524
