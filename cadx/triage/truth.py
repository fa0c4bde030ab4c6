"""Known answers for triage runs on labelled (e.g. synthetic) images: a CSV with ``path`` and
``category`` and, optionally, one 0/1 column per QC flag (the ``qc.csv`` of
`cadx synth categories` is one). Paths are relative to the CSV's folder."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cadx.errors import InputError
from cadx.triage.evaluate import removal_metrics, routing_metrics
from cadx.triage.qc import DropRule

_EXAMPLES = 10


@dataclass(frozen=True)
class Truth:
    """The true category and flags of one image."""

    category: str
    flags: dict[str, bool]

    def should_drop(self, rules: Sequence[DropRule]) -> bool | None:
        """Whether `rules` applied to the true flags drop the image; None if a flag is unknown."""
        if any(rule.flag not in self.flags for rule in rules):
            return None
        return any(self.flags[rule.flag] != rule.negated for rule in rules)


def read_truth(path: str | Path) -> dict[Path, Truth]:
    """Truth per resolved image path; InputError naming the file for a bad CSV."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [(c or "").strip() for c in reader.fieldnames or []]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: unreadable truth CSV ({exc})") from None
    if "path" not in header or "category" not in header:
        raise InputError(f"{path}: a truth CSV needs columns path and category (has "
                         f"{', '.join(header) or 'none'})")
    flag_columns = [c for c in header if c not in ("path", "patient_id", "category", "split")]
    truth = {}
    for line, row in enumerate(rows, start=2):
        flags = {}
        for column in flag_columns:
            value = (row.get(column) or "").strip()
            if value not in ("0", "1"):
                raise InputError(f"{path}: line {line}: {column} is {value!r}, not 0 or 1")
            flags[column] = value == "1"
        truth[(path.parent / row["path"].strip()).resolve()] = Truth(row["category"].strip(),
                                                                     flags)
    return truth


def evaluate_against_truth(paths: Sequence[Path], routed: Sequence, dropped: Sequence[bool],
                           reasons: Sequence[Sequence[str]], truth: dict[Path, Truth],
                           categories: Sequence[str],
                           rules: Sequence[DropRule]) -> dict[str, object]:
    """Routing metrics over the images that reached the router (`routed[i]` not None) and QC
    removal metrics over every image whose truth has the rules' flags, with counts by reason
    and the first missed / wrongly removed files."""
    known = [(i, truth[p.resolve()]) for i, p in enumerate(paths) if p.resolve() in truth]
    out: dict[str, object] = {"images": len(paths), "with_truth": len(known)}
    reached = [(i, t) for i, t in known if routed[i] is not None and t.category in categories]
    if reached:
        out["routing"] = routing_metrics([t.category for _, t in reached],
                                         [routed[i] for i, _ in reached], categories)
    if rules:
        judged = [(i, t.should_drop(rules)) for i, t in known]
        judged = [(i, should) for i, should in judged if should is not None]
        if judged:
            qc = removal_metrics([s for _, s in judged], [dropped[i] for i, _ in judged])
            qc["removed_by_rule"] = dict(Counter(
                reason.split(" (")[0] for i, _ in judged for reason in reasons[i]))
            qc["missed"] = [str(paths[i]) for i, s in judged if s and not dropped[i]][:_EXAMPLES]
            qc["wrongly_removed"] = [str(paths[i]) for i, s in judged
                                     if not s and dropped[i]][:_EXAMPLES]
            out["qc"] = qc
    return out
