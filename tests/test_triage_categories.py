"""Synthetic triage images: every look, its QC flags, the cohort writer's folders and
manifests."""

import csv

import numpy as np
import pytest
from PIL import Image

from cadx.errors import ConfigError
from cadx.synth.categories import (
    CATEGORIES,
    LOOKS,
    QC_FLAGS,
    CategoryCohortSpec,
    make_category_image,
    write_category_cohort,
)


@pytest.mark.parametrize("look", LOOKS)
def test_every_look_is_a_deterministic_uint8_image_with_flags(look):
    first = make_category_image(np.random.default_rng(3), look, 48)
    again = make_category_image(np.random.default_rng(3), look, 48)
    assert first.pixels.dtype == np.uint8 and first.pixels.shape[:2] == (48, 48)
    np.testing.assert_array_equal(first.pixels, again.pixels)
    assert first.category in CATEGORIES and set(first.flags) == set(QC_FLAGS)
    assert first.flags["target"] == (first.category != "other")
    assert first.flags["is3d"] == (look == "render-3d")
    assert first.pixels.std() > 0 or look == "blank-screen"


def test_doppler_overlay_is_colour_and_degradation_flags_unreadable():
    rng = np.random.default_rng(0)
    grey = make_category_image(rng, "us-thyroid", 64)
    doppler = make_category_image(rng, "us-thyroid", 64, lesion=True, doppler=True)
    dark = make_category_image(rng, "us-breast", 64, degradation="dark")
    assert grey.pixels.ndim == 2 and doppler.pixels.shape == (64, 64, 3)
    rgb = doppler.pixels.astype(int)
    assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 80).sum() > 10  # red or blue flow pixels
    assert doppler.flags["doppler"] and doppler.flags["lesion"]
    assert dark.flags["unreadable"] and dark.flags["target"] and dark.pixels.mean() < 20


def test_bad_requests_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="unknown image look"):
        make_category_image(rng, "us-liver")
    with pytest.raises(ConfigError, match="organ images only"):
        make_category_image(rng, "text-screen", lesion=True)
    with pytest.raises(ConfigError, match="needs an ultrasound"):
        make_category_image(rng, "ct-abdomen", doppler=True)
    with pytest.raises(ConfigError, match="patients_per_category"):
        CategoryCohortSpec(patients_per_category=2)


def test_cohort_writer_folders_and_manifests_agree(tmp_path):
    spec = CategoryCohortSpec(patients_per_category=4, images_per_patient=(1, 2),
                              unreadable_fraction=0.3, image_size_px=40, seed=2)
    out = write_category_cohort(tmp_path / "tri", spec, progress=False)
    folders = sorted(p.name for p in (out / "categories").iterdir())
    assert folders == sorted(CATEGORIES)
    with (out / "qc.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all((out / r["path"]).is_file() for r in rows)
    for row in rows:
        unreadable = row["path"].startswith("unreadable/")
        if row["category"] != "other":  # organ images: unreadable exactly when degraded
            assert (row["unreadable"] == "1") == unreadable
        assert row["target"] == ("0" if row["category"] == "other" else "1")
        if not unreadable:
            assert row["path"].split("/")[1] == row["category"]
    assert any(r["path"].startswith("unreadable/") for r in rows)
    with (out / "lesion-us-thyroid.csv").open() as handle:
        lesion_rows = list(csv.DictReader(handle))
    assert {r["label"] for r in lesion_rows} == {"0", "1"}
    assert all(r["path"].startswith("categories/us-thyroid/") for r in lesion_rows)
    assert Image.open(out / rows[0]["path"]).size == (40, 40)
