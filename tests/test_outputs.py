"""Unwritable outputs (issue 15, item 5): every command that writes refuses an unwritable
--out (a file where a folder should be, under /proc, read-only) in one line with exit 2, before
doing any work; an OSError raised later while writing is one line and exit 2 as well."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest

from cadx import cli
from cadx.cli import build_parser, main
from cadx.errors import OutputError
from cadx.io.outputs import check_writable
from tests.serve_support import write_ct_bundle, write_ct_upload

OUTPUT_OPTIONS = ("--out", "--report", "--cam", "--dicom-out", "--patch-store")


def _commands_with_outputs() -> set[tuple[str, ...]]:
    """Every leaf command of the parser with an output option (or pipeline init's FILE)."""
    found = set()

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in subparsers:
            for name, child in action.choices.items():
                walk(child, (*words, name))
        options = {o for a in parser._actions for o in a.option_strings}
        if not subparsers and (options & set(OUTPUT_OPTIONS) or words == ("pipeline", "init")):
            found.add(words)

    walk(build_parser(), ())
    return found


def _argv(bad: str) -> list[list[str]]:
    """Each writing command, with inputs that need not exist (outputs are checked first) and
    `bad` as one of its outputs."""
    return [
        ["demo", "--out", bad],
        ["synth", "ct", "--out", bad],
        ["synth", "us", "--out", bad],
        ["synth", "categories", "--out", bad],
        ["train", "data", "--out", bad],
        ["train", "data", "--out", "ok.cadx", "--patch-store", bad],
        ["train-seg", "data", "--out", bad],
        ["diagnose", "m.cadx", "ct.nii.gz", "--out", bad],
        ["diagnose", "m.cadx", "a.png", "--cam", bad],
        ["diagnose", "m.cadx", "dicom", "--dicom-out", bad],
        ["watch", "m.cadx", "--pacs", "http://127.0.0.1:1", "--out", bad],
        ["score-batch", "m.cadx", "data", "--out", bad],
        ["evaluate", "m.cadx", "data", "--out", bad],
        ["evaluate-images", "m.cadx", "data.csv", "--out", bad],
        ["report", "p.csv", "--out", bad],
        ["fuse", "m.cadx", "data.csv", "--clinical", "age", "--out", bad],
        ["calibrate", "m.cadx", "data", "--out", bad],
        ["compare", "p.csv", "--models", "a,b", "--out", bad],
        ["manifest", "ddti", "root", "--out", bad],
        ["train-images", "data", "--out", bad],
        ["train-images", "data", "--out", "ok.cadx", "--report", bad],
        ["train-features", "data", "--out", bad],
        ["train-features", "data", "--out", "ok.cadx", "--report", bad],
        ["triage-train", "data", "--out", bad],
        ["train-router", "data", "--out", bad],
        ["train-qc", "data", "--flags", "target", "--out", bad],
        ["pipeline", "init", bad],
        ["run", "pipeline.yaml", "images", "--out", bad],
        ["clean", "images", "--qc", "qc.cadx", "--out", bad, "--report", "ok.csv"],
        ["clean", "images", "--qc", "qc.cadx", "--out", "ok", "--report", bad],
    ]


def test_the_list_below_covers_every_writing_command(tmp_path):
    tested = {tuple(w for w in argv if not w.startswith("-"))[:2] for argv in _argv("x")}
    for words in _commands_with_outputs():
        assert any(t[: len(words)] == words for t in tested), f"cadx {' '.join(words)} untested"


@pytest.mark.parametrize("where", ["parent_is_a_file", "under_proc"])
def test_every_command_refuses_an_unwritable_output_in_one_line(tmp_path, monkeypatch, capsys,
                                                                where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    bad = "a_file/out" if where == "parent_is_a_file" else "/proc/cadx-test/out"
    for argv in _argv(bad):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("cadx: error: "), (argv, err)
        assert bad in err and "cannot write" in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing was created


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            check_writable(folder / "sub" / "result.json")
    finally:
        folder.chmod(0o700)


def test_writable_paths_pass_and_leave_nothing_behind(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "result.json")
    check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []


def _predictions(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["patient_id,y_true,score,model"]
    for i in range(20):
        rows += [f"p{i},{i % 2},{rng.random() * 0.5 + 0.3 * (i % 2):.3f},{m}" for m in "ab"]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_an_oserror_while_writing_later_is_one_line_too(tmp_path, monkeypatch, capsys):
    """Without the check at the door, the write itself fails: still one line, exit 2."""
    monkeypatch.setattr(cli, "_check_outputs", lambda args: None)
    (tmp_path / "a_file").write_text("not a folder")
    model = write_ct_bundle(tmp_path / "m.cadx")
    image, mask = write_ct_upload(tmp_path / "upload")
    predictions = _predictions(tmp_path / "p.csv")
    for bad in (str(tmp_path / "a_file" / "out"), "/proc/cadx-test/out"):
        for argv in (["diagnose", str(model), str(image), "--organ-mask", str(mask),
                      "--out", f"{bad}.json"],
                     ["report", str(predictions), "--out", bad, "--n-boot", "10"],
                     ["compare", str(predictions), "--models", "a,b", "--out", bad],
                     ["synth", "ct", "--out", bad, "--patients", "2", "--shape", "4,24,24"]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("cadx: error: "), (argv, err)
            assert "Traceback" not in err
