"""Evaluation metrics for classification, regression and masked-language-model training.

The metrics themselves are scikit-learn's and scipy's; this module fixes the input conventions,
the averaging over classes, labels and targets, and what happens when a metric is undefined on
the data (NaN plus an ``UndefinedMetricWarning``, never a crash). Definitions: docs/metrics.md.

Input conventions for classification (``y_score`` holds probabilities, not logits):

- ``binary``: ``y_true`` (N,) with values ``labels = (negative, positive)``, default (0, 1);
  ``y_score`` (N,) or (N, 1) is P(positive); (N, 2) is read as [P(negative), P(positive)].
- ``multiclass``: ``y_true`` (N,) with values in ``labels``, default 0..C-1; ``y_score`` (N, C).
- ``multilabel``: ``y_true`` (N, C) of 0/1; ``y_score`` (N, C); ``labels`` names the columns.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from biotransformer.errors import InputError

ClassificationProblem = Literal["binary", "multiclass", "multilabel"]
Problem = Literal["binary", "multiclass", "multilabel", "regression"]
CLASSIFICATION_PROBLEMS: tuple[str, ...] = ("binary", "multiclass", "multilabel")
THRESHOLD_METRICS: tuple[str, ...] = ("mcc", "f1", "accuracy")


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined on this data (e.g. AUROC with one class) and is reported as NaN."""


# ----------------------------------------------------------------------------- input checks


def _finite(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or infinite values", fix="drop or impute them")
    return array


def _class_indices(y_true: Any, labels: Sequence[Any] | None, num_classes: int) -> np.ndarray:
    """Map class values in ``y_true`` (N,) to column indices 0..C-1 of ``y_score``."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise InputError(f"y_true must have shape (N,), got {y.shape}")
    if labels is None:
        if y.dtype.kind not in "biuf" or not np.all(np.isin(y, np.arange(num_classes))):
            raise InputError(
                f"y_true holds values outside the classes 0..{num_classes - 1}",
                fix="pass labels=[...] naming the class of each y_score column",
            )
        return y.astype(np.int64)
    if len(labels) != num_classes:
        raise InputError(f"{len(labels)} labels given for {num_classes} y_score columns")
    lookup = {label: index for index, label in enumerate(labels)}
    try:
        return np.array([lookup[value] for value in y.tolist()], dtype=np.int64)
    except KeyError as missing:
        raise InputError(
            f"y_true holds {missing.args[0]!r}, which is not one of the labels {list(labels)}"
        ) from None


def _prepare_classification(
    problem: str, y_true: Any, y_score: Any, labels: Sequence[Any] | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (y (N, C) of 0/1, scores (N, C), column names); binary has one column."""
    if problem not in CLASSIFICATION_PROBLEMS:
        raise InputError(f"unknown problem {problem!r}; expected one of {CLASSIFICATION_PROBLEMS}")
    scores = _finite("y_score", y_score)
    if problem == "binary":
        if scores.ndim == 2 and scores.shape[1] in (1, 2):
            scores = scores[:, -1]
        if scores.ndim != 1:
            raise InputError(
                f"binary y_score must have shape (N,), (N, 1) or (N, 2), got {scores.shape}"
            )
        names = [str(label) for label in (labels if labels is not None else (0, 1))]
        truth = np.asarray(y_true)
        if truth.ndim == 2 and truth.shape[1] == 1:
            truth = truth[:, 0]
        y = _class_indices(truth, labels, 2)[:, None]
        scores = scores[:, None]
        names = names[1:]
    elif problem == "multiclass":
        if scores.ndim != 2 or scores.shape[1] < 2:
            raise InputError(f"multiclass y_score must have shape (N, C), got {scores.shape}")
        indices = _class_indices(y_true, labels, scores.shape[1])
        y = (indices[:, None] == np.arange(scores.shape[1])).astype(np.int64)
        names = [str(label) for label in (labels if labels is not None else range(scores.shape[1]))]
    else:
        y = np.asarray(y_true)
        if scores.ndim != 2 or y.shape != scores.shape:
            raise InputError(
                f"multilabel y_true and y_score must both have shape (N, C), got {y.shape} "
                f"and {scores.shape}"
            )
        if not np.all(np.isin(y, (0, 1))):
            raise InputError("multilabel y_true must hold only 0 and 1")
        y = y.astype(np.int64)
        names = [str(label) for label in (labels if labels is not None else range(scores.shape[1]))]
        if len(names) != scores.shape[1]:
            raise InputError(f"{len(names)} labels given for {scores.shape[1]} y_score columns")
    if len(y) != len(scores):
        raise InputError(f"y_true has {len(y)} samples but y_score has {len(scores)}")
    if len(y) == 0:
        raise InputError("no samples to evaluate")
    return y, scores, names


def infer_problem(y_true: Any, y_score: Any) -> ClassificationProblem:
    """Guess the problem: scores (N,), (N, 1), (N, 2) are binary; y_true (N, C) multilabel."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    if y_score.ndim == 1 or (y_score.ndim == 2 and y_score.shape[1] <= 2 and y_true.ndim == 1):
        return "binary"
    return "multilabel" if y_true.ndim == 2 else "multiclass"


def one_vs_rest(
    y_true: Any, y_score: Any, labels: Sequence[Any] | None = None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Split predictions into binary tasks ``(name, y (N,) of 0/1, score (N,))``, one per class.

    Binary gives one task (the positive class), multi-class one per class (one-vs-rest),
    multi-label one per label; the problem is inferred by ``infer_problem``.
    """
    y, scores, names = _prepare_classification(
        infer_problem(y_true, y_score), y_true, y_score, labels
    )
    return [(name, y[:, j], scores[:, j]) for j, name in enumerate(names)]


# ----------------------------------------------------------------------------- classification


def _auroc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic with mid-ranks for ties (equal to
    ``sklearn.metrics.roc_auc_score``); ``truth`` holds 0/1 with both present."""
    ranks = stats.rankdata(scores)
    positives = truth.astype(bool)
    count, others = int(positives.sum()), int((~positives).sum())
    return float((ranks[positives].sum() - count * (count + 1) / 2) / (count * others))


def _average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """Average precision over the distinct score thresholds, highest first (equal to
    ``sklearn.metrics.average_precision_score``); ``truth`` holds at least one positive."""
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    ends = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]
    true_positives = np.cumsum(truth[order])[ends]
    precision = true_positives / (ends + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _ranking_metrics(y: np.ndarray, scores: np.ndarray, names: list[str]) -> tuple[dict, list]:
    """AUROC and average precision per column, macro-averaged over the columns where defined."""
    aurocs, auprcs, notes = [], [], []
    for j, name in enumerate(names):
        positives = int(y[:, j].sum())
        if 0 < positives < len(y):
            aurocs.append(_auroc(y[:, j], scores[:, j]))
        else:
            every = "positive" if positives else "negative"
            notes.append(f"auroc is undefined for class {name!r}: every y_true sample is {every}")
        if positives > 0:
            auprcs.append(_average_precision(y[:, j], scores[:, j]))
        else:
            notes.append(f"auprc is undefined for class {name!r}: y_true has no positive sample")
    values = {
        "auroc": float(np.mean(aurocs)) if aurocs else math.nan,
        "auprc": float(np.mean(auprcs)) if auprcs else math.nan,
    }
    if len(names) > 1:
        notes = [f"{note}; macro average over the other classes" for note in notes]
    return values, notes


def _f1_scores(
    true_positives: np.ndarray, false_positives: np.ndarray, false_negatives: np.ndarray
) -> np.ndarray:
    """F1 per class from its counts, 0 where it is undefined (scikit-learn's zero_division=0)."""
    denominator = 2 * true_positives + false_positives + false_negatives
    return np.divide(
        2 * true_positives,
        denominator,
        out=np.zeros(len(denominator)),
        where=denominator > 0,
    )


def _classification(
    problem: str, y: np.ndarray, scores: np.ndarray, names: list[str], threshold: Any
) -> tuple[dict[str, float], list[str]]:
    """Every classification metric on prepared arrays, with notes on undefined ones; counted in
    numpy (the same values as scikit-learn's functions), so a thousand bootstrap resamples take
    a second, not a minute."""
    if problem == "multiclass":
        classes = y.shape[1]
        truth, predicted = y.argmax(axis=1), scores.argmax(axis=1)
        confusion = np.bincount(truth * classes + predicted, minlength=classes * classes)
        confusion = confusion.reshape(classes, classes)
        hits = np.diag(confusion)
        f1 = _f1_scores(hits, confusion.sum(axis=0) - hits, confusion.sum(axis=1) - hits)
        seen = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0  # labels in truth or prediction
        values = {
            "accuracy": float(hits.sum() / len(truth)),
            "f1_macro": float(f1[seen].mean()),
            "mcc": _confusion_mcc(truth, predicted, classes),
        }
    else:
        decided = (scores >= np.asarray(threshold)).astype(np.int64)
        true_positives = (decided & y).sum(axis=0)
        false_positives = (decided & (1 - y)).sum(axis=0)
        false_negatives = ((1 - decided) & y).sum(axis=0)
        f1 = _f1_scores(true_positives, false_positives, false_negatives)
        mcc = [_confusion_mcc(y[:, j], decided[:, j], 2) for j in range(y.shape[1])]
        if problem == "binary":
            values = {
                "accuracy": float(np.mean(decided[:, 0] == y[:, 0])),
                "f1": float(f1[0]),
                "mcc": mcc[0],
            }
        else:
            micro = _f1_scores(
                true_positives.sum(keepdims=True),
                false_positives.sum(keepdims=True),
                false_negatives.sum(keepdims=True),
            )
            values = {
                "accuracy": float(np.mean(np.all(decided == y, axis=1))),
                "f1_macro": float(f1.mean()),
                "f1_micro": float(micro[0]),
                "mcc": float(np.mean(mcc)),
            }
    ranking, notes = _ranking_metrics(y, scores, names)
    return {name: float(value) for name, value in {**values, **ranking}.items()}, notes


def _check_threshold(problem: str, threshold: Any, num_columns: int) -> Any:
    if problem == "multilabel" and np.ndim(threshold) == 1:
        if len(threshold) != num_columns:
            raise InputError(f"{len(threshold)} thresholds given for {num_columns} labels")
        return np.asarray(threshold, dtype=float)
    if np.ndim(threshold) != 0:
        raise InputError("threshold must be a number (or one per label for multilabel)")
    return float(threshold)


def classification_metrics(
    y_true: Any,
    y_score: Any,
    *,
    problem: ClassificationProblem = "binary",
    threshold: float | Sequence[float] = 0.5,
    labels: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Accuracy, F1, MCC, AUROC and AUPRC (average precision) for one classification problem.

    Binary keys: accuracy, f1, mcc, auroc, auprc. Multi-class: accuracy, f1_macro, mcc,
    auroc (macro one-vs-rest), auprc (macro). Multi-label: accuracy (exact match), f1_macro,
    f1_micro, mcc (mean of per-label MCCs), auroc and auprc (macro over labels).
    ``threshold`` turns probabilities into predictions (``score >= threshold``) for binary and
    multi-label (one per label allowed); multi-class predicts the arg-max. A metric that is
    undefined (AUROC with one class present) is NaN and an ``UndefinedMetricWarning`` says why.
    """
    y, scores, names = _prepare_classification(problem, y_true, y_score, labels)
    threshold = _check_threshold(problem, threshold, y.shape[1])
    values, notes = _classification(problem, y, scores, names, threshold)
    for note in notes:
        warnings.warn(note, UndefinedMetricWarning, stacklevel=2)
    return values


# ----------------------------------------------------------------------------- regression


def _prepare_regression(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    truth, predicted = _finite("y_true", y_true), _finite("y_pred", y_pred)
    if truth.shape != predicted.shape or truth.ndim not in (1, 2):
        raise InputError(
            f"y_true and y_pred must have the same shape (N,) or (N, K), got {truth.shape} and "
            f"{predicted.shape}"
        )
    if len(truth) < 2:
        raise InputError("regression metrics need at least 2 samples")
    return truth.reshape(len(truth), -1), predicted.reshape(len(predicted), -1)


def _regression(truth: np.ndarray, predicted: np.ndarray) -> tuple[dict[str, float], list[str]]:
    pearson, spearman, notes = [], [], []
    for k in range(truth.shape[1]):
        if np.ptp(truth[:, k]) == 0 or np.ptp(predicted[:, k]) == 0:
            notes.append(f"pearson, spearman: target {k} is constant in y_true or y_pred")
            continue
        pearson.append(_pearson(truth[:, k], predicted[:, k]))
        spearman.append(_pearson(stats.rankdata(truth[:, k]), stats.rankdata(predicted[:, k])))
    values = {
        "pearson": float(np.mean(pearson)) if pearson else math.nan,
        "spearman": float(np.mean(spearman)) if spearman else math.nan,
        "r2": float(skm.r2_score(truth, predicted)),
        "rmse": float(np.mean(np.sqrt(np.mean((truth - predicted) ** 2, axis=0)))),
        "mae": float(np.mean(np.abs(truth - predicted))),
    }
    return values, notes


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two non-constant vectors (Spearman's rho on their ranks)."""
    a, b = a - a.mean(), b - b.mean()
    return float(np.clip(a @ b / np.sqrt((a @ a) * (b @ b)), -1.0, 1.0))


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Pearson, Spearman, R^2, RMSE and MAE; for (N, K) targets each is averaged over targets.

    Pearson and Spearman are NaN (with an ``UndefinedMetricWarning``) when a target or its
    prediction is constant; with several targets they average over the targets where defined.
    """
    values, notes = _regression(*_prepare_regression(y_true, y_pred))
    for note in notes:
        warnings.warn(note, UndefinedMetricWarning, stacklevel=2)
    return values


def masked_lm_metrics(loss_sum: float, num_tokens: int) -> dict[str, float]:
    """Mean cross-entropy in nats per masked token, and its perplexity exp(loss)."""
    num_tokens = int(num_tokens)
    if num_tokens <= 0:
        raise InputError(f"num_tokens must be positive, got {num_tokens}")
    loss = float(loss_sum) / num_tokens
    perplexity = math.exp(loss) if loss < 709.0 else math.inf
    return {"loss": loss, "perplexity": perplexity}


# ----------------------------------------------------------------------------- bootstrap


def _resamples(num_samples: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Index arrays of ``num_samples`` draws with replacement, the same for the same seed."""
    if n_resamples < 1:
        raise InputError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield rng.integers(0, num_samples, size=num_samples)


def _percentile_interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if len(finite) == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be between 0 and 1, got {confidence}")


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Any,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric_fn(*arrays)``, resampling samples (axis 0).

    Resamples where the metric is NaN (e.g. AUROC when a resample holds one class) are left
    out; (NaN, NaN) when none is defined. The same seed gives the same interval.
    """
    _check_confidence(confidence)
    arrays = tuple(np.asarray(array) for array in arrays)
    if not arrays or len({len(array) for array in arrays}) != 1 or len(arrays[0]) == 0:
        raise InputError("bootstrap_ci needs one or more non-empty arrays of the same length")
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for indices in _resamples(len(arrays[0]), n_resamples, seed):
            values.append(metric_fn(*(array[indices] for array in arrays)))
    return _percentile_interval(values, confidence)


def evaluate_predictions(
    problem: Problem,
    y_true: Any,
    y_score: Any,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    threshold: float | Sequence[float] = 0.5,
    labels: Sequence[Any] | None = None,
    progress: str | None = None,
) -> dict[str, Any]:
    """Every metric of ``problem`` with a percentile bootstrap confidence interval; with
    ``progress``, the resamples count up in a progress bar of that name on a terminal.

    Returns ``{"problem", "n", "confidence", "n_resamples", "metrics": {name: {"value",
    "ci_low", "ci_high"}}, "notes": [...]}``. For ``regression`` ``y_score`` holds the
    predictions. All metrics share the same resamples; ``bootstrap=0`` gives NaN intervals.
    Notes say which metrics were undefined and how many resamples were left out.
    """
    _check_confidence(confidence)
    if problem == "regression":
        arrays = _prepare_regression(y_true, y_score)

        def compute(*sample: np.ndarray) -> tuple[dict[str, float], list[str]]:
            return _regression(*sample)

    else:
        y, scores, names = _prepare_classification(problem, y_true, y_score, labels)
        threshold = _check_threshold(problem, threshold, y.shape[1])
        arrays = (y, scores)

        def compute(*sample: np.ndarray) -> tuple[dict[str, float], list[str]]:
            return _classification(problem, *sample, names, threshold)

    point, notes = compute(*arrays)
    draws: dict[str, list[float]] = {name: [] for name in point}
    if bootstrap > 0:
        resamples = _resamples(len(arrays[0]), bootstrap, seed)
        if progress is not None:
            from tqdm.auto import tqdm

            resamples = tqdm(resamples, total=bootstrap, desc=progress, leave=False, disable=None)
        for indices in resamples:
            sample_values, _ = compute(*(array[indices] for array in arrays))
            for name, value in sample_values.items():
                draws[name].append(value)
    metrics = {}
    for name, value in point.items():
        low, high = _percentile_interval(draws[name], confidence)
        metrics[name] = {"value": value, "ci_low": low, "ci_high": high}
        skipped = sum(not math.isfinite(draw) for draw in draws[name])
        if skipped and math.isfinite(value):
            notes.append(
                f"{name}: {skipped} of {bootstrap} resamples were degenerate (metric undefined) "
                "and were left out of the interval"
            )
    return {
        "problem": problem,
        "n": len(arrays[0]),
        "confidence": confidence,
        "n_resamples": bootstrap,
        "metrics": metrics,
        "notes": notes,
    }


@dataclass(frozen=True)
class PairedDifference:
    """``metric`` of two sets of scores of the same samples, ``a - b``, and the percentile
    bootstrap interval of the difference over shared resamples (NaN without resamples)."""

    metric: str
    a: float
    b: float
    difference: float
    ci_low: float
    ci_high: float
    n_resamples: int


def paired_difference(
    problem: Problem,
    y_true: Any,
    scores_a: Any,
    scores_b: Any,
    metric: str,
    *,
    threshold_a: float | Sequence[float] = 0.5,
    threshold_b: float | Sequence[float] = 0.5,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """``metric`` of ``scores_a`` minus that of ``scores_b`` on the same ``y_true``, with a
    paired bootstrap interval: each resample draws the same samples for both, so the interval
    is that of the difference, not of either score. For regression the scores are values;
    ``threshold_a``/``threshold_b`` decide binary and multilabel predictions."""
    _check_confidence(confidence)

    def prepared(scores: Any, threshold: Any) -> Callable[[np.ndarray], float]:
        if problem == "regression":
            truth, values = _prepare_regression(y_true, scores)
            if metric == "r2":
                return lambda rows: _r2(truth[rows], values[rows])
            return lambda rows: _regression(truth[rows], values[rows])[0][metric]
        y, probabilities, names = _prepare_classification(problem, y_true, scores, None)
        cut = _check_threshold(problem, threshold, y.shape[1])
        if metric == "mcc":
            return _mcc_of(problem, y, probabilities, cut)
        return lambda rows: _classification(problem, y[rows], probabilities[rows], names, cut)[0][
            metric
        ]

    metric_a, metric_b = prepared(scores_a, threshold_a), prepared(scores_b, threshold_b)
    everything = np.arange(len(np.asarray(y_true)))
    a, b = metric_a(everything), metric_b(everything)
    low = high = math.nan
    if n_resamples > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            draws = [
                metric_a(rows) - metric_b(rows)
                for rows in _resamples(len(everything), n_resamples, seed)
            ]
        low, high = _percentile_interval(draws, confidence)
    return PairedDifference(metric, a, b, a - b, low, high, n_resamples)


def _confusion_mcc(truth: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """MCC from the confusion matrix (scikit-learn's formula, 0 where undefined), in numpy:
    a thousand bootstrap resamples take a fraction of a second."""
    confusion = np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(
        classes, classes
    )
    true_sum, predicted_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    n = confusion.sum()
    covariance = np.trace(confusion) * n - true_sum @ predicted_sum
    spread = (n * n - predicted_sum @ predicted_sum) * (n * n - true_sum @ true_sum)
    return 0.0 if spread == 0 else float(covariance / np.sqrt(spread))


def _mcc_of(
    problem: str, y: np.ndarray, scores: np.ndarray, threshold: Any
) -> Callable[[np.ndarray], float]:
    """MCC of the resample ``rows``, decided as ``_classification`` decides (threshold, or
    the arg-max for multi-class; multilabel: the mean over labels)."""
    if problem == "multiclass":
        truth, predicted = y.argmax(axis=1), scores.argmax(axis=1)
        return lambda rows: _confusion_mcc(truth[rows], predicted[rows], y.shape[1])
    decided = (scores >= np.asarray(threshold)).astype(np.int64)
    return lambda rows: float(
        np.mean([_confusion_mcc(y[rows, j], decided[rows, j], 2) for j in range(y.shape[1])])
    )


def _r2(truth: np.ndarray, predicted: np.ndarray) -> float:
    """R^2 averaged over targets, as ``sklearn.metrics.r2_score`` (NaN for a constant
    target)."""
    residual = ((truth - predicted) ** 2).sum(axis=0)
    total = ((truth - truth.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(1.0 - residual / total))


# ----------------------------------------------------------------------------- thresholds


def _threshold_scores(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray, metric: str
) -> np.ndarray:
    """``metric`` for every candidate confusion matrix; 0 where undefined, as scikit-learn."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "mcc":
            denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            result = (tp * tn - fp * fn) / denominator
        elif metric == "f1":
            result = 2 * tp / (2 * tp + fp + fn)
        else:
            result = (tp + tn) / (tp + fp + fn + tn)
    return np.nan_to_num(result, nan=0.0, posinf=0.0, neginf=0.0)


def _best_threshold(truth: np.ndarray, scores: np.ndarray, metric: str, name: str) -> float:
    positives = int(truth.sum())
    if positives in (0, len(truth)):
        warnings.warn(
            f"cannot tune the threshold for {name}: y_true holds one class; using 0.5",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return 0.5
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], truth[order].astype(float)
    last_of_value = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    distinct = ranked[last_of_value]  # descending
    # Candidate k predicts positive every score >= distinct[k - 1]; candidate 0 predicts none.
    tp = np.r_[0.0, np.cumsum(hits)[last_of_value]]
    fp = np.r_[0.0, last_of_value + 1.0] - tp
    fn, tn = positives - tp, (len(truth) - positives) - fp
    best = int(np.argmax(_threshold_scores(tp, fp, fn, tn, metric)))
    if best == 0:
        return float(np.nextafter(distinct[0], np.inf))
    if best == len(distinct):
        return float(distinct[-1])
    lowest_in, highest_out = distinct[best - 1], distinct[best]
    middle = (lowest_in + highest_out) / 2.0
    return float(middle if middle > highest_out else lowest_in)


def tune_threshold(y_true: Any, y_score: Any, metric: str = "mcc") -> float | np.ndarray:
    """Decision threshold (predict ``score >= t``) maximising ``metric`` on validation data.

    ``metric`` is one of mcc, f1, accuracy. Binary ``y_true`` (N,) of 0/1 gives a float;
    multi-label ``y_true`` (N, C) gives one threshold per label. The threshold lies midway
    between the two scores that separate the best split; among equally good splits the
    highest threshold wins. A label with one class only gets 0.5, with a warning.
    """
    if metric not in THRESHOLD_METRICS:
        raise InputError(
            f"unknown threshold metric {metric!r}; expected one of {THRESHOLD_METRICS}"
        )
    problem = "multilabel" if np.ndim(y_true) == 2 and np.shape(y_true)[1] > 1 else "binary"
    y, scores, names = _prepare_classification(problem, y_true, y_score, None)
    thresholds = [
        _best_threshold(y[:, j], scores[:, j], metric, f"label {name!r}")
        for j, name in enumerate(names)
    ]
    return thresholds[0] if problem == "binary" else np.asarray(thresholds)
