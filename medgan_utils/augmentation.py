"""Chapter 04's experiment: do class-conditional GAN images help a classifier with little data?

For each training-set fraction, one conditional GAN is trained on exactly that stratified subset
(never on more real data than the classifier sees), then the same classifier recipe
(:mod:`medgan_utils.classify`) is trained on each *arm* and scored on the official test split:

* ``real``: the real subset only (TRTR: train real, test real);
* ``real+classic``: the subset plus as many classically augmented copies (random affine, contrast
  and brightness), the control for "more images of any kind";
* ``synthetic``: as many synthetic images as the subset has, with the same labels (TSTR);
* ``real+syn1:1`` and ``real+syn1:2``: the subset plus 1x or 2x its size in synthetic images.

Model selection (early stopping) uses the full official validation split for every arm, so
arms differ only in their training data.

Introduced in ``notebooks/04_cgan_augmentation.ipynb``; run in full by
``medgan experiment augmentation``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .classify import ClassifierTrainConfig, auc_acc, predict_proba, train_classifier
from .data import Arrays, stratified_subset, to_float, to_uint8
from .data.augment import affine
from .models.classifier import ClassifierConfig
from .models.gan import GAN, GANConfig
from .pretrained import export, load, train_model
from .results import RESULTS_DIR, key
from .stats import mean_ci, paired_ci
from .train import FitConfig
from .utils import git_commit, write_json

AUGMENTATION_DATASETS = ("breastmnist", "pneumoniamnist")  # the stored study's data sets
ARMS = ("real", "real+classic", "synthetic", "real+syn1:1", "real+syn1:2")


def downstream_net(channels: int, num_classes: int) -> ClassifierConfig:
    """The downstream judge: the course's ResNet at width 16 with a stride-2 stem (~6 M
    multiply-adds per 28 px image, so 200 trainings fit in a CPU budget)."""
    return ClassifierConfig(channels=channels, num_classes=num_classes, width=16, stem_stride=2)


def downstream_recipe(seed: int = 0) -> ClassifierTrainConfig:
    """The one training recipe of every arm (flips, +-10 deg rotations, early stopping on val)."""
    return ClassifierTrainConfig(max_epochs=20, patience=5, batch_size=64, seed=seed)


def cgan_config(train: Arrays, **overrides) -> GANConfig:
    """The chapter's conditional GAN for ``train``'s data set: the DCGAN recipe, a projection
    discriminator plus AC-GAN's auxiliary classifier (``aux_weight=1``) and EMA; then the data
    set's own changes (:data:`STUDY_GAN_OVERRIDES`), then ``overrides``.

    BreastMNIST (546 images, subsets down to 27) keeps width 16 and DiffAugment, without which D
    memorises its few images in minutes. On PneumoniaMNIST the chapter-02 DCGAN's own recipe
    (width 32, no DiffAugment, 3000 steps) replaced them: dropping DiffAugment did most of the
    widening of the first cGAN's classes there (one run per recipe; ``medgan experiment
    cgan-diversity``, :func:`diversity_study`).

    The auxiliary classifier was added after the first study, whose fakes carried their label
    weakly; that study is kept as ``results/04_augmentation_<dataset>_projection_only.json`` and
    notebook 04 compares the two."""
    base = dict(channels=train.n_channels, image_size=train.size, num_classes=len(train.class_names),
                width=16, ema=0.999, diffaugment="color,translation,cutout", aux_weight=1.0)
    return GANConfig.preset("dcgan", **{**base, **STUDY_GAN_OVERRIDES.get(train.name, {}), **overrides})


# The stored study's cGAN per data set: changes to cgan_config's base, and steps on the full
# training split. BreastMNIST got 4000 steps: its study at 2000 steps
# (results/04_augmentation_breastmnist_aux_2000_steps.json) had the lower TSTR/TRTR. PneumoniaMNIST's
# first recipe (width 16, DiffAugment, 2000 steps) is kept in results/04_augmentation_pneumoniamnist_w16_da.json.
STUDY_GAN_OVERRIDES: dict[str, dict] = {"pneumoniamnist": {"width": 32, "diffaugment": ""}}
STUDY_GAN_STEPS = {"breastmnist": 4000, "pneumoniamnist": 3000}


def study_gan_steps(dataset: str, gan_steps: int | None = None) -> int:
    """``gan_steps`` if given, else the stored study's for ``dataset`` (2000 for other sets)."""
    return gan_steps if gan_steps is not None else STUDY_GAN_STEPS.get(dataset, 2000)


def cgan_steps(gan_steps: int, fraction: float) -> int:
    """Steps for a cGAN on ``fraction`` of the data: ``max(600, gan_steps * sqrt(fraction))``
    (fewer images need fewer steps, but not proportionally fewer: G still has to learn to draw)."""
    return int(max(min(600, gan_steps), round(gan_steps * math.sqrt(fraction))))


def train_cgan(images: np.ndarray, labels: np.ndarray, config: GANConfig, steps: int,
               seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 64):
    """Train one conditional GAN on ``images``/``labels`` (uint8, int); returns ``(gan, history)``."""
    data = Arrays("subset", "train", images.shape[1], images, np.asarray(labels).reshape(-1))
    return train_model(config, data, FitConfig(steps=steps, log_every=max(1, steps // 50), ckpt_every=0,
                                               resume=False),
                       seed=seed, batch_size=batch_size, device=device, progress=False)


def synthesize(gan: GAN, labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 fakes, one per entry of ``labels`` (so class proportions are the caller's choice)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    return to_uint8(gan.sample(len(labels), labels=torch.as_tensor(labels), generator=gen))


def classic_copies(images: np.ndarray, seed: int) -> np.ndarray:
    """One classically augmented copy of each uint8 image: random affine (rotation +-15 deg,
    scale 0.9-1.1, shift +-2 px), contrast and brightness jitter, horizontal flip."""
    g = torch.Generator().manual_seed(20_000 + seed)
    x = to_float(torch.from_numpy(images))
    b = x.shape[0]
    ang = (torch.rand(b, generator=g) * 2 - 1) * math.radians(15)
    scale = 0.9 + 0.2 * torch.rand(b, generator=g)
    shift = (torch.rand(b, 2, generator=g) * 2 - 1) * (2 / x.shape[-1] * 2)
    x = affine(x, ang, scale, shift)
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    contrast = (0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=g))
    bright = (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.2
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return to_uint8(((x - mean) * contrast + mean + bright).clamp(-1, 1))


def arm_data(arm: str, images: np.ndarray, labels: np.ndarray, gan: GAN | None,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training set of one arm (uint8 images, labels)."""
    if arm == "real":
        return images, labels
    if arm == "real+classic":
        return np.concatenate([images, classic_copies(images, seed)]), np.concatenate([labels, labels])
    if gan is None:
        raise ValueError(f"arm {arm!r} needs a generator")
    if arm == "synthetic":
        return synthesize(gan, labels, seed), labels.copy()
    k = {"real+syn1:1": 1, "real+syn1:2": 2}.get(arm)
    if k is None:
        raise ValueError(f"unknown arm {arm!r}; choose from {ARMS}")
    syn_labels = np.tile(labels, k)
    return np.concatenate([images, synthesize(gan, syn_labels, seed)]), np.concatenate([labels, syn_labels])


def run_arms(images: np.ndarray, labels: np.ndarray, gan: GAN | None, val: Arrays, test: Arrays,
             seeds: Sequence[int], arms: Sequence[str] = ARMS, device: torch.device | str = "cpu",
             clf: ClassifierTrainConfig | None = None) -> dict[str, list[dict]]:
    """Test AUC/ACC of every arm for every seed: ``{arm: [{"seed", "auc", "acc", ...}, ...]}``."""
    n_classes = len(test.class_names)
    out: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in seeds:
        for arm in arms:
            x, y = arm_data(arm, images, labels, gan, seed)
            cfg = replace(clf or downstream_recipe(), seed=seed)
            t0 = time.perf_counter()
            net, rec = train_classifier(
                x, y, val, n_classes, cfg, device=device,
                net_config=downstream_net(test.n_channels, n_classes))
            score = auc_acc(predict_proba(net, test.images), test.labels)
            out[arm].append({"seed": seed, **score, "n_train": int(len(x)), "best_epoch": rec["best_epoch"],
                             "train_seconds": round(time.perf_counter() - t0, 1)})
    return out


def summarize_arms(per_fraction: dict[str, dict[str, list[dict]]]) -> dict[str, float]:
    """Flat metrics per fraction and arm: ``<fraction>/<arm>/auc_mean``, ``auc_std``, ``auc_ci95``
    (and the same for accuracy), the gain of each ``real+...`` arm over ``real`` paired by seed
    (``auc_gain_mean``, ``auc_gain_ci95``) and TSTR/TRTR.

    Intervals are Student-t over the classifier seeds (:func:`medgan_utils.stats.mean_ci`): they
    cover the classifier's training noise only. The data subset (``subset_seed``) and the cGAN
    (one per fraction) are held fixed, so a gain's interval says nothing about another subset or
    another GAN run.
    """
    flat: dict[str, float] = {}
    for frac, arms in per_fraction.items():
        for arm, runs in arms.items():
            for stat in ("auc", "acc"):
                ci = mean_ci([r[stat] for r in runs])
                flat[key(frac, arm, f"{stat}_mean")] = ci.mean
                flat[key(frac, arm, f"{stat}_std")] = ci.sd if ci.n > 1 else 0.0
                if math.isfinite(ci.half):
                    flat[key(frac, arm, f"{stat}_ci95")] = ci.half
        if "real" in arms:
            real = [r["auc"] for r in arms["real"]]
            for arm in arms:
                if arm.startswith("real+"):
                    gain = paired_ci([r["auc"] for r in arms[arm]], real)  # paired by seed
                    flat[key(frac, arm, "auc_gain_mean")] = gain.mean
                    if math.isfinite(gain.half):
                        flat[key(frac, arm, "auc_gain_ci95")] = gain.half
            if "synthetic" in arms:
                syn = np.array([r["auc"] for r in arms["synthetic"]])
                flat[key(frac, "tstr_over_trtr")] = float(syn.mean() / np.mean(real))
    return flat


RESUMMARIZE_REASON = ("intervals recomputed with Student's t over the classifier seeds "
                      "(stats.mean_ci / paired_ci via summarize_arms) instead of the normal 1.96, "
                      "which understates a 95 % interval from 5 seeds by ~42 %; per-seed runs unchanged")


def resummarize(name: str, root: str | os.PathLike | None = None, reason: str = RESUMMARIZE_REASON) -> Path:
    """Recompute ``metrics`` of ``results/<name>.json`` from its stored per-seed runs, without training.

    The study files (``results/04_augmentation_<dataset>*.json``) keep every classifier run in
    ``extra.per_fraction``; this rewrites their summary with the current :func:`summarize_arms`
    (e.g. after the switch from 1.96 to Student-t intervals) and keeps everything else (params,
    commit and wall time of the run that produced the per-seed numbers, the per-seed numbers).
    ``extra.resummarized`` records the commit that re-summarized, why, and the old value of every
    metric that changed or disappeared (``[old, new]``; new is None when the key is gone). A
    second call that changes nothing leaves the file as it is.

    Args:
        name: the results name, e.g. ``"04_augmentation_pneumoniamnist"``.
        root: the results folder (default ``results/``).
        reason: why, stored in ``extra.resummarized["reason"]``.

    Returns:
        The path of the file.

    Raises:
        FileNotFoundError: no ``<name>.json`` in ``root``.
        ValueError: the file has no ``extra.per_fraction`` (not a study file).
    """
    path = Path(root or RESULTS_DIR) / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; the study files are written by "
                                "`medgan experiment augmentation --dataset <name>`")
    rec = json.loads(path.read_text())
    per_fraction = rec.get("extra", {}).get("per_fraction")
    if not per_fraction:
        raise ValueError(f"{path} has no extra.per_fraction (per-seed runs): nothing to re-summarize")
    old, new = rec["metrics"], summarize_arms(per_fraction)
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    if not changed:
        return path
    previous = rec["extra"].get("resummarized", {}).get("changed", {})
    for k, (was, now) in changed.items():  # keep the first value ever stored for each key
        previous[k] = [previous[k][0] if k in previous else was, now]
    rec["metrics"] = new
    rec["extra"]["resummarized"] = {"commit": git_commit(), "reason": reason,
                                    "runs_commit": rec.get("commit"), "changed": previous}
    return write_json(path, rec)


GAN_FREE_ARMS = ("real", "real+classic")  # arms whose data do not depend on the generator


def augmentation_experiment(train: Arrays, val: Arrays, test: Arrays, fractions: Sequence[float],
                            seeds: Sequence[int], gan_steps: int, device: torch.device | str = "cpu",
                            arms: Sequence[str] = ARMS, subset_seed: int = 0,
                            log=print, work_dir=None, gan_overrides: dict | None = None,
                            clf: ClassifierTrainConfig | None = None) -> dict:
    """The whole grid for one data set; returns ``{"per_fraction", "gans", "summary", "models",
    "gan_config", "compute_seconds", "untimed_classifier_runs"}``.

    ``gan_steps`` is for the full training set; a subset gets :func:`cgan_steps`. ``gan_overrides`` change
    :func:`cgan_config` (e.g. ``{"aux_weight": 1.0}``); ``clf`` the classifier recipe
    (default :func:`downstream_recipe`).

    With ``work_dir``, each finished fraction is saved there (its cGAN as safetensors, its
    scores as JSON), so a killed run resumes. A fraction whose saved cGAN has the same config
    and steps and whose scores cover every requested arm and seed is skipped. When the
    generator changed, a new one is trained and only the arms that use it are re-run: the
    scores of ``real`` and ``real+classic`` (:data:`GAN_FREE_ARMS`) are kept for the seeds
    they already have.
    """
    config = cgan_config(train, **(gan_overrides or {}))
    per_fraction, gans, trained = {}, {}, {}
    work = Path(work_dir) if work_dir else None
    for frac in fractions:
        fkey = f"{frac:g}"
        idx = stratified_subset(train.labels, frac, seed=subset_seed)
        images, labels = train.images[idx], train.labels[idx]
        steps = cgan_steps(gan_steps, frac)
        done = work / f"fraction_{fkey}.json" if work else None
        rec = json.loads(done.read_text()) if done is not None and done.exists() else None
        gan, scored = None, False  # a saved cGAN of this config; scores made with it
        if work is not None and (work / f"cgan_{fkey}.safetensors").exists():
            saved, meta = load(work / f"cgan_{fkey}.safetensors", device)
            if saved.config == config and meta.get("steps") == steps:
                gan = saved
                scored = rec is not None and GANConfig(**rec.get("gan_config", saved.config.to_dict())) == config
        old_arms = rec["arms"] if rec else {}
        have = {arm: {r["seed"]: r for r in runs} for arm, runs in old_arms.items()
                if scored or arm in GAN_FREE_ARMS}
        todo = [a for a in arms if not all(s in have.get(a, {}) for s in seeds)]
        if scored and not todo:
            per_fraction[fkey] = {a: [have[a][s] for s in seeds] for a in arms}
            gans[fkey], trained[fkey] = rec["gan"], gan
            log(f"[{train.name} {frac:.0%}] done earlier: {done}")
            continue
        if gan is None:
            t0 = time.perf_counter()
            gan, hist = train_cgan(images, labels, config, steps, seed=subset_seed, device=device)
            gan_s = time.perf_counter() - t0
            log(f"[{train.name} {frac:.0%}] cGAN on {len(idx)} images: {steps} steps, {gan_s:.0f} s")
            gans[fkey] = {"n_real": int(len(idx)), "steps": steps, "train_seconds": round(gan_s, 1),
                         "history": hist.records[-1:] if hist.records else []}
            if work is not None:
                work.mkdir(parents=True, exist_ok=True)
                export(gan, work / f"cgan_{fkey}.safetensors", hist, dataset=train.name,
                           size=train.size, fraction=frac, n_real=int(len(idx)), steps=steps,
                           subset_seed=subset_seed, train_seconds=gans[fkey]["train_seconds"])
        elif scored:  # more seeds or arms asked of a generator scored before
            gans[fkey] = rec["gan"]
        else:  # trained earlier, killed before its arms were scored
            gans[fkey] = {"n_real": int(len(idx)), "steps": steps,
                         "train_seconds": meta.get("train_seconds"), "history": []}
        t0 = time.perf_counter()
        new = run_arms(images, labels, gan, val, test, seeds, todo, device, clf) if todo else {}
        per_fraction[fkey] = {a: new[a] if a in new else [have[a][s] for s in seeds] for a in arms}
        log(f"[{train.name} {frac:.0%}] ran {', '.join(todo)} x {len(seeds)} seeds "
            f"({', '.join(a for a in arms if a not in todo) or 'nothing'} kept): "
            f"{time.perf_counter() - t0:.0f} s; "
            + ", ".join(f"{a} {np.mean([r['auc'] for r in v]):.3f}" for a, v in per_fraction[fkey].items()))
        trained[fkey] = gan
        if work is not None:
            write_json(done, {"arms": per_fraction[fkey], "gan": gans[fkey], "gan_config": config.to_dict()})
    # A resumed run's wall time is only its own: the recorded compute sums every cGAN's and
    # classifier run's training time, whichever run measured it (runs kept from older studies
    # without a time count as 0, and are counted).
    clf_runs = [r for arms_ in per_fraction.values() for runs in arms_.values() for r in runs]
    compute_s = (sum(g.get("train_seconds") or 0 for g in gans.values())
                 + sum(r.get("train_seconds") or 0 for r in clf_runs))
    return {"per_fraction": per_fraction, "gans": gans, "summary": summarize_arms(per_fraction),
            "models": trained, "gan_config": config.to_dict(), "compute_seconds": round(compute_s, 1),
            "untimed_classifier_runs": [sum(1 for r in clf_runs if not r.get("train_seconds")), len(clf_runs)]}


# -- chapter 04's diversity account (issue #8) ---------------------------------------------------

# cGAN recipes tried on the full training split to make the conditional generator as diverse as
# the unconditional DCGAN: tag -> (what changed, cgan_config overrides, steps). Each is trained
# once (subset seed 0, generator seed 0) and saved as runs/cgan_variants/cgan_<ds>_<size>_f1_<tag>.
_DA = "color,translation,cutout"
DIVERSITY_VARIANTS: dict[str, tuple[str, dict, int]] = {
    "w16_da_2000": ("the first recipe: width 16, DiffAugment, aux_weight 1, 2000 steps",
                    {"width": 16, "diffaugment": _DA}, 2000),
    "aux0": ("the first recipe without the auxiliary classifier (aux_weight 0)",
             {"width": 16, "diffaugment": _DA, "aux_weight": 0.0}, 2000),
    "w32_3000": ("width 32 and 3000 steps, DiffAugment and aux_weight 1 kept", {"width": 32, "diffaugment": _DA}, 3000),
    "w32_noda_3000": ("the DCGAN's recipe (width 32, no DiffAugment, 3000 steps), aux_weight 1 kept",
                      {"width": 32, "diffaugment": ""}, 3000),
    "w32_noda_aux0_3000": ("the DCGAN's recipe, projection discriminator only (aux_weight 0)",
                           {"width": 32, "diffaugment": "", "aux_weight": 0.0}, 3000),
}


def _variant(train: Arrays, tag: str, overrides: dict, steps: int, work: Path, device, log) -> tuple[GAN, dict]:
    """The variant's cGAN from ``work`` if its config and steps match, else trained and saved there."""
    config = cgan_config(train, **overrides)
    path = work / f"cgan_{train.name}_{train.size}_f1_{tag}.safetensors"
    idx = stratified_subset(train.labels, 1.0, seed=0)
    if path.exists():
        gan, meta = load(path, device)
        if (gan.config == config and meta.get("steps") == steps and meta.get("dataset") == train.name
                and meta.get("n_real") == len(idx) and meta.get("subset_seed") == 0):
            return gan, {"file": str(path), **meta}
        log(f"{path}: another config, step count or training set, retraining")
    t0 = time.perf_counter()
    gan, hist = train_cgan(train.images[idx], train.labels[idx], config, steps, seed=0, device=device)
    secs = round(time.perf_counter() - t0, 1)
    work.mkdir(parents=True, exist_ok=True)
    export(gan, path, hist, dataset=train.name, size=train.size, fraction=1.0, n_real=int(len(idx)), steps=steps,
           subset_seed=0, train_seconds=secs, train_threads=torch.get_num_threads())
    log(f"trained {tag}: {steps} steps, {secs:.0f} s")
    return gan, {"file": str(path), "steps": steps, "train_seconds": secs, "train_threads": torch.get_num_threads()}


def diversity_study(train: Arrays, val: Arrays, test: Arrays, variants: dict | None = None,
                    dcgan: str | os.PathLike | None = None,
                    work_dir: str | os.PathLike = "runs/cgan_variants", n_per_class: int = 1000,
                    seed: int = 0, tstr_seeds: Sequence[int] = (0, 1, 2),
                    device: torch.device | str = "cpu", log=print) -> dict:
    """Per-class diversity, fidelity and TSTR of cGAN recipes beside the unconditional DCGAN.

    Each recipe of ``variants`` (default :data:`DIVERSITY_VARIANTS`) is trained once on the whole
    training split (or loaded from ``work_dir``); the one equal to :func:`cgan_config` at
    :func:`study_gan_steps` is marked ``chapter_recipe`` (it is the study's 100 % cGAN).

    Every generator is scored the same way: ``n_per_class`` fakes of each class (noise seed
    ``seed + 1``) by :func:`~.evaluation.score_per_class` in both feature spaces; ``2 *
    n_per_class`` fakes at the class prior (seed ``seed + 2``) by
    :func:`~.evaluation.score_generator`; the shipped classifier's AUC on fakes of known label;
    and TSTR, the downstream recipe trained on as many fakes as the training split has (its
    labels) for each of ``tstr_seeds``, beside the same recipe on the real split (TRTR). The
    DCGAN has no labels: 5x the fakes are drawn and the shipped classifier labels them.

    Returns ``{"metrics": flat numbers, "variants": per generator rows (tag -> change, file,
    steps, train_seconds, config, chapter_recipe, per_class, whole, judge_auc_on_fakes, tstr),
    "trtr": the real arm's AUC per seed, "reference": sentence, "n_per_class", "tstr_seeds"}``.
    """
    if not variants and variants is not None:
        raise ValueError("diversity_study needs at least one cGAN recipe")
    if any(t in ("dcgan", "real") for t in (variants or {})):
        raise ValueError("'dcgan' and 'real' name the study's own rows: tag the variants otherwise")
    from .classify import load_extractor
    from .evaluation import classifier_labels, score_generator, score_per_class
    from .utils import CHECKPOINT_DIR

    work = Path(work_dir)
    variants = DIVERSITY_VARIANTS if variants is None else variants
    dcgan = Path(dcgan or CHECKPOINT_DIR / f"dcgan_{train.name}_{train.size}.safetensors")
    judge = load_extractor(train.name, train.size, device)
    idx = stratified_subset(train.labels, 1.0, seed=0)
    images, labels = train.images[idx], train.labels[idx]
    n_classes = len(train.class_names)
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    gens: dict[str, tuple[GAN, dict, str]] = {}
    for tag, (change, overrides, steps) in variants.items():
        gan, meta = _variant(train, tag, overrides, steps, work, device, log)
        gens[tag] = (gan, meta, change)
    rows: dict[str, dict] = {}
    reference = None
    real = run_arms(images, labels, None, val, test, tstr_seeds, ("real",), device)["real"]
    for name, (gan, meta, change) in gens.items():
        x = gan.sample(len(y), labels=y, generator=torch.Generator().manual_seed(seed + 1))
        fakes = gan.sample(2000, labels=torch.as_tensor(np.arange(2000) % n_classes),
                           generator=torch.Generator().manual_seed(seed + 2))
        tstr = run_arms(images, labels, gan, val, test, tstr_seeds, ("synthetic",), device)["synthetic"]
        per_class = score_per_class(x, y, train.name, train.size, n=n_per_class, seed=seed)
        reference = per_class["reference"]
        rows[name] = {"change": change, "file": meta["file"], "steps": meta.get("steps"),
                      "train_seconds": meta.get("train_seconds", meta.get("wall_s")),
                      "train_threads": meta.get("train_threads"), "config": gan.config.to_dict(),
                      "chapter_recipe": (gan.config == cgan_config(train)
                                         and meta.get("steps") == study_gan_steps(train.name)),
                      "per_class": per_class["classes"],
                      "whole": score_generator(gan.sample(len(y), generator=torch.Generator().manual_seed(seed + 2)),
                                               train.name, train.size, seed=seed),
                      "judge_auc_on_fakes": auc_acc(predict_proba(judge, fakes), np.arange(2000) % n_classes)["auc"],
                      "tstr": [r["auc"] for r in tstr]}
        log(f"{name}: " + ", ".join(f"{c} recall {r['classifier_recall']:.2f}/{r['autoencoder_recall']:.2f}"
                                    for c, r in rows[name]["per_class"].items())
            + f", TSTR {np.mean(rows[name]['tstr']):.3f}")
    dc, dmeta = load(dcgan, device)
    x = dc.sample(5 * n_per_class, generator=torch.Generator().manual_seed(seed + 1))
    n_dc = int(min(n_per_class, np.bincount(classifier_labels(x, train.name, train.size), minlength=n_classes).min()))
    rows["dcgan"] = {"change": "the chapter-02 DCGAN (unconditional), fakes labelled by the shipped classifier",
                     "file": str(dcgan), "steps": dmeta.get("steps"), "train_seconds": dmeta.get("wall_s"),
                     "train_threads": None, "config": dc.config.to_dict(), "n_per_class": n_dc,
                     "per_class": score_per_class(x, None, train.name, train.size, n=n_dc, seed=seed)["classes"],
                     "whole": score_generator(x[:len(y)], train.name, train.size, seed=seed)}
    metrics: dict[str, float] = {"real/tstr_auc_mean": float(np.mean([r["auc"] for r in real]))}
    for name, row in rows.items():
        for cls, r in row["per_class"].items():
            for s in ("classifier", "autoencoder"):
                for m in ("recall", "coverage", "precision"):
                    metrics[key(name, cls, f"{s}_{m}")] = r[f"{s}_{m}"]
                    if name != "dcgan":  # the floor at the cGANs' n (the DCGAN's n can be smaller)
                        metrics[key("real", cls, f"{s}_{m}")] = r[f"{s}_floor_{m}"]
                if name != "dcgan":
                    metrics[key(name, cls, f"{s}_recall_gap_to_dcgan")] = (
                        rows["dcgan"]["per_class"][cls][f"{s}_recall"] - r[f"{s}_recall"])
        for s in ("classifier", "autoencoder"):
            for m in ("recall", "precision", "fd_ratio"):
                metrics[key(name, "all", f"{s}_{m}")] = row["whole"][f"{s}_{m}"]
        if "tstr" in row:
            metrics[key(name, "judge_auc_on_fakes")] = row["judge_auc_on_fakes"]
            metrics[key(name, "tstr_auc_mean")] = float(np.mean(row["tstr"]))
            metrics[key(name, "tstr_over_trtr")] = float(np.mean(row["tstr"])) / metrics["real/tstr_auc_mean"]
    return {"metrics": metrics, "variants": rows, "trtr": [r["auc"] for r in real],
            "reference": reference,
            "n_per_class": n_per_class, "tstr_seeds": list(tstr_seeds)}
