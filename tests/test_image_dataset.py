"""Tests for reading 2D image classification datasets (cadx.io.images)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cadx.errors import ConfigError, InputError, SplitError
from cadx.io.images import (
    ImageRecord,
    assign_splits,
    check_patient_splits,
    find_duplicate_images,
    load_image_dataset,
    patient_id_from_filename,
    read_image,
    read_images,
)


def _png(path: Path, seed: int, mode: str = "L", size: tuple[int, int] = (24, 20)) -> Path:
    """Write a small random image (grayscale, RGB, RGBA or 16-bit 'I;16')."""
    rng = np.random.default_rng(seed)
    h, w = size
    if mode == "L":
        array = rng.integers(0, 256, (h, w), dtype=np.uint8)
    elif mode == "I;16":
        array = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    else:
        array = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _class_folders(root: Path) -> Path:
    """benign: 2 patients (3 images), malignant: 2 patients (3 images, one RGB)."""
    for i, name in enumerate(["B01_1", "B01_2", "B02_1"]):
        _png(root / "benign" / f"{name}.png", i)
    for i, name in enumerate(["M01_1", "M02_1", "M02_2"]):
        _png(root / "malignant" / f"{name}.png", 10 + i, mode="RGB" if i == 2 else "L")
    (root / "malignant" / "notes.txt").write_text("not an image, ignored")
    return root


def _csv(root: Path, rows: list[str], header: str = "path,patient_id,label,split") -> Path:
    path = root / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _csv_dataset(root: Path) -> Path:
    for i in range(4):
        _png(root / "img" / f"p{i}.png", i)
    return _csv(root, ["img/p0.png,P0,0,train", "img/p1.png,P1,1,train",
                       "img/p2.png,P2,0,test", "img/p3.png,P3,1,val"])


# ------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------


def test_class_folders_give_labels_patients_and_hashes(tmp_path: Path) -> None:
    dataset = load_image_dataset(_class_folders(tmp_path / "ds"), progress=False)
    assert dataset.class_names == ("benign", "malignant") and dataset.positive_class == "malignant"
    assert len(dataset) == 6 and dataset.patient_ids == ("B01", "B02", "M01", "M02")
    by_name = {r.path.name: r for r in dataset.records}
    assert by_name["B01_2.png"].label == 0 and by_name["M02_2.png"].label == 1
    assert by_name["M02_2.png"].patient_id == "M02" and by_name["M02_2.png"].split is None
    assert all(len(r.sha256) == 64 for r in dataset.records)


def test_class_order_puts_the_negative_class_first(tmp_path: Path) -> None:
    _png(tmp_path / "normal" / "a_1.png", 0)
    _png(tmp_path / "cancer" / "b_1.png", 1)
    dataset = load_image_dataset(tmp_path, progress=False)
    assert dataset.class_names == ("normal", "cancer") and dataset.positive_class == "cancer"
    assert {r.patient_id: r.label for r in dataset.records} == {"a": 0, "b": 1}
    other = tmp_path / "other"
    _png(other / "zebra" / "z.png", 2)
    _png(other / "apple" / "a.png", 3)
    assert load_image_dataset(other, progress=False).class_names == ("apple", "zebra")


def test_patient_id_from_filename() -> None:
    assert patient_id_from_filename("x/US0001_2.png") == "US0001"
    assert patient_id_from_filename("case_07_left_3.jpg") == "case_07_left"
    assert patient_id_from_filename("scan.png") == "scan"


def test_csv_layout_with_splits(tmp_path: Path) -> None:
    dataset = load_image_dataset(_csv_dataset(tmp_path), progress=False)
    assert dataset.class_names == ("0", "1") and dataset.positive_class == "1"
    assert [r.split for r in dataset.records] == ["train", "train", "test", "validation"]
    assert dataset.records[0].path == tmp_path / "img" / "p0.png"
    assert [r.label for r in dataset.records] == [0, 1, 0, 1]


def test_csv_without_split_column_and_with_bom(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 0)
    _png(tmp_path / "b.png", 1)
    path = tmp_path / "list.csv"
    path.write_text("\ufeffPath,Patient_ID,Label\na.png,A,0\nb.png,B,1\n", encoding="utf-8")
    dataset = load_image_dataset(path, progress=False)
    assert [(r.patient_id, r.label, r.split) for r in dataset.records] == [
        ("A", 0, None), ("B", 1, None)]


# ------------------------------------------------------------------------------------------
# Bad input: one readable message naming the file and the problem
# ------------------------------------------------------------------------------------------


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere: dataset not found"):
        load_image_dataset(tmp_path / "nowhere")


def test_unreadable_files_are_all_reported_together(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "ds")
    (root / "benign" / "B03_1.png").write_bytes(b"")
    (root / "benign" / "B04_1.png").write_bytes(b"this is not a PNG")
    good = (root / "malignant" / "M01_1.png").read_bytes()
    (root / "malignant" / "M03_1.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError) as info:
        load_image_dataset(root, progress=False)
    message = str(info.value)
    assert "3 of 9 image file(s) unreadable" in message
    assert "benign/B03_1.png: empty file (0 bytes)" in message
    assert "benign/B04_1.png: not a readable image (unknown format)" in message
    assert "malignant/M03_1.png: not a readable image" in message


def test_truncated_jpeg_is_caught(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "ds")
    jpeg = root / "benign" / "B09_1.jpg"
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:-40])
    with pytest.raises(InputError, match=r"1 of 7 .*B09_1\.jpg: not a readable image"):
        load_image_dataset(root, progress=False)


def test_missing_file_listed_in_csv(tmp_path: Path) -> None:
    path = _csv_dataset(tmp_path)
    (tmp_path / "img" / "p2.png").unlink()
    with pytest.raises(InputError, match=r"1 of 4 .*manifest\.csv line 4: img/p2\.png: missing"):
        load_image_dataset(path, progress=False)


def test_mask_files_beside_images_are_not_images(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "ds")
    _png(root / "benign" / "B01_1_mask.png", 50)
    _png(root / "malignant" / "mask_M01_1.png", 51)
    _png(root / "malignant" / "masks" / "M01_1.png", 52)
    _png(root / "masks" / "M01_1_mask.png", 53)
    dataset = load_image_dataset(root, progress=False)
    assert not [r for r in dataset.records if "mask" in r.path.name.lower()]
    assert len(dataset) == 6


def test_manifest_keeps_mask_fold_and_extra_columns(tmp_path: Path) -> None:
    for i in range(4):
        _png(tmp_path / "img" / f"p{i}.png", i)
        _png(tmp_path / "img" / f"p{i}_mask.png", 20 + i)
    path = _csv(tmp_path, [f"img/p{i}.png,P{i},{i % 2},{i % 2 + 1},img/p{i}_mask.png,GE"
                           for i in range(4)], header="path,patient_id,label,fold,mask,Device")
    record = load_image_dataset(path, progress=False).records[1]
    assert record.fold == "2" and record.mask == tmp_path / "img" / "p1_mask.png"
    assert record.attribute("device") == "GE" and record.attribute("histology") is None


def test_patient_spanning_two_folds_is_refused(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "img" / f"p{i}.png", i)
    path = _csv(tmp_path, ["img/p0.png,P0,0,1", "img/p1.png,P0,0,2", "img/p2.png,P1,1,1"],
                header="path,patient_id,label,fold")
    with pytest.raises(SplitError, match="P0: folds 1, 2"):
        load_image_dataset(path, progress=False)


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "ds")
    (root / "borderline").mkdir()
    (root / "borderline" / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError, match="class folder 'borderline' holds no images"):
        load_image_dataset(root, progress=False)


def test_fewer_than_two_classes(tmp_path: Path) -> None:
    _png(tmp_path / "ds" / "benign" / "a_1.png", 0)
    with pytest.raises(InputError, match=r"found 1 class folder\(s\) \(benign\)"):
        load_image_dataset(tmp_path / "ds", progress=False)
    for i in range(2):
        _png(tmp_path / f"p{i}.png", i)
    path = _csv(tmp_path, ["p0.png,A,0,", "p1.png,B,0,"])
    with pytest.raises(InputError, match="manifest.csv: every image has label 0"):
        load_image_dataset(path, progress=False)


def test_csv_missing_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["a.png,0"], header="path,label")
    with pytest.raises(InputError, match="manifest.csv: missing column.* patient_id"):
        load_image_dataset(path, progress=False)


@pytest.mark.parametrize(("row", "problem"), [
    ("img/p1.png,P1,malignant,", r"line 3: label 'malignant' is not a class index"),
    ("img/p1.png,P1,-1,", r"line 3: label '-1' is not a class index"),
    ("img/p1.png,P1,,", r"line 3: label '' is not a class index"),
    ("img/p1.png,,1,", r"line 3: empty patient_id"),
    ("img/p1.png,P1,1,holdout", r"line 3: split 'holdout' is not one of"),
    ("img/p0.png,P1,1,", r"line 3: path listed again \(first on line 2\)"),
])
def test_csv_bad_rows_name_the_line(tmp_path: Path, row: str, problem: str) -> None:
    for i in range(2):
        _png(tmp_path / "img" / f"p{i}.png", i)
    path = _csv(tmp_path, ["img/p0.png,P0,0,", row])
    with pytest.raises(InputError, match=r"manifest\.csv: 1 bad row\(s\): " + problem):
        load_image_dataset(path, progress=False)


def test_csv_labels_must_be_consecutive_class_indices(tmp_path: Path) -> None:
    for i in range(2):
        _png(tmp_path / f"p{i}.png", i)
    path = _csv(tmp_path, ["p0.png,A,0,", "p1.png,B,2,"])
    with pytest.raises(InputError, match="no image has label 1"):
        load_image_dataset(path, progress=False)


def test_patient_with_different_labels_is_refused(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "ds")
    shutil.copy(root / "benign" / "B01_1.png", root / "malignant" / "B01_9.png")
    with pytest.raises(InputError, match=r"1 patient\(s\) have images with different labels "
                                         r"\(B01\).*malignant/B01_9\.png \(malignant\)"):
        load_image_dataset(root, progress=False)


def test_patient_with_different_splits_is_refused(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / f"p{i}.png", i)
    path = _csv(tmp_path, ["p0.png,A,0,train", "p1.png,A,0,test", "p2.png,B,1,train"])
    leak = r"patient leakage.*A: p0\.png \(train\), p1\.png \(test\)"
    with pytest.raises(SplitError, match=leak):
        load_image_dataset(path, progress=False)


# ------------------------------------------------------------------------------------------
# Splits and duplicates
# ------------------------------------------------------------------------------------------


def _records(n_patients: int = 10, per_patient: int = 3) -> list[ImageRecord]:
    return [ImageRecord(Path(f"P{p:02d}_{k}.png"), f"P{p:02d}", p % 2, sha256=f"{p}-{k}")
            for p in range(n_patients) for k in range(per_patient)]


def test_check_patient_splits_ignores_missing_splits() -> None:
    records = _records(2)
    check_patient_splits(records)
    check_patient_splits([replace(records[0], split="train"), *records[1:]])
    with pytest.raises(SplitError, match=r"P00: P00_0\.png \(train\), P00_1\.png \(validation\)"):
        check_patient_splits([replace(records[0], split="train"),
                              replace(records[1], split="validation"), *records[2:]])


def test_assign_splits_is_patient_level_and_keeps_explicit_splits() -> None:
    records = _records()
    split = assign_splits(records, validation_fraction=0.2, test_fraction=0.2, seed=0)
    parts = {}
    for record in split:
        assert parts.setdefault(record.patient_id, record.split) == record.split
    assert set(parts.values()) == {"train", "validation", "test"}
    assert assign_splits(split, 0.2, 0.2, seed=1) == split
    with pytest.raises(SplitError, match="1 of 30 images have a split value"):
        assign_splits([replace(records[0], split="train"), *records[1:]], 0.2, 0.2, seed=0)


def test_duplicates_across_patients_and_splits_are_found(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "ds")
    shutil.copy(root / "benign" / "B01_1.png", root / "benign" / "B02_7.png")  # other patient
    shutil.copy(root / "benign" / "B02_1.png", root / "benign" / "B02_8.png")  # same patient
    records = load_image_dataset(root, progress=False).records
    pairs = find_duplicate_images(records)
    assert [(a.path.name, b.path.name) for a, b in pairs] == [("B01_1.png", "B02_7.png")]
    by_name = {r.path.name: r for r in records}
    split = [replace(by_name["B02_1.png"], split="train"),
             replace(by_name["B02_8.png"], split="test", sha256="")]  # hashed from the file
    assert [(a.path.name, b.path.name) for a, b in find_duplicate_images(split)] == [
        ("B02_1.png", "B02_8.png")]


# ------------------------------------------------------------------------------------------
# Pixels
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
@pytest.mark.parametrize("channels", [1, 3])
def test_read_image_converts_to_requested_channels(tmp_path: Path, mode: str,
                                                   channels: int) -> None:
    path = _png(tmp_path / "x.png", 0, mode=mode, size=(30, 40))
    pixels = read_image(path, channels=channels)
    assert pixels.shape == (channels, 30, 40) and pixels.dtype == np.float32
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.std() > 0.1
    resized = read_image(path, size_px=16, channels=channels)
    assert resized.shape == (channels, 16, 16)
    assert abs(float(resized.mean()) - float(pixels.mean())) < 0.05


def test_read_image_values_and_gray_rgb_agreement(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "c.png")
    expected = gray.astype(np.float32) / 255
    np.testing.assert_allclose(read_image(tmp_path / "g.png")[0], expected, atol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "c.png")[0], expected, atol=1e-6)
    rgb_from_gray = read_image(tmp_path / "g.png", channels=3)
    np.testing.assert_allclose(rgb_from_gray, np.stack([expected] * 3), atol=1e-6)


def test_read_image_downsizing_antialiases(tmp_path: Path) -> None:
    checkerboard = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    Image.fromarray(checkerboard).save(tmp_path / "check.png")
    assert read_image(tmp_path / "check.png", size_px=16).std() < 0.02


def test_read_image_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="gone.png: file not found"):
        read_image(tmp_path / "gone.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.png: empty file \(0 bytes\)"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.png: not a readable image"):
        read_image(tmp_path / "junk.png")
    path = _png(tmp_path / "ok.png", 0)
    with pytest.raises(ConfigError):
        read_image(path, channels=2)


def test_read_images_stacks_a_mixed_dataset(tmp_path: Path) -> None:
    dataset = load_image_dataset(_class_folders(tmp_path / "ds"), progress=False)
    batch = read_images(dataset.records, size_px=12, channels=3, progress=False)
    assert batch.shape == (6, 3, 12, 12) and batch.dtype == np.float32
