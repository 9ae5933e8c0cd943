"""Generators and discriminators of chapters 01-04: an MLP pair and a DCGAN pair.

Sizes follow the data: ``channels`` and ``image_size`` (28, 64, 128 or 224, any size that halves
to 4-7 px) are constructor arguments, so every chapter runs on any MedMNIST 2D set. With
``num_classes > 0`` both become class-conditional: G concatenates a label embedding to ``z``, D
adds a projection term ``<embed(y), h>`` to its score (Miyato & Koyama 2018), which conditions
more strongly than concatenating labels to D's input.

Why not MONAI's ``Generator``/``Discriminator``: they have no class conditioning and MONAI's
discriminator ends in a sigmoid, which rules out stable BCE-with-logits and Wasserstein critics.

Introduced in ``notebooks/01_vanilla_gan.ipynb`` (MLP) and ``02_dcgan.ipynb`` (DCGAN).
"""

from __future__ import annotations

import torch
from torch import nn


def n_stages(image_size: int) -> tuple[int, int]:
    """(stages, start size): how often ``image_size`` halves before reaching 4-7 px.

    28 -> (2, 7), 64 -> (4, 4), 128 -> (5, 4), 224 -> (5, 7).
    """
    k, s = 0, image_size
    while s % 2 == 0 and s // 2 >= 4:
        s //= 2
        k += 1
    if k == 0 or s > 7:
        raise ValueError(f"image_size {image_size} does not halve down to 4-7 px; use 28, 32, 64, 128 or 224")
    return k, s


class _Conditioner(nn.Module):
    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, dim) if num_classes > 0 else None

    def check(self, labels: torch.Tensor | None) -> None:
        if self.embed is not None and labels is None:
            raise ValueError("this model is class-conditional: pass labels (B,)")


class MLPGenerator(nn.Module):
    """z (B, latent_dim) [+ labels (B,)] -> images (B, C, H, W) in [-1, 1] through 3 hidden layers."""

    def __init__(self, latent_dim: int = 64, channels: int = 1, image_size: int = 28,
                 hidden: int = 256, num_classes: int = 0):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        self.cond = _Conditioner(num_classes, 16)
        d_in = latent_dim + (16 if num_classes else 0)
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 2 * hidden), nn.LeakyReLU(0.2),
            nn.Linear(2 * hidden, 4 * hidden), nn.LeakyReLU(0.2),
            nn.Linear(4 * hidden, channels * image_size * image_size), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.cond.check(labels)
        if self.cond.embed is not None:
            z = torch.cat([z, self.cond.embed(labels)], dim=1)
        return self.net(z).view(-1, *self.shape)


def projection_score(h: torch.Tensor, y: torch.Tensor, head: nn.Linear, embed: nn.Embedding) -> torch.Tensor:
    """A projection discriminator's score (Miyato & Koyama 2018): ``psi(h) + <embed(y), h>``, (B,).

    ``h``: the body's features (B, F); ``y``: labels (B,); ``head``: the unconditional score
    ``psi`` (F -> 1); ``embed``: the class embedding (F-d rows). Chapter 04's exercise checks a
    learner's version against it (:func:`medgan_utils.exercises.check_projection_output`)."""
    return head(h).squeeze(1) + (embed(y) * h).sum(1)


class _ProjectionDiscriminator(nn.Module):
    """Shared forward of the discriminators: features ``h = body(x)``, score ``head(h)``, plus the
    projection ``<embed(y), h>`` when conditional. Subclasses build ``body``, ``head``, ``cond``."""

    body: nn.Module
    head: nn.Linear
    cond: _Conditioner

    def __init__(self) -> None:
        super().__init__()
        self.aux: nn.Linear | None = None

    def add_aux_classifier(self, num_classes: int) -> None:
        """Add AC-GAN's auxiliary class head (Odena et al. 2017) on the shared features."""
        self.aux = nn.Linear(self.head.in_features, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                return_aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Scores (B,); with ``return_aux`` also the auxiliary class logits (B, num_classes)."""
        self.cond.check(labels)
        h = self.body(x)
        out = self.head(h).squeeze(1) if self.cond.embed is None else projection_score(h, labels, self.head, self.cond.embed)
        if return_aux:
            if self.aux is None:
                raise ValueError("this discriminator has no auxiliary classifier (aux_weight=0)")
            return out, self.aux(h)
        return out


class MLPDiscriminator(_ProjectionDiscriminator):
    """images (B, C, H, W) [+ labels] -> one logit/score per image (B,)."""

    def __init__(self, channels: int = 1, image_size: int = 28, hidden: int = 256,
                 num_classes: int = 0, norm: str = "none"):
        super().__init__()
        del norm  # an MLP critic needs none; kept so every discriminator takes the same arguments
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * image_size * image_size, 2 * hidden), nn.LeakyReLU(0.2),
            nn.Linear(2 * hidden, hidden), nn.LeakyReLU(0.2),
        )
        self.head = nn.Linear(hidden, 1)
        self.cond = _Conditioner(num_classes, hidden)



class DCGANGenerator(nn.Module):
    """Radford et al. (2016): project z, then (ConvTranspose 4x4/2, BatchNorm, ReLU) per stage.

    28 px with width 32: z -> 128@7x7 -> 64@14x14 -> 32@28x28 -> Conv3x3 -> C@28x28, tanh.
    """

    def __init__(self, latent_dim: int = 64, channels: int = 1, image_size: int = 28,
                 width: int = 32, num_classes: int = 0):
        super().__init__()
        k, s0 = n_stages(image_size)
        c0 = width * 2**k
        self.start = (c0, s0)
        self.cond = _Conditioner(num_classes, 16)
        d_in = latent_dim + (16 if num_classes else 0)
        self.project = nn.Sequential(nn.Linear(d_in, c0 * s0 * s0, bias=False),
                                     nn.Unflatten(1, (c0, s0, s0)),
                                     nn.BatchNorm2d(c0), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        c = c0
        for _ in range(k):
            layers += [nn.ConvTranspose2d(c, c // 2, kernel_size=4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c // 2), nn.ReLU(inplace=True)]
            c //= 2
        layers += [nn.Conv2d(c, channels, kernel_size=3, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.cond.check(labels)
        if self.cond.embed is not None:
            z = torch.cat([z, self.cond.embed(labels)], dim=1)
        return self.body(self.project(z))


class DCGANDiscriminator(_ProjectionDiscriminator):
    """(Conv 4x4/2, norm, LeakyReLU 0.2) per stage, then a linear score (B,).

    ``norm="batch"`` is the DCGAN recipe; a WGAN-GP critic must not use BatchNorm (the penalty is
    per image, BatchNorm mixes images), so it takes ``"layer"`` (GroupNorm(1, c)) or ``"none"``.
    """

    def __init__(self, channels: int = 1, image_size: int = 28, width: int = 32,
                 num_classes: int = 0, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "layer", "none"):
            raise ValueError(f"norm must be 'batch', 'layer' or 'none', got {norm!r}")
        k, s0 = n_stages(image_size)
        layers: list[nn.Module] = []
        c_in, c = channels, width
        for i in range(k):
            layers.append(nn.Conv2d(c_in, c, kernel_size=4, stride=2, padding=1, bias=norm != "batch" or i == 0))
            if i > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(c))
            elif i > 0 and norm == "layer":
                layers.append(nn.GroupNorm(num_groups=1, num_channels=c))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in, c = c, c * 2
        layers += [nn.Conv2d(c_in, c_in, kernel_size=3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                   nn.Flatten()]
        self.body = nn.Sequential(*layers)
        feat = c_in * s0 * s0
        self.head = nn.Linear(feat, 1)
        self.cond = _Conditioner(num_classes, feat)



def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
