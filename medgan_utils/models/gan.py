"""One GAN class for chapters 01-04: the architecture and the loss are configuration.

``GAN(GANConfig(arch="mlp", loss="bce"))`` is the vanilla GAN of notebook 01,
``arch="dcgan"`` the DCGAN of 02, ``loss="wgan-gp"`` (critic without BatchNorm, gradient penalty,
``n_critic=5``) the WGAN-GP of 03, ``num_classes > 0`` the conditional GAN of 04. It exposes what
:func:`medgan_utils.train.fit` drives (``train_step``, ``modules``, ``optimizers``, ``visuals``)
and the two updates ``train_step`` is made of (``d_step``, ``g_step``).

Introduced in ``notebooks/01_vanilla_gan.ipynb``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .diffaugment import diff_augment
from .nets import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator, init_weights
from .parts import EMA, adam_steps, grad_norm

ARCHS = {"mlp": (MLPGenerator, MLPDiscriminator), "dcgan": (DCGANGenerator, DCGANDiscriminator)}
LOSSES = ("bce", "wgan-gp", "wgan-clip")


PRESETS: dict[str, dict] = {
    "gan": dict(arch="mlp", loss="bce", width=256, d_norm="none"),
    "dcgan": dict(arch="dcgan", loss="bce", d_norm="batch"),
    # Half DCGAN's width: G runs in each of the 5 critic steps, so at width 16 a WGAN-GP step
    # costs about as much CPU as a DCGAN step at 32 (benchmarks/gan_throughput.py).
    "wgan-gp": dict(arch="dcgan", loss="wgan-gp", d_norm="layer", n_critic=5, width=16,
                    lr_g=2e-4, lr_d=2e-4, beta1=0.0, beta2=0.9),
    "wgan-clip": dict(arch="dcgan", loss="wgan-clip", d_norm="none", n_critic=5, width=16,
                      lr_g=5e-5, lr_d=5e-5, beta1=0.0, beta2=0.9),
}


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
        n_critic: critic updates per generator update, each on a fresh batch (5 for WGAN-GP);
            the model's ``train_step`` runs them, so every entry point trains alike.
        ema: decay of an exponential moving average of G's weights (0 = off; e.g. 0.999).
        diffaugment: DiffAugment policy applied to D's inputs, e.g. "color,translation,cutout".
        aux_weight: > 0 (conditional only) adds AC-GAN's auxiliary classifier (Odena et al. 2017):
            a class head on D's features, trained by cross-entropy on *real* images only, and a
            generator term ``aux_weight * CE(head(G(z, y)), y)`` that rewards fakes the head
            assigns to their label. It makes samples more class-faithful (chapter 04), at some
            cost in diversity. Training the head on reals only keeps fakes out of the head's own
            training (D is not taught to call fakes easy); the generator's term still pulls
            towards easy-to-classify fakes, AC-GAN's known loss of diversity (measured per class
            in chapter 04).
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
        if self.n_critic < 0:
            raise ValueError(f"n_critic must be >= 0, got {self.n_critic}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.aux_weight < 0 or (self.aux_weight > 0 and self.num_classes < 2):
            raise ValueError(f"aux_weight must be >= 0 and needs num_classes >= 2, got "
                             f"aux_weight={self.aux_weight}, num_classes={self.num_classes}")

    @classmethod
    def preset(cls, name: str, **overrides) -> GANConfig:
        """The course's presets (:data:`PRESETS`): "gan" (01), "dcgan" (02), "wgan-gp" (03); overrides win."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class GAN:
    """A generator ``G``, a discriminator/critic ``D``, their optimizers and the updates.

    The model owns the order of its updates: :meth:`train_step` runs ``config.n_critic`` critic
    updates, each on a fresh batch, then one generator update; :func:`~medgan_utils.train.fit`
    only calls it. ``n_critic`` therefore lives in one place, the model's config.

    Args:
        config: a :class:`GANConfig`.
        device: where the networks live (``medgan_utils.get_device()``).
        class_prior: (num_classes,) probabilities for drawing labels of fakes; uniform if None.
        G, D: networks to use instead of the ones ``config`` builds (same call signatures).
        opt_G, opt_D: optimizers to use instead of Adam (e.g. one Opacus made private); saved
            under the same names, so checkpoints keep their keys.
    """

    def __init__(self, config: GANConfig, device: torch.device | str = "cpu",
                 class_prior: torch.Tensor | None = None, *, G: nn.Module | None = None,
                 D: nn.Module | None = None, opt_G: torch.optim.Optimizer | None = None,
                 opt_D: torch.optim.Optimizer | None = None):
        self.config = c = config
        self.device = torch.device(device)
        self.game = losses.make_game(c.loss, g_loss=c.g_loss, gp_lambda=c.gp_lambda, clip=c.clip)
        gen_cls, disc_cls = ARCHS[c.arch]
        built = []  # both are built before either is initialised: the RNG order of every run so far
        if G is None:
            G = gen_cls(c.latent_dim, c.channels, c.image_size, c.width, c.num_classes)
            built.append(G)
        if D is None:
            D = disc_cls(c.channels, c.image_size, c.width, c.num_classes, norm=c.d_norm)
            if c.aux_weight:
                D.add_aux_classifier(c.num_classes)
            built.append(D)
        if c.arch == "dcgan":
            for net in built:
                net.apply(init_weights)
        self.G, self.D = G.to(self.device), D.to(self.device)
        self.ema = EMA(self.G, c.ema) if c.ema else None
        self.opt_G = opt_G or torch.optim.Adam(self.G.parameters(), lr=c.lr_g, betas=(c.beta1, c.beta2))
        self.opt_D = opt_D or torch.optim.Adam(self.D.parameters(), lr=c.lr_d, betas=(c.beta1, c.beta2))
        prior = torch.ones(max(c.num_classes, 1)) if class_prior is None else torch.as_tensor(class_prior)
        self.class_prior = (prior.float() / prior.sum()).to(self.device)

    @property
    def G_ema(self) -> nn.Module | None:
        """The EMA generator (None without EMA)."""
        return self.ema.module if self.ema is not None else None

    # -- what fit() needs ---------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        mods = {"G": self.G, "D": self.D}
        if self.ema is not None:
            mods["G_ema"] = self.ema.module
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_G, "D": self.opt_D}

    def train_step(self, batches: Iterator) -> dict[str, float]:
        """``n_critic`` critic updates, each on a fresh batch, then one generator update."""
        logs: dict[str, float] = {}
        for _ in range(self.config.n_critic):
            logs.update(self.d_step(next(batches)))
        logs.update(self.g_step(next(batches)))
        return logs

    def visuals(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """What ``fit`` draws as sample grids: 64 samples."""
        return {"samples": self.sample(64, generator=generator)}

    def _noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.config.latent_dim, generator=generator)
        return z.to(self.device)

    def sample_labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """(n,) classes drawn from ``class_prior`` (None for an unconditional GAN)."""
        if not self.config.num_classes:
            return None
        return torch.multinomial(self.class_prior.cpu(), n, replacement=True, generator=generator).to(self.device)

    def _d(self, x: torch.Tensor, y: torch.Tensor | None, return_aux: bool = False):
        if self.config.diffaugment:
            x = diff_augment(x, self.config.diffaugment)
        return self.D(x, y if self.config.num_classes else None, return_aux=return_aux)

    @torch.no_grad()
    def fakes_for_d(self, n: int, y: torch.Tensor | None) -> torch.Tensor:
        """The ``n`` fakes (labels ``y``) of one D step, from G as it trains (BatchNorm in batch mode)."""
        return self.G(self._noise(n), y)

    def d_step(self, batch) -> dict[str, float]:
        """One discriminator/critic update on a batch ``(images (B,C,H,W) in [-1,1], labels (B,))``."""
        real, y = self._unpack(batch)
        self.G.train()
        self.D.train()
        fake = self.fakes_for_d(real.shape[0], y)
        aux = self.config.aux_weight > 0
        real_out, fake_out = self._d(real, y, return_aux=aux), self._d(fake, y)
        logs: dict[str, float] = {}
        if aux:  # AC-GAN's class head learns from real images only
            real_out, real_cls = real_out
            loss_aux = F.cross_entropy(real_cls, y)
            logs.update(aux_D=loss_aux.item(), aux_acc_real=(real_cls.argmax(1) == y).float().mean().item())
        loss_D, game_logs = self.game.d_loss(real_out, fake_out, lambda x: self._d(x, y), real, fake)
        logs.update(game_logs)
        if aux:
            loss_D = loss_D + self.config.aux_weight * loss_aux
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        self.opt_D.step()
        self.game.after_d_step(self.D)
        logs["loss_D"] = loss_D.item()
        return logs

    def g_step(self, batch) -> dict[str, float]:
        """One generator update; the batch gives its size and (conditional) its labels."""
        real, y = self._unpack(batch)
        self.G.train()
        self.D.train()
        fake = self.G(self._noise(real.shape[0]), y)
        aux = self.config.aux_weight > 0
        out = self._d(fake, y, return_aux=aux)
        logs: dict[str, float] = {}
        if aux:
            out, fake_cls = out
        loss_G = self.game.g_loss(out)
        if aux:
            loss_aux = F.cross_entropy(fake_cls, y)
            logs.update(aux_G=loss_aux.item(), aux_acc_fake=(fake_cls.argmax(1) == y).float().mean().item())
            loss_G = loss_G + self.config.aux_weight * loss_aux
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        g_norm = grad_norm(self.G.parameters())  # notebook 01 shows the saturating loss's vanishing gradient
        self.opt_G.step()
        if self.ema is not None:
            self.ema.update(self.G, adam_steps(self.opt_G, self.G.parameters()))
        return {"loss_G": loss_G.item(), "G_grad_norm": g_norm, **logs}

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
        G = self.ema.module if (use_ema and self.ema is not None) else self.G
        was_training = G.training
        G.eval()
        if self.config.num_classes and labels is None:
            labels = self.sample_labels(n, generator)
        out = []
        for i in range(0, n, batch_size):
            z = self._noise(min(batch_size, n - i), generator)
            y = None if labels is None else torch.as_tensor(labels)[i:i + len(z)].to(self.device).long()
            out.append(G(z, y).cpu())
        G.train(was_training)
        return torch.cat(out)[:n]

    def generator_for_export(self) -> nn.Module:
        """The network to ship: the EMA generator when there is one, else G."""
        return self.ema.module if self.ema is not None else self.G
