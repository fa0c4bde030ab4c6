"""Write outputs so that a crash or Ctrl-C never leaves a partial file that looks complete."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    """The process umask (read once at import: setting it is process-wide, not thread-safe)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(final_path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final_path`; rename it into place only on success."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".part",
                                    dir=final_path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the output the usual permissions (0666 less umask).
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, final_path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
