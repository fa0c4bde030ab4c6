"""Patient-level splits: stratified, seeded, never leaking a patient across parts."""

import numpy as np
import pytest

from cadx.errors import SplitError
from cadx.train.splits import PatientSplit, assert_disjoint, split_patients


def _cohort(n=20):
    ids = [f"p{i:02d}" for i in range(n)]
    return ids, [i % 2 == 0 for i in range(n)]


def test_split_is_patient_level_stratified_and_seeded():
    ids, tumour = _cohort()
    split = split_patients(ids, tumour, 0.2, 0.2, seed=3)
    parts = [split.train, split.validation, split.test]
    assert sorted(sum(map(list, parts), [])) == sorted(ids)
    assert len(split.test) == 4 and len(split.validation) == 4
    label = dict(zip(ids, tumour, strict=True))
    for part in parts:
        assert {label[p] for p in part} == {True, False}
    assert split_patients(ids, tumour, 0.2, 0.2, seed=3) == split
    assert split_patients(ids, tumour, 0.2, 0.2, seed=4) != split


def test_leakage_guard_refuses_a_shared_patient():
    with pytest.raises(SplitError, match="patient leakage: 1 patient.*train and test"):
        PatientSplit(train=("a", "b"), validation=("c",), test=("b",))
    with pytest.raises(SplitError, match="leakage"):
        assert_disjoint({"train": ["x", "y"], "validation": ["y"]})


def test_training_pipeline_guards_patch_level_leakage(monkeypatch):
    """If a patch's patient id differs from its case's (a bug), training must refuse."""
    from cadx.config import PipelineConfig
    from cadx.patches.cohort import PatchedCase
    from cadx.patches.grid import PatchSet
    from cadx.train.pipeline import train_patch_model

    def case(pid, tumour, patch_owner=None):
        owner = patch_owner or pid
        patches = PatchSet(np.zeros((2, 16, 16), np.float32), np.array([owner] * 2, object),
                           np.zeros((2, 3), np.int32), np.array([int(tumour), 0], np.uint8))
        return PatchedCase(pid, patches, tumour, None, {})

    ids, tumour = _cohort(10)
    cases = [case(p, t) for p, t in zip(ids, tumour, strict=True)]
    split = split_patients(ids, tumour, 0.2, 0.2, seed=0)
    # A training case whose patches claim to belong to a test patient.
    train_index = ids.index(split.train[0])
    cases[train_index] = case(split.train[0], tumour[train_index], patch_owner=split.test[0])
    with pytest.raises(SplitError, match="leakage"):
        train_patch_model(cases, PipelineConfig(), progress=False)


def test_split_with_one_class_only_is_refused():
    with pytest.raises(SplitError, match="need both tumour and tumour-free"):
        split_patients(["a", "b", "c", "d", "e"], [True] * 5, 0.2, 0.2, seed=0)


def test_too_few_patients_for_a_validation_part():
    with pytest.raises(SplitError, match="validation split has"):
        split_patients(["a", "b", "c", "d"], [True, True, False, False], 0.2, 0.2, seed=0)
