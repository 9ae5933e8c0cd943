"""CycleGAN (Zhu et al. 2017): unpaired translation between two domains, as one model of the
course's one training loop (chapter 07: head CT <-> brain MRI).

Two generators, ``G_AB`` (A -> B, e.g. CT -> MRI) and ``G_BA``, and two discriminators, ``D_A``
and ``D_B``, are one model: :meth:`CycleGAN.train_step` updates both generators on

* the adversarial loss (LSGAN, through :class:`~.img2img.AdversarialLoss`): ``D_B(G_AB(a))``
  should look real to D_B, and likewise for A;
* the cycle loss ``cycle_weight * (|G_BA(G_AB(a)) - a| + |G_AB(G_BA(b)) - b|)`` (L1): what goes
  there must come back, the only thing that ties an output to its input when no pairs exist;
* the identity loss ``cycle_weight * identity_weight * (|G_AB(b) - b| + |G_BA(a) - a|)``: a
  target-domain image should pass through unchanged (keeps intensities from drifting);

then each discriminator on real images against fakes drawn from a 50-image *history pool*
(Shrivastava et al. 2017; :class:`~.parts.ImagePool`): half the time D sees an older fake, so G
cannot win by oscillating.
Learning rates stay constant for ``constant_steps`` and then fall linearly to zero over
``decay_steps``. The pool, its random stream and the step count are the model's
``state_dict``, so a resumed run continues exactly. A checkpoint holds all four networks.

Generators: the ResNet generator of the paper (c7s1-w, two stride-2 downsamplings, ``n_blocks``
residual blocks, two upsamplings, c7s1-C, tanh), instance norm and reflection padding, sized for
a CPU with ``width``; PyTorch's default initialisation (the paper draws weights from N(0, 0.02)).
MONAI has no CycleGAN generator, so it is written here (25 lines).
Discriminators: MONAI's ``PatchDiscriminator`` (70 x 70 PatchGAN with 3 layers), instance norm
as in the paper.

Introduced in ``notebooks/07_cyclegan.ipynb``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import PatchDiscriminator
from torch import nn

from .img2img import GAN_LOSSES, AdversarialLoss
from .parts import ImagePool, LinearDecay, set_lr

__all__ = ["CYCLEGAN_PRESETS", "CycleGAN", "CycleGANConfig", "ResnetGenerator"]


@dataclass(frozen=True)
class CycleGANConfig(LinearDecay):
    """Attributes:
        channels: image channels (both domains).
        width: channels of the generators' first layer (64 in the paper; 16 for a CPU).
        n_blocks: residual blocks in each generator (9 for 256 px in the paper, 6 for 128 px).
        d_width: channels of the discriminators' first layer (64 in the paper).
        d_norm: the discriminators' normalisation (``INSTANCE`` as in the paper, ``BATCH`` or ``""``).
        cycle_weight: lambda of the cycle loss (10).
        identity_weight: the identity loss, as a fraction of ``cycle_weight`` (0.5).
        pool_size: fakes kept per domain in the history pool (50; 0 = none).
        gan_loss: ``least_squares`` (the paper's LSGAN) or ``bce``.
        lr: Adam learning rate of generators and discriminators (2e-4, betas (0.5, 0.999)).
        constant_steps, decay_steps: the learning rate is ``lr`` for ``constant_steps`` steps and
            then falls linearly to 0 over ``decay_steps`` (0: never decays).
        a_name, b_name: short names of the domains (label 0 and label 1 of the data), used in
            directions such as ``ct2mr``.
    """

    channels: int = 1
    width: int = 16
    n_blocks: int = 6
    d_width: int = 32
    d_norm: str = "INSTANCE"
    cycle_weight: float = 10.0
    identity_weight: float = 0.5
    pool_size: int = 50
    gan_loss: str = "least_squares"
    lr: float = 2e-4
    constant_steps: int = 5000
    decay_steps: int = 5000
    a_name: str = "ct"
    b_name: str = "mr"

    def __post_init__(self) -> None:
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}")
        if min(self.cycle_weight, self.identity_weight, self.pool_size) < 0:
            raise ValueError("weights and pool size must be >= 0")
        self.check_schedule()
        if self.width < 1 or self.n_blocks < 0 or self.d_width < 1:
            raise ValueError("width and d_width must be >= 1 and n_blocks >= 0")
        if self.d_norm not in ("", "INSTANCE", "BATCH"):
            raise ValueError(f"d_norm must be '', INSTANCE or BATCH, got {self.d_norm!r}")
        if not (self.a_name and self.b_name) or self.a_name == self.b_name or "2" in self.a_name + self.b_name:
            raise ValueError(f"domain names must differ, be non-empty and hold no '2': {self.a_name!r}, {self.b_name!r}")

    @property
    def directions(self) -> tuple[str, str]:
        """``("ct2mr", "mr2ct")``: A -> B and B -> A."""
        return f"{self.a_name}2{self.b_name}", f"{self.b_name}2{self.a_name}"

    def to_dict(self) -> dict:
        return asdict(self)


CYCLEGAN_PRESETS = {"cyclegan": {}}


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Image (B, C, H, W) in [-1, 1] -> image (B, C, H, W) in (-1, 1). H and W: multiples of 4
    (other sizes are reflect-padded up to one and cropped back)."""

    def __init__(self, channels: int = 1, width: int = 16, n_blocks: int = 6):
        super().__init__()

        def norm_relu(c):
            return [nn.InstanceNorm2d(c), nn.ReLU(True)]

        w = width
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(channels, w, 7), *norm_relu(w)]
        for k in (1, 2):  # downsample: w -> 2w -> 4w
            layers += [nn.Conv2d(w * k, w * 2 * k, 3, stride=2, padding=1), *norm_relu(w * 2 * k)]
        layers += [_ResBlock(4 * w) for _ in range(n_blocks)]
        for k in (4, 2):  # upsample: 4w -> 2w -> w
            layers += [nn.ConvTranspose2d(w * k, w * k // 2, 3, stride=2, padding=1, output_padding=1),
                       *norm_relu(w * k // 2)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % 4, -w % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        return self.net(x)[..., :h, :w]


class CycleGAN:
    """Two generators and two discriminators trained by :func:`medgan_utils.train.fit` on
    ``(a, b)`` batches of unpaired images (:class:`~medgan_utils.data.UnpairedLoader`).

    ``apply(x)`` translates in :attr:`direction` (A -> B unless set, e.g. ``model.direction =
    "mr2ct"``; ``medgan apply --direction``); :meth:`translate` takes the direction explicitly.
    """

    tiling = (4096, 0)  # whole images: instance norm makes a tile's output depend on the tile

    def __init__(self, config: CycleGANConfig, device: torch.device | str = "cpu"):
        self.config = c = config
        self.device = torch.device(device)
        self.G_AB = ResnetGenerator(c.channels, c.width, c.n_blocks).to(self.device)
        self.G_BA = ResnetGenerator(c.channels, c.width, c.n_blocks).to(self.device)

        def disc():
            return PatchDiscriminator(spatial_dims=2, channels=c.d_width, in_channels=c.channels,
                                      num_layers_d=3, norm=c.d_norm or None, bias=not c.d_norm
                                      ).to(self.device)

        self.D_A, self.D_B = disc(), disc()
        betas = (0.5, 0.999)
        self.opt_G = torch.optim.Adam(itertools.chain(self.G_AB.parameters(), self.G_BA.parameters()),
                                      lr=c.lr, betas=betas)
        self.opt_D = torch.optim.Adam(itertools.chain(self.D_A.parameters(), self.D_B.parameters()),
                                      lr=c.lr, betas=betas)
        self._adv = AdversarialLoss(c.gan_loss)
        self.pool_A, self.pool_B = ImagePool(c.pool_size, seed=1), ImagePool(c.pool_size, seed=2)
        self.step = 0
        self.direction = c.directions[0]
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- the training protocol ----------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        return {"G_AB": self.G_AB, "G_BA": self.G_BA, "D_A": self.D_A, "D_B": self.D_B}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_G, "D": self.opt_D}

    def state_dict(self) -> dict:
        return {"step": self.step, "pool_A": self.pool_A.state_dict(), "pool_B": self.pool_B.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.pool_A.load_state_dict(state["pool_A"], self.device)
        self.pool_B.load_state_dict(state["pool_B"], self.device)

    def _set_lr(self) -> float:
        lr = self.config.lr * self.config.lr_factor(self.step)
        for opt in (self.opt_G, self.opt_D):
            set_lr(opt, lr)
        return lr

    def train_step(self, batches: Iterator) -> dict[str, float]:
        a, b = next(batches)
        c = self.config
        lr = self._set_lr()
        for net in self.modules().values():
            net.train()
        # Generators: gradients flow through the discriminators, which are frozen meanwhile
        # (no wasted gradients for their weights).
        for d in (self.D_A, self.D_B):
            d.requires_grad_(False)
        fake_b, fake_a = self.G_AB(a), self.G_BA(b)
        adv_ab = self._adv.g(self.D_B(fake_b)[-1])
        adv_ba = self._adv.g(self.D_A(fake_a)[-1])
        cycle = F.l1_loss(self.G_BA(fake_b), a) + F.l1_loss(self.G_AB(fake_a), b)
        loss_G = adv_ab + adv_ba + c.cycle_weight * cycle
        log = {"adv_" + c.directions[0]: adv_ab.item(), "adv_" + c.directions[1]: adv_ba.item(),
               "cycle": cycle.item()}
        if c.identity_weight > 0:
            identity = F.l1_loss(self.G_AB(b), b) + F.l1_loss(self.G_BA(a), a)
            loss_G = loss_G + c.cycle_weight * c.identity_weight * identity
            log["identity"] = identity.item()
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        # Discriminators: real against fakes from the history pools.
        for d in (self.D_A, self.D_B):
            d.requires_grad_(True)
        loss_DA = self._adv.d(self.D_A(a)[-1], self.D_A(self.pool_A.query(fake_a))[-1])
        loss_DB = self._adv.d(self.D_B(b)[-1], self.D_B(self.pool_B.query(fake_b))[-1])
        self.opt_D.zero_grad(set_to_none=True)
        (loss_DA + loss_DB).backward()
        self.opt_D.step()
        self.step += 1
        self._last = (a[:4].detach(), b[:4].detach())
        return {**log, "loss_G": loss_G.item(), "loss_D_A": loss_DA.item(), "loss_D_B": loss_DB.item(),
                "lr": lr}

    # -- use ------------------------------------------------------------------------------------

    def resolve(self, direction: str) -> str:
        """The direction's full name: ``"ct2mr"`` for ``"ct2mr"`` or ``"AB"``, ``"mr2ct"`` for
        ``"mr2ct"`` or ``"BA"``; a ValueError naming the valid ones otherwise."""
        ab, ba = self.config.directions
        if direction in (ab, "AB"):
            return ab
        if direction in (ba, "BA"):
            return ba
        raise ValueError(f"direction must be {ab} or {ba} (or AB/BA), got {direction!r}")

    def generator(self, direction: str) -> nn.Module:
        """``G_AB`` for ``"ct2mr"`` (A -> B; also ``"AB"``), ``G_BA`` for ``"mr2ct"``/``"BA"``."""
        return self.G_AB if self.resolve(direction) == self.config.directions[0] else self.G_BA

    @torch.no_grad()
    def translate(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] of the source domain -> the other domain, in [-1, 1]."""
        g = self.generator(direction)
        was = g.training
        g.eval()
        y = torch.cat([g(x[i:i + 64].to(self.device)) for i in range(0, len(x), 64)]).clamp(-1, 1)
        g.train(was)
        return y

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`translate` in :attr:`direction` (for ``medgan apply``)."""
        return self.translate(x, self.direction)

    @torch.no_grad()
    def cycle(self, x: torch.Tensor, direction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(translation, translation translated back)`` of source images ``x``."""
        ab, ba = self.config.directions
        y = self.translate(x, direction)
        return y, self.translate(y, ba if self.resolve(direction) == ab else ab)

    def visuals(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Rows of the last batch: A, A -> B, back to A; B, B -> A, back to B."""
        if self._last is None:
            return {}
        a, b = self._last
        ab, ba = self.config.directions
        fa, ra = self.cycle(a, ab)
        fb, rb = self.cycle(b, ba)
        return {"cycle": torch.cat([a, fa, ra, b, fb, rb])}
