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


def image_augmentation(size_px: int, seed: int = 0, vertical_flip: bool = False) -> Compose:
    """A seeded MONAI pipeline for one (C, H, W) image in 0..1, returning the same shape.

    Left-right flips always; up-down flips only with `vertical_flip` (an ultrasound image has
    the probe and skin at the top and depth below: an upside-down image is not a plausible one).
    """
    crop_px = max(int(round(0.875 * size_px)), 8)
    flips = [RandFlip(prob=0.5, spatial_axis=1)]
    if vertical_flip:
        flips.append(RandFlip(prob=0.5, spatial_axis=0))
    pipeline = Compose([
        RandSpatialCrop(roi_size=(crop_px, crop_px), random_size=False),
        Resize((size_px, size_px), mode="bilinear"),
        RandAffine(prob=0.8, rotate_range=np.deg2rad(15.0), scale_range=(0.15, 0.15),
                   translate_range=(0.08 * size_px, 0.08 * size_px), padding_mode="zeros"),
        *flips,
        RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5)),
        RandScaleIntensity(factors=0.2, prob=0.5),
        RandShiftIntensity(offsets=0.1, prob=0.5),
    ])
    pipeline.set_random_state(seed=seed)
    return pipeline


SPATIAL_TRANSFORMS = (RandSpatialCrop, Resize, RandAffine, RandFlip)


def augment_batch(images: torch.Tensor, pipeline: Compose) -> torch.Tensor:
    """Apply `pipeline` to each (C, H, W) image of a batch and clip to [0, 1]."""
    augmented = [torch.as_tensor(pipeline(image)).as_subclass(torch.Tensor) for image in images]
    return torch.stack(augmented).clamp_(0.0, 1.0).float()


def augment_batch_with_masks(images: torch.Tensor, masks: torch.Tensor,
                             pipeline: Compose) -> tuple[torch.Tensor, torch.Tensor]:
    """`augment_batch` for images with (N, H, W) lesion masks: each mask follows its image
    through the spatial transforms (crop, resize, affine, flips; bilinear, so its edges come
    out soft), the intensity transforms touch the image only. Each transform draws its random
    parameters as it does without masks, so the images come out as `augment_batch`'s."""
    split = next((k for k, t in enumerate(pipeline.transforms)
                  if not isinstance(t, SPATIAL_TRANSFORMS)), len(pipeline.transforms))
    out_images, out_masks = [], []
    for image, mask in zip(images, masks, strict=True):
        stacked = torch.cat([image, mask[None].to(image.dtype)])
        for transform in pipeline.transforms[:split]:
            stacked = transform(stacked)
        stacked = torch.as_tensor(stacked).as_subclass(torch.Tensor)
        image = stacked[:-1]
        for transform in pipeline.transforms[split:]:
            image = transform(image)
        out_images.append(torch.as_tensor(image).as_subclass(torch.Tensor))
        out_masks.append(stacked[-1])
    return (torch.stack(out_images).clamp_(0.0, 1.0).float(),
            torch.stack(out_masks).clamp_(0.0, 1.0).float())
