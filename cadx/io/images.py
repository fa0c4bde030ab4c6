"""Read 2D image datasets for classification (ultrasound, photographs, X-ray exports).

Two layouts are accepted by :func:`load_image_dataset`:

* a folder with one sub-folder per class, e.g. ``benign/`` and ``malignant/``. Labels follow
  the class order: sorted names, except that a two-class dataset whose names say which class
  is the negative one (``benign``, ``normal``, ``negative``, ``healthy``, ``control``) or the
  positive one (``malignant``, ``cancer``, ``positive``, ``tumour``/``tumor``, ``abnormal``)
  puts the negative class first, so label 1 is always the disease (``cancer`` vs ``normal``
  sorted would otherwise make ``normal`` the positive class). The patient id of a file is its
  name up to the last ``_`` (``US0001_2.png`` -> ``US0001``); a name without ``_`` is a patient
  of its own. Only image files directly inside a class folder count; other files, lesion
  masks (``*_mask*``, ``mask_*``) and ``mask/`` or ``masks/`` folders are ignored.
* a CSV manifest with columns ``path, patient_id, label`` and optionally ``split`` (``train``,
  ``validation`` or ``test``; blank = not given). Paths are relative to the CSV's folder
  (absolute paths are kept); labels are class indices 0..K-1 (1 = malignant for binary data).
  Optional columns: ``mask`` (a lesion mask file, for Grad-CAM checks), ``fold`` (a
  cross-validation fold, e.g. the dataset authors'), and any others (``device``,
  ``histology``...), kept per image for subgroup reports.

Every file is checked up front (present, non-empty, decodable by PIL); all unreadable files are
reported in one error. A patient whose images carry different labels, or different explicit
splits, is refused: images of one patient must never straddle a train/test boundary.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from rich.progress import track

from cadx.errors import ConfigError, InputError, SplitError
from cadx.train.splits import assert_disjoint, split_patients

__all__ = [
    "IMAGE_SUFFIXES", "ImageDataset", "ImageRecord", "assign_splits", "check_patient_splits",
    "find_duplicate_images", "fold_splits", "load_image_dataset", "patient_id_from_filename",
    "read_image", "read_images",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "training": "train",
                  "testing": "test"}
_NEGATIVE_NAMES = {"benign", "normal", "negative", "healthy", "control"}
_POSITIVE_NAMES = {"malignant", "cancer", "positive", "tumour", "tumor", "abnormal"}
_CSV_COLUMNS = ("path", "patient_id", "label")
# Folders of lesion masks beside the class folders: never a class.
_MASK_FOLDERS = {"mask", "masks"}
_SHOW = 5  # problems quoted in one error message


@dataclass(frozen=True)
class ImageRecord:
    """One image: its file, patient, class index, optional split and file-content hash; from a
    manifest also its lesion mask file, its cross-validation fold and any other columns
    (`attributes`, e.g. device or histology, for subgroup reports)."""

    path: Path
    patient_id: str
    label: int
    split: str | None = None
    sha256: str = ""
    mask: Path | None = None
    fold: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    line: int | None = None

    def attribute(self, name: str) -> str | None:
        """The value of manifest column `name` for this image, or None."""
        return dict(self.attributes).get(name)


@dataclass(frozen=True)
class ImageDataset:
    """The images of a dataset and the class of each label: ``class_names[label]``."""

    records: tuple[ImageRecord, ...]
    class_names: tuple[str, ...]
    source: Path

    @property
    def positive_class(self) -> str | None:
        """Name of label 1 (the disease) for two-class data; None otherwise."""
        return self.class_names[1] if len(self.class_names) == 2 else None

    @property
    def patient_ids(self) -> tuple[str, ...]:
        """Distinct patient ids, sorted."""
        return tuple(sorted({r.patient_id for r in self.records}))

    def __len__(self) -> int:
        return len(self.records)


def patient_id_from_filename(path: str | Path) -> str:
    """Patient id of a file in a class folder: the name's stem up to its last ``_``."""
    stem = Path(path).stem
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def load_image_dataset(source: str | Path, progress: bool = True) -> ImageDataset:
    """List and validate the images of a class-folder dataset or a CSV manifest.

    Returns an :class:`ImageDataset` whose records carry the SHA-256 of each file. Raises
    InputError for a missing source, a bad layout or CSV, unreadable images (all listed in
    one message) or a patient with images of different labels, and SplitError for a patient
    whose images have different explicit splits.
    """
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: dataset not found")
    if source.is_dir():
        records, class_names = _from_class_folders(source)
        root = source
    elif source.suffix.lower() == ".csv":
        records, class_names = _from_csv(source)
        root = source.parent
    else:
        raise InputError(f"{source}: expected a folder with one sub-folder per class "
                         "or a .csv manifest (path, patient_id, label[, split])")
    where = {r.path: f"{source.name} line {r.line}: " for r in records if r.line is not None}
    hashes = _validate_files([r.path for r in records], root, progress, where)
    records = [replace(r, sha256=hashes[r.path]) for r in records]
    _check_patient_labels(records, class_names, root, source)
    check_patient_splits(records)
    _check_patient_folds(records, source)
    return ImageDataset(tuple(records), class_names, source)


def _check_patient_folds(records: Sequence[ImageRecord], source: Path) -> None:
    """SplitError if one patient's images sit in different cross-validation folds."""
    folds: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.fold is not None:
            folds[record.patient_id].add(record.fold)
    spanning = sorted(pid for pid, names in folds.items() if len(names) > 1)
    if spanning:
        raise SplitError(f"{source}: {len(spanning)} patient(s) have images in different folds "
                         f"(e.g. {spanning[0]}: folds {', '.join(sorted(folds[spanning[0]]))}); "
                         "folds must be patient-level")


def _class_order(names: list[str]) -> tuple[str, ...]:
    """Sorted class names; two classes with a recognisable negative/positive name: neg first."""
    ordered = sorted(names)
    if len(ordered) == 2:
        first, second = (n.lower() for n in ordered)
        if first in _POSITIVE_NAMES or second in _NEGATIVE_NAMES:
            ordered.reverse()
    return tuple(ordered)


def _is_image_file(path: Path) -> bool:
    """An image of the dataset: not hidden, an image suffix, and not a lesion mask saved
    beside it (``*_mask*``, ``mask_*``)."""
    name = path.name.lower()
    is_mask = "_mask" in name or name.startswith("mask_") or name.startswith("mask.")
    return path.is_file() and not name.startswith(".") and not is_mask and \
        path.suffix.lower() in IMAGE_SUFFIXES


def _from_class_folders(root: Path) -> tuple[list[ImageRecord], tuple[str, ...]]:
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
               and p.name.lower() not in _MASK_FOLDERS]
    if len(folders) < 2:
        found = ", ".join(p.name for p in folders) or "none"
        raise InputError(f"{root}: found {len(folders)} class folder(s) ({found}); need at "
                         "least two, one sub-folder of images per class")
    class_names = _class_order([p.name for p in folders])
    records = []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (root / name).iterdir() if _is_image_file(p))
        if not files:
            raise InputError(f"{root / name}: class folder '{name}' holds no images "
                             f"({', '.join(IMAGE_SUFFIXES)})")
        records += [ImageRecord(p, patient_id_from_filename(p), label) for p in files]
    return records, class_names


def _from_csv(csv_path: Path) -> tuple[list[ImageRecord], tuple[str, ...]]:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [(c or "").strip().lower() for c in reader.fieldnames or []]
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{csv_path}: unreadable CSV ({exc})") from None
    missing = [c for c in _CSV_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{csv_path}: missing column(s) {', '.join(missing)}; need "
                         "path, patient_id, label[, split]")
    if not rows:
        raise InputError(f"{csv_path}: lists no images")
    records, problems, first_line = [], [], {}
    for line_no, raw in rows:
        row = {(k or "").strip().lower(): v.strip() for k, v in raw.items() if isinstance(v, str)}
        record, problem = _csv_record(row, csv_path.parent)
        if record is not None and record.path in first_line:
            problem = f"path listed again (first on line {first_line[record.path]})"
        if problem:
            problems.append(f"line {line_no}: {problem}")
            continue
        first_line[record.path] = line_no
        records.append(replace(record, line=line_no))
    if problems:
        raise InputError(f"{csv_path}: {len(problems)} bad row(s): {_summary(problems)}")
    labels = sorted({r.label for r in records})
    if len(labels) < 2:
        raise InputError(f"{csv_path}: every image has label {labels[0]}; need at least two "
                         "classes (0 = benign, 1 = malignant)")
    absent = sorted(set(range(labels[-1] + 1)) - set(labels))
    if absent:
        raise InputError(f"{csv_path}: labels must be class indices 0..{labels[-1]} but no image "
                         f"has label {', '.join(map(str, absent))}")
    return records, tuple(str(i) for i in range(labels[-1] + 1))


def _csv_record(row: dict[str, str], folder: Path) -> tuple[ImageRecord | None, str]:
    """One manifest row as a record, or the reason it is not one."""
    if not row.get("path"):
        return None, "empty path"
    if not row.get("patient_id"):
        return None, "empty patient_id"
    label = row.get("label", "")
    if not label.isdecimal():
        return None, f"label {label!r} is not a class index (an integer >= 0)"
    split = row.get("split", "").lower()
    split = _SPLIT_ALIASES.get(split, split) or None
    if split is not None and split not in SPLITS:
        return None, f"split {row['split']!r} is not one of {', '.join(SPLITS)} (or blank)"
    mask = folder / row["mask"] if row.get("mask") else None
    attributes = tuple((k, v) for k, v in row.items()
                       if k not in _CSV_COLUMNS + ("split", "mask", "fold") and k)
    return ImageRecord(folder / row["path"], row["patient_id"], int(label), split,
                       mask=mask, fold=row.get("fold") or None, attributes=attributes), ""


def _inspect_file(path: Path) -> tuple[str, str]:
    """(SHA-256 of the file, "") for a decodable image, else ("", what is wrong)."""
    if not path.exists():
        return "", "missing"
    if not path.is_file():
        return "", "not a file"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "", f"unreadable ({exc.strerror or exc})"
    if not data:
        return "", "empty file (0 bytes)"
    try:
        # verify() checks the container (PNG chunk checksums), load() decodes the pixels: a
        # truncated JPEG passes the first and fails the second. PIL raises many exception
        # types on bad data (OSError, SyntaxError, ValueError, struct.error...).
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as exc:  # any decoder failure means "not readable"
        return "", _decode_problem(exc)
    return hashlib.sha256(data).hexdigest(), ""


def _decode_problem(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):  # its text names an anonymous buffer
        return "not a readable image (unknown format)"
    return f"not a readable image ({type(exc).__name__}: {exc})"


def _summary(problems: Sequence[str]) -> str:
    """The first few problems, then how many more."""
    more = f"; and {len(problems) - _SHOW} more" if len(problems) > _SHOW else ""
    return "; ".join(problems[:_SHOW]) + more


def _shown(path: Path, root: Path) -> str:
    """A path relative to the dataset root when it lies inside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _validate_files(paths: Sequence[Path], root: Path, progress: bool,
                    where: dict[Path, str] | None = None) -> dict[Path, str]:
    """SHA-256 per path; InputError listing every missing, empty or undecodable file (each
    prefixed by `where[path]`, e.g. the manifest line that lists it)."""
    hashes, problems = {}, []
    where = where or {}
    for path in track(paths, description="checking images",
                      disable=not progress or len(paths) < 200):
        digest, problem = _inspect_file(path)
        if problem:
            problems.append(f"{where.get(path, '')}{_shown(path, root)}: {problem}")
        hashes[path] = digest
    if problems:
        raise InputError(f"{root}: {len(problems)} of {len(paths)} image file(s) unreadable: "
                         f"{_summary(problems)}")
    return hashes


def _check_patient_labels(records: Sequence[ImageRecord], class_names: tuple[str, ...],
                          root: Path, source: Path) -> None:
    """InputError if any patient's images carry different labels."""
    by_patient: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_patient[record.patient_id].append(record)
    mixed = sorted(pid for pid, recs in by_patient.items() if len({r.label for r in recs}) > 1)
    if mixed:
        recs = by_patient[mixed[0]]
        example = ", ".join(f"{_shown(r.path, root)} ({class_names[r.label]})"
                            for r in sorted(recs, key=lambda r: r.label)[:4])
        raise InputError(f"{source}: {len(mixed)} patient(s) have images with different labels "
                         f"({', '.join(mixed[:_SHOW])}); e.g. {mixed[0]}: {example}")


def check_patient_splits(records: Iterable[ImageRecord]) -> None:
    """Raise SplitError if one patient's images carry different explicit ``split`` values.

    Images without a split (None) are not compared.
    """
    records = list(records)
    parts: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.split is not None:
            parts[record.split].add(record.patient_id)
    try:
        assert_disjoint({name: sorted(ids) for name, ids in parts.items()})
    except SplitError as exc:
        splits_of: dict[str, set[str]] = defaultdict(set)
        for record in records:
            if record.split is not None:
                splits_of[record.patient_id].add(record.split)
        patient = min(pid for pid, names in splits_of.items() if len(names) > 1)
        files = ", ".join(f"{r.path.name} ({r.split})" for r in records
                          if r.patient_id == patient and r.split is not None)
        raise SplitError(f"{exc}; {patient}: {files}") from None


def assign_splits(records: Sequence[ImageRecord], validation_fraction: float,
                  test_fraction: float, seed: int) -> tuple[ImageRecord, ...]:
    """Records with a train/validation/test split, always at patient level.

    If every record has an explicit split it is kept (after :func:`check_patient_splits`); if
    none has one, patients are split with :func:`cadx.train.splits.split_patients`, stratified
    by label != 0; a mixture is refused (SplitError).
    """
    given = sum(r.split is not None for r in records)
    if given == len(records):
        check_patient_splits(records)
        return tuple(records)
    if given:
        raise SplitError(f"{given} of {len(records)} images have a split value and "
                         f"{len(records) - given} do not; give every image a split or none")
    label_of: dict[str, int] = {}
    for record in records:
        if label_of.setdefault(record.patient_id, record.label) != record.label:
            raise InputError(f"{record.path}: patient {record.patient_id} has images with "
                             "different labels")
    patients = sorted(label_of)
    split = split_patients(patients, [label_of[p] != 0 for p in patients],
                           validation_fraction, test_fraction, seed)
    return tuple(replace(r, split=split.part_of(r.patient_id)) for r in records)


def fold_splits(records: Sequence[ImageRecord], test_fold: str, validation_fraction: float,
                seed: int) -> tuple[ImageRecord, ...]:
    """Records split for one round of cross-validation on the manifest's `fold` column: the
    patients of `test_fold` are the test set, the others are split (patient level, stratified,
    seeded) into train and validation. Explicit `split` values are ignored."""
    folds = sorted({r.fold for r in records if r.fold is not None})
    if not folds:
        raise ConfigError("--test-fold needs a manifest with a fold column")
    if test_fold not in folds:
        raise ConfigError(f"test fold {test_fold!r} is not in the manifest (folds: "
                          f"{', '.join(folds)})")
    missing = [r for r in records if r.fold is None]
    if missing:
        raise ConfigError(f"{len(missing)} image(s) have no fold, e.g. {missing[0].path}")
    rest = [replace(r, split=None) for r in records if r.fold != test_fold]
    inner = assign_splits(rest, validation_fraction / (1.0 - 1.0 / len(folds)), 0.0, seed)
    test = [replace(r, split="test") for r in records if r.fold == test_fold]
    return (*inner, *test)


def find_duplicate_images(records: Iterable[ImageRecord]) -> list[tuple[ImageRecord,
                                                                        ImageRecord]]:
    """Pairs of byte-identical files (same SHA-256) in different patients or different splits.

    Such pairs leak between patients or splits; the caller decides whether to warn or refuse.
    Records without a hash are hashed from their file. Identical files of one patient within
    one split are not reported.
    """
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        digest = record.sha256 or hashlib.sha256(_read_bytes(record.path)).hexdigest()
        groups[digest].append(record)
    pairs = []
    for group in groups.values():
        group.sort(key=lambda r: str(r.path))
        for i, first in enumerate(group):
            pairs += [(first, second) for second in group[i + 1:]
                      if first.patient_id != second.patient_id or first.split != second.split]
    return pairs


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if not data:
        raise InputError(f"{path}: empty file (0 bytes)")
    return data


def _pixels(image: Image.Image, channels: int) -> np.ndarray:
    """(H, W, channels) float32 in 0..1 from any PIL mode (8/16-bit, float, palette, alpha)."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if image.mode == "F":
            lo, hi = float(values.min()), float(values.max())
            if lo < 0.0 or hi > 1.0:  # float images carry no scale: stretch to 0..1
                values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        else:  # 16-bit grayscale (Pillow opens 16-bit PNG/TIFF as I;16 or I)
            values = np.clip(values / 65535.0, 0.0, 1.0)
        gray = values[..., None]
        return np.repeat(gray, channels, axis=-1) if channels == 3 else gray
    values = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    return (values / 255.0).reshape(values.shape[0], values.shape[1], channels)


def read_image(path: str | Path, size_px: int | None = None, channels: int = 1) -> np.ndarray:
    """Read a 2D image as float32 (channels, H, W) in 0..1.

    ``channels`` 1 converts colour to luma (ITU-R 601), 3 repeats grayscale into RGB; alpha is
    dropped. With ``size_px`` the image is resized to (size_px, size_px), without keeping the
    aspect ratio, by PIL's bilinear filter, which widens with the reduction factor (so it
    antialiases when downsizing). InputError for a missing, empty or undecodable file.
    """
    return _decode(Path(path), size_px, channels, with_alpha=False)[0]


def read_image_with_alpha(path: str | Path,
                          channels: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a 2D image once for both its pixels and its transparency: (the float32
    (channels, H, W) array in 0..1 that `read_image` gives at the file's own size, the
    (H, W) uint8 alpha channel, or None for a file without transparency or whose transparency
    PIL cannot convert). InputError for a missing, empty or undecodable file."""
    return _decode(Path(path), None, channels, with_alpha=True)


def _decode(path: Path, size_px: int | None, channels: int,
            with_alpha: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(channels, H, W) pixels (resized if `size_px`) and, if asked for and present, the
    (H, W) alpha of one file, from one read and one decode."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    if size_px is not None and size_px < 1:
        raise ConfigError(f"size_px must be >= 1, got {size_px}")
    data = _read_bytes(path)
    alpha = None
    try:
        with Image.open(io.BytesIO(data)) as image:
            # Asked of the mode and tRNS chunk the file declares, before decoding.
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            image.load()
            pixels = _pixels(image, channels)
            if with_alpha and has_alpha:
                alpha = _alpha(image)
    except Exception as exc:  # PIL's decoders raise many exception types
        raise InputError(f"{path}: {_decode_problem(exc)}") from None
    return _resized(pixels, size_px), alpha


def _alpha(image: Image.Image) -> np.ndarray | None:
    try:
        return np.asarray(image.convert("RGBA"))[..., 3]
    except Exception:  # a mode PIL cannot give alpha for: the pixels are still an image
        return None


def _resized(pixels: np.ndarray, size_px: int | None) -> np.ndarray:
    """(H, W, C) in 0..1 -> (C, size_px, size_px) float32 by PIL's bilinear filter."""
    channels = pixels.shape[-1]
    if size_px is not None and pixels.shape[:2] != (size_px, size_px):
        pixels = np.stack([
            np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c]))
                       .resize((size_px, size_px), Image.Resampling.BILINEAR))
            for c in range(channels)], axis=-1)
    return np.ascontiguousarray(np.clip(pixels, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32)


def fit_image(image: np.ndarray, size_px: int, channels: int = 1) -> np.ndarray:
    """An in-memory image, (H, W), (H, W, 3) or (C, H, W) with C in 1, 3 (values in 0..1, or
    0..255 for integer arrays), converted as `read_image` converts a file (same resize filter,
    same ITU-R 601 grey weights): float32 (channels, size_px, size_px)."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3) or min(array.shape[:2]) < 1:
        raise InputError(f"expected a 2D grey or RGB image, got an array of shape {image.shape}")
    pixels = array.astype(np.float32) / (255.0 if np.issubdtype(array.dtype, np.integer) else 1.0)
    if pixels.shape[-1] != channels:
        pixels = (np.repeat(pixels, 3, axis=-1) if channels == 3 else
                  (pixels @ np.array([0.299, 0.587, 0.114], np.float32))[..., None])
    return _resized(pixels, size_px)


def read_images(records: Sequence[ImageRecord], size_px: int, channels: int = 1,
                progress: bool = True) -> np.ndarray:
    """Read and resize every record's image: float32 (N, channels, size_px, size_px)."""
    out = np.empty((len(records), channels, size_px, size_px), dtype=np.float32)
    for i, record in enumerate(track(records, description="reading images",
                                     disable=not progress or len(records) < 200)):
        out[i] = read_image(record.path, size_px, channels)
    return out


def read_lesion_masks(records: Sequence[ImageRecord], size_px: int) -> np.ndarray:
    """Each record's lesion mask (its `mask` file) resized as `read_images` resizes the image:
    float32 (N, size_px, size_px) in 0..1, all NaN for a record without a mask."""
    out = np.full((len(records), size_px, size_px), np.nan, dtype=np.float32)
    for i, record in enumerate(records):
        if record.mask is not None:
            out[i] = read_image(record.mask, size_px, 1)[0]
    return out
