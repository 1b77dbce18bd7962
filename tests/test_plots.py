"""Plots: the axes hold the plotted data, files are PNGs written atomically, reports parse."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

from biotransformer import plots
from biotransformer.errors import InputError
from biotransformer.metrics import evaluate_predictions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

LOG = [
    {"step": 10, "loss": 2.5, "lr": 1e-4},
    {"step": 20, "loss": 2.1, "lr": 2e-4},
    {"step": 20, "valid_loss": 2.3, "valid_mcc": 0.1, "valid_f1": 0.4},
    {"step": 30, "loss": 1.8, "lr": 2e-4},
    {"step": 40, "loss": 1.6, "lr": 1e-4, "epoch": 1},
    {"step": 40, "valid_loss": 1.9, "valid_mcc": 0.3, "valid_f1": 0.6},
]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_training_curves_hold_the_logged_values(tmp_path):
    path = tmp_path / "curves.png"
    figure = plots.plot_training_curves(LOG, path)
    loss_axes, lr_axes = figure.axes  # validation metrics have their own figure
    train, valid = loss_axes.get_lines()
    assert train.get_xdata().tolist() == [10, 20, 30, 40]
    assert train.get_ydata().tolist() == [2.5, 2.1, 1.8, 1.6]
    assert valid.get_ydata().tolist() == [2.3, 1.9]
    assert lr_axes.get_lines()[0].get_ydata().tolist() == [1e-4, 2e-4, 2e-4, 1e-4]
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary left over


def test_training_curves_without_validation_has_two_axes():
    figure = plots.plot_training_curves([row for row in LOG if "loss" in row])
    assert len(figure.axes) == 2
    with pytest.raises(InputError, match="loss"):
        plots.plot_training_curves([{"step": 1, "valid_loss": 1.0}])


def test_validation_metrics_one_line_per_metric():
    figure = plots.plot_validation_metrics(LOG)
    lines = {line.get_label(): line.get_ydata().tolist() for line in figure.axes[0].get_lines()}
    assert lines == {"mcc": [0.1, 0.3], "f1": [0.4, 0.6]}
    with pytest.raises(InputError, match="valid_"):
        plots.plot_validation_metrics([{"step": 1, "valid_loss": 1.0}])


def test_roc_curve_matches_sklearn(rng):
    y = rng.integers(0, 2, 200)
    score = np.clip(0.3 * y + 0.7 * rng.random(200), 0, 1)
    axes = plots.plot_roc(y, score).axes[0]
    curve = axes.get_lines()[0]
    fpr, tpr, _ = roc_curve(y, score)
    assert len(curve.get_xdata()) == len(fpr)
    np.testing.assert_array_equal(curve.get_ydata(), tpr)
    assert axes.get_xlim() == (0.0, 1.0) and axes.get_ylim() == (0.0, 1.0)


def test_roc_and_precision_recall_one_vs_rest_for_multiclass(rng):
    y = rng.integers(0, 3, 150)
    probabilities = rng.dirichlet(np.ones(3), 150)
    names = np.array(["A", "B", "C"])[y]
    roc_axes = plots.plot_roc(names, probabilities, labels=["A", "B", "C"]).axes[0]
    legend = [text.get_text() for text in roc_axes.get_legend().get_texts()]
    assert [name[0] for name in legend] == ["A", "B", "C"]  # the chance diagonal unlabelled
    pr_axes = plots.plot_precision_recall(y, probabilities).axes[0]
    _, recall, _ = precision_recall_curve(y == 2, probabilities[:, 2])
    *_, third_curve, third_base_rate = pr_axes.get_lines()  # each class: curve, base rate
    np.testing.assert_array_equal(third_curve.get_xdata(), recall)
    assert list(third_base_rate.get_ydata()) == [np.mean(y == 2)] * 2
    assert pr_axes.get_xlim() == (0.0, 1.0) and pr_axes.get_ylim() == (0.0, 1.0)


def legend_outside(axes) -> bool:
    """The legend's box lies right of the axes' box: it covers no point."""
    renderer = axes.figure.canvas.get_renderer()
    axes.figure.draw(renderer)
    legend_box = axes.get_legend().get_window_extent(renderer)
    return legend_box.x0 >= axes.get_window_extent(renderer).x1


def test_many_classes_get_at_most_three_curves_per_axes_with_legends_clear(rng):
    y = rng.integers(0, 7, 300)
    probabilities = rng.dirichlet(np.ones(7), 300)
    for draw in (plots.plot_roc, plots.plot_precision_recall):
        figure = draw(y, probabilities)
        legends = [[t.get_text() for t in axes.get_legend().get_texts()] for axes in figure.axes]
        assert [len(names) for names in legends] == [3, 3, 1]
        assert [name.split()[0] for names in legends for name in names] == list("0123456")
        assert all(legend_outside(axes) for axes in figure.axes)
    log = [{"step": s, **{f"valid_{m}": 0.1 * s for m in "abcdefg"}} for s in (1, 2)]
    figure = plots.plot_validation_metrics(log)
    assert [len(axes.get_lines()) for axes in figure.axes] == [3, 3, 1]
    assert all(legend_outside(axes) for axes in figure.axes)


def test_curves_need_both_classes():
    with pytest.raises(InputError, match="both"):
        plots.plot_roc(np.zeros(5, dtype=int), np.linspace(0, 1, 5))


def test_confusion_matrix_image_is_sklearns_with_counts(rng):
    y = rng.choice(["a", "b", "c"], 100)
    predicted = rng.choice(["a", "b", "c"], 100)
    axes = plots.plot_confusion_matrix(y, predicted, ["c", "b", "a"]).axes[0]
    expected = confusion_matrix(y, predicted, labels=["c", "b", "a"])
    np.testing.assert_array_equal(axes.get_images()[0].get_array(), expected)
    assert sorted(int(text.get_text()) for text in axes.texts) == sorted(expected.ravel())
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["c", "b", "a"]


def test_predicted_vs_true_has_identity_line_and_title(rng):
    y = rng.normal(size=80)
    axes = plots.plot_predicted_vs_true(y, y + rng.normal(scale=0.3, size=80)).axes[0]
    assert len(axes.collections[0].get_offsets()) == 80
    identity = axes.get_lines()[0]
    np.testing.assert_array_equal(identity.get_xdata(), identity.get_ydata())
    assert "Spearman" in axes.get_title() and "R²" in axes.get_title()


def test_embeddings_pca_scatter_has_every_point(rng):
    embeddings = rng.normal(size=(60, 8))
    labels = np.repeat(["dna", "rna", "protein"], 20)
    axes = plots.plot_embeddings(embeddings, labels).axes[0]
    assert sum(len(points.get_offsets()) for points in axes.collections) == 60
    assert "% variance" in axes.get_xlabel() and "% variance" in axes.get_ylabel()
    continuous = plots.plot_embeddings(embeddings, rng.random(60))
    assert len(continuous.axes) == 2  # the scatter and its colour bar


def test_attention_map_labels_every_token_or_positions(rng):
    short = rng.dirichlet(np.ones(30), size=30)
    tokens = [f"t{i}" for i in range(30)]
    axes = plots.plot_attention_map(short, tokens).axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == tokens
    assert [label.get_text() for label in axes.get_yticklabels()] == tokens
    assert axes.get_xlabel() == "key token"
    heads = rng.dirichlet(np.ones(100), size=(4, 100))  # (H, T, T), rows sum to 1
    tokens = [f"t{i}" for i in range(100)]
    axes = plots.plot_attention_map(heads, tokens).axes[0]
    np.testing.assert_allclose(axes.get_images()[0].get_array(), heads.mean(axis=0))
    # too long to label each token: positions (1-based), not every k-th token
    names = [label.get_text() for label in axes.get_xticklabels()]
    assert len(names) <= 40 and names[:3] == ["1", "4", "7"]
    assert axes.get_xlabel() == "key token position"
    one_head = plots.plot_attention_map(heads, tokens, head=2).axes[0]
    np.testing.assert_allclose(one_head.get_images()[0].get_array(), heads[2])
    with pytest.raises(InputError, match="tokens"):
        plots.plot_attention_map(heads[0], tokens[:10])


def test_png_output_is_deterministic(tmp_path, rng):
    y = rng.integers(0, 2, 50)
    score = rng.random(50)
    plots.plot_roc(y, score, tmp_path / "first.png")
    plots.plot_roc(y, score, tmp_path / "second.png")
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "second.png").read_bytes()


class ReportParser(HTMLParser):
    """Collects the h2 headings, image sources and every table cell's data-value."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.rows: list[tuple[str, list[float]]] = []
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "h2":
            self._in_heading = True
        elif tag == "img":
            self.images.append(attributes["src"])
        elif tag == "tr":
            self.rows.append(("", []))
        elif tag == "td" and "data-value" in attributes:
            self.rows[-1][1].append(float(attributes["data-value"]))

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_heading = False

    def handle_data(self, data):
        if self._in_heading:
            self.headings.append(data)
        elif self.rows and not self.rows[-1][0] and not self.rows[-1][1] and data.strip():
            self.rows[-1] = (data, [])


def test_report_embeds_plots_and_exact_metric_values(tmp_path, rng):
    y = rng.integers(0, 2, 100)
    score = np.clip(0.3 * y + 0.7 * rng.random(100), 0, 1)
    result = evaluate_predictions("binary", y, score, bootstrap=50)
    images = {"ROC curve": tmp_path / "roc.png", "Precision <& recall>": tmp_path / "pr.png"}
    plots.plot_roc(y, score, images["ROC curve"])
    plots.plot_precision_recall(y, score, images["Precision <& recall>"])
    metrics = {"n": result["n"], **result["metrics"]}
    report = plots.write_report_html(
        tmp_path / "report.html",
        title="test report",
        tables={"test": plots.MetricsSection("test split", metrics)},
        images=images,
        notes=["bootstrap over samples"],
    )
    parser = ReportParser()
    parser.feed(report.read_text(encoding="utf-8"))
    assert parser.headings == ["test split", *images]
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)
    values = dict(parser.rows[1:])
    assert values["n"] == [100.0]
    for name, entry in result["metrics"].items():
        assert values[name] == [entry["value"], entry["ci_low"], entry["ci_high"]]
    with pytest.raises(InputError, match="missing"):
        plots.write_report_html(
            tmp_path / "bad.html", title="x", tables={}, images={"missing": tmp_path / "no.png"}
        )
