"""Darknet-19, the classifier behind YOLOv2 (Redmon & Farhadi, "YOLO9000: Better, Faster,
Stronger", CVPR 2017, Table 6), used with ResNet for ovarian ultrasound in seed 002."""

from __future__ import annotations

import torch
from torch import nn

from cadx.errors import ConfigError

# Table 6, top to bottom: (output channels, kernel) per convolution, "M" for a 2x2/2 max-pool.
# The 1x1 convolution to the classes (the 19th) is added by the model.
_TABLE_6: tuple[tuple[int, int] | str, ...] = (
    (32, 3), "M",
    (64, 3), "M",
    (128, 3), (64, 1), (128, 3), "M",
    (256, 3), (128, 1), (256, 3), "M",
    (512, 3), (256, 1), (512, 3), (256, 1), (512, 3), "M",
    (1024, 3), (512, 1), (1024, 3), (512, 1), (1024, 3),
)
_DOWNSAMPLING = 2 ** sum(1 for item in _TABLE_6 if item == "M")


def scaled_channels(channels: int, width: float) -> int:
    """Channels of a layer after the width multiplier (at least 1)."""
    return max(1, int(channels * width))


def _conv_block(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.1, inplace=True)]


class Darknet19(nn.Module):
    """19 convolutions (3x3 and 1x1 alternating), BatchNorm + LeakyReLU(0.1), five max-pools,
    global average pooling; input (N, in_channels, H, W) with H, W >= 32, output (N, num_classes)
    logits.

    `width` multiplies every channel count but the classes' (0.25 gives a 256-channel last
    feature map and runs about ten times faster on a CPU); the layer count stays 19.

    Table 6 ends with the 1x1 convolution to the classes followed by the global average pool.
    Both are linear, so they commute: here `avgpool` comes first and `fc` (still a 1x1
    convolution) second, which gives the same logits and exposes the pooled
    `embedding_size`-long feature at `avgpool`, named as in ResNet.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1, width: float = 1.0) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ConfigError(f"Darknet-19 needs in_channels >= 1 and num_classes >= 1 "
                              f"(got {in_channels} and {num_classes})")
        if not width > 0:
            raise ConfigError(f"Darknet-19 width multiplier must be > 0 (got {width})")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _TABLE_6:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out_channels, kernel = item
            layers += _conv_block(channels, scaled_channels(out_channels, width), kernel)
            channels = scaled_channels(out_channels, width)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, num_classes, 1)
        self.embedding_size = channels
        # He initialisation for the leaky ReLUs, as Darknet-19 is trained from scratch here.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0.1, mode="fan_out",
                                        nonlinearity="leaky_relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if min(images.shape[-2:]) < _DOWNSAMPLING:
            raise ConfigError(f"Darknet-19 needs images of at least {_DOWNSAMPLING}x"
                              f"{_DOWNSAMPLING} px (five 2x2 max-pools); got "
                              f"{tuple(images.shape[-2:])}")
        return torch.flatten(self.fc(self.avgpool(self.features(images))), 1)
