"""FNA advice: ACR TI-RADS 2017 size cut-offs applied to the model's decision."""

import pytest

from cadx.diagnose.fna import FNA, FOLLOW_UP, NO_FNA, fna_advice
from cadx.errors import ConfigError


@pytest.mark.parametrize(("malignant", "size_mm", "expected", "level"), [
    (True, 10.0, FNA, "TR5"), (True, 9.9, FOLLOW_UP, "TR5"), (True, 5.0, FOLLOW_UP, "TR5"),
    (True, 4.9, NO_FNA, "TR5"), (False, 25.0, FNA, "TR3"), (False, 24.9, FOLLOW_UP, "TR3"),
    (False, 15.0, FOLLOW_UP, "TR3"), (False, 14.9, NO_FNA, "TR3"), (False, 12.0, NO_FNA, "TR3"),
])
def test_size_cutoffs(malignant, size_mm, expected, level):
    advice = fna_advice(malignant, size_mm)
    assert advice.recommendation == expected and advice.tirads_level == level
    assert advice.fna_advised == (expected == FNA)
    assert "Tessler" in advice.source and "cadx's, not the ACR's" in advice.rule


@pytest.mark.parametrize("size_mm", [0.0, -1.0, float("nan"), float("inf"), 151.0])
def test_impossible_sizes_are_refused(size_mm):
    with pytest.raises(ConfigError, match="nodule size"):
        fna_advice(True, size_mm)
