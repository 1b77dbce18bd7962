"""Batched inference: input order, batching invariance, embeddings layout, metrics."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch
from helpers import run_torchrun
from sklearn import metrics as skm

from biotransformer.heads import MaskedLM, SequenceClassifier, SequenceRegressor, load_model
from biotransformer.inference import (
    TaskInfo,
    embed_records,
    evaluate_records,
    predict_records,
    resolve_layers,
    write_embeddings_h5,
    write_predictions_tsv,
)
from biotransformer.io import SequenceRecord
from biotransformer.tokenizers import Tokenizer


def tiny(cls, **head):
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_spec("dna")
    model = cls.from_preset(
        "tiny", vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, **head
    ).eval()
    model.tokenizer = tokenizer
    return model


@pytest.fixture
def records():
    rng = np.random.default_rng(0)
    return [
        SequenceRecord(
            f"chr1/{i}", "".join(rng.choice(list("ACGT"), int(rng.integers(5, 60)))), str(i % 2)
        )
        for i in range(40)
    ]


def test_predictions_keep_input_order_whatever_the_batching(records):
    model = tiny(SequenceClassifier, label2id={"0": 0, "1": 1})
    task = model.task
    small = predict_records(model, records, task, max_tokens=64)
    large = predict_records(model, records, task, max_tokens=100000)
    assert small.ids == [r.id for r in records]
    np.testing.assert_allclose(small.scores, large.scores, atol=1e-5)
    one_by_one = np.stack([predict_records(model, [r], task).scores[0] for r in records[:5]])
    np.testing.assert_allclose(small.scores[:5], one_by_one, atol=1e-5)


def test_threshold_decides_binary_predictions(records):
    model = tiny(SequenceClassifier, label2id={"neg": 0, "pos": 1})
    task = model.task
    task.threshold = 0.0
    assert set(predict_records(model, records, task).predicted) == {"pos"}
    task.threshold = 1.01
    assert set(predict_records(model, records, task).predicted) == {"neg"}


def test_predictions_tsv_columns_and_order(records, tmp_path):
    model = tiny(SequenceClassifier, label2id={"0": 0, "1": 1})
    predictions = predict_records(model, records, model.task)
    path = write_predictions_tsv(predictions, tmp_path / "p.tsv")
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    assert list(rows[0]) == ["id", "prediction", "prob_0", "prob_1"]
    assert [row["id"] for row in rows] == [r.id for r in records]
    probs = np.array([[float(row["prob_0"]), float(row["prob_1"])] for row in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_regression_predictions_are_values(records, tmp_path):
    model = tiny(SequenceRegressor)
    model.target_mean.fill_(10.0)
    numeric = [SequenceRecord(r.id, r.sequence, float(i)) for i, r in enumerate(records)]
    predictions = predict_records(model, numeric, TaskInfo("regression"))
    assert predictions.scores.shape == (40, 1)
    assert abs(float(np.mean(predictions.scores)) - 10.0) < 1.0
    write_predictions_tsv(predictions, tmp_path / "r.tsv")
    header = (tmp_path / "r.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["id", "prediction", "value"]


def test_classification_metrics_equal_scikit_learn(records):
    model = tiny(SequenceClassifier, label2id={"0": 0, "1": 1})
    task = model.task
    result, predictions = evaluate_records(model, records, task, bootstrap=20)
    truth = np.array([int(r.label) for r in records])
    p1 = predictions.scores[:, 1]
    predicted = (p1 >= 0.5).astype(int)
    values = {name: entry["value"] for name, entry in result["metrics"].items()}
    assert values["mcc"] == pytest.approx(skm.matthews_corrcoef(truth, predicted))
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(truth, predicted))
    assert values["f1"] == pytest.approx(skm.f1_score(truth, predicted, zero_division=0))
    assert values["auroc"] == pytest.approx(skm.roc_auc_score(truth, p1))
    assert values["auprc"] == pytest.approx(skm.average_precision_score(truth, p1))
    assert result["n"] == 40 and result["threshold"] == 0.5
    entry = result["metrics"]["auroc"]
    assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]


def test_masked_lm_loss_and_perplexity(records):
    model = tiny(MaskedLM)
    task = model.task
    result, predictions = evaluate_records(model, records, task, bootstrap=20)
    assert predictions is None
    loss = result["metrics"]["loss"]["value"]
    assert result["metrics"]["perplexity"]["value"] == pytest.approx(np.exp(loss))
    assert 0.5 < loss < 5.0
    again, _ = evaluate_records(model, records, task, bootstrap=0, max_tokens=80)
    assert again["metrics"]["loss"]["value"] == pytest.approx(loss, rel=1e-5)


def test_embeddings_pooled_and_per_token_layout(records, tmp_path):
    model = tiny(MaskedLM)
    embeddings = embed_records(model, records, per_token=True, layers=[-1, 0], max_tokens=90)
    width = model.config.hidden_size
    assert embeddings.pooled.shape == (40, 2 * width) and embeddings.pooled.dtype == np.float32
    lengths = [len(r.sequence) for r in records]  # one token per base, no specials
    np.testing.assert_array_equal(np.diff(embeddings.offsets), lengths)
    assert embeddings.tokens.shape == (sum(lengths), 2 * width)
    first = embeddings.tokens[embeddings.offsets[3] : embeddings.offsets[4]]
    np.testing.assert_allclose(first.mean(axis=0), embeddings.pooled[3], atol=1e-5)
    path = write_embeddings_h5(embeddings, tmp_path / "e.h5", attributes={"model": "tiny"})
    with h5py.File(path) as handle:
        assert [i.decode() for i in handle["ids"][:]] == [r.id for r in records]
        assert list(handle.attrs["layers"]) == [2, 0]
        np.testing.assert_array_equal(handle["offsets"][:], embeddings.offsets)
    assert list(tmp_path.iterdir()) == [path]


def test_embeddings_do_not_depend_on_batching(records):
    model = tiny(MaskedLM)
    small = embed_records(model, records, max_tokens=64)
    large = embed_records(model, records, max_tokens=100000)
    np.testing.assert_allclose(small.pooled, large.pooled, atol=1e-5)


def test_resolve_layers_refuses_missing_layers():
    from biotransformer.errors import ConfigError

    assert resolve_layers(None, 4) == [4]
    assert resolve_layers([-2, 0], 4) == [3, 0]
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        resolve_layers([5], 4)


TWO_RANK_SCRIPT = """
import json, sys
import numpy as np
from biotransformer.config import TrainingConfig
from biotransformer.heads import load_model
from biotransformer.inference import embed_records, evaluate_records
from biotransformer.io import read_sequences
from biotransformer.runtime import make_accelerator

model_dir, data, out = sys.argv[1:4]
accelerator = make_accelerator(TrainingConfig())
model = load_model(model_dir)
records = list(read_sequences(data, label_from="key:y"))
task = model.task
result, predictions = evaluate_records(
    model, records, task, bootstrap=30, max_tokens=64, accelerator=accelerator
)
pooled = embed_records(model, records, max_tokens=64, accelerator=accelerator).pooled
if accelerator.is_main_process:
    json.dump(
        {"metrics": result, "scores": predictions.scores.tolist(), "pooled": pooled.tolist(),
         "processes": accelerator.num_processes},
        open(out, "w"),
    )
accelerator.wait_for_everyone()
accelerator.end_training()  # leaves the gloo group: exiting while holding it can abort
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_rank_evaluation_equals_one_process(records, tmp_path):
    import json
    import os

    model = tiny(SequenceClassifier, label2id={"0": 0, "1": 1})
    model.save_pretrained(tmp_path / "model")
    # 41 records: an odd count, so the ranks' shares differ and a batch is repeated
    extra = SequenceRecord("odd/41", "ACGTTGCA", "1")
    fasta = "".join(f">{r.id} y={r.label}\n{r.sequence}\n" for r in [*records, extra])
    (tmp_path / "data.fa").write_text(fasta)
    (tmp_path / "run.py").write_text(TWO_RANK_SCRIPT)
    run_torchrun(
        [str(tmp_path / "run.py"), str(tmp_path / "model"), str(tmp_path / "data.fa"),
         str(tmp_path / "two.json")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["processes"] == 2
    loaded = load_model(tmp_path / "model")
    task = loaded.task
    everything = [*records, extra]
    one, predictions = evaluate_records(loaded, everything, task, bootstrap=30, max_tokens=64)
    np.testing.assert_allclose(two["scores"], predictions.scores, atol=1e-6)
    pooled = embed_records(loaded, everything, max_tokens=64).pooled
    np.testing.assert_allclose(two["pooled"], pooled, atol=1e-6)
    for name, entry in one["metrics"].items():
        assert two["metrics"]["metrics"][name] == pytest.approx(entry, abs=1e-9), name
