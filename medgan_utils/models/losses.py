"""GAN losses, written to match the equations the notebooks print.

With ``D(x)`` a logit (BCE losses) or a real-valued critic score (Wasserstein):

* discriminator, BCE:           ``loss_D = -E[log s(D(x))] - E[log(1 - s(D(G(z))))]``
* generator, saturating:        ``loss_G =  E[log(1 - s(D(G(z))))]``  (minimised; the original
  minimax form: its gradient vanishes when D confidently rejects fakes, i.e. early in training)
* generator, non-saturating:    ``loss_G = -E[log s(D(G(z)))]``       (Goodfellow et al. 2014's fix)
* critic, Wasserstein:          ``loss_D = E[D(G(z))] - E[D(x)] + lambda * GP``
* generator, Wasserstein:       ``loss_G = -E[D(G(z))]``
* gradient penalty (Gulrajani et al. 2017): ``GP = E[(||grad_xhat D(xhat)||_2 - 1)^2]`` with
  ``xhat = a x + (1 - a) G(z)``, ONE ``a ~ U[0, 1]`` PER IMAGE, and the norm taken over each
  image's flattened gradient. Well-known code gets this wrong: PyTorch-GAN drew ``a`` per pixel
  (issue #5), other code takes the norm over ``dim=1`` only, and pytorch-CycleGAN-and-pix2pix's
  option computes the GP and never adds it to the loss (issue #1201). The tests pin all three.

Introduced in ``notebooks/01_vanilla_gan.ipynb`` (BCE) and ``03_wgan_gp.ipynb`` (Wasserstein).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def d_loss_bce(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-E[log s(D(x))] - E[log(1 - s(D(G(z))))]`` computed stably from logits."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def g_loss_saturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """``E[log(1 - s(D(G(z))))]``: minimising it is the original minimax game.

    ``log(1 - s(l)) = -softplus(l)``; its gradient w.r.t. the logit is ``-s(l)``, which is ~0 when
    D rejects the fake (``l << 0``): the vanishing gradient notebook 01 shows.
    """
    return -F.softplus(fake_logits).mean()


def g_loss_non_saturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """``-E[log s(D(G(z)))]``; gradient ``s(l) - 1`` is ~-1 exactly when D rejects the fake."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def d_loss_wasserstein(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """``E[D(G(z))] - E[D(x)]`` (the negative of the critic's Wasserstein estimate)."""
    return fake_scores.mean() - real_scores.mean()


def g_loss_wasserstein(fake_scores: torch.Tensor) -> torch.Tensor:
    """``-E[D(G(z))]``."""
    return -fake_scores.mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    alpha: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WGAN-GP's two-sided penalty on random interpolates, one ``alpha`` per image.

    Args:
        critic: maps (B, C, H, W) to scores (B,) or (B, 1); extra inputs (labels) via a closure.
        real: (B, C, H, W) real images.
        fake: (B, C, H, W) generated images (detached from G's graph by the caller or not).
        alpha: optional (B, 1, 1, 1) mixing weights (drawn from U[0, 1] if None).

    Returns:
        ``(penalty, grad_norms)``: the scalar ``E[(||g||_2 - 1)^2]`` (differentiable w.r.t. the
        critic's parameters) and the per-image norms (B,), for logging.
    """
    b = real.shape[0]
    if alpha is None:
        alpha = torch.rand(b, 1, 1, 1, device=real.device, dtype=real.dtype)
    if alpha.shape != (b, 1, 1, 1):
        raise ValueError(f"alpha must have shape (B, 1, 1, 1) = ({b}, 1, 1, 1), got {tuple(alpha.shape)}")
    xhat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(xhat)
    (grad,) = torch.autograd.grad(scores.sum(), xhat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return ((norms - 1) ** 2).mean(), norms.detach()


# -- one object per loss family -----------------------------------------------------------------
# A model's d_step/g_step call these instead of branching on the loss name, so a new family (or a
# new model class: SRGAN, pix2pix, CycleGAN) picks one up without copying the branches.


class BCEGame:
    """The original GAN game on logits (notebook 01): BCE for D, saturating or not for G."""

    needs_batchnorm_free_critic = False

    def __init__(self, g_loss: str = "non-saturating"):
        if g_loss not in ("non-saturating", "saturating"):
            raise ValueError(f"g_loss must be 'non-saturating' or 'saturating', got {g_loss!r}")
        self.g_loss_name = g_loss

    def d_loss(self, real_out: torch.Tensor, fake_out: torch.Tensor,
               critic: Callable | None = None, real: torch.Tensor | None = None,
               fake: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss_D, logs)``; ``critic``/``real``/``fake`` are for penalties (unused here)."""
        logs = {"D_real": torch.sigmoid(real_out).mean().item(),
                "D_fake": torch.sigmoid(fake_out).mean().item()}
        return d_loss_bce(real_out, fake_out), logs

    def g_loss(self, fake_out: torch.Tensor) -> torch.Tensor:
        if self.g_loss_name == "saturating":
            return g_loss_saturating(fake_out)
        return g_loss_non_saturating(fake_out)

    def after_d_step(self, D: torch.nn.Module) -> None:
        """Hook after the critic's optimizer step (weight clipping uses it)."""


class WassersteinGP(BCEGame):
    """Wasserstein critic with the gradient penalty (Gulrajani et al. 2017), notebook 03."""

    needs_batchnorm_free_critic = True

    def __init__(self, gp_lambda: float = 10.0):
        self.gp_lambda = gp_lambda

    def d_loss(self, real_out, fake_out, critic=None, real=None, fake=None):
        w = -d_loss_wasserstein(real_out, fake_out)
        gp, norms = gradient_penalty(critic, real, fake)
        return -w + self.gp_lambda * gp, {"wasserstein": w.item(), "gp": gp.item(),
                                          "grad_norm": norms.mean().item()}

    def g_loss(self, fake_out: torch.Tensor) -> torch.Tensor:
        return g_loss_wasserstein(fake_out)


class WassersteinClip(WassersteinGP):
    """Wasserstein critic kept Lipschitz by clipping its weights to +-clip (Arjovsky et al. 2017)."""

    def __init__(self, clip: float = 0.01):
        self.clip = clip

    def d_loss(self, real_out, fake_out, critic=None, real=None, fake=None):
        loss = d_loss_wasserstein(real_out, fake_out)
        return loss, {"wasserstein": -loss.item()}

    @torch.no_grad()
    def after_d_step(self, D: torch.nn.Module) -> None:
        for p in D.parameters():
            p.clamp_(-self.clip, self.clip)


def make_game(loss: str, *, g_loss: str = "non-saturating", gp_lambda: float = 10.0,
              clip: float = 0.01) -> BCEGame:
    """The loss object for ``loss`` in ("bce", "wgan-gp", "wgan-clip")."""
    if loss == "bce":
        return BCEGame(g_loss)
    if loss == "wgan-gp":
        return WassersteinGP(gp_lambda)
    if loss == "wgan-clip":
        return WassersteinClip(clip)
    raise ValueError(f"loss must be one of ('bce', 'wgan-gp', 'wgan-clip'), got {loss!r}")
