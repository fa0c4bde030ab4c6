"""benchmarks/ct_reference_run.py: the demo's schedule by default, `cadx train`'s levers pass
through, and the test cohort stays separate (the run itself is a benchmark, not a test)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from cadx.cli import _pipeline_config
from cadx.workflows import DEMO_CONFIG

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ct_reference_run.py"


@pytest.fixture(scope="module")
def reference_run():
    # The script imports its cohort helper from the learning-curve benchmark beside it.
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("ct_reference_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defaults_are_the_demo_schedule_with_no_test_split(reference_run):
    config = _pipeline_config(reference_run._parser(tiny=False).parse_args(["--out", "x"]))
    train = config.train
    assert (train.batch_size, train.max_epochs, train.learning_rate, train.monitor,
            train.precision) == (
        DEMO_CONFIG.train.batch_size, DEMO_CONFIG.train.max_epochs,
        DEMO_CONFIG.train.learning_rate, DEMO_CONFIG.train.monitor, DEMO_CONFIG.train.precision)
    assert (config.patches.size_px, config.patches.stride_px) == (50, 25)
    assert train.test_fraction == 0.0
    # the levers: the demo's (chosen on validation phantoms)
    assert not train.balanced_sampling
    assert config.patches.context_slices == DEMO_CONFIG.patches.context_slices == 1
    assert config.decide == DEMO_CONFIG.decide and config.decide.test_time_flips
    # run 9's kept network and slice thickness (runs 1-8: Table 1 at 5 mm, by flags)
    assert config.model.arch == "unet" and config.model.dense
    assert config.preprocess.slice_thickness_mm == 2.5
    seed_like = _pipeline_config(reference_run._parser(tiny=False).parse_args(
        ["--out", "x", "--patch-network", "table1", "--slice-thickness", "5"]))
    assert seed_like.model.arch == "table1" and seed_like.preprocess.slice_thickness_mm == 5.0


def test_levers_pass_through(reference_run):
    args = reference_run._parser(tiny=False).parse_args(
        ["--out", "x", "--balanced-sampling", "--augment-patches", "dihedral",
         "--context-slices", "1", "--patient-score", "topk", "--top-k", "3", "--tta",
         "--epochs", "30"])
    config = _pipeline_config(args)
    assert config.train.balanced_sampling and config.train.augment_rotations
    assert config.patches.context_slices == 1 and config.train.max_epochs == 30
    assert config.decide.score_name == "topk:3" and config.decide.test_time_flips


def test_the_test_cohort_stays_separate(reference_run):
    assert reference_run.TEST_SEED != reference_run.TRAIN_SEED
    with pytest.raises(SystemExit, match="--test-fraction must be 0"):
        reference_run.main(["--out", "x", "--test-fraction", "0.2"])
    with pytest.raises(SystemExit, match="must differ"):
        reference_run.main(["--out", "x", "--train-seed", "5", "--test-seed", "5"])


@pytest.mark.slow
def test_tiny_run_records_its_training_scans(reference_run, tmp_path, capsys):
    # Training and test cohorts share ids (pancreas_001...) but not scans: the bundle's content
    # fingerprints tell them apart, so the evaluation raises no false overlap warning.
    from cadx.bundle import load_bundle

    assert reference_run.main(["--out", str(tmp_path / "ref"), "--tiny", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "used to train or tune" not in out
    bundle = load_bundle(tmp_path / "ref" / "reference.cadx")
    split = bundle.summary["split"]
    assert set(bundle.summary["image_sha256"]) == set(split["train"]) | set(split["validation"])
    assert "test patient AUC" in out


def test_training_tumour_sizes_are_an_option_for_training_phantoms_only(reference_run, tmp_path):
    import csv

    parser = reference_run._parser(tiny=False)
    assert parser.parse_args(["--out", "x"]).train_tumour_mm == (5.0, 25.0)  # run 16's
    assert parser.parse_args(["--out", "x", "--train-tumour-mm", "5,25"]).train_tumour_mm == (
        5.0, 25.0)
    for bad in ("25,5", "0,10", "5", "a,b"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--out", "x", "--train-tumour-mm", bad])
    folder = reference_run.cached_cohort(tmp_path, "small", 4, 7, True, (5.0, 8.0))
    with open(folder / "cases.csv") as f:
        diameters = [float(r["tumour_diameter_mm"]) for r in csv.DictReader(f)
                     if r["has_tumour"] == "1"]
    assert len(diameters) == 2 and all(5.0 <= d <= 8.0 for d in diameters)
