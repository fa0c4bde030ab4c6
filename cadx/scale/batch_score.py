"""Score many studies on a Dask distributed cluster; one Parquet row per study, resumable.

Each study goes through `cadx.workflows.diagnose_file`, the same function as `cadx diagnose`,
so whatever that path learns (DICOM input, automatic organ masks) batch scoring learns too. A
study that fails becomes a row with `status = "error"` and the message; the others go on.
Finished rows are written to the output (atomically) every `checkpoint_every` studies and at the
end, also on Ctrl-C; a rerun skips the studies whose row says `ok` and retries the failed ones.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import Progress

from cadx.errors import CadxError, InputError
from cadx.io.atomic import atomic_path
from cadx.io.dataset import load_dataset, repeated_ids
from cadx.io.volumes import VOLUME_SUFFIXES, case_id_from_path

SCHEMA = pa.schema([
    ("study_id", pa.string()), ("image", pa.string()), ("organ_mask", pa.string()),
    ("status", pa.string()), ("decision", pa.string()), ("patient_score", pa.float64()),
    ("n_patches", pa.int64()), ("n_positive_patches", pa.int64()),
    ("patch_threshold", pa.float64()), ("patient_threshold", pa.float64()),
    ("error", pa.string()), ("seconds", pa.float64()), ("worker", pa.string()),
    ("diagnosis_json", pa.string()),
])


@dataclass(frozen=True)
class Study:
    """One study to score: an image (file or DICOM folder) and its organ mask, if any."""

    study_id: str
    image_path: str
    organ_mask_path: str | None = None


def list_studies(source: str | Path) -> list[Study]:
    """The studies of `source`: a CSV manifest, a dataset folder, or a folder of volumes.

    CSV columns: `image` (required), optional `organ_mask` and `study_id`; relative paths are
    relative to the CSV. A folder with dataset.json (MSD / nnU-Net) uses each label map as the
    organ mask (non-zero = organ). Any other folder: every volume file in it, with the organ
    mask of the same name from its `masks/` subfolder when there is one.
    """
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: input not found")
    if source.is_file() and source.suffix.lower() == ".csv":
        studies = _from_manifest(source)
    elif source.is_dir() and (source / "dataset.json").exists():
        studies = [Study(r.patient_id, str(r.image_path), str(r.label_path))
                   for r in load_dataset(source)]
    elif source.is_dir():
        studies = _from_folder(source)
    else:
        raise InputError(f"{source}: expected a folder or a .csv manifest")
    if not studies:
        raise InputError(f"{source}: no studies found")
    repeated = repeated_ids([s.study_id for s in studies])
    if repeated:
        raise InputError(f"{source}: study ids repeated: {repeated[:5]}")
    return studies


def _from_manifest(csv_path: Path) -> list[Study]:
    try:
        with csv_path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{csv_path}: unreadable CSV ({exc})") from None
    studies = []
    for line_no, row in enumerate(rows, start=2):
        if not row.get("image"):
            raise InputError(f"{csv_path}: line {line_no} has no 'image'")
        image = csv_path.parent / row["image"]
        mask = csv_path.parent / row["organ_mask"] if row.get("organ_mask") else None
        study_id = row.get("study_id") or case_id_from_path(image)
        studies.append(Study(study_id, str(image.resolve()),
                             None if mask is None else str(mask.resolve())))
    return studies


def _from_folder(folder: Path) -> list[Study]:
    studies = []
    for image in sorted(folder.iterdir()):
        if image.is_file() and image.name.lower().endswith(VOLUME_SUFFIXES):
            mask = folder / "masks" / image.name
            studies.append(Study(case_id_from_path(image), str(image.resolve()),
                                 str(mask.resolve()) if mask.exists() else None))
    return studies


def score_study(model_path: str, study: Study, max_voxels: int | None = None,
                keep_in_plane_spacing: bool = False) -> dict[str, object]:
    """Diagnose one study; any failure becomes an error row instead of an exception.

    `max_voxels` (cadx --max-voxels) becomes the worker process' volume limit;
    `keep_in_plane_spacing` scores the scan's own pixels (see `diagnose_file`).
    """
    from cadx.io.volumes import VolumeLimits, set_default_volume_limits
    from cadx.workflows import diagnose_file

    if max_voxels is not None:
        set_default_volume_limits(VolumeLimits(max_voxels=max_voxels))

    start = time.perf_counter()
    row = _empty_row(study)
    row["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    try:
        diagnosis = diagnose_file(model_path, study.image_path, study.organ_mask_path, None,
                                  console=Console(quiet=True),
                                  keep_in_plane_spacing=keep_in_plane_spacing)
    except CadxError as exc:
        row.update(status="error", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug on one study must not stop the batch
        where = traceback.extract_tb(exc.__traceback__)[-1]
        row.update(status="error", error=f"{type(exc).__name__}: {exc} "
                                         f"({Path(where.filename).name}:{where.lineno})")
    else:
        result = diagnosis.to_dict()
        row.update(status="ok", decision=diagnosis.decision,
                   patient_score=diagnosis.patient_score, n_patches=diagnosis.n_patches,
                   n_positive_patches=diagnosis.n_positive_patches,
                   patch_threshold=diagnosis.patch_threshold,
                   patient_threshold=diagnosis.patient_threshold,
                   diagnosis_json=json.dumps(result))
    row["seconds"] = round(time.perf_counter() - start, 4)
    return row


def _lost_study_row(study: Study, exc: Exception) -> dict[str, object]:
    """The row of a study whose task never returned (its worker died, the cluster failed)."""
    row = _empty_row(study)
    row.update(status="error", error=f"task lost: {type(exc).__name__}: {exc}")
    return row


def _empty_row(study: Study) -> dict[str, object]:
    row: dict[str, object] = {name: None for name in SCHEMA.names}
    row.update(study_id=study.study_id, image=study.image_path, organ_mask=study.organ_mask_path)
    return row


def read_results(path: str | Path) -> list[dict[str, object]]:
    """Rows of an existing results file (empty when there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: existing results file is not readable Parquet ({exc})"
                         ) from None


def write_results(path: str | Path, rows: Sequence[dict[str, object]]) -> None:
    """Write all rows as one Parquet file, atomically, sorted by study id."""
    ordered = sorted(rows, key=lambda row: str(row["study_id"]))
    table = pa.Table.from_pylist(ordered, schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _client(scheduler: str, n_workers: int | None):
    """A Dask client: a LocalCluster of single-threaded worker processes for 'local'."""
    from distributed import Client, LocalCluster

    if scheduler == "local":
        workers = n_workers or os.cpu_count() or 1
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout="30s"), None
    except (OSError, ValueError) as exc:  # unreachable, timed out, or not an address
        raise InputError(f"{scheduler}: cannot reach the Dask scheduler ({exc})") from None


def score_batch(model_path: str | Path, source: str | Path, out_path: str | Path, *,
                scheduler: str = "local", n_workers: int | None = None,
                checkpoint_every: int = 50, console: Console | None = None,
                progress: bool = True, max_voxels: int | None = None,
                keep_in_plane_spacing: bool = False) -> list[dict[str, object]]:
    """Score every study of `source` not yet `ok` in `out_path`; returns all rows written.

    `scheduler` is a Dask scheduler address or "local". The model file must be readable from
    the workers (a shared path on a real cluster). `max_voxels` is each worker's volume limit
    (default: cadx's whole-body-CT default); `keep_in_plane_spacing` scores each scan's own
    pixels instead of resampling them to the bundle's training pixel size.
    """
    from distributed import as_completed

    console = console or Console()
    model_path = str(Path(model_path).resolve())
    if not Path(model_path).exists():
        raise InputError(f"{model_path}: model bundle not found")
    studies = list_studies(source)
    previous = read_results(out_path)
    done = {str(row["study_id"]) for row in previous if row["status"] == "ok"}
    todo = [s for s in studies if s.study_id not in done]
    rows = {str(row["study_id"]): row for row in previous}
    console.print(f"[bold]cadx score-batch[/]: {len(studies)} studies: "
                  f"{len(studies) - len(todo)} already scored, {len(todo)} to score "
                  f"(results: {out_path})")
    if not todo:
        return list(rows.values())
    client, cluster = _client(scheduler, n_workers)
    finished = 0
    try:
        # Optional task arguments travel only when given (the task signature stays as it was).
        extra = [] if max_voxels is None and not keep_in_plane_spacing else [
            [max_voxels] * len(todo)]
        if keep_in_plane_spacing:
            extra.append([True] * len(todo))
        futures = client.map(score_study, [model_path] * len(todo), todo, *extra,
                             key=[f"score-{s.study_id}" for s in todo], pure=False)
        study_of = dict(zip(futures, todo, strict=True))
        with Progress(disable=not progress, console=console) as bar:
            task = bar.add_task("scoring", total=len(todo))
            for future in as_completed(futures):
                try:
                    row = future.result()
                except Exception as exc:  # noqa: BLE001 - e.g. the worker died (out of memory)
                    row = _lost_study_row(study_of[future], exc)
                rows[str(row["study_id"])] = row
                finished += 1
                bar.advance(task)
                if finished % checkpoint_every == 0:
                    write_results(out_path, list(rows.values()))
    finally:
        write_results(out_path, list(rows.values()))
        client.close()
        if cluster is not None:
            cluster.close()
    failed = [r for r in rows.values() if r["status"] != "ok"]
    console.print(f"{finished} scored this run; {len(rows) - len(failed)} ok, {len(failed)} "
                  f"failed; results written to {out_path}")
    for row in failed:
        console.print(f"  [red]failed[/] {row['study_id']}: {row['error']}")
    # Each study's diagnosis_json says it; the terminal says it once, not once per study.
    for note in _emulated_bf16_notes(rows.values()):
        console.print(f"[yellow]warning[/]: {note}")
    return list(rows.values())


def _emulated_bf16_notes(rows: Iterable[dict[str, object]]) -> list[str]:
    """The distinct emulated-bf16 notes among the ok rows' diagnoses (the workers' CPUs
    decide it, not this machine's)."""
    from cadx.train.precision import is_bf16_emulated_note

    notes = {line for row in rows if row["status"] == "ok"
             for line in json.loads(str(row["diagnosis_json"])).get("warnings", [])
             if is_bf16_emulated_note(line)}
    return sorted(notes)
