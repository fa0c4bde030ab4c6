"""Patient-level train/validation/test splits and the guard that refuses leakage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cadx.errors import SplitError


@dataclass(frozen=True)
class PatientSplit:
    """Disjoint sets of patient ids."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        assert_disjoint({"train": self.train, "validation": self.validation, "test": self.test})

    def part_of(self, patient_id: str) -> str:
        for name in ("train", "validation", "test"):
            if patient_id in getattr(self, name):
                return name
        raise KeyError(patient_id)


def assert_disjoint(parts: Mapping[str, Sequence[str]]) -> None:
    """Raise SplitError if any patient id appears in more than one part."""
    names = list(parts)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = sorted(set(parts[first]) & set(parts[second]))
            if shared:
                raise SplitError(f"patient leakage: {len(shared)} patient(s) in both {first} and "
                                 f"{second}, e.g. {shared[:3]}")


def split_patients(
    patient_ids: Sequence[str], has_tumour: Sequence[bool], validation_fraction: float,
    test_fraction: float, seed: int,
) -> PatientSplit:
    """Stratified (by tumour status), seeded split of patients into train/validation/test.

    Each part with a non-zero fraction gets at least one patient of each class where the class
    has enough patients; a part left with one class only is an error (ROC needs both).
    """
    ids = np.asarray(patient_ids, dtype=object)
    labels = np.asarray(has_tumour, dtype=bool)
    if len(set(ids.tolist())) != len(ids):
        raise SplitError("patient ids are not unique")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for cls in (True, False):
        members = ids[labels == cls]
        members = members[rng.permutation(len(members))]
        n = len(members)
        n_test = _part_size(n, test_fraction)
        n_val = _part_size(n - n_test, validation_fraction / (1 - test_fraction))
        parts["test"] += members[:n_test].tolist()
        parts["validation"] += members[n_test:n_test + n_val].tolist()
        parts["train"] += members[n_test + n_val:].tolist()
    label_of = dict(zip(ids.tolist(), labels.tolist(), strict=True))
    for name, members in parts.items():
        if name == "test" and test_fraction == 0:
            continue
        classes = {label_of[m] for m in members}
        if len(classes) < 2:
            have = "no patients" if not members else (
                "only " + ("tumour" if True in classes else "tumour-free") + " patients")
            raise SplitError(f"{name} split has {have}; need both tumour and tumour-free "
                             f"patients (cohort: {labels.sum()} with, {(~labels).sum()} without)")
    return PatientSplit(tuple(sorted(parts["train"])), tuple(sorted(parts["validation"])),
                        tuple(sorted(parts["test"])))


def _part_size(n: int, fraction: float) -> int:
    """round(n * fraction), but at least 1 when the fraction is non-zero and n allows it."""
    if fraction <= 0 or n == 0:
        return 0
    return min(max(1, int(round(n * fraction))), max(n - 1, 0))
