"""Run reports: the PNG plots and the one-page ``report.html`` of a run, assembled from what the
run left in its directory (``log.jsonl``, metrics, predictions) with ``plots``.

- ``write_report``: fine-tuning and evaluation (training curves when there is a log,
  validation metric curves, ROC / precision-recall / confusion matrix or predicted-vs-true);
- ``write_pretrain_report``: pretraining (loss and learning-rate curves, held-out loss and
  perplexity), with the final held-out numbers in ``metrics.json``;

Every function here takes arrays, labels and log files: a report never runs a model (the
arrays of a model come from ``visualize``, which calls these).

A report's title names the task, the data and the model; the verdict (model against its
composition baseline, ``metrics.json["verdict"]``) comes first when there is one. In every
``report.html`` the table ``data-section="<section>"`` has a row ``<metric>`` holding the exact
``value`` / ``ci_low`` / ``ci_high`` of ``sections[section]["metrics"][metric]`` (in the cells'
``data-value``), so the page and ``metrics.json`` say the same numbers.
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
    if len(np.unique(truth, axis=0)) < 2:
        return {}
    # class ids become the label names the curves are keyed by (multilabel: a 0/1 matrix)
    named = truth if task.problem == "multilabel" else np.asarray(task.labels)[truth]
    curve_scores = scores[:, 1] if task.problem == "binary" else scores
    images = {
        "ROC": _plot(directory, "roc.png", plots.plot_roc, named, curve_scores, labels=task.labels),
        "precision-recall": _plot(
            directory,
            "precision_recall.png",
            plots.plot_precision_recall,
            named,
            curve_scores,
            labels=task.labels,
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


SECTION_HEADINGS = {"valid": "validation split", "test": "test split"}


def metrics_tables(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, plots.MetricsSection]:
    """One table per section (``valid``, ``test``, or a data file's name), headed by what it
    is and its number of records."""
    tables = {}
    for section, result in sections.items():
        heading = SECTION_HEADINGS.get(section, section)
        if "n" in result:
            heading = f"{heading} (n = {result['n']})"
        tables[section] = plots.MetricsSection(heading, result.get("metrics", {}))
    return tables


def describe_task(task: TaskInfo) -> str:
    """The task in words: ``3-class classification (a, b, c)``, ``regression``..."""
    labels = ", ".join(task.labels)
    if task.problem == "regression":
        return "regression"
    if task.problem == "multilabel":
        return f"multilabel classification ({labels})"
    if task.spec.per_token:
        return f"token classification ({labels})"
    kind = "binary" if task.problem == "binary" else f"{len(task.labels)}-class"
    return f"{kind} classification ({labels})"


def _threshold_text(task: TaskInfo) -> str:
    threshold = task.decision_threshold
    origin = "the default" if task.threshold is None else "stored with the model"
    if isinstance(threshold, list):
        return ", ".join(f"{value:.3g}" for value in threshold) + f" ({origin})"
    return f"{threshold:.3g} ({origin})"


def decision_note(task: TaskInfo) -> str | None:
    """How the model turns scores into labels, in words (None for regression)."""
    if task.problem == "regression":
        return None
    if task.problem == "multilabel":
        return f"decision: a label is on when its probability >= {_threshold_text(task)}"
    if task.problem == "binary" and task.spec.classes:
        positive = task.labels[1]
        return f"decision: {positive} when P({positive}) >= {_threshold_text(task)}"
    unit = " of each token" if task.spec.per_token else ""
    return f"decision: the most probable class{unit}"


def verdict_summary(verdict: Mapping[str, Any]) -> list[str]:
    """The verdict of ``metrics.json`` (model against its composition baseline) in words, for
    the report's summary (the terminal's one line is ``verdict.verdict_lines``); ``ci95`` is
    null when no bootstrap resamples were drawn."""
    metric, baseline = verdict["metric"], verdict["baseline"]
    where = (
        f" on the {SECTION_HEADINGS.get(verdict['split'], verdict['split'])}"
        if "split" in verdict
        else ""
    )
    difference = f"model minus baseline: {verdict['difference']:+.3f}"
    if verdict.get("ci95") is not None:
        low, high = verdict["ci95"]
        difference += (
            f" (95% CI {low:+.3f} to {high:+.3f}, paired bootstrap over "
            f"{verdict['bootstrap_samples']} resamples)"
        )
    outcome = "beats" if verdict["beats_baseline"] else "does not beat"
    return [
        f"{metric}{where}: model {verdict['model']:.3f}, baseline ({baseline['name']}) "
        f"{baseline['value']:.3f}",
        difference,
        f"the model {outcome} the baseline",
    ]


def write_report(
    directory: Path,
    task: TaskInfo,
    sections: Mapping[str, Mapping[str, Any]],
    *,
    data: str,
    model: str,
    truth: np.ndarray | None = None,
    scores: Any = None,
    predicted: Sequence[str] = (),
    log_path: Path | None = None,
    verdict: Mapping[str, Any] | None = None,
) -> Path:
    """Plots of ``scores`` and ``predicted`` labels against ``truth`` (when given), training and
    validation curves from ``log_path``, and ``report.html``: titled by the task, ``data`` and
    ``model``, the ``verdict`` first, then the metrics of every section (e.g. valid, test)."""
    directory.mkdir(parents=True, exist_ok=True)
    images = training_plots(read_log(log_path), directory) if log_path is not None else {}
    if truth is not None and task.per_sequence:
        images.update(prediction_plots(task, truth, scores, predicted, directory))
    notes = [f"task: {describe_task(task)}", decision_note(task)]
    if task.rc_average:
        notes.append("scores are the mean over both DNA strands")
    notes += [
        f"{SECTION_HEADINGS.get(section, section)}: {note}"
        for section, result in sections.items()
        for note in result.get("notes", [])
    ]
    return plots.write_report_html(
        directory / "report.html",
        title=f"{describe_task(task).capitalize()} of {data}, model: {model}",
        tables=metrics_tables(sections),
        images=image_paths(images),
        notes=[note for note in notes if note is not None],
        summary=verdict_summary(verdict) if verdict else (),
        warnings=verdict.get("warnings", []) if verdict else (),
    )


def write_pretrain_report(output_dir: str | Path, *, data: str, model: str) -> Path:
    """Curves of a pretraining run's ``log.jsonl``, ``metrics.json`` with its last held-out
    loss and perplexity (and the step they were measured at), and ``report.html``, titled by
    the ``data`` and the ``model``."""
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
        title=f"Masked-LM pretraining on {data}, model: {model}",
        tables=metrics_tables({"valid": metrics.get("valid", {})}),
        images=image_paths(training_plots(rows, output_dir)),
        notes=[f"{len(rows)} log rows, last step {metrics['step']}"],
    )
