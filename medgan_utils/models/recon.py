"""Reconstruction of missing and corrupted image regions (chapter 06): one conditional
image-to-image GAN recipe for three tasks.

* ``inpaint``: fill holes. The generator sees the image with the hole blanked (-1) and the mask
  (1 = missing) as a second channel; its output is kept only inside the hole (outside, the known
  pixels are copied through), so the pixel loss is the L1 inside the hole. With
  ``prefill="biharmonic"`` (the presets) the hole is first filled by biharmonic inpainting and
  the U-Net predicts the correction to that smooth fill: at the start of training the model *is*
  the classical method, as the CT models start at FBP and chapter 05's at bicubic. (Measured on
  24 test slices after 3,000 steps without it: the U-Net tied biharmonic, better on boxes, worse on
  thin strokes, where the smooth fill is already close.)
* ``lowdose``: remove the Poisson noise of a low-dose CT scan from its filtered back-projection.
* ``sparseview``: remove the streaks of an FBP from few projection angles (FBPConvNet, Jin et al.
  2017: a U-Net on the FBP image rather than a network that learns the inverse Radon transform).

For both CT tasks the generator predicts the *correction* to the FBP image (output = input +
U-Net(input)), as the super-resolution generator predicts the correction to bicubic: at the start
of training it returns roughly the FBP itself, and its capacity goes to the noise and streaks.

Generator: MONAI's ``BasicUNet`` (2D; features ``(w, w, 2w, 4w, 8w, w)``, four poolings, LeakyReLU,
no normalisation so that a tile's output does not depend on its batch). Discriminator: MONAI's
``PatchDiscriminator`` conditioned on the input (pix2pix), least-squares adversarial loss through
MONAI's ``PatchAdversarialLoss``; see :class:`~.img2img.PairedModel` for the shared step. A model
with ``adv_weight = 0`` is the pixel-loss twin (``*-l1`` presets); the GAN presets start from the
shipped twin (``init_from``), as SRGAN starts from SRResNet.

Introduced in ``notebooks/06_reconstruction.ipynb``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from ..data.degrade import inpaint_biharmonic
from .img2img import GAN_LOSSES, PairedModel, check_loss_weights
from .parts import LinearDecay

__all__ = ["RECON_PRESETS", "RECON_TASKS", "ReconConfig", "ReconModel", "ReconUNet"]

RECON_TASKS = ("inpaint", "lowdose", "sparseview")
# What each task is trained on when `corruptions` is left empty: both dose fractions (of the
# reference dose), both view counts, both hole shapes; one model serves every level of its task.
DEFAULT_CORRUPTIONS = {"inpaint": "box,stroke", "lowdose": "0.25,0.1", "sparseview": "60,30"}


@dataclass(frozen=True)
class ReconConfig(LinearDecay):
    """Attributes:
        task: ``inpaint``, ``lowdose`` or ``sparseview``.
        channels: image channels.
        width: channels of the U-Net's first stage (features w, w, 2w, 4w, 8w, w).
        patch: side of the random training patches (0 = whole images).
        corruptions: what the model is trained on, comma-separated: hole shapes (``box``,
            ``stroke``), dose fractions of the reference dose (``0.25,0.1``) or view counts
            (``60,30``); empty = the task's default, every level the chapter scores.
        reference_photons: incident photons per detector bin of the full-dose scan (lowdose).
        prefill: inpainting: ``"biharmonic"`` fills the hole classically first and the U-Net
            predicts the correction; ``""`` leaves it black.
        holes_on_head: inpainting on CT: the fraction of each training hole that must lie on the
            head, as for the scored holes (0: holes anywhere in the patch; redrawn otherwise, see
            :class:`~medgan_utils.reconstruction.InpaintLoader`).
        l1_weight, feature_weight, adv_weight: terms of the generator's loss.
        feature_net: checkpoint of the frozen encoder of the feature loss (feature_weight > 0).
        init_from: checkpoint of a trained model whose generator this one starts from.
        gan_loss: ``least_squares`` (MONAI's PatchAdversarialLoss) or ``bce``.
        conditional_d: D sees the input beside the output (pix2pix).
        d_width: channels of the discriminator's first layer.
        lr, lr_d: Adam learning rates of G and D.
        constant_steps, decay_steps: both rates are constant for ``constant_steps`` steps, then
            fall linearly to 0 over ``decay_steps`` (0, the default: constant throughout).
    """

    task: str = "lowdose"
    channels: int = 1
    width: int = 32
    patch: int = 96
    corruptions: str = ""
    reference_photons: float = 4e4
    prefill: str = ""
    holes_on_head: float = 0.0
    l1_weight: float = 1.0
    feature_weight: float = 0.0
    adv_weight: float = 0.0
    feature_net: str = ""
    init_from: str = ""
    gan_loss: str = "least_squares"
    conditional_d: bool = True
    d_width: int = 32
    lr: float = 2e-4
    lr_d: float = 2e-4
    constant_steps: int = 0
    decay_steps: int = 0

    # Fields that shape the model but hold no weights: a start checkpoint must agree on them.
    UNWEIGHTED: ClassVar[tuple[str, ...]] = ("task", "prefill")

    def __post_init__(self) -> None:
        if self.task not in RECON_TASKS:
            raise ValueError(f"task must be one of {RECON_TASKS}, got {self.task!r}")
        if self.prefill not in ("", "biharmonic"):
            raise ValueError(f"prefill must be '' or 'biharmonic', got {self.prefill!r}")
        if not 0.0 <= self.holes_on_head <= 1.0:
            raise ValueError(f"holes_on_head is a fraction in [0, 1], got {self.holes_on_head}")
        if self.holes_on_head and self.task != "inpaint":
            raise ValueError("holes_on_head is for inpainting")
        if self.prefill and self.task != "inpaint":
            raise ValueError("prefill is for inpainting; the CT tasks start from the FBP image itself")
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}")
        check_loss_weights(self)
        self.check_schedule()
        if self.patch and self.patch % 16:
            raise ValueError(f"patch must be a multiple of 16 (the U-Net pools four times), got {self.patch}")
        self.levels()  # a malformed corruptions string fails here, not mid-training

    @property
    def adversarial(self) -> bool:
        return self.adv_weight > 0

    @property
    def in_channels(self) -> int:
        """The generator's input: the image, plus the hole mask for inpainting."""
        return self.channels + (1 if self.task == "inpaint" else 0)

    def levels(self) -> list:
        """The corruptions as values: hole shapes (str), dose fractions (float), views (int)."""
        raw = [p.strip() for p in (self.corruptions or DEFAULT_CORRUPTIONS[self.task]).split(",") if p.strip()]
        try:
            if self.task == "inpaint":
                bad = [p for p in raw if p not in ("box", "stroke")]
                if bad:
                    raise ValueError(bad)
                return raw
            if self.task == "lowdose":
                vals = [float(p) for p in raw]
                if not all(0 < v <= 1 for v in vals):
                    raise ValueError(vals)
                return vals
            vals = [int(p) for p in raw]
            if not all(1 <= v <= 720 for v in vals):
                raise ValueError(vals)
            return vals
        except ValueError:
            want = {"inpaint": "box and/or stroke", "lowdose": "dose fractions in (0, 1], e.g. 0.25,0.1",
                    "sparseview": "view counts in 1..720, e.g. 60,30"}[self.task]
            raise ValueError(f"corruptions {self.corruptions!r} for task {self.task}: expected {want}") from None

    def to_dict(self) -> dict:
        return asdict(self)


_L1 = {"l1_weight": 1.0, "adv_weight": 0.0, "init_from": ""}
# The GAN presets start from the shipped pixel-loss twin and add a small adversarial term.
_GAN = {"l1_weight": 1.0, "adv_weight": 0.01}
RECON_PRESETS = {
    "inpaint-l1": {"task": "inpaint", "patch": 128, "prefill": "biharmonic", **_L1},
    "inpaint": {"task": "inpaint", "patch": 128, "prefill": "biharmonic", **_GAN,
                "init_from": "checkpoints/inpaint_l1_ct.safetensors"},
    "lowdose-l1": {"task": "lowdose", "patch": 96, **_L1},
    "lowdose": {"task": "lowdose", "patch": 96, **_GAN,
                "init_from": "checkpoints/lowdose_l1_ct.safetensors"},
    "sparseview-l1": {"task": "sparseview", "patch": 128, **_L1},
    "sparseview": {"task": "sparseview", "patch": 128, **_GAN,
                   "init_from": "checkpoints/sparseview_l1_ct.safetensors"},
}


class ReconUNet(nn.Module):
    """Corrupted image (B, C_in, H, W) in [-1, 1] -> restored (B, C, H, W), unclamped.

    ``inpaint``: input channels are the image with the hole blanked and the mask; the output is
    ``image * (1 - mask) + U-Net * mask``, or with ``prefill="biharmonic"``
    ``fill * (1 - mask) + (fill + U-Net(fill, mask)) * mask`` where ``fill`` is the biharmonic
    inpainting of the image. CT tasks: ``image + U-Net(image)``. Any H, W work
    (MONAI pads inside the U-Net); multiples of 16 avoid the padding.
    """

    def __init__(self, config: ReconConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.net = BasicUNet(spatial_dims=2, in_channels=config.in_channels, out_channels=config.channels,
                             features=(w, w, 2 * w, 4 * w, 8 * w, w),
                             act=("LeakyReLU", {"negative_slope": 0.1, "inplace": True}), norm=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config.channels
        if self.config.task != "inpaint":
            return x + self.net(x)
        image, mask = x[:, :c], x[:, c:c + 1]
        if self.config.prefill:
            with torch.no_grad():
                image = inpaint_biharmonic(image, mask)
            return image + self.net(torch.cat([image, mask], 1)) * mask
        return image * (1 - mask) + self.net(x) * mask


class ReconModel(PairedModel):
    """The chapter-06 generator (and, with ``adv_weight > 0``, its conditional patch D) as
    :func:`medgan_utils.train.fit` trains it; a batch is ``(input, target)``, the input holding
    the mask as its last channel for inpainting.

    ``tiling`` tells ``medgan apply`` to process whole images (tiles up to 4096 px): the U-Net's
    receptive field (about 94 px each side) and its four poolings make tiled output differ from
    whole-image output unless tiles overlap by about 96 px and start on multiples of 16.

    Args:
        config: task, architecture and loss.
        device: where the networks live.
        feature_net: frozen encoder of an optional feature loss.
        init_state: a generator ``state_dict`` to start from (the GAN starts from its L1 twin).
    """

    tiling = (4096, 96)

    def __init__(self, config: ReconConfig, device: torch.device | str = "cpu",
                 feature_net: nn.Module | None = None, init_state: dict | None = None):
        super().__init__(config, ReconUNet(config), device, feature_net, init_state,
                         in_channels=config.in_channels)

    def pixel_loss(self, fake: torch.Tensor, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.config.task != "inpaint":
            return super().pixel_loss(fake, target, x)
        # Outside the hole the output *is* the input: the loss is the mean L1 over hole pixels.
        mask = x[:, self.config.channels:].expand_as(fake)
        return ((fake - target).abs() * mask).sum() / mask.sum().clamp_min(1.0)
