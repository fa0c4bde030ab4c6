"""Subgroup columns for a report: categorical columns as they are, numeric columns in bins the
user gives (``--subgroup-bins lesion_size_mm=0,20,40``). `cadx.evaluate.levels` then tabulates
each column with its confidence intervals."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence

from cadx.errors import ConfigError
from cadx.evaluate.levels import MISSING_GROUP

__all__ = ["bin_label_order", "bin_values", "parse_subgroup_bins"]


def parse_subgroup_bins(items: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """'COLUMN=E1,E2,...' items -> {column: increasing edges}; ConfigError naming the item."""
    bins: dict[str, tuple[float, ...]] = {}
    for item in items:
        column, sep, text = item.partition("=")
        column = column.strip().lower()
        if not sep or not column or not text.strip():
            raise ConfigError(f"--subgroup-bins expects COLUMN=EDGE,EDGE,... (e.g. "
                              f"lesion_size_mm=0,20,40), got {item!r}")
        try:
            edges = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ConfigError(f"--subgroup-bins {item!r}: edges must be numbers") from None
        if not all(math.isfinite(e) for e in edges):
            raise ConfigError(f"--subgroup-bins {item!r}: edges must be finite")
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ConfigError(f"--subgroup-bins {item!r}: edges must increase")
        if column in bins:
            raise ConfigError(f"--subgroup-bins names column '{column}' twice")
        bins[column] = edges
    return bins


def _edge(value: float) -> str:
    return f"{value:g}"


def _labels(edges: Sequence[float], unit: str | None) -> list[str]:
    """Every bin's label in order: '< e0', '[e0, e1)', ..., '>= en'."""
    suffix = f" {unit}" if unit else ""
    inner = [f"[{_edge(a)}, {_edge(b)}){suffix}" for a, b in zip(edges, edges[1:], strict=False)]
    return [f"< {_edge(edges[0])}{suffix}", *inner, f">= {_edge(edges[-1])}{suffix}"]


def bin_label_order(edges: Sequence[float], unit: str | None = None) -> list[str]:
    """The bins' labels from lowest to highest, for a report's group order."""
    return _labels(edges, unit)


def bin_values(values: Sequence[float | None], edges: Sequence[float],
               unit: str | None = None) -> list[str]:
    """The bin of each number (half-open [low, high); below the first edge '< e0', at or above
    the last '>= en'); None becomes the missing group."""
    labels = _labels(edges, unit)
    out = []
    for value in values:
        if value is None:
            out.append(MISSING_GROUP)
        else:
            out.append(labels[bisect.bisect_right(list(edges), float(value))])
    return out


def clinical_subgroups(columns: Sequence[str], bins: Mapping[str, Sequence[float]],
                       values: Mapping[str, Sequence[float | str | None]],
                       units: Mapping[str, str | None] | None = None,
                       kinds: Mapping[str, str] | None = None,
                       ) -> tuple[dict[str, list[object]], dict[str, list[str]]]:
    """(column -> group per row, column -> group order) for the columns asked for.

    A binned column's cleaned numbers are put in their bins; a numeric column without bins is
    refused (ConfigError: a table with one row per distinct number says nothing); other
    columns are tabulated as they are.
    """
    units, kinds = dict(units or {}), dict(kinds or {})
    groups: dict[str, list[object]] = {}
    order: dict[str, list[str]] = {}
    for column in dict.fromkeys([*columns, *bins]):
        if column in bins:
            groups[column] = bin_values(values[column], bins[column], units.get(column))
            order[column] = bin_label_order(bins[column], units.get(column))
        elif kinds.get(column) == "numeric":
            raise ConfigError(f"column '{column}' is numeric: give its bins, e.g. "
                              f"--subgroup-bins {column}=0,20,40")
        else:
            groups[column] = list(values[column])
    return groups, order
