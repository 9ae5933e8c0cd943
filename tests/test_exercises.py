"""The exercise checkers accept the package's reference implementations and reject plausible
mistakes, each with a message that names the mistake (no training; well under a second each)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medgan_utils import exercises as ex
from medgan_utils.models import losses

# --- (1) notebook 01: the generator's step -------------------------------------------------------


def _update(opt_G, loss_G):
    opt_G.zero_grad()
    loss_G.backward()
    opt_G.step()


def test_g_step_checker_accepts_the_reference_and_the_notebook_form(capsys):
    assert ex.check_g_step(ex.reference_g_step) is True
    assert "passed" in capsys.readouterr().out

    def with_package_loss(z, G, D, opt_G):  # the losses module's function, a tensor returned
        loss_G = losses.g_loss_non_saturating(D(G(z)))
        _update(opt_G, loss_G)
        return loss_G.detach()

    def log_sigmoid_by_hand(z, G, D, opt_G):  # -E[log s(D(G(z)))] written out
        loss_G = -torch.log(torch.sigmoid(D(G(z)))).mean()
        _update(opt_G, loss_G)
        return loss_G.item()

    assert ex.check_g_step(with_package_loss, verbose=False)
    assert ex.check_g_step(log_sigmoid_by_hand, verbose=False)


def _saturating(z, G, D, opt_G):
    loss_G = -F.softplus(D(G(z))).mean()  # E[log(1 - s(D(G(z))))]: the minimax form
    _update(opt_G, loss_G)
    return loss_G.item()


def _updates_d_too(z, G, D, opt_G):
    loss_G = ex.reference_g_step(z, G, D, opt_G)
    with torch.no_grad():
        for p in D.parameters():
            p.sub_(0.1 * p.grad)  # also "trains" D on G's loss
    return loss_G


def _no_zero_grad(z, G, D, opt_G):
    logits = D(G(z))
    loss_G = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    loss_G.backward()  # the mistake: no opt_G.zero_grad() first
    opt_G.step()
    return loss_G.item()


def _detached_fake(z, G, D, opt_G):
    logits = D(G(z).detach())
    loss_G = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    _update(opt_G, loss_G)
    return loss_G.item()


@pytest.mark.parametrize("wrong, message", [
    (_saturating, "saturating"),
    (_updates_d_too, "D's weights changed"),
    (_no_zero_grad, "zero_grad"),
    (_detached_fake, "detach"),
    (lambda z, G, D, opt_G: None, "returned None"),
])
def test_g_step_checker_rejects_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_g_step(wrong, verbose=False)


def test_checkers_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ex.check_g_step(ex.reference_g_step, verbose=False)
    ex.check_gradient_penalty(losses.gradient_penalty, verbose=False)
    assert torch.equal(torch.rand(3), expected)


# --- (2) notebook 03: the gradient penalty -------------------------------------------------------


def _gp_scalar(critic, real, fake):  # draws alpha itself, per image, returns only the penalty
    alpha = torch.rand(real.shape[0], 1, 1, 1)
    xhat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(xhat).sum(), xhat, create_graph=True)
    return ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def _gp_parts(critic, real, fake, alpha):
    xhat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(xhat).sum(), xhat, create_graph=True)
    return g


def test_gradient_penalty_checker_accepts_the_package_and_a_scalar_form():
    assert ex.check_gradient_penalty(losses.gradient_penalty, verbose=False)
    assert ex.check_gradient_penalty(_gp_scalar, verbose=False)


@pytest.mark.parametrize("wrong, message", [
    (lambda c, r, f, alpha: (_gp_parts(c, r, f, alpha).flatten(1).norm(2, dim=1) ** 2).mean(), "- 1"),
    (lambda c, r, f, alpha: ((_gp_parts(c, r, f, alpha).norm(2, dim=1) - 1) ** 2).mean(), "dim=1"),
    (lambda c, r, f, alpha: 10 * ((_gp_parts(c, r, f, alpha).flatten(1).norm(2, dim=1) - 1) ** 2).mean(),
     "lambda"),
    (lambda c, r, f, alpha: ((_gp_parts(c, r, f, alpha).flatten(1).norm(2, dim=1) - 1) ** 2).mean().detach(),
     "create_graph"),
])
def test_gradient_penalty_checker_rejects_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_gradient_penalty(wrong, verbose=False)


def test_gradient_penalty_checker_rejects_alpha_per_pixel():
    def per_pixel(critic, real, fake):  # PyTorch-GAN's issue #5
        alpha = torch.rand(real.shape)
        xhat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(xhat).sum(), xhat, create_graph=True)
        return ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()

    with pytest.raises(AssertionError, match="ONE number per image"):
        ex.check_gradient_penalty(per_pixel, verbose=False)


# --- (3) notebooks 03/04: the projection discriminator -------------------------------------------


def test_projection_checker_accepts_the_reference():
    assert ex.check_projection_output(ex.reference_projection_output, verbose=False)
    # (B, 1) is accepted as (B,)
    assert ex.check_projection_output(
        lambda h, y, head, embed: ex.reference_projection_output(h, y, head, embed)[:, None], verbose=False)


@pytest.mark.parametrize("wrong, message", [
    (lambda h, y, head, embed: head(h).squeeze(1), "projection term"),
    (lambda h, y, head, embed: head(h) + (embed(y) * h).sum(1), "broadcasts"),
    (lambda h, y, head, embed: (embed(y) * h).sum(1), "unconditional"),
    (lambda h, y, head, embed: head(h).squeeze(1) + (embed((y + 1) % 3) * h).sum(1), "differ"),
])
def test_projection_checker_rejects_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_projection_output(wrong, verbose=False)


# --- (4) notebook 04: TSTR -----------------------------------------------------------------------


def test_tstr_checker_accepts_the_reference(capsys):
    assert ex.check_tstr(ex.reference_tstr) is True
    out = capsys.readouterr().out
    assert "passed" in out and "tstr" in out


def _train_on_real(train_fn, score_fn, real_train, synthetic, real_test):
    tstr = score_fn(train_fn(*real_train), *real_test)  # the mistake: the "TSTR" model sees real data
    trtr = score_fn(train_fn(*real_train), *real_test)
    return {"tstr": tstr, "trtr": trtr, "tstr_over_trtr": tstr / trtr}


def _test_on_synthetic(train_fn, score_fn, real_train, synthetic, real_test):
    tstr = score_fn(train_fn(*synthetic), *synthetic)  # TSTS
    trtr = score_fn(train_fn(*real_train), *real_test)
    return {"tstr": tstr, "trtr": trtr, "tstr_over_trtr": tstr / trtr}


def _mixed_labels(train_fn, score_fn, real_train, synthetic, real_test):
    tstr = score_fn(train_fn(synthetic[0], real_train[1]), *real_test)
    trtr = score_fn(train_fn(*real_train), *real_test)
    return {"tstr": tstr, "trtr": trtr, "tstr_over_trtr": tstr / trtr}


def _ratio_upside_down(train_fn, score_fn, real_train, synthetic, real_test):
    out = ex.reference_tstr(train_fn, score_fn, real_train, synthetic, real_test)
    return {**out, "tstr_over_trtr": out["trtr"] / out["tstr"]}


@pytest.mark.parametrize("wrong, message", [
    (_train_on_real, "no model was trained on the synthetic"),
    (_test_on_synthetic, "scored on synthetic"),
    (_mixed_labels, "other labels"),
    (_ratio_upside_down, "upside down"),
])
def test_tstr_checker_rejects_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_tstr(wrong, verbose=False)


# --- the fixed-noise callback notebook 01 uses with fit ------------------------------------------


def test_fixed_noise_callback_records_the_same_latents_without_changing_training():
    from medgan_utils.models import GAN, GANConfig
    from medgan_utils.train import FitConfig, fit
    from medgan_utils.viz import fixed_noise_callback

    config = GANConfig(arch="mlp", loss="bce", latent_dim=4, image_size=6, width=8, d_norm="none")
    data = [torch.rand(8, 1, 6, 6) * 2 - 1 for _ in range(3)]

    def train(with_frames: bool):
        torch.manual_seed(0)
        gan = GAN(config)
        frames = fixed_noise_callback(every=2, n=5, model=gan) if with_frames else None
        fit(gan, data, FitConfig(steps=5, log_every=1, ckpt_every=0), progress=False,
            callbacks=[frames.callback()] if frames else ())
        return gan, frames

    plain, _ = train(False)
    gan, frames = train(True)
    for p, q in zip(plain.G.parameters(), gan.G.parameters()):
        assert torch.equal(p, q)  # sampling with its own generator leaves training untouched
    assert sorted(frames.frames) == [0, 2, 4, 5] and frames.frames[5].shape == (5, 1, 6, 6)
    assert torch.equal(frames.samples(gan), frames.frames[5])  # the same latents every time
    assert not torch.equal(frames.frames[0], frames.frames[5])
