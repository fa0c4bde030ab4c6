"""Fusion of the image model's exam score with clinical columns (issue 17).

A logistic regression of the outcome on the logit of the exam (patient) score plus chosen
clinical columns: numbers standardised, categories one-hot (every level, with scikit-learn's
default L2 penalty, so no reference level is needed). It is fitted on the validation patients
only — the same patients that chose the image model's thresholds, never a test patient — and
its own threshold is chosen there by Youden. The fitted model is kept as plain numbers
(`FusionModel.to_dict`), so a bundle stores it in its JSON manifest and scoring needs no pickle.

Columns that leak the answer are refused by name (`refuse_leaking_columns`): BI-RADS (the
radiologist's malignancy call on the same images), histology and pathology (the biopsy result
that defines the label), grade and stage (known only for cancers, after diagnosis), the label
itself, any column the schema marks ``leaks_label``, and any column whose values separate the
fitting patients' labels perfectly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cadx.decide.roc import OperatingPoint, youden_operating_point
from cadx.errors import ConfigError, InputError
from cadx.io.clinical import (
    ClinicalRow,
    ClinicalSchema,
    ClinicalValidation,
    column_spec,
    looks_numeric,
    validate_clinical,
)

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["FusionFit", "FusionInputs", "FusionModel", "LEAKING_COLUMNS",
           "bundle_validation_ids", "fit_fusion", "fit_validation_fusion",
           "fusion_clinical_values", "fusion_inputs_note", "print_fusion_fit",
           "refuse_leaking_columns"]

FUSION_FORMAT = "cadx-fusion/1"
SCORE_FEATURE = "logit(exam score)"
_LOGIT_CLIP = 1e-6
MIN_PATIENTS_PER_CLASS = 5

_BIRADS = ("BI-RADS is the radiologist's malignancy category for these same images: a fusion "
           "on it measures the reader, not the model")
_BIOPSY = "it is the biopsy result that defines benign vs malignant"
_AFTER = "it exists only for cancers, known after the diagnosis"
LEAKING_COLUMNS = {
    "birads": _BIRADS, "bi-rads": _BIRADS, "bi_rads": _BIRADS,
    "histology": _BIOPSY, "pathology": _BIOPSY, "diagnosis": _BIOPSY,
    "grade": _AFTER, "stage": _AFTER,
    "label": "it is the label itself", "y_true": "it is the label itself",
    "malignant": "it is the label itself",
}


def refuse_leaking_columns(columns: Sequence[str], leaks_label: Sequence[str] = (),
                           label_column: str = "label", schema_source: str = "") -> None:
    """ConfigError naming every fusion column that leaks the answer, each with its reason."""
    refused = []
    for column in columns:
        name = column.lower()
        if name == label_column.lower():
            refused.append(f"'{column}' (it is the label column itself)")
        elif name in LEAKING_COLUMNS:
            refused.append(f"'{column}' ({LEAKING_COLUMNS[name]})")
        elif name in {c.lower() for c in leaks_label}:
            where = f" in {schema_source}" if schema_source else ""
            refused.append(f"'{column}' (the schema{where} marks it leaks_label)")
    if refused:
        raise ConfigError("refused as fusion input(s), they leak the answer: "
                          + "; ".join(refused))


@dataclass
class FusionInputs:
    """The fitting patients: ids, 0/1 outcome, exam score in [0, 1] and clinical values per
    column (numbers in the schema's unit, categories as text, None when missing)."""

    patient_ids: Sequence[str]
    y_true: Sequence[int]
    scores: Sequence[float]
    clinical: Mapping[str, Sequence[float | str | None]]


def _logit(p: float) -> float:
    p = min(max(float(p), _LOGIT_CLIP), 1.0 - _LOGIT_CLIP)
    return math.log(p / (1.0 - p))


@dataclass
class FusionModel:
    """A fitted fusion: features, their scaling, coefficients, threshold and provenance."""

    columns: tuple[str, ...]
    kinds: dict[str, str]
    units: dict[str, str | None]
    score_mean: float
    score_scale: float
    numeric_scaling: dict[str, tuple[float, float]]  # column -> (mean, sd)
    levels: dict[str, tuple[str, ...]]  # categorical column -> its levels (one-hot order)
    coefficients: dict[str, float]  # feature name -> coefficient (standardised features)
    intercept: float
    operating_point: OperatingPoint
    fitted_on: dict[str, object] = field(default_factory=dict)
    # column -> its schema entry (unit, accepted units, range...): diagnose checks new values
    # against it (see cadx.io.clinical.column_spec)
    column_specs: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.operating_point.threshold

    def feature_names(self) -> list[str]:
        names = [SCORE_FEATURE]
        for column in self.columns:
            if self.kinds[column] == "numeric":
                names.append(column)
            else:
                names += [f"{column}={level}" for level in self.levels[column]]
        return names

    def missing_reason(self, clinical: Mapping[str, float | str | None]) -> str | None:
        """Why these clinical values cannot be fused (a column missing, a category not seen
        when fitting), or None when they can."""
        absent = [c for c in self.columns if clinical.get(c) is None]
        if absent:
            return f"the fusion model needs {', '.join(absent)}: missing"
        for column in self.columns:
            value = clinical[column]
            if self.kinds[column] == "categorical" and str(value) not in self.levels[column]:
                return (f"{column} '{value}' was not among the validation patients' values "
                        f"({', '.join(self.levels[column])})")
            if self.kinds[column] == "numeric" and not isinstance(value, (int, float)):
                return f"{column} '{value}' is not a number"
        return None

    def _row(self, score: float, clinical: Mapping[str, float | str | None]) -> np.ndarray:
        features = [(_logit(score) - self.score_mean) / self.score_scale]
        for column in self.columns:
            value = clinical[column]
            if self.kinds[column] == "numeric":
                mean, sd = self.numeric_scaling[column]
                features.append((float(value) - mean) / sd)
            else:
                features += [float(str(value) == level) for level in self.levels[column]]
        return np.array(features)

    def predict(self, score: float, clinical: Mapping[str, float | str | None]) -> float:
        """Fused probability of one patient; InputError saying why when it cannot be fused."""
        reason = self.missing_reason(clinical)
        if reason is not None:
            raise InputError(reason)
        weights = np.array([self.coefficients[name] for name in self.feature_names()])
        z = float(self._row(score, clinical) @ weights + self.intercept)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def predict_many(self, scores: Sequence[float],
                     clinical: Sequence[Mapping[str, float | str | None]]
                     ) -> tuple[np.ndarray, list[str | None]]:
        """Fused probabilities (NaN where not fusable) and the reason per patient (None when
        fused)."""
        out, reasons = np.full(len(scores), np.nan), []
        for k, (score, values) in enumerate(zip(scores, clinical, strict=True)):
            reason = self.missing_reason(values)
            reasons.append(reason)
            if reason is None:
                out[k] = self.predict(score, values)
        return out, reasons

    def to_dict(self) -> dict[str, object]:
        return {"format": FUSION_FORMAT, "columns": list(self.columns), "kinds": self.kinds,
                "units": self.units, "score_feature": SCORE_FEATURE,
                "score_mean": self.score_mean, "score_scale": self.score_scale,
                "numeric_scaling": {c: list(v) for c, v in self.numeric_scaling.items()},
                "levels": {c: list(v) for c, v in self.levels.items()},
                "coefficients": self.coefficients, "intercept": self.intercept,
                "operating_point": self.operating_point.to_dict(), "fitted_on": self.fitted_on,
                "column_specs": self.column_specs}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> FusionModel:
        if data.get("format") != FUSION_FORMAT:
            raise ConfigError(f"unknown fusion model format {data.get('format')!r}")
        return cls(
            columns=tuple(data["columns"]), kinds=dict(data["kinds"]), units=dict(data["units"]),
            score_mean=float(data["score_mean"]), score_scale=float(data["score_scale"]),
            numeric_scaling={c: (float(v[0]), float(v[1]))
                             for c, v in data["numeric_scaling"].items()},
            levels={c: tuple(v) for c, v in data["levels"].items()},
            coefficients={k: float(v) for k, v in data["coefficients"].items()},
            intercept=float(data["intercept"]),
            operating_point=OperatingPoint.from_dict(data["operating_point"]),
            fitted_on=dict(data.get("fitted_on", {})),
            column_specs=dict(data.get("column_specs", {})))

    def describe(self) -> str:
        """One line: what is fused, on how many patients."""
        fitted = self.fitted_on
        return (f"logistic regression of the outcome on {SCORE_FEATURE} + "
                f"{', '.join(self.columns)}, fitted on {fitted.get('n_patients')} "
                f"{fitted.get('split', 'validation')} patients "
                f"({fitted.get('n_positive')} malignant)")


def _separates(values: Sequence[float | str], y: np.ndarray) -> bool:
    """True when the column's values alone order the labels perfectly (AUC 0 or 1 as a
    number; every category of one class for text)."""
    if all(isinstance(v, (int, float)) for v in values):
        auc = roc_auc_score(y, np.asarray(values, dtype=float))
        return auc in (0.0, 1.0)
    classes: dict[str, set[int]] = {}
    for value, label in zip(values, y.tolist(), strict=True):
        classes.setdefault(str(value), set()).add(label)
    return all(len(c) == 1 for c in classes.values())


def fit_fusion(inputs: FusionInputs, columns: Sequence[str], kinds: Mapping[str, str],
               units: Mapping[str, str | None] | None = None, *, split: str = "validation",
               leaks_label: Sequence[str] = (), schema_source: str = "", c: float = 1.0,
               seed: int = 0, column_specs: Mapping[str, Mapping[str, object]] | None = None,
               ) -> tuple[FusionModel, list[str]]:
    """Fit the fusion on `inputs` (the validation patients: the caller selects them) and
    return it with notes (patients left out for missing values).

    ConfigError for a leaking column, an unknown kind, or too few patients of a class with
    complete values; InputError for bad scores.
    """
    columns = list(dict.fromkeys(columns))
    if not columns:
        raise ConfigError("give at least one clinical column to fuse")
    refuse_leaking_columns(columns, leaks_label, schema_source=schema_source)
    unknown = [col for col in columns if col not in inputs.clinical]
    if unknown:
        raise ConfigError(f"no clinical values for {', '.join(unknown)}")
    y = np.asarray(inputs.y_true, dtype=int)
    scores = np.asarray(inputs.scores, dtype=float)
    ids = [str(p) for p in inputs.patient_ids]
    if not (len(ids) == y.size == scores.size):
        raise InputError(f"{len(ids)} patients, {y.size} labels and {scores.size} scores")
    if scores.size and (not np.isfinite(scores).all() or scores.min() < 0 or scores.max() > 1):
        raise InputError("exam scores must be finite and within [0, 1]")
    complete = np.array([all(inputs.clinical[col][k] is not None for col in columns)
                         for k in range(len(ids))], dtype=bool)
    notes = []
    if not complete.all():
        notes.append(f"{int((~complete).sum())} of {len(ids)} {split} patients left out of the "
                     f"fusion fit: a value of {', '.join(columns)} is missing")
    y_fit = y[complete]
    for label, name in ((1, "malignant"), (0, "benign")):
        n = int((y_fit == label).sum())
        if n < MIN_PATIENTS_PER_CLASS:
            raise ConfigError(f"fusion needs at least {MIN_PATIENTS_PER_CLASS} {name} {split} "
                              f"patients with every value of {', '.join(columns)}; found {n}")
    kinds = {col: kinds.get(col, "categorical") for col in columns}
    bad_kind = [col for col in columns if kinds[col] not in ("numeric", "categorical")]
    if bad_kind:
        raise ConfigError(f"unknown column kind for {', '.join(bad_kind)}")
    values = {col: [inputs.clinical[col][k] for k in np.flatnonzero(complete)] for col in columns}
    # A category that holds one class only in every value is the label under another name
    # (histology by another header); a number that separates the classes may be a strong
    # marker on few patients, so it is said, not refused.
    separating = [col for col in columns
                  if kinds[col] == "categorical" and _separates(values[col], y_fit)]
    notes += [f"'{col}' alone separates the {split} patients' labels perfectly: check that it "
              "is measured before, and independently of, the diagnosis"
              for col in columns if kinds[col] == "numeric" and _separates(values[col], y_fit)]
    if separating:
        raise ConfigError("refused as fusion input(s), they leak the answer: "
                          + "; ".join(f"'{col}' (its values separate the {split} patients' "
                                      "labels perfectly)" for col in separating))
    logits = np.array([_logit(s) for s in scores[complete]])
    score_mean, score_scale = float(logits.mean()), float(logits.std() or 1.0)
    numeric_scaling, levels = {}, {}
    for col in columns:
        if kinds[col] == "numeric":
            try:
                numbers = np.asarray(values[col], dtype=float)
            except (TypeError, ValueError):
                raise ConfigError(f"column '{col}' is declared numeric but holds text; "
                                  "check it with --clinical-schema") from None
            numeric_scaling[col] = (float(numbers.mean()), float(numbers.std() or 1.0))
        else:
            levels[col] = tuple(sorted({str(v) for v in values[col]}))
    model = FusionModel(tuple(columns), kinds, {col: (units or {}).get(col) for col in columns},
                        score_mean, score_scale, numeric_scaling, levels, {}, 0.0,
                        OperatingPoint(0.5, 0, 0, 0, 0, (), ()),
                        column_specs={col: dict(spec) for col, spec in (column_specs or {}).items()
                                      if col in columns})
    fit_rows = np.flatnonzero(complete)
    clinical_rows = [{col: inputs.clinical[col][k] for col in columns} for k in fit_rows]
    matrix = np.stack([model._row(scores[k], row) for k, row in zip(fit_rows, clinical_rows,
                                                                      strict=True)])
    regression = LogisticRegression(C=c, max_iter=1000, random_state=seed)
    regression.fit(matrix, y_fit)
    model.coefficients = dict(zip(model.feature_names(), map(float, regression.coef_[0]),
                                  strict=True))
    model.intercept = float(regression.intercept_[0])
    fused = regression.predict_proba(matrix)[:, 1]
    model.operating_point = youden_operating_point(y_fit, fused, f"{split} fusion")
    fitted_ids = sorted(ids[k] for k in fit_rows)
    model.fitted_on = {
        "split": split, "n_patients": int(fit_rows.size), "n_positive": int(y_fit.sum()),
        "patient_ids_sha256": hashlib.sha256("\n".join(fitted_ids).encode()).hexdigest(),
        "patient_ids": fitted_ids, "regularisation_C": c,
        "auc_image_only": float(roc_auc_score(y_fit, scores[complete])),
        "auc_fusion": float(roc_auc_score(y_fit, fused)), "notes": notes}
    return model, notes


# --------------------------------------------------------------- fitting on a bundle's patients
# `cadx fuse` for any bundle kind (2D images: cadx.decide.image_fusion, CT: cadx.decide.ct_fusion)
# walks the same steps: the bundle's validation patients, their clinical values checked, their
# image-only patient scores, the fit.


@dataclass
class FusionFit:
    """The fitted fusion, the validation patients' records it used (image records or CT case
    references) and what was said on the way."""

    fusion: FusionModel
    records: tuple[Any, ...]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def bundle_validation_ids(summary: Mapping[str, Any], bundle: str, train_commands: str
                          ) -> tuple[set[str], set[str]]:
    """(validation patient ids, training and test ids) as a bundle's summary lists them;
    ConfigError naming the bundle (`bundle`, e.g. its name and date) when it lists none."""
    split = summary.get("split", {})
    validation = {str(p) for p in split.get("validation", [])}
    if not validation:
        raise ConfigError(f"bundle {bundle} lists no validation patients: a fusion is fitted on "
                          f"them only (train it with {train_commands})")
    return validation, {str(p) for p in (*split.get("train", []), *split.get("test", []))}


def fusion_clinical_values(rows: Sequence[ClinicalRow], source: str, columns: Sequence[str],
                           schema: ClinicalSchema | None = None, out_of_range: str = "error",
                           ) -> tuple[ClinicalValidation, list[str]]:
    """The fusion `columns` of the validation patients' `rows` checked (against `schema`;
    columns without an entry whose every value is a number are read as numbers), one value per
    patient; InputError listing the problems. Returns the validation and notes."""
    notes = []
    numeric = [c for c in columns if (schema is None or schema.column(c) is None)
               and looks_numeric(rows, c)]
    if numeric:
        notes.append(f"{', '.join(numeric)} read as number(s): no schema entry, and every value "
                     "is a number (give --clinical-schema for the unit and plausible range)")
    validation = validate_clinical(rows, source, schema, columns=columns, numeric=numeric,
                                   out_of_range=out_of_range)
    validation.raise_errors()
    conflicts = [m for c in columns for m in validation.conflicts.get(c, [])]
    if conflicts:
        raise InputError(f"{source}: a fusion column needs one value per patient: "
                         + "; ".join(conflicts[:3])
                         + (f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""))
    return validation, notes


def fit_validation_fusion(scores: Mapping[str, float], labels: Mapping[str, int],
                          validation: ClinicalValidation, columns: Sequence[str], *,
                          schema: ClinicalSchema | None = None, seed: int = 0,
                          ) -> tuple[FusionModel, list[str]]:
    """`fit_fusion` on the validation patients' image-only scores in [0, 1] and 0/1 labels
    (patient id -> value) with their checked clinical values; the columns' schema entries (or
    their kind as read) are stored with the model, so diagnose checks new values the same way."""
    ids = sorted(scores)
    inputs = FusionInputs(ids, [labels[p] for p in ids], [scores[p] for p in ids],
                          {c: [validation.patients.get(p, {}).get(c) for p in ids]
                           for c in columns})
    specs = {}
    for c in columns:
        entry = schema.column(c) if schema is not None else None
        specs[c] = column_spec(entry) if entry is not None else {
            "kind": validation.kinds[c], "level": "image"}
    return fit_fusion(inputs, columns, validation.kinds, validation.units,
                      leaks_label=schema.leaking if schema is not None else (), seed=seed,
                      column_specs=specs, schema_source=schema.source if schema else "")


def fusion_inputs_note(fusion: FusionModel, command: str = "cadx evaluate-images") -> str:
    """The validation AUCs of the fit, said to be in-sample (judge it with `command`)."""
    fitted = fusion.fitted_on
    return (f"validation AUC on the {fitted['n_patients']} fitting patients: image only "
            f"{fitted['auc_image_only']:.3f}, fusion {fitted['auc_fusion']:.3f} (in-sample: the "
            f"fusion was fitted on them; judge it on test patients with {command})")


def print_fusion_fit(console: Console, fit: FusionFit, headline: str, out_path: object,
                     evaluate_command: str) -> None:
    """What `cadx fuse` prints after a fit (image or CT bundle): the headline, warnings, notes,
    coefficients, the in-sample validation AUCs and the threshold."""
    from rich.markup import escape

    console.print(f"[bold]cadx fuse[/]: {escape(headline)}")
    for warning in fit.warnings:
        console.print(f"[yellow]warning[/]: {escape(warning)}")
    for note in fit.notes:
        console.print(f"  note: {escape(note)}")
    for name, weight in fit.fusion.coefficients.items():
        console.print(f"  coefficient of {escape(name)}: {weight:+.3f}"
                      + ("" if "=" in name else " (per SD)"))
    console.print(f"  {escape(fusion_inputs_note(fit.fusion, evaluate_command))}")
    console.print(f"  fusion threshold (Youden on those patients): {fit.fusion.threshold:.4f}")
    console.print(f"model bundle with fusion written to {out_path}")
