"""The segmentation network: MONAI's 2D UNet on a slice and its neighbours."""

from __future__ import annotations

from monai.networks.nets import UNet

from cadx.segment.config import SegConfig


def build_network(config: SegConfig) -> UNet:
    """A 2D residual UNet: 2k+1 context slices in, background/organ logits out."""
    return UNet(spatial_dims=2, in_channels=config.in_channels, out_channels=2,
                channels=config.channels, strides=(2,) * (len(config.channels) - 1),
                num_res_units=1)
