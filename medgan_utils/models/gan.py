"""One GAN class for chapters 01-04: the architecture and the loss are configuration.

``GAN(GANConfig(arch="mlp", loss="bce"))`` is the vanilla GAN of notebook 01,
``arch="dcgan"`` the DCGAN of 02, ``loss="wgan-gp"`` (critic without BatchNorm, gradient penalty,
``n_critic=5``) the WGAN-GP of 03, ``num_classes > 0`` the conditional GAN of 04. It exposes what
:func:`medgan_utils.train.fit` drives: ``d_step``, ``g_step``, ``sample``, ``modules``,
``optimizers``.

Introduced in ``notebooks/01_vanilla_gan.ipynb``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .diffaugment import diff_augment
from .nets import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator, init_weights

ARCHS = {"mlp": (MLPGenerator, MLPDiscriminator), "dcgan": (DCGANGenerator, DCGANDiscriminator)}
LOSSES = ("bce", "wgan-gp", "wgan-clip")


@dataclass(frozen=True)
class GANConfig:
    """Everything that defines a GAN of chapters 01-04 (saved in every checkpoint header).

    Attributes:
        arch: "mlp" (notebook 01) or "dcgan" (convolutional, notebooks 02-04).
        loss: "bce" (the original GAN game), "wgan-gp" (Wasserstein + gradient penalty) or
            "wgan-clip" (Wasserstein with the critic's weights clipped to +-clip, Arjovsky 2017).
        g_loss: for "bce": "non-saturating" (default) or "saturating" (the minimax form).
        latent_dim: size of z.
        channels: image channels (1 grey, 3 RGB), from the data.
        image_size: image side in pixels, from the data.
        num_classes: > 0 makes G and D class-conditional.
        width: channels of the first/last conv stage (dcgan) or hidden units (mlp).
        d_norm: discriminator normalisation: "batch" (DCGAN), "layer" or "none"; WGAN-GP
            critics cannot use "batch" (the penalty is per image).
        lr_g, lr_d, beta1, beta2: Adam settings.
        gp_lambda: weight of the gradient penalty (10 in Gulrajani et al.).
        clip: weight-clipping bound of "wgan-clip" (0.01 in Arjovsky et al.).
        n_critic: critic steps per generator step (fit's default; 5 for WGAN-GP).
        ema: decay of an exponential moving average of G's weights (0 = off; e.g. 0.999).
        diffaugment: DiffAugment policy applied to D's inputs, e.g. "color,translation,cutout".
        aux_weight: > 0 (conditional only) adds AC-GAN's auxiliary classifier (Odena et al. 2017):
            a class head on D's features, trained by cross-entropy on *real* images only, and a
            generator term ``aux_weight * CE(head(G(z, y)), y)`` that rewards fakes the head
            assigns to their label. It makes samples more class-faithful (chapter 04), at some
            cost in diversity. Training the head on reals only avoids AC-GAN's known pull
            towards easy-to-classify fakes from the discriminator side.
    """

    arch: str = "dcgan"
    loss: str = "bce"
    g_loss: str = "non-saturating"
    latent_dim: int = 64
    channels: int = 1
    image_size: int = 28
    num_classes: int = 0
    width: int = 32
    d_norm: str = "batch"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    gp_lambda: float = 10.0
    clip: float = 0.01
    n_critic: int = 1
    ema: float = 0.0
    diffaugment: str = ""
    aux_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {self.arch!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.g_loss not in ("non-saturating", "saturating"):
            raise ValueError(f"g_loss must be 'non-saturating' or 'saturating', got {self.g_loss!r}")
        if self.loss.startswith("wgan") and self.d_norm == "batch":
            raise ValueError("a Wasserstein critic must not use BatchNorm (its score must depend on "
                             "each image alone): set d_norm='layer' or 'none'")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.aux_weight < 0 or (self.aux_weight > 0 and self.num_classes < 2):
            raise ValueError(f"aux_weight must be >= 0 and needs num_classes >= 2, got "
                             f"aux_weight={self.aux_weight}, num_classes={self.num_classes}")

    @classmethod
    def preset(cls, name: str, **overrides) -> GANConfig:
        """The course's presets: "gan" (01), "dcgan" (02), "wgan-gp" (03); overrides win."""
        presets = {
            "gan": dict(arch="mlp", loss="bce", width=256, d_norm="none"),
            "dcgan": dict(arch="dcgan", loss="bce", d_norm="batch"),
            # Half DCGAN's width: G runs in each of the 5 critic steps, so at width 16 a WGAN-GP
            # step costs about as much CPU as a DCGAN step at 32 (benchmarks/gan_throughput.py).
            "wgan-gp": dict(arch="dcgan", loss="wgan-gp", d_norm="layer", n_critic=5, width=16,
                            lr_g=2e-4, lr_d=2e-4, beta1=0.0, beta2=0.9),
            "wgan-clip": dict(arch="dcgan", loss="wgan-clip", d_norm="none", n_critic=5, width=16,
                              lr_g=5e-5, lr_d=5e-5, beta1=0.0, beta2=0.9),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class GAN:
    """A generator ``G``, a discriminator/critic ``D``, their optimizers and the two updates.

    Args:
        config: a :class:`GANConfig`.
        device: where the networks live (``medgan_utils.get_device()``).
        class_prior: (num_classes,) probabilities for drawing labels of fakes; uniform if None.
    """

    def __init__(self, config: GANConfig, device: torch.device | str = "cpu",
                 class_prior: torch.Tensor | None = None):
        self.config = c = config
        self.device = torch.device(device)
        gen_cls, disc_cls = ARCHS[c.arch]
        self.G = gen_cls(c.latent_dim, c.channels, c.image_size, c.width, c.num_classes).to(self.device)
        self.D = disc_cls(c.channels, c.image_size, c.width, c.num_classes, norm=c.d_norm)
        if c.aux_weight:
            self.D.add_aux_classifier(c.num_classes)
        self.D.to(self.device)
        if c.arch == "dcgan":
            self.G.apply(init_weights)
            self.D.apply(init_weights)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False) if c.ema else None
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=c.lr_g, betas=(c.beta1, c.beta2))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=c.lr_d, betas=(c.beta1, c.beta2))
        prior = torch.ones(max(c.num_classes, 1)) if class_prior is None else torch.as_tensor(class_prior)
        self.class_prior = (prior.float() / prior.sum()).to(self.device)

    # -- what fit() needs ---------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        mods = {"G": self.G, "D": self.D}
        if self.G_ema is not None:
            mods["G_ema"] = self.G_ema
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_G, "D": self.opt_D}

    def _noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.config.latent_dim, generator=generator)
        return z.to(self.device)

    def _labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        if not self.config.num_classes:
            return None
        return torch.multinomial(self.class_prior.cpu(), n, replacement=True, generator=generator).to(self.device)

    def _d(self, x: torch.Tensor, y: torch.Tensor | None, return_aux: bool = False):
        if self.config.diffaugment:
            x = diff_augment(x, self.config.diffaugment)
        return self.D(x, y if self.config.num_classes else None, return_aux=return_aux)

    def d_step(self, batch) -> dict[str, float]:
        """One discriminator/critic update on a batch ``(images (B,C,H,W) in [-1,1], labels (B,))``."""
        real, y = self._unpack(batch)
        b = real.shape[0]
        self.G.train()
        self.D.train()
        with torch.no_grad():
            fake = self.G(self._noise(b), y)
        aux = self.config.aux_weight > 0
        real_out, fake_out = self._d(real, y, return_aux=aux), self._d(fake, y)
        logs: dict[str, float] = {}
        if aux:
            real_out, real_cls = real_out
            loss_aux = F.cross_entropy(real_cls, y)
            logs["aux_D"] = loss_aux.item()
            logs["aux_acc_real"] = (real_cls.argmax(1) == y).float().mean().item()
        if self.config.loss == "bce":
            loss_D = losses.d_loss_bce(real_out, fake_out)
            logs["D_real"] = torch.sigmoid(real_out).mean().item()
            logs["D_fake"] = torch.sigmoid(fake_out).mean().item()
        elif self.config.loss == "wgan-gp":
            w = -losses.d_loss_wasserstein(real_out, fake_out)
            gp, norms = losses.gradient_penalty(lambda x: self._d(x, y), real, fake)
            loss_D = -w + self.config.gp_lambda * gp
            logs.update(wasserstein=w.item(), gp=gp.item(), grad_norm=norms.mean().item())
        else:
            loss_D = losses.d_loss_wasserstein(real_out, fake_out)
            logs["wasserstein"] = -loss_D.item()
        if aux:
            loss_D = loss_D + self.config.aux_weight * loss_aux
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        self.opt_D.step()
        if self.config.loss == "wgan-clip":
            with torch.no_grad():
                for p in self.D.parameters():
                    p.clamp_(-self.config.clip, self.config.clip)
        logs["loss_D"] = loss_D.item()
        return logs

    def g_step(self, batch) -> dict[str, float]:
        """One generator update; the batch gives its size and (conditional) its labels."""
        real, y = self._unpack(batch)
        b = real.shape[0]
        self.G.train()
        self.D.train()
        fake = self.G(self._noise(b), y)
        aux = self.config.aux_weight > 0
        out = self._d(fake, y, return_aux=aux)
        logs: dict[str, float] = {}
        if aux:
            out, fake_cls = out
        if self.config.loss.startswith("wgan"):
            loss_G = losses.g_loss_wasserstein(out)
        elif self.config.g_loss == "saturating":
            loss_G = losses.g_loss_saturating(out)
        else:
            loss_G = losses.g_loss_non_saturating(out)
        if aux:
            loss_aux = F.cross_entropy(fake_cls, y)
            logs.update(aux_G=loss_aux.item(), aux_acc_fake=(fake_cls.argmax(1) == y).float().mean().item())
            loss_G = loss_G + self.config.aux_weight * loss_aux
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        # Measured so notebook 01 can show the saturating loss's vanishing gradient.
        g_norm = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in self.G.parameters()
                                if p.grad is not None))
        self.opt_G.step()
        self._update_ema()
        return {"loss_G": loss_G.item(), "G_grad_norm": g_norm.item(), **logs}

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.G_ema is None:
            return
        # Warm-up (as in Karras et al.'s and timm's EMA): early on the average would be dominated
        # by the random initial weights, so the decay starts small and grows to config.ema.
        # The update count comes from Adam's own step counter, which checkpoints save, so a
        # resumed run continues the same decay schedule.
        t = float(self.opt_G.state[next(iter(self.G.parameters()))]["step"])
        d = min(self.config.ema, (1 + t) / (10 + t))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1 - d)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    def _unpack(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(batch, (tuple, list)):
            real, y = batch[0], batch[1] if len(batch) > 1 else None
        else:
            real, y = batch, None
        real = real.to(self.device)
        if self.config.num_classes:
            if y is None:
                raise ValueError("a conditional GAN needs (images, labels) batches")
            y = y.to(self.device).long().view(-1)
        else:
            y = None
        return real, y

    # -- using a trained model ----------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
               use_ema: bool = True, batch_size: int = 512) -> torch.Tensor:
        """``n`` images (n, C, H, W) in [-1, 1] (on CPU), from the EMA generator when there is one.

        Args:
            labels: (n,) classes for a conditional GAN (drawn from ``class_prior`` if None).
            generator: a ``torch.Generator`` for reproducible samples without touching global RNG.
        """
        G = self.G_ema if (use_ema and self.G_ema is not None) else self.G
        was_training = G.training
        G.eval()
        if self.config.num_classes and labels is None:
            labels = self._labels(n, generator)
        out = []
        for i in range(0, n, batch_size):
            z = self._noise(min(batch_size, n - i), generator)
            y = None if labels is None else torch.as_tensor(labels)[i:i + len(z)].to(self.device).long()
            out.append(G(z, y).cpu())
        G.train(was_training)
        return torch.cat(out)[:n]

    def generator_for_export(self) -> nn.Module:
        """The network to ship: the EMA generator when there is one, else G."""
        return self.G_ema if self.G_ema is not None else self.G
