"""Where evaluated data come from: content fingerprints of image files, and whether a dataset is
one of cadx's synthetic cohorts.

A fingerprint is the SHA-256 of an image's content: of the decompressed bytes for `.gz` files
(so the gzip header's time stamp does not count), of every file under a DICOM folder in path
order. Two cohorts whose patients share ids (every synthetic CT cohort is `pancreas_001...`) are
told apart by content; the same scan under a new name is recognised.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

_CHUNK_BYTES = 1 << 20


def _update(digest: hashlib._Hash, path: Path) -> None:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)


def content_fingerprint(path: str | Path) -> str:
    """SHA-256 (hex) of the image content at `path`: a file, or a folder (DICOM series) whose
    files are hashed in sorted order with their relative paths."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(item.relative_to(path).as_posix().encode() + b"\0")
            _update(digest, item)
    else:
        _update(digest, path)
    return digest.hexdigest()


def fingerprints(paths: Mapping[str, str | Path]) -> dict[str, str]:
    """{patient id: content fingerprint} of each patient's image."""
    return {patient_id: content_fingerprint(path) for patient_id, path in paths.items()}


def seen_before(evaluated: Mapping[str, str | Path], used_ids: Sequence[str],
                used_fingerprints: Mapping[str, str] | None) -> tuple[list[str], list[str]]:
    """Which evaluated patients (id -> image path) a model saw in training or validation.

    Returns (same content, same id only): with `used_fingerprints` (id -> fingerprint, stored
    by newer bundles) a patient counts as seen when its image's content matches any used
    image, whatever its id; the second list holds ids shared with used patients whose images
    differ. Without fingerprints (older bundles) nothing can be matched on content: the first
    list is empty and the second lists every shared id.
    """
    shared_ids = sorted(set(evaluated) & set(used_ids))
    if not used_fingerprints:
        return [], shared_ids
    used = set(used_fingerprints.values())
    same = sorted(pid for pid, path in evaluated.items() if content_fingerprint(path) in used)
    return same, [pid for pid in shared_ids if pid not in set(same)]


def synthetic_source(dataset: str | Path) -> str | None:
    """A short description when `dataset` is one of cadx's synthetic cohorts, else None.

    Recognised: an MSD folder whose dataset.json says `"reference": "synthetic"` (cadx synth
    ct, cadx demo), or a folder (or a CSV inside it) holding cadx's `SYNTHETIC` marker file.
    """
    path = Path(dataset)
    folder = path if path.is_dir() else path.parent
    marker = folder / "SYNTHETIC"
    if marker.is_file():
        text = marker.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return text[0] if text else "cadx synthetic data"
    spec = folder / "dataset.json"
    if spec.is_file():
        try:
            info = json.loads(spec.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(info, dict) and (info.get("reference") == "synthetic"
                                       or str(info.get("name", "")).startswith("cadx-synthetic")):
            return str(info.get("description") or info.get("name") or "cadx synthetic data")
    return None
