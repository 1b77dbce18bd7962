"""The task vocabulary and the head-owned task: stated once, saved in config.json, older
directories (config.json plus task.json) still loading, no dispatch on class names."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_legacy_model_directory

import biotransformer
from biotransformer.errors import ConfigError, ModelDirectoryError
from biotransformer.heads import (
    MODEL_CLASSES,
    MODEL_FILES,
    TASK_FILE,
    MaskedLM,
    SequenceClassifier,
    SequenceRegressor,
    TokenClassifier,
    load_model,
)
from biotransformer.io import SequenceRecord
from biotransformer.tasks import FINETUNE_TASKS, TASKS, TaskInfo
from biotransformer.tokenizers import Tokenizer

PACKAGE = Path(biotransformer.__file__).parent


def tiny(cls, **head):
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_spec("dna")
    model = cls.from_preset(
        "tiny", vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, **head
    ).eval()
    model.tokenizer = tokenizer
    return model


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_is_served_by_its_head_class(name: str) -> None:
    spec = TASKS[name]
    head = dict(spec.head_options)
    if spec.label_type in ("class", "multilabel"):
        head["label2id"] = {"a": 0, "b": 1}
    model = tiny(MODEL_CLASSES[spec.model_type], **head)
    assert model.task.task == name
    assert model.task.spec is spec


def test_finetune_tasks_and_cli_choices_derive_from_the_vocabulary() -> None:
    from biotransformer.cli import build_parser

    assert FINETUNE_TASKS == ("classification", "multilabel", "regression", "token-classification")
    parser = build_parser()
    finetune = parser._subparsers._group_actions[0].choices["finetune"]  # type: ignore[union-attr]
    task = next(action for action in finetune._actions if action.dest == "task")
    assert tuple(task.choices) == FINETUNE_TASKS


@pytest.mark.parametrize(
    ("task", "labels", "problem"),
    [
        ("classification", ["a", "b"], "binary"),
        ("classification", ["a", "b", "c"], "multiclass"),
        ("multilabel", ["a", "b"], "multilabel"),
        ("regression", [], "regression"),
        ("token-classification", ["H", "E", "C"], "multiclass"),
        ("masked-lm", [], "masked-lm"),
    ],
)
def test_metric_family(task: str, labels: list[str], problem: str) -> None:
    assert TaskInfo(task, labels).problem == problem


def test_binary_token_classification_decides_by_arg_max_not_threshold() -> None:
    scores = np.array([[0.7, 0.3], [0.4, 0.6]])
    assert TaskInfo("token-classification", ["a", "b"], threshold=0.2).decide(scores).tolist() == [
        0,
        1,
    ]
    assert TaskInfo("classification", ["a", "b"], threshold=0.2).decide(scores).tolist() == [1, 1]


# ---------------------------------------------------------------------------------------------
# config.json holds the head's task fields
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "head", "expected"),
    [
        (
            SequenceClassifier,
            {"label2id": {"no": 0, "yes": 1}, "threshold": 0.3, "rc_average": True},
            TaskInfo("classification", ["no", "yes"], 0.3, True),
        ),
        (
            SequenceClassifier,
            {
                "label2id": {"x": 0, "y": 1, "z": 2},
                "problem_type": "multi_label",
                "threshold": [0.1, 0.5, 0.9],
            },
            TaskInfo("multilabel", ["x", "y", "z"], [0.1, 0.5, 0.9]),
        ),
        (SequenceRegressor, {"rc_average": True}, TaskInfo("regression", rc_average=True)),
        (TokenClassifier, {"num_labels": 3}, TaskInfo("token-classification", ["0", "1", "2"])),
        (MaskedLM, {}, TaskInfo("masked-lm")),
    ],
)
def test_task_fields_round_trip_through_config_json(cls, head, expected, tmp_path: Path) -> None:
    model = tiny(cls, **head)
    assert model.task == expected
    model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["head"]
    for name in ("threshold", "rc_average"):
        if name in head:
            assert saved[name] == head[name]
    assert load_model(tmp_path / "model").task == expected


def test_the_task_is_a_copy_of_the_heads_fields() -> None:
    model = tiny(SequenceClassifier, num_labels=2)
    task = model.task
    task.threshold = 0.9  # as --threshold does
    assert model.task.threshold is None


def test_head_threshold_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"threshold = 1.5 must be a number in \[0, 1\]"):
        tiny(SequenceClassifier, num_labels=2, threshold=1.5)
    with pytest.raises(ConfigError, match="one number in"):
        tiny(SequenceClassifier, num_labels=3, problem_type="multi_label", threshold=[0.5])


def test_save_config_stores_a_tuned_threshold_and_keeps_the_weights(tmp_path: Path) -> None:
    model = tiny(SequenceClassifier, num_labels=2)
    model.save_pretrained(tmp_path / "model")
    weights = (tmp_path / "model" / "model.safetensors").read_bytes()
    model.head_config.threshold = 0.25
    model.save_config(tmp_path / "model")
    assert load_model(tmp_path / "model").task.threshold == 0.25
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == weights


# ---------------------------------------------------------------------------------------------
# Directories written before this change: config.json plus task.json
# ---------------------------------------------------------------------------------------------


def test_a_directory_with_task_json_loads_with_its_threshold_and_rc_average(
    tmp_path: Path,
) -> None:
    model = tiny(SequenceClassifier, label2id={"no": 0, "yes": 1})
    directory = save_legacy_model_directory(
        model,
        tmp_path / "old",
        {"task": "classification", "labels": ["no", "yes"], "threshold": 0.0, "rc_average": True},
    )
    assert "threshold" not in json.loads((directory / "config.json").read_text())["head"]
    loaded = load_model(directory)
    assert loaded.task == TaskInfo("classification", ["no", "yes"], 0.0, True)
    from biotransformer.inference import predict_records

    records = [SequenceRecord("a", "ACGTACGTTT"), SequenceRecord("b", "GGGCCCAATT")]
    predictions = predict_records(loaded, records, loaded.task)
    assert predictions.predicted == ["yes", "yes"]  # P >= 0 always


def test_an_old_multilabel_directory_keeps_its_per_label_thresholds(tmp_path: Path) -> None:
    model = tiny(SequenceClassifier, num_labels=2, problem_type="multi_label")
    task = {"task": "multilabel", "labels": ["0", "1"], "threshold": [0.2, 0.8]}
    directory = save_legacy_model_directory(model, tmp_path / "old", task)
    assert load_model(directory).task.threshold == [0.2, 0.8]


def test_a_bad_task_json_is_refused_naming_it(tmp_path: Path) -> None:
    model = tiny(SequenceClassifier, num_labels=2)
    task = {"task": "classification", "labels": ["0", "1"], "threshold": 2}
    directory = save_legacy_model_directory(model, tmp_path / "old", task)
    with pytest.raises(ModelDirectoryError, match=r"task\.json: threshold = 2 must be a number"):
        load_model(directory)


def test_task_json_of_a_warm_start_base_is_not_read(tmp_path: Path) -> None:
    """A new head starts fresh: the base's decision fields do not apply to it."""
    model = tiny(SequenceClassifier, num_labels=2)
    task = {"task": "classification", "labels": ["0", "1"], "threshold": 0.1}
    directory = save_legacy_model_directory(model, tmp_path / "old", task)
    warm = load_model(directory, SequenceRegressor)
    assert warm.task == TaskInfo("regression")


def test_saving_folds_an_old_task_json_into_config_json(tmp_path: Path) -> None:
    model = tiny(SequenceClassifier, num_labels=2)
    task = {"task": "classification", "labels": ["0", "1"], "threshold": 0.4, "rc_average": True}
    old = save_legacy_model_directory(model, tmp_path / "old", task)
    assert set(MODEL_FILES) == {p.name for p in old.iterdir()}  # replaceable: model files only
    loaded = load_model(old)
    loaded.save_config(old)
    assert not (old / TASK_FILE).exists()
    assert load_model(old).task == TaskInfo("classification", ["0", "1"], 0.4, True)
    legacy = save_legacy_model_directory(model, tmp_path / "again", task)
    load_model(legacy).save_pretrained(legacy)  # replaces an old directory as a whole
    assert not (legacy / TASK_FILE).exists()
    assert load_model(legacy).task.threshold == 0.4


# ---------------------------------------------------------------------------------------------
# No dispatch on class names
# ---------------------------------------------------------------------------------------------


def _dispatches_on_a_class_name(node: ast.AST) -> bool:
    """A comparison (``==``, ``in``, ``match``) that involves ``__name__`` or a model class
    name as a string."""
    names = set(MODEL_CLASSES)

    def mentions(part: ast.AST) -> bool:
        return any(
            (isinstance(sub, ast.Attribute) and sub.attr == "__name__")
            or (isinstance(sub, ast.Constant) and sub.value in names)
            for sub in ast.walk(part)
        )

    if isinstance(node, ast.Compare):
        return mentions(node)
    if isinstance(node, ast.Match):
        return mentions(node.subject) or any(mentions(case.pattern) for case in node.cases)
    return False


def test_no_module_dispatches_on_a_class_name() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if _dispatches_on_a_class_name(node)
    ]
    assert found == [], f"dispatch on a class name at {found}: give the head a method instead"


def test_the_class_name_check_finds_what_inference_did_before() -> None:
    before = 'kind = type(model).__name__\nif kind == "MaskedLM":\n    pass\n'
    assert any(_dispatches_on_a_class_name(node) for node in ast.walk(ast.parse(before)))
    direct = 'if type(model).__name__ == "TokenClassifier":\n    pass\n'
    assert any(_dispatches_on_a_class_name(node) for node in ast.walk(ast.parse(direct)))


def test_decision_threshold_is_the_one_decisions_use():
    binary = TaskInfo("classification", ["neg", "pos"])
    assert binary.decision_threshold == 0.5
    scores = np.array([[0.45, 0.55], [0.7, 0.3]])
    assert binary.decide(scores).tolist() == [1, 0]
    tuned = TaskInfo("classification", ["neg", "pos"], threshold=0.6)
    assert tuned.decision_threshold == 0.6 and tuned.decide(scores).tolist() == [0, 0]
    assert TaskInfo("multilabel", ["a", "b"]).decision_threshold == 0.5
    assert TaskInfo("classification", ["a", "b", "c"]).decision_threshold is None
    assert TaskInfo("token-classification", ["m", "."]).decision_threshold is None
    assert TaskInfo("regression", []).decision_threshold is None
