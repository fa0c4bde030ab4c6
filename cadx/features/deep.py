"""Deep features: the output of one layer of a CNN for each image, to feed a classical
classifier; features of several CNNs or layers are concatenated (seed 004, after Lee et al.,
Sci. Rep. 2019: ResNet features from the average-pooling layer, then SVM or random forest)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cadx.errors import ConfigError, InputError
from cadx.models.backbones import feature_modules


def extract_deep_features(model: nn.Module, backbone_name: str, images: np.ndarray,
                          layer: str = "avgpool", batch_size: int = 32) -> np.ndarray:
    """The `layer` output of `model` (built by `build_backbone(backbone_name, ...)`) for each
    of the (N, C, H, W) `images` (the outputs of `feature_modules`, spatial maps averaged over
    space, concatenated): (N, D) float32. Runs in eval mode, batched; the model's training mode
    is restored afterwards."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise InputError(f"images must be (N, C, H, W); got shape {images.shape}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
    modules = feature_modules(model, backbone_name, layer)
    device = next(model.parameters()).device
    batches: list[torch.Tensor] = []
    pieces: list[torch.Tensor] = []  # this batch's output of each module, in module order

    def keep_output(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        output = output.detach().float()
        pieces.append((output.mean(dim=(2, 3)) if output.ndim == 4 else output.flatten(1)).cpu())

    was_training = model.training
    hooks = [module.register_forward_hook(keep_output) for module in modules]
    try:
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
                pieces.clear()
                model(torch.from_numpy(batch).to(device))
                batches.append(torch.cat(pieces, dim=1))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not batches:
        raise InputError("no images to extract features from (N = 0)")
    return torch.cat(batches).numpy()


def concat_features(features: Sequence[np.ndarray]) -> np.ndarray:
    """Join (N, D_k) feature arrays of the same N images column-wise into (N, sum D_k)."""
    if len(features) == 0:
        raise ConfigError("concat_features needs at least one feature array")
    arrays = [np.asarray(array) for array in features]
    for index, array in enumerate(arrays):
        if array.ndim != 2:
            raise InputError(f"feature array {index} must be (N, D); got shape {array.shape}")
        if len(array) != len(arrays[0]):
            raise InputError(f"feature array {index} has {len(array)} rows but array 0 has "
                             f"{len(arrays[0])}; all must describe the same images")
    return np.concatenate(arrays, axis=1)
