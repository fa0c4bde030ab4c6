"""The one object that carries a patient's image, masks and metadata through every stage."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Case:
    """A patient's CT/MR volume (or a 2D image as a 1-slice volume) with its label masks.

    Arrays are (z, y, x). `image` is in HU (CT) or scanner units (MR) before preprocessing and
    in 0..1 after. Masks are boolean; `tumour_mask` is None when the tumour status is unknown
    (a new patient at diagnosis).
    """

    patient_id: str
    image: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    organ_mask: np.ndarray | None = None
    tumour_mask: np.ndarray | None = None
    source: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def has_tumour(self) -> bool | None:
        if self.tumour_mask is None:
            return None
        return bool(self.tumour_mask.any())

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[0])
