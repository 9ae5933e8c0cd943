"""The GAN losses against their equations, and the gradient penalty against three known bugs:
alpha drawn per pixel (PyTorch-GAN #5), the norm over dim=1 instead of per image, and a GP that
is computed but never added to the critic's loss (pytorch-CycleGAN-and-pix2pix #1201)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medgan_utils.models import GAN, GANConfig
from medgan_utils.models import losses as L

B = 8


def logits(seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, generator=g, dtype=torch.float64) * scale


# --- BCE and Wasserstein losses -----------------------------------------------------------------


def test_d_loss_bce_matches_the_formula():
    r, f = logits(0), logits(1)
    s = torch.sigmoid
    expected = -torch.log(s(r)).mean() - torch.log(1 - s(f)).mean()
    torch.testing.assert_close(L.d_loss_bce(r, f), expected)
    # A perfect discriminator has loss ~0, a fooled one a large loss.
    big = torch.full((B,), 30.0, dtype=torch.float64)
    assert L.d_loss_bce(big, -big) < 1e-10
    assert L.d_loss_bce(-big, big) > 50


def _grad(loss_fn, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    loss_fn(x).backward()
    return x.grad


def test_generator_losses_match_formulas_and_gradients():
    fake = logits(2)
    s = torch.sigmoid(fake)
    torch.testing.assert_close(L.g_loss_saturating(fake), torch.log(1 - s).mean())
    torch.testing.assert_close(L.g_loss_non_saturating(fake), -torch.log(s).mean())
    torch.testing.assert_close(_grad(L.g_loss_saturating, fake), -s / B)
    torch.testing.assert_close(_grad(L.g_loss_non_saturating, fake), (s - 1) / B)


def test_saturating_gradient_vanishes_when_d_rejects_fakes():
    rejected = torch.full((B,), -20.0, dtype=torch.float64)  # D is sure these are fake
    sat = _grad(L.g_loss_saturating, rejected)
    non_sat = _grad(L.g_loss_non_saturating, rejected)
    assert sat.abs().max() < 1e-8
    torch.testing.assert_close(non_sat, torch.full_like(rejected, -1.0 / B), rtol=1e-6, atol=0)
    # Both push the logit of the fake up (negative gradient of a minimised loss).
    assert (sat < 0).all() and (non_sat < 0).all()


def test_wasserstein_losses():
    r, f = logits(3), logits(4)
    torch.testing.assert_close(L.d_loss_wasserstein(r, f), f.mean() - r.mean())
    torch.testing.assert_close(L.g_loss_wasserstein(f), -f.mean())


# --- the gradient penalty -----------------------------------------------------------------------


class Recording(nn.Module):
    """A critic that remembers what it was given."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.inputs = fn, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.fn(x)


def images(seed: int, shape=(B, 3, 5, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1


def test_alpha_must_be_one_per_image():
    real, fake = images(0), images(1)
    critic = Recording(lambda x: x.flatten(1).sum(1))
    for bad in (torch.rand(B), torch.rand(B, 1), torch.rand(B, 3, 5, 5), torch.rand(B, 1, 5, 5),
                torch.rand(B - 1, 1, 1, 1)):
        with pytest.raises(ValueError, match=r"\(B, 1, 1, 1\)"):
            L.gradient_penalty(critic, real, fake, alpha=bad.double())


def test_interpolates_use_the_given_alpha_per_image():
    real, fake = images(0), images(1)
    alpha = torch.linspace(0, 1, B, dtype=torch.float64).view(B, 1, 1, 1)
    critic = Recording(lambda x: x.flatten(1).sum(1))
    L.gradient_penalty(critic, real, fake, alpha=alpha)
    (xhat,) = critic.inputs
    torch.testing.assert_close(xhat, alpha * real + (1 - alpha) * fake)


def test_default_alpha_is_drawn_per_image_not_per_pixel():
    real = torch.ones(B, 3, 6, 6)
    fake = -torch.ones(B, 3, 6, 6)
    critic = Recording(lambda x: x.flatten(1).sum(1))
    torch.manual_seed(0)
    L.gradient_penalty(critic, real, fake)
    alpha = (critic.inputs[0] + 1) / 2  # xhat = a*1 + (1-a)*(-1)
    per_image = alpha.flatten(1)
    assert (per_image.max(1).values - per_image.min(1).values).max() < 1e-6, "alpha varies in an image"
    assert per_image[:, 0].unique().numel() == B, "each image draws its own alpha"
    assert ((per_image >= 0) & (per_image <= 1)).all()


@pytest.mark.parametrize("w_norm", [0.3, 1.0, 2.5])
def test_linear_critic_gives_the_analytic_penalty(w_norm):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
    w = w / w.norm() * w_norm
    critic = Recording(lambda x: (x * w).flatten(1).sum(1))  # D(x) = <w, x>
    gp, norms = L.gradient_penalty(critic, images(0), images(1))
    assert norms.shape == (B,), "one norm per image, over all of C*H*W"
    torch.testing.assert_close(norms, torch.full((B,), w_norm, dtype=torch.float64))
    torch.testing.assert_close(gp, torch.tensor((w_norm - 1) ** 2, dtype=torch.float64))


def test_norm_is_over_each_flattened_image():
    # D(x) = |x|^2 / 2 per image: the gradient at xhat is xhat itself, different per image.
    real, fake = images(0), images(1)
    alpha = torch.rand(B, 1, 1, 1, dtype=torch.float64)
    critic = Recording(lambda x: 0.5 * (x**2).flatten(1).sum(1))
    gp, norms = L.gradient_penalty(critic, real, fake, alpha=alpha)
    xhat = alpha * real + (1 - alpha) * fake
    expected = xhat.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, expected)
    torch.testing.assert_close(gp, ((expected - 1) ** 2).mean())
    # What the dim=1 bug would compute differs: a (B, H, W) map of per-pixel channel norms.
    assert xhat.norm(dim=1).shape != norms.shape


def test_penalty_is_differentiable_wrt_critic_parameters():
    critic = nn.Linear(75, 1, bias=False).double()
    with torch.no_grad():
        critic.weight.mul_(3.0 / critic.weight.norm())
    gp, _ = L.gradient_penalty(lambda x: critic(x.flatten(1)), images(0), images(1))
    gp.backward()
    w = critic.weight.detach()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(critic.weight.grad, 2 * (w.norm() - 1) * w / w.norm())


@pytest.mark.parametrize("start", [0.2, 4.0])
def test_training_on_the_penalty_alone_pulls_grad_norms_to_one(start):
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(75, 1)).double()
    with torch.no_grad():
        critic[1].weight.mul_(start / critic[1].weight.norm())
    opt = torch.optim.SGD(critic.parameters(), lr=0.05)
    real, fake = images(0), images(1)
    _, first = L.gradient_penalty(critic, real, fake)
    for _ in range(200):
        gp, norms = L.gradient_penalty(critic, real, fake)
        opt.zero_grad()
        gp.backward()
        opt.step()
    assert abs(first.mean().item() - start) < 1e-6
    assert (norms - 1).abs().max() < 1e-3


def _wgan_d_step(gp_lambda: float) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    gan = GAN(GANConfig.preset("wgan-gp", width=8, latent_dim=16, gp_lambda=gp_lambda))
    real = torch.rand(B, 1, 28, 28) * 2 - 1
    torch.manual_seed(1)  # same noise and alpha for both runs
    logs = gan.d_step((real, torch.zeros(B, dtype=torch.long)))
    return logs, {k: p.detach().clone() for k, p in gan.D.named_parameters()}


def test_gp_is_added_to_the_critic_loss_in_d_step():
    with_gp, d_with = _wgan_d_step(10.0)
    without, d_without = _wgan_d_step(0.0)
    assert with_gp["gp"] > 0
    assert with_gp["wasserstein"] == pytest.approx(without["wasserstein"], rel=1e-6)
    assert with_gp["gp"] == pytest.approx(without["gp"], rel=1e-6)
    assert without["loss_D"] == pytest.approx(-without["wasserstein"], rel=1e-6)
    assert with_gp["loss_D"] == pytest.approx(-with_gp["wasserstein"] + 10.0 * with_gp["gp"],
                                              rel=1e-5)
    assert with_gp["loss_D"] != pytest.approx(without["loss_D"], rel=1e-3)
    # The penalty also changes the update itself, not only the logged number.
    assert any(not torch.equal(d_with[k], d_without[k]) for k in d_with)
