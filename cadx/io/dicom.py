"""Read DICOM image series (a folder of slices, or datasets from a PACS) into a `Case` in HU.

Files are grouped by SeriesInstanceUID and sorted by their position along the slice normal
(ImagePositionPatient . (row x column cosines)), never by file name or InstanceNumber. Stored
values become HU (or MR units) through each slice's RescaleSlope/Intercept; the slice spacing
comes from the positions. Pixel data are decoded by pydicom with whatever codecs are installed
(pylibjpeg, pylibjpeg-libjpeg/-openjpeg, pyjpegls, or GDCM): a transfer syntax none of them
handles is refused with its name and the package that would decode it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from cadx.case import Case
from cadx.errors import EmptyMaskError, GeometryError, InputError
from cadx.io.limits import VolumeLimits, check_spacing, check_voxel_count
from cadx.io.volumes import Geometry, check_same_geometry, read_volume

IMAGE_MODALITIES = ("CT", "MR")
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_TUMOUR_WORDS = ("tumo", "lesion", "neoplas", "cancer", "carcinoma", "mass", "metasta")


@dataclass(frozen=True)
class SeriesAdvice:
    """What an error about the choice of series tells its reader to do: a command-line user
    can name the series (`--series`), a service user can only upload something else."""

    tie: str  # several series fit the selection rules equally well
    none_fits: str  # no series fits them (or every one that does is a mask)
    split: str  # one series holds several acquisitions (slices sharing a position)


CLI_SERIES_ADVICE = SeriesAdvice(tie="choose one with --series UID",
                                 none_fits="choose one with --series UID",
                                 split="choose one with --series or split the series")


@dataclass
class SeriesInfo:
    """One series' instances (headers, maybe with pixels) and what selection needs to know."""

    series_uid: str
    datasets: list[Dataset]

    def _first(self, keyword: str, default: object = "") -> object:
        return self.datasets[0].get(keyword, default)

    @property
    def modality(self) -> str:
        return str(self._first("Modality", ""))

    @property
    def patient_id(self) -> str:
        return str(self._first("PatientID", ""))

    @property
    def study_uid(self) -> str:
        return str(self._first("StudyInstanceUID", ""))

    @property
    def description(self) -> str:
        return str(self._first("SeriesDescription", ""))

    @property
    def image_type(self) -> tuple[str, ...]:
        value = self._first("ImageType", None)
        if value is None:
            return ()
        return (str(value),) if isinstance(value, str) else tuple(str(v) for v in value)

    @property
    def orientation(self) -> str:
        """'axial', 'coronal', 'sagittal', 'oblique' or 'unknown' (from the slice normal)."""
        iop = self._first("ImageOrientationPatient", None)
        if iop is None or len(iop) != 6:
            return "unknown"
        normal = np.abs(np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float)))
        if normal.max() < 0.8:
            return "oblique"
        return ("sagittal", "coronal", "axial")[int(np.argmax(normal))]

    def rejection(self) -> str | None:
        """Why this series is not a volume cadx scores (None if it fits the rules)."""
        if self.modality not in IMAGE_MODALITIES:
            return f"modality {self.modality or '?'}"
        if self.image_type[:2] and tuple(v.upper() for v in self.image_type[:2]) != (
                "ORIGINAL", "PRIMARY"):
            return f"image type {'/'.join(self.image_type[:3])}"
        if "LOCALIZER" in (v.upper() for v in self.image_type):
            return "a localizer"
        if self.orientation != "axial":
            return f"{self.orientation} orientation"
        if len(self.datasets) < 2:
            return "a single slice"
        return None

    def describe(self) -> str:
        kind = "/".join(self.image_type[:3]) or "no image type"
        return (f"{self.series_uid} ({self.modality or '?'}, {len(self.datasets)} instances, "
                f"{kind}, {self.orientation}, '{self.description}')")


@dataclass
class FolderScan:
    """The series found in a folder and the files that could not be read as DICOM."""

    folder: Path
    series: list[SeriesInfo]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def is_dicom_path(path: str | Path) -> bool:
    """True for a folder, a `.dcm` file or a file with the DICM preamble."""
    path = Path(path)
    if path.is_dir():
        return True
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def group_series(datasets: list[Dataset]) -> list[SeriesInfo]:
    """Group instances by SeriesInstanceUID (series in order of first appearance)."""
    groups: dict[str, list[Dataset]] = defaultdict(list)
    for ds in datasets:
        groups[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    return [SeriesInfo(uid, items) for uid, items in groups.items()]


def scan_folder(folder: str | Path) -> FolderScan:
    """Read the headers of every file under `folder`; unreadable or non-DICOM files are skipped
    and listed. Refuses a folder that mixes patients."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: folder not found")
    paths = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    headers, skipped = [], []
    for path in paths:
        if path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            skipped.append((path, "not a DICOM file"))
            continue
        except Exception as exc:  # pydicom raises many types for damaged files
            skipped.append((path, f"unreadable ({type(exc).__name__})"))
            continue
        if "SOPInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
            skipped.append((path, "no SOP/series instance UID"))
            continue
        headers.append(ds)
    if not headers:
        raise InputError(f"{folder}: no DICOM files found ({len(skipped)} other files skipped)")
    patients = sorted({str(ds.get("PatientID", "")) for ds in headers})
    if len(patients) > 1:
        raise InputError(f"{folder}: holds {len(patients)} patients ({', '.join(patients[:5])}); "
                         "give a folder with one patient's images")
    return FolderScan(folder, group_series(headers), skipped)


def select_series(series: list[SeriesInfo], series_uid: str | None = None,
                  source: str = "", *,
                  not_an_image: Callable[[SeriesInfo], str | None] | None = None,
                  notes: list[str] | None = None,
                  advice: SeriesAdvice = CLI_SERIES_ADVICE) -> SeriesInfo:
    """The series to score: `series_uid` if given, else the CT/MR ORIGINAL/PRIMARY axial
    series with the most slices. Raises InputError listing what was found when none fits,
    and when several series share the most slices (listing them), ending with what `advice`
    says to do (by default: choose with --series).

    `not_an_image(series)`: a look at the pixels, asked only of series that tie for the lead;
    a reason (e.g. binary pixels: a mask exported as CT) sets that series aside, and the
    selection goes on without it. Each series set aside is one line appended to `notes`.
    """
    found = "; ".join(s.describe() for s in series) or "nothing"
    if series_uid is not None:
        for info in series:
            if info.series_uid == series_uid:
                return info
        raise InputError(f"{source}: no series {series_uid}; found {found}")
    candidates = [s for s in series if s.rejection() is None]
    if not candidates:
        reasons = "; ".join(f"{s.series_uid}: {s.rejection()}" for s in series)
        raise InputError(f"{source}: no CT/MR ORIGINAL/PRIMARY axial series with 2 or more "
                         f"slices ({reasons}); {advice.none_fits}")
    set_aside: list[tuple[SeriesInfo, str]] = []
    while True:
        most = max(len(s.datasets) for s in candidates)
        leading = [s for s in candidates if len(s.datasets) == most]
        if len(leading) == 1 or not_an_image is None:
            break
        refused = [(s, why) for s in leading if (why := not_an_image(s)) is not None]
        if not refused:
            break
        set_aside += refused
        candidates = [s for s in candidates if all(s is not r for r, _ in refused)]
        if not candidates:
            reasons = "; ".join(f"{s.series_uid}: {why}" for s, why in set_aside)
            raise InputError(f"{source}: no series holds an image to score ({reasons}); "
                             f"{advice.none_fits}")
    if len(leading) > 1:
        raise InputError(f"{source}: {len(leading)} series tie for selection (CT/MR "
                         f"ORIGINAL/PRIMARY axial, {most} slices each): "
                         f"{'; '.join(s.describe() for s in leading)}; {advice.tie}")
    if notes is not None:
        notes.extend(f"series {s.describe()} not scored: {why}" for s, why in set_aside)
    return leading[0]


def binary_pixels(info: SeriesInfo, n_samples: int = 3) -> str | None:
    """Why a series of files is not an image to score: a few of its slices (quartiles of the
    list) hold two values or fewer together, i.e. a mask (0/255, 0/1) exported as CT/MR; no
    CT or MR slice is that flat. None when its pixels vary, or cannot be read here (decoding
    the series will say why)."""
    n = len(info.datasets)
    picks = sorted({min(n - 1, n * (k + 1) // (n_samples + 1)) for k in range(n_samples)})
    values: set[float] = set()
    for index in picks:
        header = info.datasets[index]
        try:
            ds = pydicom.dcmread(header.filename)
            pixels = ds.pixel_array.astype(np.float64)
        except Exception:  # pydicom and its decoders raise many types for damaged files
            return None
        pixels = (pixels * float(ds.get("RescaleSlope", 1) or 1)
                  + float(ds.get("RescaleIntercept", 0) or 0))
        values.update(np.unique(pixels).tolist())
        if len(values) > 2:
            return None
    shown = ", ".join(f"{v:g}" for v in sorted(values))
    return f"its pixels are binary ({shown} only): a mask, not an image"


def check_decodable(ds: Dataset, source: str) -> None:
    """Raise InputError if the installed codecs cannot decode this dataset's transfer syntax."""
    ts = UID(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1"))
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise InputError(f"{source}: transfer syntax {ts.name} ({ts}) is not supported by "
                         "cadx (no pixel decoder exists for it in pydicom)") from None
    if not decoder.is_available:
        raise InputError(f"{source}: transfer syntax {ts.name} ({ts}) needs a codec that is "
                         f"not installed: {'; '.join(decoder.missing_dependencies)}")


def _header(ds: Dataset) -> Dataset:
    """The dataset without its pixel data (shares the other elements)."""
    header = Dataset({tag: ds[tag] for tag in ds.keys() if tag not in _PIXEL_DATA_TAGS})
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    return header


def _name(ds: Dataset) -> str:
    return str(getattr(ds, "filename", None) or f"instance {ds.get('SOPInstanceUID', '?')}")


def _slice_geometry(datasets: list[Dataset], source: str
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """Row/column cosines, positions (n, 3) and the (row, column) pixel spacing, all checked."""
    for ds in datasets:
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if keyword not in ds:
                raise GeometryError(f"{_name(ds)}: no {keyword}; cannot place the slice")
    iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    if not np.allclose(iops, iops[0], atol=1e-4):
        raise GeometryError(f"{source}: slices of one series have different orientations")
    spacings = np.array([[float(v) for v in ds.PixelSpacing] for ds in datasets])
    if not np.allclose(spacings, spacings[0], rtol=1e-4):
        raise GeometryError(f"{source}: slices of one series have different pixel spacings")
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(shapes) > 1:
        raise GeometryError(f"{source}: slices of one series have different sizes {shapes}")
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    return iops[0, :3], iops[0, 3:], positions, (float(spacings[0, 0]), float(spacings[0, 1]))


def _check_stack(offsets: np.ndarray, in_plane: np.ndarray, pixel_mm: tuple[float, float],
                 tilt_header: object, source: str, advice: SeriesAdvice) -> float:
    """Slice spacing (mm) of a sorted stack; refuses duplicates, gantry tilt and gaps."""
    steps = np.diff(offsets)
    if (steps < 1e-3).any():
        raise GeometryError(f"{source}: {int((steps < 1e-3).sum()) + 1} slices share a position "
                            "(several acquisitions, phases or echoes in one series?); "
                            f"{advice.split}")
    spacing = float(np.median(steps))
    shear = np.linalg.norm(in_plane[-1] - in_plane[0])
    if shear > 0.5 * min(pixel_mm):
        angle = float(np.degrees(np.arctan2(shear, offsets[-1] - offsets[0])))
        stated = f"; GantryDetectorTilt {tilt_header}" if tilt_header is not None else ""
        raise GeometryError(f"{source}: slices are sheared by {angle:.1f} degrees (gantry tilt"
                            f"{stated}); resample to an orthogonal grid first (e.g. dcm2niix)")
    if np.abs(steps - spacing).max() > 0.01 * spacing + 0.01:
        gaps = [f"{offsets[i]:.1f}->{offsets[i + 1]:.1f} mm"
                for i in np.flatnonzero(np.abs(steps - spacing) > 0.01 * spacing + 0.01)]
        raise GeometryError(f"{source}: irregular slice spacing (median {spacing:.3g} mm; "
                            f"{len(gaps)} irregular steps: {', '.join(gaps[:4])}); missing or "
                            "overlapping slices")
    return spacing


def check_series_size(datasets: list[Dataset], source: str,
                      limits: VolumeLimits | None = None) -> None:
    """Refuse a series whose headers (slices x Rows x Columns) exceed the voxel limits, before
    any pixel data are read or decoded."""
    if not datasets:
        return
    rows = max(int(ds.get("Rows", 0) or 0) for ds in datasets)
    columns = max(int(ds.get("Columns", 0) or 0) for ds in datasets)
    if rows == 0 or columns == 0:
        return  # no image size in the headers: decoding will refuse these files
    frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for ds in datasets)
    samples = max(int(ds.get("SamplesPerPixel", 1) or 1) for ds in datasets)
    bits = max(int(ds.get("BitsAllocated", 16) or 16) for ds in datasets)
    check_voxel_count((frames, rows, columns), samples * -(-bits // 8), source, limits)


def case_from_datasets(datasets: list[Dataset], source: str, *,
                       patient_id: str | None = None,
                       limits: VolumeLimits | None = None,
                       advice: SeriesAdvice = CLI_SERIES_ADVICE) -> Case:
    """Stack one series' slices (datasets with pixel data) into a Case in HU (slices that
    share a position are refused with `advice.split`).

    `case.meta['dicom']` holds the UIDs (study, series, frame of reference, SOP instances in
    stack order); `case.meta['dicom_headers']` the pixel-less datasets in the same order, for
    results that reference the source images. `case.meta['geometry']` is the LPS Geometry.
    Slices whose pixel data cannot be decoded (truncated files) are skipped and listed in
    `case.meta['warnings']`; a resulting gap inside the stack is then refused as irregular
    spacing. The headers are checked against `limits` (voxel count, spacing) before decoding.
    """
    if not datasets:
        raise InputError(f"{source}: no instances in the series")
    check_series_size(datasets, source, limits)
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise InputError(f"{source}: multi-frame (enhanced) images are not supported; export "
                         "the series as one file per slice")
    for ds in datasets:
        if not any(tag in ds for tag in _PIXEL_DATA_TAGS):
            raise InputError(f"{_name(ds)}: no pixel data")
        check_decodable(ds, _name(ds))
    slices, kept, undecodable = [], [], []
    for ds in datasets:
        try:
            slices.append(ds.pixel_array)
            kept.append(ds)
        except Exception as exc:  # decoders raise many types for damaged data
            undecodable.append(f"{_name(ds)}: pixel data cannot be decoded "
                               f"({type(exc).__name__}: {str(exc)[:160]})")
    warnings = [f"skipped {line}" for line in undecodable]
    if not kept:
        raise InputError(f"{source}: no slice could be decoded ({undecodable[0]})")
    datasets = kept
    row_cos, col_cos, positions, pixel_mm = _slice_geometry(datasets, source)
    normal = np.cross(row_cos, col_cos)
    offsets = positions @ normal
    order = np.argsort(offsets, kind="stable")
    datasets, slices = [datasets[i] for i in order], [slices[i] for i in order]
    positions, offsets = positions[order], offsets[order]
    in_plane = (positions - positions[0]) @ np.stack([row_cos, col_cos], axis=1)
    if len(datasets) > 1:
        try:
            spacing_z = _check_stack(offsets, in_plane, pixel_mm,
                                     datasets[0].get("GantryDetectorTilt"), source, advice)
        except GeometryError as exc:
            if not undecodable:
                raise
            # The skipped slice is the cause of the gap: name it first.
            more = f" (and {len(undecodable) - 1} more)" if len(undecodable) > 1 else ""
            raise GeometryError(f"{undecodable[0]}{more}; without it, {exc}") from None
    else:
        spacing_z = float(datasets[0].get("SliceThickness", 1.0) or 1.0)
    check_spacing((spacing_z, *pixel_mm), source, limits)
    slopes = np.array([float(ds.get("RescaleSlope", 1) or 1) for ds in datasets], np.float32)
    intercepts = np.array([float(ds.get("RescaleIntercept", 0) or 0) for ds in datasets],
                          np.float32)
    image = np.stack(slices).astype(np.float32)
    if image.ndim != 3:
        raise InputError(f"{source}: expected single-channel slices, got pixel arrays of shape "
                         f"{slices[0].shape}")
    image = image * slopes[:, None, None] + intercepts[:, None, None]
    first = datasets[0]
    # ITK direction: columns are the index axes (x = columns, y = rows, z = slice normal).
    direction = np.stack([row_cos, col_cos, normal], axis=1)
    geometry = Geometry(tuple(image.shape), (spacing_z, pixel_mm[0], pixel_mm[1]),
                        tuple(float(v) for v in positions[0]),
                        tuple(float(v) for v in direction.ravel()))
    meta: dict[str, object] = {
        "dicom": {
            "patient_id": str(first.get("PatientID", "")),
            "study_uid": str(first.StudyInstanceUID),
            "series_uid": str(first.SeriesInstanceUID),
            "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
            "modality": str(first.get("Modality", "")),
            "series_description": str(first.get("SeriesDescription", "")),
            "sop_instance_uids": [str(ds.SOPInstanceUID) for ds in datasets],
        },
        "geometry": geometry,
        "dicom_headers": [_header(ds) for ds in datasets],
        "warnings": warnings,
        "undecodable_files": len(warnings),
    }
    return Case(patient_id=patient_id or str(first.get("PatientID", "")) or Path(source).name,
                image=image, spacing_zyx_mm=geometry.spacing_zyx_mm, source=source, meta=meta)


def read_series_files(info: SeriesInfo) -> list[Dataset]:
    """Read the full files (with pixel data) of a series found by :func:`scan_folder`."""
    datasets = []
    for header in info.datasets:
        try:
            datasets.append(pydicom.dcmread(header.filename))
        except Exception as exc:  # pydicom raises many types for damaged files
            raise InputError(f"{header.filename}: unreadable ({type(exc).__name__}: "
                             f"{str(exc)[:120]})") from None
    return datasets


def _segment_names(seg: Dataset) -> dict[int, str]:
    names = {}
    for item in seg.get("SegmentSequence", []):
        meaning = ""
        if "SegmentedPropertyTypeCodeSequence" in item:
            meaning = str(item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning)
        names[int(item.SegmentNumber)] = f"{item.get('SegmentLabel', '')} ({meaning})"
    return names


def organ_segment_number(seg: Dataset, source: str) -> int:
    """The SEG's organ segment: its only segment, or the only one not named like a tumour."""
    names = _segment_names(seg)
    if len(names) == 1:
        return next(iter(names))
    organs = [n for n, name in names.items()
              if not any(word in name.lower() for word in _TUMOUR_WORDS)]
    if len(organs) != 1:
        listed = ", ".join(f"{n}: {name}" for n, name in names.items())
        raise InputError(f"{source}: cannot tell which segment is the organ ({listed})")
    return organs[0]


def references_series(seg: Dataset, series_uid: str) -> bool:
    """True if a SEG (or any derived object) references `series_uid`."""
    return any(str(item.get("SeriesInstanceUID", "")) == series_uid
               for item in seg.get("ReferencedSeriesSequence", []))


def organ_mask_from_seg(seg: Dataset, case: Case, source: str,
                        limits: VolumeLimits | None = None) -> np.ndarray:
    """The organ segment of a DICOM SEG on the case's slices (it must reference them); its
    frames x Rows x Columns are checked against `limits` before they are decoded."""
    if str(seg.get("Modality", "")) != "SEG":
        raise InputError(f"{source}: not a DICOM Segmentation (modality "
                         f"{seg.get('Modality', '?')})")
    check_series_size([seg], source, limits)
    uids = case.meta["dicom"]["sop_instance_uids"]
    series_uid = case.meta["dicom"]["series_uid"]
    if not references_series(seg, series_uid):
        raise GeometryError(f"{source}: segmentation does not lie on the slices of series "
                            f"{series_uid} (it references another series)")
    number = organ_segment_number(seg, source)
    try:
        segmentation = hd.seg.Segmentation.from_dataset(seg, copy=False)
        pixels = segmentation.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[number],
            assert_missing_frames_are_empty=True)
    except (KeyError, ValueError, AttributeError) as exc:
        raise GeometryError(f"{source}: segmentation does not lie on the slices of series "
                            f"{case.meta['dicom']['series_uid']} ({str(exc)[:160]})") from None
    mask = pixels[..., 0] > 0
    if mask.shape != case.image.shape:
        raise GeometryError(f"{source}: segmentation shape {mask.shape} does not match the "
                            f"image {case.image.shape}")
    if not mask.any():
        raise EmptyMaskError(f"{source}: organ segment {number} is empty")
    return mask


def organ_mask_from_file(path: str | Path, case: Case,
                         limits: VolumeLimits | None = None) -> np.ndarray:
    """An organ mask for a DICOM case from a DICOM SEG or a volume file (NIfTI, NRRD...) on the
    same grid (non-zero = organ); geometry is checked in LPS millimetres."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")):
        try:
            seg = pydicom.dcmread(path)
        except Exception as exc:  # pydicom raises many types for damaged files
            raise InputError(f"{path}: neither a volume file nor readable DICOM "
                             f"({type(exc).__name__})") from None
        return organ_mask_from_seg(seg, case, str(path), limits)
    mask, geometry = read_volume(path, limits=limits)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        geometry = _ras_to_lps(geometry)
    check_same_geometry(case.meta["geometry"], geometry, case.source, path)
    organ = mask != 0
    if not organ.any():
        raise EmptyMaskError(f"{path}: organ mask has no non-zero voxel")
    return organ


def _ras_to_lps(geometry: Geometry) -> Geometry:
    """nibabel reports NIfTI placement in RAS; DICOM and ITK use LPS."""
    flip = np.array([-1.0, -1.0, 1.0])
    direction = (flip[:, None] * np.asarray(geometry.direction).reshape(3, 3)).ravel()
    return Geometry(geometry.shape_zyx, geometry.spacing_zyx_mm,
                    tuple(float(v) for v in flip * np.asarray(geometry.origin_xyz_mm)),
                    tuple(float(v) for v in direction))


def find_organ_seg(series: list[SeriesInfo], image_series_uid: str) -> SeriesInfo | None:
    """A SEG series among `series` that references the image series (None if there is none)."""
    for info in series:
        if info.modality == "SEG" and references_series(info.datasets[0], image_series_uid):
            return info
    return None


def read_dicom_case(path: str | Path, *, series_uid: str | None = None,
                    organ_mask_path: str | Path | None = None,
                    limits: VolumeLimits | None = None,
                    organ_mask_required: str | None = None,
                    advice: SeriesAdvice = CLI_SERIES_ADVICE) -> Case:
    """Folder (or one file) of DICOM -> Case in HU with the organ mask when one is available.

    The series is chosen by :func:`select_series`, which sets aside series whose pixels are
    binary (a mask exported as CT) and refuses ties. The organ mask comes from
    `organ_mask_path` (DICOM SEG or volume file) or else from a SEG in the folder that
    references the chosen series; otherwise `case.organ_mask` stays None, unless
    `organ_mask_required` (the reason one is needed) is given: then the series is refused
    with that reason before its pixel data are read. Skipped files and series are counted in
    `case.meta['skipped_files']` and described in `case.meta['warnings']`. The chosen
    series' headers are checked against `limits` before its files are read. A refusal of the
    choice of series ends with `advice`: the CLI's `--series` unless the caller gives its own.
    """
    scan = scan_folder(path)
    notes: list[str] = []
    info = select_series(scan.series, series_uid, source=str(path), not_an_image=binary_pixels,
                         notes=notes, advice=advice)
    check_series_size(info.datasets, str(path), limits)
    if organ_mask_path is not None and not Path(organ_mask_path).exists():
        raise InputError(f"{organ_mask_path}: file not found")
    seg_info = find_organ_seg(scan.series, info.series_uid)
    if organ_mask_required is not None and organ_mask_path is None and seg_info is None:
        raise InputError(f"{path}: no organ mask: no DICOM SEG in the folder references "
                         f"series {info.series_uid}; {organ_mask_required}")
    unreadable = (f"{len(scan.skipped)} files that are not readable DICOM (e.g. "
                  f"{scan.skipped[0][0].name}: {scan.skipped[0][1]})" if scan.skipped else "")
    try:
        case = case_from_datasets(read_series_files(info), str(path), limits=limits,
                                  advice=advice)
    except GeometryError as exc:
        if not unreadable:
            raise
        raise GeometryError(f"{exc}; skipped {unreadable}, perhaps the missing "
                            "slice") from None
    case.meta["warnings"][:0] = notes
    if scan.skipped:
        case.meta["warnings"].insert(0, f"skipped {unreadable}")
    case.meta["skipped_files"] = len(scan.skipped) + case.meta["undecodable_files"]
    if organ_mask_path is not None:
        case.organ_mask = organ_mask_from_file(organ_mask_path, case, limits)
        case.meta["organ_mask_source"] = "given"
        return case
    if seg_info is not None:
        seg_path = seg_info.datasets[0].filename
        case.organ_mask = organ_mask_from_seg(pydicom.dcmread(seg_path), case, str(seg_path),
                                              limits)
        case.meta["organ_mask_source"] = f"DICOM SEG {seg_info.series_uid}"
    return case
