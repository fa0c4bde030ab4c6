"""The difficulty of the synthetic CT phantoms is frozen (issue 14): these tests pin its
distributions, so that no detector can be flattered by an easier generator.

They sample the generator as it is, through a recording wrapper around its random generator:
every draw is logged with the function that made it, so the tests read the tumour contrast,
the iso-attenuating choice, the noise level and the distractors each patient got, and check
both the ranges the code draws from and how often each branch is taken over ~150 patients.
Where it matters they also measure the result in the image: the noise-free contrast of the
painted tumour against its gland, the noise standard deviation of the acquired volume.

A change that makes the phantoms easier (more contrast, fewer iso-attenuating tumours, less
noise, larger tumours, fewer distractors) fails here. Adding
harder cases is allowed by the issue; such a change updates these pins deliberately.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import cadx.synth.ct_phantom as ct_phantom
from cadx.synth.ct_phantom import CohortSpec, _cohort_plan, make_ct_phantom

SHAPE, SPACING = (12, 128, 128), (2.5, 2.7, 2.7)  # the default ~346 mm field of view, coarse
N_TUMOUR, N_FREE = 100, 50
ISO_DELTA_HU, SOLID_DELTA_HU = (10.0, 20.0), (40.0, 80.0)


class RecordingRng:
    """A numpy Generator that logs each draw as (calling function, method, args, scalar
    result or None) and otherwise behaves exactly like the generator it wraps."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self.calls: list[tuple[str, str, tuple, object]] = []

    def __getattr__(self, name: str):
        attr = getattr(self._rng, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            out = attr(*args, **kwargs)
            self.calls.append((sys._getframe(1).f_code.co_name, name, args,
                               out if np.ndim(out) == 0 else None))
            return out
        return call

    def draws(self, caller: str, method: str, args: tuple | None = None) -> list[int]:
        """Indices of the logged draws made by `caller` with `method` (and `args`)."""
        return [i for i, (who, how, a, _) in enumerate(self.calls)
                if who == caller and how == method and (args is None or a == args)]


def _tumour_contrast_draw(rng: RecordingRng) -> tuple[float, float]:
    """(the drawn HU difference to the parenchyma, the random number that chose its range)."""
    (i,) = [i for i in rng.draws("_paint_pancreas", "uniform")
            if rng.calls[i][2] in (ISO_DELTA_HU, SOLID_DELTA_HU)]
    chooser = rng.calls[i - 1]
    assert chooser[:2] == ("_paint_pancreas", "random")
    return float(rng.calls[i][3]), float(chooser[3])


@pytest.fixture(scope="module")
def sampled(request):
    """N_TUMOUR tumour patients (diameters spread over 5-40 mm) and N_FREE tumour-free ones,
    each with its draw log, label and noise-free HU volume (taken just before acquisition)."""
    captured = {}
    acquire = ct_phantom._acquire

    def spy(rng, hu, spacing):
        captured["hu"] = hu.copy()
        return acquire(rng, hu, spacing)

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(ct_phantom, "_acquire", spy)
    patients = []
    try:
        diameters = [5.0 + 35.0 * i / (N_TUMOUR - 1) for i in range(N_TUMOUR)] + [None] * N_FREE
        for seed, diameter in enumerate(diameters):
            rng = RecordingRng(np.random.default_rng(50_000 + seed))
            case = make_ct_phantom(rng, diameter, SHAPE, SPACING)
            patients.append({"diameter": diameter, "rng": rng, "label": case.label,
                             "clean_hu": captured.pop("hu")})
    finally:
        monkeypatch.undo()
    return patients


def _tumours(sampled):
    return [p for p in sampled if p["diameter"] is not None]


def _free(sampled):
    return [p for p in sampled if p["diameter"] is None]


def test_tumour_contrast_ranges_and_iso_attenuating_share(sampled):
    draws = [_tumour_contrast_draw(p["rng"]) for p in _tumours(sampled)]
    iso = np.array([delta <= ISO_DELTA_HU[1] for delta, _ in draws])
    # 12 % iso-attenuating (10-20 HU below the parenchyma), the rest 40-80 HU below.
    assert all((chooser < 0.12) == is_iso for (_, chooser), is_iso in zip(draws, iso,
                                                                         strict=True))
    deltas = np.array([delta for delta, _ in draws])
    assert ISO_DELTA_HU[0] <= deltas[iso].min() and deltas[iso].max() <= ISO_DELTA_HU[1]
    assert SOLID_DELTA_HU[0] <= deltas[~iso].min() and deltas[~iso].max() <= SOLID_DELTA_HU[1]
    assert 0.05 <= iso.mean() <= 0.20
    assert 52.0 <= deltas[~iso].mean() <= 68.0  # uniform over 40-80: mean 60


def test_painted_tumour_is_darker_than_its_gland_by_the_drawn_contrast(sampled):
    """Measured on the noise-free volume: the margin blends into the gland, so the mean
    difference is ~0.8 of the drawn one; it never exceeds 80 HU."""
    ratios, measured = [], []
    for patient in _tumours(sampled):
        label, hu = patient["label"], patient["clean_hu"]
        if (label == 2).sum() < 20:  # a few voxels are mostly margin
            continue
        delta, _ = _tumour_contrast_draw(patient["rng"])
        contrast = float(hu[label == 1].mean() - hu[label == 2].mean())
        measured.append(contrast)
        ratios.append(contrast / delta)
    assert len(ratios) >= 60
    assert 0.72 <= float(np.median(ratios)) <= 0.90
    assert 0.3 <= min(ratios) and max(ratios) <= 1.05
    assert max(measured) <= 80.0


def test_tumour_sizes_span_5_to_40_mm():
    assert CohortSpec().tumour_diameter_mm == (5.0, 40.0)
    sizes = np.array([d for d in _cohort_plan(CohortSpec(n_patients=400, seed=3))
                      if d is not None])
    assert len(sizes) == 200 and sizes.min() >= 5.0 and sizes.max() <= 40.0
    counts, _ = np.histogram(sizes, bins=np.arange(5.0, 45.0, 5.0))
    assert counts.min() >= 25  # stratified: every 5 mm band holds its ~1/7 share
    assert (sizes < 20.0).mean() == pytest.approx(15.0 / 35.0, abs=0.02)


def test_painted_tumour_volume_matches_the_requested_diameter(sampled):
    voxel_ml = float(np.prod(SPACING))
    for patient in _tumours(sampled):
        if patient["diameter"] < 15.0:  # too few voxels of 2.5 x 2.7 x 2.7 mm to measure
            continue
        volume = float((patient["label"] == 2).sum()) * voxel_ml
        measured = (6.0 * volume / np.pi) ** (1.0 / 3.0)
        assert 0.6 * patient["diameter"] <= measured <= 1.3 * patient["diameter"]


def test_noise_is_10_to_18_hu_as_drawn_and_as_measured(sampled):
    for patient in sampled:
        rng = patient["rng"]
        (i,) = rng.draws("_acquire", "uniform", (10.0, 18.0))
        assert 10.0 <= rng.calls[i][3] <= 18.0
        assert len(rng.draws("_acquire", "uniform", (0.55, 0.85))) == 1  # PSF sigma, mm
    measured, drawn = [], []
    for seed in range(12):
        rng = RecordingRng(np.random.default_rng(seed))
        flat = np.full((16, 96, 96), 40.0, dtype=np.float32)
        out = ct_phantom._acquire(rng, flat, (2.5, 0.9, 0.9))
        (i,) = rng.draws("_acquire", "uniform", (10.0, 18.0))
        drawn.append(rng.calls[i][3])
        measured.append(float(out[3:-3, 8:-8, 8:-8].std()))
    np.testing.assert_allclose(measured, drawn, rtol=0.08)


def test_distractors_are_drawn_as_often_as_before(sampled):
    free, tumours = _free(sampled), _tumours(sampled)

    def share(patients, caller, method, args):
        return np.mean([bool(p["rng"].draws(caller, method, args)) for p in patients])

    # Focal fatty infiltration of the head (a 10-25 HU darker pseudolesion) in 15 %.
    assert 0.07 <= share(sampled, "_paint_pancreas", "uniform", (10.0, 25.0)) <= 0.25
    # Dilated main duct: 10 % of tumour-free patients, half of the tumour patients.
    assert 0.02 <= share(free, "_paint_pancreatic_vessels", "uniform", (1.5, 3.5)) <= 0.22
    assert 0.35 <= share(tumours, "_paint_pancreatic_vessels", "uniform", (1.5, 3.5)) <= 0.65
    # Common bile duct in the head of 60 % of the patients without a head tumour.
    assert 0.4 <= share(free, "_paint_pancreatic_vessels", "uniform", (2.5, 4.0)) <= 0.8
    for patient in sampled:
        rng = patient["rng"]
        # 0-3 peripancreatic lymph nodes and 8-14 mesenteric vessels, every patient.
        assert len(rng.draws("_paint_periphery_vessels", "integers", (0, 4))) == 1
        assert len(rng.draws("_paint_periphery_vessels", "integers", (8, 15))) == 1
        # A splenic vein 30 HU darker to 10 HU brighter than the other veins.
        assert len(rng.draws("make_ct_phantom", "uniform", (-30.0, 10.0))) == 1
        # Bowel loops whose content (fluid, collapsed, gas) mimics masses beside the gland.
        assert len(rng.draws("_pick_kind", "choice")) >= 9
    for patient in free:
        assert not (patient["label"] == 2).any() and (patient["label"] == 1).any()
