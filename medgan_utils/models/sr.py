"""Super-resolution: SRResNet and SRGAN (Ledig et al. 2017), one class, the loss is configuration.

Generator (SRResNet, sizes for ``width`` w and ``n_blocks`` b): conv9x9 (C -> w) + PReLU; b
residual blocks ``x + conv3x3(PReLU(conv3x3(x)))``; conv3x3 and a skip over the whole body; one
sub-pixel x2 stage per factor of 2 of ``scale`` (MONAI's ``SubpixelUpsample``: a conv to 4w
channels, then pixel shuffle) + PReLU; conv9x9 (w -> C). Two changes from the paper, both for
small CPU budgets: no batch norm (EDSR, Lim et al. 2017: BN hurts SR and makes a tile's output
depend on its batch), and the network predicts the *correction* to bicubic upsampling
(``residual=True``: output = bicubic(x) + G(x), as VDSR, Kim et al. 2016), so it need not
learn to reproduce the image itself and training spends its steps on detail. (A freshly built
model is *not* at bicubic: its random last layer adds a correction that costs a few dB.)

Discriminator: MONAI's ``PatchDiscriminator`` without normalisation (see
:class:`~.img2img.PairedModel`, which holds the training step chapters 05 and 06 share: with
instance, group or batch norm it never left chance on CT); its logits are the last of the
feature maps it returns, one per patch.

The loss (:class:`SRConfig`): ``l1_weight`` x L1 to the target, ``feature_weight`` x MSE between
feature maps of a frozen encoder that the project trains on CT itself (a "perceptual" loss
without ImageNet VGG, which cannot be downloaded here and has never seen a CT), and
``adv_weight`` x the non-saturating GAN loss. SRResNet is ``l1_weight=1`` alone; SRGAN starts
from a trained SRResNet (``init_from``) and adds the feature and adversarial terms.

Introduced in ``notebooks/05_super_resolution.ipynb``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from monai.networks.blocks import SubpixelUpsample
from torch import nn

from .img2img import PairedModel, check_loss_weights, feature_loss

__all__ = ["SRConfig", "SRModel", "SRResNet", "SR_PRESETS", "feature_loss"]


@dataclass(frozen=True)
class SRConfig:
    """Attributes:
        channels: image channels.
        scale: upscaling factor, a power of two (4: 128 -> 512).
        width: feature channels of the generator (64 in the paper; 32 trains on a CPU).
        n_blocks: residual blocks (16 in the paper).
        residual: predict the correction to bicubic upsampling (see the module docstring).
        patch: side of the high-resolution training patches (96 in the paper; 0 = whole images).
        l1_weight, feature_weight, adv_weight: the terms of the generator's loss.
        feature_net: checkpoint of the frozen encoder of the feature loss (needed when
            ``feature_weight > 0``; loaded by the model kind, see ``medgan_utils.superres``).
        init_from: checkpoint of a trained model whose generator this one starts from ("" =
            random): SRGAN starts from SRResNet, as in the paper.
        d_width: channels of the discriminator's first layer.
        lr, lr_d: Adam learning rates of G and D; betas (0.9, 0.999) as in the paper.
    """

    channels: int = 1
    scale: int = 4
    width: int = 32
    n_blocks: int = 8
    residual: bool = True
    patch: int = 96
    l1_weight: float = 1.0
    feature_weight: float = 0.0
    adv_weight: float = 0.0
    feature_net: str = ""
    init_from: str = ""
    d_width: int = 32
    lr: float = 2e-4
    lr_d: float = 1e-4

    # Fields that shape the model but hold no weights: a start checkpoint must agree on them.
    UNWEIGHTED: ClassVar[tuple[str, ...]] = ("residual",)

    def __post_init__(self) -> None:
        if self.scale < 2 or self.scale & (self.scale - 1):
            raise ValueError(f"scale must be a power of two >= 2, got {self.scale}")
        check_loss_weights(self)

    @property
    def adversarial(self) -> bool:
        return self.adv_weight > 0

    def to_dict(self) -> dict:
        return asdict(self)


SR_PRESETS = {
    "srresnet": {},
    # Paths relative to the repository: the shipped CT encoder and SRResNet (chapter 05).
    "srgan": {"l1_weight": 0.1, "feature_weight": 1.0, "adv_weight": 2e-3,
              "feature_net": "checkpoints/encoder_ct_loss.safetensors",
              "init_from": "checkpoints/srresnet_ct.safetensors"},
}


class _ResidualBlock(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.PReLU(w), nn.Conv2d(w, w, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """Low-resolution (B, C, h, w) in [-1, 1] -> (B, C, scale h, scale w), unclamped.

    Fully convolutional: runs on any size (its receptive field is 4 + 2 n_blocks + 1 + 2 input
    pixels on each side, plus 4 output pixels: tiles overlapping by 24 input pixels join exactly).
    """

    def __init__(self, config: SRConfig):
        super().__init__()
        c, w = config, config.width
        self.config = config
        self.head = nn.Sequential(nn.Conv2d(c.channels, w, 9, padding=4), nn.PReLU(w))
        self.body = nn.Sequential(*[_ResidualBlock(w) for _ in range(c.n_blocks)],
                                  nn.Conv2d(w, w, 3, padding=1))
        ups = []
        for _ in range(int(math.log2(c.scale))):
            # apply_pad_pool=False: MONAI's default blurs and shifts by half a pixel per x2 stage
            # after the shuffle (against checkerboard artefacts), misaligning output and target.
            ups += [SubpixelUpsample(2, w, w, scale_factor=2, apply_pad_pool=False), nn.PReLU(w)]
        self.up = nn.Sequential(*ups)
        self.tail = nn.Conv2d(w, c.channels, 9, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        y = self.tail(self.up(h + self.body(h)))
        if self.config.residual:
            y = y + F.interpolate(x, scale_factor=self.config.scale, mode="bicubic", align_corners=False)
        return y


class SRModel(PairedModel):
    """SRResNet or SRGAN as :func:`medgan_utils.train.fit` trains it (a batch is ``(lr, hr)``);
    the training step is :class:`~.img2img.PairedModel`'s, with the non-saturating BCE loss and
    an unconditional D (input and output differ in size).

    Args:
        config: the architecture and loss.
        device: where the networks live.
        feature_net: the frozen encoder of the feature loss (a module with ``feature_maps(x)``),
            required when ``config.feature_weight > 0``.
        init_state: a generator ``state_dict`` to start from (``config.init_from`` loaded).
    """

    def __init__(self, config: SRConfig, device: torch.device | str = "cpu",
                 feature_net: nn.Module | None = None, init_state: dict | None = None):
        super().__init__(config, SRResNet(config), device, feature_net, init_state)

    def visuals(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Bicubic, model output and target of the last training batch's first patches."""
        if self._last is None:
            return {}
        lr, hr = self._last
        bicubic = F.interpolate(lr, scale_factor=self.config.scale, mode="bicubic",
                                align_corners=False).clamp(-1, 1)
        return {"sr": self.apply(lr), "bicubic": bicubic, "hr": hr}
