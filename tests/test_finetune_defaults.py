"""The fine-tuning defaults that adapt to the data and the start, and the honest verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from biotransformer import finetune_defaults as defaults
from biotransformer.config import FinetuneConfig
from biotransformer.finetune_defaults import resolve_batch, resolve_length, resolve_setup
from biotransformer.io import SequenceRecord
from biotransformer.metrics import paired_difference
from biotransformer.tasks import TaskInfo
from biotransformer.verdict import verdict


def config(**values) -> FinetuneConfig:
    return FinetuneConfig(train="train.csv", output_dir="out", **values)


def resolved_run(cfg: FinetuneConfig, lengths: list[int], steps_per_epoch: int, alphabet="dna"):
    resolved = resolve_setup(cfg, alphabet, lengths)
    resolve_batch(resolved, np.asarray(lengths) + 2)  # token lengths: here 2 special tokens
    return resolved, resolve_length(resolved, resolved.config.training, steps_per_epoch)


# ------------------------------------------------------------------ defaults by data and start


def test_a_new_encoder_gets_a_small_model_a_large_lr_and_a_step_floor():
    resolved, training = resolved_run(config(), [60] * 200, steps_per_epoch=10)
    chosen = resolved.config
    assert (chosen.preset, chosen.tokenizer) == ("small", "dna")
    assert training.lr == defaults.NEW_LR and chosen.warmup_fraction == defaults.NEW_WARMUP
    # 10 epochs of 10 steps would be 100 updates: the floor gives a small set 3000
    assert training.max_steps == defaults.NEW_STEPS[0] == 3000
    assert training.warmup_steps == round(defaults.NEW_WARMUP * defaults.NEW_STEPS[0])
    # 200 records: batches of 20, so that an epoch has 10 steps, not 1
    assert chosen.max_tokens == 20 * 62
    assert chosen.patience == defaults.PATIENCE
    assert training.eval_every == 10  # at least once per epoch


def test_a_warm_start_keeps_a_small_lr_and_a_large_set_is_capped():
    resolved, training = resolved_run(config(model_dir="m"), [101] * 40000, steps_per_epoch=1250)
    assert training.lr == defaults.WARM_LR
    assert resolved.config.warmup_fraction == defaults.WARM_WARMUP
    assert resolved.config.tokenizer is None and resolved.config.preset is None  # the model's
    assert training.max_steps == defaults.WARM_STEPS[1]  # 3 epochs would be 3750 steps
    assert training.eval_every == defaults.WARM_STEPS[1] // defaults.EVALUATIONS


@pytest.mark.parametrize(
    ("lengths", "alphabet", "tokenizer"),
    [
        ([300] * 5000, "dna", "dna-kmer:k=3,stride=3"),  # long: 3x fewer tokens
        ([101] * 20000, "dna", "dna-kmer:k=6,stride=1"),  # short and many: overlapping 6-mers
        ([101] * 2000, "dna", "dna"),  # short and few: a 4096-word vocabulary would overfit
        ([40] * 2000, "protein", "protein"),
    ],
)
def test_the_token_scheme_suits_the_lengths(lengths, alphabet, tokenizer):
    assert resolve_setup(config(), alphabet, lengths).config.tokenizer == tokenizer


def test_every_value_given_wins_and_is_reported_as_given():
    cfg = config(
        preset="tiny",
        tokenizer="dna-kmer:k=6",
        epochs=2.0,
        warmup_fraction=0.2,
        max_tokens=4096,
        evals_per_epoch=3,
        patience=0,
    )
    cfg.training.lr = 1e-4
    resolved, training = resolved_run(cfg, [300] * 5000, steps_per_epoch=30)
    assert (resolved.config.preset, resolved.config.tokenizer) == ("tiny", "dna-kmer:k=6")
    assert (training.lr, training.max_steps, training.warmup_steps) == (1e-4, 60, 12)
    assert (resolved.config.max_tokens, training.eval_every, resolved.config.patience) == (
        4096,
        10,
        0,
    )
    given = {key for key, reason in resolved.reasons.items() if reason == "given"}
    assert {"preset", "tokenizer", "epochs", "training.lr", "max_tokens", "patience"} <= given
    assert "tokenizer = dna-kmer:k=6  (given)" in "\n".join(resolved.lines())
    assert cfg.training.lr == 1e-4 and cfg.max_tokens == 4096  # the given config is unchanged


# ------------------------------------------------------------------ the paired bootstrap


def test_paired_difference_of_equal_scores_is_exactly_zero_and_a_better_model_wins():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 400)
    noisy = np.clip(truth + rng.normal(0, 0.6, 400), 0, 1)
    same = paired_difference("binary", truth, noisy, noisy, "mcc", n_resamples=200)
    assert same.difference == 0 and same.ci_low == same.ci_high == 0
    sharp = np.clip(truth + rng.normal(0, 0.2, 400), 0, 1)
    better = paired_difference("binary", truth, sharp, noisy, "mcc", n_resamples=200)
    assert better.a > better.b and 0 < better.ci_low < better.difference < better.ci_high


# ------------------------------------------------------------------ the verdict


def planted(n: int, rng: np.random.Generator) -> list[SequenceRecord]:
    """DNA records whose class is whether GGGGGG was planted: the baseline learns it."""
    records = []
    for i in range(n):
        sequence = list(rng.choice(list("ACT"), 40))
        label = str(i % 2)
        if label == "1":
            sequence[10:16] = "GGGGGG"
        records.append(SequenceRecord(f"r{i}", "".join(sequence), label))
    return records


def test_verdict_of_a_single_class_model_warns_loudly_and_does_not_beat_the_baseline():
    rng = np.random.default_rng(1)
    train, test = planted(200, rng), planted(60, rng)
    task = TaskInfo("classification", ["0", "1"])
    constant = np.tile([0.6, 0.4], (len(test), 1))  # always class '0'
    found = verdict(task, "dna", train, test, constant, split="test", bootstrap=200)
    assert found["baseline"]["value"] > 0.9  # the k-mer baseline sees the planted 6-mer
    assert found["model"] == 0 and not found["beats_baseline"]
    assert found["difference"] < 0 and found["ci95"][1] < 0
    text = "\n".join(found["warnings"])
    assert "predicts the class '0' for every one of the 60 test records" in text
    assert "does not beat the baseline" in text
    assert "the test split has 60 records" in text  # under 100: the interval means little
    json.dumps(found, allow_nan=False)  # strict JSON


def test_verdict_of_a_model_better_than_the_baseline_on_a_positional_task():
    """Regression where only the position of a box matters: the ridge baseline on k-mer
    counts cannot see it, a model given the truth (plus noise) beats it clearly."""
    rng = np.random.default_rng(2)
    records, values = [], []
    for i in range(600):
        sequence = list(rng.choice(list("ACT"), 40))
        start = 5 if i % 2 else 25
        sequence[start : start + 6] = "GGGGGG"
        value = float(i % 2) + rng.normal(0, 0.1)
        records.append(SequenceRecord(f"r{i}", "".join(sequence), f"{value:.3f}"))
        values.append(value)
    task = TaskInfo("regression")
    train, test = records[:400], records[400:]
    scores = (np.asarray(values[400:]) + rng.normal(0, 0.1, 200))[:, None]
    found = verdict(task, "dna", train, test, scores, split="test", bootstrap=200)
    assert found["metric"] == "r2" and found["model"] > 0.8
    assert found["baseline"]["name"] == "k-mer (3-6) counts + ridge regression"
    assert found["beats_baseline"] and found["ci95"][0] > 0.3
    assert found["warnings"] == []


# ------------------------------------------------------------------ a run on defaults


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_default_run_prints_and_writes_its_settings_stops_early_and_has_a_verdict(
    tmp_path, capsys
):
    from biotransformer.finetuning import finetune

    rng = np.random.default_rng(3)
    rows = ["sequence,label"]
    for i in range(120):
        sequence = list(rng.choice(list("ACGT"), 30))
        if i % 2:
            sequence[5:11] = "TATAAA"
        rows.append(f"{''.join(sequence)},{i % 2}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    cfg = FinetuneConfig(
        train=str(tmp_path / "train.csv"),
        output_dir=str(tmp_path / "out"),
        preset="tiny",
        max_steps=60,
        patience=1,
        bootstrap=20,
        plots=False,
    )
    result = finetune(cfg)
    printed = capsys.readouterr().out
    assert "  training.lr = 0.002  (new encoder)" in printed
    # 96 training records of 31 tokens (30 bases and <cls>): 9 a batch, 10 steps an epoch
    assert "  max_tokens = 279  (batches of about 9 records of 31 tokens)" in printed
    written = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert written["training"]["lr"] == 0.002 and written["max_tokens"] == 279
    assert written["patience"] == 1 and written["tokenizer"] == "dna"
    steps = result.metrics["steps"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert max(row["step"] for row in rows) == steps
    if steps < 60:  # stopped early: after the best, one evaluation, in the second half
        assert result.metrics["stopped_early_at"] == steps >= 30
        assert steps - result.best_step == written["training"]["eval_every"]
    found = result.metrics["verdict"]
    assert found["split"] == "test" and found["n"] == 12
    assert set(found) >= {"metric", "model", "baseline", "difference", "ci95", "warnings"}
    assert any("12 records" in warning for warning in found["warnings"])
