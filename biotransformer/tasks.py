"""The task vocabulary, stated once, and the decision rules of a model's task.

``TASKS`` lists every task a model can have, with what the rest of the package needs to know
about it: the head class that serves it, how its labels are read, its metric family and its
default selection metric. Fine-tuning, inference and the command line derive their lists and
choices from it.

``TaskInfo`` is a model's task as its head states it (``model.task``, from the head section of
``config.json``): the label names, the decision threshold, whether scores average both DNA
strands, and the rules that turn logits into probabilities, decisions and label strings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from biotransformer.errors import ModelDirectoryError

LabelType = Literal["class", "multilabel", "numeric"]


@dataclass(frozen=True)
class TaskSpec:
    """What a task is.

    ``model_type``: the ``heads`` class that serves it (as ``config.json`` names it), built
    with the head options ``head_options``. ``label_type``: how ``io.read_sequences`` reads
    its labels (None: it learns from the sequences alone). ``problem``: its ``metrics``
    family, or None for binary or multi-class by the number of labels. ``select_metric``:
    what fine-tuning selects on by default. ``classes``: its labels are one or more classes
    per sequence (a classifier choice, class weights and a tuned threshold apply).
    ``per_token``: one label per token."""

    name: str
    model_type: str
    label_type: LabelType | None
    problem: str | None
    select_metric: str | None
    classes: bool = False
    per_token: bool = False
    head_options: Mapping[str, Any] = field(default_factory=dict)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("classification", "SequenceClassifier", "class", None, "mcc", classes=True),
        TaskSpec(
            "multilabel",
            "SequenceClassifier",
            "multilabel",
            "multilabel",
            "mcc",
            classes=True,
            head_options={"problem_type": "multi_label"},
        ),
        TaskSpec("regression", "SequenceRegressor", "numeric", "regression", "r2"),
        TaskSpec("token-classification", "TokenClassifier", "class", None, "mcc", per_token=True),
        TaskSpec("masked-lm", "MaskedLM", None, "masked-lm", None),
    )
}
# The tasks a model is fine-tuned for: those with labels.
FINETUNE_TASKS = tuple(name for name, spec in TASKS.items() if spec.label_type is not None)


# ---------------------------------------------------------------------------------------------
# Decision fields: the checks shared by config.json's head section and old task.json files
# ---------------------------------------------------------------------------------------------


def is_probability(value: Any) -> bool:
    """A finite number in [0, 1] (not a bool)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0.0 <= value <= 1.0
    )


def threshold_problem(threshold: Any, num_labels: int, per_label: bool) -> str | None:
    """Why ``threshold`` is not a decision threshold (None when it is one): a number in
    [0, 1], or with ``per_label`` (multilabel) also a list of one such number per label."""
    if isinstance(threshold, list) and per_label:
        if len(threshold) != num_labels or not all(map(is_probability, threshold)):
            return (
                f"threshold = {threshold!r} must hold one number in [0, 1] per label ({num_labels})"
            )
    elif threshold is not None and not is_probability(threshold):
        return f"threshold = {threshold!r} must be a number in [0, 1]"
    return None


def read_task_file(path: Path, task: TaskInfo) -> dict[str, Any]:
    """The decision fields (``threshold``, ``rc_average``) of the ``task.json`` that model
    directories written before the head held them keep beside ``config.json``; each field
    has its type and agrees with the model's ``task``."""

    def error(problem: str) -> ModelDirectoryError:
        return ModelDirectoryError(
            f"{path}: {problem}. Fix: put back the task.json written with this model (or "
            "delete it to use the defaults: threshold 0.5, no strand averaging)"
        )

    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as decode_error:
        raise error(f"not valid JSON ({decode_error})") from None
    if not isinstance(saved, dict):
        raise error(f"a JSON {type(saved).__name__}, not an object")
    name = saved.get("task", task.task)
    if name not in TASKS:
        raise error(f"task = {name!r} is not one of {list(TASKS)}")
    if name != task.task:
        raise error(f"task = {name!r}, but the model is a {task.task} model")
    labels = saved.get("labels", task.labels)
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise error(f"labels = {labels!r} must be a list of label names")
    if labels != task.labels:
        raise error(f"labels = {labels!r}, but the model's are {task.labels!r}")
    threshold = saved.get("threshold")
    problem = threshold_problem(threshold, len(task.labels), task.problem == "multilabel")
    if problem is not None:
        raise error(problem)
    rc_average = saved.get("rc_average", False)
    if not isinstance(rc_average, bool):
        raise error(f"rc_average = {rc_average!r} must be true or false")
    return {"threshold": threshold, "rc_average": rc_average}


# ---------------------------------------------------------------------------------------------
# A model's task
# ---------------------------------------------------------------------------------------------


@dataclass
class TaskInfo:
    """The task of a model, its label names (by class id), its decision threshold and whether
    its scores are the mean over both DNA strands (``rc_average``, the default of
    ``predict_records`` and ``evaluate_records``). ``model.task`` builds it from the head; a
    command's ``--threshold`` or ``--rc-average`` changes this copy only."""

    task: str
    labels: list[str] = field(default_factory=list)
    threshold: float | list[float] | None = None
    rc_average: bool = False

    @property
    def spec(self) -> TaskSpec:
        """The task's entry in ``TASKS``."""
        return TASKS[self.task]

    @property
    def has_labels(self) -> bool:
        """Whether the head predicts labels (every task but masked-LM)."""
        return self.spec.label_type is not None

    @property
    def per_sequence(self) -> bool:
        """Whether the head predicts labels or values per sequence (not per token)."""
        return self.has_labels and not self.spec.per_token

    @property
    def problem(self) -> str:
        """The ``metrics`` problem name: binary, multiclass, multilabel, regression or
        masked-lm."""
        if self.spec.problem is not None:
            return self.spec.problem
        return "binary" if len(self.labels) == 2 else "multiclass"

    @property
    def output_names(self) -> list[str]:
        """A name per output column: the labels, or ``value`` for regression."""
        return ["value"] if self.problem == "regression" else list(self.labels)

    @property
    def score_columns(self) -> list[str]:
        """The score columns of a predictions table: ``prob_<label>`` per class, ``value``
        for regression, none for per-token tasks."""
        if not self.per_sequence:
            return []
        if self.spec.classes:
            return [f"prob_{label}" for label in self.labels]
        return self.output_names

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Softmax (single-label classes, per sequence or per token) or sigmoid (multilabel)
        of logits; regression values pass through."""
        if self.problem == "regression":
            return logits
        if self.problem == "multilabel":
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = logits - logits.max(axis=-1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=-1, keepdims=True)

    @property
    def decision_threshold(self) -> float | list[float] | None:
        """The threshold decisions use: the stored one, else 0.5, for binary classification
        and multilabel; None where a decision is the arg-max (multi-class, per token) or
        there is none (regression)."""
        if self.problem == "multilabel" or (self.problem == "binary" and self.spec.classes):
            return 0.5 if self.threshold is None else self.threshold
        return None

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Class ids (N,) from probabilities: arg-max, or for binary classification
        ``P(positive) >= threshold``; multilabel: a (N, C) 0/1 matrix, ``P >= threshold``
        (0.5 unless tuned)."""
        threshold = self.decision_threshold
        if self.problem == "multilabel":
            return (scores >= np.asarray(threshold)).astype(np.int64)
        if threshold is not None:
            return (scores[:, 1] >= threshold).astype(np.int64)
        return scores.argmax(axis=-1)

    def label_predictions(self, scores: np.ndarray) -> list[str]:
        """Predicted labels of sequence-level ``scores``, as strings."""
        if self.problem == "regression":
            return [format_number(row[0]) for row in scores]
        if self.problem == "multilabel":
            return [
                ",".join(label for label, on in zip(self.labels, row, strict=True) if on)
                for row in self.decide(scores)
            ]
        return [self.labels[i] for i in self.decide(scores)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "labels": self.labels,
            "threshold": self.threshold,
            "rc_average": self.rc_average,
        }


def format_number(value: float) -> str:
    """How a score or value is written in a table: the shortest repr of the float."""
    return repr(float(value))
