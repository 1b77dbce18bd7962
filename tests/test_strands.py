"""Both strands: reverse-complement augmentation draws, strand averaging, protein refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from biotransformer.config import FinetuneConfig, ModelConfig, TrainingConfig
from biotransformer.errors import ConfigError
from biotransformer.finetuning import finetune
from biotransformer.heads import SequenceClassifier, load_model
from biotransformer.inference import RecordDataset, predict_records
from biotransformer.io import SequenceRecord, read_sequences
from biotransformer.strands import (
    StrandAugmentedDataset,
    require_dna,
    reverse_complement_record,
    strand_augmented,
)
from biotransformer.tokenizers import Tokenizer, reverse_complement

MOTIF = "GGATCA"  # not its own reverse complement (TGATCC)


def random_dna(length: int, rng: np.random.Generator) -> str:
    return "".join(rng.choice(list("ACGT"), length))


def classifier(spec: str) -> SequenceClassifier:
    tokenizer = Tokenizer.from_spec(spec)
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size)
    model = SequenceClassifier(config, num_labels=2, pooling="mean").eval()
    model.tokenizer = tokenizer
    return model


def test_reverse_complement_record_reverses_per_base_labels():
    record = SequenceRecord("r", "AACG", label="0011", line=3)
    flipped = reverse_complement_record(record)
    assert (flipped.sequence, flipped.label, flipped.line) == ("CGTT", "1100", 3)
    assert reverse_complement_record(SequenceRecord("s", "AC", label="1")).label == "1"


def test_augmented_dataset_draws_from_seed_epoch_index():
    tokenizer = Tokenizer.from_spec("dna-kmer:k=3")
    records = [SequenceRecord(str(i), "ACGTTGCA" * (i + 1)) for i in range(400)]

    def make(rs):
        return RecordDataset(rs, tokenizer)

    dataset = strand_augmented(records, make, tokenizer, 0.5, seed=7)
    first = [dataset.flipped(i) for i in range(400)]
    assert 150 < sum(first) < 250
    again = strand_augmented(records, make, tokenizer, 0.5, seed=7)
    assert [again.flipped(i) for i in range(400)] == first
    dataset.set_epoch(1)
    assert [dataset.flipped(i) for i in range(400)] != first
    index = first.index(True)
    dataset.set_epoch(0)
    expected = tokenizer.encode(reverse_complement(records[index].sequence))
    np.testing.assert_array_equal(dataset[index]["input_ids"], expected)
    never = StrandAugmentedDataset(dataset.forward, dataset.reverse, 0.0)
    assert not any(never.flipped(i) for i in range(400))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        StrandAugmentedDataset(dataset.forward, dataset.reverse, 1.5)


def test_proteins_are_refused_with_a_clear_error():
    protein = Tokenizer.from_spec("protein")
    with pytest.raises(ConfigError, match="proteins have no reverse complement"):
        require_dna(protein, "reverse-complement averaging")
    model = classifier("protein")
    with pytest.raises(ConfigError, match="proteins have no reverse complement"):
        predict_records(model, [SequenceRecord("p", "MKV")], model.task, rc_average=True)


@pytest.mark.parametrize("spec", ["dna", "dna-kmer:k=4", "dna-kmer:k=3,stride=3"])
def test_rc_average_is_the_mean_of_both_strands(spec):
    model = classifier(spec)
    task = model.task
    rng = np.random.default_rng(0)
    records = [SequenceRecord(f"r{i}", random_dna(40 + i, rng)) for i in range(5)]
    forward = predict_records(model, records, task).scores
    reverse = predict_records(model, [reverse_complement_record(r) for r in records], task).scores
    averaged = predict_records(model, records, task, rc_average=True)
    np.testing.assert_allclose(averaged.scores, (forward + reverse) / 2, atol=1e-6)
    assert averaged.ids == [r.id for r in records]
    assert averaged.windows.tolist() == [1] * 5


def planted(n: int, rng: np.random.Generator, *, both_strands: bool) -> list[tuple[str, int]]:
    """Positives hold MOTIF (or, with both_strands, either orientation); negatives neither."""
    rows = []
    while len(rows) < n:
        sequence = random_dna(40, rng)
        if MOTIF in sequence or reverse_complement(MOTIF) in sequence:
            continue
        if len(rows) % 2:
            motif = MOTIF
            if both_strands and rng.random() < 0.5:
                motif = reverse_complement(MOTIF)
            at = int(rng.integers(0, 40 - len(MOTIF)))
            sequence = sequence[:at] + motif + sequence[at + len(MOTIF) :]
        rows.append((sequence, len(rows) % 2))
    return rows


def write_csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    """``rows`` as a ``sequence,label`` CSV."""
    path.write_text("sequence,label\n" + "".join(f"{s},{y}\n" for s, y in rows))
    return path


def strand_gap(model_dir, records) -> float:
    model = load_model(model_dir)
    task = model.task
    forward = predict_records(model, records, task).scores[:, 1]
    reverse = [reverse_complement_record(r) for r in records]
    return float(np.abs(forward - predict_records(model, reverse, task).scores[:, 1]).mean())


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_rc_augmentation_brings_the_strands_closer(tmp_path):
    """The label is strand-symmetric, but training shows the motif on one strand only."""
    rng = np.random.default_rng(0)
    rows = planted(600, rng, both_strands=False)
    train = write_csv(tmp_path / "train.csv", rows)
    held_out = [
        SequenceRecord(f"h{i}", s) for i, (s, _) in enumerate(planted(200, rng, both_strands=True))
    ]
    gaps = {}
    for rc in (0.0, 0.5):
        out = tmp_path / f"rc{rc}"
        finetune(
            FinetuneConfig(
                train=str(train),
                output_dir=str(out),
                preset="tiny",
                tokenizer="dna-kmer:k=6",
                model={"hidden_size": 32, "ffn_size": 64},
                epochs=6,
                max_tokens=2048,
                warmup_fraction=0.06,  # the settings this was measured with, not the defaults
                evals_per_epoch=1,
                patience=0,
                test_fraction=0.0,
                rc_augment=rc,
                bootstrap=0,
                plots=False,
                training=TrainingConfig(lr=3e-3, schedule="linear", min_lr_ratio=0.0),
            )
        )
        gaps[rc] = strand_gap(out / "model", held_out)
    print(f"mean |P(x) - P(revcomp x)|: {gaps}")
    assert gaps[0.0] > 0.2  # without augmentation the motif is learned on one strand only
    assert gaps[0.5] < 0.7 * gaps[0.0], gaps  # measured 0.42 -> 0.23


def test_predict_command_rc_average_and_windows(tmp_path, capsys):
    from biotransformer.cli import main

    model = classifier("dna")
    model.save_pretrained(tmp_path / "dna")
    (tmp_path / "in.fa").write_text(">a\nACGTTGCAAG\n>long\n" + "ACGGT" * 30 + "\n")
    out = tmp_path / "p.tsv"
    argv = ["predict", "--model", str(tmp_path / "dna"), "--input", str(tmp_path / "in.fa")]
    assert main([*argv, "--out", str(out), "--rc-average", "--window-overlap", "8"]) == 0
    assert len(out.read_text().splitlines()) == 3
    classifier("protein").save_pretrained(tmp_path / "protein")
    (tmp_path / "p.fa").write_text(">p\nMKV\n")
    argv = ["predict", "--model", str(tmp_path / "protein"), "--input", str(tmp_path / "p.fa")]
    assert main([*argv, "--out", str(tmp_path / "protein.tsv"), "--rc-average"]) == 2
    assert "proteins have no reverse complement" in capsys.readouterr().err


def test_finetune_rc_average_selects_tunes_and_stores_on_both_strands(tmp_path):
    """Validation scores in the log, the threshold, metrics.json and later predictions are all
    means over both strands; the head's config makes that the model's default."""
    from sklearn.metrics import roc_auc_score

    from biotransformer.cli import main

    rng = np.random.default_rng(1)
    for split, n in (("train", 160), ("valid", 60), ("test", 60)):
        write_csv(tmp_path / f"{split}.csv", planted(n, rng, both_strands=True))
    out = tmp_path / "run"
    result = finetune(
        FinetuneConfig(
            train=str(tmp_path / "train.csv"),
            valid=str(tmp_path / "valid.csv"),
            test=str(tmp_path / "test.csv"),
            output_dir=str(out),
            preset="tiny",
            tokenizer="dna-kmer:k=3",
            model={"hidden_size": 32, "ffn_size": 64},
            epochs=2,
            max_tokens=1024,
            tune_threshold=True,
            rc_average=True,
            bootstrap=0,
            plots=False,
            training=TrainingConfig(lr=3e-3, schedule="linear", min_lr_ratio=0.0),
        )
    )
    model = load_model(result.model_dir)
    task = model.task
    assert task.rc_average and result.metrics["rc_average"] is True
    valid = list(read_sequences(tmp_path / "valid.csv"))
    averaged = predict_records(model, valid, task)
    forward = predict_records(model, valid, task, rc_average=False)
    assert not np.allclose(averaged.scores, forward.scores)
    truth = [int(r.label) for r in valid]
    logged = [
        json.loads(line)
        for line in (out / "log.jsonl").read_text().splitlines()
        if "valid_auroc" in line
    ]
    at_best = next(entry for entry in logged if entry["step"] == result.best_step)
    assert at_best["valid_auroc"] == pytest.approx(roc_auc_score(truth, averaged.scores[:, 1]))
    assert result.metrics["valid"]["metrics"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(truth, averaged.scores[:, 1])
    )
    argv = ["predict", "--model", str(result.model_dir), "--input", str(tmp_path / "valid.csv")]
    for flag, expected in (([], averaged), (["--no-rc-average"], forward)):
        tsv = tmp_path / f"p{len(flag)}.tsv"
        assert main([*argv, "--out", str(tsv), *flag]) == 0
        rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
        np.testing.assert_allclose(
            [float(row[-1]) for row in rows], expected.scores[:, 1], atol=1e-5
        )


def test_rc_average_is_refused_for_per_base_labels():
    with pytest.raises(ConfigError, match="strand-specific"):
        FinetuneConfig(
            train="t.fa", output_dir="o", task="token-classification", rc_average=True
        ).validate()
