"""Clinical columns beside the images: a small schema, and a validator that cleans them.

A manifest (an image CSV, or a CT dataset's CSV / cases.csv) may carry per-patient clinical
columns (``age``, ``ca125``, ``lesion_size_mm``, ``histology``, ``device``...). A schema, a
YAML file, says what each column is::

    columns:
      age:            {type: numeric, unit: years, range: [0, 120]}
      ca125:          {type: numeric, unit: U/mL, units: {kU/L: 1}, range: [0, 100000]}
      lesion_size_mm: {type: numeric, unit: mm, units: {cm: 10}, range: [1, 300]}
      device:         {type: categorical, level: image}
      histology:      {type: categorical, leaks_label: true}

``type`` is ``numeric`` or ``categorical``; ``unit`` the unit values are kept in; ``units`` other
units a value may be written in, each with the factor that converts it to ``unit`` (1 for the
same quantity under another name: CA125 in kU/L is CA125 in U/mL); ``range`` the plausible
[low, high] in ``unit`` (either end may be null); ``values`` the allowed categories; ``level``
``patient`` (default: every image of a patient must carry the same value) or ``image``
(a column without a schema entry is read as image-level categories);
``required`` true makes a missing value an error; ``groups`` (categorical) maps a group name
to the categories reported in it (e.g. 28 histologies in a handful of groups; the others stay
as they are, and a note counts the regrouped values); ``leaks_label`` true refuses the column
as a fusion input (see `cadx.decide.fusion`).

A value may carry its unit ("35 kU/L"), and a header may name it ("ca125 [kU/L]"). The validator
(`validate_clinical`) reports one message per problem, naming the file, the column and the row:
missing values (a warning per column; an error where ``required``), text in a numeric column,
an undeclared unit, a value outside the range (an error, or set missing with a warning when the
caller asks for ``out_of_range="missing"``), a category not in ``values``, and a patient whose
images disagree. Nothing is changed silently: every unit conversion is counted in a note.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cadx.errors import ConfigError, InputError

__all__ = [
    "ClinicalColumn", "ClinicalSchema", "ClinicalValidation", "ClinicalRow", "MISSING_TOKENS",
    "OUT_OF_RANGE_POLICIES", "load_clinical_schema", "split_header_unit", "validate_clinical",
]

KINDS = ("numeric", "categorical")
LEVELS = ("patient", "image")
OUT_OF_RANGE_POLICIES = ("error", "missing")
# Cells that mean "no value": counted as missing, never read as a category or a number.
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "none", "null", "missing", "unknown", "-",
                            "?", "."})
_SHOW = 5  # problems quoted in one error message
_NUMBER = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(.*?)\s*$")
_HEADER_UNIT = re.compile(r"^(.*?)\s*[\[(]\s*([^\])]+?)\s*[\])]\s*$")
# Ends an out-of-range refusal of a file; a single patient's values (diagnose, the service)
# have no such option.
OUT_OF_RANGE_HINT = " (or pass --out-of-range missing)"
_SCHEMA_KEYS = {"type", "unit", "units", "range", "values", "groups", "level", "required",
                "leaks_label", "description"}


@dataclass(frozen=True)
class ClinicalColumn:
    """One column of the schema (see the module docstring)."""

    name: str
    kind: str
    unit: str | None = None
    units: tuple[tuple[str, float], ...] = ()  # other accepted units -> factor to `unit`
    low: float | None = None
    high: float | None = None
    values: tuple[str, ...] = ()
    groups: tuple[tuple[str, str], ...] = ()  # category -> the group it is reported in
    level: str = "patient"
    required: bool = False
    leaks_label: bool = False

    def factor(self, unit: str | None) -> float | None:
        """Factor converting a value written in `unit` to the column's unit; None if `unit`
        is not accepted. No unit (None or "") means the column's own unit."""
        if not unit or (self.unit and unit.lower() == self.unit.lower()):
            return 1.0
        for name, factor in self.units:
            if unit.lower() == name.lower():
                return factor
        return None

    def accepted_units(self) -> str:
        names = ([self.unit] if self.unit else []) + [name for name, _ in self.units]
        return ", ".join(names) if names else "no unit"

    def range_text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{low}..{high}{unit}"


@dataclass(frozen=True)
class ClinicalSchema:
    """The schema's columns by name (lower case), and the file it came from."""

    columns: dict[str, ClinicalColumn]
    source: str = ""

    def column(self, name: str) -> ClinicalColumn | None:
        return self.columns.get(name.lower())

    @property
    def leaking(self) -> tuple[str, ...]:
        return tuple(name for name, column in self.columns.items() if column.leaks_label)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _schema_column(name: str, spec: object, where: str) -> ClinicalColumn:
    what = f"{where}: column '{name}'"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{what}: expected a mapping (type, unit, range...), got {spec!r}")
    unknown = sorted(set(map(str, spec)) - _SCHEMA_KEYS)
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(_SCHEMA_KEYS))}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{what}: type must be numeric or categorical, got {kind!r}")
    level = spec.get("level", "patient")
    if level not in LEVELS:
        raise ConfigError(f"{what}: level must be patient or image, got {level!r}")
    unit = spec.get("unit")
    units = spec.get("units") or {}
    bounds = spec.get("range")
    if kind == "categorical" and (unit or units or bounds is not None):
        raise ConfigError(f"{what}: a categorical column has no unit or range")
    if not isinstance(units, Mapping):
        raise ConfigError(f"{what}: units must map a unit to its factor, e.g. {{cm: 10}}")
    if units and not unit:
        raise ConfigError(f"{what}: units are converted to 'unit', which is not given")
    factors = tuple((str(u), _number(f, f"{what}: factor of unit {u!r}"))
                    for u, f in units.items())
    if any(f <= 0 for _, f in factors):
        raise ConfigError(f"{what}: unit factors must be > 0")
    low = high = None
    if bounds is not None:
        if not isinstance(bounds, Sequence) or isinstance(bounds, str) or len(bounds) != 2:
            raise ConfigError(f"{what}: range must be [low, high] (null for no bound), "
                              f"got {bounds!r}")
        low = None if bounds[0] is None else _number(bounds[0], f"{what}: range low")
        high = None if bounds[1] is None else _number(bounds[1], f"{what}: range high")
        if low is not None and high is not None and low > high:
            raise ConfigError(f"{what}: range low {low:g} is above high {high:g}")
    values = spec.get("values") or ()
    if kind == "numeric" and values:
        raise ConfigError(f"{what}: a numeric column has a range, not values")
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ConfigError(f"{what}: values must be a list of categories")
    groups = spec.get("groups") or {}
    if kind == "numeric" and groups:
        raise ConfigError(f"{what}: a numeric column is grouped by --subgroup-bins, not groups")
    if not isinstance(groups, Mapping) or not all(
            isinstance(members, Sequence) and not isinstance(members, str)
            for members in groups.values()):
        raise ConfigError(f"{what}: groups must map a group name to a list of categories")
    pairs = [(str(v).strip(), str(g)) for g, members in groups.items() for v in members]
    repeated = sorted({v for v, _ in pairs if [w for w, _ in pairs].count(v) > 1})
    if repeated:
        raise ConfigError(f"{what}: {', '.join(repeated)} listed in two groups")
    return ClinicalColumn(name=name, kind=kind, unit=None if unit is None else str(unit),
                          units=factors, low=low, high=high,
                          values=tuple(str(v).strip() for v in values), groups=tuple(pairs),
                          level=level,
                          required=bool(spec.get("required", False)),
                          leaks_label=bool(spec.get("leaks_label", False)))


def load_clinical_schema(path: str | Path) -> ClinicalSchema:
    """Read a clinical schema (YAML, see the module docstring). InputError for a missing or
    unreadable file, ConfigError naming the file and column for a bad entry."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: clinical schema not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: unreadable YAML ({first})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("columns"), Mapping):
        raise ConfigError(f"{path}: expected a mapping 'columns:' of column name -> "
                          "{type, unit, range...}")
    columns = {}
    for name, spec in data["columns"].items():
        key = str(name).strip().lower()
        if key in columns:
            raise ConfigError(f"{path}: column '{name}' given twice")
        columns[key] = _schema_column(key, spec, str(path))
    return ClinicalSchema(columns, str(path))


def split_header_unit(header: str) -> tuple[str, str | None]:
    """'ca125 [kU/L]' -> ('ca125', 'kU/L'); a header without a bracketed unit -> (header, None)."""
    match = _HEADER_UNIT.match(header)
    if match and match.group(1).strip():
        return match.group(1).strip(), match.group(2).strip()
    return header.strip(), None


@dataclass(frozen=True)
class ClinicalRow:
    """One manifest row's raw clinical cells: where it is (e.g. 'line 4'), its patient, and
    column -> text (column names as in the header, maybe with a bracketed unit)."""

    where: str
    patient_id: str
    cells: Mapping[str, str]


@dataclass
class ClinicalValidation:
    """The cleaned values per row (numbers in the schema's unit, categories as text, None when
    missing), per patient, and what the validator had to say.

    `errors` are refusals (the caller raises them as one InputError via `raise_errors`);
    `warnings` are values that are missing or were set missing; `notes` say what was converted.
    """

    source: str
    columns: list[str]
    rows: list[dict[str, float | str | None]]
    patients: dict[str, dict[str, float | str | None]]
    kinds: dict[str, str]
    units: dict[str, str | None]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    set_missing: list[str] = field(default_factory=list)  # rows whose value was set missing
    # column -> messages about patients whose rows disagree (errors for patient-level columns)
    conflicts: dict[str, list[str]] = field(default_factory=dict)

    def raise_errors(self) -> None:
        """InputError listing the first problems (and how many more), if there are any."""
        if self.errors:
            more = (f"; and {len(self.errors) - _SHOW} more" if len(self.errors) > _SHOW
                    else "")
            raise InputError(f"{self.source}: {len(self.errors)} clinical value problem(s): "
                             + "; ".join(self.errors[:_SHOW]) + more)

    def column_values(self, column: str) -> list[float | str | None]:
        return [row.get(column) for row in self.rows]

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "columns": {c: {"type": self.kinds[c], "unit": self.units[c]}
                                                   for c in self.columns},
                "warnings": self.warnings, "notes": self.notes, "set_missing": self.set_missing}


def _parse_number(text: str) -> tuple[float | None, str, str]:
    """(number, unit text, problem) of a numeric cell: a number, optionally followed by a
    unit that starts with a letter (or %, °, µ)."""
    match = _NUMBER.match(text)
    if match is None or (match.group(2) and not re.match(r"^[^\W\d_]|^[%°µ]", match.group(2))):
        hint = ""
        if re.match(r"^\s*[+-]?\d+,\d+\s*\S*$", text):
            hint = " (decimal comma? write it with a point)"
        elif re.match(r"^\s*[<>]=?\s*\d", text):
            hint = (" (a censored value such as '<5' is not a number: give the number or leave "
                    "it blank)")
        return None, "", f"'{text}' is not a number{hint}"
    number = float(match.group(1))
    if not math.isfinite(number):
        return None, "", f"'{text}' is not a finite number"
    return number, match.group(2), ""


def looks_numeric(rows: Sequence[ClinicalRow], column: str) -> bool:
    """True when every non-missing cell of `column` (any header spelling) is a number."""
    cells = [text for row in rows for header, text in row.cells.items()
             if split_header_unit(header)[0].lower() == column
             and str(text).strip().lower() not in MISSING_TOKENS]
    return bool(cells) and all(not _parse_number(str(text).strip())[2] for text in cells)


def _header_map(columns: Sequence[str], schema: ClinicalSchema | None,
                wanted: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """clean column name -> (header as written, unit named in the header)."""
    out: dict[str, tuple[str, str | None]] = {}
    for header in columns:
        name, unit = split_header_unit(header)
        name = name.lower()
        if (schema is not None and schema.column(name) is not None) or name in wanted:
            out[name] = (header, unit)
    return out


def validate_clinical(rows: Sequence[ClinicalRow], source: str,
                      schema: ClinicalSchema | None = None, *,
                      columns: Sequence[str] = (), numeric: Sequence[str] = (),
                      out_of_range: str = "error") -> ClinicalValidation:
    """Clean the clinical cells of `rows` (from the file `source`).

    The columns checked are those of `schema` present in the rows, plus `columns` (e.g. the
    subgroup and fusion columns asked for); `numeric` names columns read as numbers even
    without a schema entry (e.g. those binned by --subgroup-bins). A column asked for but
    absent from every row is an error; a schema column absent from the file is a note.
    `out_of_range`: "error" refuses values outside the schema's range, "missing" sets them
    missing with a warning each. Returns a `ClinicalValidation`; call its `raise_errors`.
    """
    if out_of_range not in OUT_OF_RANGE_POLICIES:
        raise ConfigError(f"out-of-range policy must be one of {', '.join(OUT_OF_RANGE_POLICIES)}"
                          f", got {out_of_range!r}")
    headers = list(dict.fromkeys(h for row in rows for h in row.cells))
    wanted = [c.lower() for c in (*columns, *numeric)]
    present = _header_map(headers, schema, wanted)
    validation = ClinicalValidation(source, [], [{} for _ in rows], {}, {}, {})
    absent = [c for c in dict.fromkeys(wanted) if c not in present]
    if absent:
        validation.errors.append(
            f"no column {', '.join(repr(c) for c in absent)} (columns: "
            f"{', '.join(split_header_unit(h)[0].lower() for h in headers) or 'none'})")
    if schema is not None:
        unused = [name for name in schema.columns if name not in present]
        if unused:
            validation.notes.append(f"schema {schema.source} column(s) not in this file: "
                                    f"{', '.join(unused)}")
    for name, (header, header_unit) in present.items():
        spec = schema.column(name) if schema is not None else None
        if spec is None:
            spec = ClinicalColumn(name, "numeric" if name in numeric else "categorical")
        _validate_column(validation, rows, spec, header, header_unit, out_of_range)
    _patient_values(validation, rows, schema)
    return validation


def _validate_column(validation: ClinicalValidation, rows: Sequence[ClinicalRow],
                     spec: ClinicalColumn, header: str, header_unit: str | None,
                     out_of_range: str) -> None:
    name = spec.name
    validation.columns.append(name)
    validation.kinds[name] = spec.kind
    validation.units[name] = spec.unit
    errors, missing, converted = validation.errors, [], defaultdict(int)
    group_of, grouped = dict(spec.groups), 0
    if header_unit is not None and spec.kind == "numeric" and spec.factor(header_unit) is None:
        errors.append(f"column '{name}': header unit '{header_unit}' is not accepted "
                      f"(accepted: {spec.accepted_units()})")
        return
    if header_unit is not None and spec.kind == "categorical":
        errors.append(f"column '{name}': header names a unit '{header_unit}' but the column is "
                      "categorical")
        return
    for row, cleaned in zip(rows, validation.rows, strict=True):
        text = str(row.cells.get(header, "") or "").strip()
        cleaned[name] = None
        where = f"{row.where}, column '{name}'"
        if text.lower() in MISSING_TOKENS:
            missing.append(row.where)
            continue
        if spec.kind == "categorical":
            if spec.values and text not in spec.values:
                errors.append(f"{where}: '{text}' is not one of {', '.join(spec.values)}")
                continue
            cleaned[name] = group_of.get(text, text)
            grouped += text in group_of
            continue
        number, unit, problem = _parse_number(text)
        if problem:
            errors.append(f"{where}: {problem}")
            continue
        if unit and header_unit and unit.lower() != header_unit.lower():
            errors.append(f"{where}: value unit '{unit}' differs from the header's "
                          f"'{header_unit}'")
            continue
        unit = unit or header_unit
        factor = spec.factor(unit)
        if factor is None:
            errors.append(f"{where}: unit '{unit}' of '{text}' is not accepted (accepted: "
                          f"{spec.accepted_units()})")
            continue
        if unit and not (spec.unit and unit.lower() == spec.unit.lower()):
            converted[unit] += 1
        value = number * factor
        outside = ((spec.low is not None and value < spec.low)
                   or (spec.high is not None and value > spec.high))
        if outside:
            shown = f"'{text}'" + (f" (= {value:g} {spec.unit})" if factor != 1.0 else "")
            message = f"{where}: {shown} is outside the plausible range {spec.range_text()}"
            if out_of_range == "error":
                errors.append(message + OUT_OF_RANGE_HINT)
            else:
                validation.warnings.append(message + "; set missing (--out-of-range missing)")
                validation.set_missing.append(f"{row.where}, column '{name}'")
            continue
        cleaned[name] = value
    if grouped:
        validation.notes.append(f"column '{name}': {grouped} value(s) reported in the schema's "
                                f"groups ({', '.join(dict.fromkeys(group_of.values()))})")
    for unit, count in converted.items():
        factor = spec.factor(unit)
        validation.notes.append(f"column '{name}': {count} value(s) in {unit} read as "
                                f"{spec.unit} (x {factor:g})")
    if missing:
        more = f", ... ({len(missing)} in all)" if len(missing) > _SHOW else ""
        message = (f"column '{name}': missing on {len(missing)} of {len(rows)} row(s) "
                   f"({', '.join(missing[:_SHOW])}{more})")
        (errors if spec.required else validation.warnings).append(
            message + (" and the schema requires it" if spec.required else ""))


def _patient_values(validation: ClinicalValidation, rows: Sequence[ClinicalRow],
                    schema: ClinicalSchema | None) -> None:
    """One value per patient and column: the first value its rows carry (rows without one are
    missing, not a conflict). Rows of one patient with different values are recorded in
    `conflicts`; for a schema column of level 'patient' they are errors. A column without a
    schema entry is taken as image-level (a subgroup column such as BI-RADS may differ between
    a patient's images); a fusion refuses conflicting values of its own columns."""
    for name in validation.columns:
        spec = schema.column(name) if schema is not None else None
        patient_level = spec is not None and spec.level == "patient"
        seen: dict[str, tuple[float | str, str]] = {}
        for row, cleaned in zip(rows, validation.rows, strict=True):
            patient = validation.patients.setdefault(row.patient_id, {})
            value = cleaned.get(name)
            patient.setdefault(name, None)
            if value is None:
                continue
            if row.patient_id not in seen:
                seen[row.patient_id] = (value, row.where)
                patient[name] = value
            elif seen[row.patient_id][0] != value:
                first, where = seen[row.patient_id]
                message = (f"{row.where}, column '{name}': patient {row.patient_id} has "
                           f"'{_shown(value)}' here but '{_shown(first)}' on {where}")
                validation.conflicts.setdefault(name, []).append(message)
                if patient_level:
                    validation.errors.append(message + " (a patient-level column; declare "
                                             "'level: image' in the schema if it varies per "
                                             "image)")


def _shown(value: float | str) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def image_rows(records: Sequence[object]) -> list[ClinicalRow]:
    """The clinical rows of image records (`cadx.io.images.ImageRecord`): where = the manifest
    line (or the file name), cells = the manifest's extra columns."""
    return [ClinicalRow(f"line {r.line}" if r.line is not None else r.path.name, r.patient_id,
                        dict(r.attributes)) for r in records]


def case_rows(refs: Sequence[object]) -> list[ClinicalRow]:
    """The clinical rows of CT dataset cases (`cadx.io.dataset.CaseRef`): one per patient."""
    return [ClinicalRow(f"patient {r.patient_id}", r.patient_id,
                        {k.strip(): v for k, v in r.meta.items() if isinstance(v, str)})
            for r in refs]


def schema_from_columns(specs: Mapping[str, Mapping[str, object]],
                        source: str = "the model bundle") -> ClinicalSchema:
    """A schema rebuilt from `column_spec` dicts (as a fusion model stores them)."""
    columns = {}
    for name, spec in specs.items():
        columns[name] = ClinicalColumn(
            name=name, kind=str(spec["kind"]), unit=spec.get("unit"),
            units=tuple((str(u), float(f)) for u, f in spec.get("units", ())),
            low=spec.get("low"), high=spec.get("high"),
            values=tuple(spec.get("values", ())), level=str(spec.get("level", "patient")))
    return ClinicalSchema(columns, source)


def with_columns(schema: ClinicalSchema | None, extra: ClinicalSchema) -> ClinicalSchema:
    """`schema` plus the columns of `extra` it does not define (e.g. a fusion model's stored
    columns beside the user's schema)."""
    if schema is None:
        return extra
    merged = {**extra.columns, **schema.columns}
    return ClinicalSchema(merged, schema.source)


def column_spec(column: ClinicalColumn) -> dict[str, object]:
    """A column as a plain dict, for a bundle's JSON manifest."""
    return {"kind": column.kind, "unit": column.unit, "units": [list(u) for u in column.units],
            "low": column.low, "high": column.high, "values": list(column.values),
            "level": column.level}


def parse_clinical_items(items: Sequence[str], option: str = "--clinical") -> dict[str, str]:
    """'--clinical age=54,device=GE' items -> {column: text}. A comma piece without '=' belongs
    to the previous value (so 'device=GE Logiq 7, 10 MHz' stays one value). `option` names the
    source in messages (the service's form field is `clinical`)."""
    values: dict[str, str] = {}
    for item in items:
        last = None
        for piece in item.split(","):
            name, sep, text = piece.partition("=")
            if sep and name.strip():
                last = name.strip().lower()
                if last in values:
                    raise ConfigError(f"{option} names '{last[:40]}' twice")
                values[last] = text.strip()
            elif last is not None:
                values[last] += "," + piece
            elif piece.strip():
                raise ConfigError(f"{option} expects NAME=VALUE[,NAME=VALUE...] "
                                  f"(e.g. age=54,device=GE), got {item[:80]!r}")
    return values
