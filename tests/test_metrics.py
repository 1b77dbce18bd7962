"""Metrics: each equals scikit-learn / scipy computed directly; bootstrap and thresholds."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from biotransformer.errors import InputError
from biotransformer.metrics import (
    UndefinedMetricWarning,
    bootstrap_ci,
    classification_metrics,
    evaluate_predictions,
    masked_lm_metrics,
    one_vs_rest,
    regression_metrics,
    tune_threshold,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def binary_data(rng: np.random.Generator, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    score = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)  # informative but imperfect
    return y, score


def test_binary_metrics_equal_sklearn(rng):
    y, score = binary_data(rng)
    predicted = (score >= 0.6).astype(int)
    result = classification_metrics(y, score, threshold=0.6)
    assert result == pytest.approx(
        {
            "accuracy": skm.accuracy_score(y, predicted),
            "f1": skm.f1_score(y, predicted),
            "mcc": skm.matthews_corrcoef(y, predicted),
            "auroc": skm.roc_auc_score(y, score),
            "auprc": skm.average_precision_score(y, score),
        },
        abs=1e-12,
    )


def test_binary_score_shapes_and_named_labels_agree(rng):
    y, score = binary_data(rng)
    flat = classification_metrics(y, score)
    assert classification_metrics(y, score[:, None]) == flat
    assert classification_metrics(y, np.stack([1 - score, score], axis=1)) == flat
    names = np.where(y == 1, "bound", "unbound")
    assert classification_metrics(names, score, labels=["unbound", "bound"]) == flat


def test_multiclass_metrics_equal_sklearn(rng):
    y = rng.integers(0, 4, 400)
    probabilities = rng.dirichlet(np.ones(4), 400)
    probabilities[np.arange(400), y] += 0.3
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    predicted = probabilities.argmax(axis=1)
    result = classification_metrics(y, probabilities, problem="multiclass")
    one_hot = np.eye(4)[y]
    assert result == pytest.approx(
        {
            "accuracy": skm.accuracy_score(y, predicted),
            "f1_macro": skm.f1_score(y, predicted, average="macro"),
            "mcc": skm.matthews_corrcoef(y, predicted),
            "auroc": skm.roc_auc_score(y, probabilities, multi_class="ovr", average="macro"),
            "auprc": skm.average_precision_score(one_hot, probabilities, average="macro"),
        },
        abs=1e-12,
    )


def test_multilabel_metrics_equal_sklearn(rng):
    y = rng.integers(0, 2, (300, 5))
    score = np.clip(0.25 * y + rng.random((300, 5)) * 0.75, 0, 1)
    thresholds = np.array([0.3, 0.4, 0.5, 0.6, 0.7])
    predicted = (score >= thresholds).astype(int)
    result = classification_metrics(y, score, problem="multilabel", threshold=thresholds)
    per_label_mcc = [skm.matthews_corrcoef(y[:, j], predicted[:, j]) for j in range(5)]
    assert result == pytest.approx(
        {
            "accuracy": skm.accuracy_score(y, predicted),
            "f1_macro": skm.f1_score(y, predicted, average="macro"),
            "f1_micro": skm.f1_score(y, predicted, average="micro"),
            "mcc": np.mean(per_label_mcc),
            "auroc": skm.roc_auc_score(y, score, average="macro"),
            "auprc": skm.average_precision_score(y, score, average="macro"),
        },
        abs=1e-12,
    )


def test_single_class_gives_nan_with_a_note_not_a_crash(rng):
    y = np.zeros(20, dtype=int)
    with pytest.warns(UndefinedMetricWarning) as caught:
        result = classification_metrics(y, rng.random(20))
    notes = [str(warning.message) for warning in caught]
    assert any("auroc is undefined" in note for note in notes)
    assert any("auprc is undefined" in note for note in notes)
    assert math.isnan(result["auroc"]) and math.isnan(result["auprc"])
    assert result["mcc"] == 0.0  # what sklearn returns for one class in truth and prediction


def test_multiclass_with_an_absent_class_averages_over_present_ones(rng):
    y = rng.integers(0, 3, 100)  # class 3 never occurs
    probabilities = rng.dirichlet(np.ones(4), 100)
    with pytest.warns(UndefinedMetricWarning, match="class '3'"):
        result = classification_metrics(y, probabilities, problem="multiclass")
    expected = np.mean([skm.roc_auc_score(y == c, probabilities[:, c]) for c in range(3)])
    assert result["auroc"] == pytest.approx(expected)


def test_bad_inputs_are_input_errors(rng):
    with pytest.raises(InputError, match="labels"):
        classification_metrics([0, 2, 1], rng.random(3))
    with pytest.raises(InputError, match="NaN"):
        classification_metrics([0, 1], [0.5, math.nan])
    with pytest.raises(InputError, match="samples"):
        classification_metrics([0, 1, 1], rng.random(2))
    with pytest.raises(InputError, match="unknown problem"):
        classification_metrics([0, 1], [0.2, 0.8], problem="ordinal")


def test_regression_metrics_equal_scipy_and_sklearn(rng):
    y = rng.normal(size=(200, 3))
    predicted = y + rng.normal(scale=0.5, size=(200, 3))
    result = regression_metrics(y, predicted)
    assert result == pytest.approx(
        {
            "pearson": np.mean([stats.pearsonr(y[:, k], predicted[:, k])[0] for k in range(3)]),
            "spearman": np.mean([stats.spearmanr(y[:, k], predicted[:, k])[0] for k in range(3)]),
            "r2": skm.r2_score(y, predicted),
            "rmse": np.mean(
                [math.sqrt(skm.mean_squared_error(y[:, k], predicted[:, k])) for k in range(3)]
            ),
            "mae": skm.mean_absolute_error(y, predicted),
        },
        abs=1e-12,
    )
    single = regression_metrics(y[:, 0], predicted[:, 0])
    assert single["pearson"] == pytest.approx(stats.pearsonr(y[:, 0], predicted[:, 0])[0])


def test_regression_constant_prediction_is_nan_with_a_note(rng):
    with pytest.warns(UndefinedMetricWarning, match="constant"):
        result = regression_metrics(rng.random(10), np.ones(10))
    assert math.isnan(result["spearman"]) and math.isfinite(result["rmse"])


def test_masked_lm_metrics():
    result = masked_lm_metrics(loss_sum=69.31471805599453, num_tokens=100)
    assert result["loss"] == pytest.approx(math.log(2))
    assert result["perplexity"] == pytest.approx(2.0)
    assert masked_lm_metrics(1e6, 1)["perplexity"] == math.inf
    with pytest.raises(InputError):
        masked_lm_metrics(1.0, 0)


def test_bootstrap_ci_contains_estimate_narrows_with_n_and_is_deterministic(rng):
    def auroc(y, s):
        return classification_metrics(y, s)["auroc"]

    y, score = binary_data(rng, n=1000)
    small_low, small_high = bootstrap_ci(auroc, y[:100], score[:100], n_resamples=200)
    low, high = bootstrap_ci(auroc, y, score, n_resamples=200)
    assert low <= auroc(y, score) <= high
    assert high - low < small_high - small_low
    assert bootstrap_ci(auroc, y, score, n_resamples=200) == (low, high)
    assert bootstrap_ci(auroc, y, score, n_resamples=200, seed=1) != (low, high)


def test_bootstrap_skips_degenerate_resamples():
    y = np.array([1] + [0] * 9)  # many resamples hold no positive at all
    score = np.linspace(0.9, 0.0, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning escapes the resampling
        low, high = bootstrap_ci(
            lambda a, b: classification_metrics(a, b)["auroc"], y, score, n_resamples=100
        )
    assert (low, high) == (1.0, 1.0)
    always_undefined = bootstrap_ci(lambda a: math.nan, y, n_resamples=10)
    assert all(math.isnan(bound) for bound in always_undefined)


def test_evaluate_predictions_matches_point_metrics_and_bootstrap_ci(rng):
    y, score = binary_data(rng)
    report = evaluate_predictions("binary", y, score, bootstrap=100, seed=3)
    assert report["n"] == 300 and report["problem"] == "binary"
    assert {name: entry["value"] for name, entry in report["metrics"].items()} == (
        classification_metrics(y, score)
    )
    for entry in report["metrics"].values():
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    mcc_ci = bootstrap_ci(
        lambda a, b: classification_metrics(a, b)["mcc"], y, score, n_resamples=100, seed=3
    )
    assert (report["metrics"]["mcc"]["ci_low"], report["metrics"]["mcc"]["ci_high"]) == mcc_ci
    regression = evaluate_predictions("regression", score, y + score, bootstrap=20)
    assert set(regression["metrics"]) == {"pearson", "spearman", "r2", "rmse", "mae"}


def test_evaluate_predictions_notes_degenerate_resamples():
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    score = np.linspace(1.0, 0.0, 8)
    report = evaluate_predictions("binary", y, score, bootstrap=50)
    assert any(note.startswith("auroc: ") for note in report["notes"])
    no_bootstrap = evaluate_predictions("binary", y, score, bootstrap=0)
    assert math.isnan(no_bootstrap["metrics"]["auroc"]["ci_low"])


def brute_force_best(y: np.ndarray, score: np.ndarray, metric) -> float:
    """The best metric over every threshold that changes the predictions."""
    candidates = np.r_[np.unique(score), score.max() + 1]
    return max(metric(y, (score >= t).astype(int)) for t in candidates)


@pytest.mark.parametrize(
    ("name", "metric"),
    [
        ("mcc", skm.matthews_corrcoef),
        ("f1", lambda y, p: skm.f1_score(y, p, zero_division=0.0)),
        ("accuracy", skm.accuracy_score),
    ],
)
def test_tune_threshold_reaches_the_brute_force_optimum(rng, name, metric):
    y, score = binary_data(rng, n=150)
    score = np.round(score, 2)  # ties between scores
    threshold = tune_threshold(y, score, metric=name)
    achieved = metric(y, (score >= threshold).astype(int))
    assert achieved == pytest.approx(brute_force_best(y, score, metric))


def test_tune_threshold_on_a_constructed_case():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    score = np.array([0.05, 0.10, 0.20, 0.30, 0.35, 0.70, 0.80, 0.90])
    # Two splits tie at the best MCC, 12 / sqrt(240): ">= 0.30" (one false positive) and
    # ">= 0.70" (one false negative); the higher wins, midway between 0.35 and 0.70.
    assert tune_threshold(y, score, metric="mcc") == pytest.approx(0.525)
    # F1 prefers the split without the false negative: midway between 0.20 and 0.30.
    assert tune_threshold(y, score, metric="f1") == pytest.approx(0.25)
    separable = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9])
    assert tune_threshold(y, separable) == pytest.approx(0.55)  # between 0.50 and 0.60


def test_tune_threshold_per_label_for_multilabel():
    y = np.array([[0, 1], [0, 1], [1, 0], [1, 0]])
    score = np.array([[0.1, 0.9], [0.2, 0.8], [0.6, 0.3], [0.7, 0.2]])
    thresholds = tune_threshold(y, score)
    assert thresholds == pytest.approx([0.4, 0.55])
    result = classification_metrics(y, score, problem="multilabel", threshold=thresholds)
    assert result["mcc"] == 1.0


def test_tune_threshold_with_one_class_falls_back_to_half():
    with pytest.warns(UndefinedMetricWarning, match="one class"):
        assert tune_threshold(np.ones(5, dtype=int), np.linspace(0, 1, 5)) == 0.5


def test_one_vs_rest_splits_by_problem(rng):
    assert len(one_vs_rest(rng.integers(0, 2, 10), rng.random(10))) == 1
    names = np.array(["a", "b", "c"] * 3)
    multiclass = one_vs_rest(names, rng.dirichlet(np.ones(3), 9), labels=["a", "b", "c"])
    assert [name for name, _, _ in multiclass] == ["a", "b", "c"]
    assert multiclass[1][1].tolist() == [0, 1, 0] * 3
    assert len(one_vs_rest(rng.integers(0, 2, (10, 4)), rng.random((10, 4)))) == 4


@pytest.mark.filterwarnings("ignore:au")  # undefined AUROC/AUPRC of the absent classes
def test_counted_metrics_equal_sklearn_on_ties_absent_classes_and_empty_labels():
    """The metrics are counted in numpy (fast enough for a thousand bootstrap resamples): on
    coarse scores full of ties, classes absent from truth or prediction and labels nobody
    holds, each equals scikit-learn's function."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        n = int(rng.integers(5, 60))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        score = rng.integers(0, 5, n) / 4  # ties at every level
        result = classification_metrics(y, score)
        predicted = (score >= 0.5).astype(int)
        assert result["auroc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
        assert result["auprc"] == pytest.approx(skm.average_precision_score(y, score), abs=1e-12)
        assert result["f1"] == pytest.approx(skm.f1_score(y, predicted, zero_division=0.0))
        assert result["mcc"] == pytest.approx(skm.matthews_corrcoef(y, predicted), abs=1e-12)

        labels = rng.integers(0, 4, n)  # class 3 may be absent; predictions use classes 0-2
        labels[:3] = [0, 1, 2]
        probabilities = rng.random((n, 4)) * [1, 1, 1, 0]
        decided = probabilities.argmax(axis=1)
        multiclass = classification_metrics(
            labels, probabilities, problem="multiclass", labels=[0, 1, 2, 3]
        )
        assert multiclass["f1_macro"] == pytest.approx(
            skm.f1_score(labels, decided, average="macro", zero_division=0.0)
        )
        assert multiclass["accuracy"] == pytest.approx(skm.accuracy_score(labels, decided))

        indicator = rng.integers(0, 2, (n, 3))
        indicator[:, 2] = 0  # a label nobody holds
        scores = rng.random((n, 3))
        decisions = (scores >= 0.5).astype(int)
        multilabel = classification_metrics(indicator, scores, problem="multilabel")
        for average in ("macro", "micro"):
            assert multilabel[f"f1_{average}"] == pytest.approx(
                skm.f1_score(indicator, decisions, average=average, zero_division=0.0)
            )
        assert multilabel["accuracy"] == pytest.approx(skm.accuracy_score(indicator, decisions))
