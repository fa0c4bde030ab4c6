"""The README and docs/ say only what the command line does (issue 16).

Every `cadx VERB` named in a code block or an inline code span must be a command of
`cadx.cli.build_parser()`, and every `--option` on such a command line must be one of that
command's options. A fenced bash block preceded by a marker comment is run as written:

    <!-- runnable -->            must exit 0, runs in the default (fast) suite
    <!-- runnable: exit=N -->    must exit with status N
    <!-- runnable: slow -->      must exit 0, runs only with `-m slow`

Runnable blocks run in a fresh temporary folder in which `docs/` points at the repository's, so
a block may read the example files there and writes nowhere in the repository.
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


def _expected(block: Block) -> tuple[int, bool]:
    options = dict(item.partition("=")[::2] for item in block.marker.split() if item)
    return int(options.get("exit", 0)), "slow" in options


def test_some_blocks_are_marked_runnable():
    assert any(not _expected(block)[1] for block in RUNNABLE)


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=[pytest.mark.slow] if _expected(b)[1] else [], id=b.where)
     for b in RUNNABLE])
def test_runnable_blocks_run_as_written(block, tmp_path):
    assert block.language == "bash", f"{block.where}: only bash blocks can be runnable"
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    cadx = shutil.which("cadx", path=str(Path(sys.executable).parent)) or shutil.which("cadx")
    assert cadx, "the cadx script is not installed"
    env = {**os.environ, "PATH": f"{Path(cadx).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    status, _ = _expected(block)
    assert result.returncode == status, (
        f"{block.where}: exit {result.returncode}, expected {status}\n"
        f"$ {shlex.join(['bash', '-c', block.text])}\n{result.stdout[-2000:]}"
        f"{result.stderr[-2000:]}")


def test_the_readme_links_to_files_that_exist():
    # mkdocs build --strict checks the links inside docs/; the README is outside the site.
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets
    missing = [t for t in targets if not re.match(r"[a-z]+:|#", t)
               and not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
