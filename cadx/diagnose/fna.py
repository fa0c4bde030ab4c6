"""Fine-needle aspiration (FNA) advice for a thyroid nodule from the malignancy decision + size.

Rule (ACR TI-RADS 2017 size cut-offs: Tessler FN et al., "ACR Thyroid Imaging, Reporting and
Data System (TI-RADS): White Paper of the ACR TI-RADS Committee", J Am Coll Radiol
2017;14:587-595):

    TR5 (highly suspicious)     FNA if >= 10 mm; follow-up ultrasound if >= 5 mm
    TR4 (moderately suspicious) FNA if >= 15 mm; follow-up ultrasound if >= 10 mm
    TR3 (mildly suspicious)     FNA if >= 25 mm; follow-up ultrasound if >= 15 mm

A classifier gives a malignant / benign decision, not a TI-RADS level, so cadx maps a
"malignant" decision to the TR5 cut-offs and a "benign" one to the TR3 cut-offs. That mapping
is cadx's, not the ACR's: it is conservative (a large nodule the model calls benign is still
sent to FNA, as TR3 would be) because the model does not score the five TI-RADS features.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from cadx.errors import ConfigError

SOURCE = ("ACR TI-RADS 2017 size cut-offs (Tessler FN et al., J Am Coll Radiol "
          "2017;14:587-595)")
RULE = ("malignant decision -> TR5 cut-offs: FNA if >= 10 mm, follow-up if >= 5 mm; "
        "benign decision -> TR3 cut-offs: FNA if >= 25 mm, follow-up if >= 15 mm "
        "(the decision-to-level mapping is cadx's, not the ACR's)")
# level: (FNA cut-off, follow-up cut-off) in mm
TIRADS_CUTOFFS_MM = {"TR5": (10.0, 5.0), "TR4": (15.0, 10.0), "TR3": (25.0, 15.0)}
MAX_NODULE_SIZE_MM = 150.0

FNA, FOLLOW_UP, NO_FNA = "FNA advised", "no FNA; follow-up ultrasound", "no FNA"


@dataclass(frozen=True)
class FnaAdvice:
    """The recommendation with the cut-offs that produced it."""

    recommendation: str
    fna_advised: bool
    tirads_level: str
    size_mm: float
    fna_cutoff_mm: float
    follow_up_cutoff_mm: float
    rule: str = RULE
    source: str = SOURCE

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def fna_advice(malignant: bool, size_mm: float) -> FnaAdvice:
    """FNA advice for a nodule of maximal diameter `size_mm` given the model's decision."""
    if not math.isfinite(size_mm) or not 0 < size_mm <= MAX_NODULE_SIZE_MM:
        raise ConfigError(f"nodule size must be a number of mm in (0, {MAX_NODULE_SIZE_MM:g}], "
                          f"got {size_mm}")
    level = "TR5" if malignant else "TR3"
    fna_cutoff, follow_cutoff = TIRADS_CUTOFFS_MM[level]
    if size_mm >= fna_cutoff:
        recommendation = FNA
    elif size_mm >= follow_cutoff:
        recommendation = FOLLOW_UP
    else:
        recommendation = NO_FNA
    return FnaAdvice(recommendation, recommendation == FNA, level, float(size_mm), fna_cutoff,
                     follow_cutoff)
