"""`cadx triage-train` on the real public data in ../shared/data (slow, real data; skipped when
the folder is absent): held-out routing per category and good-frame QC drops, and the written
bundles giving the same answers through `cadx run`. Builds with the command's defaults (240
frames per category, about 4 minutes on 2 cores): with 160 a category's validation set is
small enough that its QC thresholds drop up to a fifth of the held-out MMOTU frames."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cadx.cli import main
from cadx.triage.real_train import TriageBuildResult, TriageBuildSpec, build_triage

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NEEDED = ("busbra", "ddti-thyroid-crops", "mmotu-otu2d", "totalseg-example-ct")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not all((SHARED / name).is_dir() for name in NEEDED),
                                 reason="../shared/data with BUS-BRA, DDTI, MMOTU and the "
                                        "TotalSegmentator example CT not present")]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> TriageBuildResult:
    out = tmp_path_factory.mktemp("triage-real")
    return build_triage(SHARED, out, TriageBuildSpec(), progress=False)


def test_routes_held_out_real_frames_of_every_category(built: TriageBuildResult) -> None:
    routing = built.report["routing"]
    for category in ("ct-abdomen", "us-thyroid", "us-breast", "us-adnexa", "other"):
        entry = routing["per_category"][category]
        assert entry["routed_correctly"]["rate"] >= 0.9, (category, entry)
    assert routing["real_frames_wrong_category"]["rate"] <= 0.05


def test_qc_keeps_good_real_frames_and_catches_defects(built: TriageBuildResult) -> None:
    qc = built.report["qc"]
    for group, entry in qc["good_frames_dropped"].items():
        assert entry["rate"] <= 0.1, (group, entry)
    for kind in ("blur", "noise", "dropout", "dark", "bright", "cropped", "doppler-overlay"):
        assert qc["caught"][kind]["rate"] >= 0.8, (kind, qc["caught"][kind])
    assert built.report["ood"]["reached_organ_analyser"]["rate"] <= 0.2


def test_the_written_pipeline_gives_the_same_answers_in_cadx_run(
        built: TriageBuildResult, tmp_path: Path) -> None:
    truth = built.out_dir / "test-truth.csv"
    with truth.open() as handle:
        rows = list(csv.DictReader(handle))
    files = [row["path"] for row in rows if row["doppler"] == "0"][::3]
    assert main(["run", str(built.pipeline_file), *files, "--out", str(tmp_path),
                 "--truth", str(truth), "--quiet"]) == 0
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["qc"]["good_images_removed"]["rate"] <= 0.1
    assert evaluation["routing"]["routed_correctly"]["rate"] >= 0.9
