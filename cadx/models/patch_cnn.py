"""The patch classifier of seed 000, Table 1, sized from the patch size."""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2), nn.ReLU()]


class PatchCNN(nn.Module):
    """conv 5x5x16, 5x5x32, pool; 3x3x64 x2, pool; 3x3x128 x2, pool; FC 32, 32, 1.

    Input (N, 1, P, P) with values 0..1; output (N,) logits (apply a sigmoid for probabilities).
    For P = 50 the flattened feature is 6 x 6 x 128 = 4608, as in Table 1.
    """

    def __init__(self, patch_size_px: int = 50) -> None:
        super().__init__()
        self.patch_size_px = patch_size_px
        self.features = nn.Sequential(
            *_conv_block(1, 16, 5), *_conv_block(16, 32, 5), nn.MaxPool2d(2),
            *_conv_block(32, 64, 3), *_conv_block(64, 64, 3), nn.MaxPool2d(2),
            *_conv_block(64, 128, 3), *_conv_block(128, 128, 3), nn.MaxPool2d(2),
        )
        side = patch_size_px // 2 // 2 // 2
        if side < 1:
            raise ValueError(f"patch size {patch_size_px} px is too small for three 2x2 poolings")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * side * side, 32), nn.ReLU(),
            nn.Linear(32, 32), nn.ReLU(),
            nn.Linear(32, 1),
        )
        # He initialisation: with PyTorch's default (a smaller variance) the signal fades through
        # the eight ReLU layers and training sat at chance for epochs on the synthetic cohort.
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(patches)).squeeze(1)
