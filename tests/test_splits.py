"""Leakage-free splits: duplicates and reverse complements never cross splits."""

from __future__ import annotations

from collections import Counter

import pytest

from biotransformer.errors import InputError
from biotransformer.io import SequenceRecord, read_sequences
from biotransformer.splits import deduplicate, leakage_report, sequence_key, split_records
from biotransformer.tokenizers import reverse_complement


def record(index: int, sequence: str, label: str = "0") -> SequenceRecord:
    return SequenceRecord(f"r{index}", sequence, label)


def random_dna(rng, n: int, length: int = 20) -> list[str]:
    return ["".join(rng.choice(list("ACGT"), length)) for _ in range(n)]


def test_sequence_key_joins_strands_and_case_for_dna_only():
    assert sequence_key("aacg", "dna") == sequence_key("CGTT", "dna") == "AACG"
    assert sequence_key("MKV", "protein") == "MKV"
    assert sequence_key("ACGG", "protein") != sequence_key("CCGT", "protein")


def test_deduplicate_removes_exact_and_reverse_complement_copies_and_reports_conflicts():
    records = [
        record(0, "AACCGGTA", "1"),
        record(1, "AACCGGTA", "1"),
        record(2, reverse_complement("AACCGGTA"), "0"),
        record(3, "TTTTGGGG", "0"),
    ]
    result = deduplicate(records, "dna")
    assert [r.id for r in result.records] == ["r0", "r3"]
    assert result.n_removed == 2
    assert result.conflicting_ids == (("r0", "r1", "r2"),)


def test_split_has_no_leakage_and_is_stratified():
    import numpy as np

    rng = np.random.default_rng(0)
    sequences = random_dna(rng, 400)
    labels = ["a"] * 300 + ["b"] * 100
    records = [
        record(i, s, label) for i, (s, label) in enumerate(zip(sequences, labels, strict=True))
    ]
    # exact and reverse-complement copies that a naive split could scatter
    records += [record(1000 + i, reverse_complement(sequences[i]), labels[i]) for i in range(50)]
    records += [record(2000 + i, sequences[i].lower(), labels[i]) for i in range(50)]
    result = split_records(records, fractions={"valid": 0.1, "test": 0.2}, alphabet="dna", seed=3)
    splits = result.splits
    assert result.deduplicated.n_removed == 100
    assert sum(len(r) for r in splits.values()) == 400
    assert leakage_report(splits, "dna").groups == ()
    for name, share in (("train", 0.7), ("valid", 0.1), ("test", 0.2)):
        counts = Counter(r.label for r in splits[name])
        assert counts["a"] == round(300 * share)
        assert counts["b"] == round(100 * share)


def test_split_is_reproducible_by_seed():
    import numpy as np

    records = [record(i, s) for i, s in enumerate(random_dna(np.random.default_rng(1), 100))]
    first = split_records(records, fractions={"valid": 0.2}, alphabet="dna", seed=5)
    again = split_records(records, fractions={"valid": 0.2}, alphabet="dna", seed=5)
    other = split_records(records, fractions={"valid": 0.2}, alphabet="dna", seed=6)
    assert first.splits == again.splits
    assert first.splits != other.splits


def test_groups_stay_in_one_split():
    import numpy as np

    sequences = random_dna(np.random.default_rng(2), 120)
    records = [record(i, s) for i, s in enumerate(sequences)]
    groups = [f"cluster{i // 6}" for i in range(120)]
    result = split_records(
        records, fractions={"valid": 0.2, "test": 0.2}, alphabet="dna", groups=groups
    )
    group_of = dict(zip((r.id for r in records), groups, strict=True))
    where = {}
    for name, members in result.splits.items():
        for member in members:
            assert where.setdefault(group_of[member.id], name) == name
    assert len(result.splits["valid"]) == 24 and len(result.splits["test"]) == 24


def test_numeric_labels_are_stratified_by_quantile():
    import numpy as np

    rng = np.random.default_rng(4)
    records = [SequenceRecord(f"r{i}", s, float(i)) for i, s in enumerate(random_dna(rng, 200))]
    result = split_records(records, fractions={"valid": 0.25}, alphabet="dna")
    values = sorted(r.label for r in result.splits["valid"])
    assert len(values) == 50
    assert values[0] < 20 and values[-1] > 180


def test_strata_of_one_record_still_fill_the_splits():
    import numpy as np

    # per-residue label strings: every record is its own stratum
    sequences = random_dna(np.random.default_rng(5), 80)
    records = [SequenceRecord(f"r{i}", s, s.replace("A", "0")) for i, s in enumerate(sequences)]
    result = split_records(records, fractions={"valid": 0.1, "test": 0.1}, alphabet="dna")
    assert [len(result.splits[name]) for name in ("train", "valid", "test")] == [64, 8, 8]


def test_empty_split_is_an_input_error():
    records = [record(0, "ACGTAC"), record(1, "GGGTTT")]
    with pytest.raises(InputError, match="valid split is empty"):
        split_records(records, fractions={"valid": 0.1}, alphabet="dna")


def test_real_gue_split_has_no_leakage(shared_data):
    records = list(read_sequences(shared_data / "gue" / "prom_300_tata" / "train.csv"))
    result = split_records(records, fractions={"valid": 0.1, "test": 0.1}, alphabet="dna")
    assert leakage_report(result.splits, "dna").groups == ()
    shares = {
        name: Counter(r.label for r in members)["1"] / len(members)
        for name, members in result.splits.items()
    }
    assert max(shares.values()) - min(shares.values()) < 0.01
