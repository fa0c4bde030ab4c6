"""`cadx calibrate`: a CT/MR bundle's patient threshold re-chosen on a labelled cohort it has
never seen — max Youden or the most sensitive point at a required specificity — with the
network and patch threshold kept, the record in the bundle and in `cadx evaluate`'s report,
and the refusals (scans it was trained on, a 2D bundle, a specificity out of range). A toy
cohort and a random-weight patch CNN keep it fast."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cadx.bundle import load_bundle, save_bundle
from cadx.cli import main
from cadx.decide.roc import specificity_operating_point, youden_operating_point
from cadx.errors import SplitError
from cadx.io.dataset import load_dataset
from cadx.workflows import record_training_data
from tests.conftest import write_toy_dataset
from tests.serve_support import write_ct_bundle, write_image_bundle

NEGATIVES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
POSITIVES = [0.55, 0.85, 0.92, 0.97, 0.99]


def _truth_scores() -> tuple[np.ndarray, np.ndarray]:
    return (np.array([0] * len(NEGATIVES) + [1] * len(POSITIVES)),
            np.array(NEGATIVES + POSITIVES))


@pytest.mark.parametrize(("min_sp", "threshold", "sn", "sp"), [
    (0.9, 0.91, 0.6, 0.9),    # one false positive (0.95) allowed: 0.92, 0.97, 0.99 found
    (1.0, 0.96, 0.4, 1.0),    # none allowed: above 0.95 only
    (0.85, 0.91, 0.6, 0.9),   # 0.85 allows one negative only (1.5 of 10 rounds down)
    (0.7, 0.825, 0.8, 0.8),   # three allowed, two used: 0.55 would cost five
])
def test_the_most_sensitive_threshold_at_a_required_specificity(min_sp, threshold, sn,
                                                                sp) -> None:
    truth, scores = _truth_scores()
    point = specificity_operating_point(truth, scores, min_sp)
    assert point.threshold == pytest.approx(threshold)
    assert (point.sensitivity, point.specificity) == pytest.approx((sn, sp))
    predicted = scores > point.threshold  # the seed's rule reproduces the chosen point
    assert predicted[truth == 1].mean() == pytest.approx(sn)
    assert (~predicted[truth == 0]).mean() == pytest.approx(sp)


def test_equal_sensitivity_goes_to_the_more_specific_threshold() -> None:
    # Between 0.6 and 0.9 no positive is gained: of the points with SN 0.5 and SP >= 0.5 the
    # most specific (threshold between 0.9 and 0.95) is chosen, not the one at SP 0.5.
    truth = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.5, 0.6, 0.7, 0.9, 0.95, 0.2])
    point = specificity_operating_point(truth, scores, 0.5)
    assert (point.sensitivity, point.specificity) == (0.5, 1.0)
    assert 0.9 <= point.threshold < 0.95


def test_a_specificity_operating_point_refuses_one_class_and_a_target_out_of_range() -> None:
    with pytest.raises(SplitError, match="calibration: need both positive and negative"):
        specificity_operating_point(np.ones(4), np.arange(4.0), 0.9, "calibration")
    truth, scores = _truth_scores()
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="min_specificity"):
            specificity_operating_point(truth, scores, bad)


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    """24 toy patients (half with a tumour) and a random-weight patch bundle that has seen
    none of them."""
    root = tmp_path_factory.mktemp("calibrate")
    return root, write_toy_dataset(root / "data", n_patients=24), write_ct_bundle(
        root / "model.cadx", patient_threshold=0.2)


def _patient_scores(report: Path) -> tuple[np.ndarray, np.ndarray]:
    with (report / "patients.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return (np.array([r["has_tumour"] in ("True", "1", "true") for r in rows]),
            np.array([float(r["patient_score"]) for r in rows]))


@pytest.mark.parametrize("target", [None, 0.9])
def test_calibrate_rechooses_the_patient_threshold_on_the_given_patients(toy_model, target,
                                                                        capsys) -> None:
    root, dataset, model = toy_model
    out = root / f"calibrated_{target}.cadx"
    extra = [] if target is None else ["--target-specificity", str(target)]
    assert main(["calibrate", str(model), str(dataset), "--out", str(out), "--quiet",
                 *extra]) == 0
    assert "calibrated on 24 patients" in capsys.readouterr().out
    before, after = load_bundle(model), load_bundle(out)
    # The network and the patch threshold are the model's; only the patient threshold moved.
    assert after.patch_threshold == before.patch_threshold
    assert all(torch.equal(before.state_dict[k], after.state_dict[k])
               for k in before.state_dict)
    # Scored independently by cadx evaluate, the same patients give the same operating point.
    report = root / f"report_{target}"
    assert main(["evaluate", str(out), str(dataset), "--out", str(report), "--quiet",
                 "--n-boot", "20"]) == 0
    truth, scores = _patient_scores(report)
    expected = (youden_operating_point(truth, scores) if target is None
                else specificity_operating_point(truth, scores, target))
    assert after.patient_threshold == pytest.approx(expected.threshold)
    predicted = scores > after.patient_threshold
    if target is not None:
        assert (~predicted[~truth]).mean() >= target
    record = after.summary["calibration"]
    assert record["patients"] == 24 and record["with_tumour"] == 12
    assert record["previous_threshold"] == pytest.approx(0.2)
    assert record["target_specificity"] == target
    assert record["specificity"] == pytest.approx((~predicted[~truth]).mean())
    # Every stored patient score was re-chosen, the bundle's own one included.
    assert after.patient_operating_points[before.config.decide.score_name].threshold == \
        pytest.approx(after.patient_threshold)
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["meta"]["calibration"]["rule"] == record["rule"]


def test_calibrate_refuses_scans_the_model_was_trained_on(toy_model, tmp_path, capsys) -> None:
    root, dataset, model = toy_model
    bundle = load_bundle(model)
    bundle.summary = {"split": {"train": ["toy_000", "toy_001"], "validation": ["toy_002"]}}
    record_training_data(bundle, dataset, load_dataset(dataset))
    trained = save_bundle(bundle, tmp_path / "trained.cadx")
    out = tmp_path / "calibrated.cadx"
    assert main(["calibrate", str(trained), str(dataset), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "3 of its scans were used to train or tune" in err and "Traceback" not in err
    assert not out.exists()


def test_calibrate_refuses_a_2d_bundle_and_a_specificity_out_of_range(toy_model, tmp_path,
                                                                     capsys) -> None:
    root, dataset, model = toy_model
    image_model = write_image_bundle(tmp_path / "image.cadx")
    assert main(["calibrate", str(image_model), str(dataset), "--out",
                 str(tmp_path / "x.cadx")]) == 2
    assert "not a CT/MR patch bundle" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", str(model), str(dataset), "--out", str(tmp_path / "y.cadx"),
              "--target-specificity", "0"])
    assert exit_info.value.code == 2
    assert "expected a number in (0, 1]" in capsys.readouterr().err


def test_calibrate_refuses_a_cohort_of_one_class(toy_model, tmp_path, capsys) -> None:
    root, dataset, model = toy_model
    manifest = tmp_path / "tumours_only.csv"
    rows = ["image,label,patient_id"] + [
        f"{dataset}/imagesTr/toy_{k:03d}.nii.gz,{dataset}/labelsTr/toy_{k:03d}.nii.gz,toy_{k:03d}"
        for k in range(0, 8, 2)]  # write_toy_dataset puts a tumour in every other patient
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "calibrated.cadx"
    assert main(["calibrate", str(model), str(manifest), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "need both positive and negative cases" in err and err.count("\n") == 1
    assert not out.exists()
