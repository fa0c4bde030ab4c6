"""A patch network trained on each patch's tumour mask: a small MONAI UNet whose largest pixel
logit is the patch's logit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers import Norm
from monai.networks.nets import UNet
from torch import nn

UNET_LEVELS = 4


def unet_channels(width: int) -> tuple[int, ...]:
    """The UNet's channels at each of its levels for `width` at the first, doubled at each."""
    return tuple(width * 2 ** level for level in range(UNET_LEVELS))


UNET_CHANNELS = unet_channels(16)  # 16/32/64/128: `ModelConfig.unet_width`'s default


class DensePatchNet(nn.Module):
    """A 2D UNet on (N, C, P, P) patches in 0..1. `forward(x)` gives (N,) patch logits (the
    largest pixel logit, so cadx scores it as any patch network); `forward(x, region=r)` the
    largest inside each patch's (N, P, P) region (an organ mask; a patch whose region is empty
    is scored over its whole window); `forward(x, pixels=True)` gives the (N, 1, P, P) tumour
    logits it is trained on. Patches are padded (edge values) to a multiple of the UNet's total
    stride and the output cropped back."""

    def __init__(self, patch_size_px: int, in_channels: int,
                 channels: tuple[int, ...] = UNET_CHANNELS) -> None:
        super().__init__()
        multiple = 2 ** (len(channels) - 1)
        extra = -patch_size_px % multiple
        self.pad = (extra // 2, extra - extra // 2)
        self.patch_size_px = patch_size_px
        self.in_channels = in_channels
        self.unet = UNet(2, in_channels, 1, channels=channels,
                         strides=(2,) * (len(channels) - 1), num_res_units=1, norm=Norm.BATCH)

    def forward(self, patches: torch.Tensor, pixels: bool = False,
                region: torch.Tensor | None = None) -> torch.Tensor:
        lo, hi = self.pad
        out = self.unet(F.pad(patches, (lo, hi, lo, hi), mode="replicate"))
        out = out[..., lo:out.shape[-2] - hi, lo:out.shape[-1] - hi]
        return out if pixels else largest_logit(out, region)


def largest_logit(pixel_logits: torch.Tensor, region: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Each patch's largest pixel logit of (N, ..., P, P) `pixel_logits`, inside its (N, P, P)
    `region` when given; a patch whose region is empty is scored over its whole window."""
    flat = pixel_logits.flatten(1)
    if region is not None:
        inside = region.reshape(len(flat), -1).bool()
        inside |= ~inside.any(dim=1, keepdim=True)
        flat = flat.masked_fill(~inside, torch.finfo(flat.dtype).min)
    return flat.amax(dim=1)
