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
    """Rows of the report's metrics tables ("<section> <metric>" -> exact data-value numbers,
    the section from the table's data-section), headings, image alts and list items."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[float]] = {}
        self.images: list[str] = []
        self.headings: list[str] = []
        self.items: list[str] = []
        self.text: list[str] = []
        self.title = ""
        self._section = ""
        self._name: str | None = None
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._section = attributes.get("data-section", "")
        elif tag == "tr":
            self._name = None
        elif tag in ("th", "h2", "li", "h1"):
            self._in = tag
        elif tag == "td" and "data-value" in attributes and self._name is not None:
            key = f"{self._section} {self._name}"
            self.rows.setdefault(key, []).append(float(attributes["data-value"]))
        elif tag == "img":
            self.images.append(attributes["alt"])
            assert attributes["src"].startswith("data:image/png;base64,")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in == "th" and self._name is None:
            self._name = data
        elif self._in == "h2":
            self.headings.append(data)
        elif self._in == "li":
            self.items.append(data)
        elif self._in == "h1":
            self.title += data


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
    loss_axes, lr_axes = images["training curves"].figure.axes
    train, valid = loss_axes.get_lines()
    assert train.get_xdata().tolist() == [5, 10, 15, 20]
    assert train.get_ydata().tolist() == [0.70, 0.65, 0.55, 0.50]
    assert valid.get_ydata().tolist() == [0.66, 0.58]
    assert lr_axes.get_lines()[0].get_ydata().tolist() == [1e-3, 9e-4, 5e-4, 1e-4]
    assert lr_axes.get_xlim()[0] <= 5 and lr_axes.get_xlim()[1] >= 20
    metric_lines = images["validation metrics"].figure.axes[0].get_lines()
    assert {line.get_label(): line.get_ydata().tolist() for line in metric_lines} == {
        "mcc": [0.2, 0.4],
        "auroc": [0.6, 0.75],
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
        directory,
        task,
        records,
        predictions,
        sections,
        data="promoters.csv",
        model="new tiny encoder",
        log_path=directory / "log.jsonl",
    )
    table = parse_report(page)
    assert table.title == (
        "Binary classification (neg, pos) of promoters.csv, model: new tiny encoder"
    )
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
    page = report.write_pretrain_report(tmp_path, data="genome.fa", model="tiny")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 30
    assert metrics["valid"]["step"] == 30
    assert metrics["valid"]["metrics"]["loss"]["value"] == 1.385
    table = parse_report(page)
    assert table.title == "Masked-LM pretraining on genome.fa, model: tiny"
    assert table.images == ["training curves", "validation metrics"]
    assert_table_equals_metrics(table, {"valid": metrics["valid"]})


VERDICT = {
    "metric": "mcc",
    "model": 0.61,
    "baseline": {"name": "k-mer (3-6) counts + logistic regression", "value": 0.45},
    "difference": 0.16,
    "ci95": [0.05, 0.27],
    "bootstrap_samples": 1000,
    "beats_baseline": True,
    "warnings": ["the test split holds 60 records: its interval is wide"],
}


@pytest.mark.parametrize("names", [["a", "b", "c"], ["0", "1", "2"]])
def test_multiclass_report_with_class_ids_as_truth(tmp_path, names):
    """Issue 21: a 3-class report crashed ("y_true holds 2, which is not one of the labels")
    because the curves got label names while the truth held class ids."""
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 20)
    scores = rng.dirichlet(np.ones(3), truth.size)
    scores[np.arange(truth.size), truth] += 1.0
    scores /= scores.sum(axis=1, keepdims=True)
    task = TaskInfo("classification", names)
    records = [SequenceRecord(f"r{i}", "ACGT", names[y]) for i, y in enumerate(truth)]
    predictions = Predictions(
        ids=[r.id for r in records],
        task=task,
        scores=scores,
        predicted=task.label_predictions(scores),
    )
    result = evaluate_predictions("multiclass", truth, scores, bootstrap=20, seed=0)
    page = visualize.write_run_report(
        tmp_path, task, records, predictions, {"test": result}, data="x.csv", model="m"
    )
    table = parse_report(page)
    assert table.images == ["ROC", "precision-recall", "confusion matrix"]
    assert table.title == f"3-class classification ({', '.join(names)}) of x.csv, model: m"
    assert_table_equals_metrics(table, {"test": result})
    roc = report.prediction_plots(task, truth, scores, predictions.predicted, tmp_path)["ROC"]
    legend = [text.get_text() for text in roc.figure.axes[0].get_legend().get_texts()]
    assert [name.split()[0] for name in legend] == names


def test_report_puts_the_verdict_first_and_writes_values_not_reprs(binary_run):
    directory, _, records, predictions, _, _ = binary_run
    task = TaskInfo("classification", ["neg", "pos"], threshold=None)
    sections = json.loads((directory / "metrics.json").read_text())
    page = visualize.write_run_report(
        directory, task, records, predictions, sections, data="d.fa", model="m", verdict=VERDICT
    )
    text = page.read_text()
    table = parse_report(page)
    assert table.headings[:2] == ["Verdict", "test split (n = 60)"]
    assert "model minus baseline: +0.160 (95% CI +0.050 to +0.270" in text
    assert "Warning: the test split holds 60 records" in text
    assert "decision: pos when P(pos) >= 0.5 (the default)" in table.items
    assert "task: binary classification (neg, pos)" in table.items
    for repr_text in ("None", "['", "data accuracy"):
        assert repr_text not in text
    without_bootstrap = {**VERDICT, "ci95": None, "split": "test", "n": 60}
    lines = report.verdict_summary(without_bootstrap)
    assert lines[0] == (
        "mcc on the test split: model 0.610, baseline (k-mer (3-6) counts + logistic "
        "regression) 0.450"
    )
    assert lines[1] == "model minus baseline: +0.160"


def test_evaluate_report_has_no_data_rows(binary_run):
    """An evaluation's table is headed by the data file, its rows are the metrics."""
    directory, task, records, predictions, truth, _ = binary_run
    result = evaluate_predictions("binary", truth, predictions.scores, bootstrap=20, seed=0)
    page = visualize.write_run_report(
        directory / "evaluate", task, records, predictions, {"d.fa": result}, data="d.fa", model="m"
    )
    table = parse_report(page)
    assert "d.fa (n = 60)" in table.headings
    assert "d.fa mcc" in table.rows and not any(key.startswith("data ") for key in table.rows)
