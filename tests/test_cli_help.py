"""The command line tells the truth at once (issue 16, findings 4 and 8): every option states its
default, help agrees with the code, and `cadx --help` or a mistyped path never waits for torch."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from cadx.cli import _default_text, build_parser, main
from cadx.config import TrainConfig

# Options whose default is real but better said in words than as the value the code holds.
# Empty today: add "command --option": "why" here rather than weakening the test.
_DEFAULT_SAID_IN_WORDS: dict[str, str] = {}


def _parsers(parser: argparse.ArgumentParser, path: str = "cadx"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action)


def _option(parser: argparse.ArgumentParser, command: str, option: str
            ) -> tuple[argparse.ArgumentParser, argparse.Action]:
    sub = dict(_parsers(parser))[f"cadx {command}"]
    return sub, next(a for a in sub._actions if option in a.option_strings)


def test_every_option_with_a_default_states_it_in_its_help():
    missing = []
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            default = action.default
            if (not action.option_strings or default is None or default is False
                    or default == argparse.SUPPRESS or default == []):
                continue
            name = f"{path.removeprefix('cadx ')} {action.option_strings[-1]}"
            if name in _DEFAULT_SAID_IN_WORDS:
                continue
            text = _expanded_help(parser, action)
            if "default" not in text or _default_text(default) not in text:
                missing.append(f"{name} (default {_default_text(default)!r}): {text!r}")
    assert not missing, "options whose help does not state their default:\n" + "\n".join(missing)


def test_help_names_what_training_actually_watches():
    parser = build_parser()
    for option in ("--reduce-lr-patience", "--early-stop-patience"):
        sub, action = _option(parser, "train", option)
        assert "--monitor" in _expanded_help(sub, action)
    sub, action = _option(parser, "train", "--monitor")
    assert f"default {TrainConfig().monitor}" in _expanded_help(sub, action)
    # the triage networks stop on validation loss (cadx/triage/train.py passes monitor="loss")
    for command in ("train-router", "train-qc"):
        sub, action = _option(parser, command, "--early-stop-patience")
        text = _expanded_help(sub, action)
        assert "loss" in text and "AUC" not in text


def test_train_features_says_the_cnn_training_options_are_ignored():
    text = dict(_parsers(build_parser()))["cadx train-features"].format_help()
    assert "accepted and ignored" in text


def test_diagnose_help_names_dicom_folders_and_when_the_organ_mask_is_needed():
    sub = dict(_parsers(build_parser()))["cadx diagnose"]
    text = " ".join(sub.format_help().split())
    assert "DICOM folder" in text and "Required for a CT/MR patch model" in text


def test_top_level_help_is_for_users_not_a_docstring():
    text = " ".join(build_parser().format_help().split())
    assert "not a medical device" in text and "cadx demo" in text
    assert "parses arguments" not in text


def test_importing_the_cli_and_building_its_parser_imports_no_torch():
    code = ("import sys, cadx.cli; cadx.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'monai', 'pandas', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [
    ["report", "missing.csv", "--out", "{tmp}/r"],
    ["evaluate", "missing.cadx", "missing", "--out", "{tmp}/r"],
    ["diagnose", "missing.cadx", "missing.nii.gz"],
    ["train", "missing", "--out", "{tmp}/m.cadx"],
    ["train-images", "missing", "--out", "{tmp}/m.cadx"],
])
def test_a_missing_input_is_refused_before_torch_is_imported(tmp_path, argv):
    argv = [a.format(tmp=tmp_path) for a in argv]
    code = ("import sys; from cadx.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, 'torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         cwd=tmp_path, check=True)
    assert out.stdout.split() == ["2", "False", "False"]
    assert out.stderr.startswith("cadx: error: missing") and "not found" in out.stderr


def test_missing_input_in_process_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r")]) == 2
    expected = f"cadx: error: {tmp_path / 'nope.csv'}: file not found"
    assert capsys.readouterr().err.strip() == expected


def test_ct_and_2d_training_keep_their_own_epoch_defaults():
    # The two --epochs options read alike; a 2D default once landed on the CT one.
    from cadx.config import IMAGE_CLI_EPOCHS, IMAGE_CLI_SCHEDULE

    parser = build_parser()
    assert parser.parse_args(["train", "d", "--out", "m"]).epochs == TrainConfig().max_epochs
    for command in ("train-images", "train-features"):
        args = parser.parse_args([command, "d", "--out", "m"])
        assert (args.epochs, args.lr_schedule) == (IMAGE_CLI_EPOCHS, IMAGE_CLI_SCHEDULE)
