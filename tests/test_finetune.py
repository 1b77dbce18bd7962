"""Fine-tuning setup: config and overrides, labels, loss weights, splits, one tiny run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from biotransformer.config import FinetuneConfig, ReadOptions, apply_overrides, load_config
from biotransformer.errors import ConfigError, InputError
from biotransformer.finetune_data import (
    label_vocabulary,
    loss_weights,
    prepare_splits,
    read_labelled,
)
from biotransformer.finetuning import finetune
from biotransformer.heads import load_model
from biotransformer.io import SequenceRecord


def config(tmp_path, **values) -> FinetuneConfig:
    return FinetuneConfig(
        train=str(tmp_path / "train.csv"), output_dir=str(tmp_path / "out"), **values
    )


def test_overrides_map_onto_the_config_sections(tmp_path):
    cfg = apply_overrides(
        config(tmp_path),
        ["training.lr=1e-3", "model.num_layers=1", "epochs=2", "read.label_column=y"],
    )
    assert cfg.training.lr == 1e-3
    assert cfg.model == {"num_layers": 1}
    assert cfg.epochs == 2
    assert cfg.read.label_column == "y"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.lrr=1", "did you mean 'lr'"),
        ("model.num_layer=1", "did you mean 'num_layers'"),
        ("optim.lr=1", "unknown section 'optim'"),
        ("epochs", "key=value"),
    ],
)
def test_unknown_override_keys_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(config(tmp_path), [override])


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="task = 'clasification' is not one of"):
        config(tmp_path, task="clasification").validate()
    with pytest.raises(ConfigError, match="not both"):
        config(tmp_path, model_dir="m", preset="tiny").validate()
    with pytest.raises(ConfigError, match="tune_threshold"):
        config(tmp_path, task="regression", tune_threshold=True).validate()
    with pytest.raises(ConfigError, match="classifier applies to classification"):
        config(tmp_path, task="regression", classifier="esm").validate()
    with pytest.raises(ConfigError, match="'dense' is not one of"):
        config(tmp_path, classifier="dense").validate()


def test_label_vocabulary_sorts_numbers_numerically():
    records = [SequenceRecord(str(i), "ACGT", label) for i, label in enumerate(["10", "2", "1"])]
    assert label_vocabulary("classification", records) == ["1", "2", "10"]
    multi = [SequenceRecord("a", "ACGT", ("b", "a")), SequenceRecord("b", "ACGT", ("c",))]
    assert label_vocabulary("multilabel", multi) == ["a", "b", "c"]
    with pytest.raises(InputError, match="single class"):
        label_vocabulary("classification", records[:1])


def test_one_number_written_two_ways_is_not_two_classes(tmp_path):
    table = tmp_path / "ones.csv"
    table.write_text("sequence,label\nACGT,0\nACGA,1\nACGC,1.0\n")
    with pytest.raises(InputError, match=r"ones.csv, line 4, .*'1' and '1.0' are the same number"):
        read_labelled(table, "classification", ReadOptions())
    words = tmp_path / "words.csv"
    words.write_text("sequence,label\nACGT,1\nACGA,1.0\nACGC,one\n")
    assert len(read_labelled(words, "classification", ReadOptions())) == 3  # not all numbers


def test_numeric_classes_match_by_value_across_files():
    """A valid/test/evaluation file that writes the model's class ``1`` as ``1.0`` means the
    same class; a number the model does not have is still an error naming the labels."""
    from biotransformer.inference import label_targets
    from biotransformer.tasks import TaskInfo

    task = TaskInfo("classification", ["0", "1", "2"])
    records = [SequenceRecord(str(i), "ACGT", label) for i, label in enumerate(["1.0", "0", "2"])]
    assert label_targets(task, records).tolist() == [1, 0, 2]
    multilabel = TaskInfo("multilabel", ["1", "2"])
    rows = label_targets(multilabel, [SequenceRecord("m", "ACGT", ("2.0", "1"))])
    assert rows.tolist() == [[1, 1]]
    with pytest.raises(InputError, match=r"label '3.0' is not one the model knows \(0, 1, 2\)"):
        label_targets(task, [SequenceRecord("x", "ACGT", "3.0")])
    words = TaskInfo("classification", ["1", "one"])
    with pytest.raises(InputError, match=r"'1\.0' is not one"):
        label_targets(words, [SequenceRecord("w", "ACGT", "1.0")])


def test_loss_weights(tmp_path):
    targets = np.array([0, 0, 0, 1])
    balanced = loss_weights(config(tmp_path, class_weights="balanced"), ["0", "1"], targets)
    assert balanced == pytest.approx([4 / 6, 4 / 2])
    assert loss_weights(config(tmp_path, pos_weight=3.0), ["0", "1"], targets) == [1.0, 3.0]
    assert loss_weights(config(tmp_path, pos_weight="balanced"), ["0", "1"], targets) == [1, 3]
    assert loss_weights(config(tmp_path), ["0", "1"], targets) is None
    multi = np.array([[1, 0], [1, 0], [0, 1], [1, 0]])
    cfg = config(tmp_path, task="multilabel", pos_weight="balanced")
    assert loss_weights(cfg, ["a", "b"], multi) == pytest.approx([1 / 3, 3.0])


def write_csv(path, rows):
    path.write_text("sequence,label\n" + "".join(f"{s},{y}\n" for s, y in rows))
    return path


def test_prepare_splits_reports_leakage_between_given_files(tmp_path):
    rng = np.random.default_rng(0)
    rows = [("".join(rng.choice(list("ACGT"), 30)), i % 2) for i in range(40)]
    write_csv(tmp_path / "train.csv", rows)
    write_csv(
        tmp_path / "valid.csv", [(rows[0][0][::-1].translate(str.maketrans("ACGT", "TGCA")), 1)]
    )
    cfg = config(tmp_path, valid=str(tmp_path / "valid.csv"), test_fraction=0.25)
    splits, report = prepare_splits(cfg, "dna")
    assert report.sizes == {"train": 30, "test": 10, "valid": 1}
    assert list(splits) == ["train", "valid", "test"]
    assert report.cross_split_duplicates == 1
    assert report.cross_split_conflicting == 1


@pytest.mark.filterwarnings("ignore::biotransformer.metrics.UndefinedMetricWarning")
def test_tiny_multilabel_run_from_fasta_headers(tmp_path):
    rng = np.random.default_rng(1)
    lines = []
    for i in range(60):
        sequence = "".join(rng.choice(list("ACGT"), 24))
        labels = ",".join(x for x, on in (("gc", "GG" in sequence), ("at", "AA" in sequence)) if on)
        lines.append(f">seq/{i} tags={labels or 'none'}\n{sequence}\n")
    (tmp_path / "train.fa").write_text("".join(lines))
    cfg = FinetuneConfig(
        train=str(tmp_path / "train.fa"),
        output_dir=str(tmp_path / "out"),
        task="multilabel",
        preset="tiny",
        epochs=1,
        bootstrap=5,
        tune_threshold=True,
        pos_weight="balanced",
        read=ReadOptions(label_from="key:tags"),
        plots=False,
    )
    result = finetune(cfg)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["labels"] == ["at", "gc", "none"]
    assert len(metrics["threshold"]) == 3
    assert set(metrics["test"]["metrics"]) >= {"mcc", "f1_macro", "auroc", "auprc"}
    head = json.loads((result.model_dir / "config.json").read_text())["head"]
    assert head["threshold"] == metrics["threshold"]
    assert load_model(result.model_dir).task.threshold == metrics["threshold"]
    assert load_model(result.model_dir).head_config.problem_type == "multi_label"
    # config.yaml holds the values as they ran (steps from epochs) and loads back
    ran = load_config(FinetuneConfig, tmp_path / "out" / "config.yaml")
    logged = [
        json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()
    ]
    assert ran.training.max_steps == max(row["step"] for row in logged)
    assert ran.training.warmup_steps == round(ran.warmup_fraction * ran.training.max_steps)
    assert ran.training.output_dir == cfg.output_dir
    # the values given are kept; the automatic ones (None) are written as they were resolved
    given = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
    given.pop("training")
    assert {key: dataclasses.asdict(ran)[key] for key in given} == given
    resolved = (ran.tokenizer, ran.max_tokens, ran.warmup_fraction, ran.patience, ran.training.lr)
    assert None not in resolved
