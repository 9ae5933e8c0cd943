"""A small convolutional autoencoder: the course's second, label-free feature space.

The classifier extractor (:mod:`medgan_utils.models.classifier`) sees only what separates the
data set's classes; a generator can get everything else wrong (texture, noise, blur) and still
land near real images in its features. The bottleneck of an autoencoder trained to *reconstruct*
the training images has to keep whatever makes one image differ from another, labels or not, so
it is reported beside the classifier's features and neither network's blind spot alone decides.

Layout (28 px, width 24): conv4x4/2 (28 -> 14, ``width``) -> conv4x4/2 (14 -> 7, 2 ``width``)
-> conv3x3 (7 -> 7, 2 ``width``) -> flatten -> linear to ``latent_dim`` (the bottleneck); the
decoder mirrors it with transposed convolutions and ends in ``tanh`` ([-1, 1], like the images).
No batch norm: a feature of one image must not depend on the other images in its batch.

``features(x)`` (B, ``latent_dim`` + 2) is the bottleneck plus two reconstruction-error features,
the log mean squared residual ``x - decoder(encoder(x))`` at full and at half resolution (2x2
average pooled), all *standardised* with the training split's per-dimension mean and std (buffers
set by :meth:`Autoencoder.set_feature_stats` after training). Why the residual: an MSE
autoencoder's bottleneck keeps the low frequencies it needs to reconstruct and discards pixel
noise, so noise (sigma 0.1) and mild blur barely move it (fd_ratio ~1.05 in the bottleneck alone);
the residual is where an image off the training manifold shows (noise raises the full-resolution
error, blur lowers it), the compression + reconstruction-error features of DAGMM (Zong et al.
2018). Standardising gives every dimension the same weight in the k-NN metrics
(precision/recall/density/coverage) and puts the features at the unit scale that KID's polynomial
kernel ``(x.y / F + 1)^3`` assumes.

Models know no files and no loop: the shipped checkpoints are trained and loaded by
:mod:`medgan_utils.evaluation` (``train_autoencoder``, ``load_autoencoder``) through ``fit``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import one_cpu_thread

__all__ = ["Autoencoder", "AutoencoderConfig", "AutoencoderModel", "PatchAutoencoder", "PatchAutoencoderConfig"]


@dataclass(frozen=True)
class AutoencoderConfig:
    """Attributes:
        channels: image channels.
        image_size: side of the square input (divisible by 4: two stride-2 stages).
        width: channels of the first stage (x2 after). 24 keeps the checkpoint ~1.5 MB (the two
            linear layers around the bottleneck hold most weights).
        latent_dim: bottleneck size = feature size. 64 keeps FD's covariance well estimated with
            a few hundred images (BreastMNIST's reference has 274).
        lr, weight_decay: AdamW settings of :class:`AutoencoderModel`.
        loss: ``"mse"`` or ``"l1"`` reconstruction loss.
    """

    channels: int = 1
    image_size: int = 28
    width: int = 24
    latent_dim: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    loss: str = "mse"

    def to_dict(self) -> dict:
        return asdict(self)


class Autoencoder(nn.Module):
    """images (B, C, H, W) in [-1, 1] -> reconstructions (B, C, H, W); ``features`` -> (B, latent_dim + 2)."""

    def __init__(self, config: AutoencoderConfig = AutoencoderConfig()):
        super().__init__()
        self.config = c = config
        if c.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {c.image_size}")
        s, w = c.image_size // 4, c.width
        self.encoder = nn.Sequential(
            nn.Conv2d(c.channels, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * w * s * s, c.latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(c.latent_dim, 2 * w * s * s), nn.LeakyReLU(0.2),
            nn.Unflatten(1, (2 * w, s, s)),
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(w, c.channels, 4, 2, 1), nn.Tanh(),
        )
        self.feature_dim = c.latent_dim + 2
        # Set from the training split after training; identity until then.
        self.register_buffer("feat_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feat_std", torch.ones(self.feature_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Raw bottleneck (B, latent_dim) of images (B, C, H, W) in [-1, 1]."""
        return self.encoder(x)

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck and log residual energies at 1x and 1/2 resolution, (B, latent_dim + 2)."""
        z = self.encode(x)
        r = self.decoder(z) - x
        e_full = r.square().mean(dim=(1, 2, 3)).add(1e-8).log()
        e_half = F.avg_pool2d(r, 2).square().mean(dim=(1, 2, 3)).add(1e-8).log()
        return torch.cat([z, e_full[:, None], e_half[:, None]], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised :meth:`raw_features` (B, latent_dim + 2): what FD, KID and PRDC compare."""
        return (self.raw_features(x) - self.feat_mean) / self.feat_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))

    @torch.no_grad()
    def set_feature_stats(self, x: torch.Tensor, batch_size: int = 512) -> None:
        """Store per-dimension mean and std of :meth:`raw_features` over training images (N, C, H, W)."""
        was = self.training
        self.eval()
        dev = self.feat_mean.device
        z = torch.cat([self.raw_features(x[i:i + batch_size].to(dev)) for i in range(0, len(x), batch_size)])
        self.feat_mean.copy_(z.mean(0))
        self.feat_std.copy_(z.std(0).clamp_min(1e-6))
        self.train(was)

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean MSE or L1 between ``x`` (B, C, H, W) and its reconstruction (a scalar)."""
        loss = F.mse_loss if self.config.loss == "mse" else F.l1_loss
        return loss(self(x), x)


@dataclass(frozen=True)
class PatchAutoencoderConfig:
    """A fully convolutional autoencoder for large images (chapter 05's CT feature space).

    Attributes:
        channels: image channels.
        width: channels of the first stage (x2 at the second and third).
        latent_channels: channels of the 1/8-resolution bottleneck; 16 keeps a quarter of the
            input's numbers (16 / 64), so the network must learn what matters in a slice.
        lr, weight_decay, loss: as :class:`AutoencoderConfig`.
    """

    channels: int = 1
    width: int = 32
    latent_channels: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    loss: str = "mse"

    def to_dict(self) -> dict:
        return asdict(self)


class PatchAutoencoder(nn.Module):
    """(B, C, H, W) in [-1, 1], H and W divisible by 8 -> reconstructions of the same shape.

    Three stride-2 stages (1/2, 1/4, 1/8 resolution) and a 1x1 bottleneck, mirrored by the
    decoder; no batch norm and no linear layer, so it runs on patches and whole slices alike.
    :meth:`feature_maps` (the three stages' activations) is the label-free feature space of
    chapter 05: the content loss of SRGAN and, from a second network trained with another seed,
    the feature distance that judges it.
    """

    def __init__(self, config: PatchAutoencoderConfig = PatchAutoencoderConfig()):
        super().__init__()
        self.config = c = config
        w = c.width
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c.channels, w, 3, 1, 1), act(), nn.Conv2d(w, w, 4, 2, 1), act()),
            nn.Sequential(nn.Conv2d(w, 2 * w, 4, 2, 1), act()),
            nn.Sequential(nn.Conv2d(2 * w, 2 * w, 4, 2, 1), act()),
        ])
        self.bottleneck = nn.Conv2d(2 * w, c.latent_channels, 1)
        self.decoder = nn.Sequential(
            nn.Conv2d(c.latent_channels, 2 * w, 3, 1, 1), act(),
            nn.ConvTranspose2d(2 * w, 2 * w, 4, 2, 1), act(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), act(),
            nn.ConvTranspose2d(w, w, 4, 2, 1), act(),
            nn.Conv2d(w, c.channels, 3, 1, 1), nn.Tanh(),
        )

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three stages' activations: (B, w, H/2, W/2), (B, 2w, H/4, W/4), (B, 2w, H/8, W/8)."""
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"PatchAutoencoder needs sides divisible by 8, got {tuple(x.shape)}")
        return self.decoder(self.bottleneck(self.feature_maps(x)[-1]))

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        loss = F.mse_loss if self.config.loss == "mse" else F.l1_loss
        return loss(self(x), x)


class AutoencoderModel:
    """Adapter that lets :func:`medgan_utils.train.fit` train an :class:`Autoencoder` (or a
    :class:`PatchAutoencoder`: anything with ``reconstruction_loss`` and ``config.lr``).

    One step = one AdamW update on the reconstruction loss of one batch, with random horizontal
    flips half the time (cheap, label-free; a flipped X-ray is still a plausible image, and the
    features should not hinge on laterality). No noise or blur augmentation: the feature space
    must *see* noise and blur, which a denoising autoencoder would learn to ignore.
    """

    def __init__(self, net: Autoencoder | PatchAutoencoder, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device)
        c = net.config
        self.opt = torch.optim.AdamW(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    def train_step(self, batches: Iterator) -> dict[str, float]:
        x = next(batches)[0]
        self.net.train()
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        loss = self.net.reconstruction_loss(x)
        self.opt.zero_grad(set_to_none=True)
        with one_cpu_thread(self.device):  # same gradients on any number of CPU threads
            loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": self.opt}
