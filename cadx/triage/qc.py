"""Image quality control (seed 002): a multi-label model raises flags (the image shows the target
organ, a lesion, a colour-Doppler signal, a 3D rendering, cannot be judged...), each at its own
validation-Youden threshold; drop rules ("not target", "unreadable") say which flags remove an
image, and every removal carries its reasons.

QC training data is a CSV manifest: ``path, patient_id`` and one 0/1 column per flag
(optionally ``split``); paths are relative to the CSV's folder.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cadx.errors import ConfigError, InputError
from cadx.io.images import ImageRecord, check_patient_splits
from cadx.triage.bundle import TriageBundle

_SHOW = 5
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class QCDataset:
    """Images with a 0/1 value per flag: ``flags[i, k]`` is flag ``flag_names[k]`` of image i.

    Each record's ``label`` is its patient's stratification class for the split (1 if any of
    the patient's images has the first flag raised)."""

    records: tuple[ImageRecord, ...]
    flags: np.ndarray
    flag_names: tuple[str, ...]
    source: Path


def load_qc_manifest(path: str | Path, flag_names: Sequence[str]) -> QCDataset:
    """Read a QC manifest; InputError naming the file and the rows for a missing column, a
    value other than 0/1, an empty path or patient id, or a missing image file."""
    path = Path(path)
    flag_names = tuple(flag_names)
    if len(flag_names) < 2 or len(set(flag_names)) != len(flag_names):
        raise ConfigError(f"give at least two distinct QC flags, got {list(flag_names)}")
    if not path.is_file():
        raise InputError(f"{path}: QC manifest not found (a CSV: path, patient_id, "
                         f"{', '.join(flag_names)})")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [(c or "").strip() for c in reader.fieldnames or []]
            rows = [(reader.line_num, {(k or "").strip(): (v or "").strip()
                                       for k, v in row.items()}) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: unreadable CSV ({exc})") from None
    missing = [c for c in ("path", "patient_id", *flag_names) if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (has "
                         f"{', '.join(header) or 'none'})")
    if not rows:
        raise InputError(f"{path}: lists no images")
    records, values, problems = [], [], []
    for line, row in rows:
        bad = [f for f in flag_names if row[f] not in ("0", "1")]
        image = path.parent / row["path"]
        split = row.get("split", "").lower() or None
        if not row["path"] or not row["patient_id"]:
            problems.append(f"line {line}: empty path or patient_id")
        elif bad:
            problems.append(f"line {line}: {bad[0]} is {row[bad[0]]!r}, not 0 or 1")
        elif split not in (None, *SPLITS):
            problems.append(f"line {line}: split {row['split']!r} is not one of "
                            f"{', '.join(SPLITS)} (or blank)")
        elif not image.is_file():
            problems.append(f"line {line}: {row['path']} not found")
        else:
            records.append(ImageRecord(image, row["patient_id"], 0, split))
            values.append([int(row[f]) for f in flag_names])
    if problems:
        more = f"; and {len(problems) - _SHOW} more" if len(problems) > _SHOW else ""
        raise InputError(f"{path}: {len(problems)} bad row(s): "
                         f"{'; '.join(problems[:_SHOW])}{more}")
    check_patient_splits(records)
    flags = np.asarray(values, dtype=int)
    stratum: dict[str, int] = defaultdict(int)
    for record, row in zip(records, flags, strict=True):
        stratum[record.patient_id] |= int(row[0])
    records = [replace(r, label=stratum[r.patient_id]) for r in records]
    return QCDataset(tuple(records), flags, flag_names, path)


@dataclass(frozen=True)
class DropRule:
    """Drop an image when `flag` is raised (``"unreadable"``) or, with `negated`, when it is
    not (``"not target"``)."""

    flag: str
    negated: bool = False

    def __str__(self) -> str:
        return f"not {self.flag}" if self.negated else self.flag


def parse_drop_rules(texts: Sequence[str], flags: Sequence[str],
                     source: str = "drop rules") -> tuple[DropRule, ...]:
    """Rules from texts like ``"not target"`` or ``"unreadable"``; ConfigError naming
    `source` for a flag the QC model does not have."""
    rules = []
    for text in texts:
        words = str(text).split()
        negated = len(words) == 2 and words[0].lower() == "not"
        if len(words) != 1 + negated:
            raise ConfigError(f"{source}: drop rule {text!r} is not 'FLAG' or 'not FLAG'")
        flag = words[-1]
        if flag not in flags:
            raise ConfigError(f"{source}: drop rule {text!r} names flag {flag!r}; the QC model "
                              f"has {', '.join(flags)}")
        rules.append(DropRule(flag, negated))
    return tuple(rules)


def default_drop_rules(flags: Sequence[str]) -> tuple[DropRule, ...]:
    """"not target" and "unreadable", for the flags the model has."""
    return tuple(rule for rule in (DropRule("target", True), DropRule("unreadable"))
                 if rule.flag in flags)


@dataclass(frozen=True)
class QCDecision:
    """One image's QC: each flag's probability and whether it is raised; dropped and why."""

    probabilities: dict[str, float]
    raised: dict[str, bool]
    reasons: tuple[str, ...]

    @property
    def dropped(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, object]:
        return {"flags": {f: {"probability": p, "raised": self.raised[f]}
                          for f, p in self.probabilities.items()},
                "dropped": self.dropped, "reasons": list(self.reasons)}


def qc_decisions(bundle: TriageBundle, probabilities: np.ndarray,
                 rules: Sequence[DropRule]) -> list[QCDecision]:
    """Flags raised by the bundle's thresholds (probability > threshold) and the reasons each
    image is dropped under `rules`, e.g. ``"not target (p 0.04 <= 0.38)"``."""
    if bundle.kind != "qc":
        raise ConfigError(f"{bundle.name} is a {bundle.kind} model, not a QC model")
    thresholds = np.array([bundle.threshold(f) for f in bundle.labels])
    raised = np.asarray(probabilities) > thresholds[None, :]
    index = {flag: k for k, flag in enumerate(bundle.labels)}
    decisions = []
    for row, up in zip(probabilities, raised, strict=True):
        reasons = []
        for rule in rules:
            k = index[rule.flag]
            if up[k] != rule.negated:
                sign = "<=" if rule.negated else ">"
                reasons.append(f"{rule} (p {row[k]:.3f} {sign} {thresholds[k]:.3f})")
        decisions.append(QCDecision({f: round(float(row[index[f]]), 6) for f in bundle.labels},
                                    {f: bool(up[index[f]]) for f in bundle.labels},
                                    tuple(reasons)))
    return decisions
