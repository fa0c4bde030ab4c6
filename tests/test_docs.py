"""The README and docs/ say only what the command line does (issue 16).

Every `cadx VERB` named in a code block or an inline code span must be a command of
`cadx.cli.build_parser()`, and every `--option` on such a command line must be one of that
command's options. A fenced bash block preceded by a marker comment is run as written:

    <!-- runnable -->            must exit 0, runs in the default (fast) suite
    <!-- runnable: exit=N -->    must exit with status N
    <!-- runnable: slow -->      must exit 0, runs only with `-m slow`

Options combine (`<!-- runnable: slow fixture=ct,service skip=train -->`):

    fixture=NAME[,NAME]   before the block runs, write small synthetic files under the names the
                          block uses (`DATASET_DIR/`, `model.cadx`, `ct.nii.gz`, `img.png`, ...;
                          see FIXTURES), so the command text stays the doc's own
    skip=WORD[,WORD]      leave out the lines with one of these words (a training verb whose
                          output the fixture provides, a real data set's `manifest`); they stay
                          checked against the parser only

With `fixture=service` the block's `cadx serve` line runs in the background on a free loopback
port (a block without one gets `cadx serve --models .` before its first `curl` line), and `curl`
reaches it at the doc's address (`127.0.0.1:8000`, `HOST:8000`) through a `.curlrc`; the
service is stopped when the block ends. With `fixture=pacs` the block's `Orthanc orthanc.json &`
is waited for until it answers at the docs' address (`127.0.0.1:8042`; skipped where Orthanc is
not installed or that port is taken), and is stopped when the block ends.

Runnable blocks run in a fresh temporary folder in which `docs/` points at the repository's and
`../shared` at the shared data folder beside the repository, so a block may read the example
files there and writes nowhere in the repository; a block that reads `../shared/data/NAME` is
skipped where that folder is absent. `python tests/test_docs.py` prints which command lines of
the docs run in a test and which are checked against the parser only.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cadx.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"<!--\s*runnable(?::\s*([^>]*?))?\s*-->")
_INLINE = re.compile(r"`(cadx [^`]+)`")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    marker: str | None  # None: not runnable; "" plain runnable; else the marker's options

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = _MARKER.search(previous)
        blocks.append(Block(path, start + 1, opening.group(1), "\n".join(body),
                            None if marker is None else (marker.group(1) or "")))
        i += 1
    return blocks


def _prose(path: Path) -> str:
    """The file without its fenced blocks."""
    out, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return "\n".join(out)


def _shell_commands(text: str) -> list[str]:
    """Logical lines of a bash block (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            commands.extend(part.strip() for part in re.split(r"&&|\|\||;", line))
    return commands


def _cadx_invocations() -> list[tuple[str, str]]:
    """(where, command text) for every `cadx ...` in a bash block or an inline code span."""
    found = []
    for path in DOC_FILES:
        for block in _blocks(path):
            if block.language not in ("bash", "sh", "shell", "console"):
                continue
            for command in _shell_commands(block.text):
                if command.startswith("cadx "):
                    found.append((block.where, command))
        for span in _INLINE.findall(_prose(path)):
            found.append((f"{path.relative_to(ROOT)} (inline)", span))
    return found


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _resolve(words: list[str], where: str) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser a command line reaches and the verbs that lead there; an unknown verb fails."""
    parser, path = build_parser(), ["cadx"]
    for word in words:
        sub = _subcommands(parser)
        if not sub or word.startswith("-"):
            break
        if word not in sub:
            pytest.fail(f"{where}: `{' '.join(path)} {word}`: the command line has no such "
                        f"command (it has {', '.join(sorted(sub))})")
        parser, path = sub[word], [*path, word]
    return parser, path


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


INVOCATIONS = _cadx_invocations()


def test_the_docs_name_cadx_commands():
    assert len(INVOCATIONS) > 50  # the scan itself works


@pytest.mark.parametrize(("where", "command"), INVOCATIONS,
                         ids=[f"{w}:{c[:40]}" for w, c in INVOCATIONS])
def test_every_command_and_option_named_in_the_docs_exists(where, command):
    words = [w for w in re.split(r"[\s\[\]|]+", command) if w][1:]
    if not words or words[0] in ("COMMAND", "VERB", "X"):
        return  # `cadx COMMAND --help` and the like name no command
    parser, path = _resolve(words, where)
    known = _option_strings(parser)
    for word in words:
        if word.startswith("--"):
            option = word.split("=", 1)[0].rstrip(".,;:)'\"")
            assert option in known, (
                f"{where}: `{command}`: `{' '.join(path)}` has no option {option}")


RUNNABLE = [block for path in DOC_FILES for block in _blocks(path) if block.marker is not None]


@dataclass(frozen=True)
class Marker:
    exit_status: int = 0
    slow: bool = False
    fixtures: tuple[str, ...] = ()
    skip: frozenset[str] = frozenset()


def _marker(block: Block) -> Marker:
    options = dict(item.partition("=")[::2] for item in block.marker.split() if item)
    unknown = set(options) - {"exit", "slow", "fixture", "skip"}
    assert not unknown, f"{block.where}: unknown runnable option(s) {sorted(unknown)}"
    fixtures = tuple(name for name in options.get("fixture", "").split(",") if name)
    missing = [name for name in fixtures if name not in FIXTURES]
    assert not missing, f"{block.where}: no fixture {missing} (there are {sorted(FIXTURES)})"
    return Marker(int(options.get("exit") or 0), "slow" in options, fixtures,
                  frozenset(word for word in options.get("skip", "").split(",") if word))


def _logical_lines(text: str) -> list[str]:
    """The block's lines with backslash continuations joined."""
    return re.sub(r"\\\n", " ", text).splitlines()


def _is_skipped(line: str, skip: frozenset[str]) -> bool:
    return bool(skip & set(line.split(" #", 1)[0].split()))


_SKIPPED = "# skipped: "
_SERVE_LINE = re.compile(r"^cadx serve\b")
# Runs a `cadx serve` line in the background on the test's port ($CADX_DOCS_PORT, later options
# win) and returns when /healthz answers; the test stops the service when the block ends.
_SERVE_IN_BACKGROUND = """serve_in_background() {
  "$@" --host 127.0.0.1 --port "$CADX_DOCS_PORT" > serve.log 2>&1 &
  for _ in $(seq 1200); do
    curl -o /dev/null "http://127.0.0.1:$CADX_DOCS_PORT/healthz" 2>/dev/null && return
    kill -0 $! 2>/dev/null || break
    sleep 0.1
  done
  cat serve.log >&2
  return 1
}"""


_ORTHANC_LINE = re.compile(r"^Orthanc\b.*&\s*$")
# Waits until the Orthanc that the line before started in the background answers at the docs'
# address; it is stopped when the block's shell exits (it holds the block's output open).
_WAIT_FOR_PACS = """trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
wait_for_pacs() {
  local orthanc=$!
  for _ in $(seq 300); do
    curl -sf -o /dev/null http://127.0.0.1:8042/dicom-web/studies && return
    kill -0 "$orthanc" 2>/dev/null || break
    sleep 0.1
  done
  echo "Orthanc did not answer at http://127.0.0.1:8042/dicom-web" >&2
  return 1
}"""


def _script(block: Block) -> str:
    """The block as it runs: as written, less the lines its skip= option leaves out; with
    fixture=service, its `cadx serve` line (or one before its first `curl`) in the background;
    with fixture=pacs, a wait for its `Orthanc ... &` to answer before the next line."""
    marker = _marker(block)
    lines = [f"{_SKIPPED}{line}" if _is_skipped(line, marker.skip) else line
             for line in _logical_lines(block.text)]
    helpers = []
    if "service" in marker.fixtures:
        helpers.append(_SERVE_IN_BACKGROUND)
        serve = next((k for k, line in enumerate(lines) if _SERVE_LINE.match(line)), None)
        if serve is not None:
            lines[serve] = f"serve_in_background {lines[serve]}"
        else:
            first_curl = next((k for k, line in enumerate(lines) if line.startswith("curl ")),
                              None)
            assert first_curl is not None, (
                f"{block.where}: fixture=service but no serve or curl line")
            lines.insert(first_curl, "serve_in_background cadx serve --models .")
    if "pacs" in marker.fixtures:
        helpers.append(_WAIT_FOR_PACS)
        orthanc = next((k for k, line in enumerate(lines) if _ORTHANC_LINE.match(line)), None)
        assert orthanc is not None, f"{block.where}: fixture=pacs but no `Orthanc ... &` line"
        lines.insert(orthanc + 1, "wait_for_pacs")
    return "\n".join([*helpers, *lines])


def _shared_data_read(script: str) -> list[str]:
    """The folders of ../shared/data that the lines of `script` (not those left out) read."""
    return sorted({name for line in script.splitlines() if not line.startswith(_SKIPPED)
                   for name in re.findall(r"\.\./shared/data/([\w.-]+)", line)})


# ---- fixtures: files under the names the docs use, small and synthetic (seconds) ----

_CT_SCHEMA = """columns:
  age:   {type: numeric, unit: years, range: [0, 120]}
  ca125: {type: numeric, unit: U/mL, range: [0, 100000]}
"""


def _ct_fixture(work: Path) -> None:
    """Labelled CT folders `DATASET_DIR/` (36 toy patients), `TEST_DATASET_DIR/` and
    `SITE_DATASET_DIR/` (12 others each),
    MSD layout with age and CA125 in cases.csv, one scan `ct.nii.gz` with `organ.nii.gz`,
    `schema.yaml` for the two clinical columns, and a CT bundle (random weights, 16-px
    patches; its summary splits DATASET_DIR's patients by thirds) as `model.cadx`, `ct.cadx`
    and `demo_out/model.cadx`: what `cadx train` / `cadx demo` would have written."""
    from cadx.bundle import load_bundle, save_bundle
    from tests.conftest import write_toy_dataset
    from tests.serve_support import write_ct_bundle, write_ct_upload

    for name, n_patients, seed in (("DATASET_DIR", 36, 0), ("TEST_DATASET_DIR", 12, 1),
                                   ("SITE_DATASET_DIR", 12, 2)):
        dataset = write_toy_dataset(work / name, n_patients=n_patients, seed=seed)
        rows = ["patient_id,age,ca125"]
        for k in range(n_patients):
            tumour = k % 2 == 0  # write_toy_dataset puts a tumour in every other patient
            rows.append(f"toy_{k:03d},{50 + 8 * tumour + (7 * k) % 17},"
                        f"{20 + 25 * tumour + (11 * k) % 40}")
        (dataset / "cases.csv").write_text("\n".join(rows) + "\n")
    (work / "schema.yaml").write_text(_CT_SCHEMA)
    image, mask = write_ct_upload(work / "upload")
    image.rename(work / "ct.nii.gz")
    mask.rename(work / "organ.nii.gz")
    model = write_ct_bundle(work / "model.cadx")
    bundle = load_bundle(model)
    bundle.summary = {"split": {part: [f"toy_{k:03d}" for k in range(36) if k % 3 == index]
                                for index, part in enumerate(("train", "validation", "test"))}}
    save_bundle(bundle, model)
    (work / "demo_out").mkdir()
    for copy in (work / "ct.cadx", work / "demo_out" / "model.cadx"):
        shutil.copyfile(model, copy)


def _seg_fixture(work: Path) -> None:
    """`seg.cadx`, a tiny organ segmenter that marks every voxel as organ (zero weights; what
    `cadx train-seg` would have written, which takes minutes on the toy cohort), and
    `model.cadx` with it embedded (what `cadx train --seg seg.cadx` would have written): the
    ct fixture's bundle, so list seg after ct."""
    from cadx.bundle import load_bundle, save_bundle
    from cadx.segment.bundle import save_segmenter
    from tests.test_segment import _constant_segmenter

    model = work / "model.cadx"
    assert model.is_file(), "fixture=seg embeds its segmenter in the ct fixture's model.cadx"
    segmenter = _constant_segmenter(organ_everywhere=True)
    save_segmenter(segmenter, work / "seg.cadx")
    bundle = load_bundle(model)
    bundle.segmenter = segmenter
    save_bundle(bundle, model)


def _predictions_fixture(work: Path) -> None:
    """`predictions.csv`: the docs' example scores of two models (cnn, radiomics)."""
    shutil.copyfile(ROOT / "docs" / "predictions_example.csv", work / "predictions.csv")


# The schema of docs/clinical.md.
_IMAGE_SCHEMA = """columns:
  age:            {type: numeric, unit: years, range: [0, 120]}
  ca125:          {type: numeric, unit: U/mL, units: {kU/L: 1}, range: [0, 100000]}
  lesion_size_mm: {type: numeric, unit: mm, units: {cm: 10}, range: [1, 300]}
  device:         {type: categorical}
  histology:      {type: categorical, leaks_label: true,
                   groups: {invasive: [serous carcinoma, endometrioid carcinoma]}}
"""
_BUSBRA_DEVICES = ("GE Logiq 5 @10-12MHz", "GE Logiq 7 @10-14MHz",
                   "Toshiba Aplio 300 @12-14 MHz", "U-Systems @10-14MHz")


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _images_fixture(work: Path) -> None:
    """A synthetic ultrasound cohort (`us_cohort/`: 40 patients, 1-2 images of 64 px each, 8
    patients in each of 5 folds) under the names the 2D docs use: `busbra.csv` (the columns of
    `cadx manifest busbra`), `train_manifest.csv` and `test.csv` (folds 2-5 and fold 1, with
    age, CA125, lesion size, device and histology) and `schema.yaml` for them, `OTHER.csv` and
    `OTHER_SITE.csv` (fold 1), `ddti.csv` and `mmotu.csv` (all); single images `img.png`,
    `img1.png`, `img2.png`, `view1.png`, `view2.png`; random-weight image bundles `breast.cadx`,
    `b160.cadx` and `model.cadx` (ResNet-18; fold 1 test, folds 2-3 validation, as `cadx
    train-images --test-fold 1` records its split), `fused.cadx` (`model.cadx` fused with age
    and CA125 by `cadx fuse`) and `us.cadx` (ResNet-18 + Darknet-19, no split recorded); and
    `predictions.csv`, docs/predictions_example.csv with a lesion size per patient."""
    from rich.console import Console

    from cadx.image_bundle import NetworkSpec, load_image_bundle, save_image_bundle
    from cadx.image_workflows import fuse_command
    from cadx.models.backbones import build_backbone
    from cadx.synth.us_lesions import UltrasoundCohortSpec, write_us_cohort
    from tests.serve_support import write_image_bundle

    spec = UltrasoundCohortSpec(n_patients=40, images_per_patient=(1, 2), image_size_px=64)
    cohort = write_us_cohort(work / "us_cohort", spec, progress=False)
    with (cohort / "manifest.csv").open(newline="") as handle:
        images = list(csv.DictReader(handle))
    patients = list(dict.fromkeys(row["patient_id"] for row in images))
    fold_of = {pid: k % 5 + 1 for k, pid in enumerate(patients)}
    part_of = {pid: {1: "test", 2: "validation", 3: "validation"}.get(fold, "train")
               for pid, fold in fold_of.items()}
    busbra, clinical = [], []
    for row in images:
        k, malignant = patients.index(row["patient_id"]), int(row["label"])
        image = {"path": f"us_cohort/{row['path']}", "patient_id": row["patient_id"],
                 "label": row["label"]}
        busbra.append({**image, "fold": fold_of[row["patient_id"]],
                       "mask": f"us_cohort/{row['mask']}", "device": _BUSBRA_DEVICES[k % 4],
                       "histology": ("invasive ductal carcinoma" if malignant
                                     else "fibroadenoma"),
                       "birads": 3 + malignant + k % 2, "side": ("left", "right")[k % 2]})
        clinical.append({**image, "age": 45 + 10 * malignant + (7 * k) % 15,
                         "ca125": 20 + 30 * malignant + (11 * k) % 40,
                         "lesion_size_mm": 8 + 6 * malignant + (5 * k) % 30,
                         "device": ("GE", "Toshiba")[k % 2],
                         "histology": "serous carcinoma" if malignant else "benign"})
    _write_csv(work / "busbra.csv", busbra)
    _write_csv(work / "train_manifest.csv",
               [r for r in clinical if part_of[r["patient_id"]] != "test"])
    _write_csv(work / "test.csv", [r for r in clinical if part_of[r["patient_id"]] == "test"])
    for name in ("OTHER.csv", "OTHER_SITE.csv"):
        _write_csv(work / name, [{key: r[key] for key in ("path", "patient_id", "label",
                                                          "device")}
                                 for r in busbra if part_of[r["patient_id"]] == "test"])
    for name in ("ddti.csv", "mmotu.csv"):
        _write_csv(work / name, [{key: r[key] for key in ("path", "patient_id", "label")}
                                 for r in busbra])
    (work / "schema.yaml").write_text(_IMAGE_SCHEMA)
    with (ROOT / "docs" / "predictions_example.csv").open(newline="") as handle:
        scores = list(csv.DictReader(handle))
    _write_csv(work / "predictions.csv",
               [{**row, "lesion_size_mm": 5 + 7 * int(row["patient_id"].split("_")[-1]) % 45}
                for row in scores])
    for name, row in zip(("img.png", "img1.png", "img2.png", "view1.png", "view2.png"),
                         images, strict=False):
        shutil.copyfile(cohort / row["path"], work / name)

    bundle = load_image_bundle(write_image_bundle(work / "model.cadx", organ=None))
    bundle.summary = {"split": {part: [pid for pid in patients if part_of[pid] == part]
                                for part in ("train", "validation", "test")}}
    save_image_bundle(bundle, work / "model.cadx")
    for name in ("breast.cadx", "b160.cadx"):
        shutil.copyfile(work / "model.cadx", work / name)
    bundle.summary = {}
    bundle.networks = [replace(bundle.networks[0], weight=0.5),
                       NetworkSpec("darknet19", 0.25, 0.8, 0.5)]
    bundle.state_dicts.append(build_backbone("darknet19", 1, 1, 0.25).state_dict())
    save_image_bundle(bundle, work / "us.cadx")
    fuse_command(work / "model.cadx", work / "train_manifest.csv", ["age", "ca125"],
                 work / "fused.cadx", schema_path=work / "schema.yaml",
                 console=Console(quiet=True), progress=False)


def _service_fixture(work: Path) -> dict[str, str]:
    """The models docs/service.md serves (`pancreas_ct.cadx`, `thyroid_us.cadx`,
    `breast_fused.cadx` fused with age and device: random weights), also in `models/`; a free
    loopback port for the block's service; and a `.curlrc` that sends curl's requests for the
    docs' address there and fails on an HTTP error."""
    from tests.serve_support import write_ct_bundle, write_fused_image_bundle, write_image_bundle

    models = work / "models"
    models.mkdir()
    write_ct_bundle(models / "pancreas_ct.cadx")
    write_image_bundle(models / "thyroid_us.cadx")
    write_fused_image_bundle(models / "breast_fused.cadx")
    for bundle in models.iterdir():
        shutil.copyfile(bundle, work / bundle.name)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (work / ".curlrc").write_text(
        "".join(f"connect-to = {host}:8000:127.0.0.1:{port}\n" for host in ("127.0.0.1", "HOST"))
        + "fail-with-body\nsilent\nshow-error\nmax-time = 120\n")
    return {"CURL_HOME": str(work), "CADX_DOCS_PORT": str(port)}


ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# The orthanc.json of docs/dicom-pacs.md (loopback port 8042, DICOMweb at /dicom-web/).
_ORTHANC_CONFIG = """{"Name": "cadx-local", "StorageDirectory": "orthanc-db",
 "IndexDirectory": "orthanc-db", "HttpPort": 8042, "DicomServerEnabled": false,
 "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
 "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
 "DicomWeb": {"Enable": true, "Root": "/dicom-web/"}}
"""
# The StudyInstanceUID that docs/dicom-pacs.md's `--study` names.
_DOCS_STUDY_UID = "1.2.826.0.1.3680043.8.498.62280294436776469296040342303271282369"


def _pacs_fixture(work: Path) -> None:
    """The Orthanc page's files: `orthanc.json` (the one in its comment), a toy DICOM study
    `studies/pancreas_001/` (CT series, scout, organ SEG) under the StudyInstanceUID the page
    names, and a CT bundle (random weights) as `demo_out/model.cadx`. The block's own `Orthanc
    orthanc.json &` starts the PACS; the test skips where port 8042 on loopback is taken."""
    import pydicom

    from tests.serve_support import write_ct_bundle
    from tests.test_dicom_cli import write_toy_study

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 8042))
        except OSError:
            pytest.skip("port 8042 on loopback, the docs' Orthanc port, is taken")
    (work / "orthanc.json").write_text(_ORTHANC_CONFIG)
    study, _, _ = write_toy_study(work / "studies" / "pancreas_001", "pancreas_001", seed=1)
    for path in study.files:
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID = _DOCS_STUDY_UID
        dataset.save_as(path, enforce_file_format=True)
    write_ct_bundle(work / "demo_out" / "model.cadx")


def _triage_fixture(work: Path) -> None:
    """The models docs/triage-qc.md trains (minutes of training), with seeded random weights:
    `router.cadx` over the five categories of `cadx synth categories` and `qc.cadx` with its five
    flags (ResNet-18 at width 0.25, 64 px, RGB: `train-router` / `train-qc`'s defaults; QC
    thresholds 0.5; confidence floor 0, since random scores are never confident and the run would
    otherwise reach no analyser), and the analysers `thyroid-cnn.cadx`, `thyroid-texture.cadx`,
    `breast-texture.cadx` and `ct-texture.cadx` (one random ResNet-18 each)."""
    import torch

    from cadx.decide.roc import OperatingPoint
    from cadx.models.backbones import build_backbone
    from cadx.synth.categories import CATEGORIES, QC_FLAGS
    from cadx.triage.bundle import TriageBundle, save_triage_bundle
    from tests.serve_support import write_image_bundle

    torch.manual_seed(0)
    point = OperatingPoint(0.5, 0.9, 0.8, 0.7, 0.95, (0.0, 1.0), (0.0, 1.0))
    for kind, labels, extra in (
            ("router", CATEGORIES, {"confidence_floor": 0.0}),
            ("qc", QC_FLAGS, {"flag_points": dict.fromkeys(QC_FLAGS, point)})):
        network = build_backbone("resnet18", 3, len(labels), 0.25)
        save_triage_bundle(TriageBundle(kind, labels, "resnet18", 0.25, 64, 3,
                                        network.state_dict(), **extra),
                           work / f"{kind}.cadx")
    for name in ("thyroid-cnn", "thyroid-texture", "breast-texture", "ct-texture"):
        write_image_bundle(work / f"{name}.cadx", organ=None)


# name -> writes the fixture's files into the block's folder; returns environment variables
# the block needs, if any.
FIXTURES: dict[str, Callable[[Path], dict[str, str] | None]] = {
    "ct": _ct_fixture, "seg": _seg_fixture, "predictions": _predictions_fixture,
    "images": _images_fixture, "service": _service_fixture, "pacs": _pacs_fixture,
    "triage": _triage_fixture}


def test_some_blocks_are_marked_runnable():
    assert any(not _marker(block).slow for block in RUNNABLE)


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=[pytest.mark.slow] if _marker(b).slow else [], id=b.where)
     for b in RUNNABLE])
def test_runnable_blocks_run_as_written(block, tmp_path):
    assert block.language == "bash", f"{block.where}: only bash blocks can be runnable"
    marker = _marker(block)
    script = _script(block)
    absent = [name for name in _shared_data_read(script)
              if not (ROOT.parent / "shared" / "data" / name).is_dir()]
    if absent:
        pytest.skip(f"{block.where} reads ../shared/data/{absent[0]}, which is not here")
    if {"service", "pacs"} & set(marker.fixtures) and not shutil.which("curl"):
        pytest.skip(f"{block.where} needs curl")
    if "pacs" in marker.fixtures and (ORTHANC is None or not DICOMWEB_PLUGIN.exists()):
        pytest.skip(f"{block.where} needs Orthanc with its DICOMweb plugin "
                    "(apt-get install orthanc orthanc-dicomweb)")
    work = tmp_path / "work"
    work.mkdir()
    (work / "docs").symlink_to(ROOT / "docs")
    if (ROOT.parent / "shared").is_dir():
        (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    cadx = shutil.which("cadx", path=str(Path(sys.executable).parent)) or shutil.which("cadx")
    assert cadx, "the cadx script is not installed"
    env = {**os.environ, "PATH": f"{Path(cadx).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("CADX_SERVE_TOKEN", None)  # the docs' loopback service runs without one
    for name in marker.fixtures:
        env.update(FIXTURES[name](work) or {})
    # Its own session, so that a service the block started goes with it, even on a timeout.
    with subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == marker.exit_status, (
        f"{block.where}: exit {process.returncode}, expected {marker.exit_status}\n"
        f"$ {shlex.join(['bash', '-c', script])}\n{stdout[-2000:]}{stderr[-2000:]}")


def inventory() -> dict[str, list[tuple[str, str]]]:
    """Every command line of the docs' shell blocks, by how a test covers it: 'default' (run in
    the default suite), 'slow' (run with -m slow), 'parser' (a cadx line checked against the
    parser only), 'not run' (another program: pip, python benchmarks/..., curl, mkdocs)."""
    found: dict[str, list[tuple[str, str]]] = {"default": [], "slow": [], "parser": [],
                                               "not run": []}
    for path in DOC_FILES:
        for block in _blocks(path):
            if block.language not in ("bash", "sh", "shell", "console"):
                continue
            marker = _marker(block) if block.marker is not None else None
            for line in _logical_lines(block.text):
                command = line.split(" #", 1)[0].strip()
                if not command or command.startswith("#"):
                    continue
                if marker is not None and not _is_skipped(line, marker.skip):
                    kind = "slow" if marker.slow else "default"
                else:
                    kind = "parser" if re.search(r"(^|&&\s*)cadx ", command) else "not run"
                found[kind].append((block.where, command))
    return found


def test_the_readme_links_to_files_that_exist():
    # mkdocs build --strict checks the links inside docs/; the README is outside the site.
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets
    missing = [t for t in targets if not re.match(r"[a-z]+:|#", t)
               and not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


if __name__ == "__main__":
    for kind, lines in inventory().items():
        print(f"{kind}: {len(lines)}")
        for where, command in lines:
            print(f"    {where}: {command[:110]}")
