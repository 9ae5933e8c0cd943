"""Chapter 04's study (medgan_utils.augmentation): the arms, the statistics, resuming, and that
a changed generator re-runs only the arms that use it. Tiny budgets on real BreastMNIST."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from medgan_utils import augmentation as aug
from medgan_utils.classify import ClassifierTrainConfig
from medgan_utils.data import Arrays, load_arrays, stratified_subset
from medgan_utils.pretrained import load
from medgan_utils.results import combine_results, load_results

TINY_CLF = ClassifierTrainConfig(max_epochs=1, patience=1, batch_size=32, min_steps_per_epoch=2)


@pytest.fixture(scope="module")
def breast(medmnist_root):
    tr, va, te = (load_arrays("breastmnist", s, root=medmnist_root) for s in ("train", "val", "test"))
    # Small val/test keep each classifier fit to a fraction of a second.
    va = Arrays(va.name, va.split, va.size, va.images[:40], va.labels[:40])
    te = Arrays(te.name, te.split, te.size, te.images[:60], te.labels[:60])
    return tr, va, te


def tiny_gan(train, **overrides):
    cfg = aug.cgan_config(train, width=4, latent_dim=8, **overrides)
    x, y = train.images[:32], train.labels[:32]
    gan, _ = aug.train_cgan(x, y, cfg, steps=2, batch_size=16)
    return gan


def test_arm_data_sizes_labels_and_errors(breast):
    train, _, _ = breast
    x, y = train.images[:20], train.labels[:20]
    gan = tiny_gan(train)
    sizes = {arm: aug.arm_data(arm, x, y, gan, seed=0) for arm in aug.ARMS}
    assert {a: len(v[0]) for a, v in sizes.items()} == {
        "real": 20, "real+classic": 40, "synthetic": 20, "real+syn1:1": 40, "real+syn1:2": 60}
    for arm, (xi, yi) in sizes.items():
        assert xi.dtype == np.uint8 and xi.shape[1:] == x.shape[1:] and len(xi) == len(yi), arm
        # Class proportions are kept in every arm (synthetic labels copy the real ones).
        assert np.allclose(np.bincount(yi, minlength=2) / len(yi), np.bincount(y, minlength=2) / len(y)), arm
    assert np.array_equal(sizes["real+syn1:1"][0][:20], x)  # the real part is untouched
    with pytest.raises(ValueError, match="generator"):
        aug.arm_data("synthetic", x, y, None, seed=0)
    with pytest.raises(ValueError, match="unknown arm"):
        aug.arm_data("real+syn1:3", x, y, gan, seed=0)


def test_classic_copies_are_seeded_and_change_the_images(breast):
    x = breast[0].images[:16]
    a, b, c = aug.classic_copies(x, 0), aug.classic_copies(x, 0), aug.classic_copies(x, 1)
    assert a.shape == x.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a.astype(int) - x.astype(int)).mean() > 5  # really augmented


def test_synthesize_follows_the_requested_labels(breast):
    gan = tiny_gan(breast[0])
    labels = np.array([0, 1, 1, 0, 1])
    out = aug.synthesize(gan, labels, seed=3)
    assert out.shape == (5, 28, 28) and out.dtype == np.uint8
    assert np.array_equal(out, aug.synthesize(gan, labels, seed=3))
    # The same noise with the other label gives another image: the label is used.
    assert not np.array_equal(out, aug.synthesize(gan, 1 - labels, seed=3))


def test_cgan_steps_scale_with_sqrt_fraction():
    assert aug.cgan_steps(2000, 1.0) == 2000
    assert aug.cgan_steps(2000, 0.25) == 1000
    assert aug.cgan_steps(2000, 0.05) == 600  # the floor
    assert aug.cgan_steps(4, 0.05) == 4  # tiny budgets are not inflated to the floor


def test_study_gan_steps_default_per_dataset():
    assert aug.study_gan_steps("breastmnist") == 4000
    assert aug.study_gan_steps("pneumoniamnist") == 3000
    assert aug.study_gan_steps("dermamnist") == 2000
    assert aug.study_gan_steps("breastmnist", 123) == 123


def test_summarize_arms_pairs_by_seed_with_a_95_ci():
    runs = {"0.1": {
        "real": [{"seed": s, "auc": a, "acc": 0.5} for s, a in enumerate([0.70, 0.80, 0.75])],
        "real+syn1:1": [{"seed": s, "auc": a, "acc": 0.5} for s, a in enumerate([0.72, 0.83, 0.76])],
        "synthetic": [{"seed": s, "auc": a, "acc": 0.5} for s, a in enumerate([0.60, 0.70, 0.65])],
    }}
    m = aug.summarize_arms(runs)
    diff = np.array([0.02, 0.03, 0.01])
    assert m["0.1/real/auc_mean"] == pytest.approx(0.75)
    assert m["0.1/real/auc_std"] == pytest.approx(np.std([0.70, 0.80, 0.75], ddof=1))
    assert m["0.1/real+syn1:1/auc_gain_mean"] == pytest.approx(0.02)
    # Student's t at 2 degrees of freedom (4.303), not the normal 1.96: three seeds are few.
    assert m["0.1/real+syn1:1/auc_gain_ci95"] == pytest.approx(4.303 * diff.std(ddof=1) / math.sqrt(3), rel=1e-3)
    assert m["0.1/real/acc_ci95"] == 0.0  # no spread, no width; but present: three seeds
    assert m["0.1/tstr_over_trtr"] == pytest.approx(0.65 / 0.75)
    assert "0.1/synthetic/auc_gain_mean" not in m  # only real+... arms are gains over real


def test_experiment_resumes_and_a_new_generator_reruns_only_its_arms(breast, tmp_path, monkeypatch):
    train, val, test = breast
    small = dict(train=train, val=val, test=test, fractions=[0.05, 0.1], seeds=[0, 1], gan_steps=3,
                 work_dir=tmp_path, clf=TINY_CLF, log=lambda *a: None)
    first = aug.augmentation_experiment(**small, gan_overrides={"width": 4})
    assert first["gan_config"]["aux_weight"] == 1.0  # the chapter's default
    for frac, n in (("0.05", 27), ("0.1", 55)):
        assert first["gans"][frac]["n_real"] == n == len(stratified_subset(train.labels, float(frac)))
        assert set(first["per_fraction"][frac]) == set(aug.ARMS)
        assert [r["seed"] for r in first["per_fraction"][frac]["synthetic"]] == [0, 1]
        assert (tmp_path / f"cgan_{frac}.safetensors").exists()
    assert first["per_fraction"]["0.1"]["real+syn1:2"][0]["n_train"] == 3 * 55

    # Run again: nothing is trained or scored, the numbers are the stored ones.
    def boom(*a, **k):
        raise AssertionError("should have been resumed")
    monkeypatch.setattr(aug, "train_cgan", boom)
    monkeypatch.setattr(aug, "run_arms", boom)
    again = aug.augmentation_experiment(**small, gan_overrides={"width": 4})
    assert again["per_fraction"] == first["per_fraction"]
    monkeypatch.undo()

    # A different generator: a new cGAN per fraction, only the arms that use it are re-run.
    ran = []
    real_run_arms = aug.run_arms

    def spy(*args, **kwargs):
        ran.append(tuple(args[6]))
        return real_run_arms(*args, **kwargs)
    monkeypatch.setattr(aug, "run_arms", spy)
    changed = aug.augmentation_experiment(**small, gan_overrides={"width": 4, "aux_weight": 0.0})
    assert ran == [("synthetic", "real+syn1:1", "real+syn1:2")] * 2
    for frac in ("0.05", "0.1"):
        for arm in aug.GAN_FREE_ARMS:
            assert changed["per_fraction"][frac][arm] == first["per_fraction"][frac][arm]
        saved, _ = load(tmp_path / f"cgan_{frac}.safetensors")
        assert saved.config.aux_weight == 0.0
        stored = json.loads((tmp_path / f"fraction_{frac}.json").read_text())
        assert stored["gan_config"]["aux_weight"] == 0.0
    assert changed["gan_config"]["aux_weight"] == 0.0

    # Killed after the new cGAN was saved but before its scores were: the cGAN is reused,
    # yet its old-generator scores are not (they were made with another generator).
    ran.clear()
    rec = json.loads((tmp_path / "fraction_0.1.json").read_text())
    rec["gan_config"]["aux_weight"] = 1.0
    (tmp_path / "fraction_0.1.json").write_text(json.dumps(rec))
    monkeypatch.setattr(aug, "train_cgan", boom)
    resumed = aug.augmentation_experiment(**small, gan_overrides={"width": 4, "aux_weight": 0.0})
    assert ran == [("synthetic", "real+syn1:1", "real+syn1:2")]
    # Its training time comes from the saved cGAN's header, not from the stale record.
    assert resumed["gans"]["0.1"]["train_seconds"] == changed["gans"]["0.1"]["train_seconds"]


def test_combine_results_prefixes_metrics_and_keeps_provenance(tmp_path):
    for ds, v in (("breastmnist", 0.9), ("pneumoniamnist", 0.95)):
        (tmp_path / f"04_augmentation_{ds}.json").write_text(json.dumps({
            "notebook": f"04_augmentation_{ds}", "params": {"dataset": ds}, "commit": "abc",
            "versions": {}, "device": "cpu", "wall_s": 10.0, "peak_memory_mb": 1.0,
            "metrics": {"1/real/auc_mean": v}, "extra": {"command": f"medgan experiment augmentation --dataset {ds}"}}))
    parts = {ds: f"04_augmentation_{ds}" for ds in ("breastmnist", "pneumoniamnist", "dermamnist")}
    path = combine_results("04_augmentation", parts, root=tmp_path)
    rec = load_results("04_augmentation", root=tmp_path)
    assert path.name == "04_augmentation.json"
    assert rec["metrics"] == {"breastmnist/1/real/auc_mean": 0.9, "pneumoniamnist/1/real/auc_mean": 0.95}
    assert rec["extra"]["parts"]["pneumoniamnist"]["command"].endswith("pneumoniamnist")
    assert rec["wall_s"] == 20.0 and set(rec["extra"]["parts"]) == {"breastmnist", "pneumoniamnist"}
    with pytest.raises(FileNotFoundError, match="none of"):
        combine_results("x", {"a": "missing"}, root=tmp_path)


def test_shipped_cgans_are_conditional_and_trained_on_their_fraction(medmnist_root):
    from medgan_utils.utils import CHECKPOINT_DIR
    for ds in aug.AUGMENTATION_DATASETS:
        labels = load_arrays(ds, "train", root=medmnist_root).labels
        for frac in ("0.1", "1"):
            gan, meta = load(CHECKPOINT_DIR / f"cgan_{ds}_28_f{frac}.safetensors")
            assert gan.config.num_classes == 2 and meta["fraction"] == float(frac)
            assert meta["n_real"] == len(stratified_subset(labels, float(frac), seed=meta["subset_seed"]))
            assert meta["steps"] >= 600
            img = gan.sample(4, labels=torch.tensor([0, 1, 0, 1]), generator=torch.Generator().manual_seed(0))
            assert img.shape == (4, 1, 28, 28) and torch.isfinite(img).all()


def test_recipe_and_net_are_shared_by_every_arm():
    r = aug.downstream_recipe(seed=3)
    assert r.seed == 3 and r.augment and r.patience > 0
    assert replace(r, seed=0) == aug.downstream_recipe()
    assert aug.downstream_net(1, 2).num_classes == 2


def _scores(study: dict) -> dict:
    """Every number of a study except the wall-clock ones."""
    return {"summary": study["summary"],
            "per_fraction": {f: {a: [{k: v for k, v in r.items() if k != "train_seconds"} for r in runs]
                                 for a, runs in arms.items()} for f, arms in study["per_fraction"].items()},
            "gans": {f: {**{k: v for k, v in g.items() if k not in ("train_seconds", "history")},
                         "history": [{k: v for k, v in r.items() if k != "wall_s"} for r in g["history"]]}
                     for f, g in study["gans"].items()}}


def test_a_small_study_repeats_exactly_in_one_process(breast):
    # Same seed twice, with unrelated work between that draws from every global RNG: every
    # number (cGAN losses, AUC, ACC, best epochs, gains) is the same bit for bit.
    train, val, test = breast
    small = dict(train=train, val=val, test=test, fractions=[0.1], seeds=[0, 1], gan_steps=3,
                 clf=replace(TINY_CLF, max_epochs=2), log=lambda *a: None,
                 gan_overrides={"width": 4})
    first = aug.augmentation_experiment(**small)
    torch.randn(1000), np.random.rand(100), tiny_gan(train)
    second = aug.augmentation_experiment(**small)
    assert _scores(second) == _scores(first)


def test_classifier_weights_do_not_depend_on_the_cpu_thread_count(breast):
    # Notebook 04's live study gave real+classic AUC 0.740 on one thread and 0.641 on two:
    # CPU convolutions sum weight gradients per thread. The classifier's backward pass runs on
    # one thread, so its weights are bitwise equal whatever torch.get_num_threads() says.
    from medgan_utils.classify import train_classifier

    train, val, _ = breast
    x, y = aug.arm_data("real+classic", train.images[:64], train.labels[:64], None, seed=0)
    cfg = replace(TINY_CLF, max_epochs=2, min_steps_per_epoch=3)
    threads = torch.get_num_threads()
    weights = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            net, _ = train_classifier(x, y, val, 2, cfg, net_config=aug.downstream_net(1, 2))
            weights.append(net.state_dict())
            assert torch.get_num_threads() == n  # restored after each backward pass
    finally:
        torch.set_num_threads(threads)
    for name, w in weights[0].items():
        assert torch.equal(w, weights[1][name]), name


def test_resummarize_rewrites_only_the_metrics_from_the_per_seed_runs(tmp_path):
    runs = {"0.1": {
        "real": [{"seed": s, "auc": a, "acc": 0.5} for s, a in enumerate([0.70, 0.80, 0.75])],
        "real+classic": [{"seed": s, "auc": a, "acc": 0.6} for s, a in enumerate([0.74, 0.82, 0.80])],
        "synthetic": [{"seed": s, "auc": a, "acc": 0.5} for s, a in enumerate([0.60, 0.70, 0.65])],
    }}
    diff = np.array([0.04, 0.02, 0.05])
    gain = aug.summarize_arms(runs)["0.1/real+classic/auc_gain_mean"]
    assert gain == pytest.approx(diff.mean())
    stale = {"0.1/real+classic/auc_gain_mean": gain,  # with a 1.96 interval, as first stored
             "0.1/real+classic/auc_gain_ci95": 1.96 * diff.std(ddof=1) / math.sqrt(3), "0.1/old_key": 1.0}
    rec = {"notebook": "04_augmentation_x", "params": {"seeds": [0, 1, 2]}, "commit": "abc1234",
           "wall_s": 12.0, "metrics": stale,
           "extra": {"per_fraction": runs, "command": "medgan experiment augmentation", "note": "kept"}}
    path = tmp_path / "04_augmentation_x.json"
    path.write_text(json.dumps(rec))
    assert aug.resummarize("04_augmentation_x", root=tmp_path) == path
    new = json.loads(path.read_text())
    assert new["metrics"] == pytest.approx(aug.summarize_arms(runs))
    # Student's t at 2 degrees of freedom: 4.303 / 1.96 = 2.2x the stored half-width.
    assert new["metrics"]["0.1/real+classic/auc_gain_ci95"] == pytest.approx(
        4.303 / 1.96 * stale["0.1/real+classic/auc_gain_ci95"], rel=1e-3)
    # Everything but the metrics is kept; the note says who re-summarized, why, and what was there.
    assert {k: v for k, v in new.items() if k not in ("metrics", "extra")} == {
        k: v for k, v in rec.items() if k not in ("metrics", "extra")}
    assert {k: v for k, v in new["extra"].items() if k != "resummarized"} == rec["extra"]
    note = new["extra"]["resummarized"]
    assert note["commit"] and "Student" in note["reason"] and note["runs_commit"] == "abc1234"
    assert note["changed"]["0.1/old_key"] == [1.0, None]
    assert note["changed"]["0.1/real+classic/auc_gain_ci95"][0] == stale["0.1/real+classic/auc_gain_ci95"]
    assert "0.1/real+classic/auc_gain_mean" not in note["changed"]  # unchanged values are not listed
    # A second run changes nothing, the first-stored values stay in the note.
    before = path.read_text()
    aug.resummarize("04_augmentation_x", root=tmp_path)
    assert path.read_text() == before
    # Not a study file / no file: say so.
    (tmp_path / "plain.json").write_text(json.dumps({"metrics": {}, "extra": {}}))
    with pytest.raises(ValueError, match="per_fraction"):
        aug.resummarize("plain", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="experiment augmentation"):
        aug.resummarize("missing", root=tmp_path)


def test_cgan_recipe_per_dataset(breast, medmnist_root):
    train, _, _ = breast
    b = aug.cgan_config(train)
    assert (b.width, b.diffaugment, b.aux_weight) == (16, "color,translation,cutout", 1.0)  # few images: DiffAugment
    p = aug.cgan_config(load_arrays("pneumoniamnist", "val", root=medmnist_root))
    assert (p.width, p.diffaugment, p.aux_weight, p.num_classes) == (32, "", 1.0, 2)  # the DCGAN's recipe
    assert aug.cgan_config(train, width=8).width == 8  # explicit overrides win


def test_diversity_variant_is_reused_only_with_its_config_and_steps(breast, tmp_path):
    train, _, _ = breast
    small = Arrays(train.name, train.split, train.size, train.images[:64], train.labels[:64])
    over = {"width": 4, "latent_dim": 8}
    logs = []
    gan, meta = aug._variant(small, "t", over, 2, tmp_path, "cpu", logs.append)
    assert (tmp_path / "cgan_breastmnist_28_f1_t.safetensors").exists() and meta["steps"] == 2
    assert any("trained t" in m for m in logs)
    logs.clear()
    again, meta2 = aug._variant(small, "t", over, 2, tmp_path, "cpu", logs.append)
    assert meta2["file"] == meta["file"] and not logs  # loaded, not retrained
    y = torch.tensor([0, 1, 0, 1])
    assert torch.equal(gan.sample(4, labels=y, generator=torch.Generator().manual_seed(0)),
                       again.sample(4, labels=y, generator=torch.Generator().manual_seed(0)))
    _, meta3 = aug._variant(small, "t", over, 3, tmp_path, "cpu", logs.append)  # other steps: retrained
    assert meta3["steps"] == 3 and any("retraining" in m for m in logs)
    logs.clear()
    aug._variant(small, "t", {**over, "aux_weight": 0.0}, 3, tmp_path, "cpu", logs.append)  # other config
    assert any("retraining" in m for m in logs)
    assert load(tmp_path / "cgan_breastmnist_28_f1_t.safetensors")[0].config.aux_weight == 0.0
    logs.clear()
    fewer = Arrays(small.name, small.split, small.size, small.images[:48], small.labels[:48])
    aug._variant(fewer, "t", {**over, "aux_weight": 0.0}, 3, tmp_path, "cpu", logs.append)  # other data
    assert any("retraining" in m for m in logs)
