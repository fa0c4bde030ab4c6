"""Read NIfTI volumes, label maps and 2D images into `Case` objects, checking their geometry.

Every reader checks the header before it decodes a voxel: the voxel count and the decoded size
against `VolumeLimits` (a few KB of gzip can claim gigabytes), and the voxel spacing against a
plausible range (a 50 km slice would make resampling allocate gigabytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from cadx.case import Case
from cadx.config import LabelConvention
from cadx.errors import EmptyMaskError, GeometryError, InputError
from cadx.io.limits import (  # noqa: F401 - re-exported: the readers' limits live here too
    DEFAULT_MAX_VOXELS,
    VolumeLimits,
    VolumeTooLargeError,
    check_spacing,
    check_voxel_count,
    default_volume_limits,
    set_default_volume_limits,
)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a volume in (z, y, x) order, with its physical placement (ITK's x, y, z)."""

    shape_zyx: tuple[int, ...]
    spacing_zyx_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, ...]
    direction: tuple[float, ...]


def case_id_from_path(path: str | Path) -> str:
    """Patient id from a file name: the name without its (possibly double) suffix."""
    name = Path(path).name
    for suffix in (".nii.gz", *VOLUME_SUFFIXES, *IMAGE_2D_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def read_volume(path: str | Path, *, limits: VolumeLimits | None = None
                ) -> tuple[np.ndarray, Geometry]:
    """Read a 3D (or 2D, as one slice) image file; returns the (z, y, x) array and its geometry.

    The header is checked against `limits` (default: `default_volume_limits()`) before any
    voxel is decoded: VolumeTooLargeError for too many voxels, InputError for absurd spacing.
    """
    path = Path(path)
    limits = limits or default_volume_limits()
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return _read_nifti(path, limits)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable image ({_last_line(exc)})") from None
    size_xyz = reader.GetSize()
    components = reader.GetNumberOfComponents()
    check_voxel_count(tuple(size_xyz[::-1]), components * _sitk_component_bytes(reader), path,
                      limits)
    # A photo's pixel size comes from its DPI (0.02 mm at 1200 dpi): no range applies, and a
    # single slice is never resampled along z.
    if path.suffix.lower() not in IMAGE_2D_SUFFIXES:
        header_spacing = tuple(float(v) for v in reader.GetSpacing()[::-1])
        check_spacing(header_spacing if len(size_xyz) == 3 else (1.0, *header_spacing), path,
                      limits)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable image ({_last_line(exc)})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        if path.suffix.lower() in IMAGE_2D_SUFFIXES:
            image = _to_grayscale(image)
        else:
            raise InputError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} channels, "
                             "expected a single-channel image")
    array = sitk.GetArrayFromImage(image)
    dim = image.GetDimension()
    if dim == 2:
        array = array[np.newaxis]
        sx, sy = image.GetSpacing()
        spacing = (1.0, float(sy), float(sx))
        origin = (*image.GetOrigin(), 0.0)
        direction = (*image.GetDirection(), 1.0)
    elif dim == 3:
        sx, sy, sz = image.GetSpacing()
        spacing = (float(sz), float(sy), float(sx))
        origin = image.GetOrigin()
        direction = image.GetDirection()
    else:
        raise InputError(f"{path}: {dim}D image, expected 2D or 3D")
    geometry = Geometry(tuple(array.shape), spacing, tuple(origin), tuple(direction))
    return array, geometry


def _last_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1][:160] if text else "unknown"


def _sitk_component_bytes(reader: sitk.ImageFileReader) -> int:
    """Bytes of one pixel component of the file SimpleITK is about to decode."""
    name = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    for bits in (64, 32, 16):
        if str(bits) in name:
            return bits // 8
    return 1


def _read_nifti(path: Path, limits: VolumeLimits) -> tuple[np.ndarray, Geometry]:
    """NIfTI through nibabel: SimpleITK's reader silently turns NaN voxels into 0.

    nibabel reads the header only; the data are decoded by `np.asanyarray(dataobj)`, after
    the shape and spacing have passed the limits.
    """
    try:
        image = nib.load(str(path))
        shape = tuple(int(n) for n in image.shape)
        bytes_per_voxel = image.get_data_dtype().itemsize
        zooms = [float(v) for v in image.header.get_zooms()[:3]]
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputError(f"{path}: not a readable image ({type(exc).__name__}: "
                         f"{str(exc)[:160]})") from None
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise InputError(f"{path}: {len(shape)}D image, expected 2D or 3D")
    check_voxel_count(shape, bytes_per_voxel, path, limits)
    zooms = (zooms + [1.0, 1.0, 1.0])[:3]
    check_spacing((zooms[2], zooms[1], zooms[0]), path, limits)
    try:
        array = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputError(f"{path}: not a readable image ({type(exc).__name__}: "
                         f"{str(exc)[:160]})") from None
    array = array.reshape(shape)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    # nibabel's voxel order is (x, y, z); cadx works in (z, y, x) like SimpleITK's arrays.
    array = np.ascontiguousarray(array.transpose(2, 1, 0))
    affine = image.affine
    direction = affine[:3, :3] / np.array(zooms)
    geometry = Geometry(tuple(array.shape), (zooms[2], zooms[1], zooms[0]),
                        tuple(float(v) for v in affine[:3, 3]),
                        tuple(float(v) for v in direction.ravel()))
    return array, geometry


def _to_grayscale(image: sitk.Image) -> sitk.Image:
    """Luminance of an RGB(A) 2D image (ITU-R BT.601 weights)."""
    rgb = sitk.GetArrayFromImage(image).astype(np.float32)[..., :3]
    gray = sitk.GetImageFromArray(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    gray.SetSpacing(image.GetSpacing())
    return gray


def check_same_geometry(
    image: Geometry, label: Geometry, image_path: str | Path, label_path: str | Path
) -> None:
    """Raise GeometryError naming both files if the label does not lie on the image's grid."""
    if image.shape_zyx != label.shape_zyx:
        raise GeometryError(
            f"{label_path}: shape {label.shape_zyx} (z,y,x) does not match image "
            f"{image_path} shape {image.shape_zyx}"
        )
    if not np.allclose(image.spacing_zyx_mm, label.spacing_zyx_mm, rtol=1e-3, atol=1e-3):
        raise GeometryError(
            f"{label_path}: spacing {_fmt(label.spacing_zyx_mm)} mm (z,y,x) does not match image "
            f"{image_path} spacing {_fmt(image.spacing_zyx_mm)} mm"
        )
    if not np.allclose(image.origin_xyz_mm, label.origin_xyz_mm, atol=1e-2):
        raise GeometryError(
            f"{label_path}: origin {_fmt(label.origin_xyz_mm)} mm does not match image "
            f"{image_path} origin {_fmt(image.origin_xyz_mm)} mm"
        )
    if not np.allclose(image.direction, label.direction, atol=1e-3):
        raise GeometryError(f"{label_path}: orientation does not match image {image_path}")


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def read_case(
    image_path: str | Path,
    label_path: str | Path | None = None,
    *,
    labels: LabelConvention | None = None,
    organ_mask_path: str | Path | None = None,
    patient_id: str | None = None,
    limits: VolumeLimits | None = None,
) -> Case:
    """Read an image with either a full label map (organ + tumour) or an organ mask only.

    `label_path` holds the labelled training/test map interpreted with `labels`;
    `organ_mask_path` is a mask for a new patient (any non-zero voxel is organ) and leaves the
    tumour status unknown. Both files are checked against `limits` before their data are read.
    """
    if label_path is not None and organ_mask_path is not None:
        raise InputError("give either a label map or an organ mask, not both")
    labels = labels or LabelConvention()
    image, geometry = read_volume(image_path, limits=limits)
    if not np.issubdtype(image.dtype, np.number):
        raise InputError(f"{image_path}: pixel type {image.dtype} is not numeric")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise InputError(f"{image_path}: {bad} voxels are NaN or infinite")
    case = Case(
        patient_id=patient_id or case_id_from_path(image_path),
        image=image,
        spacing_zyx_mm=geometry.spacing_zyx_mm,
        source=str(image_path),
    )
    mask_path = label_path if label_path is not None else organ_mask_path
    if mask_path is None:
        return case
    label, label_geometry = read_volume(mask_path, limits=limits)
    check_same_geometry(geometry, label_geometry, image_path, mask_path)
    if label_path is not None:
        label = np.rint(label).astype(np.int32)
        tumour = np.isin(label, labels.tumour_values)
        organ = np.isin(label, labels.organ_values) | tumour
        case.tumour_mask = tumour
    else:
        organ = label != 0
    if not organ.any():
        raise EmptyMaskError(f"{mask_path}: label map has no organ voxels "
                             f"(expected values {list(labels.organ_values)})")
    case.organ_mask = organ
    return case
