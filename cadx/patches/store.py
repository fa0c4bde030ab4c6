"""A memory-mapped patch store: train on more patches than fit in memory.

`write_patch_store` crops one case at a time and appends its patches to one raw float32 file,
so writing needs memory for one case only. `open_patch_store` maps that file back: each case's
patches are a `StoredRows` index into the map, `join_patches` joins cases without copying, and
training reads only the rows of the batch in hand (cadx.train.fit).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.progress import track

from cadx.config import PipelineConfig
from cadx.errors import InputError
from cadx.io.atomic import atomic_path, write_json_atomic
from cadx.io.dataset import CaseRef
from cadx.patches.cohort import PatchedCase, patch_case
from cadx.patches.grid import PatchSet

STORE_FORMAT = "cadx-patch-store/1"
PATCHES_FILE, INDEX_FILE, MANIFEST_FILE = "patches.f32", "index.npz", "store.json"
MASKS_FILE = "masks.u8"  # (N, P, P) tumour masks, written when the patches carry them
ORGAN_FILE = "organ.u8"  # (N, P, P) organ masks, written when patches are scored inside it


class StoredRows:
    """Rows of a memory-mapped (N, P, P) or (N, C, P, P) array picked by an index, read only
    when indexed."""

    def __init__(self, mapped: np.ndarray, rows: np.ndarray) -> None:
        self.mapped, self.rows = mapped, rows

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.mapped.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.mapped.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: np.ndarray | slice) -> np.ndarray:
        return self.mapped[self.rows[index]]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self.mapped[self.rows], dtype=dtype)


def write_patch_store(refs: Sequence[CaseRef], config: PipelineConfig, folder: str | Path,
                      progress: bool = True) -> Path:
    """Crop every case of `refs` into a store at `folder` (with the patches' tumour masks when
    `config`'s patch network trains on them, and their organ masks when it scores inside the
    organ); the manifest is written last, so an interrupted write leaves no store that opens."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    (folder / MASKS_FILE).unlink(missing_ok=True)
    (folder / ORGAN_FILE).unlink(missing_ok=True)
    cases, rows = [], 0
    dense, organ = config.model.dense, config.model.organ_scored
    with (atomic_path(folder / PATCHES_FILE) as tmp, tmp.open("wb") as out,
          atomic_path(folder / MASKS_FILE) as tmp_masks, tmp_masks.open("wb") as out_masks,
          atomic_path(folder / ORGAN_FILE) as tmp_organ, tmp_organ.open("wb") as out_organ):
        labels, coords = [], []
        for ref in track(refs, description="cropping into the patch store",
                         disable=not progress):
            patched = patch_case(ref, config)
            patches = patched.patches
            np.ascontiguousarray(patches.patches, dtype=np.float32).tofile(out)
            if dense:
                np.ascontiguousarray(patches.masks, dtype=np.uint8).tofile(out_masks)
            if organ:
                np.ascontiguousarray(patches.organ_masks, dtype=np.uint8).tofile(out_organ)
            labels.append(patches.labels)
            coords.append(patches.coords)
            cases.append({"patient_id": patched.patient_id, "start": rows,
                          "stop": rows + len(patches), "has_tumour": patched.has_tumour,
                          "tumour_diameter_mm": patched.tumour_diameter_mm,
                          "meta": patched.meta, "spacing_zyx_mm": patched.spacing_zyx_mm})
            rows += len(patches)
    with atomic_path(folder / INDEX_FILE) as tmp, tmp.open("wb") as out:
        np.savez(out, labels=np.concatenate(labels), coords=np.concatenate(coords))
    if not dense:
        (folder / MASKS_FILE).unlink()
    if not organ:
        (folder / ORGAN_FILE).unlink()
    write_json_atomic(folder / MANIFEST_FILE, {
        "format": STORE_FORMAT, "n_patches": rows, "patch_size_px": config.patches.size_px,
        "channels": config.patches.channels, "masks": dense, "organ_masks": organ,
        "config": config.to_dict(), "cases": cases})
    return folder


def open_patch_store(folder: str | Path) -> list[PatchedCase]:
    """The cases of a store; their patches (and tumour and organ masks, if stored) are
    read-only memory-mapped views."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        index = np.load(folder / INDEX_FILE)
        labels, coords = index["labels"], index["coords"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{folder}: not a complete cadx patch store ({exc})") from None
    if manifest.get("format") != STORE_FORMAT:
        raise InputError(f"{folder}: unsupported patch store format {manifest.get('format')!r}")
    size, n = manifest["patch_size_px"], manifest["n_patches"]
    channels = int(manifest.get("channels", 1))
    row_shape = (size, size) if channels == 1 else (channels, size, size)
    expected = n * channels * size * size * 4
    if (folder / PATCHES_FILE).stat().st_size != expected or len(labels) != n:
        raise InputError(f"{folder / PATCHES_FILE}: size does not match the store's manifest")
    mapped = np.memmap(folder / PATCHES_FILE, dtype=np.float32, mode="r", shape=(n, *row_shape))
    masks = _mapped_masks(folder / MASKS_FILE, n, size) if manifest.get("masks") else None
    organ = (_mapped_masks(folder / ORGAN_FILE, n, size) if manifest.get("organ_masks")
             else None)
    cases = []
    for case in manifest["cases"]:
        part = slice(case["start"], case["stop"])
        ids = np.full(case["stop"] - case["start"], case["patient_id"], dtype=object)
        rows = np.arange(case["start"], case["stop"])
        patches = PatchSet(StoredRows(mapped, rows), ids, coords[part], labels[part],
                           None if masks is None else StoredRows(masks, rows),
                           None if organ is None else StoredRows(organ, rows))
        spacing = case.get("spacing_zyx_mm")  # stores written before cadx kept it: None
        cases.append(PatchedCase(case["patient_id"], patches, case["has_tumour"],
                                 case["tumour_diameter_mm"], case["meta"],
                                 None if spacing is None else tuple(spacing)))
    return cases


def _mapped_masks(path: Path, n: int, size: int) -> np.ndarray:
    """The store's (n, size, size) uint8 masks file, memory-mapped."""
    if not path.is_file():
        raise InputError(f"{path}: missing (the store's manifest lists it)")
    if path.stat().st_size != n * size * size:
        raise InputError(f"{path}: size does not match the store's manifest")
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(n, size, size))


def store_config(folder: str | Path) -> dict:
    """The pipeline settings a store was cropped with (to check it fits a training run)."""
    return json.loads((Path(folder) / MANIFEST_FILE).read_text())["config"]


def join_patches(cases: Sequence[PatchedCase]) -> PatchSet:
    """All cases' patches as one PatchSet; without copying when they come from one store."""
    sets = [c.patches for c in cases]
    stored = [s.patches for s in sets if isinstance(s.patches, StoredRows)]
    if not sets or len(stored) != len(sets) or len({id(p.mapped) for p in stored}) != 1:
        return PatchSet.concat(sets)
    rows = np.concatenate([p.rows for p in stored])
    return PatchSet(StoredRows(stored[0].mapped, rows),
                    np.concatenate([s.patient_ids for s in sets]),
                    np.concatenate([s.coords for s in sets]),
                    np.concatenate([s.labels for s in sets]),
                    _joined_rows([s.masks for s in sets], rows),
                    _joined_rows([s.organ_masks for s in sets], rows))


def _joined_rows(parts: list[object], rows: np.ndarray) -> StoredRows | None:
    """The joined rows of one stored masks file, or None where a part has no stored masks."""
    if not parts or not all(isinstance(m, StoredRows) for m in parts):
        return None
    return StoredRows(parts[0].mapped, rows)
