"""Class activation maps (Grad-CAM, MONAI's `monai.visualize.GradCAM`) of the image CNNs, and
their PNG overlays on the image (seed 002 shows CAMs beside each diagnosis)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from monai.visualize import GradCAM, GradCAMpp
from PIL import Image
from torch import nn

from cadx.errors import ConfigError
from cadx.io.atomic import atomic_path
from cadx.models.backbones import cam_layer

OVERLAY_ALPHA = 0.45
# Grad-CAM (the default) or Grad-CAM++ (second-order weights of the same layer).
CAM_METHODS = {"gradcam": GradCAM, "gradcampp": GradCAMpp}


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Each map of a batch ((N, ...) maps) scaled to 0..1 with its largest value at 1 (a flat
    map gives 0).

    MONAI's default Grad-CAM post-processing maps (min, max) to (1, 0): the most activated
    region would come out as the least. cadx wants high = evidence for malignancy.
    """
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (maps.dim() - 1)))
    span = flat.max(dim=1).values.view_as(lo) - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, 1.0), 0.0)


def _maps(cam: GradCAM, x: torch.Tensor, one_at_a_time: bool) -> torch.Tensor:
    """(N, H, W) maps of the malignancy logit. MONAI's GradCAMpp broadcasts the class score
    against the gradients correctly only for one image at a time."""
    with torch.enable_grad():
        if one_at_a_time:
            return torch.cat([cam(x=x[i:i + 1].clone().requires_grad_(True),
                                  class_idx=0).detach()[:, 0] for i in range(len(x))])
        return cam(x=x.clone().requires_grad_(True), class_idx=0).detach()[:, 0]


def grad_cam(models: Sequence[nn.Module], archs: Sequence[str], weights: Sequence[float],
             images: np.ndarray, method: str = "gradcam", flip_average: bool = False,
             input_px: int | None = None, fuse_layer: str | None = None) -> np.ndarray:
    """Grad-CAM of the malignancy logit for each (C, H, W) image: (N, H, W) in 0..1.

    For an ensemble the members' maps (each scaled to 0..1, most activated = 1) are averaged
    with the ensemble weights, then rescaled to 0..1 per image. `method` is a CAM_METHODS key;
    with `flip_average` each member's map is the mean of the image's map and the map of its
    left-right mirror image, mirrored back. With `input_px` the maps are computed on the images
    resized to input_px x input_px (a finer map of the CAM layer) and resized back to H x W.
    With `fuse_layer` (a module name, e.g. a finer block) each member's map is the product of
    its CAM layer's map and that layer's map, both at the input size, rescaled to 0..1.
    """
    if method not in CAM_METHODS:
        raise ConfigError(f"CAM method must be one of {sorted(CAM_METHODS)}, got {method!r}")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    size = tuple(x.shape[2:])
    if input_px is not None:
        x = nn.functional.interpolate(x, size=(input_px, input_px), mode="bilinear",
                                      align_corners=False)
    total = torch.zeros((len(images), *x.shape[2:]), dtype=torch.float64)
    for model, arch, weight in zip(models, archs, weights, strict=True):
        model.eval()
        cam = CAM_METHODS[method](nn_module=model, target_layers=cam_layer(model, arch),
                                  postprocessing=_unit_range)
        maps = _maps(cam, x, one_at_a_time=method == "gradcampp")
        if flip_average:
            mirrored = _maps(cam, x.flip(-1), one_at_a_time=method == "gradcampp")
            maps = _unit_range((maps + mirrored.flip(-1)) / 2)
        if fuse_layer is not None:
            finer = CAM_METHODS[method](nn_module=model, target_layers=fuse_layer,
                                        postprocessing=_unit_range)
            maps = _unit_range(maps * _maps(finer, x, one_at_a_time=method == "gradcampp"))
        total += float(weight) * maps.double()
    if input_px is not None:
        total = nn.functional.interpolate(total[:, None], size=size, mode="bilinear",
                                          align_corners=False)[:, 0]
    return _unit_range(total).numpy()


def cam_overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """RGB uint8 overlay of a 0..1 `cam` (any size: resized to the image) on a grey or RGB
    `image` ((H, W), (H, W, 3) or (C, H, W) in 0..1)."""
    base = np.asarray(image, dtype=np.float32)
    if base.ndim == 3 and base.shape[0] in (1, 3) and base.shape[-1] not in (1, 3):
        base = base.transpose(1, 2, 0)
    if base.ndim == 2:
        base = base[..., None]
    base = np.repeat(base, 3, axis=-1) if base.shape[-1] == 1 else base
    height, width = base.shape[:2]
    heat = np.asarray(Image.fromarray(cam.astype(np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR))
    colour = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3]
    blended = (1.0 - OVERLAY_ALPHA) * np.clip(base, 0.0, 1.0) + OVERLAY_ALPHA * colour
    return (blended * 255.0 + 0.5).astype(np.uint8)


def write_overlay_png(path: str | Path, image: np.ndarray, cam: np.ndarray) -> Path:
    """Write `cam_overlay(image, cam)` as a PNG, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(cam_overlay(image, cam)).save(tmp, format="PNG")
    return path


def write_cam_npy(path: str | Path, cam: np.ndarray) -> Path:
    """Write the raw 0..1 `cam` (the model's input size) as float32 .npy, atomically, so that
    it can be measured against a lesion mask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.asarray(cam, dtype=np.float32))
    return path
