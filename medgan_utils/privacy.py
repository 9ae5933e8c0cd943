"""Chapter 09: what a generator gives away, and a GAN with a formal privacy guarantee.

Two halves:

* **Audits for any generator** (:func:`audit`): nearest-neighbour distances of generated images
  to training and to held-out real images (:func:`medgan_utils.metrics.memorization`, with the
  closest pairs to look at), the black-box membership attack of GAN-Leaks
  (:func:`medgan_utils.metrics.membership_auc`) in both feature spaces of the evaluation toolkit,
  and, where the discriminator ships, the white-box attack that asks D itself
  (:func:`discriminator_attack`, LOGAN).
* **The privacy-utility study** (:func:`privacy_study`): the DP-GAN of
  :mod:`medgan_utils.models.dpgan` trained to epsilon in {1, 3, 10, inf} at delta = 1e-5 and with
  1 or 5 D steps per G step (Bie et al. 2023), each judged by FD / precision / recall against
  held-out images, by TSTR (chapter 04's downstream classifier trained on synthetic images only,
  tested on the real test split) and by the attacks.

Run by ``medgan privacy study`` (writes ``results/09_privacy_study.json``); one model by
``medgan train dp-gan --epsilon 10``. Introduced in ``notebooks/09_privacy.ipynb``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .data import Arrays, to_float
from .models.dpgan import DPGAN, DPGANConfig
from .results import key
from .train import FitConfig

__all__ = [
    "SMALL_DATA", "STUDY", "arm_tag", "audit", "discriminator_attack", "eps_tag", "load_or_train_dp",
    "membership_sets", "privacy_study",
    "shipped_name", "small_data_study", "study_arms", "study_config", "tstr_auc",
]

# The study's recipe (PneumoniaMNIST, 4,708 training images): Poisson batches of 128 (rate
# 0.027), 2,000 private D steps (54 epochs of D), delta 1e-5 (< 1 / N).
# Every epsilon is trained with 1 D step per G step (the usual DP-GAN) and with 5 (Bie et al.
# 2023's remedy, chosen from their paper, not tuned here: tuning on the private images would
# itself leak); the headline numbers are n_d = 5. ``extra`` arms probe more D steps; the two
# epsilon-10 arms are also trained with two more seeds (``gan_seeds``): a GAN run's own spread.
STUDY = dict(dataset="pneumoniamnist", size=28, batch_size=128, d_steps=2000, delta=1e-5,
             epsilons=(1.0, 3.0, 10.0, math.inf), n_ds=(1, 5), headline_n_d=5, extra=((10.0, 10),),
             tstr_seeds=(0, 1, 2), seed_arms=((10.0, 1), (10.0, 5)), gan_seeds=(1, 2))


def eps_tag(epsilon: float) -> str:
    """``eps10``, ``eps1``, ``epsinf``: the result keys' and checkpoints' spelling."""
    return "epsinf" if math.isinf(epsilon) else f"eps{epsilon:g}"


def study_config(train: Arrays, epsilon: float, n_d: int = 1, **overrides: Any) -> DPGANConfig:
    """The ``dp-gan`` preset on ``train``'s images and classes, at ``epsilon`` with ``n_d`` D
    steps per G step."""
    from .registry import get_kind

    return get_kind("dpgan").config("dp-gan", train, epsilon=epsilon, n_critic=n_d,
                                    delta=overrides.pop("delta", STUDY["delta"]), **overrides)


def shipped_name(epsilon: float, n_d: int = 1, dataset: str = "pneumoniamnist", seed: int = 0) -> str:
    """``dp_pneumoniamnist_eps10_nd1`` (``_seed1`` for another training seed): where
    :func:`load_or_train_dp` looks in ``checkpoints/``."""
    return f"dp_{dataset}_{eps_tag(epsilon)}_nd{n_d}" + (f"_seed{seed}" if seed else "")


def load_or_train_dp(train: Arrays, epsilon: float, n_d: int = 1, *, d_steps: int = STUDY["d_steps"],
                     batch_size: int = STUDY["batch_size"], train_from_scratch: bool = False,
                     device: torch.device | str = "cpu", progress: bool = False,
                     seed: int = 0) -> tuple[DPGAN, Any, str]:
    """The shipped DP-GAN for (``epsilon``, ``n_d``), or train it now (``d_steps`` private D steps
    on Poisson batches of ``batch_size``: ``d_steps // n_d`` G steps, checkpointed, resumable)."""
    from .pretrained import load_or_train

    if d_steps % n_d:
        raise ValueError(f"d_steps ({d_steps}) must be a multiple of n_d ({n_d})")
    cfg = study_config(train, epsilon, n_d)
    steps = d_steps // n_d
    fcfg = FitConfig(steps=steps, log_every=max(1, steps // 40), ckpt_every=max(1, steps // 4))
    return load_or_train(shipped_name(epsilon, n_d, train.name, seed), cfg, train, fcfg,
                         train_from_scratch=train_from_scratch, device=device, progress=progress,
                         facts={"dataset": train.name, "size": train.size, "batch_size": batch_size,
                                "n_train": len(train)},
                         seed=seed, batch_size=batch_size)


@torch.no_grad()
def _d_scores(gan: DPGAN, images: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    D = gan.D
    was = D.training
    D.eval()
    out = []
    y_all = torch.as_tensor(np.asarray(labels).reshape(-1)).long()
    for i in range(0, len(images), batch_size):
        x = to_float(torch.as_tensor(images[i:i + batch_size])).to(gan.device)
        y = y_all[i:i + batch_size].to(gan.device) if gan.config.num_classes else None
        out.append(D(x, y).float().cpu())
    D.train(was)
    return torch.cat(out)


def discriminator_attack(gan: DPGAN, members: Arrays, nonmembers: Arrays, seed: int = 0) -> dict[str, float]:
    """The white-box membership attack (LOGAN, Hayes et al. 2019): an overfitted discriminator
    scores the images it trained on as "more real". ROC AUC of D's logit on training images vs
    unseen real images of the same distribution, at equal n (the larger set subsampled, seeded).
    A DP discriminator bounds what any one image can change in D, and so this AUC."""
    from .metrics import attack_auc

    n = min(len(members), len(nonmembers))
    g = torch.Generator().manual_seed(seed)
    im = torch.randperm(len(members), generator=g)[:n].numpy()
    inn = torch.randperm(len(nonmembers), generator=g)[:n].numpy()
    m = _d_scores(gan, members.images[im], np.asarray(members.labels).reshape(-1)[im])
    o = _d_scores(gan, nonmembers.images[inn], np.asarray(nonmembers.labels).reshape(-1)[inn])
    return {"d_mia_auc": attack_auc(m, o), "d_member_mean": float(m.mean()),
            "d_nonmember_mean": float(o.mean()), "n": float(n)}


def audit(gan: Any, dataset: str, size: int = 28, *, n: int = 2000, seed: int = 0,
          members: Arrays | None = None, nonmembers: Arrays | None = None,
          with_discriminator: bool = False) -> dict[str, float]:
    """Memorization and membership numbers for any generator of ``dataset``.

    ``n`` fakes (fixed noise seed) are scored by :func:`~medgan_utils.evaluation.score_generator`
    (FD/floor, precision, recall and the nearest-neighbour memorization numbers, in the
    classifier's and the autoencoder's features) and attacked by
    :func:`~medgan_utils.evaluation.membership_audit` in both spaces (``<space>_mia_auc``);
    with ``with_discriminator`` (a DPGAN that ships its D) also by :func:`discriminator_attack`
    on ``members`` (default: the training split) vs ``nonmembers`` (default: the validation
    split). Leave both None for those defaults: the distance attacks then use the cached
    features of the splits (a few seconds per generator instead of about fifteen).
    """
    from .data.ct import load_split
    from .evaluation import SPACES, membership_audit, score_generator

    fake = gan.sample(n, generator=torch.Generator().manual_seed(seed + 1))
    scores = score_generator(fake, dataset, size, seed=seed, kid_subsets=0)  # KID: not reported here
    keep = ("fd_ratio", "precision", "recall", "nn_ratio", "frac_closer_to_train", "copy_frac",
            "nn_train_median", "nn_heldout_median")
    out = {f"{sp}_{k}": float(scores[f"{sp}_{k}"]) for sp in SPACES for k in keep}
    for sp in SPACES:
        out[f"{sp}_mia_auc"] = membership_audit(fake, dataset, size, member_images=_images(members),
                                                nonmember_images=_images(nonmembers), space=sp,
                                                seed=seed)["mia_auc"]
    if with_discriminator:
        members = members or load_split(dataset, "train", size)
        nonmembers = nonmembers or load_split(dataset, "val", size)
        out.update({k: v for k, v in discriminator_attack(gan, members, nonmembers, seed).items()
                    if k != "n"})
    return out


def _images(data: Arrays | None) -> torch.Tensor | None:
    return None if data is None else to_float(torch.as_tensor(data.images))


def membership_sets(dataset: str, size: int = 28) -> tuple[Arrays, Arrays]:
    """(members, non-members) for a generator trained on
    :func:`~medgan_utils.evaluation.generator_training_arrays`: the images it trained on, and
    real images of the same distribution it never saw (PneumoniaMNIST: all of train, and the
    validation split; BreastMNIST: the training part, and the held-out other half)."""
    from dataclasses import replace

    from .data.ct import load_split
    from .evaluation import _plan, generator_training_arrays

    train = load_split(dataset, "train", size)
    p = _plan(dataset, size)
    if p.ref_idx is None:
        return train, load_split(dataset, p.ref_split, size)
    return (generator_training_arrays(train),
            replace(train, images=train.images[p.ref_idx], labels=np.asarray(train.labels)[p.ref_idx]))


def tstr_auc(gan: Any, train: Arrays, val: Arrays, test: Arrays, seeds: Sequence[int] = (0,),
             arm: str = "synthetic") -> dict[str, Any]:
    """Chapter 04's downstream judge on one arm: ``"synthetic"`` (TSTR: as many fakes as
    ``train`` has, with its labels, drawn anew for each seed) or ``"real"`` (TRTR, ``gan`` may
    be None); test AUC and ACC, one classifier per seed (about 25 s each on one CPU core).

    Returns ``auc`` and ``acc`` (means over seeds), ``auc_ci95`` (half-width of the 95 % t
    interval over seeds; NaN for one seed), ``aucs`` and ``seconds``."""
    from .augmentation import run_arms
    from .stats import mean_ci

    recs = run_arms(train.images, np.asarray(train.labels).reshape(-1), gan, val, test,
                    seeds=tuple(seeds), arms=(arm,))[arm]
    auc = mean_ci([r["auc"] for r in recs])
    return {"auc": auc.mean, "auc_ci95": auc.half, "acc": float(np.mean([r["acc"] for r in recs])),
            "aucs": [r["auc"] for r in recs], "seconds": float(sum(r["train_seconds"] for r in recs))}


# The telling case for membership attacks (GAN-Leaks): a small training set. BreastMNIST's
# training part (272 images), batches of 32 (rate 0.12), 1,000 D steps (118 epochs), 1 D step per G step.
SMALL_DATA = dict(dataset="breastmnist", size=28, batch_size=32, d_steps=1000, n_d=1, epsilons=(10.0, math.inf))


def small_data_study(*, train_from_scratch: bool = False, seed: int = 0, log=print) -> dict[str, float]:
    """The non-private twin and the epsilon-10 DP-GAN on BreastMNIST's training part, attacked
    with its other half as non-members; keys ``small/<eps tag>/{fd_ratio,recall,mia_auc,
    ae_mia_auc,d_mia_auc,nn_ratio,epsilon_spent}``."""
    c = SMALL_DATA
    members, nonmembers = membership_sets(c["dataset"], c["size"])
    out: dict[str, float] = {}
    for eps in c["epsilons"]:
        gan, hist, source = load_or_train_dp(members, eps, c["n_d"], d_steps=c["d_steps"],
                                             batch_size=c["batch_size"], train_from_scratch=train_from_scratch)
        a = audit(gan, c["dataset"], c["size"], seed=seed, members=members, nonmembers=nonmembers,
                  with_discriminator=True)
        row = {"fd_ratio": a["classifier_fd_ratio"], "recall": a["classifier_recall"],
               "mia_auc": a["classifier_mia_auc"], "ae_mia_auc": a["autoencoder_mia_auc"],
               "d_mia_auc": a["d_mia_auc"], "nn_ratio": a["classifier_nn_ratio"],
               "epsilon_spent": gan.epsilon()}
        out.update(_prefix(key("small", eps_tag(eps)), row))
        log(f"small/{eps_tag(eps)} ({c['dataset']}, {len(members)} images): FD/floor {row['fd_ratio']:.1f}, "
            f"MIA {row['mia_auc']:.3f} / AE {row['ae_mia_auc']:.3f}, D-MIA {row['d_mia_auc']:.3f} [{source}]")
    return out


def _prefix(tag: str, d: dict[str, float]) -> dict[str, float]:
    return {key(tag, k): v for k, v in d.items()}


def study_arms(epsilons: Sequence[float] = STUDY["epsilons"], n_ds: Sequence[int] = STUDY["n_ds"],
               extra: Sequence[tuple[float, int]] = STUDY["extra"]) -> list[tuple[float, int]]:
    """(epsilon, n_d) of every DP-GAN of the study, in order."""
    arms = [(e, k) for e in epsilons for k in n_ds] + [tuple(a) for a in extra]
    return list(dict.fromkeys(arms))


def arm_tag(epsilon: float, n_d: int, headline_n_d: int = STUDY["headline_n_d"]) -> str:
    """The result-key prefix of an arm: ``eps10`` for the headline n_d, else ``eps10/nd1``."""
    return eps_tag(epsilon) if n_d == headline_n_d else key(eps_tag(epsilon), f"nd{n_d}")


def _measure(gan: Any, dataset: str, size: int, train: Arrays, val: Arrays, test: Arrays, trtr_auc: float,
             seeds: Sequence[int], seed: int) -> tuple[dict[str, float], dict[str, Any], dict[str, float]]:
    """One study model's audit (members train, non-members validation, D attacked too), its TSTR
    over ``seeds`` and the row every arm reports: ``(audit, tstr, row)``."""
    a = audit(gan, dataset, size, seed=seed, with_discriminator=True)
    syn = tstr_auc(gan, train, val, test, seeds)
    row = {"fd_ratio": a["classifier_fd_ratio"], "precision": a["classifier_precision"],
           "recall": a["classifier_recall"], "tstr_auc": syn["auc"], "tstr_over_trtr": syn["auc"] / trtr_auc,
           "mia_auc": a["classifier_mia_auc"]}
    return a, syn, row


def privacy_study(*, dataset: str = STUDY["dataset"], size: int = STUDY["size"],
                  arms: Sequence[tuple[float, int]] | None = None,
                  d_steps: int = STUDY["d_steps"], batch_size: int = STUDY["batch_size"],
                  train_from_scratch: bool = False, audit_shipped: Sequence[str] = (),
                  seed: int = 0, log=print) -> dict[str, Any]:
    """Train (or load) every DP-GAN of the study and measure it; returns ``{"metrics", "runs"}``.

    ``metrics`` holds, for each arm (:func:`arm_tag`: ``eps10`` at the headline 5 D steps per G
    step, ``eps10/nd1`` at 1...), ``<tag>/fd_ratio`` (classifier space), ``/ae_fd_ratio``
    (autoencoder space), ``/precision``, ``/recall``, ``/tstr_auc`` (mean over ``STUDY["tstr_seeds"]`` classifiers, each
    on its own synthetic draw) with ``/tstr_auc_ci95``, ``/tstr_over_trtr``,
    ``/mia_auc`` (GAN-Leaks, classifier space), ``/ae_mia_auc``, ``/d_mia_auc`` (white-box),
    ``/epsilon_spent``, ``/noise_multiplier``, ``/train_seconds``; ``trtr_auc``; and
    ``audit/<name>/...`` for each shipped generator in ``audit_shipped``.
    """
    from .data.ct import load_split
    from .pretrained import load
    from .utils import CHECKPOINT_DIR

    train, val, test = (load_split(dataset, s, size) for s in ("train", "val", "test"))
    metrics: dict[str, float] = {}
    runs: dict[str, Any] = {}
    seeds = STUDY["tstr_seeds"]
    trtr = tstr_auc(None, train, val, test, seeds, arm="real")
    metrics["trtr_auc"], metrics["trtr_auc_ci95"] = trtr["auc"], trtr["auc_ci95"]
    log(f"TRTR (real training split) test AUC {trtr['auc']:.3f} +- {trtr['auc_ci95']:.3f} ({len(seeds)} seeds)")
    for eps, n_d in (arms if arms is not None else study_arms()):
        t0 = time.perf_counter()
        gan, hist, source = load_or_train_dp(train, eps, n_d, d_steps=d_steps, batch_size=batch_size,
                                             train_from_scratch=train_from_scratch, seed=seed)
        meta = load(CHECKPOINT_DIR / f"{shipped_name(eps, n_d, dataset)}.safetensors")[1] \
            if source == "shipped" else {"privacy": gan.privacy_facts(), "wall_s": hist.wall_s}
        a, syn, row = _measure(gan, dataset, size, train, val, test, trtr["auc"], seeds, seed)
        priv = meta["privacy"]
        row.update({"ae_fd_ratio": a["autoencoder_fd_ratio"], "tstr_auc_ci95": syn["auc_ci95"],
                    "ae_mia_auc": a["autoencoder_mia_auc"], "d_mia_auc": a["d_mia_auc"],
                    "nn_ratio": a["classifier_nn_ratio"],
                    "epsilon_spent": (math.inf if priv["epsilon_spent"] == "inf"
                                      else float(priv["epsilon_spent"])),
                    "noise_multiplier": float(priv["noise_multiplier"]),
                    "train_seconds": float(meta.get("wall_s", hist.wall_s))})
        tag = arm_tag(eps, n_d)
        metrics.update(_prefix(tag, row))
        runs[tag] = {"source": source, "audit": a, "privacy": priv, "history": hist.records,
                     "tstr_aucs": syn["aucs"]}
        log(f"{tag}: eps spent {row['epsilon_spent']:.3g} (sigma {row['noise_multiplier']:.3g}), FD/floor "
            f"{row['fd_ratio']:.1f}, recall {row['recall']:.2f}, TSTR {row['tstr_auc']:.3f} +- {row['tstr_auc_ci95']:.3f} "
            f"({row['tstr_over_trtr']:.2f} x TRTR), MIA {row['mia_auc']:.3f}, D-MIA {row['d_mia_auc']:.3f} "
            f"[{source}, {time.perf_counter() - t0:.0f} s]")
    for eps, n_d in STUDY["seed_arms"] if arms is None else ():
        for gs in STUDY["gan_seeds"]:
            gan, hist, source = load_or_train_dp(train, eps, n_d, d_steps=d_steps, batch_size=batch_size,
                                                 train_from_scratch=train_from_scratch, seed=gs)
            _, _, row = _measure(gan, dataset, size, train, val, test, trtr["auc"], seeds, seed)
            tag = key(arm_tag(eps, n_d), f"seed{gs}")
            metrics.update(_prefix(tag, row))
            log(f"{tag}: FD/floor {row['fd_ratio']:.1f}, recall {row['recall']:.2f}, TSTR {row['tstr_auc']:.3f} "
                f"[{source}]")
    if arms is None:
        metrics.update(small_data_study(train_from_scratch=train_from_scratch, seed=seed, log=log))
    for name in audit_shipped:
        gan, meta = load(CHECKPOINT_DIR / f"{name}.safetensors")
        a = audit(gan, dataset, size, seed=seed)
        metrics.update(_prefix(key("audit", name), {k: a[k] for k in (
            "classifier_mia_auc", "autoencoder_mia_auc", "classifier_nn_ratio", "classifier_fd_ratio")}))
        log(f"audit {name}: MIA {a['classifier_mia_auc']:.3f} / {a['autoencoder_mia_auc']:.3f}")
    return {"metrics": metrics, "runs": runs,
            "recipe": {"dataset": dataset, "size": size, "d_steps": d_steps, "batch_size": batch_size,
                       "delta": STUDY["delta"], "seed": seed, "tstr_seeds": list(seeds)}}
