"""prepare_corpus and ShardDataset: round trips, windows, the split, re-runs, real data."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from biotransformer.data.shards import FORMAT_VERSION, ShardDataset, prepare_corpus
from biotransformer.errors import ConfigError, InputError
from biotransformer.tokenizers import Tokenizer


def _random_dna(rng: np.random.Generator, size: int) -> str:
    return np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, size)].tobytes().decode()


def _write_fasta(path: Path, records: dict[str, str], width: int = 70) -> Path:
    lines = []
    for name, sequence in records.items():
        lines.append(f">{name} some description")
        lines += [sequence[i : i + width] for i in range(0, len(sequence), width)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _read_split(directory: Path, split: str) -> list[tuple[str, int, int, np.ndarray]]:
    manifest = json.loads((directory / "manifest.json").read_text())
    out = []
    for name in manifest["splits"][split]["shards"]:
        with h5py.File(directory / name, "r") as handle:
            tokens, offsets = handle["tokens"][:], handle["offsets"][:]
            for i, (record, start, end) in enumerate(
                zip(handle["ids"].asstr()[:], handle["starts"][:], handle["ends"][:], strict=True)
            ):
                out.append((record, int(start), int(end), tokens[offsets[i] : offsets[i + 1]]))
    return out


def _reassemble(windows, tokenizer: Tokenizer) -> dict[str, str]:
    """Place each decoded window at its start; overlapping windows must agree."""
    records: dict[str, bytearray] = {}
    for record, start, end, tokens in windows:
        text = tokenizer.decode(tokens).encode()
        assert len(text) == end - start
        buffer = records.setdefault(record, bytearray())
        buffer.extend(b"?" * (end - len(buffer)))
        placed = bytes(buffer[start:end])
        assert all(old in (ord("?"), new) for old, new in zip(placed, text, strict=True))
        buffer[start:end] = text
    return {record: buffer.decode() for record, buffer in records.items()}


@pytest.mark.parametrize("spec", ["dna", "dna-kmer:k=4", "dna-kmer:k=3,stride=3"])
def test_windows_reassemble_each_record(tmp_path, spec):
    rng = np.random.default_rng(0)
    records = {"chr1": _random_dna(rng, 5003), "chr2": _random_dna(rng, 300)}
    records["chr1"] = records["chr1"][:1000] + "acgtt" * 20 + records["chr1"][1100:]
    fasta = _write_fasta(tmp_path / "genome.fa", records)
    tokenizer = Tokenizer.from_spec(spec)
    summary = prepare_corpus(
        [fasta], tokenizer, tmp_path / "out", window_tokens=64, valid_fraction=0, progress=False
    )
    assert summary.sequences["valid"] == 0 and summary.dropped_windows == 0
    windows = _read_split(tmp_path / "out", "train")
    assert max(len(w[3]) for w in windows) <= 64
    rebuilt = _reassemble(windows, tokenizer)
    assert rebuilt == {name: seq.upper() for name, seq in records.items()}


def test_fast_grouped_tokenising_equals_window_by_window(tmp_path):
    rng = np.random.default_rng(1)
    sequence = list(_random_dna(rng, 3000))
    for position in rng.integers(0, 3000, 40):
        sequence[position] = "N"
    fasta = _write_fasta(tmp_path / "g.fa", {"g": "".join(sequence)})
    for spec in ("dna", "dna-kmer:k=5", "dna-kmer:k=5,ambiguous=fallback"):
        tokenizer = Tokenizer.from_spec(spec)
        prepare_corpus(
            [fasta],
            tokenizer,
            tmp_path / spec,
            window_tokens=100,
            stride=60,
            valid_fraction=0,
            progress=False,
        )
        for _, start, end, tokens in _read_split(tmp_path / spec, "train"):
            expected = tokenizer.encode("".join(sequence[start:end]), add_special_tokens=False)
            assert np.array_equal(tokens, expected), spec


def test_round_trip_of_many_records_and_tokenizer_from_attributes(tmp_path):
    rng = np.random.default_rng(2)
    records = {f"seq{i}": _random_dna(rng, int(rng.integers(20, 200))) for i in range(60)}
    fasta = tmp_path / "many.fa.gz"
    with gzip.open(fasta, "wt") as handle:
        handle.write("".join(f">{k}\n{v}\n" for k, v in records.items()))
    tokenizer = Tokenizer.from_spec("dna")
    summary = prepare_corpus(
        [fasta], tokenizer, tmp_path / "out", valid_fraction=0.1, progress=False
    )
    assert summary.split_by == "records"
    assert summary.sequences == {"train": 54, "valid": 6}
    seen = {}
    for split in ("train", "valid"):
        for record, start, end, tokens in _read_split(tmp_path / "out", split):
            assert (start, end) == (0, len(records[record]))
            seen[record] = tokenizer.decode(tokens)
    assert seen == records
    dataset = ShardDataset(tmp_path / "out")
    assert dataset.tokenizer == tokenizer
    with h5py.File(tmp_path / "out" / "train-00000.h5", "r") as handle:
        assert handle.attrs["format_version"] == FORMAT_VERSION
        assert handle["tokens"].dtype == np.uint8
        source = json.loads(handle.attrs["sources"])[0]
        assert source["name"] == "many.fa.gz" and len(source["sha256"]) == 64


def test_single_record_holds_out_blocks_with_a_window_gap(tmp_path):
    rng = np.random.default_rng(3)
    fasta = _write_fasta(tmp_path / "g.fa", {"g": _random_dna(rng, 200_000)})
    summary = prepare_corpus(
        [fasta],
        Tokenizer.from_spec("dna"),
        tmp_path / "out",
        window_tokens=500,
        valid_fraction=0.05,
        progress=False,
    )
    assert summary.split_by == "blocks"
    train = _read_split(tmp_path / "out", "train")
    valid = _read_split(tmp_path / "out", "valid")
    valid_bases = sum(end - start for _, start, end, _ in valid)
    assert 0.04 < valid_bases / 200_000 < 0.07
    covered = np.zeros(200_000, dtype=np.int8)
    for _, start, end, _ in valid:
        covered[start:end] = 1
    for _, start, end, _ in train:
        lo, hi = max(start - 500, 0), min(end + 500, 200_000)
        assert not covered[lo:hi].any()


def test_masked_windows_dropped_and_soft_masking_optional(tmp_path):
    rng = np.random.default_rng(4)
    sequence = _random_dna(rng, 400) + "N" * 400 + _random_dna(rng, 200).lower() + "ACGT" * 50
    fasta = _write_fasta(tmp_path / "g.fa", {"g": sequence})
    tokenizer = Tokenizer.from_spec("dna")
    kept = prepare_corpus(
        [fasta], tokenizer, tmp_path / "a", window_tokens=200, valid_fraction=0, progress=False
    )
    assert kept.dropped_windows == 2
    dropped = prepare_corpus(
        [fasta],
        tokenizer,
        tmp_path / "b",
        window_tokens=200,
        valid_fraction=0,
        keep_soft_masked=False,
        progress=False,
    )
    assert dropped.dropped_windows == 3


def test_rerun_is_a_noop_unless_forced_and_other_inputs_refused(tmp_path):
    rng = np.random.default_rng(5)
    fasta = _write_fasta(tmp_path / "g.fa", {"g": _random_dna(rng, 1000)})
    tokenizer = Tokenizer.from_spec("dna")
    first = prepare_corpus([fasta], tokenizer, tmp_path / "out", progress=False)
    shard = tmp_path / "out" / "train-00000.h5"
    stamp = shard.stat().st_mtime_ns
    again = prepare_corpus([fasta], tokenizer, tmp_path / "out", progress=False)
    assert again.skipped and again.sequences == first.sequences
    assert shard.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="--force"):
        prepare_corpus([fasta], tokenizer, tmp_path / "out", window_tokens=100, progress=False)
    forced = prepare_corpus([fasta], tokenizer, tmp_path / "out", force=True, progress=False)
    assert not forced.skipped


def test_interrupted_prepare_leaves_no_complete_looking_shard(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    fasta = _write_fasta(tmp_path / "g.fa", {"g": _random_dna(rng, 5000)})
    import biotransformer.data.shards as shards

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards._ShardWriter, "_close_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus([fasta], Tokenizer.from_spec("dna"), tmp_path / "out", progress=False)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names and all(name.endswith(".partial") for name in names)
    with pytest.raises(InputError, match="no manifest"):
        ShardDataset(tmp_path / "out")
    monkeypatch.undo()
    prepare_corpus([fasta], Tokenizer.from_spec("dna"), tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("*.partial"))


def test_dataset_crops_adds_specials_and_reopens_per_process(tmp_path):
    rng = np.random.default_rng(7)
    records = {
        f"p{i}": "M" + "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 300)) for i in range(4)
    }
    fasta = _write_fasta(tmp_path / "p.faa", records)
    tokenizer = Tokenizer.from_spec("protein")
    prepare_corpus([fasta], tokenizer, tmp_path / "out", valid_fraction=0, progress=False)
    dataset = ShardDataset(tmp_path / "out", max_length=50, seed=1)
    assert list(dataset.lengths) == [50] * 4 and dataset.num_tokens == 4 * 301
    item = dataset[2]
    assert item["index"] == 2 and len(item["input_ids"]) == 50
    assert item["input_ids"][0] == tokenizer.cls_id and item["input_ids"][-1] == tokenizer.eos_id
    crop = tokenizer.decode(item["input_ids"])
    assert crop in records[dataset.location(2)[0]]
    assert np.array_equal(dataset[2]["input_ids"], item["input_ids"])
    dataset.set_epoch(1)
    assert not np.array_equal(dataset[2]["input_ids"], item["input_ids"])
    clone = pickle.loads(pickle.dumps(dataset))
    assert np.array_equal(clone[2]["input_ids"], dataset[2]["input_ids"])
    full = ShardDataset(tmp_path / "out")
    assert tokenizer.decode(full[0]["input_ids"]) == records[full.location(0)[0]]


def test_not_fasta_and_missing_files_are_input_errors(tmp_path):
    tokenizer = Tokenizer.from_spec("dna")
    with pytest.raises(InputError, match="no such file"):
        prepare_corpus([tmp_path / "absent.fa"], tokenizer, tmp_path / "out")
    bad = tmp_path / "bad.fa"
    bad.write_text(">r1\nACGT\n>r2\nAC1GT\n")
    with pytest.raises(InputError, match="r2"):
        prepare_corpus([bad], tokenizer, tmp_path / "out", valid_fraction=0, progress=False)


def test_real_genome_and_proteins(shared_data, tmp_path):
    genome = next((shared_data / "genomes").glob("*.fna.gz"))
    proteins = next((shared_data / "proteins").glob("*.faa.gz"))
    dna = Tokenizer.from_spec("dna-kmer:k=6")
    summary = prepare_corpus(
        [genome], dna, tmp_path / "g", window_tokens=1000, valid_fraction=0.02, progress=False
    )
    assert summary.split_by == "blocks" and summary.bases == 2_463_666
    windows = _read_split(tmp_path / "g", "train") + _read_split(tmp_path / "g", "valid")
    with gzip.open(genome, "rt") as handle:
        chromosome = "".join(line.strip() for line in handle if not line.startswith(">"))
    for _, start, end, tokens in windows[::50]:
        assert dna.decode(tokens) == chromosome[start:end].upper()
    single = Tokenizer.from_spec("dna")
    prepare_corpus([genome], single, tmp_path / "whole", valid_fraction=0, progress=False)
    rebuilt = _reassemble(_read_split(tmp_path / "whole", "train"), single)
    assert rebuilt == {"NZ_LN831026.1": chromosome.upper()}
    protein = Tokenizer.from_spec("protein")
    summary = prepare_corpus(
        [proteins], protein, tmp_path / "p", valid_fraction=0.05, progress=False
    )
    assert summary.split_by == "records" and summary.sequences["valid"] > 50
    dataset = ShardDataset(tmp_path / "p", "valid", max_length=256)
    assert dataset.tokenizer == protein and max(dataset.lengths) <= 256


def test_cli_prepare_writes_shards_and_reports_json(tmp_path, capsys):
    from biotransformer.cli import main

    fasta = _write_fasta(tmp_path / "g.fa", {"g": "ACGT" * 500})
    out = tmp_path / "out"
    assert main(["prepare", str(fasta), "--tokenizer", "dna", "--out", str(out), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["sequences"]["train"] == 2
    assert (
        main(
            [
                "prepare",
                str(fasta),
                "--tokenizer",
                "dna",
                "--out",
                str(out),
                "--window-tokens",
                "100",
                "--quiet",
            ]
        )
        == 2
    )
    assert "--force" in capsys.readouterr().err


def test_a_corpus_of_only_n_windows_is_refused(tmp_path):
    fasta = tmp_path / "gaps.fa"
    fasta.write_text(">scaffold\nNNNNNNNNNN\n")
    with pytest.raises(InputError, match=r"gaps\.fa.*no sequence left.*Fix: check"):
        prepare_corpus([fasta], Tokenizer.from_spec("dna"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def _damage(shard: Path, how: str) -> None:
    data = shard.read_bytes()
    if how == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif how == "zero-tail":  # same size, last bytes zeroed (HDF5 metadata or data lost)
        shard.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))
    elif how == "delete":
        shard.unlink()
    else:  # a shard that opens but holds fewer sequences than prepare wrote
        with h5py.File(shard, "a") as handle:
            for key in ("offsets", "ids", "starts", "ends"):
                handle[key].resize((len(handle[key]) - 1,))


@pytest.mark.parametrize("how", ["truncate", "zero-tail", "delete", "shrink"])
def test_a_damaged_shard_is_not_called_complete_and_pretrain_names_it(tmp_path, how, capsys):
    from biotransformer.cli import main

    rng = np.random.default_rng(7)
    fasta = _write_fasta(tmp_path / "g.fa", {f"r{i}": _random_dna(rng, 300) for i in range(50)})
    tokenizer = Tokenizer.from_spec("dna")
    out = tmp_path / "out"
    first = prepare_corpus([fasta], tokenizer, out, window_tokens=64, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    shard = out / "train-00000.h5"
    assert manifest["files"][shard.name]["bytes"] == shard.stat().st_size
    _damage(shard, how)

    # the dataset (and so pretrain) refuses it, naming the shard and the fix
    with pytest.raises(InputError, match=f"{shard}.*damaged.*prepare' again"):
        ShardDataset(out)
    overrides = [f"data.shard_dir={out}", "data.train_files=[]", "data.tokenizer=null"]
    status = main(
        ["pretrain", "pretrain_dna_tiny", *overrides, "--output-dir", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert str(shard) in err and "prepare' again" in err

    # a re-run of prepare with the same inputs rebuilds it rather than calling it complete
    again = prepare_corpus([fasta], tokenizer, out, window_tokens=64, progress=False)
    assert not again.skipped
    assert again.sequences == first.sequences
    assert len(ShardDataset(out)) == first.sequences["train"]


def test_a_manifest_that_is_not_one_is_an_input_error(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a manifest written by prepare"):
        ShardDataset(tmp_path)
