"""Saliency: ISM equals direct scoring, gradient x input, plots, the command, a planted motif."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from biotransformer.cli import main
from biotransformer.config import FinetuneConfig, ModelConfig, TrainingConfig
from biotransformer.errors import ConfigError, InputError
from biotransformer.finetuning import finetune
from biotransformer.heads import SequenceClassifier, SequenceRegressor, load_model
from biotransformer.inference import predict_records
from biotransformer.io import SequenceRecord
from biotransformer.saliency import explain, file_stem, saturation_mutagenesis, write_saliency
from biotransformer.tokenizers import Tokenizer

MOTIF = "GGATCA"


def tiny(cls: type, spec: str, **head: object) -> torch.nn.Module:
    tokenizer = Tokenizer.from_spec(spec)
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size)
    model = cls(config, **head).eval()
    model.tokenizer = tokenizer
    return model


@pytest.mark.parametrize("spec", ["dna", "dna-kmer:k=3"])
def test_ism_equals_scoring_each_mutant(spec):
    model = tiny(SequenceClassifier, spec, num_labels=2, pooling="mean")
    task = model.task
    sequence = "ACGTTGCAAGGCTTAC"
    effects, score, letters = saturation_mutagenesis(model, task, sequence, 1, batch_size=7)
    assert letters == "ACGT" and effects.shape == (16, 4)
    mutant = sequence[:5] + "A" + sequence[6:]
    probs = predict_records(
        model, [SequenceRecord("w", sequence), SequenceRecord("m", mutant)], task
    ).scores
    log_odds = np.log(probs[:, 1]) - np.log(probs[:, 0])
    np.testing.assert_allclose(score, log_odds[0], atol=1e-4)
    np.testing.assert_allclose(effects[5, 0], log_odds[1] - log_odds[0], atol=1e-4)
    reference = [letters.index(c) for c in sequence]
    np.testing.assert_allclose(effects[np.arange(16), reference], 0.0, atol=1e-5)


def test_explain_writes_tables_and_plots(tmp_path):
    model = tiny(SequenceRegressor, "protein")
    result = explain(model, model.task, SequenceRecord("p|1", "MKTAYIAKQR"))
    assert result.letters == "ACDEFGHIKLMNPQRSTVWY" and result.ism.shape == (10, 20)
    assert result.gradient_x_input.shape == (10,) and np.isfinite(result.gradient_x_input).all()
    paths = write_saliency(result, tmp_path)
    stem = file_stem("p|1")  # '|' is not kept in a file name: safe letters plus a hash
    assert stem.startswith("p_1-") and stem != file_stem("p_1") == "p_1"
    assert [p.name for p in paths] == [f"{stem}.ism.tsv", f"{stem}.heatmap.png", f"{stem}.logo.png"]
    rows = list(csv.reader(paths[0].open(), delimiter="\t"))
    assert rows[0][:3] == ["position", "ref", "gradient_x_input"] and len(rows) == 11
    assert all(p.stat().st_size > 1000 for p in paths[1:])


def test_gradient_x_input_is_shared_over_kmer_letters():
    model = tiny(SequenceClassifier, "dna-kmer:k=3,stride=3", num_labels=2)
    result = explain(model, model.task, SequenceRecord("r", "ACGTTG"))
    values = result.gradient_x_input
    np.testing.assert_allclose(values[:3], values[0])
    np.testing.assert_allclose(values[3:], values[3])


def test_refusals():
    model = tiny(SequenceClassifier, "dna", num_labels=2)
    task = model.task
    with pytest.raises(ConfigError, match="not one of the model's labels"):
        explain(model, task, SequenceRecord("r", "ACGT"), target="7")
    with pytest.raises(InputError, match="more than the model reads"):
        explain(model, task, SequenceRecord("r", "ACGT" * 40))


def test_saliency_command(tmp_path):
    model = tiny(SequenceClassifier, "dna", num_labels=2, label2id={"no": 0, "yes": 1})
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "in.fa").write_text(">a\nACGTACGTAC\n>b\nTTGCA\n")
    out = tmp_path / "out"
    argv = ["saliency", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "in.fa")]
    assert main([*argv, "--out", str(out), "--target", "yes"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".biotransformer-run.json",
        "a.heatmap.png",
        "a.ism.tsv",
        "a.logo.png",
        "b.heatmap.png",
        "b.ism.tsv",
        "b.logo.png",
        "index.tsv",
    ]
    assert (out / "index.tsv").read_text() == "id\tfiles\na\ta\nb\tb\n"


def motif_rows(n: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    rows = []
    while len(rows) < n:
        sequence = "".join(rng.choice(list("ACGT"), 40))
        if MOTIF in sequence:
            continue
        if len(rows) % 2:
            at = int(rng.integers(0, 40 - len(MOTIF)))
            sequence = sequence[:at] + MOTIF + sequence[at + len(MOTIF) :]
        rows.append((sequence, len(rows) % 2))
    return rows


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ism_puts_the_largest_effects_on_a_planted_motif(tmp_path):
    rng = np.random.default_rng(1)
    train = tmp_path / "train.csv"
    train.write_text("sequence,label\n" + "".join(f"{s},{y}\n" for s, y in motif_rows(600, rng)))
    finetune(
        FinetuneConfig(
            train=str(train),
            output_dir=str(tmp_path / "out"),
            preset="tiny",
            tokenizer="dna-kmer:k=6",
            model={"hidden_size": 32, "ffn_size": 64},
            epochs=6,
            max_tokens=2048,
            test_fraction=0.0,
            bootstrap=0,
            plots=False,
            training=TrainingConfig(lr=3e-3, schedule="linear", min_lr_ratio=0.0),
        )
    )
    model_dir = tmp_path / "out" / "model"
    model = load_model(model_dir)
    task = model.task
    background = "".join(rng.choice(list("ACGT"), 40))
    while MOTIF in background:
        background = "".join(rng.choice(list("ACGT"), 40))
    at = 17
    sequence = background[:at] + MOTIF + background[at + len(MOTIF) :]
    result = explain(model, task, SequenceRecord("planted", sequence), target="1")
    loss = -result.ism.mean(axis=1)  # how much mutating each position lowers P(motif)
    top = set(np.argsort(loss)[-len(MOTIF) :].tolist())
    motif = set(range(at, at + len(MOTIF)))
    assert len(top & motif) >= len(MOTIF) - 1, (sorted(top), sorted(motif))
    outside = np.abs(np.delete(loss, sorted(motif))).max()
    assert loss[sorted(motif)].max() > 10 * outside  # measured 0.21 against 0.001
