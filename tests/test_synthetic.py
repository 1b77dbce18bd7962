"""The synthetic planted-motif promoter task and the k-mer baseline."""

from __future__ import annotations

import numpy as np
import pytest

from biotransformer import synthetic
from biotransformer.baselines import kmer_baseline, kmer_baseline_metrics, kmer_baseline_scores
from biotransformer.io import read_sequences

SMALL = {"train": 60, "valid": 10, "test": 20}


def test_same_seed_same_data_other_seed_other_data():
    task = synthetic.SyntheticTask(sizes=SMALL)
    first, again, other = (synthetic.generate(seed, task) for seed in (3, 3, 4))
    assert first == again
    assert first["train"].sequences != other["train"].sequences


def test_sequences_have_the_task_shape():
    task = synthetic.SyntheticTask(sizes=SMALL)
    splits = synthetic.generate(0, task)
    assert {name: len(split.sequences) for name, split in splits.items()} == SMALL
    for split in splits.values():
        assert all(len(s) == task.length and set(s) <= set("ACGT") for s in split.sequences)
        assert set(split.labels) == {0, 1}


def test_boxes_sit_where_the_rule_says():
    """Without mutations or label noise: promoters have the box at a promoter start,
    non-promoters have it only at a decoy start, or not at all."""
    task = synthetic.SyntheticTask(
        conservation=1.0, label_noise=0.0, decoy_rate=0.5, sizes={**SMALL, "train": 400}
    )
    split = synthetic.generate(1, task)["train"]
    promoter, decoy = set(task.promoter_starts()), set(task.decoy_starts())
    assert promoter.isdisjoint(decoy)
    misplaced = 0
    for sequence, label in zip(split.sequences, split.labels, strict=True):
        starts = {i for i in range(len(sequence)) if sequence.startswith(task.box, i)}
        if label:
            assert starts & promoter
        else:
            assert not starts & promoter
            misplaced += bool(starts & decoy)
    assert 0.3 < misplaced / split.labels.count(0) < 0.7


def test_label_noise_flips_about_its_share():
    sizes = {**SMALL, "train": 4000}
    clean = synthetic.generate(0, synthetic.SyntheticTask(label_noise=0.0, sizes=sizes))
    noisy = synthetic.generate(0, synthetic.SyntheticTask(label_noise=0.05, sizes=sizes))
    assert np.mean(clean["train"].labels) == 0.5  # exactly half promoters before noise
    assert clean["train"].sequences == noisy["train"].sequences
    flipped = np.mean(np.not_equal(clean["train"].labels, noisy["train"].labels))
    assert 0.04 < flipped < 0.06


def test_csv_and_fasta_read_back(tmp_path):
    split = synthetic.generate(0, synthetic.SyntheticTask(sizes=SMALL))["valid"]
    table = synthetic.write_csv(split.sequences, split.labels, tmp_path / "valid.csv")
    records = list(read_sequences(table, label_type="class"))
    assert [r.sequence for r in records] == split.sequences
    assert [r.label for r in records] == [str(y) for y in split.labels]
    fasta = synthetic.write_fasta(split.sequences, tmp_path / "corpus.fasta")
    assert [r.sequence for r in read_sequences(fasta)] == split.sequences


def test_kmer_baseline_separates_what_kmer_counts_see():
    rng = np.random.default_rng(0)

    def sample(n: int) -> tuple[list[str], list[int]]:
        labels = [i % 2 for i in range(n)]
        sequences = [
            "".join(rng.choice(list("ACGT"), 30)) + ("GGGCCC" if y else "TTTAAA") for y in labels
        ]
        return sequences, labels

    train, test = sample(80), sample(40)
    assert kmer_baseline(train, test) == 1.0
    assert kmer_baseline_metrics(train, test) == {"mcc": 1.0, "auroc": 1.0}
    scores = kmer_baseline_scores(train, test[0])
    assert scores.shape == (40, 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)


def baseline_mcc(seed: int) -> float:
    splits = synthetic.generate(seed)
    train, test = splits["train"], splits["test"]
    return kmer_baseline((train.sequences, train.labels), (test.sequences, test.labels))


def test_default_task_kmer_baseline_mcc_is_between_0_3_and_0_6():
    assert 0.3 <= baseline_mcc(0) <= 0.6


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_kmer_baseline_mcc_stays_in_range_across_seeds(seed):
    assert 0.3 <= baseline_mcc(seed) <= 0.6
