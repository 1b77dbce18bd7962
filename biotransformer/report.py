"""Run reports: the PNG plots and the one-page ``report.html`` of a run, assembled from what the
run left in its directory (``log.jsonl``, metrics, predictions) with ``plots``.

- ``write_report``: fine-tuning and evaluation (training curves when there is a log,
  validation metric curves, ROC / precision-recall / confusion matrix or predicted-vs-true);
- ``write_pretrain_report``: pretraining (loss and learning-rate curves, held-out loss and
  perplexity), with the final held-out numbers in ``metrics.json``;

Every function here takes arrays, labels and log files: a report never runs a model (the
arrays of a model come from ``visualize``, which calls these).

In every ``report.html`` the metrics table row ``"<section> <metric>"`` holds the exact
``value`` / ``ci_low`` / ``ci_high`` of ``sections[section]["metrics"][metric]`` (also in the
cell's ``data-value``), so the page and ``metrics.json`` say the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from biotransformer import plots
from biotransformer.atomic import write_json
from biotransformer.tasks import TaskInfo

PRETRAIN_TITLE = "biotransformer: masked-LM pretraining"


@dataclass(frozen=True)
class Plot:
    """A plot written as PNG to ``path``; ``figure`` holds what was drawn."""

    path: Path
    figure: Figure


def _plot(directory: Path, filename: str, draw: Any, *args: Any, **kwargs: Any) -> Plot:
    """Call the ``plots`` function ``draw`` with ``directory / filename`` as its path."""
    path = directory / filename
    return Plot(path, draw(*args, path, **kwargs))


def image_paths(images: Mapping[str, Plot]) -> dict[str, Path]:
    """Heading -> PNG path, as ``plots.write_report_html`` takes them."""
    return {heading: plot.path for heading, plot in images.items()}


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``log.jsonl`` training log (empty when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_plots(rows: Sequence[Mapping[str, Any]], directory: Path) -> dict[str, Plot]:
    """Loss and learning-rate curves, and the validation metric curves when the log has any
    ``valid_<metric>`` besides ``valid_loss``; by heading."""
    images: dict[str, Plot] = {}
    if any("loss" in row for row in rows):
        images["training curves"] = _plot(
            directory, "training_curves.png", plots.plot_training_curves, rows
        )
    if any(key.startswith("valid_") and key != "valid_loss" for row in rows for key in row):
        images["validation metrics"] = _plot(
            directory, "validation_metrics.png", plots.plot_validation_metrics, rows
        )
    return images


def prediction_plots(
    task: TaskInfo, truth: np.ndarray, scores: Any, predicted: Sequence[str], directory: Path
) -> dict[str, Plot]:
    """ROC, precision-recall and (single-label) confusion matrix of the ``predicted`` labels
    for classification, predicted vs true for regression; nothing for a split with a single
    class. ``truth``: class ids (N,), a 0/1 matrix (N, C) or values (N,)."""
    scores = np.asarray(scores)
    if task.task == "regression":
        return {
            "predicted vs true": _plot(
                directory,
                "predicted_vs_true.png",
                plots.plot_predicted_vs_true,
                truth,
                scores[:, 0],
            )
        }
    if len(np.unique(truth)) < 2:
        return {}
    binary = task.problem == "binary"
    curve_scores = scores[:, 1] if binary else scores
    names = None if binary else task.labels
    images = {
        "ROC": _plot(directory, "roc.png", plots.plot_roc, truth, curve_scores, labels=names),
        "precision-recall": _plot(
            directory,
            "precision_recall.png",
            plots.plot_precision_recall,
            truth,
            curve_scores,
            labels=names,
        ),
    }
    if task.task == "classification":
        images["confusion matrix"] = _plot(
            directory,
            "confusion_matrix.png",
            plots.plot_confusion_matrix,
            [task.labels[i] for i in truth],
            list(predicted),
            task.labels,
        )
    return images


def metrics_table(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{"<section> <metric>": {"value", "ci_low", "ci_high"}}`` over every section."""
    return {
        f"{section} {name}": entry
        for section, result in sections.items()
        for name, entry in result.get("metrics", {}).items()
    }


def write_report(
    directory: Path,
    task: TaskInfo,
    sections: Mapping[str, Mapping[str, Any]],
    *,
    truth: np.ndarray | None = None,
    scores: Any = None,
    predicted: Sequence[str] = (),
    log_path: Path | None = None,
) -> Path:
    """Plots of ``scores`` and ``predicted`` labels against ``truth`` (when given), training and
    validation curves from ``log_path``, and ``report.html`` with the metrics of every section
    (e.g. valid, test)."""
    directory.mkdir(parents=True, exist_ok=True)
    images = training_plots(read_log(log_path), directory) if log_path is not None else {}
    if truth is not None and task.per_sequence:
        images.update(prediction_plots(task, truth, scores, predicted, directory))
    notes = [f"task: {task.task}", f"labels: {task.labels}", f"threshold: {task.threshold}"]
    notes += [
        f"{section}: {note}"
        for section, result in sections.items()
        for note in result.get("notes", [])
    ]
    return plots.write_report_html(
        directory / "report.html",
        title=f"biotransformer: {task.task}",
        metrics=metrics_table(sections),
        images=image_paths(images),
        notes=notes,
    )


def write_pretrain_report(output_dir: str | Path) -> Path:
    """Curves of a pretraining run's ``log.jsonl``, ``metrics.json`` with its last held-out
    loss and perplexity (and the step they were measured at), and ``report.html``."""
    output_dir = Path(output_dir)
    rows = read_log(output_dir / "log.jsonl")
    evaluated = [row for row in rows if "valid_loss" in row]
    metrics: dict[str, Any] = {"step": max((row["step"] for row in rows), default=0)}
    if evaluated:
        last = evaluated[-1]
        metrics["valid"] = {
            "step": last["step"],
            "metrics": {
                key.removeprefix("valid_"): {"value": value}
                for key, value in last.items()
                if key.startswith("valid_")
            },
        }
    write_json(output_dir / "metrics.json", metrics)
    return plots.write_report_html(
        output_dir / "report.html",
        title=PRETRAIN_TITLE,
        metrics=metrics_table({"valid": metrics.get("valid", {})}),
        images=image_paths(training_plots(rows, output_dir)),
        notes=[f"{len(rows)} log rows, last step {metrics['step']}"],
    )
