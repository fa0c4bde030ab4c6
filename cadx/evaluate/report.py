"""Write evaluated levels to a report folder and print them as tables.

The folder holds `report.html` (inline CSS, figures embedded as base64 PNG data URIs, no links
or scripts: it opens offline), `metrics.json`, `roc.png`, `pr.png`, `confusion.png` and
`calibration.png` (one panel per level), `report.txt` (the terminal tables) and, for a CT
cohort, `patients.csv`. Every file is written under a temporary name and renamed into place,
so none is ever half-written; callers compute everything before the first file is written.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich import box  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from cadx import __version__  # noqa: E402
from cadx.errors import InputError  # noqa: E402
from cadx.evaluate.cohort import CohortEvaluation, cohort_levels  # noqa: E402
from cadx.evaluate.levels import METRIC_LABELS, LevelResult  # noqa: E402
from cadx.evaluate.stats import Interval  # noqa: E402
from cadx.io.atomic import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from cadx.io.provenance import synthetic_source  # noqa: E402

FIGURES = (("roc.png", "ROC curves"), ("pr.png", "Precision-recall curves"),
           ("confusion.png", "Confusion matrices"), ("calibration.png", "Reliability diagrams"))
METHOD_NAMES = {"wilson": "Wilson score interval", "delong": "DeLong",
                "asymptotic": "asymptotic SE (Fleiss, Cohen & Everitt 1969)",
                "bootstrap": "percentile bootstrap over rows",
                "cluster-bootstrap": "patient-level cluster bootstrap"}
METRIC_SHORT = {"accuracy": "ACC", "sensitivity": "SN", "specificity": "SP", "ppv": "PPV",
                "npv": "NPV", "kappa": "kappa", "f1": "F1", "auc": "AUC"}
_PANEL_INCHES = (4.4, 4.2)
_MAX_PANELS_PER_ROW = 3

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#222;
max-width:1150px;margin:1.5em auto;padding:0 1em;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:2px solid #ddd}
table{border-collapse:collapse;margin:.4em 0 1.2em}
th,td{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}th{background:#f4f6f8}
.ci{color:#666;font-size:.92em}.note{color:#555;font-size:.92em}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:.5em 1em;margin:.6em 0}
img{max-width:100%;border:1px solid #eee}
.summary{font-size:1.1em;background:#eef4fb;border-left:4px solid #2a6fb0;padding:.5em 1em}
"""


# --------------------------------------------------------------------------- formatting


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_interval(interval: Interval) -> str:
    """'0.912 [0.851, 0.953]'; 'n/a' where undefined."""
    if interval.estimate is None:
        return "n/a"
    if interval.low is None or interval.high is None:
        return f"{interval.estimate:.3f} [n/a]"
    return f"{interval.estimate:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _interval(data: dict) -> Interval:
    return Interval(data["estimate"], data["low"], data["high"], data["method"])


def _p_value(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _counts_text(level: LevelResult) -> str:
    """'120 patients', or '1500 patches of 30 patients' for a clustered level."""
    counts = level.counts
    text = f"{counts['n']} {level.unit}"
    if "n_patients" in counts:
        text += f" of {counts['n_patients']} patients"
    return text


def _classes_text(level: LevelResult) -> str:
    return f"{level.counts['n_positive']} / {level.counts['n_negative']}"


def _methods_text(level: LevelResult, short: bool = False) -> str:
    """'Accuracy, Sensitivity: Wilson score interval; AUC: DeLong; ...' for one level."""
    labels = METRIC_SHORT if short else METRIC_LABELS
    by_method: dict[str, list[str]] = {}
    for metric, interval in level.metrics.items():
        by_method.setdefault(interval.method, []).append(labels[metric])
    parts = []
    for method, metrics in by_method.items():
        key, _, detail = method.partition(" ")
        parts.append(f"{', '.join(metrics)}: {METHOD_NAMES.get(key, key)}"
                     + (f" {detail}" if detail else ""))
    return "; ".join(parts)


def _threshold_warning(level: LevelResult) -> str:
    return (f"{level.name}: threshold {level.threshold:.4f} chosen on the evaluated data "
            "(max Youden index): optimistic. Give the threshold fixed beforehand with "
            "--threshold for an unbiased estimate.")


def _calibration_note(level: LevelResult) -> str:
    if level.score_kind == "probability":
        return (f"{level.name}: scores are read as predicted probabilities of cancer; "
                f"ECE = {level.calibration['ece']:.3f} over {len(level.calibration['bins'])} "
                "equal-width bins.")
    what = level.score_description or "a score in [0, 1]"
    return (f"{level.name}: the score is {what}: a score, not a calibrated probability. Its "
            f"reliability diagram and ECE ({level.calibration['ece']:.3f}) show how far that "
            "score lies from the observed cancer rate; they do not measure the calibration of "
            "a probability.")


NOT_A_DEVICE = ("cadx is research software and a cadx model is not a medical device: "
                "do not use it for clinical decisions.")


def _summary_level(levels: Sequence[LevelResult]) -> list[LevelResult]:
    """The levels a summary speaks for: the patient (exam) levels, else all."""
    patients = [level for level in levels if level.unit == "patients"]
    return patients or list(levels)


def summary_lines(levels: Sequence[LevelResult]) -> list[str]:
    """One plain-language line per patient-level result: its AUC with the 95 % interval and
    whether that interval tells the model from chance, with sensitivity and specificity."""
    lines = []
    for level in _summary_level(levels):
        auc = level.metrics["auc"]
        n = f"{level.counts['n']} {level.unit} ({level.counts['n_positive']} with cancer)"
        if auc.estimate is None:
            lines.append(f"{level.name}: no AUC on {n}.")
            continue
        kind = {"patients": "patient-level ", "images": "image-level "}.get(level.unit, "")
        name = "" if level.name == "patient" else f"{level.name}: "
        text = f"{name}{kind}AUC {auc.estimate:.2f}"
        if auc.low is None or auc.high is None:
            verdict = "no interval, so no verdict"
        else:
            text += f" [{auc.low:.2f}, {auc.high:.2f}]"
            if auc.low > 0.5:
                verdict = "better than chance (the 95 % interval excludes 0.5)"
            elif auc.high < 0.5:
                verdict = "worse than chance (the 95 % interval lies below 0.5)"
            else:
                verdict = "not distinguishable from chance (the 95 % interval includes 0.5)"
        sensitivity = level.metrics["sensitivity"].estimate
        specificity = level.metrics["specificity"].estimate
        at = ""
        if sensitivity is not None and specificity is not None:
            at = (f"; at its threshold it finds {sensitivity:.0%} of the cancers and clears "
                  f"{specificity:.0%} of the others")
        lines.append(f"{text}: {verdict} on {n}{at}.")
    return lines


def provenance_lines(meta: dict[str, object]) -> list[str]:
    """What the numbers rest on: cadx version, synthetic data when they are, and that the
    model is not a medical device."""
    sources = [f"{key} {meta[key]}" for key in ("model", "dataset", "predictions")
               if meta.get(key)]
    lines = [f"Made by cadx {__version__}" + (f" from {'; '.join(sources)}" if sources else "")]
    if meta.get("synthetic_data"):
        lines.append(f"The data are synthetic ({meta['synthetic_data']}): these figures "
                     "describe the method on simulated images, not its accuracy on patients.")
    lines.append(NOT_A_DEVICE)
    return lines


def report_warnings(levels: Sequence[LevelResult], warnings: Sequence[str] = ()) -> list[str]:
    """Every warning a report shows and prints: the caller's, then each level's optimistic
    threshold."""
    return [*warnings, *(_threshold_warning(level) for level in levels
                         if level.threshold_optimistic)]


# --------------------------------------------------------------------------- terminal tables


def _add_row(table: Table, *cells: str) -> None:
    """Add cells as plain text: '[n/a]' or a user's '[group]' is not rich markup."""
    table.add_row(*(Text(cell) for cell in cells))


def metrics_table(levels: Sequence[LevelResult], title: str = "") -> Table:
    """Metrics of every level (one column each), estimate and [95 % CI]."""
    methods = {level.name: _methods_text(level, short=True) for level in levels}
    if len(set(methods.values())) == 1:
        caption = f"95 % CIs: {methods[levels[0].name]}"
    else:
        caption = "95 % CIs: " + " | ".join(f"{name}: {text}" for name, text in methods.items())
    table = Table(title=escape(title or "Evaluation"), caption=escape(caption),
                  caption_justify="left")
    table.add_column("metric")
    for level in levels:
        table.add_column(Text(level.name), justify="right", no_wrap=True)
    _add_row(table, "threshold (score >)", *(f"{level.threshold:.4f}" for level in levels))
    _add_row(table, "n", *(_counts_text(level) for level in levels))
    _add_row(table, "positives / negatives", *(_classes_text(level) for level in levels))
    for metric, label in METRIC_LABELS.items():
        _add_row(table, label, *(format_interval(level.metrics[metric]) for level in levels))
    _add_row(table, "average precision",
             *(_number(level.pr["average_precision"]) for level in levels))
    _add_row(table, "ECE", *(_number(level.calibration["ece"]) for level in levels))
    return table


def subgroup_table(level: LevelResult, column: str) -> Table:
    """Sensitivity, specificity and AUC [95 % CI] per value of one subgroup column."""
    table = Table(title=escape(f"{level.name}: by {column}"), box=box.SIMPLE_HEAD,
                  show_edge=False, collapse_padding=True)
    table.add_column("group", no_wrap=True)
    for name in ("n", "TP/pos", "SN [95 % CI]", "TN/neg", "SP [95 % CI]", "AUC [95 % CI]"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in level.subgroups[column]:
        _add_row(table, str(row["group"]), str(row["n"]), f"{row['detected']}/{row['positives']}",
                 format_interval(_interval(row["sensitivity"])),
                 f"{row['true_negatives']}/{row['negatives']}",
                 format_interval(_interval(row["specificity"])), _subgroup_auc(row))
    return table


def _subgroup_auc(row: dict) -> str:
    """A group's AUC [95 % CI]; 'n/a' in a group of one class (or a report made before
    subgroups carried AUCs)."""
    return format_interval(_interval(row["auc"])) if row.get("auc") else "n/a"


def comparisons_table(comparisons: Sequence[dict]) -> Table:
    """DeLong tests of AUC differences, one row per pair of models."""
    table = Table(title="AUC comparisons (DeLong, paired by patient)", box=box.SIMPLE_HEAD,
                  show_edge=False, collapse_padding=True)
    for name in ("model a", "model b", "n", "AUC a", "AUC b", "a - b [95 % CI]", "z", "p"):
        table.add_column(name, justify="left" if name.startswith("model") else "right",
                         no_wrap=not name.startswith("model"))
    for c in comparisons:
        if "error" in c:
            _add_row(table, c["model_a"], c["model_b"], "not compared: " + c["error"])
            continue
        _add_row(table, c["model_a"], c["model_b"], f"{c['n']}", f"{c['auc_a']:.3f}",
                 f"{c['auc_b']:.3f}",
                 f"{c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]",
                 _number(c["z"], 2), _p_value(c["p_value"]))
    return table


def print_levels(levels: Sequence[LevelResult], console: Console, title: str = "",
                 comparisons: Sequence[dict] = ()) -> None:
    """Print the metrics, subgroup and comparison tables and any warnings to `console`."""
    console.print(metrics_table(levels, title))
    for level in levels:
        for column in level.subgroups:
            console.print(subgroup_table(level, column))
        for note in level.notes:
            console.print(Text(f"{level.name}: {note}", style="dim"))
    if comparisons:
        console.print(comparisons_table(comparisons))
    for level in levels:
        if level.threshold_optimistic:
            console.print(f"[yellow]warning[/]: {escape(_threshold_warning(level))}")
    for line in summary_lines(levels):
        console.print(f"[bold]summary[/]: {escape(line)}")


def print_evaluation(evaluation: CohortEvaluation, console: Console | None = None,
                     title: str = "") -> None:
    """Print a cohort evaluation (patch and patient level, with CIs) as tables."""
    print_levels(cohort_levels(evaluation), console or Console(), title)


# --------------------------------------------------------------------------- figures


def _panels(n_levels: int) -> tuple[plt.Figure, list[plt.Axes]]:
    columns = min(n_levels, _MAX_PANELS_PER_ROW)
    rows = math.ceil(n_levels / columns)
    figure, axes = plt.subplots(rows, columns, squeeze=False,
                                figsize=(_PANEL_INCHES[0] * columns, _PANEL_INCHES[1] * rows))
    flat = axes.ravel().tolist()
    for unused in flat[n_levels:]:
        unused.set_visible(False)
    return figure, flat[:n_levels]


def _png(figure: plt.Figure) -> bytes:
    for axis in figure.axes:
        axis.title.set_fontsize(10)
    figure.tight_layout()
    buffer = io.BytesIO()
    # No 'Software' text chunk: the PNG then carries no URL and is byte-for-byte reproducible.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def _operating_label(level: LevelResult) -> str:
    return f"threshold {level.threshold:.3f}"


def _plot_roc(levels: Sequence[LevelResult]) -> bytes:
    figure, axes = _panels(len(levels))
    for axis, level in zip(axes, levels, strict=True):
        auc = level.metrics["auc"]
        axis.plot([0, 1], [0, 1], color="0.75", lw=1, ls="--")
        axis.plot(level.roc["fpr"], level.roc["tpr"], lw=2, label=f"AUC {format_interval(auc)}")
        sensitivity = level.metrics["sensitivity"].estimate
        specificity = level.metrics["specificity"].estimate
        axis.plot(1 - specificity, sensitivity, "o", ms=8, color="tab:red",
                  label=_operating_label(level))
        axis.legend(loc="lower right", fontsize=8)
        axis.set(title=f"{level.name}: ROC ({_counts_text(level)})", xlabel="1 - specificity",
                 ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02), aspect="equal")
    return _png(figure)


def _plot_pr(levels: Sequence[LevelResult]) -> bytes:
    figure, axes = _panels(len(levels))
    for axis, level in zip(axes, levels, strict=True):
        prevalence = level.counts["n_positive"] / level.counts["n"]
        axis.axhline(prevalence, color="0.75", lw=1, ls="--", label=f"prevalence {prevalence:.3f}")
        axis.plot(level.pr["recall"], level.pr["precision"], lw=2,
                  label=f"average precision {level.pr['average_precision']:.3f}")
        ppv = level.metrics["ppv"].estimate
        if ppv is not None:
            axis.plot(level.metrics["sensitivity"].estimate, ppv, "o", ms=8, color="tab:red",
                      label=_operating_label(level))
        axis.legend(loc="lower left", fontsize=8)
        axis.set(title=f"{level.name}: precision-recall", xlabel="recall (sensitivity)",
                 ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.02), aspect="equal")
    return _png(figure)


def _plot_confusion(levels: Sequence[LevelResult]) -> bytes:
    figure, axes = _panels(len(levels))
    names = ("no cancer", "cancer")
    for axis, level in zip(axes, levels, strict=True):
        c = level.counts
        cells = [[c["tn"], c["fp"]], [c["fn"], c["tp"]]]
        shares = [[count / max(sum(row), 1) for count in row] for row in cells]
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i, (row, share_row) in enumerate(zip(cells, shares, strict=True)):
            for j, (count, share) in enumerate(zip(row, share_row, strict=True)):
                axis.text(j, i, f"{('TN', 'FP', 'FN', 'TP')[2 * i + j]}\n{count}\n"
                          f"({100 * share:.0f} % of row)", ha="center", va="center",
                          color="white" if share > 0.6 else "black", fontsize=10)
        axis.set(xticks=[0, 1], yticks=[0, 1], xticklabels=names, yticklabels=names,
                 xlabel="predicted", ylabel="truth",
                 title=f"{level.name}: {level.unit}, score > {level.threshold:.3f}")
    return _png(figure)


def _plot_calibration(levels: Sequence[LevelResult]) -> bytes:
    figure, axes = _panels(len(levels))
    for axis, level in zip(axes, levels, strict=True):
        filled = [b for b in level.calibration["bins"] if b["n"]]
        axis.plot([0, 1], [0, 1], color="0.75", lw=1, ls="--", label="perfect calibration")
        axis.plot([b["mean_predicted"] for b in filled], [b["fraction_positive"] for b in filled],
                  "o-", lw=1.5, label=f"ECE {level.calibration['ece']:.3f}")
        for b in filled:
            axis.annotate(str(b["n"]), (b["mean_predicted"], b["fraction_positive"]),
                          textcoords="offset points", xytext=(4, -10), fontsize=7, color="0.4")
        what = "probability" if level.score_kind == "probability" else "score (not a probability)"
        axis.legend(loc="upper left", fontsize=8)
        axis.set(title=f"{level.name}: reliability", xlabel=f"mean predicted {what}",
                 ylabel="observed fraction with cancer", xlim=(0, 1), ylim=(0, 1.02),
                 aspect="equal")
    return _png(figure)


def _figures(levels: Sequence[LevelResult]) -> dict[str, bytes]:
    plots = {"roc.png": _plot_roc, "pr.png": _plot_pr, "confusion.png": _plot_confusion,
             "calibration.png": _plot_calibration}
    return {name: plots[name](levels) for name, _ in FIGURES}


# --------------------------------------------------------------------------- HTML


def _esc(value: object) -> str:
    return html.escape(str(value))


def _ci_cell(interval: Interval) -> str:
    text = format_interval(interval)
    estimate, _, ci = text.partition(" ")
    return f"{_esc(estimate)} <span class=ci>{_esc(ci)}</span>" if ci else _esc(estimate)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table from already-escaped cell HTML."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _meta_value(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) if value else "none"
    return "n/a" if value is None else str(value)


def _html_metrics(levels: Sequence[LevelResult]) -> str:
    rows = [["threshold (score &gt;)", *(f"{level.threshold:.4f}" for level in levels)],
            ["threshold from", *(_esc(level.threshold_note) for level in levels)],
            ["n", *(_esc(_counts_text(level)) for level in levels)],
            ["positives / negatives", *(_classes_text(level) for level in levels)]]
    rows += [[_esc(label), *(_ci_cell(level.metrics[metric]) for level in levels)]
             for metric, label in METRIC_LABELS.items()]
    rows.append(["average precision",
                 *(_number(level.pr["average_precision"]) for level in levels)])
    rows.append(["ECE", *(_number(level.calibration["ece"]) for level in levels)])
    methods = "".join(f"<li><b>{_esc(level.name)}</b>: {_esc(_methods_text(level))}</li>"
                      for level in levels)
    return (_html_table(["metric", *(_esc(level.name) for level in levels)], rows)
            + f"<p class=note>Estimates with 95 % confidence intervals.</p><ul class=note>"
            f"{methods}</ul>")


def _html_subgroups(levels: Sequence[LevelResult]) -> str:
    parts = []
    for level in levels:
        for column, groups in level.subgroups.items():
            rows = [[_esc(g["group"]), str(g["n"]), str(g["positives"]), str(g["detected"]),
                     _ci_cell(_interval(g["sensitivity"])), str(g["negatives"]),
                     _ci_cell(_interval(g["specificity"])),
                     _ci_cell(_interval(g["auc"])) if g.get("auc") else "n/a"] for g in groups]
            parts.append(f"<h3>{_esc(level.name)}: by {_esc(column)}</h3>" + _html_table(
                ["group", _esc(level.unit), "positives", "detected",
                 "sensitivity [95 % CI]", "negatives", "specificity [95 % CI]",
                 "AUC [95 % CI]"], rows))
        parts += [f"<p class=note>{_esc(level.name)}: {_esc(note)}</p>" for note in level.notes]
    if not parts:
        return "<p class=note>No subgroup columns.</p>"
    return "".join(parts) + ("<p class=note>Sensitivity and specificity use the same threshold "
                             "and interval method as the level's own metrics; the AUC is n/a "
                             "in a group of one class.</p>")


def _html_comparisons(comparisons: Sequence[dict]) -> str:
    rows = []
    for c in comparisons:
        if "error" in c:
            rows.append([_esc(c["model_a"]), _esc(c["model_b"]),
                         "not compared: " + _esc(c["error"]), "", "", "", "", ""])
            continue
        rows.append([_esc(c["model_a"]), _esc(c["model_b"]),
                     f"{c['n']} ({c['n_positive']} + / {c['n_negative']} -)",
                     f"{c['auc_a']:.3f}", f"{c['auc_b']:.3f}",
                     f"{c['difference']:+.3f} <span class=ci>[{c['ci_low']:+.3f}, "
                     f"{c['ci_high']:+.3f}]</span>", _number(c["z"], 2), _p_value(c["p_value"])])
    return _html_table(["model a", "model b", "patients", "AUC a", "AUC b",
                        "difference a - b [95 % CI]", "z", "p"], rows) + (
        "<p class=note>DeLong, DeLong &amp; Clarke-Pearson (1988) test of two correlated AUCs on "
        "the same patients.</p>")


def _html(levels: Sequence[LevelResult], figures: dict[str, bytes], *, title: str,
          meta: dict[str, object], comparisons: Sequence[dict], warnings: Sequence[str]) -> str:
    warning_lines = report_warnings(levels, warnings)
    images = {name: "data:image/png;base64," + base64.b64encode(data).decode("ascii")
              for name, data in figures.items()}
    meta_rows = [[_esc(key), _esc(_meta_value(value))] for key, value in meta.items()]
    body = [
        f"<h1>{_esc(title)}</h1>",
        *(f"<p class=summary><b>Summary:</b> {_esc(line)}</p>" for line in summary_lines(levels)),
        *(f"<p class=note>{_esc(line)}</p>" for line in provenance_lines(meta)),
        "<p class=note>Decision rule: a score strictly greater than the threshold is "
        "positive.</p>",
        *(f"<div class=warn><b>Warning:</b> {_esc(line)}</div>" for line in warning_lines),
        _html_table(["input", "value"], meta_rows) if meta_rows else "",
        "<h2>Metrics at the operating threshold</h2>", _html_metrics(levels),
    ]
    for name, heading in FIGURES:
        body.append(f"<h2>{heading}</h2>")
        if name == "calibration.png":
            body += [f"<p class=note>{_esc(_calibration_note(level))}</p>" for level in levels]
        body.append(f'<img alt="{heading}" src="{images[name]}">')
        if name in ("roc.png", "pr.png"):
            body.append("<p class=note>Red dot: the operating threshold.</p>")
    body += ["<h2>Subgroups</h2>", _html_subgroups(levels)]
    if comparisons:
        body += ["<h2>Model comparisons</h2>", _html_comparisons(comparisons)]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# --------------------------------------------------------------------------- report folder


def _csv_text(rows: Sequence[dict[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(out_dir: str | Path, levels: Sequence[LevelResult], *, title: str,
                 meta: dict[str, object], comparisons: Sequence[dict] = (),
                 patients_rows: Sequence[dict[str, object]] | None = None,
                 warnings: Sequence[str] = ()) -> Path:
    """Write the report folder for `levels` (see the module docstring) and return its path.

    `meta` is shown as a key/value table and stored in metrics.json; `comparisons` are DeLong
    results (see `cadx.evaluate.predictions.compare_models`); `patients_rows` become
    patients.csv; `warnings` are shown at the top of report.html and, with each level's
    optimistic-threshold warning, stored in metrics.json. Every report opens with a
    plain-language summary (`summary_lines`) and its provenance (`provenance_lines`).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    data = meta.get("dataset") or meta.get("predictions")
    if "synthetic_data" not in meta and data:
        synthetic = synthetic_source(str(data))
        meta = {**meta, "synthetic_data": synthetic} if synthetic else meta
    figures = _figures(levels)
    console = Console(record=True, width=110, file=io.StringIO())
    for warning in warnings:  # report.txt holds every warning the terminal showed
        console.print(f"[yellow]warning[/]: {escape(warning)}")
    print_levels(levels, console, title, comparisons)
    for line in provenance_lines(meta):
        console.print(escape(line))
    report_html = _html(levels, figures, title=title, meta=meta, comparisons=comparisons,
                        warnings=warnings)
    metrics = {"title": title, "cadx_version": __version__, "meta": meta,
               "summary": summary_lines(levels), "provenance": provenance_lines(meta),
               "warnings": report_warnings(levels, warnings),
               "levels": {level.name: level.to_dict() for level in levels},
               "comparisons": list(comparisons)}

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in figures.items():
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(data)
    if patients_rows:
        write_text_atomic(out_dir / "patients.csv", _csv_text(patients_rows))
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_text_atomic(out_dir / "report.txt", console.export_text())
    write_text_atomic(out_dir / "report.html", report_html)
    return out_dir


def write_cohort_report(out_dir: str | Path, evaluation: CohortEvaluation, *, title: str,
                        meta: dict[str, object], warnings: Sequence[str] = (),
                        source: str = "", n_boot: int = 1000, seed: int = 0,
                        subgroups: Mapping[str, Sequence[object]] | None = None,
                        subgroup_order: Mapping[str, Sequence[str]] | None = None,
                        extra_levels: Sequence[LevelResult] = (),
                        comparisons: Sequence[dict] = (),
                        ) -> list[LevelResult]:
    """Report a CT cohort evaluation (patch and patient level, patients.csv); return the levels.
    `subgroups` / `subgroup_order`: extra patient-level columns (see `cohort_levels`);
    `extra_levels` follow the patient level (e.g. the fused one, `cadx.evaluate.fusion`) and
    `comparisons` are their DeLong tests."""
    levels = cohort_levels(evaluation, source=source, n_boot=n_boot, seed=seed,
                           subgroups=subgroups, subgroup_order=subgroup_order)
    levels += list(extra_levels)
    write_report(out_dir, levels, title=title, meta=meta, patients_rows=evaluation.patients,
                 warnings=warnings, comparisons=comparisons)
    return levels
