"""Long sequences: windows in base coordinates, aggregation, per-base stitching, ALiBi parity."""

from __future__ import annotations

import itertools
import warnings

import h5py
import numpy as np
import pytest
import torch

from biotransformer.config import ModelConfig
from biotransformer.errors import ConfigError, InputError
from biotransformer.heads import MaskedLM, SequenceClassifier, TokenClassifier
from biotransformer.inference import (
    embed_records,
    evaluate_records,
    predict_records,
    write_embeddings_h5,
)
from biotransformer.io import SequenceRecord
from biotransformer.tokenizers import Tokenizer
from biotransformer.windows import (
    RunningAggregate,
    WindowOptions,
    cut_sequence,
    plan_windows,
    token_counts,
    tokens_to_bases,
    window_starts,
)

# Tolerances of windowed vs full-length ALiBi runs (random 8-head model, overlap 128 letters,
# so every stitched base lies at least 64 letters from a window edge): measured 0.04 per base
# and 0.014 for the mean-pooled sequence probability.
TOKEN_TOLERANCE = 0.06
SEQUENCE_TOLERANCE = 0.03


def random_dna(length: int, seed: int = 0) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), length))


def alibi_model(cls: type, tokenizer: Tokenizer, **head: object) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_layers=2,
        num_heads=8,
        ffn_size=64,
        max_length=4096,
        position="alibi",
        initializer_range=0.3,
    )
    model = cls(config, **head).eval()
    model.tokenizer = tokenizer
    return model


@pytest.mark.parametrize(
    "spec", ["dna", "dna-kmer:k=6", "dna-kmer:k=6,stride=6", "dna-kmer:k=3,stride=2", "protein"]
)
def test_windows_fit_cover_and_overlap(spec):
    tokenizer = Tokenizer.from_spec(spec)
    sequence = random_dna(2000) if tokenizer.alphabet == "dna" else "ACDEFGHIKLMNPQRSTVWY" * 100
    spans = cut_sequence(tokenizer, sequence, 100, overlap=20)
    assert spans[0][0] == 0 and spans[-1][1] == len(sequence)
    assert all(b - a == spans[0][1] - spans[0][0] for a, b in spans)
    assert all(next_a < b for (_, b), (next_a, _) in itertools.pairwise(spans))
    counts = token_counts(tokenizer, [sequence[a:b] for a, b in spans])
    assert counts.max() <= 100
    assert counts.max() >= 90  # the window is sized to the scheme, not to one letter per token


def test_windows_shrink_until_ambiguous_fallback_fits():
    tokenizer = Tokenizer.from_spec("dna-kmer:k=6,stride=6")
    sequence = "ACGTNA" * 400  # each N breaks the k-mer grid into single letters
    spans = cut_sequence(tokenizer, sequence, 50, overlap=0)
    assert token_counts(tokenizer, [sequence[a:b] for a, b in spans]).max() <= 50
    assert spans[-1][1] == len(sequence)


def test_bpe_windows_fit():
    sequences = [random_dna(3000, seed) for seed in range(3)]
    tokenizer = Tokenizer.from_spec("dna-bpe:vocab=64", train_sequences=sequences)
    spans = cut_sequence(tokenizer, sequences[0], 64, overlap=16)
    assert token_counts(tokenizer, [sequences[0][a:b] for a, b in spans]).max() <= 64


def test_window_starts_and_bad_overlap():
    assert window_starts(10, 4, 1).tolist() == [0, 3, 6]
    assert window_starts(4, 4, 1).tolist() == [0]
    with pytest.raises(ConfigError, match="overlap"):
        cut_sequence(Tokenizer.from_spec("dna"), "ACGT" * 50, 20, overlap=40)
    with pytest.raises(ConfigError, match="aggregate"):
        WindowOptions(aggregate="median")


def test_tokens_to_bases_takes_the_token_starting_at_each_base():
    tokenizer = Tokenizer.from_spec("dna-kmer:k=3")
    sequence = "ACGTAC"
    offsets = tokenizer.offsets(sequence)  # <cls>, then k-mers starting at 0..3
    values = np.arange(len(offsets), dtype=float)[:, None]
    per_base = tokens_to_bases(values, offsets, len(sequence))[:, 0]
    assert per_base.tolist() == [1, 2, 3, 4, 4, 4]


@pytest.mark.parametrize(("how", "expected"), [("mean", [3.0, 7.0]), ("max", [5.0, 7.0])])
def test_running_aggregate_folds_a_records_windows_added_in_separate_steps(how, expected):
    records = [SequenceRecord("a", "A" * 30), SequenceRecord("b", "C" * 5)]
    plan = plan_windows(records, Tokenizer.from_spec("dna"), 11, WindowOptions(overlap=0))
    assert plan.owner.tolist() == [0, 0, 0, 1]
    values = np.array([[1.0], [3.0], [5.0], [7.0]], np.float32)
    running = RunningAggregate(how, len(records))
    running.add(plan.owner[:2], values[:2])  # record a's windows span two groups
    running.add(plan.owner[2:], values[2:])
    result = running.result()
    assert result[:, 0].tolist() == expected
    assert result.dtype == np.float32


def test_alibi_token_windows_match_full_length_and_stitch_exactly():
    tokenizer = Tokenizer.from_spec("dna")
    model = alibi_model(TokenClassifier, tokenizer, num_labels=2)
    task = model.task
    record = SequenceRecord("long", random_dna(1500))
    full = predict_records(model, [record], task).scores[0][1:]  # drop <cls>
    model.config.max_length = 258
    options = WindowOptions(overlap=128)
    windowed = predict_records(model, [record], task, windows=options)
    assert windowed.windows.tolist() == [11] and windowed.per_base(0)
    stitched = windowed.scores[0]
    assert stitched.shape == (1500, 2) and not np.isnan(stitched).any()
    assert np.abs(stitched - full).max() < TOKEN_TOLERANCE
    assert len(windowed.predicted[0]) == 1500

    spans = cut_sequence(tokenizer, record.sequence, 258, 128)
    pieces = [SequenceRecord(f"w{i}", record.sequence[a:b]) for i, (a, b) in enumerate(spans)]
    alone = predict_records(model, pieces, task).scores
    covered = np.zeros(1500, int)
    for a, b in spans:
        covered[a:b] += 1
    for (a, b), scores in zip(spans, alone, strict=True):
        single = np.flatnonzero(covered[a:b] == 1)
        np.testing.assert_allclose(stitched[a + single], scores[1:][single], atol=1e-6)


def test_alibi_sequence_windows_match_full_length():
    tokenizer = Tokenizer.from_spec("dna")
    model = alibi_model(SequenceClassifier, tokenizer, num_labels=2, pooling="mean")
    task = model.task
    records = [SequenceRecord("long", random_dna(1500)), SequenceRecord("short", random_dna(80))]
    full = predict_records(model, records, task).scores
    model.config.max_length = 258
    windowed = predict_records(model, records, task, windows=WindowOptions(overlap=128))
    assert windowed.windows.tolist() == [11, 1]
    assert np.abs(windowed.scores - full).max() < SEQUENCE_TOLERANCE
    np.testing.assert_allclose(windowed.scores[1], full[1], atol=1e-6)
    largest = predict_records(
        model, records, task, windows=WindowOptions(overlap=128, aggregate="max")
    )
    assert (largest.scores[0] >= windowed.scores[0] - 1e-9).all()


def test_learned_positions_long_input_never_crashes_or_truncates(tmp_path):
    tokenizer = Tokenizer.from_spec("dna-kmer:k=3,stride=3")
    torch.manual_seed(0)
    config = ModelConfig.from_preset(
        "tiny", vocab_size=tokenizer.vocab_size, position="learned", max_length=32
    )
    classifier = SequenceClassifier(config, num_labels=2).eval()
    classifier.tokenizer = tokenizer
    records = [SequenceRecord("long", random_dna(1000)), SequenceRecord("short", "ACGTACGTA")]
    labelled = [SequenceRecord(r.id, r.sequence, label="1") for r in records]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cropping a sequence would warn
        predicted = predict_records(classifier, records, classifier.task)
    assert predicted.windows.tolist()[1] == 1 and predicted.windows[0] > 1
    metrics, predictions = evaluate_records(classifier, labelled, classifier.task, bootstrap=0)
    assert predictions.windows.tolist()[0] > 1 and metrics["n"] == 2

    lm = MaskedLM(config).eval()
    lm.tokenizer = tokenizer
    result, _ = evaluate_records(lm, records, lm.task, bootstrap=0)
    assert result["n"] > 2  # every window of the long record is scored

    embeddings = embed_records(lm, records, per_token=True)
    assert embeddings.windows.tolist()[0] > 1
    assert embeddings.offsets.tolist()[1] == 1000  # one row per base of the long record
    assert embeddings.offsets[2] - embeddings.offsets[1] == 3  # three 3-mers, per token
    write_embeddings_h5(embeddings, tmp_path / "e.h5", attributes={})
    with h5py.File(tmp_path / "e.h5") as handle:
        assert handle["windows"][0] > 1


# ---------------------------------------------------------------------------------------------
# A long record streams through its windows
# ---------------------------------------------------------------------------------------------


def test_a_record_cut_more_ways_than_a_group_holds_gives_the_one_group_results(monkeypatch):
    """Windows run a group at a time (``CHUNK_LETTERS``) aggregate and stitch to what one
    group of all windows gives: the running mean and max carry across groups."""
    import biotransformer.inference as inference

    tokenizer = Tokenizer.from_spec("dna")
    records = [
        SequenceRecord("short", random_dna(40, seed=1)),
        SequenceRecord("long", random_dna(3000, seed=2)),
        SequenceRecord("tail", random_dna(70, seed=3)),
    ]
    classifier = alibi_model(SequenceClassifier, tokenizer, num_labels=3, pooling="mean")
    classifier.config.max_length = 130
    lm = alibi_model(MaskedLM, tokenizer)
    lm.config.max_length = 130

    def run() -> tuple:
        mean = predict_records(classifier, records, classifier.task)
        largest = predict_records(
            classifier, records, classifier.task, windows=WindowOptions(aggregate="max")
        )
        embedded = embed_records(lm, records, per_token=True)
        return mean, largest, embedded

    whole = run()
    monkeypatch.setattr(inference, "CHUNK_LETTERS", 500)  # the long record: 6+ groups
    grouped = run()
    assert whole[0].windows.tolist() == [1, 31, 1]
    for one, many in zip(whole[:2], grouped[:2], strict=True):
        np.testing.assert_allclose(many.scores, one.scores, atol=1e-6)
        assert many.predicted == one.predicted
    np.testing.assert_allclose(grouped[2].pooled, whole[2].pooled, atol=1e-6)
    np.testing.assert_array_equal(grouped[2].offsets, whole[2].offsets)
    np.testing.assert_allclose(grouped[2].tokens, whole[2].tokens, atol=1e-6)
    assert whole[2].offsets[2] - whole[2].offsets[1] == 3000  # per base of the long record


def test_planning_a_long_record_never_tokenizes_it_whole(monkeypatch):
    """A record far longer than the model's window is cut without tokenizing all of it at
    once: no tokenizer call sees more than one batch of windows."""
    tokenizer = Tokenizer.from_spec("dna-kmer:k=3,stride=3")
    seen: list[int] = []
    encode = tokenizer.encode_batch

    def counting(sequences, **options):
        seen.append(sum(map(len, sequences)))
        return encode(sequences, **options)

    monkeypatch.setattr(tokenizer, "encode_batch", counting)
    record = SequenceRecord("chr", random_dna(400_000))
    plan = plan_windows([record, SequenceRecord("short", "ACGTACGTAC")], tokenizer, 66)
    assert plan.windows_per_record().tolist()[1] == 1
    windows = int(plan.windows_per_record()[0])
    assert windows > 2 * 1024  # more windows than one tokenizer batch holds
    assert max(seen) < 1024 * 200  # at most a batch of 1,024 windows of <= 192 letters
    assert plan.start[0] == 0 and plan.end[windows - 1] == 400_000


def test_a_bad_letter_deep_in_a_long_record_is_reported_at_its_place():
    tokenizer = Tokenizer.from_spec("dna:ambiguous=error")
    sequence = random_dna(5000)
    record = SequenceRecord("chr7", sequence[:4321] + "N" + sequence[4322:], line=12)
    with pytest.raises(InputError) as caught:
        plan_windows([record], tokenizer, 100)
    assert caught.value.record == "chr7" and caught.value.line == 12
    assert caught.value.position == 4322  # 1-based, in the whole record
