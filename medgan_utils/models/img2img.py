"""The one training step of the course's paired image-to-image models (chapters 05 and 06).

A generator maps an input image (a low-resolution slice, a noisy reconstruction, a slice with a
hole and its mask) to the target it was made from. Its loss is ``l1_weight`` x a pixel loss,
optionally ``feature_weight`` x a feature ("perceptual") loss in a frozen encoder the project
trained itself, and ``adv_weight`` x an adversarial loss from MONAI's ``PatchDiscriminator``,
which judges overlapping patches rather than the whole image (pix2pix, Isola et al. 2017). A
model with ``adv_weight = 0`` is the pixel-loss twin of the GAN: same generator, no D.

Subclasses choose the generator (:class:`~.sr.SRModel`: SRResNet; :class:`~.recon.ReconModel`:
a U-Net) and may override :meth:`PairedModel.pixel_loss` (inpainting scores only the hole) and
:meth:`PairedModel.visuals`. The discriminator can be *conditional* (``conditional_d``): it sees
the input beside the output, as pix2pix's does, so it judges whether the output fits *this* input,
not only whether it looks real. Super-resolution cannot (input and output differ in size).

Adversarial losses (``gan_loss``): ``"bce"``, the non-saturating loss of chapter 01 on logits;
``"least_squares"`` (LSGAN, Mao et al. 2017), MONAI's ``PatchAdversarialLoss`` with
``no_activation_leastsq=True`` (its default first squashes the logits with a LeakyReLU).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import PatchDiscriminator
from torch import nn

from .losses import d_loss_bce, g_loss_non_saturating
from .parts import set_lr

__all__ = ["GAN_LOSSES", "AdversarialLoss", "PairedModel", "check_loss_weights", "feature_loss"]

GAN_LOSSES = ("bce", "least_squares")


class AdversarialLoss:
    """The adversarial terms on discriminator logits, shared by every image-to-image model
    (pix2pix-style models here, CycleGAN in :mod:`.cyclegan`).

    ``"bce"``: the non-saturating loss of chapter 01 on logits. ``"least_squares"`` (LSGAN, Mao
    et al. 2017): MONAI's ``PatchAdversarialLoss`` with ``no_activation_leastsq=True``, i.e.
    D minimises ``((D(real) - 1)^2 + D(fake)^2) / 2`` and G minimises ``(D(G(x)) - 1)^2``.
    """

    def __init__(self, gan_loss: str = "least_squares"):
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {gan_loss!r}")
        self.kind = gan_loss
        if gan_loss == "least_squares":
            from monai.losses import PatchAdversarialLoss

            self._lsgan = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)

    def d(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """D's loss from its logits on real and on (detached) fake images."""
        if self.kind == "bce":
            return d_loss_bce(real, fake)
        return 0.5 * (self._lsgan(real, target_is_real=True, for_discriminator=True)
                      + self._lsgan(fake, target_is_real=False, for_discriminator=True))

    def g(self, fake: torch.Tensor) -> torch.Tensor:
        """G's loss from D's logits on its fakes."""
        if self.kind == "bce":
            return g_loss_non_saturating(fake)
        return self._lsgan(fake, target_is_real=True, for_discriminator=False)


def check_loss_weights(config: Any) -> None:
    """The checks every paired config's loss weights share (called from its ``__post_init__``)."""
    if config.feature_weight > 0 and not config.feature_net:
        raise ValueError("feature_weight > 0 needs feature_net: the encoder checkpoint of the loss")
    if min(config.l1_weight, config.feature_weight, config.adv_weight) < 0:
        raise ValueError("loss weights must be >= 0")
    if config.l1_weight + config.feature_weight == 0:
        raise ValueError("an adversarial loss alone does not tie the output to the input: "
                         "give l1_weight or feature_weight > 0")


def feature_loss(encoder: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over the encoder's feature maps of the MSE between those of ``fake`` and ``real``,
    each map's MSE divided by the mean square of the real map (so every layer weighs alike)."""
    loss = fake.new_zeros(())
    with torch.no_grad():
        targets = encoder.feature_maps(real)
    maps = encoder.feature_maps(fake)
    for f, t in zip(maps, targets):
        loss = loss + F.mse_loss(f, t) / t.square().mean().clamp_min(1e-6)
    return loss / len(maps)


class PairedModel:
    """A generator trained on ``(input, target)`` batches, as :func:`medgan_utils.train.fit`
    trains it.

    Args:
        config: a frozen config with ``channels``, ``l1_weight``, ``feature_weight``,
            ``adv_weight``, ``d_width``, ``lr``, ``lr_d`` and optionally ``gan_loss`` (default
            ``"bce"``) and ``conditional_d`` (default False).
        generator: the network, input (B, C_in, h, w) -> output (B, C, H, W).
        device: where the networks live.
        feature_net: the frozen encoder of the feature loss (a module with ``feature_maps(x)``),
            required when ``config.feature_weight > 0``.
        init_state: a generator ``state_dict`` to start from (a GAN starts from its pixel twin).
        in_channels: channels of the generator's input (for a conditional D; default
            ``config.channels``).

    A config that mixes in :class:`~medgan_utils.models.parts.LinearDecay` (chapter 06's) decays
    both learning rates by the model's step count, which resume restores.
    """

    def __init__(self, config: Any, generator: nn.Module, device: torch.device | str = "cpu",
                 feature_net: nn.Module | None = None, init_state: dict | None = None,
                 in_channels: int | None = None):
        self.config = c = config
        self.device = torch.device(device)
        self.G = generator.to(self.device)
        if init_state is not None:
            self.G.load_state_dict(init_state)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=c.lr, betas=(0.9, 0.999))
        self.gan_loss = getattr(c, "gan_loss", "bce")
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}")
        self.conditional_d = bool(getattr(c, "conditional_d", False))
        self.D = self.opt_D = None
        if c.adv_weight > 0:
            # No normalisation in D. Measured on CT patches against the shipped SRResNet (chapter
            # 05): with instance, group or batch norm, D's loss stayed at chance (2 ln 2 = 1.386)
            # for 120 steps; without, it fell to 1.32 and on. Likely cause: each norm rescales
            # every feature map (batch norm too: real and fake go through D in separate batches),
            # which hides how much fine texture a patch has, the main difference between a smooth
            # output and a real slice.
            d_in = c.channels + ((in_channels or c.channels) if self.conditional_d else 0)
            self.D = PatchDiscriminator(spatial_dims=2, channels=c.d_width, in_channels=d_in,
                                        num_layers_d=3, norm=None, bias=True).to(self.device)
            self.opt_D = torch.optim.Adam(self.D.parameters(), lr=c.lr_d, betas=(0.9, 0.999))
            self._adv = AdversarialLoss(self.gan_loss)
        self.feature_net = feature_net.to(self.device).eval().requires_grad_(False) if feature_net else None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.step = 0

    @property
    def adversarial(self) -> bool:
        return self.D is not None

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])

    def _set_lr(self) -> None:
        factor = getattr(self.config, "lr_factor", None)
        if factor is None:
            return
        f = factor(self.step)
        set_lr(self.opt_G, self.config.lr * f)
        if self.opt_D is not None:
            set_lr(self.opt_D, self.config.lr_d * f)

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, **({"D": self.D} if self.D is not None else {})}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_G, **({"D": self.opt_D} if self.opt_D is not None else {})}

    # -- the parts a subclass may change ----------------------------------------------------

    def pixel_loss(self, fake: torch.Tensor, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """L1 between output and target over the whole image."""
        return F.l1_loss(fake, target)

    def _logits(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.D(torch.cat([x, image], 1) if self.conditional_d else image)[-1]

    # -- training and use ---------------------------------------------------------------------

    def train_step(self, batches: Iterator) -> dict[str, float]:
        x, target = next(batches)
        c = self.config
        self._set_lr()
        self.G.train()
        fake = self.G(x)
        log: dict[str, float] = {}
        if self.adversarial:  # D first, on the same fakes G is then updated with
            loss_D = self._adv.d(self._logits(x, target), self._logits(x, fake.detach()))
            self.opt_D.zero_grad(set_to_none=True)
            loss_D.backward()
            self.opt_D.step()
            log["loss_D"] = loss_D.item()
        l1 = self.pixel_loss(fake, target, x)
        loss_G = c.l1_weight * l1
        log["l1"] = l1.item()
        if c.feature_weight > 0:
            if self.feature_net is None:
                raise ValueError("this config has a feature loss: build the model with feature_net "
                                 "(the frozen encoder; the model kind loads config.feature_net)")
            feat = feature_loss(self.feature_net, fake, target)
            loss_G = loss_G + c.feature_weight * feat
            log["feature"] = feat.item()
        if self.adversarial:
            adv = self._adv.g(self._logits(x, fake))
            loss_G = loss_G + c.adv_weight * adv
            log["adv"] = adv.item()
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        log["loss_G"] = loss_G.item()
        self._last = (x[:8].detach(), target[:8].detach())
        self.step += 1
        return log

    @torch.no_grad()
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Input (B, C_in, h, w) in [-1, 1] -> output (B, C, H, W) in [-1, 1]."""
        was = self.G.training
        self.G.eval()
        y = self.G(x.to(self.device)).clamp(-1.0, 1.0)
        self.G.train(was)
        return y

    def visuals(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Input, output and target of the last training batch's first patches."""
        if self._last is None:
            return {}
        x, target = self._last
        return {"input": x[:, :self.config.channels].clamp(-1, 1), "output": self.apply(x),
                "target": target}
