"""Find the cases of a labelled dataset: MSD / nnU-Net v2 folders or a CSV manifest."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cadx.errors import InputError
from cadx.io.volumes import case_id_from_path


@dataclass(frozen=True)
class CaseRef:
    """Where a labelled case's files are, plus any per-case columns (e.g. tumour size)."""

    patient_id: str
    image_path: Path
    label_path: Path
    meta: dict[str, str] = field(default_factory=dict)


def load_dataset(path: str | Path) -> list[CaseRef]:
    """List the labelled cases of `path`: a folder with dataset.json, or a CSV manifest.

    CSV manifest columns: `image`, `label`, optional `patient_id`, any others kept as metadata;
    relative paths are taken relative to the CSV's folder. An MSD folder may carry a `cases.csv`
    (patient_id + metadata columns) whose columns are merged in.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: dataset not found")
    if path.is_file() and path.suffix.lower() == ".csv":
        refs = _from_manifest(path)
    elif path.is_dir() and (path / "dataset.json").exists():
        refs = _from_dataset_json(path)
    elif path.is_dir():
        raise InputError(f"{path}: no dataset.json (MSD / nnU-Net layout) in this folder")
    else:
        raise InputError(f"{path}: expected a dataset folder or a .csv manifest")
    if not refs:
        raise InputError(f"{path}: dataset lists no labelled cases")
    duplicated = repeated_ids([r.patient_id for r in refs])
    if duplicated:
        raise InputError(f"{path}: patient ids repeated: {duplicated[:5]}")
    return refs


def _from_dataset_json(root: Path) -> list[CaseRef]:
    try:
        spec = json.loads((root / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{root / 'dataset.json'}: not valid JSON ({exc})") from None
    extra = _read_case_table(root / "cases.csv")
    refs: list[CaseRef] = []
    if "training" in spec:  # Medical Segmentation Decathlon
        for entry in spec["training"]:
            image = (root / entry["image"]).resolve()
            label = (root / entry["label"]).resolve()
            pid = case_id_from_path(image)
            refs.append(CaseRef(pid, image, label, extra.get(pid, {})))
    elif "file_ending" in spec:  # nnU-Net v2: labelsTr/<case><ending>, imagesTr/<case>_0000<ending>
        ending = spec["file_ending"]
        for label in sorted((root / "labelsTr").glob(f"*{ending}")):
            pid = label.name[: -len(ending)]
            image = root / "imagesTr" / f"{pid}_0000{ending}"
            refs.append(CaseRef(pid, image, label, extra.get(pid, {})))
    else:
        raise InputError(f"{root / 'dataset.json'}: neither MSD ('training') nor nnU-Net v2 "
                         "('file_ending') layout")
    for ref in refs:
        for p in (ref.image_path, ref.label_path):
            if not p.exists():
                raise InputError(f"{p}: listed in {root / 'dataset.json'} but missing")
    return refs


def _from_manifest(csv_path: Path) -> list[CaseRef]:
    rows = _read_rows(csv_path)
    refs = []
    for line_no, row in enumerate(rows, start=2):
        if not row.get("image") or not row.get("label"):
            raise InputError(f"{csv_path}: line {line_no} needs 'image' and 'label' columns")
        image = (csv_path.parent / row["image"]).resolve()
        label = (csv_path.parent / row["label"]).resolve()
        for p in (image, label):
            if not p.exists():
                raise InputError(f"{p}: listed in {csv_path} line {line_no} but missing")
        pid = row.get("patient_id") or case_id_from_path(image)
        meta = {k: v for k, v in row.items() if k not in ("image", "label", "patient_id")}
        refs.append(CaseRef(pid, image, label, meta))
    return refs


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    try:
        with csv_path.open(newline="") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{csv_path}: unreadable CSV ({exc})") from None


def _read_case_table(csv_path: Path) -> dict[str, dict[str, str]]:
    if not csv_path.exists():
        return {}
    table = {}
    for row in _read_rows(csv_path):
        pid = row.pop("patient_id", None)
        if pid:
            table[pid] = row
    return table


def repeated_ids(ids: list[str]) -> list[str]:
    """The ids that occur more than once, sorted."""
    return sorted(i for i, n in Counter(ids).items() if n > 1)
