"""Evaluate any model's scores from a predictions CSV: read and check it, compare models, report.

The CSV has the columns `patient_id`, `y_true` (0/1), `score` (in [0, 1]), optionally `model`
(one evaluated level per model) and any further columns, each tabulated as a subgroup. Rows
are numbered from the first data row (the header is not counted), as in every error message.
A patient may have several rows per model (e.g. patches or images); the intervals are then
patient-level cluster bootstraps, and `compare` refuses (it needs one score per patient).
"""

from __future__ import annotations

import csv
import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape

from cadx.decide.roc import youden_operating_point
from cadx.errors import ConfigError, InputError
from cadx.evaluate.cohort import NO_TUMOUR_GROUP
from cadx.evaluate.lesion_size import SIZE_GROUP_ORDER
from cadx.evaluate.levels import LevelResult, evaluate_level
from cadx.evaluate.report import comparisons_table, print_levels, write_report
from cadx.evaluate.stats import delong_test, validate_scores
from cadx.evaluate.subgroups import clinical_subgroups
from cadx.io.atomic import write_json_atomic
from cadx.io.clinical import ClinicalRow, validate_clinical

REQUIRED_COLUMNS = ("patient_id", "y_true", "score")
MODEL_COLUMN = "model"
# Known columns whose groups have a natural order (the rest are listed sorted).
SUBGROUP_ORDER = {"size_bin": [*SIZE_GROUP_ORDER, NO_TUMOUR_GROUP]}
_MAX_LISTED = 5


@dataclass
class ModelPredictions:
    """One model's rows of a predictions file (all rows when the file has no `model` column)."""

    model: str
    patient_ids: np.ndarray  # str
    y_true: np.ndarray  # 0/1 int
    scores: np.ndarray  # float in [0, 1]
    subgroups: dict[str, np.ndarray]  # extra column -> value per row (str)

    @property
    def one_row_per_patient(self) -> bool:
        return np.unique(self.patient_ids).size == self.patient_ids.size


@dataclass
class Predictions:
    """A checked predictions file, split by model in order of first appearance."""

    path: Path
    has_model_column: bool
    models: list[ModelPredictions]

    def model(self, name: str) -> ModelPredictions:
        """The rows of model `name`; InputError listing the file's models if there is none."""
        if not self.has_model_column:
            raise InputError(f"{self.path}: no '{MODEL_COLUMN}' column, so no model to pick")
        for model in self.models:
            if model.model == name:
                return model
        raise InputError(f"{self.path}: unknown model '{name}' in --models; the file has "
                         + ", ".join(f"'{m.model}'" for m in self.models))


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and data rows of a CSV, every row checked to have the header's width."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: unreadable CSV ({exc})") from None
    if not lines or not any(cell.strip() for cell in lines[0]):
        raise InputError(f"{path}: empty file (no header row)")
    header = [name.strip() for name in lines[0]]
    repeated = sorted(name for name, n in Counter(header).items() if n > 1)
    if repeated:
        raise InputError(f"{path}: column(s) repeated in the header: {', '.join(repeated)}")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) " + ", ".join(f"'{m}'" for m in missing)
                         + "; found " + ", ".join(f"'{h}'" for h in header))
    rows = lines[1:]
    if not rows:
        raise InputError(f"{path}: no data rows under the header")
    for number, row in enumerate(rows, start=1):
        if len(row) != len(header):
            raise InputError(f"{path}: row {number} has {len(row)} fields but the header has "
                             f"{len(header)} columns")
    return header, rows


def _text_column(path: Path, name: str, values: np.ndarray) -> np.ndarray:
    """A column that must not be blank (patient_id, model)."""
    blank = np.flatnonzero(values == "") + 1
    if blank.size:
        raise InputError(f"{path}: column '{name}' is empty at row"
                         f"{'s' if blank.size > 1 else ''} {_listed([str(r) for r in blank])}")
    return values


def read_predictions(path: str | Path) -> Predictions:
    """Read and check a predictions CSV; InputError naming the file, column and row(s)."""
    path = Path(path)
    header, rows = _read_table(path)
    columns = {name: np.array([row[i].strip() for row in rows], dtype=object)
               for i, name in enumerate(header)}
    patient_ids = _text_column(path, "patient_id", columns["patient_id"]).astype(str)
    y_true, scores = validate_scores(columns["y_true"].astype(str), columns["score"].astype(str),
                                     name="score", label_name="y_true", source=str(path))
    has_model_column = MODEL_COLUMN in columns
    model_names = (_text_column(path, MODEL_COLUMN, columns[MODEL_COLUMN]).astype(str)
                   if has_model_column else np.full(len(rows), path.stem))
    extra = [name for name in header if name not in (*REQUIRED_COLUMNS, MODEL_COLUMN)]
    models = []
    for name in dict.fromkeys(model_names.tolist()):
        member = model_names == name
        source = f"{path}: model '{name}'" if has_model_column else str(path)
        validate_scores(y_true[member], scores[member], source=source)  # both classes present
        models.append(ModelPredictions(
            model=name, patient_ids=patient_ids[member], y_true=y_true[member],
            scores=scores[member],
            subgroups={column: columns[column][member].astype(str) for column in extra}))
    return Predictions(path, has_model_column, models)


# --------------------------------------------------------------------------- levels


def binned_subgroups(predictions: Predictions, bins: Mapping[str, Sequence[float]],
                     ) -> dict[str, tuple[dict[str, list[object]], dict[str, list[str]]]]:
    """Per model: (column -> bin of each row, column -> bin order) for the numeric columns of
    `bins`; InputError naming the file, column and row of a value that is not a number."""
    if not bins:
        return {}
    columns = list(predictions.models[0].subgroups) if predictions.models else []
    absent = [c for c in bins if c not in columns]
    if absent:
        raise ConfigError(f"{predictions.path}: no column {', '.join(absent)} to bin (columns: "
                          f"{', '.join(columns) or 'none'})")
    out = {}
    for model in predictions.models:
        rows = [ClinicalRow(f"model '{model.model}' row {k + 1}", str(pid),
                            {c: str(model.subgroups[c][k]) for c in bins})
                for k, pid in enumerate(model.patient_ids.tolist())]
        validation = validate_clinical(rows, str(predictions.path), numeric=list(bins))
        validation.raise_errors()
        out[model.model] = clinical_subgroups(
            [], bins, {c: validation.column_values(c) for c in bins})
    return out


def predictions_levels(predictions: Predictions, threshold: float | None = None, *,
                       n_boot: int = 1000, seed: int = 0,
                       subgroup_bins: Mapping[str, Sequence[float]] | None = None,
                       ) -> list[LevelResult]:
    """One level per model at `threshold`, or at each model's own max-Youden threshold.

    A threshold chosen on the evaluated data is flagged optimistic. `subgroup_bins` (column ->
    edges) tabulates those numeric columns in bins instead of by value.
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold must lie in [0, 1], got {threshold}")
    binned = binned_subgroups(predictions, subgroup_bins or {})
    levels = []
    for model in predictions.models:
        groups, order = binned.get(model.model, ({}, {}))
        if threshold is None:
            chosen = youden_operating_point(model.y_true, model.scores, model.model).threshold
            note = "chosen on the evaluated data (max Youden index): optimistic"
        else:
            chosen, note = threshold, "given with --threshold"
        clustered = not model.one_row_per_patient
        levels.append(evaluate_level(
            model.model, model.y_true, model.scores, chosen,
            unit="rows" if clustered else "patients",
            clusters=model.patient_ids if clustered else None,
            subgroups={**model.subgroups, **groups}, subgroup_order={**SUBGROUP_ORDER, **order},
            threshold_note=note, threshold_optimistic=threshold is None,
            source=f"{predictions.path}: model '{model.model}'", n_boot=n_boot, seed=seed))
    return levels


# --------------------------------------------------------------------------- comparisons


def paired_scores(predictions: Predictions, model_a: str,
                  model_b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(patient ids, y_true, scores of a, scores of b), aligned by patient_id.

    Refuses models that score several rows per patient, different patient sets, or that
    disagree on a patient's y_true.
    """
    path = predictions.path
    if model_a == model_b:
        raise ConfigError(f"--models names '{model_a}' twice; name two different models")
    a, b = predictions.model(model_a), predictions.model(model_b)
    for model in (a, b):
        if not model.one_row_per_patient:
            repeated = sorted(pid for pid, n in Counter(model.patient_ids.tolist()).items()
                              if n > 1)
            raise InputError(f"{path}: model '{model.model}' has several rows for patient(s) "
                             f"{_listed(repeated)}; comparing AUCs needs one score per patient")
    only_a = sorted(set(a.patient_ids.tolist()) - set(b.patient_ids.tolist()))
    only_b = sorted(set(b.patient_ids.tolist()) - set(a.patient_ids.tolist()))
    if only_a or only_b:
        raise InputError(f"{path}: models '{model_a}' and '{model_b}' scored different "
                         f"patients: {len(only_a)} only in '{model_a}' ({_listed(only_a)}), "
                         f"{len(only_b)} only in '{model_b}' ({_listed(only_b)})")
    order_b = {pid: i for i, pid in enumerate(b.patient_ids.tolist())}
    index_b = np.array([order_b[pid] for pid in a.patient_ids.tolist()])
    differ = np.flatnonzero(a.y_true != b.y_true[index_b])
    if differ.size:
        pid = a.patient_ids[differ[0]]
        raise InputError(f"{path}: y_true differs between models for {differ.size} patient(s), "
                         f"e.g. '{pid}': {a.y_true[differ[0]]} for '{model_a}', "
                         f"{b.y_true[index_b[differ[0]]]} for '{model_b}'")
    return a.patient_ids, a.y_true, a.scores, b.scores[index_b]


def compare_models(predictions: Predictions, model_a: str, model_b: str) -> dict[str, object]:
    """DeLong's paired test of the AUC difference a - b on the patients both models scored."""
    _, y_true, scores_a, scores_b = paired_scores(predictions, model_a, model_b)
    try:
        test = delong_test(y_true, scores_a, scores_b)
    except InputError as exc:
        raise InputError(f"{predictions.path}: models '{model_a}' and '{model_b}': {exc}") from None
    if not math.isfinite(test["z"]):  # zero-variance difference; JSON has no infinity
        test["z"] = None
    return {"model_a": model_a, "model_b": model_b, "n": int(y_true.size),
            "n_positive": int(y_true.sum()), "n_negative": int(y_true.size - y_true.sum()),
            **test}


def pairwise_comparisons(predictions: Predictions) -> list[dict[str, object]]:
    """`compare_models` for every pair of models; a pair that cannot be compared says why."""
    comparisons = []
    for a, b in itertools.combinations([m.model for m in predictions.models], 2):
        try:
            comparisons.append(compare_models(predictions, a, b))
        except InputError as exc:
            reason = str(exc).removeprefix(f"{predictions.path}: ")
            comparisons.append({"model_a": a, "model_b": b, "error": reason})
    return comparisons


# --------------------------------------------------------------------------- commands


def report_predictions(path: str | Path, out_dir: str | Path, *, threshold: float | None = None,
                       n_boot: int = 1000, seed: int = 0, console: Console | None = None,
                       subgroup_bins: Mapping[str, Sequence[float]] | None = None,
                       ) -> list[LevelResult]:
    """`cadx report`: evaluate every model of a predictions CSV and write the report folder;
    `subgroup_bins` tabulates numeric columns in bins (column -> edges)."""
    console = console or Console()
    predictions = read_predictions(path)
    levels = predictions_levels(predictions, threshold, n_boot=n_boot, seed=seed,
                                subgroup_bins=subgroup_bins)
    comparisons = pairwise_comparisons(predictions)
    title = f"Evaluation of {predictions.path.name}"
    meta = {"predictions": str(predictions.path),
            "threshold": "max Youden on these data (optimistic)" if threshold is None
            else threshold, "bootstrap resamples": n_boot, "seed": seed}
    write_report(out_dir, levels, title=title, meta=meta, comparisons=comparisons)
    print_levels(levels, console, title, comparisons)
    console.print(f"report written to {escape(str(out_dir))}")
    return levels


def compare_predictions(path: str | Path, models: list[str], *, out_path: str | Path | None = None,
                        console: Console | None = None) -> dict[str, object]:
    """`cadx compare`: DeLong test of two models' AUCs; print it, optionally write JSON."""
    console = console or Console()
    if len(models) != 2:
        raise ConfigError(f"--models needs exactly two model names (a,b), got {len(models)}: "
                          + ",".join(models))
    result = compare_models(read_predictions(path), *models)
    console.print(comparisons_table([result]))
    if out_path is not None:
        write_json_atomic(out_path, {"predictions": str(path), "method": "DeLong paired test",
                                     **result})
        console.print(f"result written to {escape(str(out_path))}")
    return result
