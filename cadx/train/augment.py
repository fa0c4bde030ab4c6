"""On-the-fly augmentation of 2D images for training (seed 002): random crop, rotation, flips,
scaling, translation, brightness/contrast ("saturation and exposure"). MONAI transforms; never
applied to validation or test images."""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandAffine,
    RandFlip,
    RandScaleIntensity,
    RandShiftIntensity,
    RandSpatialCrop,
    Resize,
)


def image_augmentation(size_px: int, seed: int = 0) -> Compose:
    """A seeded MONAI pipeline for one (C, H, W) image in 0..1, returning the same shape."""
    crop_px = max(int(round(0.875 * size_px)), 8)
    pipeline = Compose([
        RandSpatialCrop(roi_size=(crop_px, crop_px), random_size=False),
        Resize((size_px, size_px), mode="bilinear"),
        RandAffine(prob=0.8, rotate_range=np.deg2rad(15.0), scale_range=(0.15, 0.15),
                   translate_range=(0.08 * size_px, 0.08 * size_px), padding_mode="zeros"),
        RandFlip(prob=0.5, spatial_axis=1),
        RandFlip(prob=0.5, spatial_axis=0),
        RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5)),
        RandScaleIntensity(factors=0.2, prob=0.5),
        RandShiftIntensity(offsets=0.1, prob=0.5),
    ])
    pipeline.set_random_state(seed=seed)
    return pipeline


def augment_batch(images: torch.Tensor, pipeline: Compose) -> torch.Tensor:
    """Apply `pipeline` to each (C, H, W) image of a batch and clip to [0, 1]."""
    augmented = [torch.as_tensor(pipeline(image)).as_subclass(torch.Tensor) for image in images]
    return torch.stack(augmented).clamp_(0.0, 1.0).float()
