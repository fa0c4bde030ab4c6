"""The triage pipeline file (YAML): the router and its confidence floor, the optional QC model
and its drop rules, and for every category the analysers with their thresholds.

    version: 1
    router: {bundle: router.cadx, confidence_floor: 0.6}
    qc: {bundle: qc.cadx, drop_if: [not target, unreadable]}
    categories:
      us-thyroid:
        - {name: thyroid-cnn, type: image-model, bundle: thyroid-cnn.cadx,
           image_threshold: 0.41, exam_threshold: 0.52}
      ct-abdomen: []

Bundle paths are relative to the file's folder. `load_pipeline` checks everything up front
(unknown keys, categories the router does not know, flags the QC model lacks, unreadable
bundles) and names the file and the entry in its one-line error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cadx.errors import CadxError, ConfigError, InputError
from cadx.image_bundle import load_image_bundle
from cadx.io.atomic import write_text_atomic
from cadx.triage.analysers import Analyser, AnalyserSpec, build_analyser
from cadx.triage.bundle import TriageBundle, load_triage_bundle
from cadx.triage.qc import DropRule, default_drop_rules, parse_drop_rules

PIPELINE_VERSION = 1
_TOP_KEYS = {"version", "router", "qc", "categories"}
_ANALYSER_KEYS = {"name", "type", "bundle", "image_threshold", "exam_threshold"}


@dataclass
class Pipeline:
    """A loaded, validated pipeline: the models themselves, ready to run."""

    path: Path
    router: TriageBundle
    router_file: Path
    confidence_floor: float
    qc: TriageBundle | None = None
    qc_file: Path | None = None
    drop_rules: tuple[DropRule, ...] = ()
    analysers: dict[str, list[Analyser]] = field(default_factory=dict)


def _mapping(value: Any, where: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; allowed: "
                          f"{', '.join(sorted(keys))}")
    return value


def _probability(value: Any, where: str, upper_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not 0.0 <= value <= 1.0 or (upper_open and value == 1.0):
        raise ConfigError(f"{where}: {value} is outside [0, 1{')' if upper_open else ']'}")
    return float(value)


def _bundle_path(value: Any, base: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: bundle must be a file path, got {value!r}")
    path = (base / value) if not Path(value).is_absolute() else Path(value)
    if not path.is_file():
        raise ConfigError(f"{where}: bundle {value} not found (looked at {path})")
    return path


def _load(loader: Any, path: Path, where: str) -> Any:
    try:
        return loader(path)
    except CadxError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline file and load every model it names."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pipeline file not found (cadx pipeline init writes one)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable YAML file ({first})") from None
    data = _mapping(data, str(path), _TOP_KEYS)
    if data.get("version", PIPELINE_VERSION) != PIPELINE_VERSION:
        raise ConfigError(f"{path}: version {data.get('version')!r}; this cadx reads version "
                          f"{PIPELINE_VERSION}")
    base = path.parent
    if "router" not in data:
        raise ConfigError(f"{path}: no router (router: {{bundle: router.cadx}})")
    router_entry = _mapping(data["router"], f"{path}: router", {"bundle", "confidence_floor"})
    router_file = _bundle_path(router_entry.get("bundle"), base, f"{path}: router")
    router = _load(lambda p: load_triage_bundle(p, "router"), router_file, f"{path}: router")
    floor = _probability(router_entry.get("confidence_floor", router.confidence_floor),
                         f"{path}: router.confidence_floor", upper_open=True)
    pipeline = Pipeline(path, router, router_file, floor)
    if data.get("qc") is not None:
        qc_entry = _mapping(data["qc"], f"{path}: qc", {"bundle", "drop_if"})
        pipeline.qc_file = _bundle_path(qc_entry.get("bundle"), base, f"{path}: qc")
        pipeline.qc = _load(lambda p: load_triage_bundle(p, "qc"), pipeline.qc_file,
                            f"{path}: qc")
        rules = qc_entry.get("drop_if")
        if rules is None:
            pipeline.drop_rules = default_drop_rules(pipeline.qc.labels)
        elif isinstance(rules, list):
            pipeline.drop_rules = parse_drop_rules(rules, pipeline.qc.labels,
                                                   f"{path}: qc.drop_if")
        else:
            raise ConfigError(f"{path}: qc.drop_if must be a list like [not target, unreadable]")
    categories = data.get("categories") or {}
    if not isinstance(categories, Mapping):
        raise ConfigError(f"{path}: categories must map each category to a list of analysers")
    names: set[str] = set()
    for category, entries in categories.items():
        where = f"{path}: categories.{category}"
        if category not in router.labels:
            raise ConfigError(f"{where}: the router has no category {category!r}; it has "
                              f"{', '.join(router.labels)}")
        if not isinstance(entries, list):
            raise ConfigError(f"{where}: expected a list of analysers (or [])")
        pipeline.analysers[category] = []
        for k, entry in enumerate(entries):
            spec = _analyser_spec(entry, category, base, f"{where}[{k}]")
            if spec.name in names:
                raise ConfigError(f"{where}[{k}]: analyser name {spec.name!r} used twice")
            names.add(spec.name)
            pipeline.analysers[category].append(_load(build_analyser, spec, f"{where}[{k}]"))
    return pipeline


def _analyser_spec(entry: Any, category: str, base: Path, where: str) -> AnalyserSpec:
    entry = _mapping(entry, where, _ANALYSER_KEYS)
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: every analyser needs a name")
    thresholds = {key: _probability(entry[key], f"{where}.{key}") if key == "image_threshold"
                  else _non_negative(entry[key], f"{where}.{key}")
                  for key in ("image_threshold", "exam_threshold")
                  if entry.get(key) is not None}
    return AnalyserSpec(name, category, _bundle_path(entry.get("bundle"), base, where),
                        str(entry.get("type", "image-model")), **thresholds)


def _non_negative(value: Any, where: str) -> float:
    # An exam score (theta) is not bounded by 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{where}: expected a number >= 0, got {value!r}")
    return float(value)


def _relative(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # another drive on Windows
        return str(path.resolve())


def init_pipeline(path: str | Path, router_file: str | Path, *,
                  qc_file: str | Path | None = None,
                  analysers: Sequence[tuple[str, str | Path]] = (),
                  drop_if: Sequence[str] | None = None) -> Path:
    """Write a pipeline file: every router category with its analysers ((category, bundle)
    pairs, named after the bundle file, thresholds copied from the bundles), the QC model and its
    drop rules. The written file is loaded back (validated) before it is kept."""
    path = Path(path)
    base = path.parent
    router = load_triage_bundle(router_file, "router")
    data: dict[str, Any] = {"version": PIPELINE_VERSION,
                            "router": {"bundle": _relative(Path(router_file), base),
                                       "confidence_floor": router.confidence_floor}}
    flags = "no QC model"
    if qc_file is not None:
        qc = load_triage_bundle(qc_file, "qc")
        flags = ", ".join(qc.labels)
        rules = (parse_drop_rules(drop_if, qc.labels) if drop_if is not None
                 else default_drop_rules(qc.labels))
        data["qc"] = {"bundle": _relative(Path(qc_file), base),
                      "drop_if": [str(rule) for rule in rules]}
    categories: dict[str, list[dict[str, Any]]] = {c: [] for c in router.labels}
    names: list[str] = []
    for category, bundle_file in analysers:
        if category not in categories:
            raise ConfigError(f"analyser {bundle_file}: the router has no category "
                              f"{category!r}; it has {', '.join(router.labels)}")
        bundle = load_image_bundle(bundle_file)
        name, k = Path(bundle_file).stem, 1
        while name in names:
            k += 1
            name = f"{Path(bundle_file).stem}-{k}"
        names.append(name)
        categories[category].append({"name": name, "type": "image-model",
                        "bundle": _relative(Path(bundle_file), base),
                        "image_threshold": round(bundle.image_threshold, 6),
                        "exam_threshold": round(bundle.exam_threshold, 6)})
    data["categories"] = categories
    header = ("# cadx triage pipeline: QC -> route -> every analyser of the category.\n"
              "# Paths are relative to this file. Edit names, thresholds and drop rules\n"
              f"# (QC flags: {flags}), then:\n"
              "#   cadx run " + path.name + " IMAGES... --out results/\n")
    text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    write_text_atomic(path, text)
    try:
        load_pipeline(path)
    except CadxError:
        path.unlink(missing_ok=True)
        raise
    return path
