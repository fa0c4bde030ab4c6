"""Check at the door that an output path can be written, so a long run never ends in a
traceback (or loses its work) because `--out` points somewhere unwritable."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cadx.errors import OutputError


def check_writable(path: str | Path, option: str = "--out") -> None:
    """Raise OutputError (naming `option` and the path) unless `path` can be created or
    replaced: its nearest existing ancestor must be a folder in which a file can be made.

    Nothing is left behind: no folder is created, and the probe file is removed at once.
    """
    path = Path(path)
    folder = path.parent
    try:
        folder = path if path.is_dir() else path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise OutputError(f"{option} {path}: cannot write there: {folder} is a file, "
                              "not a folder")
        fd, probe = tempfile.mkstemp(prefix=".cadx-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"{option} {path}: cannot write in {folder} ({reason})") from None
