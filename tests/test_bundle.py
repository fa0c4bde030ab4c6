"""Bundle round trip, checksum refusal, and the Table-1 network shape."""

import zipfile

import pytest
import torch

from cadx.bundle import PatchModelBundle, load_bundle, save_bundle
from cadx.config import ModelConfig, PatchConfig, PipelineConfig, PreprocessConfig
from cadx.decide.roc import OperatingPoint
from cadx.errors import BundleError
from cadx.models.patch_cnn import PatchCNN


def _bundle(patch_size=16):
    torch.manual_seed(0)
    model = PatchCNN(patch_size, batch_norm=False)
    config = PipelineConfig(preprocess=PreprocessConfig(window_level_hu=40),
                            patches=PatchConfig(size_px=patch_size, stride_px=patch_size // 2),
                            model=ModelConfig(batch_norm=False))
    return PatchModelBundle(
        config=config, state_dict=model.state_dict(),
        patch_operating_point=OperatingPoint(0.42, 0.9, 0.8, 0.7, 0.95, (0.0, 1.0), (0.0, 1.0)),
        patient_operating_point=OperatingPoint(0.1, 1.0, 0.9, 0.9, 0.99, (0.0, 1.0), (0.0, 1.0)),
        summary={"counts": {"train": {"patients": 3}}},
    )


def test_table1_network_output_sizes():
    model = PatchCNN(50)
    features = model.features(torch.zeros(2, 1, 50, 50))
    assert features.shape == (2, 128, 6, 6)  # flatten -> 4608, as in Table 1
    assert model(torch.zeros(2, 1, 50, 50)).shape == (2,)
    assert PatchCNN(32)(torch.zeros(1, 1, 32, 32)).shape == (1,)


def test_table1_exactly_without_batch_norm():
    plain = PatchCNN(50, batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    convs = [m for m in plain.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [
        (16, 5), (32, 5), (64, 3), (64, 3), (128, 3), (128, 3)]
    linears = [m for m in plain.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4608, 32), (32, 32), (32, 1)]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in PatchCNN(50).modules()) == 6


def test_bundle_round_trip(tmp_path):
    bundle = _bundle()
    path = save_bundle(bundle, tmp_path / "m.cadx")
    loaded = load_bundle(path)
    assert loaded.config == bundle.config
    assert loaded.patch_threshold == 0.42 and loaded.patient_threshold == 0.1
    assert loaded.summary == bundle.summary
    x = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(loaded.build_model()(x), bundle.build_model()(x))
    assert not list(tmp_path.glob("*.part"))  # no temp files left behind


def test_edited_bundle_is_refused(tmp_path):
    path = save_bundle(_bundle(), tmp_path / "m.cadx")
    with zipfile.ZipFile(path) as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    parts["manifest.json"] = parts["manifest.json"].replace(b'"threshold": 0.42',
                                                            b'"threshold": 0.01')
    tampered = tmp_path / "tampered.cadx"
    with zipfile.ZipFile(tampered, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    with pytest.raises(BundleError, match="tampered.cadx: checksum mismatch"):
        load_bundle(tampered)


def test_truncated_or_foreign_file_is_refused(tmp_path):
    path = save_bundle(_bundle(), tmp_path / "m.cadx")
    truncated = tmp_path / "cut.cadx"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BundleError, match="cut.cadx: not a cadx model bundle"):
        load_bundle(truncated)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "missing.cadx")


def test_weights_of_another_network_version_are_a_bundle_error():
    point = OperatingPoint(0.5, 1.0, 1.0, 1.0, 1.0, (0.0, 1.0), (0.0, 1.0))
    plain = PatchCNN(50, batch_norm=False).state_dict()
    bundle = PatchModelBundle(PipelineConfig(model=ModelConfig(batch_norm=True)), plain, point,
                              point)
    with pytest.raises(BundleError, match="retrain"):
        bundle.build_model()
