"""Write an evaluation to a report folder (JSON, CSV, ROC plot) and print it as tables."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cadx.evaluate.cohort import CohortEvaluation  # noqa: E402
from cadx.io.atomic import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402

METRIC_ROWS = (("AUC", "auc"), ("Sensitivity", "sensitivity"), ("Specificity", "specificity"),
               ("Accuracy", "accuracy"), ("PPV", "ppv"), ("NPV", "npv"), ("F1", "f1"))


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def metrics_tables(evaluation: CohortEvaluation, title: str = "") -> list[Table]:
    """Rich tables: metrics at both levels, and patient sensitivity by tumour size."""
    table = Table(title=title or "Evaluation at the model's thresholds")
    table.add_column("metric")
    table.add_column("patch level", justify="right")
    table.add_column("patient level", justify="right")
    table.add_row("threshold (score >)", f"{evaluation.patch_threshold:.4f}",
                  f"{evaluation.patient_threshold:.4f}")
    for label, key in METRIC_ROWS:
        table.add_row(label, _fmt(evaluation.patch.get(key)), _fmt(evaluation.patient.get(key)))
    table.add_row("n (positive / negative)",
                  f"{evaluation.patch['n']} ({evaluation.patch['n_positive']} / "
                  f"{evaluation.patch['n_negative']})",
                  f"{evaluation.patient['n']} ({evaluation.patient['n_positive']} / "
                  f"{evaluation.patient['n_negative']})")
    sizes = Table(title="Patient sensitivity by tumour size (longest axial diameter)")
    sizes.add_column("tumour size")
    sizes.add_column("patients", justify="right")
    sizes.add_column("detected", justify="right")
    sizes.add_column("sensitivity", justify="right")
    for row in evaluation.by_tumour_size:
        sizes.add_row(str(row["size_bin"]), str(row["n"]), str(row["detected"]),
                      _fmt(row["sensitivity"]))
    return [table, sizes]


def _plot_rocs(evaluation: CohortEvaluation, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for axis, level, roc, metrics in (
        (axes[0], "patch", evaluation.patch_roc, evaluation.patch),
        (axes[1], "patient", evaluation.patient_roc, evaluation.patient),
    ):
        axis.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
        if roc["fpr"]:
            axis.plot(roc["fpr"], roc["tpr"], lw=2, label=f"AUC = {metrics['auc']:.3f}")
            if metrics["sensitivity"] is not None and metrics["specificity"] is not None:
                axis.plot(1 - metrics["specificity"], metrics["sensitivity"], "o", ms=8,
                          color="tab:red", label="model threshold")
            axis.legend(loc="lower right")
        axis.set(title=f"{level}-level ROC (n = {metrics['n']})", xlabel="1 - specificity",
                 ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02), aspect="equal")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def write_report(evaluation: CohortEvaluation, out_dir: str | Path,
                 extra: dict[str, object] | None = None) -> Path:
    """Write metrics.json, patients.csv, roc.png and report.txt into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "metrics.json", {**(extra or {}), **evaluation.to_dict()})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(evaluation.patients[0]))
    writer.writeheader()
    writer.writerows(evaluation.patients)
    write_text_atomic(out_dir / "patients.csv", buffer.getvalue())
    _plot_rocs(evaluation, out_dir / "roc.png")
    console = Console(record=True, width=100, file=io.StringIO())
    for table in metrics_tables(evaluation):
        console.print(table)
    write_text_atomic(out_dir / "report.txt", console.export_text())
    return out_dir


def print_evaluation(evaluation: CohortEvaluation, console: Console | None = None,
                     title: str = "") -> None:
    console = console or Console()
    for table in metrics_tables(evaluation, title):
        console.print(table)
