"""Batch scoring on a Dask LocalCluster: one row per study, failures reported, resumable."""

import shutil
from pathlib import Path

import pytest
import torch

from cadx.bundle import PatchModelBundle, save_bundle
from cadx.cli import main
from cadx.config import ModelConfig, PatchConfig, PipelineConfig
from cadx.decide.roc import OperatingPoint
from cadx.errors import InputError
from cadx.io.dataset import load_dataset
from cadx.scale.batch_score import list_studies, read_results, score_batch
from cadx.workflows import diagnose_file
from tests.conftest import write_toy_dataset

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as local:
        yield local


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    dataset = write_toy_dataset(root / "data", n_patients=5)
    torch.manual_seed(0)
    config = PipelineConfig(patches=PatchConfig(size_px=16, stride_px=8),
                            model=ModelConfig(batch_norm=False))
    from cadx.models.patch_cnn import PatchCNN

    point = OperatingPoint(0.5, 1.0, 1.0, 1.0, 1.0, (0.0, 1.0), (0.0, 1.0))
    bundle = PatchModelBundle(config=config, state_dict=PatchCNN(16, False).state_dict(),
                              patch_operating_point=point, patient_operating_point=point)
    model = save_bundle(bundle, root / "model.cadx")
    return root, dataset, model


def _manifest(root: Path, dataset: Path, broken: Path) -> Path:
    lines = ["study_id,image,organ_mask"]
    lines += [f"{r.patient_id},{r.image_path},{r.label_path}" for r in load_dataset(dataset)]
    lines.append(f"broken,{broken},{broken}")
    path = root / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_failed_study_is_reported_and_rerun_scores_only_what_is_missing(setup, cluster,
                                                                       tmp_path):
    root, dataset, model = setup
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    manifest = _manifest(tmp_path, dataset, broken)
    out = tmp_path / "results.parquet"

    rows = score_batch(model, manifest, out, scheduler=cluster.scheduler_address,
                       progress=False)
    by_id = {r["study_id"]: r for r in read_results(out)}
    assert len(rows) == len(by_id) == 6
    assert by_id["broken"]["status"] == "error" and "broken.nii.gz" in by_id["broken"]["error"]
    ok = [r for r in by_id.values() if r["status"] == "ok"]
    assert len(ok) == 5 and all(r["n_patches"] > 0 and r["decision"] for r in ok)
    first = load_dataset(dataset)[0]
    direct = diagnose_file(model, first.image_path, first.label_path, None)
    assert by_id[first.patient_id]["patient_score"] == pytest.approx(direct.patient_score)
    assert not list(tmp_path.glob(".results.parquet.*"))  # no partial file left

    shutil.copy(first.image_path, broken)  # fix the broken study, then resume
    score_batch(model, manifest, out, scheduler=cluster.scheduler_address, progress=False)
    again = {r["study_id"]: r for r in read_results(out)}
    assert again["broken"]["status"] == "ok"
    for study_id, row in by_id.items():
        if study_id != "broken":  # already scored: kept as they were, not recomputed
            assert again[study_id] == row


def test_folder_of_volumes_with_masks_subfolder(tmp_path, setup):
    _, dataset, _ = setup
    refs = load_dataset(dataset)[:2]
    (tmp_path / "masks").mkdir()
    for ref in refs:
        shutil.copy(ref.image_path, tmp_path / ref.image_path.name)
    shutil.copy(refs[0].label_path, tmp_path / "masks" / refs[0].image_path.name)
    studies = {s.study_id: s for s in list_studies(tmp_path)}
    assert set(studies) == {r.patient_id for r in refs}
    assert studies[refs[0].patient_id].organ_mask_path is not None
    assert studies[refs[1].patient_id].organ_mask_path is None


def test_empty_input_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no studies"):
        list_studies(tmp_path)


def test_cli_score_batch_on_a_local_cluster(setup, tmp_path, capsys):
    _, dataset, model = setup
    out = tmp_path / "scores.parquet"
    assert main(["score-batch", str(model), str(dataset), "--dask-scheduler", "local",
                 "--workers", "1", "--out", str(out), "--quiet"]) == 0
    rows = read_results(out)
    assert len(rows) == 5 and {r["status"] for r in rows} == {"ok"}
    assert main(["score-batch", str(model), str(dataset), "--dask-scheduler", "local",
                 "--out", str(out), "--quiet"]) == 0
    assert "5 already scored, 0 to score" in " ".join(capsys.readouterr().out.split())


def test_a_task_that_never_returns_becomes_an_error_row(setup, cluster, tmp_path, monkeypatch):
    _, dataset, model = setup
    import cadx.scale.batch_score as batch_score

    def lost(model_path, study):  # what a dead worker looks like from the client
        if study.study_id.endswith("1"):
            raise MemoryError("worker killed")
        return real(model_path, study)

    real = batch_score.score_study
    monkeypatch.setattr(batch_score, "score_study", lost)
    out = tmp_path / "r.parquet"
    score_batch(model, dataset, out, scheduler=cluster.scheduler_address, progress=False)
    by_id = {r["study_id"]: r for r in read_results(out)}
    assert by_id["toy_001"]["status"] == "error" and "worker killed" in by_id["toy_001"]["error"]
    assert sum(r["status"] == "ok" for r in by_id.values()) == 4


def test_the_emulated_bf16_note_is_said_once_for_the_whole_batch(setup, cluster, tmp_path,
                                                                  monkeypatch):
    """Every study's diagnosis keeps it; the terminal shows it once, not once per study."""
    import io
    import json

    from rich.console import Console

    from cadx.config import TrainConfig
    from cadx.models.patch_cnn import PatchCNN
    from cadx.train import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)  # the workers are threads
    _, dataset, _ = setup
    point = OperatingPoint(0.5, 1.0, 1.0, 1.0, 1.0, (0.0, 1.0), (0.0, 1.0))
    config = PipelineConfig(patches=PatchConfig(size_px=16, stride_px=8),
                            model=ModelConfig(batch_norm=False),
                            train=TrainConfig(precision="bf16"))
    model = save_bundle(PatchModelBundle(config=config,
                                         state_dict=PatchCNN(16, False).state_dict(),
                                         patch_operating_point=point,
                                         patient_operating_point=point),
                        tmp_path / "bf16.cadx")
    studies = tmp_path / "studies"
    studies.mkdir()
    for ref in load_dataset(dataset)[:2]:
        shutil.copy(ref.image_path, studies / ref.image_path.name)
    (studies / "masks").mkdir()
    for ref in load_dataset(dataset)[:2]:
        shutil.copy(ref.label_path, studies / "masks" / ref.image_path.name)
    terminal = io.StringIO()
    rows = score_batch(model, studies, tmp_path / "r.parquet",
                       scheduler=cluster.scheduler_address, progress=False,
                       console=Console(file=terminal, width=200))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    note = "trained in bf16, and this CPU has no bf16 instructions"
    assert all(sum(note in line for line in json.loads(r["diagnosis_json"])["warnings"]) == 1
               for r in rows)
    assert terminal.getvalue().count(note) == 1
