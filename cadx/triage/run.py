"""`cadx run`: images -> QC (drop by the pipeline's rules, with reasons) -> router (category or
"unrouted") -> every analyser of the category -> one merged result per image and per patient,
citing every model by name, version and file checksum. Each model runs once per batch.

A patient's id is its file name up to the last ``_`` (``P001_2.png`` -> ``P001``), as in the
image datasets.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import track

from cadx.errors import InputError
from cadx.io.atomic import write_json_atomic, write_text_atomic
from cadx.io.images import IMAGE_SUFFIXES, fit_image, patient_id_from_filename, read_image
from cadx.triage.pipeline_file import Pipeline
from cadx.triage.qc import QCDecision, qc_decisions
from cadx.triage.router import Routing, routings


@dataclass
class ImageOutcome:
    """One input image: dropped by QC, unrouted, or routed with every analyser's finding."""

    path: Path
    patient_id: str
    qc: QCDecision | None = None
    routing: Routing | None = None
    findings: list[dict[str, object]] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.qc is not None and self.qc.dropped:
            return "dropped"
        return "routed" if self.routing is not None and self.routing.routed else "unrouted"

    def to_dict(self) -> dict[str, object]:
        return {"file": str(self.path), "patient_id": self.patient_id, "status": self.status,
                "qc": self.qc.to_dict() if self.qc else None,
                "routing": self.routing.to_dict() if self.routing else None,
                "findings": self.findings}


@dataclass
class RunResult:
    """Every image's outcome, the merged result per patient, and the models used."""

    images: list[ImageOutcome]
    patients: list[dict[str, object]]
    models: dict[str, object]

    def summary(self) -> dict[str, object]:
        status = [o.status for o in self.images]
        categories = [o.routing.category for o in self.images if o.status == "routed"]
        return {"images": len(self.images), "patients": len(self.patients),
                "dropped": status.count("dropped"), "unrouted": status.count("unrouted"),
                "routed": status.count("routed"),
                "routed_by_category": {c: categories.count(c) for c in sorted(set(categories))}}

    def to_dict(self) -> dict[str, object]:
        return {"summary": self.summary(), "models": self.models,
                "patients": self.patients, "images": [o.to_dict() for o in self.images]}


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files among `inputs` (files, or folders searched recursively, sorted); InputError
    for a missing input or when no image is found."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file()
                            and p.suffix.lower() in IMAGE_SUFFIXES
                            and not p.name.startswith("."))
        elif item.is_file():
            found.append(item)
        else:
            raise InputError(f"{item}: input not found")
    if not found:
        raise InputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in "
                         f"{', '.join(map(str, inputs))}")
    return list(dict.fromkeys(found))


def read_inputs(paths: Sequence[Path], progress: bool = True) -> list[np.ndarray]:
    """Every image as (3, H, W) float32 at its own size; InputError names an unreadable one."""
    return [read_image(p, None, 3) for p in track(paths, description="reading images",
                                                  disable=not progress or len(paths) < 200)]


def fit_batch(images: Sequence[np.ndarray], size_px: int, channels: int) -> np.ndarray:
    """Images of any size as one (N, channels, size_px, size_px) batch for a model."""
    return np.stack([fit_image(image, size_px, channels) for image in images])


def run_pipeline(pipeline: Pipeline, paths: Sequence[Path], images: Sequence[np.ndarray]
                 ) -> RunResult:
    """Run `pipeline` on `images` (read from `paths`)."""
    outcomes = [ImageOutcome(p, patient_id_from_filename(p)) for p in paths]
    models: dict[str, object] = {
        "router": {**pipeline.router.model_info(), "file": str(pipeline.router_file),
                   "confidence_floor": pipeline.confidence_floor}}
    keep = list(range(len(images)))
    if pipeline.qc is not None:
        qc = pipeline.qc
        models["qc"] = {**qc.model_info(), "file": str(pipeline.qc_file),
                        "thresholds": {f: qc.threshold(f) for f in qc.labels},
                        "drop_if": [str(rule) for rule in pipeline.drop_rules]}
        decisions = qc_decisions(qc, qc.predict(fit_batch(images, qc.size_px, qc.channels)),
                                 pipeline.drop_rules)
        for outcome, decision in zip(outcomes, decisions, strict=True):
            outcome.qc = decision
        keep = [i for i in keep if not decisions[i].dropped]
    router = pipeline.router
    if keep:
        probabilities = router.predict(fit_batch([images[i] for i in keep], router.size_px,
                                                 router.channels))
        for i, routing in zip(keep, routings(probabilities, router.labels,
                                             pipeline.confidence_floor), strict=True):
            outcomes[i].routing = routing
    models["analysers"] = [a.model_info() for group in pipeline.analysers.values()
                           for a in group]
    exams: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    for category, analysers in pipeline.analysers.items():
        members = [i for i in keep if outcomes[i].routing.category == category]
        if not members:
            continue
        pids = [outcomes[i].patient_id for i in members]
        for analyser in analysers:
            probabilities = analyser.analyse([images[i] for i in members])
            for i, finding in zip(members, analyser.image_findings(probabilities), strict=True):
                outcomes[i].findings.append(finding)
            for pid, exam in analyser.exam(pids, probabilities).items():
                exams[(pid, category)].append(exam)
    return RunResult(outcomes, _patients(outcomes, exams, pipeline), models)


def _patients(outcomes: Sequence[ImageOutcome],
              exams: dict[tuple[str, str], list[dict[str, object]]],
              pipeline: Pipeline) -> list[dict[str, object]]:
    """One merged entry per patient: images per category with every analyser's exam finding,
    and the dropped and unrouted images."""
    by_patient: dict[str, list[ImageOutcome]] = defaultdict(list)
    for outcome in outcomes:
        by_patient[outcome.patient_id].append(outcome)
    patients = []
    for pid in sorted(by_patient):
        mine = by_patient[pid]
        categories = {}
        for category in sorted({o.routing.category for o in mine if o.status == "routed"}):
            categories[category] = {
                "images": [o.path.name for o in mine
                           if o.status == "routed" and o.routing.category == category],
                "findings": exams.get((pid, category), []),
                "note": None if pipeline.analysers.get(category)
                else "no analyser registered for this category"}
        patients.append({
            "patient_id": pid, "categories": categories,
            "dropped": [{"image": o.path.name, "reasons": list(o.qc.reasons)}
                        for o in mine if o.status == "dropped"],
            "unrouted": [{"image": o.path.name, "scores": o.routing.scores}
                         for o in mine if o.status == "unrouted"]})
    return patients


def _images_csv(result: RunResult) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("file", "patient_id", "status", "category", "confidence", "qc_reasons",
                     "findings"))
    for o in result.images:
        writer.writerow((
            str(o.path), o.patient_id, o.status,
            o.routing.category if o.routing else "",
            f"{o.routing.confidence:.4f}" if o.routing else "",
            "; ".join(o.qc.reasons) if o.qc else "",
            "; ".join(f"{f['analyser']}={f['finding']} ({f['probability']:.3f})"
                      for f in o.findings)))
    return buf.getvalue()


def write_run(result: RunResult, out_dir: str | Path,
              evaluation: dict[str, object] | None = None) -> Path:
    """Write ``results.json`` (everything) and ``images.csv`` (one row per image), and
    ``evaluation.json`` when known answers were given; each file atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "images.csv", _images_csv(result))
    if evaluation is not None:
        write_json_atomic(out / "evaluation.json", evaluation)
    write_json_atomic(out / "results.json", result.to_dict())
    return out
