"""In-plane spacing (issue 14): a bundle records its training pixel size, new scans are
resampled to it by default (`--keep-in-plane-spacing` keeps the seed's z-only resampling), and
a scan outside the training range gets a one-line warning.

The phantom test draws the same patient at 0.9 and 0.6 mm pixels: anatomy and tumour come from
one random stream, the noise fields (whose draws depend on the grid size) from another, so the
two scans differ only in pixel size and noise realisation. A tiny hand-made "model" (the mean
0..1 intensity of the patch) stands in for a trained network: on the resampled path the two
scans' patch grids cover the same millimetres and score alike; on the seed's path they do not.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cadx.bundle import PatchModelBundle, load_bundle, save_bundle
from cadx.case import Case
from cadx.cli import main
from cadx.config import DecideConfig, PatchConfig, PipelineConfig, PreprocessConfig
from cadx.decide.roc import OperatingPoint
from cadx.diagnose.patient import diagnose_case
from cadx.errors import ConfigError, InputError
from cadx.io.limits import VolumeTooLargeError
from cadx.models.patch_cnn import PatchCNN
from cadx.patches.cohort import PatchedCase
from cadx.patches.grid import PatchSet
from cadx.preprocess.pipeline import in_plane_spacing_warning, preprocess_case
from cadx.preprocess.resample import resample_grid, resampled_shape
from cadx.synth.ct_phantom import make_ct_phantom
from cadx.train.pipeline import training_in_plane_spacing
from cadx.workflows import cohort_spacing_warning
from tests.conftest import toy_case, write_toy_dataset, write_volume

FOV_MM = 345.6  # the phantoms' default field of view (384 x 0.9 mm)
POINT = OperatingPoint(0.5, 0.5, 0.5, 0.0, 0.5, (0.0, 1.0), (0.0, 1.0))


class SplitStreamRng:
    """A numpy Generator whose grid-sized noise draws (`standard_normal`) come from a second
    stream, so that a phantom's anatomy does not depend on its grid."""

    def __init__(self, seed: int) -> None:
        self._anatomy = np.random.default_rng(seed)
        self._texture = np.random.default_rng(seed + 1000)

    def standard_normal(self, *args, **kwargs):
        return self._texture.standard_normal(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._anatomy, name)


class PatchMean(torch.nn.Module):
    """A transparent stand-in for a trained patch network: logit = gain x (patch mean - 0.5)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.gain * (patches.mean(dim=(1, 2, 3)) - 0.5)


def _bundle(grid_mm: float | None, training_range=(0.9, 0.9), size_px: int = 50,
            stride_px: int = 25) -> PatchModelBundle:
    config = PipelineConfig(preprocess=PreprocessConfig(in_plane_spacing_mm=grid_mm),
                            patches=PatchConfig(size_px, stride_px),
                            decide=DecideConfig("topk", 5))
    summary = {} if training_range is None else {"in_plane_spacing_mm": {
        "grid": grid_mm, "training_min": training_range[0], "training_max": training_range[1],
        "training_resampled": False}}
    torch.manual_seed(0)
    return PatchModelBundle(config, PatchCNN(size_px).state_dict(), POINT, POINT,
                            summary=summary)


def _phantom(pixel_mm: float, seed: int) -> Case:
    n_px = round(FOV_MM / pixel_mm)
    phantom = make_ct_phantom(SplitStreamRng(seed), 25.0, (8, n_px, n_px),
                              (5.0, pixel_mm, pixel_mm))
    return Case(f"p{seed}", phantom.image_hu.astype(np.float32), phantom.spacing_zyx_mm,
                phantom.label > 0, source=f"phantom_{pixel_mm}mm")


def _patch_scores(bundle: PatchModelBundle, case: Case) -> dict[tuple[int, ...], float]:
    """Patch probability by (slice, y, x) position on the preprocessed grid."""
    from cadx.patches.grid import extract_patches
    from cadx.train.fit import predict_patch_probabilities

    patches = extract_patches(preprocess_case(case, bundle.config.preprocess),
                              bundle.config.patches)
    probabilities = predict_patch_probabilities(PatchMean(), patches.patches)
    return {tuple(int(v) for v in c): float(p)
            for c, p in zip(patches.coords, probabilities, strict=True)}


@pytest.mark.parametrize("seed", [3, 5])
def test_phantoms_at_06_and_09_mm_score_alike_when_resampled(seed):
    bundle = _bundle(grid_mm=0.9)
    fine, coarse = _phantom(0.6, seed), _phantom(0.9, seed)
    on_fine, on_coarse = _patch_scores(bundle, fine), _patch_scores(bundle, coarse)
    # The same millimetres: nearly every patch position exists on both scans ...
    shared = sorted(set(on_fine) & set(on_coarse))
    assert len(shared) >= 0.9 * max(len(on_fine), len(on_coarse))
    a = np.array([on_fine[k] for k in shared])
    b = np.array([on_coarse[k] for k in shared])
    # ... and the patch there sees the same anatomy (noise realisations differ).
    assert np.corrcoef(a, b)[0, 1] > 0.95
    assert np.abs(a - b).mean() < 0.05
    diagnoses = [diagnose_case(bundle, case, model=PatchMean()) for case in (fine, coarse)]
    assert diagnoses[0].patient_score == pytest.approx(diagnoses[1].patient_score, abs=0.05)
    assert diagnoses[0].n_patches == pytest.approx(diagnoses[1].n_patches, rel=0.1)
    assert diagnoses[0].in_plane_spacing_mm == diagnoses[1].in_plane_spacing_mm == (0.9, 0.9)
    assert diagnoses[1].warnings == []
    (warning,) = diagnoses[0].warnings
    assert "0.6 x 0.6 mm is outside the training range 0.9 mm; resampled" in warning

    # The seed's path (--keep-in-plane-spacing): a 50 px patch covers 30 mm on the 0.6 mm
    # scan, 45 mm on the 0.9 mm one; the grids no longer line up.
    native = bundle.with_native_in_plane_spacing()
    kept = diagnose_case(native, fine, model=PatchMean())
    assert kept.n_patches > 1.3 * diagnoses[1].n_patches
    assert kept.in_plane_spacing_mm is None
    assert "kept (--keep-in-plane-spacing), so a 50 px patch covers 30 mm here, 45 mm in " \
           "training" in kept.warnings[0]


def test_patient_scores_move_with_the_patch_size_on_the_seeds_path():
    """What the resampling guards against: the same patient at 0.6 mm scores differently
    when its pixels are kept (top-5 patch means over 30 mm instead of 45 mm patches)."""
    bundle = _bundle(grid_mm=0.9)
    coarse = diagnose_case(bundle, _phantom(0.9, 3), model=PatchMean()).patient_score
    resampled = diagnose_case(bundle, _phantom(0.6, 3), model=PatchMean()).patient_score
    kept = diagnose_case(bundle.with_native_in_plane_spacing(), _phantom(0.6, 3),
                         model=PatchMean()).patient_score
    assert abs(resampled - coarse) < abs(kept - coarse)


def test_resample_grid_keeps_extent_and_labels_nearest():
    # 7 pixels 0.6 mm apart span 3.6 mm -> 5 pixels at 0.9 mm; value = x position in mm.
    x_mm = np.arange(7) * 0.6
    image = np.broadcast_to(x_mm, (2, 4, 7)).astype(np.float32)
    out = resample_grid(image, (5.0, 0.6, 0.6), 5.0, 0.9, is_label=False)
    assert out.shape == (2, 3, 5)
    np.testing.assert_allclose(out[0, 0], np.arange(5) * 0.9, atol=1e-5)
    mask = np.zeros((2, 4, 7), bool)
    mask[:, :, 3] = True  # 1.8 mm, which lands on the 0.9 mm grid's pixel 2
    labels = resample_grid(mask, (5.0, 0.6, 0.6), 5.0, 0.9, is_label=True)
    assert labels.dtype == bool and labels[0, 0].tolist() == [False, False, True, False, False]
    # On the target grid already (and z at the thickness): the same array comes back.
    assert resample_grid(image, (5.0, 0.9, 0.9), 5.0, 0.9, is_label=False) is image
    # None: z only, as the seed.
    assert resample_grid(image, (5.0, 0.6, 0.6), 5.0, None, is_label=False) is image


def test_resampled_grid_is_checked_against_the_voxel_limit_first():
    volume = np.zeros((4, 64, 64), np.float32)
    assert resampled_shape(volume.shape, (5.0, 0.5, 0.5), 5.0, 1.0) == (4, 32, 32)
    with pytest.raises(VolumeTooLargeError, match=r"scan.nii.gz: resampling 0.5 x 0.5 mm "
                                                  r"pixels to 0.05 mm"):
        resample_grid(volume, (5.0, 0.5, 0.5), 5.0, 0.05, is_label=False,
                      source="scan.nii.gz", max_voxels=100_000)
    with pytest.raises(InputError, match="in-plane pixel size"):
        resampled_shape(volume.shape, (5.0, 0.5, 0.5), 5.0, float("nan"))


def test_preprocess_resamples_in_plane_when_configured():
    image, label = toy_case(np.random.default_rng(0), with_tumour=True)
    case = Case("p", image.astype(np.float32), (2.5, 0.5, 0.5), label > 0, label == 2)
    out = preprocess_case(case, PreprocessConfig(in_plane_spacing_mm=1.0))
    assert out.image.shape == (4, 24, 24) and out.spacing_zyx_mm == (5.0, 1.0, 1.0)
    assert out.organ_mask.shape == out.tumour_mask.shape == out.image.shape
    # Within isclose of the grid: the pixels are kept, and reported as they are.
    same = preprocess_case(replace(case, spacing_zyx_mm=(2.5, 1.0, 1.0)),
                           PreprocessConfig(in_plane_spacing_mm=1.0))
    assert same.image.shape == (4, 48, 48)


@pytest.mark.parametrize("value", [0.0, -1.0, 60.0, float("nan")])
def test_config_refuses_an_impossible_pixel_size(value):
    with pytest.raises(ConfigError, match="in-plane spacing"):
        PreprocessConfig(in_plane_spacing_mm=value)


def test_warning_only_outside_the_training_range():
    args = dict(training_grid_mm=0.8, resampled=True, patch_size_px=50)
    assert in_plane_spacing_warning((5, 0.7, 0.7), (0.6, 0.9), **args) is None
    assert in_plane_spacing_warning((5, 0.91, 0.91), (0.6, 0.9), **args) is None  # 2 % slack
    assert in_plane_spacing_warning((5, 0.5, 0.5), None, **args) is None  # an old bundle
    line = in_plane_spacing_warning((5, 0.5, 0.5), (0.6, 0.9), source="ct.nii.gz", **args)
    assert line == ("ct.nii.gz: in-plane pixel spacing 0.5 x 0.5 mm is outside the training "
                    "range 0.6-0.9 mm; resampled to the model's 0.8 mm pixels")


def _patched(pid: str, spacing) -> PatchedCase:
    patches = PatchSet(np.zeros((1, 8, 8), np.float32), np.array([pid], object),
                       np.zeros((1, 3), int), np.zeros(1, np.int64))
    return PatchedCase(pid, patches, False, None, {}, spacing)


def test_training_records_median_grid_and_range():
    cases = [_patched("a", (5.0, 0.6, 0.6)), _patched("b", (5.0, 0.8, 0.8)),
             _patched("c", (5.0, 0.9, 0.9))]
    assert training_in_plane_spacing(cases, PipelineConfig()) == {
        "grid": 0.8, "training_min": 0.6, "training_max": 0.9, "training_resampled": False}
    given = PipelineConfig(preprocess=PreprocessConfig(in_plane_spacing_mm=0.7))
    assert training_in_plane_spacing(cases, given)["grid"] == 0.7
    assert training_in_plane_spacing(cases, given)["training_resampled"] is True
    # A store written before cadx kept spacings: nothing recorded (old behaviour).
    assert training_in_plane_spacing([*cases, _patched("d", None)], PipelineConfig()) is None


def test_an_old_bundle_keeps_the_old_behaviour(tmp_path):
    old = _bundle(grid_mm=None, training_range=None, size_px=16, stride_px=8)
    path = save_bundle(old, tmp_path / "old.cadx")
    loaded = load_bundle(path)
    assert loaded.config.preprocess.in_plane_spacing_mm is None
    assert loaded.training_in_plane_range_mm is None
    # A manifest without the key (written before it existed) loads the same.
    data = loaded.config.to_dict()
    del data["preprocess"]["in_plane_spacing_mm"]
    assert PipelineConfig.from_dict(data) == loaded.config
    image, label = toy_case(np.random.default_rng(1), with_tumour=True)
    case = Case("p", image.astype(np.float32), (2.5, 0.6, 0.6), label > 0)
    diagnosis = diagnose_case(loaded, case)
    assert diagnosis.warnings == [] and diagnosis.in_plane_spacing_mm is None


def test_evaluate_warns_once_for_the_cohort():
    bundle = _bundle(grid_mm=0.9)
    cases = [_patched("a", (5.0, 0.9, 0.9)), _patched("b", (5.0, 0.6, 0.6)),
             _patched("c", (5.0, 0.5, 0.5))]
    line = cohort_spacing_warning(bundle, cases)
    assert line.startswith("b: in-plane pixel spacing 0.6 x 0.6 mm")
    assert line.endswith("(and 1 more of 3 patients)")
    assert cohort_spacing_warning(bundle, cases[:1]) is None


def test_cli_resamples_by_default_and_keeps_with_the_flag(tmp_path, capsys):
    model = save_bundle(_bundle(grid_mm=1.0, training_range=(1.0, 1.0), size_px=16,
                                stride_px=8), tmp_path / "m.cadx")
    image, label = toy_case(np.random.default_rng(2), with_tumour=True, shape=(8, 64, 64))
    image_path = write_volume(tmp_path / "ct.nii.gz", image, (2.5, 0.75, 0.75))
    mask_path = write_volume(tmp_path / "mask.nii.gz", (label > 0).astype(np.uint8),
                             (2.5, 0.75, 0.75))
    for flag, grid in (([], [1.0, 1.0]), (["--keep-in-plane-spacing"], None)):
        out = tmp_path / f"r{len(flag)}.json"
        assert main(["diagnose", str(model), str(image_path), "--organ-mask", str(mask_path),
                     "--out", str(out), *flag]) == 0
        printed = " ".join(capsys.readouterr().out.split())
        assert "warning: " in printed and "outside the training range 1 mm" in printed
        assert ("kept" in printed) == bool(flag)
        result = json.loads(out.read_text())
        assert result["in_plane_spacing_mm"] == grid
        assert len(result["warnings"]) == 1


def test_cli_refuses_a_bad_pixel_size_in_one_line(tmp_path, capsys):
    dataset = write_toy_dataset(tmp_path / "d", n_patients=4)
    assert main(["train", str(dataset), "--out", str(tmp_path / "m.cadx"),
                 "--in-plane-spacing", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cadx: error: in-plane spacing must be") and len(err.splitlines()) == 1


def test_training_on_toy_data_records_the_pixel_size(tmp_path):
    dataset = write_toy_dataset(tmp_path / "d", n_patients=8)
    model = tmp_path / "m.cadx"
    assert main(["train", str(dataset), "--out", str(model), "--patch-size", "16", "--stride",
                 "8", "--epochs", "1", "--batch-size", "64", "--val-fraction", "0.25",
                 "--test-fraction", "0.25", "--quiet"]) == 0
    bundle = load_bundle(model)
    assert bundle.summary["in_plane_spacing_mm"] == {
        "grid": 1.0, "training_min": 1.0, "training_max": 1.0, "training_resampled": False}
    assert bundle.config.preprocess.in_plane_spacing_mm == 1.0
    assert bundle.training_in_plane_range_mm == (1.0, 1.0)
