"""Write synthetic CT phantoms as realistic DICOM studies: a CT series plus the organ as a SEG.

A study folder holds one axial CT series (ORIGINAL/PRIMARY/AXIAL, 12-bit unsigned with
RescaleIntercept -1024, one file per slice), optionally a one-slice coronal localizer (so that
series selection has something to reject) and a DICOM Segmentation (highdicom) of the organ,
referencing the CT instances. File names are random and InstanceNumber runs cranial -> caudal,
so a reader that sorts by name or instance number instead of position gets the stack wrong.
Axes follow the phantom's LPS convention: DICOM rows are y (anterior -> posterior), columns x
(right -> left), slices z (caudal -> cranial), i.e. ImageOrientationPatient 1\\0\\0\\0\\1\\0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from cadx import __version__
from cadx.io.atomic import atomic_path
from cadx.synth.ct_phantom import CohortSpec, _cohort_plan, make_ct_phantom

__all__ = ["DicomStudyFiles", "ct_series_datasets", "organ_seg_dataset", "write_dicom_cohort",
           "write_dicom_study"]

_INTERCEPT_HU = -1024
MANUFACTURER = "cadx synthetic"


@dataclass
class DicomStudyFiles:
    """What :func:`write_dicom_study` wrote: the study and CT series UIDs and the file paths."""

    folder: Path
    patient_id: str
    study_uid: str
    ct_series_uid: str
    ct_files: list[Path] = field(default_factory=list)
    seg_file: Path | None = None
    localizer_file: Path | None = None

    @property
    def files(self) -> list[Path]:
        extra = [p for p in (self.seg_file, self.localizer_file) if p is not None]
        return [*self.ct_files, *extra]


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _study_header(patient_id: str, study_uid: str, when: datetime, rng: np.random.Generator
                  ) -> Dataset:
    """Patient, general study and equipment attributes shared by every instance of the study."""
    ds = Dataset()
    ds.PatientName = f"SYNTHETIC^{patient_id.upper()}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = f"{int(rng.integers(1940, 1990))}0101"
    ds.PatientSex = str(rng.choice(["F", "M"]))
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = f"SYN{int(rng.integers(10**6, 10**7))}"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT ABDOMEN PANCREAS PROTOCOL (synthetic)"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "cadx phantom"
    ds.InstitutionName = "cadx"
    ds.SoftwareVersions = __version__
    return ds


def ct_series_datasets(image_hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float], *,
                       patient_id: str, study_uid: str | None = None, seed: int = 0,
                       origin_xyz_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
                       ) -> list[Dataset]:
    """One CT Image Storage dataset per slice of a (z, y, x) HU volume, in z order.

    The default origin is that of the MSD NIfTI files of the same phantom, so their label maps
    lie on this series' grid.
    """
    rng = np.random.default_rng(seed)
    when = datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    nz, ny, nx = image_hu.shape
    sz, sy, sx = (float(s) for s in spacing_zyx_mm)
    stored = np.clip(np.rint(image_hu) - _INTERCEPT_HU, 0, 4095).astype(np.uint16)
    base = _study_header(patient_id, study_uid, when, rng)
    datasets = []
    for k in range(nz):
        ds = Dataset()
        ds.update(base)
        sop_uid = generate_uid()
        ds.file_meta = _file_meta(CTImageStorage, sop_uid, ExplicitVRLittleEndian)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.SeriesDescription = "Pancreas 2.5mm portal venous (synthetic)"
        ds.BodyPartExamined = "ABDOMEN"
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = nz - k  # scanners often number cranial -> caudal
        ds.AcquisitionNumber = 1
        ds.ContentDate, ds.ContentTime = base.StudyDate, base.StudyTime
        ds.KVP = 120
        ds.SliceThickness = sz
        ds.ConvolutionKernel = "B30f"
        z_mm = origin_xyz_mm[2] + k * sz
        ds.ImagePositionPatient = [origin_xyz_mm[0], origin_xyz_mm[1], z_mm]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z_mm
        ds.PixelSpacing = [sy, sx]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _INTERCEPT_HU, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = stored[k].tobytes()
        datasets.append(ds)
    return datasets


def _localizer_dataset(ct: list[Dataset], image_hu: np.ndarray) -> Dataset:
    """A one-slice coronal scout through the volume centre (a series selection must skip)."""
    first = ct[0]
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                    "ReferringPhysicianName", "StudyDescription", "Manufacturer",
                    "ManufacturerModelName", "InstitutionName", "SoftwareVersions",
                    "FrameOfReferenceUID", "PositionReferenceIndicator", "KVP",
                    "PatientPosition", "BodyPartExamined", "ContentDate", "ContentTime"):
        setattr(ds, keyword, first.data_element(keyword).value)
    sop_uid = generate_uid()
    ds.file_meta = _file_meta(CTImageStorage, sop_uid, ExplicitVRLittleEndian)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SeriesDescription = "Topogram (synthetic)"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    nz, ny, nx = image_hu.shape
    coronal = image_hu[::-1, ny // 2, :]  # rows run cranial -> caudal
    sz = float(ct[1].ImagePositionPatient[2] - ct[0].ImagePositionPatient[2]) if nz > 1 else 1.0
    top = ct[-1].ImagePositionPatient
    ds.ImagePositionPatient = [float(top[0]), 0.0, float(top[2])]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.PixelSpacing = [sz, float(first.PixelSpacing[1])]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = coronal.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = _INTERCEPT_HU, 1
    ds.PixelData = np.clip(np.rint(coronal) - _INTERCEPT_HU, 0, 4095).astype(np.uint16).tobytes()
    return ds


def organ_seg_dataset(ct: list[Dataset], organ_mask: np.ndarray, *,
                      organ: str = "Pancreas") -> Dataset:
    """A binary DICOM SEG (highdicom) of the organ mask, one frame per non-empty CT slice."""
    seg = hd.seg.Segmentation(
        source_images=ct,
        pixel_array=organ_mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label=organ,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Pancreas,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)],
        series_instance_uid=generate_uid(), series_number=300,
        sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name="cadx phantom label",
        software_versions=__version__, device_serial_number="0",
        series_description=f"{organ} segmentation (synthetic)",
    )
    return seg


def _save(ds: Dataset, path: Path) -> None:
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def write_dicom_study(image_hu: np.ndarray, organ_mask: np.ndarray | None,
                      spacing_zyx_mm: tuple[float, float, float], out_dir: str | Path, *,
                      patient_id: str, seed: int = 0,
                      transfer_syntax: str = ExplicitVRLittleEndian,
                      localizer: bool = True) -> DicomStudyFiles:
    """Write one patient's study (CT series, optional localizer and organ SEG) into `out_dir`.

    `transfer_syntax` other than Explicit VR Little Endian compresses the CT slices with
    pydicom's encoders (e.g. RLE Lossless, JPEG 2000 Lossless with pylibjpeg-openjpeg).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ct = ct_series_datasets(image_hu, spacing_zyx_mm, patient_id=patient_id, seed=seed)
    study = DicomStudyFiles(out, patient_id, str(ct[0].StudyInstanceUID),
                            str(ct[0].SeriesInstanceUID))
    for ds in ct:
        if UID(transfer_syntax) != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
        path = out / f"IM{int(rng.integers(10**7, 10**8))}{len(study.ct_files):03d}"
        _save(ds, path)
        study.ct_files.append(path)
    if localizer and image_hu.shape[0] > 1:
        scout = _localizer_dataset(ct, image_hu)
        study.localizer_file = out / "SCOUT0001.dcm"
        _save(scout, study.localizer_file)
    if organ_mask is not None:
        seg = organ_seg_dataset(ct, organ_mask)
        study.seg_file = out / "SEG0001.dcm"
        _save(seg, study.seg_file)
    return study


def write_dicom_cohort(out_dir: str | Path, spec: CohortSpec, *,
                       transfer_syntax: str = ExplicitVRLittleEndian) -> list[DicomStudyFiles]:
    """The cohort of :func:`write_msd_cohort` as DICOM: one study folder per patient.

    Patient ``i`` gets the same phantom (same child seed) as in the MSD layout; the organ SEG
    holds the pancreas including any tumour (what cadx crops patches inside).
    """
    plan = _cohort_plan(spec)
    seeds = np.random.SeedSequence(spec.seed).spawn(spec.n_patients + 1)[1:]
    studies = []
    for i in range(spec.n_patients):
        pid = f"pancreas_{i + 1:03d}"
        case = make_ct_phantom(np.random.default_rng(seeds[i]), plan[i], spec.shape_zyx,
                               spec.spacing_zyx_mm)
        studies.append(write_dicom_study(case.image_hu, case.label > 0, case.spacing_zyx_mm,
                                         Path(out_dir) / pid, patient_id=pid, seed=i,
                                         transfer_syntax=transfer_syntax))
    return studies
