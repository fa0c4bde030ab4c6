"""`cadx clean`: batch removal of non-target images before training or diagnosis (seed 002).
The QC model flags every image of a folder; images that a drop rule catches are left out of a
copy of the folder (same sub-folders, so a class-folder dataset stays one) and listed with their
reasons in a CSV report. Nothing is deleted or changed in the input folder."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cadx.errors import ConfigError, InputError
from cadx.io.atomic import write_text_atomic
from cadx.io.images import patient_id_from_filename
from cadx.triage.bundle import TriageBundle
from cadx.triage.qc import DropRule, QCDecision, qc_decisions
from cadx.triage.run import collect_images, fit_batch, read_inputs


@dataclass
class CleanResult:
    """What `clean_folder` did: every image's QC decision and the counts by drop rule."""

    source: Path
    out_dir: Path
    report: Path
    paths: list[Path]
    decisions: list[QCDecision]
    removed_by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return sum(not d.dropped for d in self.decisions)

    @property
    def dropped(self) -> int:
        return sum(d.dropped for d in self.decisions)


def _check_out_dir(source: Path, out_dir: Path) -> None:
    if out_dir.resolve() == source.resolve() or source.resolve() in out_dir.resolve().parents:
        raise ConfigError(f"{out_dir}: the cleaned copy must be outside the input folder "
                          f"{source}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir}: exists and is not an empty folder; choose a new one")


def _report_csv(result: CleanResult, flags: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "patient_id", "status", "reasons", *(f"p_{f}" for f in flags)))
    for path, decision in zip(result.paths, result.decisions, strict=True):
        writer.writerow((path.relative_to(result.source).as_posix(),
                         patient_id_from_filename(path),
                         "dropped" if decision.dropped else "kept", "; ".join(decision.reasons),
                         *(f"{decision.probabilities[f]:.4f}" for f in flags)))
    return buf.getvalue()


def clean_folder(source: str | Path, qc: TriageBundle, rules: Sequence[DropRule],
                 out_dir: str | Path, report_path: str | Path, *,
                 progress: bool = True) -> CleanResult:
    """Copy the images of `source` that no rule drops into `out_dir` (built beside it and
    renamed into place when complete) and write the report CSV (every image, kept or dropped,
    reasons, each flag's probability)."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_dir():
        raise InputError(f"{source}: not a folder of images")
    if not rules:
        raise ConfigError("no drop rules: give --drop-if, e.g. 'not target,unreadable'")
    _check_out_dir(source, out_dir)
    paths = collect_images([source])
    images = read_inputs(paths, progress)
    decisions = qc_decisions(qc, qc.predict(fit_batch(images, qc.size_px, qc.channels)), rules)
    result = CleanResult(source, out_dir, Path(report_path), paths, decisions, dict(Counter(
        reason.split(" (")[0] for d in decisions for reason in d.reasons)))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part",
                                    dir=out_dir.parent))
    try:
        for path, decision in zip(paths, decisions, strict=True):
            if not decision.dropped:
                target = staging / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        os.chmod(staging, 0o777 & ~_umask())
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    write_text_atomic(report_path, _report_csv(result, qc.labels))
    return result


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
