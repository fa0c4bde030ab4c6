"""Uploaded files -> what a model reads: size limits, safe zip extraction, input-to-Case.

Every upload is copied into a per-request temporary folder under its cleaned base name
(`<tmp>/<n>/<name>`); zips are extracted beside it after checking each member (no absolute
paths, no `..`, no links, bounded member count, total size and compression ratio, and the bytes
actually written are counted rather than trusting the zip's headers). Error messages name the
user's file, never the temporary folder.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cadx.case import Case
from cadx.errors import InputError
from cadx.io.dicom import SeriesAdvice, is_dicom_path, read_dicom_case
from cadx.io.images import IMAGE_SUFFIXES
from cadx.io.limits import VolumeLimits, default_volume_limits
from cadx.io.volumes import read_case

CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
MASK_NAME = re.compile(r"mask|organ|label|seg", re.IGNORECASE)
_CHUNK = 1 << 20
_NAME_CHARS = "A-Za-z0-9._-"  # all a cleaned name (clean_name) is made of
_UNSAFE_CHARS = re.compile(rf"[^{_NAME_CHARS}]+")
# How answers name the common folder of several uploads (see public_text).
UPLOADED_FILES = "the uploaded files"
# The service takes no series UID: what a refused upload can be is another upload.
SERVICE_SERIES_ADVICE = SeriesAdvice(
    tie="upload the series to score without the others",
    none_fits="upload a CT/MR ORIGINAL/PRIMARY axial image series",
    split="upload one acquisition, phase or echo per series")


class UploadTooLargeError(InputError):
    """An upload, or what a zip expands to, exceeds the service's limits."""


class UnsupportedFileError(InputError):
    """A file type the chosen model cannot read."""


@dataclass(frozen=True)
class UploadLimits:
    """Limits on one request's uploads (bytes unless named otherwise)."""

    max_request_bytes: int = 512 << 20
    max_file_bytes: int = 512 << 20
    max_files: int = 32
    max_unzipped_bytes: int = 2 << 30
    max_zip_members: int = 4096
    max_compression_ratio: float = 200.0
    # Voxels of a CT/MR volume, checked from its header; None: the process' --max-voxels.
    max_voxels: int | None = None

    def volume_limits(self) -> VolumeLimits:
        default = default_volume_limits()
        if self.max_voxels is None:
            return default
        return VolumeLimits(self.max_voxels, default.min_spacing_mm, default.max_spacing_mm)


@dataclass(frozen=True)
class Upload:
    """One uploaded file as the client named it, with its (spooled) content."""

    filename: str
    stream: BinaryIO


def clean_name(name: str) -> str:
    """The base name of a client-supplied file name, reduced to safe characters."""
    base = PurePosixPath(name.replace("\\", "/")).name
    cleaned = _UNSAFE_CHARS.sub("_", base).lstrip(".")
    return cleaned or "upload"


def public_text(text: str, workdir: Path, names: list[str]) -> str:
    """`text` (an error message, a warning, any answer field) naming what the user sent instead
    of paths in the request's temporary folder `workdir`, whose uploads are `names` (cleaned,
    in upload order): `<workdir>/<n>/<name>` and the folder `<workdir>/<n>` become the n-th
    upload's name, a file extracted from an uploaded zip `<workdir>/<n>/<zip>.d/<member>` becomes
    `<zip>/<member>`, and `<workdir>` itself (several uploads' common folder) becomes
    `the uploaded files`."""
    if workdir.name not in text:
        return text
    root = str(workdir)

    def public(match: re.Match[str]) -> str:
        index, first = match.group(1), match.group(2)
        if index is None or int(index) >= len(names):
            return UPLOADED_FILES
        name = names[int(index)]
        return name if first in (None, name, f"{name}.d") else f"{name}/{first}"

    # Every name in the folder is cleaned (clean_name), so a path ends at the first other
    # character; the n-th upload's folder holds its file and, for a zip, `<zip>.d`.
    text = re.sub(re.escape(root) + rf"(?:/(\d+)(?:/([{_NAME_CHARS}]+))?)?(?![{_NAME_CHARS}])",
                  public, text)
    return text.replace(workdir.name, UPLOADED_FILES)


def _copy_limited(source: BinaryIO, target: Path, limit_bytes: int, name: str) -> int:
    written = 0
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > limit_bytes:
                raise UploadTooLargeError(f"{name}: larger than the limit of "
                                          f"{limit_bytes / 2**20:.0f} MiB")
            out.write(chunk)
    return written


def save_uploads(uploads: list[Upload], workdir: Path, limits: UploadLimits) -> list[Path]:
    """Copy uploads into `workdir/<n>/<name>`; UploadTooLargeError past the limits."""
    if not uploads:
        raise InputError("no file uploaded")
    if len(uploads) > limits.max_files:
        raise UploadTooLargeError(f"{len(uploads)} files uploaded; at most {limits.max_files}")
    paths = []
    for index, upload in enumerate(uploads):
        name = clean_name(upload.filename)
        folder = workdir / str(index)
        folder.mkdir(parents=True)
        path = folder / name
        written = _copy_limited(upload.stream, path, limits.max_file_bytes, name)
        if written == 0:
            raise InputError(f"{name}: file is empty")
        paths.append(path)
    return paths


def _member_target(info: zipfile.ZipInfo, root: Path, archive_name: str) -> Path | None:
    """Where a zip member may be written, or None for a folder entry; InputError if unsafe."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise InputError(f"{archive_name}: unsafe path {info.filename!r} in zip")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InputError(f"{archive_name}: symbolic link {info.filename!r} in zip")
    if info.is_dir():
        return None
    target = root.joinpath(*(clean_name(part) for part in parts))
    if not target.resolve().is_relative_to(root.resolve()):
        raise InputError(f"{archive_name}: unsafe path {info.filename!r} in zip")
    return target


def extract_zip(path: Path, limits: UploadLimits) -> list[Path]:
    """Extract a zip beside itself into `<name>.d/`, checking every member; the files written."""
    archive_name = path.name
    root = path.parent / f"{path.name}.d"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > limits.max_zip_members:
                raise UploadTooLargeError(f"{archive_name}: {len(members)} entries in zip; at "
                                          f"most {limits.max_zip_members}")
            total = sum(m.file_size for m in members)
            if total > limits.max_unzipped_bytes:
                raise UploadTooLargeError(f"{archive_name}: expands to {total / 2**20:.0f} MiB;"
                                          f" at most {limits.max_unzipped_bytes / 2**20:.0f} MiB")
            written, files = 0, []
            for info in members:
                target = _member_target(info, root, archive_name)
                if target is None:
                    continue
                if info.file_size > limits.max_compression_ratio * max(info.compress_size, 1):
                    raise UploadTooLargeError(f"{archive_name}: {info.filename!r} is compressed "
                                              "suspiciously well (zip bomb?)")
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as member:
                    # Headers can lie: count what is actually decompressed.
                    written += _copy_limited(member, target, limits.max_unzipped_bytes - written,
                                             f"{archive_name}: {info.filename}")
                files.append(target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise InputError(f"{archive_name}: not a readable zip ({exc})") from None
    if not files:
        raise InputError(f"{archive_name}: the zip holds no files")
    return files


def _is_volume(path: Path) -> bool:
    return path.name.lower().endswith(CT_SUFFIXES)


def _is_dicom(path: Path) -> bool:
    return not path.name.lower().endswith(CT_SUFFIXES + IMAGE_SUFFIXES) and is_dicom_path(path)


def _unzip_all(paths: list[Path], limits: UploadLimits) -> list[Path]:
    files = []
    for path in paths:
        if path.name.lower().endswith(".zip") or zipfile.is_zipfile(path):
            files.extend(p for p in extract_zip(path, limits)
                         if not p.name.startswith(("._", ".")) and "__MACOSX" not in p.parts)
        else:
            files.append(path)
    return files


def ct_case_from_uploads(paths: list[Path], organ_mask: Path | None,
                         limits: UploadLimits, mask_required: bool = True) -> Case:
    """The CT/MR input-to-Case step: a DICOM series (zipped, with a DICOM SEG of the organ or
    a separate organ mask), or a volume + organ mask given as two uploads or one zip.

    In a zip (or a multi-file upload) of volumes, the mask is the volume whose name contains
    `mask`, `organ`, `label` or `seg`. Without `mask_required` (a model with an organ
    segmenter) a case without mask is returned with `organ_mask` None.
    """
    images = _unzip_all(paths, limits)
    masks = _unzip_all([organ_mask], limits) if organ_mask is not None else []
    if len(masks) > 1:
        raise InputError(f"{organ_mask.name}: expected one organ mask file, got {len(masks)}")
    if any(_is_dicom(p) for p in images):
        return _dicom_case(images, masks[0] if masks else None, mask_required,
                           limits.volume_limits(), _stem(paths[0]))
    if organ_mask is None:
        masks = [p for p in images if MASK_NAME.search(p.name)]
        images = [p for p in images if p not in masks]
    files = images + masks
    wrong = [p.name for p in files if not _is_volume(p)]
    if wrong:
        raise UnsupportedFileError(f"{wrong[0]}: not a CT/MR volume; this model reads "
                                   f"DICOM or {', '.join(CT_SUFFIXES)} (or a zip of them)")
    if not masks and mask_required:
        raise InputError(f"{images[0].name}: this model needs an organ mask: upload it as the "
                         "organ mask, or put it in the zip with 'mask' in its name")
    if len(images) != 1 or len(masks) > 1:
        names = ", ".join(p.name for p in files)
        raise InputError(f"expected one volume and one organ mask, got {len(images)} "
                         f"volume(s) and {len(masks)} mask(s): {names}")
    return read_case(images[0], organ_mask_path=masks[0] if masks else None,
                     patient_id=_stem(images[0]), limits=limits.volume_limits())


def _dicom_case(files: list[Path], organ_mask: Path | None, mask_required: bool,
                volume_limits: VolumeLimits, upload_stem: str) -> Case:
    """One DICOM series from the uploaded files; the organ from `organ_mask` or a SEG. A series
    without PatientID is named after the (first) upload, as a volume is after its file: not
    after the folder it was saved in."""
    folder = Path(os.path.commonpath([p.parent for p in files]))
    case = read_dicom_case(folder, organ_mask_path=organ_mask, limits=volume_limits,
                           advice=SERVICE_SERIES_ADVICE)
    if not case.meta["dicom"]["patient_id"]:
        case.patient_id = upload_stem
    if case.organ_mask is None and mask_required:
        raise InputError(f"{files[0].name}: this model needs an organ mask: add a DICOM SEG of "
                         "the organ to the zip, or upload the mask as the organ mask")
    case.source = files[0].name
    return case


def _stem(path: Path) -> str:
    name = path.name
    for suffix in CT_SUFFIXES + IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def image_files_from_uploads(paths: list[Path], limits: UploadLimits) -> list[Path]:
    """The 2D image files (PNG/JPEG/...) uploaded or in uploaded zips; UnsupportedFileError
    names the first other file."""
    files = _unzip_all(paths, limits)
    wrong = [p.name for p in files if not p.name.lower().endswith(IMAGE_SUFFIXES)]
    if wrong:
        raise UnsupportedFileError(f"{wrong[0]}: not a 2D image; this model reads "
                                   f"{', '.join(IMAGE_SUFFIXES)} (or a zip of them)")
    return files
