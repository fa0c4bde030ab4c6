"""Seed 002's networks (ResNet-18/50 via MONAI, Darknet-19) and loading initial weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cadx.errors import ConfigError, InputError
from cadx.models.backbones import (
    BACKBONES,
    build_backbone,
    cam_layer,
    embedding_size,
    feature_modules,
    load_init_weights,
)
from cadx.models.darknet import Darknet19


def _count_convs(model: nn.Module) -> int:
    return sum(isinstance(module, nn.Conv2d) for module in model.modules())


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_darknet19_has_19_convolutions(width):
    assert _count_convs(Darknet19(width=width)) == 19


@pytest.mark.parametrize("in_channels", [1, 3])
def test_darknet19_outputs_one_logit_row_per_image(in_channels):
    model = Darknet19(in_channels=in_channels, num_classes=2, width=0.25)
    assert model(torch.rand(3, in_channels, 32, 32)).shape == (3, 2)


def test_darknet19_rejects_images_smaller_than_its_downsampling():
    with pytest.raises(ConfigError, match="at least 32x32"):
        Darknet19(width=0.25)(torch.rand(1, 1, 16, 16))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_resnets_give_one_logit_per_image(name, in_channels):
    model = build_backbone(name, in_channels)
    assert model(torch.rand(2, in_channels, 64, 64)).shape == (2, 1)


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_names_a_spatial_cam_layer(name):
    # Grad-CAM weights this layer's map and lesion-mask guidance hooks it: it must exist and
    # keep a spatial grid.
    width = 1.0 if name.startswith("efficientnet") else 0.25
    model = build_backbone(name, 3, 1, width, pretrained=False).eval()
    maps = []
    model.get_submodule(cam_layer(model, name)).register_forward_hook(
        lambda module, inputs, output: maps.append(output))
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64))
    assert len(maps) == 1 and maps[0].dim() == 4 and maps[0].shape[-1] >= 2


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ConfigError, match="resnet18, resnet50, darknet19"):
        build_backbone("vgg16", 1)
    with pytest.raises(ConfigError, match="width"):
        build_backbone("darknet19", 1, width=0)


def test_feature_layer_and_embedding_size():
    model = build_backbone("darknet19", 1, num_classes=3, width=0.25)
    assert feature_modules(model, "darknet19", "avgpool") == [model.avgpool]
    assert feature_modules(model, "darknet19", "fc") == [model.fc]
    assert embedding_size("darknet19", "avgpool", 0.25) == 256
    assert embedding_size("resnet50") == 2048
    assert embedding_size("resnet18", "fc", num_classes=3) == 3
    with pytest.raises(ConfigError, match="avgpool, fc"):
        feature_modules(model, "darknet19", "conv5")


def test_init_weights_skip_the_layer_sized_by_the_classes(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("resnet18", 1, num_classes=3)
    path = tmp_path / "three_class.pt"
    torch.save(source.state_dict(), path)
    target = build_backbone("resnet18", 1, num_classes=1)
    report = load_init_weights(target, path)
    assert set(report.skipped) == {"fc.weight", "fc.bias"}
    assert set(report.not_in_file) == {"fc.weight", "fc.bias"}
    assert "shape (3, 512) in file" in report.skipped["fc.weight"]
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert torch.equal(target.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_init_weights_skip_the_first_conv_for_other_input_channels(tmp_path):
    path = tmp_path / "rgb.pt"
    torch.save({"state_dict": build_backbone("darknet19", 3, width=0.25).state_dict()}, path)
    report = load_init_weights(build_backbone("darknet19", 1, width=0.25), path)
    assert list(report.skipped) == ["features.0.weight"]
    assert len(report.loaded) > 90


def test_unreadable_or_foreign_weights_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a state dict at all")
    model = build_backbone("darknet19", 1, width=0.25)
    with pytest.raises(InputError, match="garbage.pt"):
        load_init_weights(model, garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, foreign)
    with pytest.raises(InputError, match="foreign.pt: no tensor matches"):
        load_init_weights(model, foreign)
    with pytest.raises(InputError, match="missing.pt"):
        load_init_weights(model, tmp_path / "missing.pt")
