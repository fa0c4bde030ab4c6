"""Which network classifies CT patches: seed 000's Table-1 CNN, a pretrained EfficientNet-Lite
or a dense UNet trained on the patches' tumour masks."""

from __future__ import annotations

import torch
from torch import nn

from cadx.config import ModelConfig
from cadx.errors import ConfigError
from cadx.models.dense_patch_net import DensePatchNet, unet_channels
from cadx.models.patch_cnn import PatchCNN
from cadx.models.pretrained import build_efficientnet_lite


class PretrainedPatchNet(nn.Module):
    """An ImageNet-pretrained EfficientNet-Lite scoring (N, C, P, P) patches in 0..1 as (N,)
    logits, like PatchCNN. C is 1 (the grey slice, replicated) or 3 (2.5D with one neighbour
    slice on each side, taking the place of the RGB channels)."""

    def __init__(self, arch: str, patch_size_px: int, in_channels: int,
                 pretrained: bool) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ConfigError(f"the {arch} patch network takes 1 slice or 3 (--context-slices "
                              f"0 or 1), not {in_channels}")
        self.patch_size_px = patch_size_px
        self.in_channels = in_channels
        self.net = build_efficientnet_lite(arch, in_channels, 1, pretrained=pretrained)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.net(patches).squeeze(1)


def build_patch_network(config: ModelConfig, patch_size_px: int, in_channels: int, *,
                        pretrained: bool) -> nn.Module:
    """The patch network `config.arch` names; `pretrained` loads ImageNet weights into a
    pretrained architecture (training), False leaves it for a bundle's weights (scoring)."""
    if config.arch == "table1":
        return PatchCNN(patch_size_px, config.batch_norm, in_channels)
    if config.arch == "unet":
        return DensePatchNet(patch_size_px, in_channels, unet_channels(config.unet_width))
    return PretrainedPatchNet(config.arch, patch_size_px, in_channels, pretrained)
