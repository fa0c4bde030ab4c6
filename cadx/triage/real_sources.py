"""The real frames of each triage category found in a data folder (issue 19), with the patient
(or source) each belongs to, so that splits never share a patient.

Known public layouts (as in ``../shared/data``, see its README):

* ``us-breast``: ``busbra/Images/*.jpg``; patient = ``Case`` of ``busbra/bus_data.csv``;
* ``us-thyroid``: ``ddti-thyroid-crops/cropped/*.png``; patient = the DDTI case ``N`` of
  ``N_k(j).png``;
* ``us-adnexa``: ``mmotu-otu2d/<class>/images/*.JPG``; no patient ids are published, so each
  image is its own case (said in the report). Colour-Doppler frames are recognised by their
  red/blue flow pixels (:func:`doppler_pixel_fraction`);
* ``ct-abdomen``: axial slices of ``totalseg-example-ct/tests/reference_files/example_ct.nii.gz``
  (one real abdominal CT) rendered in the soft-tissue window, level 40 HU, width 400 HU
  (:data:`CT_WINDOW_HU`), patient's right on the image's left, anterior up.

A plain layout works too: a folder named after a category (``us-breast/``, ``ct-abdomen/``, ...)
holding images (patient id = file name up to the last ``_``) or, for CT, NIfTI volumes (one
patient each). Real CT here is one patient, so its slices are split into train / validation /
test by slabs of :data:`CT_SLAB` slices with a one-slice gap at each slab's edges: held-out CT
frames are other levels of a seen patient, not an unseen patient.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from cadx.errors import InputError
from cadx.io.images import IMAGE_SUFFIXES, patient_id_from_filename, read_image

REAL_CATEGORIES = ("ct-abdomen", "us-thyroid", "us-breast", "us-adnexa")
CT_WINDOW_HU = (40.0, 400.0)  # level, width: the soft-tissue window of the phantom slices
CT_SLAB = 10
MIN_IMAGES = 20
SPLITS = ("train", "validation", "test")
DOPPLER_FRACTION = 0.002  # red/blue flow pixels: at least this share = a colour-Doppler frame
BMODE_FRACTION = 0.001  # below this = plain B-mode; in between = unclear, left out of QC
_SHOW = 3


@dataclass(frozen=True)
class Frame:
    """One real (or synthetic) frame: a stable `key` (cache and report name), its category,
    source data set, patient, split, and how to load it as (H, W, 3) float in 0..1."""

    key: str
    category: str
    source: str
    patient_id: str
    load: Callable[[], np.ndarray]
    path: Path | None = None
    split: str | None = None
    doppler: bool | None = False  # None: some colour, neither clearly B-mode nor Doppler


@dataclass
class RealSources:
    """The frames of every category found, the categories absent (with why), and notes."""

    frames: dict[str, list[Frame]]
    absent: dict[str, str]
    notes: list[str]


def _file_loader(path: Path) -> Callable[[], np.ndarray]:
    return lambda: read_image(path, None, 3).transpose(1, 2, 0)


def doppler_pixel_fraction(path: Path) -> float:
    """Share of red- or blue-dominant pixels (flow colours; yellow calipers and white text
    do not count) in a 200 px thumbnail of the image."""
    with Image.open(path) as image:
        image.draft("RGB", (200, 200))
        image = image.convert("RGB")
        image.thumbnail((200, 200))
        rgb = np.asarray(image, dtype=np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    flow = (r - np.maximum(g, b) > 70) | (b - np.maximum(r, g) > 70)
    return float(flow.mean())


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _busbra(root: Path) -> list[Frame]:
    table = root / "bus_data.csv"
    if not table.is_file():
        raise InputError(f"{table}: BUS-BRA table not found (needs ID and Case columns)")
    with table.open(newline="", encoding="utf-8-sig") as handle:
        case = {row["ID"]: row["Case"] for row in csv.DictReader(handle)}
    frames = []
    for path in _images_in(root / "Images"):
        if path.stem in case:
            frames.append(Frame(f"busbra/{path.name}", "us-breast", "BUS-BRA",
                                f"busbra-{case[path.stem]}", _file_loader(path), path))
    return frames


def _ddti(root: Path) -> list[Frame]:
    frames = []
    for path in _images_in(root / "cropped"):
        match = re.match(r"(\d+)_", path.name)
        patient = match.group(1) if match else path.stem
        frames.append(Frame(f"ddti/{path.name}", "us-thyroid", "DDTI", f"ddti-{patient}",
                            _file_loader(path), path))
    return frames


def _mmotu(root: Path) -> list[Frame]:
    frames = []
    for path in sorted(root.glob("*/images/*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        frames.append(Frame(f"mmotu/{path.parent.parent.name}/{path.name}", "us-adnexa",
                            "MMOTU", f"mmotu-{path.parent.parent.name}-{path.stem}",
                            _file_loader(path), path, doppler=None))
    return frames


def render_ct_slice(hu: np.ndarray, window_hu: tuple[float, float] = CT_WINDOW_HU
                    ) -> np.ndarray:
    """A (rows, cols) HU slice in a window (level, width) -> (rows, cols, 3) in 0..1."""
    level, width = window_hu
    grey = np.clip((np.asarray(hu, np.float64) - (level - width / 2)) / width, 0, 1)
    return np.repeat(grey[..., None], 3, axis=-1)


def _ct_volume(path: Path, source: str, patient_id: str) -> list[Frame]:
    """Axial slices of a NIfTI CT (any orientation, reoriented to RAS) as frames; slices with
    under 5 % body (above -500 HU) are left out."""
    import nibabel as nib

    try:
        volume = nib.as_closest_canonical(nib.load(str(path)))
        hu = np.asarray(volume.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for a broken file
        raise InputError(f"{path}: not a readable NIfTI CT ({exc})") from None
    if hu.ndim != 3:
        raise InputError(f"{path}: expected a 3D CT volume, got shape {hu.shape}")
    frames = []
    for z in range(hu.shape[2]):
        # RAS: +i to the patient's right, +j anterior; show right on the left, anterior up.
        axial = hu[::-1, ::-1, z].T
        if (axial > -500).mean() < 0.05:
            continue
        slab, offset = divmod(z, CT_SLAB)
        if offset in (0, CT_SLAB - 1):
            continue  # the gap between slabs: neighbouring slices look alike
        split = ("train", "validation", "train", "test", "train")[slab % 5]
        frames.append(Frame(f"{source}/{path.name}#z{z:03d}", "ct-abdomen", source,
                            f"{patient_id}-slab{slab:02d}",
                            (lambda a=axial: render_ct_slice(a)), path, split=split))
    return frames


def _plain_folder(folder: Path, category: str) -> list[Frame]:
    frames = []
    for path in _images_in(folder):
        frames.append(Frame(f"{folder.name}/{path.relative_to(folder).as_posix()}", category,
                            folder.name, f"{category}-{patient_id_from_filename(path)}",
                            _file_loader(path), path))
    if category == "ct-abdomen":
        for path in sorted([*folder.glob("*.nii.gz"), *folder.glob("*.nii")]):
            stem = path.name.split(".")[0]
            frames += _ct_volume(path, folder.name, f"ct-{stem}")
    return frames


_KNOWN = {
    "us-breast": ("busbra", _busbra),
    "us-thyroid": ("ddti-thyroid-crops", _ddti),
    "us-adnexa": ("mmotu-otu2d", _mmotu),
}
_TOTALSEG_CT = "totalseg-example-ct/tests/reference_files/example_ct.nii.gz"


def find_real_sources(data_root: str | Path) -> RealSources:
    """Every real frame of each category under `data_root`; InputError if the folder is
    missing or holds no category at all."""
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(f"{root}: data folder not found")
    frames: dict[str, list[Frame]] = {}
    absent: dict[str, str] = {}
    for category in REAL_CATEGORIES:
        found: list[Frame] = []
        looked = [f"{category}/"]
        if (root / category).is_dir():
            found += _plain_folder(root / category, category)
        if category in _KNOWN:
            folder, reader = _KNOWN[category]
            looked.append(f"{folder}/")
            if (root / folder).is_dir():
                found += reader(root / folder)
        else:
            looked.append(_TOTALSEG_CT)
            if (root / _TOTALSEG_CT).is_file():
                found += _ct_volume(root / _TOTALSEG_CT, "totalseg-example-ct", "totalseg")
        if found:
            frames[category] = found
        else:
            absent[category] = f"no {' or '.join(looked)} in {root}"
    if not frames:
        raise InputError(f"{root}: no real images of any category ({', '.join(REAL_CATEGORIES)})"
                         "; expected busbra/, ddti-thyroid-crops/, mmotu-otu2d/, "
                         "totalseg-example-ct/ or folders named after the categories")
    return RealSources(frames, absent, [])


def check_counts(sources: RealSources, minimum: int = MIN_IMAGES) -> None:
    """InputError naming each category with fewer than `minimum` real images (and its count)."""
    small = {c: len(f) for c, f in sources.frames.items() if len(f) < minimum}
    if small:
        raise InputError("too few real images to learn a category (at least "
                         f"{minimum} each): " + ", ".join(f"{c} has {n}"
                                                          for c, n in small.items()))


def check_cross_category_duplicates(sources: RealSources) -> None:
    """InputError with examples when one file (same bytes) sits in two categories."""
    seen: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for category, frames in sources.frames.items():
        for path in {f.path for f in frames if f.path is not None and f.path.suffix != ".gz"}:
            digest = hashlib.sha1(path.read_bytes()).hexdigest()
            seen[digest].append((category, path))
    clashes = [entries for entries in seen.values()
               if len({category for category, _ in entries}) > 1]
    if clashes:
        examples = "; ".join(" = ".join(f"{p} ({c})" for c, p in entries[:2])
                             for entries in clashes[:_SHOW])
        raise InputError(f"{len(clashes)} image(s) appear in more than one category, e.g. "
                         f"{examples}; remove them from all but one")


def split_by_patient(frames: Sequence[Frame], fractions: tuple[float, float, float],
                     seed: int) -> list[Frame]:
    """`frames` with a split each, at patient level (frames that already have one keep it)."""
    patients = sorted({f.patient_id for f in frames if f.split is None})
    order = np.random.default_rng(seed).permutation(len(patients))
    n_val = max(1, round(fractions[1] * len(patients)))
    n_test = max(1, round(fractions[2] * len(patients)))
    split_of = {}
    for rank, index in enumerate(order):
        split_of[patients[index]] = ("validation" if rank < n_val else
                                     "test" if rank < n_val + n_test else "train")
    return [f if f.split is not None else replace(f, split=split_of[f.patient_id])
            for f in frames]


def cap_per_split(frames: Sequence[Frame], cap: int, seed: int) -> list[Frame]:
    """At most `cap` frames, taken by whole patients in random order, keeping each split's
    share."""
    if len(frames) <= cap:
        return list(frames)
    by_patient: dict[str, list[Frame]] = defaultdict(list)
    for frame in frames:
        by_patient[frame.patient_id].append(frame)
    counts = Counter(f.split for f in frames)
    rng = np.random.default_rng(seed)
    kept: list[Frame] = []
    for split in SPLITS:
        budget = round(cap * counts[split] / len(frames))
        patients = sorted(p for p, fs in by_patient.items() if fs[0].split == split)
        taken = 0
        for index in rng.permutation(len(patients)):
            if taken >= budget:
                break
            kept += by_patient[patients[index]]
            taken += len(by_patient[patients[index]])
    return kept
