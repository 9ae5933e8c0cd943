"""A small ResNet for 28-224 px MedMNIST images: the course's feature extractor and judge.

Two jobs, one network:

* Metrics (chapters 01-10): no ImageNet Inception can be downloaded here, and ImageNet features
  judge X-rays poorly anyway, so FD/KID/precision/recall are measured on this network's
  penultimate features after training it on the real MedMNIST split (``features(x)``).
* Chapter 04's downstream classifier: the same recipe trains every augmentation arm.

Layout (28 px, width 32): conv3x3 -> 2 basic blocks per stage at widths (32, 64, 128), stride 2
between stages -> global average pool -> ``feature_dim`` (128) -> linear to the classes.
MONAI's ResNet is 3D-first and sized for 224 px; torchvision's ResNet-18 stem downsamples 28 px
images to 7 px before the first block, which is why MedMNIST's own baseline upsamples. This one
keeps full resolution in the first stage.

Introduced in ``notebooks/03_wgan_gp.ipynb`` (metrics) and ``04_cgan_augmentation.ipynb``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ClassifierConfig:
    """Attributes:
        channels: image channels.
        num_classes: output classes (2 for binary tasks: softmax over two logits).
        width: channels of the first stage (doubles per stage).
        stages: number of stages (each two basic blocks).
        dropout: before the final linear layer.
        stem_stride: 1 keeps full resolution in the first stage (the feature extractors); 2
            halves it first, ~4x cheaper (chapter 04 trains 200 classifiers on a CPU).
    """

    channels: int = 1
    num_classes: int = 2
    width: int = 32
    stages: int = 3
    dropout: float = 0.2
    stem_stride: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class Classifier(nn.Module):
    """images (B, C, H, W) in [-1, 1] -> logits (B, num_classes); ``features`` gives (B, feature_dim)."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = c = config
        self.stem = nn.Sequential(nn.Conv2d(c.channels, c.width, 3, stride=c.stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(c.width), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        c_in = c.width
        for i in range(c.stages):
            c_out = c.width * 2**i
            blocks += [_Block(c_in, c_out, 1 if i == 0 else 2), _Block(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = c_in
        self.drop = nn.Dropout(c.dropout)
        self.fc = nn.Linear(c_in, c.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim): what FD, KID and precision/recall compare."""
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x)))
