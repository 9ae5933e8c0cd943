"""Exercises the package checks: you write a piece of a GAN, a checker compares it with the
package's own implementation on seeded random inputs and says what differs.

Every checker returns ``True`` on a pass (and prints one line saying what was compared) and raises
``AssertionError`` with the difference and a hint on a mismatch. Nothing real is trained: small
seeded networks and tensors, well under a second per check, on the CPU.

* :func:`check_g_step` (notebook 01): one generator update with the non-saturating loss.
* :func:`check_gradient_penalty` (notebook 03): WGAN-GP's penalty, against
  :func:`medgan_utils.models.losses.gradient_penalty`.
* :func:`check_projection_output` (notebooks 03/04): a projection discriminator's score, against
  the conditional discriminators of :mod:`medgan_utils.models.nets`.
* :func:`check_tstr` (notebook 04): train on synthetic, test on real (and its TRTR baseline),
  against the arms of :mod:`medgan_utils.augmentation`.

Each ``reference_*`` function is the maintained copy of what the learner writes (the checkers
accept them; ``tests/test_exercises.py`` shows that, and that plausible mistakes are rejected).

Introduced in ``notebooks/01_vanilla_gan.ipynb``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import losses
from .models.gan import GAN, GANConfig
from .models.nets import MLPDiscriminator, MLPGenerator, projection_score

__all__ = [
    "check_g_step", "check_gradient_penalty", "check_projection_output", "check_tstr",
    "reference_g_step", "reference_projection_output", "reference_tstr",
]

# Floats compared after the same float32 operations in (possibly) another order.
RTOL, ATOL = 1e-5, 1e-6


def _close(a: torch.Tensor | float, b: torch.Tensor | float, rtol: float = RTOL, atol: float = ATOL) -> bool:
    return bool(torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                               torch.as_tensor(b, dtype=torch.float64), rtol=rtol, atol=atol))


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p.detach() - q.detach()).abs().max())
               for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise AssertionError(f"{what} must be one number, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach())
    if isinstance(value, (int, float, np.floating)):
        return float(value)
    raise AssertionError(f"{what} must be a number (e.g. loss.item()), got {type(value).__name__}")


def _passed(name: str, what: str, verbose: bool) -> bool:
    if verbose:
        print(f"{name}: passed ({what})")
    return True


# ----------------------------------------------------------------------------------------------
# (1) Notebook 01: the generator's step with the non-saturating loss
# ----------------------------------------------------------------------------------------------


def reference_g_step(z: torch.Tensor, G: nn.Module, D: nn.Module, opt_G: torch.optim.Optimizer) -> float:
    """One generator update with the non-saturating loss ``-E[log s(D(G(z)))]``.

    The inline ``g_step`` of ``notebooks/01_vanilla_gan.ipynb`` (section 2), as
    :meth:`medgan_utils.models.gan.GAN.g_step` takes it inside ``fit``.

    Args:
        z: noise (B, latent_dim).
        G: generator, z -> fakes.
        D: discriminator, fakes -> logits (B,) or (B, 1).
        opt_G: the optimizer of G's parameters (only G is updated).

    Returns:
        ``loss_G`` as a float.
    """
    logits = D(G(z))
    loss_G = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    opt_G.zero_grad()
    loss_G.backward()
    opt_G.step()
    return loss_G.item()


_LATENT, _SIDE, _HIDDEN, _BATCH = 8, 6, 16, 12


def check_g_step(g_step: Callable, *, seed: int = 0, verbose: bool = True) -> bool:
    """Check a learner's generator step against the package's ``GAN.g_step`` (notebook 01).

    Call it in notebook 01 on the ``g_step`` you wrote::

        from medgan_utils.exercises import check_g_step
        check_g_step(g_step)   # g_step(z, G, D, opt_G) -> loss_G (float)

    Two small MLPs (the package's ``MLPGenerator``/``MLPDiscriminator``) take two updates from
    the same weights and the same noise, once through your function and once through
    :meth:`~medgan_utils.models.gan.GAN.g_step`, in two situations: a fresh D (logits near 0)
    and a D that confidently rejects fakes (logits near -8, where the saturating loss has almost
    no gradient). Plain SGD is used, so a wrong gradient shows up in the weights (Adam's first
    step moves every weight by about ``lr`` whatever the gradient's size). Compared: the returned
    ``loss_G``, G's weights after each update, and D's weights (which must not move).

    Args:
        g_step: ``g_step(z, G, D, opt_G) -> float``: ``z`` noise (B, latent_dim), updates G only.
        seed: seeds the networks and the noise.
        verbose: print a line on a pass.

    Returns:
        True when everything matches.

    Raises:
        AssertionError: what differs, with a hint (saturating loss, D updated, no zero_grad...).
    """
    for case, d_bias in (("a fresh D", None), ("a D that rejects fakes (logits ~ -8)", -8.0)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            G = MLPGenerator(_LATENT, 1, _SIDE, _HIDDEN)
            D = MLPDiscriminator(1, _SIDE, _HIDDEN)
            if d_bias is not None:
                with torch.no_grad():
                    D.head.bias.fill_(d_bias)
            G_ref, D_ref, D_start = copy.deepcopy(G), copy.deepcopy(D), copy.deepcopy(D)
            opt = torch.optim.SGD(G.parameters(), lr=0.5)
            config = GANConfig(arch="mlp", loss="bce", g_loss="non-saturating", latent_dim=_LATENT,
                               image_size=_SIDE, width=_HIDDEN, d_norm="none")
            package = GAN(config, "cpu", G=G_ref, D=D_ref, opt_G=torch.optim.SGD(G_ref.parameters(), lr=0.5),
                          opt_D=torch.optim.SGD(D_ref.parameters(), lr=0.5))
            batch = torch.zeros(_BATCH, 1, _SIDE, _SIDE)  # g_step only reads its size
            for call in (1, 2):
                torch.manual_seed(seed + call)
                z = torch.randn(_BATCH, _LATENT)
                with torch.no_grad():
                    logits = D(G(z))
                sat, ns = float(losses.g_loss_saturating(logits)), float(losses.g_loss_non_saturating(logits))
                mine = g_step(z.clone(), G, D, opt)
                if mine is None:
                    raise AssertionError("g_step returned None: return loss_G as a float (loss_G.item())")
                mine = _as_float(mine, "g_step's return value (loss_G)")
                torch.manual_seed(seed + call)  # GAN.g_step draws the same z from the same seed
                ref = package.g_step(batch)["loss_G"]
                where = f"with {case}, update {call}"
                if not _close(mine, ref, rtol=1e-4, atol=1e-5):
                    hint = "the non-saturating loss is -E[log s(D(G(z)))] = BCE(D(G(z)), 1)"
                    if _close(mine, sat, rtol=1e-4, atol=1e-5):
                        hint = ("yours equals the saturating (minimax) loss E[log(1 - s(D(G(z))))], whose "
                                "gradient vanishes when D rejects fakes; " + hint)
                    elif _close(mine, -ns, rtol=1e-4, atol=1e-5):
                        hint = "yours has the opposite sign; " + hint
                    raise AssertionError(f"loss_G {where}: yours {mine:.6g}, package {ref:.6g}. {hint}")
                if _max_diff(D, D_start) > 0:
                    raise AssertionError(f"D's weights changed in g_step ({where}): only opt_G.step() belongs "
                                         "in the generator's update; D learns in d_step")
                diff = _max_diff(G, G_ref)
                if diff > 1e-5:
                    hint = ("call opt_G.zero_grad() before loss_G.backward(): gradients add up across calls"
                            if call == 2 else
                            "is the loss backpropagated through G (no torch.no_grad() or .detach() around "
                            "G(z)) and followed by opt_G.step()?")
                    raise AssertionError(f"G's weights after the update differ from GAN.g_step's ({where}; "
                                         f"largest difference {diff:.3g}) although loss_G matches: {hint}")
    return _passed("check_g_step", "loss_G and G's weights match GAN.g_step after two updates, with a "
                   "fresh D and with a D that rejects fakes; D untouched", verbose)


# ----------------------------------------------------------------------------------------------
# (2) Notebook 03: WGAN-GP's gradient penalty
# ----------------------------------------------------------------------------------------------


def _accepts_alpha(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    if "alpha" in params:
        return True
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 4 or any(p.kind == p.VAR_POSITIONAL for p in params.values())


def check_gradient_penalty(gradient_penalty: Callable, *, seed: int = 0, verbose: bool = True) -> bool:
    """Check a learner's WGAN-GP penalty against :func:`medgan_utils.models.losses.gradient_penalty`.

    For ``notebooks/03_wgan_gp.ipynb``::

        from medgan_utils.exercises import check_gradient_penalty
        check_gradient_penalty(my_gradient_penalty)

    ``my_gradient_penalty(critic, real, fake)`` or ``(critic, real, fake, alpha)`` returns
    ``E[(||grad_xhat critic(xhat)||_2 - 1)^2]`` on ``xhat = alpha real + (1 - alpha) fake`` (or a
    tuple whose first item is it). When your function takes ``alpha`` (B, 1, 1, 1), the checker
    passes the one it gives the package; otherwise both draw it after the same
    ``torch.manual_seed``, so draw it as ``torch.rand(B, 1, 1, 1)``. A small nonlinear critic
    scores 3-channel images; the penalty's value and its gradient with respect to the critic's
    weights (it must be differentiable: ``create_graph=True``) are compared.

    Raises:
        AssertionError: what differs, and which known mistake it looks like (no ``- 1``, the
            norm over ``dim=1`` only, alpha per pixel, lambda included, not differentiable).
    """
    b, c, side = 6, 3, 6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = MLPDiscriminator(c, side, 16)
        real = torch.randn(b, c, side, side)
        fake = torch.randn(b, c, side, side) * 0.5 + 0.3
        alpha = torch.rand(b, 1, 1, 1)
        takes_alpha = _accepts_alpha(gradient_penalty)
        torch.manual_seed(seed + 1)
        out = gradient_penalty(critic, real, fake, alpha) if takes_alpha else gradient_penalty(critic, real, fake)
        torch.manual_seed(seed + 1)
        ref, norms = losses.gradient_penalty(critic, real, fake, alpha if takes_alpha else None)
        if not takes_alpha:  # the alpha both drew
            torch.manual_seed(seed + 1)
            alpha = torch.rand(b, 1, 1, 1)
    mine = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(mine, torch.Tensor) or mine.numel() != 1:
        raise AssertionError("the penalty must be a scalar tensor (keep it a tensor: the critic's loss "
                             f"backpropagates through it), got {type(mine).__name__}"
                             + (f" of shape {tuple(mine.shape)}" if isinstance(mine, torch.Tensor) else ""))
    if not _close(mine.detach(), ref.detach(), rtol=1e-4, atol=1e-6):
        xhat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(xhat).sum(), xhat)
        flat = g.flatten(1).norm(2, dim=1)
        known = {
            "no '- 1': the penalty is (||g||_2 - 1)^2, pulling the norm towards 1, not towards 0":
                (flat**2).mean(),
            "the norm is over dim=1 only (channels); take it over each image's flattened gradient, "
            "g.flatten(1).norm(2, dim=1)": ((g.norm(2, dim=1) - 1) ** 2).mean(),
            "it looks one-sided (only norms above 1 penalised); WGAN-GP's penalty is two-sided":
                (torch.clamp(flat - 1, min=0) ** 2).mean(),
            "it looks multiplied by lambda = 10: return the penalty alone, the critic's loss "
            "multiplies it by gp_lambda": 10 * ((flat - 1) ** 2).mean(),
            "it looks summed over images: average over the batch": ((flat - 1) ** 2).sum(),
        }
        hint = next((h for h, v in known.items() if _close(mine.detach(), v, rtol=1e-4, atol=1e-6)), None)
        if hint is None:
            hint = ("alpha must be ONE number per image, shape (B, 1, 1, 1), not one per pixel"
                    + ("; you were given alpha: use it" if takes_alpha else
                       " (draw it as torch.rand(B, 1, 1, 1), or accept an alpha argument)")
                    + "; xhat = alpha * real + (1 - alpha) * fake; grad of critic(xhat).sum() w.r.t. xhat")
        raise AssertionError(f"penalty: yours {float(mine.detach()):.6g}, package {float(ref.detach()):.6g} (per-image "
                             f"gradient norms {[round(float(n), 3) for n in norms]}). Likely cause: {hint}")
    if not mine.requires_grad:
        raise AssertionError("the penalty has the right value but no gradient for the critic: compute the "
                             "input gradient with torch.autograd.grad(..., create_graph=True)")
    params = list(critic.parameters())
    g_mine = torch.autograd.grad(mine, params, allow_unused=True)
    g_ref = torch.autograd.grad(ref, params, allow_unused=True)
    for p_m, p_r in zip(g_mine, g_ref, strict=True):
        if p_r is not None and (p_m is None or not _close(p_m, p_r, rtol=1e-4, atol=1e-6)):
            raise AssertionError("the penalty's value matches but its gradient w.r.t. the critic's weights "
                                 "does not: use create_graph=True and do not detach the gradient")
    return _passed("check_gradient_penalty", "value and gradient w.r.t. the critic's weights match "
                   "losses.gradient_penalty", verbose)


# ----------------------------------------------------------------------------------------------
# (3) Notebooks 03/04: the projection discriminator's score
# ----------------------------------------------------------------------------------------------


# The package's own function is the reference: one maintained copy of the formula.
reference_projection_output = projection_score


def check_projection_output(projection_output: Callable, *, seed: int = 0, verbose: bool = True) -> bool:
    """Check a learner's projection score against the package's conditional discriminator.

    For ``notebooks/04_cgan_augmentation.ipynb`` (the cGAN's projection discriminator; also
    usable in 03)::

        from medgan_utils.exercises import check_projection_output
        check_projection_output(my_projection_output)   # (h, y, head, embed) -> (B,)

    A seeded conditional :class:`~medgan_utils.models.nets.MLPDiscriminator` (3 classes) gives
    ``h = D.body(x)``, ``D.head`` and ``D.cond.embed``; your function's scores must equal
    ``D(x, y)``, the package's full forward. (B, 1) is accepted as (B,).

    Raises:
        AssertionError: what differs (missing projection term, missing unconditional head,
            a (B, B) result from broadcasting (B, 1) against (B,), wrong label...).
    """
    b, k = 10, 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        D = MLPDiscriminator(1, _SIDE, _HIDDEN, num_classes=k)
        with torch.no_grad():  # a visible class term: the default init makes it tiny
            D.cond.embed.weight.mul_(20)
        x = torch.randn(b, 1, _SIDE, _SIDE)
        y = torch.randint(0, k, (b,))
    with torch.no_grad():
        expected = D(x, y)
        h = D.body(x)
        out = projection_output(h, y, D.head, D.cond.embed)
        if not isinstance(out, torch.Tensor):
            raise AssertionError(f"return a tensor of scores (B,) = ({b},), got {type(out).__name__}")
        if out.shape == (b, b):
            raise AssertionError(f"your scores have shape {tuple(out.shape)}: head(h) is (B, 1) and the "
                                 "projection (B,), so adding them broadcasts to (B, B); squeeze head(h) first")
        if out.shape not in ((b,), (b, 1)):
            raise AssertionError(f"scores must have shape (B,) = ({b},), got {tuple(out.shape)}")
        out = out.reshape(b)
        if not _close(out, expected):
            psi = D.head(h).squeeze(1)
            proj = (D.cond.embed(y) * h).sum(1)
            known = {
                "the projection term <embed(y), h> is missing: add (embed(y) * h).sum(1)": psi,
                "the unconditional term psi(h) = head(h) is missing": proj,
                "the class term has the wrong sign": psi - proj,
                "the class term uses every class's embedding (sum over classes), not the label's":
                    psi + (D.cond.embed.weight.sum(0) * h).sum(1),
            }
            hint = next((t for t, v in known.items() if _close(out, v)),
                        "the score is head(h).squeeze(1) + (embed(y) * h).sum(1)")
            worst = int((out - expected).abs().argmax())
            raise AssertionError(f"scores differ from the package's D(x, y): e.g. image {worst} (label "
                                 f"{int(y[worst])}): yours {float(out[worst]):.5g}, package "
                                 f"{float(expected[worst]):.5g}. {hint}")
    return _passed("check_projection_output", "scores equal the package's conditional D(x, y) "
                   f"on {b} images of {k} classes", verbose)


# ----------------------------------------------------------------------------------------------
# (4) Notebook 04: TSTR (train on synthetic, test on real) and its TRTR baseline
# ----------------------------------------------------------------------------------------------


def reference_tstr(train_fn: Callable, score_fn: Callable, real_train: tuple, synthetic: tuple,
                   real_test: tuple) -> dict[str, float]:
    """TSTR and TRTR with one training recipe: ``augmentation.run_arms``' ``"synthetic"`` and
    ``"real"`` arms, scored on real test images.

    Args:
        train_fn: ``train_fn(images, labels) -> model``.
        score_fn: ``score_fn(model, images, labels) -> float`` (e.g. AUC).
        real_train, synthetic, real_test: ``(images, labels)`` pairs.

    Returns:
        ``{"tstr": ..., "trtr": ..., "tstr_over_trtr": ...}``: the model trained on synthetic
        images scored on the real test images, the model trained on real images scored on the
        same test images, and their ratio (``<fraction>/tstr_over_trtr`` in chapter 04's results).
    """
    tstr = float(score_fn(train_fn(*synthetic), *real_test))
    trtr = float(score_fn(train_fn(*real_train), *real_test))
    return {"tstr": tstr, "trtr": trtr, "tstr_over_trtr": tstr / trtr}


class _Centroids:
    """The checker's classifier: one mean per class, nearest mean wins (deterministic, instant)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, tag: str):
        x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
        y = np.asarray(labels).reshape(-1)
        self.classes = np.unique(y)
        self.means = np.stack([x[y == c].mean(0) for c in self.classes])
        self.tag = tag

    def predict(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
        return self.classes[((x[:, None] - self.means[None]) ** 2).sum(-1).argmin(1)]


def _tstr_data(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three small 2-class sets of (N, 1, 2, 2) "images": real train/test from one distribution,
    synthetic from a shifted one, so that TSTR < TRTR and every mix-up gives another number."""
    rng = np.random.default_rng(seed)

    def make(n: int, shift: float, noise: float, flip: float) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        centre = np.stack([2.0 * y - 1, np.full(n, shift), np.zeros(n), np.zeros(n)], 1)
        x = centre + noise * rng.standard_normal((n, 4))
        y = np.where(rng.random(n) < flip, 1 - y, y)  # label noise: scores below 1
        return x.reshape(n, 1, 2, 2).astype(np.float32), y.astype(np.int64)

    return {"real_train": make(40, 0.0, 1.0, 0.05), "synthetic": make(40, 1.5, 1.6, 0.2),
            "real_test": make(60, 0.0, 1.0, 0.05)}


def check_tstr(tstr: Callable, *, seed: int = 0, verbose: bool = True) -> bool:
    """Check a learner's TSTR function: trains on synthetic, evaluates on real (notebook 04).

    For ``notebooks/04_cgan_augmentation.ipynb``::

        from medgan_utils.exercises import check_tstr
        check_tstr(my_tstr)

    where ``my_tstr(train_fn, score_fn, real_train, synthetic, real_test)`` returns
    ``{"tstr", "trtr", "tstr_over_trtr"}`` (each data argument an ``(images, labels)`` pair;
    ``train_fn(images, labels) -> model``, ``score_fn(model, images, labels) -> float``). In the
    notebook the same function then runs with the chapter's classifier recipe
    (``classify.train_classifier``, ``auc_acc``) on the cGAN's images and the test split.

    The checker passes a tiny nearest-class-mean classifier that records what it was trained and
    scored on, and compares your three numbers with :func:`reference_tstr` (the ratio as
    ``augmentation.summarize_arms`` computes ``tstr_over_trtr``).

    Raises:
        AssertionError: which data a model was trained or scored on when it should not have
            been (trained on real, scored on synthetic or on the training images, labels of
            another set), or which number differs.
    """
    from .augmentation import summarize_arms

    sets = _tstr_data(seed)
    trained: list[str] = []
    scored: list[tuple[str, str]] = []

    def which(images: Any, labels: Any) -> str:
        x = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images)
        yl = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
        for name, (xs, ys) in sets.items():
            if x.shape == xs.shape and np.array_equal(x, xs):
                if yl.shape == ys.shape and np.array_equal(yl, ys):
                    return name
                return f"the {name} images with other labels"
        return "images that are none of the three sets (concatenated or changed?)"

    def train_fn(images: Any, labels: Any) -> _Centroids:
        tag = which(images, labels)
        trained.append(tag)
        return _Centroids(images, labels, tag)

    def score_fn(model: _Centroids, images: Any, labels: Any) -> float:
        tag = which(images, labels)
        scored.append((model.tag, tag))
        y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
        return float((model.predict(images) == y).mean())

    out = tstr(train_fn, score_fn, sets["real_train"], sets["synthetic"], sets["real_test"])
    if not isinstance(out, Mapping) or not {"tstr", "trtr", "tstr_over_trtr"} <= set(out):
        raise AssertionError("return a dict with 'tstr', 'trtr' and 'tstr_over_trtr', got "
                             f"{out if not isinstance(out, Mapping) else sorted(out)}")
    bad_train = [t for t in trained if t not in ("synthetic", "real_train")]
    if bad_train:
        raise AssertionError(f"a model was trained on {bad_train[0]}: train one model on the synthetic "
                             "(images, labels) and one on the real training pair, nothing else")
    if "synthetic" not in trained:
        raise AssertionError(f"no model was trained on the synthetic images (trained on: {trained}): "
                             "TSTR trains on synthetic data")
    if "real_train" not in trained:
        raise AssertionError(f"no model was trained on the real training images (trained on: {trained}): "
                             "TRTR, the baseline, trains on real data")
    wrong = [(m, d) for m, d in scored if d != "real_test"]
    if wrong:
        m, d = wrong[0]
        raise AssertionError(f"the model trained on {m} was scored on {d}: both models are tested on the "
                             "real test pair (TSTR tests on REAL data; scoring on synthetic or on the "
                             "training images says nothing about real patients)")
    ref = reference_tstr(train_fn, score_fn, sets["real_train"], sets["synthetic"], sets["real_test"])
    runs = {"synthetic": [{"auc": ref["tstr"], "acc": ref["tstr"]}],
            "real": [{"auc": ref["trtr"], "acc": ref["trtr"]}]}
    ref["tstr_over_trtr"] = summarize_arms({"check": runs})["check/tstr_over_trtr"]
    for k in ("tstr", "trtr", "tstr_over_trtr"):
        mine = _as_float(out[k], f"out[{k!r}]")
        if not _close(mine, ref[k]):
            hint = ""
            if k == "tstr" and _close(mine, ref["trtr"]):
                hint = ": that is the score of the model trained on REAL data; TSTR's model trains on synthetic"
            elif k == "trtr" and _close(mine, ref["tstr"]):
                hint = ": that is TSTR's score; TRTR's model trains on the real training images"
            elif k == "tstr_over_trtr" and _close(mine, ref["trtr"] / ref["tstr"]):
                hint = ": the ratio is upside down (TSTR / TRTR)"
            raise AssertionError(f"{k}: yours {mine:.6g}, reference {ref[k]:.6g}{hint}")
    return _passed("check_tstr", f"trained on synthetic and on real, both scored on the real test set; "
                   f"tstr {ref['tstr']:.3f}, trtr {ref['trtr']:.3f}, ratio {ref['tstr_over_trtr']:.3f} "
                   "match the reference", verbose)
