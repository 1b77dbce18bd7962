"""The honest verdict of a fine-tune: is the model better than a composition baseline?

``verdict`` fits the composition baseline (``baselines.composition_baseline``) on the training
split, scores the split the model was finally evaluated on, and compares the two on the
task's headline metric (MCC; R^2 for regression) with a paired bootstrap interval of model
minus baseline (``metrics.paired_difference``). It warns when the model predicts a single
class (or a single value), does not beat the baseline clearly, or the evaluated split is too
small for its interval to mean much. ``metrics.json["verdict"]`` holds the result::

    {"metric", "split", "n", "model", "baseline": {"name", "value"}, "difference",
     "ci95": [lo, hi] (null without bootstrap resamples), "bootstrap_samples",
     "beats_baseline" (the interval lies above 0), "warnings": [...]}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from biotransformer.baselines import composition_baseline, composition_name
from biotransformer.inference import label_targets
from biotransformer.io import SequenceRecord
from biotransformer.metrics import paired_difference
from biotransformer.tasks import TaskInfo

# Below this many evaluated records a verdict warns that its interval means little; so does
# an interval of the difference wider than WIDE_INTERVAL.
MIN_RECORDS = 100
WIDE_INTERVAL = 0.3


def has_baseline(task: TaskInfo) -> bool:
    """Whether a verdict exists for this task: sequence-level tasks (not per token)."""
    return task.per_sequence


def verdict(
    task: TaskInfo,
    alphabet: str,
    train: Sequence[SequenceRecord],
    evaluated: Sequence[SequenceRecord],
    scores: np.ndarray,
    *,
    split: str,
    bootstrap: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The verdict of ``scores`` (the model's, in ``predict_records`` layout) on the
    ``evaluated`` records (``split`` names them) against the composition baseline fitted on
    ``train``; ``bootstrap`` resamples for the interval (see the module doc)."""
    problem = task.problem
    metric = task.spec.select_metric
    truth = label_targets(task, evaluated)
    baseline = composition_baseline(
        alphabet,
        problem,
        [record.sequence for record in train],
        label_targets(task, train),
        [record.sequence for record in evaluated],
    )
    model_scores = np.asarray(scores)
    if problem == "regression":
        model_scores, baseline = model_scores[:, 0], baseline[:, 0]
    threshold = 0.5 if task.threshold is None else task.threshold
    result = paired_difference(
        problem,
        truth,
        model_scores,
        baseline,
        metric,
        threshold_a=threshold,
        n_resamples=bootstrap,
        seed=seed,
    )
    interval = math.isfinite(result.ci_low) and math.isfinite(result.ci_high)
    beats = result.ci_low > 0 if interval else result.difference > 0
    name = composition_name(alphabet, problem)
    found = {
        "metric": metric,
        "split": split,
        "n": len(evaluated),
        "model": result.a,
        "baseline": {"name": name, "value": result.b},
        "difference": result.difference,
        "ci95": [result.ci_low, result.ci_high] if interval else None,
        "bootstrap_samples": bootstrap,
        "beats_baseline": bool(beats),
    }
    found["warnings"] = _warnings(task, model_scores, threshold, found)
    return found


def _warnings(
    task: TaskInfo, scores: np.ndarray, threshold: Any, found: dict[str, Any]
) -> list[str]:
    """What a reader of the numbers must know first."""
    warnings = []
    single = _single_prediction(task, scores, threshold)
    if single is not None:
        warnings.append(
            f"the model predicts {single} for every one of the {found['n']} {found['split']} "
            "records: it has learned nothing usable (train longer, raise --lr, or check the "
            "labels)"
        )
    metric, split = found["metric"], found["split"]
    difference = f"{found['difference']:+.3f}"
    if found["ci95"] is not None:
        difference += f" (95% CI {found['ci95'][0]:+.3f} to {found['ci95'][1]:+.3f})"
    if found["difference"] <= 0:
        warnings.append(
            f"the model does not beat the baseline ({found['baseline']['name']}): {split} "
            f"{metric} model minus baseline {difference}; use the baseline, or give the model "
            "more data, a pretrained start or longer training"
        )
    elif not found["beats_baseline"]:
        warnings.append(
            f"the model's lead over the baseline is within noise: {split} {metric} model minus "
            f"baseline {difference}"
        )
    if found["ci95"] is None:
        warnings.append("no bootstrap resamples (--bootstrap 0): the difference has no interval")
    elif found["n"] < MIN_RECORDS or found["ci95"][1] - found["ci95"][0] > WIDE_INTERVAL:
        warnings.append(
            f"the {split} split has {found['n']} records: the 95% interval of the difference "
            f"is {found['ci95'][1] - found['ci95'][0]:.2f} wide, too wide to mean much; "
            "evaluate on more records"
        )
    return warnings


def _single_prediction(task: TaskInfo, scores: np.ndarray, threshold: Any) -> str | None:
    """The one class (or value) the model predicts for every record, or None."""
    problem = task.problem
    if problem == "regression":
        return f"the value {scores[0]:.4g}" if np.ptp(scores) == 0 else None
    if problem == "multilabel":
        predicted = scores >= np.asarray(threshold)
        if not np.all(predicted == predicted[0]):
            return None
        chosen = [label for label, on in zip(task.labels, predicted[0], strict=True) if on]
        return f"the label set {{{', '.join(chosen)}}}"
    if problem == "binary":
        classes = (scores[:, 1] >= threshold).astype(int)
    else:
        classes = scores.argmax(axis=1)
    return f"the class {task.labels[classes[0]]!r}" if np.all(classes == classes[0]) else None


def verdict_lines(found: dict[str, Any]) -> list[str]:
    """The verdict for a terminal: one summary line, then each warning, loudly."""
    interval = (
        f", 95% CI {found['ci95'][0]:+.3f} to {found['ci95'][1]:+.3f}"
        if found["ci95"] is not None
        else ""
    )
    outcome = "beats the baseline" if found["beats_baseline"] else "does NOT beat the baseline"
    lines = [
        f"verdict ({found['split']}, n={found['n']}): {found['metric']} model "
        f"{found['model']:.3f} vs baseline {found['baseline']['value']:.3f} "
        f"({found['baseline']['name']}); difference {found['difference']:+.3f}{interval}: "
        f"{outcome}"
    ]
    lines.extend(f"WARNING: {warning}" for warning in found["warnings"])
    return lines
