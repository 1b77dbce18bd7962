"""Pictures of training and evaluation, and a self-contained HTML report that embeds them.

Every plot function builds a ``matplotlib.figure.Figure`` on the Agg canvas (no pyplot, so no
global figure state), writes it as PNG atomically when ``path`` is given, and returns the
figure so callers and tests can inspect what was drawn. Output is deterministic: fixed sizes,
fixed resolution, no timestamps.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.metrics import auc, confusion_matrix, precision_recall_curve, r2_score, roc_curve

from biotransformer.atomic import atomic_write
from biotransformer.errors import InputError
from biotransformer.metrics import one_vs_rest

PathLike = str | os.PathLike[str]
DPI = 100
MAX_TICK_LABELS = 40
MAX_TOKEN_LABELS = 64
MAX_SERIES = 3  # data series per axes
PNG_METADATA = {"Software": None}  # no matplotlib version in the file: same bytes everywhere


def _new_figure(width: float = 6.0, height: float = 4.5) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _finish(figure: Figure, path: PathLike | None) -> Figure:
    """Write ``figure`` as PNG to ``path`` atomically (when given) and return it."""
    if path is not None:
        with atomic_write(path, "wb") as handle:
            figure.savefig(handle, format="png", dpi=DPI, metadata=PNG_METADATA)
    return figure


# ----------------------------------------------------------------------------- training logs


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that carry a step and a finite number under ``key``."""
    points = [
        (record["step"], record[key])
        for record in records
        if "step" in record
        and isinstance(record.get(key), numbers.Real)
        and math.isfinite(record[key])
    ]
    steps, values = zip(*points, strict=True) if points else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _validation_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``valid_<metric>`` keys other than ``valid_loss``, in order of first appearance."""
    keys = dict.fromkeys(key for record in records for key in record if key.startswith("valid_"))
    keys.pop("valid_loss", None)
    return list(keys)


def _legend_beside(axes: Axes) -> None:
    """The legend to the right of the axes, where it cannot cover a point."""
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", borderaxespad=0)


def _in_groups(items: Sequence[Any], size: int = MAX_SERIES) -> list[Sequence[Any]]:
    """``items`` in consecutive groups of at most ``size``: one group per axes."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def plot_training_curves(
    log_records: Sequence[Mapping[str, Any]], path: PathLike | None = None
) -> Figure:
    """Training loss (with validation loss as points) and learning rate vs step.

    ``log_records`` are the rows of the training log: ``{"step", "loss", "lr"}`` and
    ``{"step", "valid_loss", ...}``. Validation metrics have their own figure
    (``plot_validation_metrics``), so no axes holds more than two series.
    """
    steps, losses = _series(log_records, "loss")
    if len(steps) == 0:
        raise InputError("the training log has no records with a 'step' and a 'loss'")
    figure = _new_figure(7.5, 6.0)
    loss_axes, lr_axes = figure.subplots(2, 1, sharex=True)
    loss_axes.plot(steps, losses, color="tab:blue", linewidth=1.2, label="training loss")
    valid_steps, valid_losses = _series(log_records, "valid_loss")
    if len(valid_steps):
        loss_axes.plot(valid_steps, valid_losses, "o", color="tab:orange", label="validation loss")
    loss_axes.set_ylabel("loss")
    loss_axes.grid(alpha=0.3)
    _legend_beside(loss_axes)
    lr_axes.plot(*_series(log_records, "lr"), color="tab:green", linewidth=1.2)
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("optimizer step")
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    lr_axes.grid(alpha=0.3)
    return _finish(figure, path)


def plot_validation_metrics(
    log_records: Sequence[Mapping[str, Any]], path: PathLike | None = None
) -> Figure:
    """Each ``valid_<metric>`` of the training log (validation loss excluded) vs step, at most
    three metrics per axes (one axes below the other), legends beside the axes."""
    metric_keys = _validation_keys(log_records)
    if not metric_keys:
        raise InputError("the training log has no 'valid_<metric>' entries besides valid_loss")
    groups = _in_groups(metric_keys)
    figure = _new_figure(7.5, 1.0 + 2.6 * len(groups))
    for index, (axes, keys) in enumerate(
        zip(figure.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0], groups, strict=True)
    ):
        for key in keys:
            axes.plot(
                *_series(log_records, key),
                marker="o",
                markersize=3,
                label=key.removeprefix("valid_"),
            )
        axes.set_ylabel("validation metric")
        axes.grid(alpha=0.3)
        _legend_beside(axes)
        if index == len(groups) - 1:
            axes.set_xlabel("optimizer step")
    return _finish(figure, path)


# ----------------------------------------------------------------------------- classification


def _binary_tasks(
    y_true: Any, y_score: Any, labels: Sequence[Any] | None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The one-vs-rest tasks that have both classes; an error when none has."""
    tasks = [
        task for task in one_vs_rest(y_true, y_score, labels) if 0 < task[1].sum() < len(task[1])
    ]
    if not tasks:
        raise InputError("a curve needs both positive and negative samples in y_true")
    return tasks


def _unit_square(axes: Axes, xlabel: str, ylabel: str) -> None:
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_aspect("equal")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    _legend_beside(axes)


def _curve_axes(count: int) -> tuple[Figure, list[Axes]]:
    """A figure with one axes per group of at most three curves, side by side in rows of two."""
    panels = math.ceil(count / MAX_SERIES)
    columns = min(panels, 2)
    rows = math.ceil(panels / columns)
    figure = _new_figure(6.5 * columns, 4.5 * rows)
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for spare in grid[panels:]:
        spare.remove()
    return figure, list(grid[:panels])


def plot_roc(
    y_true: Any,
    y_score: Any,
    path: PathLike | None = None,
    *,
    labels: Sequence[Any] | None = None,
) -> Figure:
    """ROC curve (scikit-learn ``roc_curve``) with its AUROC; one-vs-rest curves per class,
    at most three per axes; the dashed diagonal is chance.

    Inputs follow ``biotransformer.metrics``; classes with one class present are left out.
    """
    tasks = _binary_tasks(y_true, y_score, labels)
    figure, panels = _curve_axes(len(tasks))
    for axes, group in zip(panels, _in_groups(tasks), strict=True):
        for name, truth, scores in group:
            fpr, tpr, _ = roc_curve(truth, scores)
            axes.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUROC {auc(fpr, tpr):.3f})")
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        _unit_square(axes, "false positive rate", "true positive rate")
    return _finish(figure, path)


def plot_precision_recall(
    y_true: Any,
    y_score: Any,
    path: PathLike | None = None,
    *,
    labels: Sequence[Any] | None = None,
) -> Figure:
    """Precision-recall curve (``precision_recall_curve``) per class, at most three per axes,
    each with its positive rate (the precision of chance) dotted."""
    tasks = _binary_tasks(y_true, y_score, labels)
    figure, panels = _curve_axes(len(tasks))
    for axes, group in zip(panels, _in_groups(tasks), strict=True):
        for name, truth, scores in group:
            precision, recall, _ = precision_recall_curve(truth, scores)
            line = axes.step(recall, precision, where="post", linewidth=1.5, label=name)[0]
            axes.axhline(truth.mean(), linestyle=":", linewidth=1, color=line.get_color())
        _unit_square(axes, "recall", "precision")
    return _finish(figure, path)


def plot_confusion_matrix(
    y_true: Any, y_pred: Any, labels: Sequence[Any], path: PathLike | None = None
) -> Figure:
    """Confusion matrix counts (rows true, columns predicted, in ``labels`` order), annotated."""
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    size = max(4.0, 0.6 * len(labels) + 2.0)
    figure = _new_figure(size, size)
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=axes, shrink=0.8, label="count")
    threshold = counts.max() / 2.0
    for (row, column), count in np.ndenumerate(counts):
        colour = "white" if count > threshold else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=9)
    names = [str(label) for label in labels]
    axes.set_xticks(range(len(names)), names, rotation=45 if len(names) > 6 else 0)
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    return _finish(figure, path)


# ----------------------------------------------------------------------------- regression


def plot_predicted_vs_true(y_true: Any, y_pred: Any, path: PathLike | None = None) -> Figure:
    """Scatter of predictions against targets with the identity line; Spearman and R^2 above."""
    truth = np.asarray(y_true, dtype=float).ravel()
    predicted = np.asarray(y_pred, dtype=float).ravel()
    if truth.shape != predicted.shape or len(truth) < 2:
        raise InputError("y_true and y_pred must be one target each, of the same length >= 2")
    figure = _new_figure(5.5, 5.0)
    axes = figure.add_subplot()
    axes.scatter(truth, predicted, s=8, alpha=0.6, edgecolors="none")
    low = min(truth.min(), predicted.min())
    high = max(truth.max(), predicted.max())
    axes.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1)
    spearman = stats.spearmanr(truth, predicted).statistic
    axes.set_title(f"Spearman ρ = {spearman:.3f}, R² = {r2_score(truth, predicted):.3f}")
    axes.set_xlabel("true")
    axes.set_ylabel("predicted")
    axes.grid(alpha=0.3)
    return _finish(figure, path)


# ----------------------------------------------------------------------------- representations


def plot_embeddings(
    embeddings: Any, labels: Sequence[Any] | None = None, path: PathLike | None = None
) -> Figure:
    """First two principal components of (N, D) embeddings, coloured by label.

    Labels with at most 20 distinct values get one colour each and a legend; more distinct
    numeric labels get a colour scale. Axis labels give each component's explained variance.
    """
    points = np.asarray(embeddings, dtype=float)
    if points.ndim != 2 or points.shape[0] < 2 or points.shape[1] < 2:
        raise InputError(f"embeddings must have shape (N, D) with N, D >= 2, got {points.shape}")
    pca = PCA(n_components=2, svd_solver="full")
    projected = pca.fit_transform(points)
    figure = _new_figure(6.5, 5.0)
    axes = figure.add_subplot()
    style = {"s": 10, "alpha": 0.8, "edgecolors": "none"}
    if labels is None:
        axes.scatter(projected[:, 0], projected[:, 1], **style)
    else:
        values = np.asarray(labels)
        if len(values) != len(points):
            raise InputError(f"{len(values)} labels for {len(points)} embeddings")
        distinct = np.unique(values)
        if len(distinct) <= 20 or values.dtype.kind not in "iuf":
            for value in distinct:
                chosen = values == value
                axes.scatter(projected[chosen, 0], projected[chosen, 1], label=str(value), **style)
            axes.legend(
                loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", markerscale=2
            )
        else:
            cloud = axes.scatter(
                projected[:, 0], projected[:, 1], c=values, cmap="viridis", **style
            )
            figure.colorbar(cloud, ax=axes, label="label")
    share = pca.explained_variance_ratio_ * 100.0
    axes.set_xlabel(f"PC1 ({share[0]:.1f}% variance)")
    axes.set_ylabel(f"PC2 ({share[1]:.1f}% variance)")
    axes.grid(alpha=0.3)
    return _finish(figure, path)


def plot_attention_map(
    attention: Any,
    tokens: Sequence[str],
    path: PathLike | None = None,
    *,
    head: int | None = None,
) -> Figure:
    """Heatmap of attention weights, queries on rows and keys on columns, tokens on the axes.

    ``attention`` is (T, T) or (H, T, T); with heads, ``head`` picks one, else their mean is
    shown. Up to 64 tokens every token is labelled on both axes (the figure grows with the
    length); a longer sequence is labelled by token position instead, so an axis never reads
    as a sequence it is not.
    """
    weights = np.asarray(attention, dtype=float)
    if weights.ndim == 3:
        title = "mean over heads" if head is None else f"head {head}"
        weights = weights.mean(axis=0) if head is None else weights[head]
    else:
        title = "attention"
    length = len(tokens)
    if weights.shape != (length, length):
        raise InputError(f"attention of shape {weights.shape} does not match {length} tokens")
    side = min(max(5.5, 0.16 * length + 2.5), 14.0)
    figure = _new_figure(side + 1.0, side)
    axes = figure.add_subplot()
    image = axes.imshow(weights, cmap="viridis", vmin=0.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    if length <= MAX_TOKEN_LABELS:
        ticks, names, unit = range(length), [str(token) for token in tokens], "token"
        size = 7 if length <= 40 else 5
    else:
        every = math.ceil(length / MAX_TICK_LABELS)
        ticks = range(0, length, every)
        names, unit, size = [str(index + 1) for index in ticks], "token position", 7
    axes.set_xticks(ticks, names, rotation=90, fontsize=size)
    axes.set_yticks(ticks, names, fontsize=size)
    axes.set_xlabel(f"key {unit}")
    axes.set_ylabel(f"query {unit}")
    axes.set_title(title)
    return _finish(figure, path)


# ----------------------------------------------------------------------------- saliency

LETTER_COLOURS = {"A": "tab:green", "C": "tab:blue", "G": "tab:orange", "T": "tab:red"}


def plot_saliency_heatmap(
    effects: Any,
    letters: str,
    sequence: str,
    path: PathLike | None = None,
    *,
    title: str = "in-silico mutagenesis",
) -> Figure:
    """Position x letter heatmap of mutation effects (L, letters), diverging around 0, the
    reference letter of each position outlined."""
    values = np.asarray(effects, dtype=float)
    if values.shape != (len(sequence), len(letters)):
        raise InputError(
            f"effects of shape {values.shape} do not match {len(sequence)} positions x "
            f"{len(letters)} letters"
        )
    limit = float(np.abs(values).max()) or 1.0
    figure = _new_figure(min(max(6.0, len(sequence) * 0.12), 20.0), 1.5 + 0.2 * len(letters))
    axes = figure.add_subplot()
    image = axes.imshow(
        values.T, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest"
    )
    figure.colorbar(image, ax=axes, label="score change")
    column = {letter: j for j, letter in enumerate(letters)}
    rows = [column.get(letter, -1) for letter in sequence.upper()]
    known = [(i, j) for i, j in enumerate(rows) if j >= 0]
    if known:
        xs, ys = zip(*known, strict=True)
        axes.scatter(xs, ys, s=6, c="black", marker="o", label="reference")
    axes.set_yticks(range(len(letters)), list(letters), fontsize=7)
    every = math.ceil(len(sequence) / MAX_TICK_LABELS)
    axes.set_xticks(
        range(0, len(sequence), every),
        [str(i + 1) for i in range(0, len(sequence), every)],
        fontsize=7,
    )
    axes.set_xlabel("position")
    axes.set_title(title)
    return _finish(figure, path)


def plot_logo(
    heights: Any, sequence: str, path: PathLike | None = None, *, title: str = "importance"
) -> Figure:
    """Logo-style plot: each position's letter drawn with the height of its importance,
    above the axis when positive and below (upside down) when negative."""
    from matplotlib.patches import PathPatch
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    values = np.asarray(heights, dtype=float)
    if values.shape != (len(sequence),):
        raise InputError(f"{values.shape[0]} heights for {len(sequence)} positions")
    figure = _new_figure(min(max(6.0, len(sequence) * 0.15), 20.0), 3.0)
    axes = figure.add_subplot()
    for i, (letter, height) in enumerate(zip(sequence.upper(), values, strict=True)):
        glyph = TextPath((0, 0), letter, size=1, prop={"family": "monospace", "weight": "bold"})
        box = glyph.get_extents()
        scale = Affine2D().translate(-box.x0, -box.y0).scale(0.9 / box.width, height / box.height)
        patch = PathPatch(
            scale.translate(i + 0.05, 0).transform_path(glyph),
            color=LETTER_COLOURS.get(letter, "tab:purple"),
            linewidth=0,
        )
        axes.add_patch(patch)
    low, high = min(values.min(), 0.0), max(values.max(), 0.0)
    margin = 0.05 * ((high - low) or 1.0)
    axes.set_xlim(0, len(sequence))
    axes.set_ylim(low - margin, high + margin)
    axes.axhline(0, color="grey", linewidth=0.5)
    every = math.ceil(len(sequence) / MAX_TICK_LABELS)
    axes.set_xticks(
        [i + 0.5 for i in range(0, len(sequence), every)],
        [str(i + 1) for i in range(0, len(sequence), every)],
        fontsize=7,
    )
    axes.set_xlabel("position")
    axes.set_ylabel("importance")
    axes.set_title(title)
    return _finish(figure, path)


# ----------------------------------------------------------------------------- report


def _number(value: Any) -> str:
    """A short display form: integers as is, floats to 4 significant digits, NaN as n/a."""
    if isinstance(value, int | np.integer):
        return str(value)
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:.4g}"


def _cell(value: Any) -> str:
    """A table cell whose ``data-value`` holds the exact number, for machines to read back."""
    return f'<td data-value="{float(value)!r}">{_number(value)}</td>'


def _metric_row(name: str, entry: float | Mapping[str, float]) -> str:
    if isinstance(entry, Mapping):
        cells = [_cell(entry["value"])]
        if "ci_low" in entry and "ci_high" in entry:
            cells += [_cell(entry["ci_low"]), _cell(entry["ci_high"])]
        else:
            cells += ["<td></td>", "<td></td>"]
    else:
        cells = [_cell(entry), "<td></td>", "<td></td>"]
    return f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>"


def _metrics_table(
    section: str, heading: str, metrics: Mapping[str, float | Mapping[str, float]]
) -> str:
    """One section's metrics under its heading; the table's ``data-section`` names it."""
    rows = "\n".join(_metric_row(name, entry) for name, entry in metrics.items())
    return "\n".join(
        [
            f"<h2>{html.escape(heading)}</h2>",
            f'<table data-section="{html.escape(section)}">',
            "<tr><th>metric</th><th>value</th><th>95% CI low</th><th>95% CI high</th></tr>",
            rows,
            "</table>",
        ]
    )


def _list(items: Sequence[str]) -> str:
    return f"<ul>{''.join(f'<li>{html.escape(item)}</li>' for item in items)}</ul>"


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: right; }
th { text-align: left; }
img { max-width: 100%; }
.warning { color: #a00; font-weight: bold; }
"""


@dataclass(frozen=True)
class MetricsSection:
    """One table of a report: ``heading`` above it, ``metrics`` (name -> number or
    ``{"value", "ci_low", "ci_high"}``) in it."""

    heading: str
    metrics: Mapping[str, float | Mapping[str, float]]


def write_report_html(
    path: PathLike,
    *,
    title: str,
    tables: Mapping[str, MetricsSection],
    images: Mapping[str, PathLike],
    notes: Sequence[str] = (),
    summary: Sequence[str] = (),
    warnings: Sequence[str] = (),
) -> Path:
    """Write one self-contained HTML page: ``summary`` lines and ``warnings`` first (under
    "Verdict"), then one metrics table per section, the notes, and every plot inline.

    ``tables`` maps a section key (the table's ``data-section``) to its heading and metrics.
    ``images`` maps a heading to a PNG file, which is embedded as base64. Each number's exact
    value is in the cell's ``data-value``.
    """
    figures = []
    for name, image_path in images.items():
        try:
            data = Path(image_path).read_bytes()
        except OSError as error:
            raise InputError(f"cannot read the image for {name!r}: {error}") from None
        encoded = base64.b64encode(data).decode("ascii")
        figures.append(
            f"<h2>{html.escape(name)}</h2>\n"
            f'<img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">'
        )
    verdict = []
    if summary or warnings:
        verdict = ["<h2>Verdict</h2>", _list(summary) if summary else ""]
        verdict += [f'<p class="warning">Warning: {html.escape(text)}</p>' for text in warnings]
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            '<head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_STYLE}</style></head>",
            "<body>",
            f"<h1>{html.escape(title)}</h1>",
            *verdict,
            *(_metrics_table(key, table.heading, table.metrics) for key, table in tables.items()),
            _list(notes) if notes else "",
            *figures,
            "</body>",
            "</html>",
            "",
        ]
    )
    target = Path(path)
    with atomic_write(target, "w", encoding="utf-8") as handle:
        handle.write(page)
    return target
