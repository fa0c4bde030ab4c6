"""The README and docs/ say only what the command line does (issue 16).

Every `cadx VERB` named in a code block or an inline code span must be a command of
`cadx.cli.build_parser()`, and every `--option` on such a command line must be one of that
command's options. A fenced bash block preceded by a marker comment is run as written:

    <!-- runnable -->            must exit 0, runs in the default (fast) suite
    <!-- runnable: exit=N -->    must exit with status N
    <!-- runnable: slow -->      must exit 0, runs only with `-m slow`

Options combine (`<!-- runnable: slow fixture=ct skip=train,curl -->`):

    fixture=NAME[,NAME]   before the block runs, write small synthetic files under the names the
                          block uses (`DATASET_DIR/`, `model.cadx`, `ct.nii.gz`, ...; see
                          FIXTURES), so the command text stays the doc's own
    skip=WORD[,WORD]      leave out the lines with one of these words (a training verb whose
                          output the fixture provides, `curl` to a server that is not running);
                          they stay checked against the parser only

Runnable blocks run in a fresh temporary folder in which `docs/` points at the repository's and
`../shared` at the shared data folder beside the repository, so a block may read the example
files there and writes nowhere in the repository. `python tests/test_docs.py` prints which
command lines of the docs run in a test and which are checked against the parser only.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
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


def _script(block: Block) -> str:
    """The block as it runs: as written, less the lines its skip= option leaves out."""
    skip = _marker(block).skip
    return "\n".join(f"# skipped: {line}" if _is_skipped(line, skip) else line
                     for line in _logical_lines(block.text))


# ---- fixtures: files under the names the docs use, small and synthetic (seconds) ----

_CT_SCHEMA = """columns:
  age:   {type: numeric, unit: years, range: [0, 120]}
  ca125: {type: numeric, unit: U/mL, range: [0, 100000]}
"""


def _ct_fixture(work: Path) -> None:
    """Labelled CT folders `DATASET_DIR/` (36 toy patients) and `TEST_DATASET_DIR/` (12 others),
    MSD layout with age and CA125 in cases.csv, one scan `ct.nii.gz` with `organ.nii.gz`,
    `schema.yaml` for the two clinical columns, and a CT bundle (random weights, 16-px
    patches; its summary splits DATASET_DIR's patients by thirds) as `model.cadx`, `ct.cadx`
    and `demo_out/model.cadx`: what `cadx train` / `cadx demo` would have written."""
    from cadx.bundle import load_bundle, save_bundle
    from tests.conftest import write_toy_dataset
    from tests.serve_support import write_ct_bundle, write_ct_upload

    for name, n_patients, seed in (("DATASET_DIR", 36, 0), ("TEST_DATASET_DIR", 12, 1)):
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


def _predictions_fixture(work: Path) -> None:
    """`predictions.csv`: the docs' example scores of two models (cnn, radiomics)."""
    shutil.copyfile(ROOT / "docs" / "predictions_example.csv", work / "predictions.csv")


FIXTURES = {"ct": _ct_fixture, "predictions": _predictions_fixture}


def test_some_blocks_are_marked_runnable():
    assert any(not _marker(block).slow for block in RUNNABLE)


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=[pytest.mark.slow] if _marker(b).slow else [], id=b.where)
     for b in RUNNABLE])
def test_runnable_blocks_run_as_written(block, tmp_path):
    assert block.language == "bash", f"{block.where}: only bash blocks can be runnable"
    marker = _marker(block)
    work = tmp_path / "work"
    work.mkdir()
    (work / "docs").symlink_to(ROOT / "docs")
    if (ROOT.parent / "shared").is_dir():
        (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    for name in marker.fixtures:
        FIXTURES[name](work)
    cadx = shutil.which("cadx", path=str(Path(sys.executable).parent)) or shutil.which("cadx")
    assert cadx, "the cadx script is not installed"
    env = {**os.environ, "PATH": f"{Path(cadx).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    script = _script(block)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == marker.exit_status, (
        f"{block.where}: exit {result.returncode}, expected {marker.exit_status}\n"
        f"$ {shlex.join(['bash', '-c', script])}\n{result.stdout[-2000:]}"
        f"{result.stderr[-2000:]}")


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
