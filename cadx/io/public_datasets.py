"""Manifests (path, patient_id, label[, split]) for public ultrasound datasets, so that the 2D
track reads them like any cadx image dataset.

- DDTI thyroid crops (Pedraza et al. 2015, crops by xuao575/DDTI_preprocessing): `cropped/N_k.png`
  or `N_k(j).png` is nodule j of image k of case N; the case N is the patient (as the data's
  README says). Labels are the crops' binary TI-RADS (0 = TR2/3, 1 = TR4a-5), radiological risk
  rather than pathology; unlabelled crops are left out.
- MMOTU OTU_2D (Zhao et al. 2022): malignant = High-grade serous cystadenocarcinoma, every other
  class benign/normal. No patient ids are published, so each image is its own case. The published
  split's "validation" images are the test set; the published "train" images are split into
  train/validation (stratified, seeded).
- BUS-BRA breast ultrasound (Gomez-Flores et al. 2023): biopsy-proven benign/malignant, `Case`
  is the patient; the authors' patient-grouped 5-fold assignment becomes the `fold` column, the
  lesion mask the `mask` column, and device, histology, BI-RADS and side are kept for subgroup
  reports (BI-RADS is the radiologist's call: a subgroup column, never a model input).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from cadx.errors import InputError
from cadx.io.atomic import write_text_atomic
from cadx.train.splits import split_patients

MMOTU_MALIGNANT = "High-grade_Serous_Cystadenoma"
_DDTI_NAME = re.compile(r"^(\d+)_(\d+)(\(\d+\))?$")


def _write_manifest(rows: list[tuple[str, ...]], header: tuple[str, ...], out_csv: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(out_csv, buffer.getvalue())
    return out_csv


def ddti_manifest(root: str | Path, out_csv: str | Path) -> Path:
    """Write the labelled DDTI crops under `root` as a manifest at `out_csv` (absolute paths,
    patient = case number)."""
    root = Path(root)
    labels_csv = root / "diagnosis.csv"
    if not labels_csv.exists() or not (root / "cropped").is_dir():
        raise InputError(f"{root}: expected diagnosis.csv and cropped/ (DDTI thyroid crops)")
    labels = {}
    for row in csv.reader(labels_csv.read_text().splitlines()):
        if len(row) >= 3 and row[2].strip() in ("0", "1"):
            labels[row[0].strip()] = row[2].strip()
    rows = []
    for path in sorted((root / "cropped").glob("*.png")):
        match = _DDTI_NAME.match(path.stem)
        if match is None:
            continue
        image_name = f"{match.group(1)}_{match.group(2)}"
        label = labels.get(path.stem, labels.get(image_name))
        if label is not None:
            rows.append((str(path.resolve()), f"DDTI{match.group(1)}", label))
    if not rows:
        raise InputError(f"{root}: no labelled crops found")
    return _write_manifest(rows, ("path", "patient_id", "label"), Path(out_csv))


def mmotu_manifest(root: str | Path, out_csv: str | Path, validation_fraction: float = 0.2,
                   seed: int = 0) -> Path:
    """Write MMOTU OTU_2D under `root` as a binary manifest with train/validation/test splits
    (each image its own case; see the module docstring)."""
    root = Path(root)
    split_json = root / "OTU_2D_8-layers.json"
    if not split_json.exists():
        raise InputError(f"{root}: expected OTU_2D_8-layers.json (MMOTU OTU_2D)")
    entries = []
    for entry in json.loads(split_json.read_text()):
        parts = Path(entry["file_path_img"]).parts
        class_name, file_name = parts[-3], parts[-1]
        path = root / class_name / "images" / file_name
        if not path.exists():
            raise InputError(f"{path}: listed in {split_json.name} but missing")
        entries.append((path, class_name, entry["split"]))
    cases = {f"MMOTU-{path.stem}": (path, int(class_name == MMOTU_MALIGNANT), split)
             for path, class_name, split in entries}
    if len(cases) != len(entries):
        raise InputError(f"{split_json}: image names are not unique across classes")
    train_ids = sorted(pid for pid, (_, _, split) in cases.items() if split == "train")
    inner = split_patients(train_ids, [cases[pid][1] == 1 for pid in train_ids],
                           validation_fraction, 0.0, seed)
    rows = []
    for pid, (path, label, split) in sorted(cases.items()):
        part = inner.part_of(pid) if split == "train" else "test"
        rows.append((str(path.resolve()), pid, str(label), part))
    return _write_manifest(rows, ("path", "patient_id", "label", "split"), Path(out_csv))


def busbra_manifest(root: str | Path, out_csv: str | Path) -> Path:
    """Write BUS-BRA under `root` (bus_data.csv, 5-fold-cv.csv, Images/, Masks/) as a manifest
    at `out_csv`: path, patient_id (BUSBRA-<Case>), label (1 = malignant), fold, mask, device,
    histology, birads, side."""
    root = Path(root)
    data_csv, folds_csv = root / "bus_data.csv", root / "5-fold-cv.csv"
    for needed in (data_csv, folds_csv, root / "Images", root / "Masks"):
        if not needed.exists():
            raise InputError(f"{root}: expected bus_data.csv, 5-fold-cv.csv, Images/ and Masks/ "
                             f"(BUS-BRA); {needed.name} is missing")
    with folds_csv.open(newline="", encoding="utf-8-sig") as handle:
        fold_of = {row["ID"]: row["kFold"] for row in csv.DictReader(handle)}
    rows = []
    with data_csv.open(newline="", encoding="utf-8-sig") as handle:
        for line_no, row in enumerate(csv.DictReader(handle), start=2):
            image_id = row["ID"]
            pathology = row["Pathology"].strip().lower()
            if pathology not in ("benign", "malignant"):
                raise InputError(f"{data_csv} line {line_no}: pathology {pathology!r} is "
                                 "neither benign nor malignant")
            matches = sorted((root / "Images").glob(f"{image_id}.*"))
            if not matches:
                raise InputError(f"{data_csv} line {line_no}: no image {image_id}.* in Images/")
            mask = root / "Masks" / f"mask_{image_id.removeprefix('bus_')}.png"
            if image_id not in fold_of:
                raise InputError(f"{folds_csv}: no fold for {image_id} ({data_csv.name} line "
                                 f"{line_no})")
            rows.append((str(matches[0].resolve()), f"BUSBRA-{row['Case']}",
                         str(int(pathology == "malignant")), fold_of[image_id],
                         str(mask.resolve()) if mask.exists() else "", row["Device"],
                         row["Histology"], row["BIRADS"], row["Side"]))
    return _write_manifest(rows, ("path", "patient_id", "label", "fold", "mask", "device",
                                  "histology", "birads", "side"), Path(out_csv))
