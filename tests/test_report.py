"""Run reports: the plots hold the run's data and report.html says what metrics.json says."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import numpy as np
import pytest

from biotransformer import report, visualize
from biotransformer.inference import Predictions, TaskInfo
from biotransformer.io import SequenceRecord
from biotransformer.metrics import evaluate_predictions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

FINETUNE_LOG = [
    {"step": 5, "epoch": 0, "loss": 0.70, "lr": 1e-3},
    {"step": 10, "epoch": 0, "loss": 0.65, "lr": 9e-4},
    {"step": 10, "epoch": 0, "valid_loss": 0.66, "valid_mcc": 0.2, "valid_auroc": 0.6},
    {"step": 15, "epoch": 1, "loss": 0.55, "lr": 5e-4},
    {"step": 20, "epoch": 1, "loss": 0.50, "lr": 1e-4},
    {"step": 20, "epoch": 1, "valid_loss": 0.58, "valid_mcc": 0.4, "valid_auroc": 0.75},
]
PRETRAIN_LOG = [
    {"step": 10, "loss": 1.50, "lr": 1e-3},
    {"step": 20, "loss": 1.40, "lr": 5e-4},
    {"step": 20, "valid_loss": 1.41, "valid_perplexity": math.exp(1.41)},
    {"step": 30, "loss": 1.38, "lr": 1e-4},
    {"step": 30, "valid_loss": 1.385, "valid_perplexity": math.exp(1.385)},
]


class MetricsTable(HTMLParser):
    """Rows of the report's metrics table (name -> exact data-value numbers), image alts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[float]] = {}
        self.images: list[str] = []
        self._name: str | None = None
        self._in_th = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if tag == "tr":
            self._name = None
        elif tag == "th":
            self._in_th = True
        elif tag == "td" and "data-value" in attributes and self._name is not None:
            self.rows.setdefault(self._name, []).append(float(attributes["data-value"]))
        elif tag == "img":
            self.images.append(attributes["alt"])
            assert attributes["src"].startswith("data:image/png;base64,")

    def handle_endtag(self, tag: str) -> None:
        if tag == "th":
            self._in_th = False

    def handle_data(self, data: str) -> None:
        if self._in_th and self._name is None:
            self._name = data


def parse_report(path) -> MetricsTable:
    table = MetricsTable()
    table.feed(path.read_text())
    return table


def assert_table_equals_metrics(table: MetricsTable, sections: dict) -> None:
    """Every metric of every section is one row holding exactly value, ci_low, ci_high."""
    expected = {
        f"{section} {name}": [entry[key] for key in ("value", "ci_low", "ci_high") if key in entry]
        for section, result in sections.items()
        for name, entry in result["metrics"].items()
    }
    assert table.rows.keys() == expected.keys()
    for name, values in expected.items():
        np.testing.assert_array_equal(table.rows[name], values, err_msg=name)


@pytest.fixture
def binary_run(tmp_path):
    """A fake fine-tuning run directory: log, test predictions and metrics.json."""
    rng = np.random.default_rng(3)
    truth = np.tile([0, 1], 30)
    positive = np.clip(0.5 + 0.35 * (truth - 0.5) + rng.normal(0, 0.2, truth.size), 0.01, 0.99)
    scores = np.stack([1 - positive, positive], axis=1)
    task = TaskInfo("classification", ["neg", "pos"], threshold=0.5)
    records = [SequenceRecord(f"r{i}", "ACGT", task.labels[y]) for i, y in enumerate(truth)]
    predictions = Predictions(
        ids=[r.id for r in records],
        task=task,
        scores=scores,
        predicted=[task.labels[int(p > 0.5)] for p in positive],
    )
    result = evaluate_predictions("binary", truth, scores, bootstrap=50, seed=0)
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in FINETUNE_LOG))
    (tmp_path / "metrics.json").write_text(json.dumps({"test": result}))
    return tmp_path, task, records, predictions, truth, positive


def test_training_plots_hold_every_logged_point(tmp_path):
    images = report.training_plots(FINETUNE_LOG, tmp_path)
    assert list(images) == ["training curves", "validation metrics"]
    loss_axes, lr_axes, _ = images["training curves"].figure.axes
    train, valid = loss_axes.get_lines()
    assert train.get_xdata().tolist() == [5, 10, 15, 20]
    assert train.get_ydata().tolist() == [0.70, 0.65, 0.55, 0.50]
    assert valid.get_ydata().tolist() == [0.66, 0.58]
    assert lr_axes.get_lines()[0].get_ydata().tolist() == [1e-3, 9e-4, 5e-4, 1e-4]
    assert lr_axes.get_xlim()[0] <= 5 and lr_axes.get_xlim()[1] >= 20
    metric_lines = images["validation metrics"].figure.axes[0].get_lines()
    assert {line.get_label(): line.get_ydata().tolist() for line in metric_lines} == {
        "valid_mcc": [0.2, 0.4],
        "valid_auroc": [0.6, 0.75],
    }
    for plot in images.values():
        assert plot.path.read_bytes().startswith(PNG_SIGNATURE)


def test_classification_plots_hold_the_predictions(binary_run):
    directory, task, _, predictions, truth, positive = binary_run
    images = report.prediction_plots(
        task, truth, predictions.scores, predictions.predicted, directory
    )
    assert list(images) == ["ROC", "precision-recall", "confusion matrix"]
    roc_axes = images["ROC"].figure.axes[0]
    fpr = roc_axes.get_lines()[0].get_xdata()
    assert fpr[0] == 0.0 and fpr[-1] == 1.0
    assert roc_axes.get_xlim() == (0.0, 1.0) and roc_axes.get_ylim() == (0.0, 1.0)
    confusion = images["confusion matrix"].figure.axes[0].get_images()[0].get_array()
    assert confusion.sum() == len(truth)
    assert confusion[1, 1] == np.sum((truth == 1) & (positive > 0.5))


def test_regression_plot_has_one_point_per_record(tmp_path):
    truth = np.linspace(0.0, 1.0, 25)
    task = TaskInfo("regression", [])
    images = report.prediction_plots(task, truth, (truth * 2)[:, None], [], tmp_path)
    scatter = images["predicted vs true"].figure.axes[0].collections[0].get_offsets()
    assert scatter.shape == (25, 2)
    np.testing.assert_array_equal(scatter[:, 1], truth * 2)


def test_finetune_report_names_every_plot_and_matches_metrics_json(binary_run):
    directory, task, records, predictions, _, _ = binary_run
    sections = json.loads((directory / "metrics.json").read_text())
    page = visualize.write_run_report(
        directory, task, records, predictions, sections, log_path=directory / "log.jsonl"
    )
    table = parse_report(page)
    assert table.images == [
        "training curves",
        "validation metrics",
        "ROC",
        "precision-recall",
        "confusion matrix",
    ]
    assert_table_equals_metrics(table, sections)


def test_pretrain_report_writes_metrics_json_and_curves(tmp_path):
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in PRETRAIN_LOG))
    page = report.write_pretrain_report(tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 30
    assert metrics["valid"]["step"] == 30
    assert metrics["valid"]["metrics"]["loss"]["value"] == 1.385
    table = parse_report(page)
    assert table.images == ["training curves", "validation metrics"]
    assert_table_equals_metrics(table, {"valid": metrics["valid"]})
