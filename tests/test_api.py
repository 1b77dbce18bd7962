"""The Python API (biotransformer.api, exported from biotransformer): the same numbers as the
command line, batch-independent embeddings, presets with tokenizers, the tokenizer's HF-style
call, model sources, and a fine-tune from data in memory that learns a planted signal."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

import biotransformer as bt
from biotransformer.cli import main
from biotransformer.errors import ConfigError, InputError


def planted_data(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Random 24 bp DNA: label 1 drawn at 70% GC, label 0 at 30% GC (a planted composition
    effect that a tiny model learns in a few steps)."""
    rng = np.random.default_rng(seed)
    sequences, labels = [], []
    for i in range(n):
        gc = 0.7 if i % 2 else 0.3
        weights = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
        sequences.append("".join(rng.choice(list("ACGT"), 24, p=weights)))
        labels.append(i % 2)
    return sequences, labels


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> bt.RunResult:
    """The worked example (recipes/python_api_example.py) run on a labelled FASTA of the
    planted GC signal: a tiny classifier fine-tuned through bt.finetune, its embeddings and
    their plot."""
    import importlib.util

    directory = tmp_path_factory.mktemp("example")
    sequences, labels = planted_data(300, 0)
    names = {0: "at_rich", 1: "gc_rich"}
    fasta = directory / "labelled.fasta"
    with fasta.open("w") as handle:
        for i, (sequence, label) in enumerate(zip(sequences, labels, strict=True)):
            handle.write(f">r{i} label={names[label]}\n{sequence}\n")
    path = repo_root / "recipes" / "python_api_example.py"
    spec = importlib.util.spec_from_file_location("python_api_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = ["--fasta", str(fasta), "--out", str(directory / "out"), "--max-steps", "12"]
    return example.main([*argv, "--lr", "3e-3", "--bootstrap", "20"])


def test_data_in_memory_becomes_the_file_finetune_reads(tmp_path: Path) -> None:
    """(sequences, labels), records, a mapping and a DataFrame are written as the CSV that
    read_sequences reads back to the same sequences and labels."""
    from biotransformer import api
    from biotransformer.config import ReadOptions
    from biotransformer.finetune_data import read_labelled

    sequences, labels = planted_data(6, 7)
    pairs = zip(sequences, labels, strict=True)
    records = [bt.SequenceRecord(f"r{i}", s, str(y)) for i, (s, y) in enumerate(pairs)]
    given = [(sequences, labels), records, {"sequence": sequences, "label": labels}]
    pandas = pytest.importorskip("pandas")
    given.append(pandas.DataFrame({"sequence": sequences, "label": labels}))
    for n, data in enumerate(given):
        path = api._labelled_file(data, tmp_path / f"{n}.csv", {})
        read = read_labelled(path, "classification", ReadOptions())
        assert [r.sequence for r in read] == sequences
        assert [r.label for r in read] == [str(y) for y in labels]
    with pytest.raises(InputError, match="6 sequences but 2 labels"):
        api._labelled_file((sequences, labels[:2]), tmp_path / "x.csv", {})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_finetune_of_data_in_memory_keeps_its_data_and_reruns_from_its_config(
    tmp_path: Path,
) -> None:
    """The run copies the CSV files written for data in memory into OUT/inputs/, and its
    config.yaml names the copies: the command line reruns it to the same numbers."""
    train, valid = planted_data(200, 1), planted_data(60, 2)
    out = tmp_path / "run"
    keys = {"max_steps": 30, "training": {"lr": 3e-3}, "bootstrap": 0, "plots": False}
    result = bt.finetune(
        train=train, valid=valid, task="classification", preset="tiny", out=out, **keys
    )
    assert result.metrics["valid"]["metrics"]["mcc"]["value"] > 0.7
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["train"], config["valid"]) == (
        str(out / "inputs" / "train.csv"),
        str(out / "inputs" / "valid.csv"),
    )
    with (out / "inputs" / "train.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["sequence"] for row in rows] == train[0]
    assert [int(row["label"]) for row in rows] == train[1]

    rerun = tmp_path / "rerun"
    assert main(["finetune", "--config", str(out / "config.yaml"), "--out", str(rerun)]) == 0
    first, again = (json.loads((run / "metrics.json").read_text()) for run in (out, rerun))
    assert again["valid"] == first["valid"] and again["test"] == first["test"]
    # The copies are the run's own files: --overwrite replaces them with the new data's
    bt.finetune(train=valid, task="classification", preset="tiny", out=out, overwrite=True, **keys)
    with (out / "inputs" / "train.csv").open(newline="") as handle:
        assert [row["sequence"] for row in csv.DictReader(handle)] == valid[0]
    assert not (out / "inputs" / "valid.csv").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_worked_example_learns_the_planted_signal(finetuned: bt.RunResult) -> None:
    assert finetuned.outcome == "finished"
    assert finetuned.metrics["test"]["metrics"]["mcc"]["value"] > 0.7
    assert finetuned.metrics["labels"] == ["at_rich", "gc_rich"]
    assert finetuned.model_dir == finetuned.output_dir / "model"
    assert (finetuned.output_dir.parent / "embeddings_pca.png").stat().st_size > 10_000
    model = finetuned.model
    assert isinstance(model, bt.SequenceClassifier)
    sequences, labels = planted_data(40, 3)
    predictions = model.predict(sequences)
    assert len(predictions.predicted) == 40
    names = {0: "at_rich", 1: "gc_rich"}
    hits = [p == names[y] for p, y in zip(predictions.predicted, labels, strict=True)]
    accuracy = np.mean(hits)
    assert accuracy > 0.8


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_api_and_cli_give_identical_numbers(
    finetuned: bt.RunResult, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model_dir = str(finetuned.model_dir)
    sequences, _ = planted_data(30, 4)
    sequences[0] = sequences[0] * 4  # longer than the tiny model's 64 tokens: cut into windows
    fasta = tmp_path / "x.fa"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(sequences)))
    model = bt.load_model(model_dir)

    argv = ["predict", "--model", model_dir, "--input", str(fasta)]
    assert main([*argv, "--out", str(tmp_path / "p.tsv")]) == 0
    with (tmp_path / "p.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    predictions = model.predict(fasta)
    assert [row["id"] for row in rows] == predictions.ids == [f"s{i}" for i in range(30)]
    assert [row["prediction"] for row in rows] == predictions.predicted
    from_cli = np.array([[float(row["prob_at_rich"]), float(row["prob_gc_rich"])] for row in rows])
    assert np.array_equal(from_cli, predictions.scores)
    assert np.array_equal(model.predict(sequences).scores, predictions.scores)  # list == file

    argv = ["embed", "--model", model_dir, "--input", str(fasta), "--layers", "1", "-1"]
    assert main([*argv, "--per-token", "--out", str(tmp_path / "e.h5")]) == 0
    embeddings = model.embed(fasta, layers=[1, -1], per_token=True)
    assert embeddings.windows is not None and embeddings.windows[0] > 1
    with h5py.File(tmp_path / "e.h5") as handle:
        assert np.array_equal(handle["embeddings"][:], embeddings.pooled)
        assert np.array_equal(handle["tokens"][:], embeddings.tokens)
        assert np.array_equal(handle["offsets"][:], embeddings.offsets)
    assert main([*argv, "--pooling", "max", "--out", str(tmp_path / "m.h5")]) == 0
    largest = model.embed(fasta, layers=[1, -1], pooling="max")
    with h5py.File(tmp_path / "m.h5") as handle:
        assert np.array_equal(handle["embeddings"][:], largest.pooled)
        assert handle.attrs["pooling"] == "max"
    # a record that fits: the maximum over its tokens; one cut: the mean of its windows' maxima
    uncut = slice(embeddings.offsets[1], embeddings.offsets[2])
    assert np.array_equal(largest.pooled[1], embeddings.tokens[uncut].max(axis=0))
    assert (largest.pooled[0] <= embeddings.tokens[: embeddings.offsets[1]].max(axis=0)).all()

    reference = tmp_path / "ref.fa"
    reference.write_text(f">ref\n{sequences[1]}\n")
    first = sequences[1][4]
    other = "A" if first != "A" else "C"
    variants = tmp_path / "v.tsv"
    variants.write_text(f"id\tposition\tref\talt\nv1\t5\t{first}\t{other}\n")
    argv = ["score-variants", "--model", model_dir, "--reference", str(reference)]
    assert main([*argv, "--variants", str(variants), "--out", str(tmp_path / "s.tsv")]) == 0
    with (tmp_path / "s.tsv").open() as handle:
        (row,) = list(csv.DictReader(handle, delimiter="\t"))
    scored = model.score_variants(reference, [f"{first}5{other}"])
    assert float(row["delta_gc_rich"]) == scored.scores["delta_gc_rich"][0]
    capsys.readouterr()


@pytest.fixture(scope="module")
def tiny_dna() -> bt.MaskedLM:
    torch.manual_seed(0)
    return bt.MaskedLM.from_preset("tiny", hidden_size=32, num_heads=4, ffn_size=64)


def test_a_sequence_alone_and_inside_a_padded_batch_agree(tiny_dna: bt.MaskedLM) -> None:
    short = "ACGTTGCAGT"
    batch = [short, "GATTACA" * 6, "TTAGGC" * 9, "CCA"]
    tokenized = tiny_dna.tokenizer(batch)
    assert (tokenized["attention_mask"][0] == 0).any()  # the short one is padded in the batch
    alone = tiny_dna.embed([short], per_token=True)
    together = tiny_dna.embed(batch, per_token=True)
    np.testing.assert_allclose(together.pooled[0], alone.pooled[0], rtol=0, atol=1e-5)
    rows = slice(together.offsets[0], together.offsets[1])
    np.testing.assert_allclose(together.tokens[rows], alone.tokens, rtol=0, atol=1e-5)
    # the model called directly on the HF-style batch: padding changes no real token's logits
    with torch.no_grad():
        logits = tiny_dna(**tokenized).logits
        single = tiny_dna(**tiny_dna.tokenizer([short])).logits
    np.testing.assert_allclose(logits[0, : single.shape[1]], single[0], rtol=0, atol=1e-5)


def test_max_pooling_is_the_maximum_over_tokens(tiny_dna: bt.MaskedLM) -> None:
    sequences = ["ACGTTGCAGT", "GATTACAGATTACA"]
    tokens = tiny_dna.embed(sequences, per_token=True)
    pooled = tiny_dna.embed(sequences, pooling="max")
    assert pooled.tokens is None
    for i in range(2):
        rows = tokens.tokens[tokens.offsets[i] : tokens.offsets[i + 1]]
        assert np.array_equal(pooled.pooled[i], rows.max(axis=0))
        np.testing.assert_allclose(tokens.pooled[i], rows.mean(axis=0), atol=1e-6)


def test_presets_come_with_their_tokenizer() -> None:
    protein = bt.MaskedLM.from_preset("protein-t6-8M", num_layers=1)
    assert protein.tokenizer.scheme == "protein"
    assert protein.config.vocab_size == 33 and protein.config.pad_id == 1  # ESM-2's alphabet
    assert protein.config.hidden_size == 320
    dna = bt.SequenceClassifier.from_preset("dna-t6-8M", num_layers=1, num_labels=3)
    assert dna.tokenizer.scheme == "dna" and dna.config.vocab_size == dna.tokenizer.vocab_size
    assert dna.head_config.num_labels == 3
    kmer = bt.MaskedLM.from_preset("tiny", tokenizer="dna-kmer:k=3")
    assert kmer.config.vocab_size == 4**3 + 20
    with pytest.raises(ConfigError, match="vocab_size=7 differs from the tokenizer's"):
        bt.MaskedLM.from_preset("tiny", tokenizer="dna", vocab_size=7)
    assert bt.MaskedLM.from_preset("tiny", vocab_size=40).tokenizer is None  # as before


def test_tokenizer_call_and_from_pretrained(tiny_dna: bt.MaskedLM, tmp_path: Path) -> None:
    tokenizer = tiny_dna.tokenizer
    batch = tokenizer(["ACGT", "AC"], return_tensors="pt", padding=True)
    assert isinstance(batch["input_ids"], torch.Tensor)
    assert batch["input_ids"].tolist() == [[2, 5, 6, 7, 8], [2, 5, 6, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    lists = tokenizer(["ACGT", "AC"], return_tensors=None, padding=False)
    assert lists["input_ids"] == [[2, 5, 6, 7, 8], [2, 5, 6]]
    wide = tokenizer("AC", return_tensors="np", padding="max_length", max_length=6)
    assert wide["input_ids"].tolist() == [[2, 5, 6, 0, 0, 0]]
    with pytest.raises(ConfigError, match="padding=False"):
        tokenizer(["ACGT", "AC"], padding=False)
    tiny_dna.save_pretrained(tmp_path / "m")
    assert bt.Tokenizer.from_pretrained(tmp_path / "m") == tokenizer
    assert bt.Tokenizer.from_pretrained("protein").vocab_size == 33
    with pytest.raises(ConfigError, match="not a tokenizer spec"):
        bt.Tokenizer.from_pretrained(tmp_path / "missing")


def test_inputs_name_their_problem(tiny_dna: bt.MaskedLM, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="J"):
        tiny_dna.embed(["ACGT", "ACJT"])
    protein = tmp_path / "p.fa"
    protein.write_text(">p\nMKVLAAGIVGLLLAQWERTYHHKLMNPQRS\n" * 1)
    with pytest.raises(InputError, match="use a protein model"):
        tiny_dna.embed(protein)
    with pytest.raises(ConfigError, match="window overlap 500"):
        tiny_dna.embed(["ACGT"], window_overlap=500)
    with pytest.raises(ConfigError, match="predicts tokens, not labels"):
        tiny_dna.predict(["ACGT"])


def test_load_model_reads_hf_and_fair_esm_sources(tmp_path: Path) -> None:
    """hf:DIR and fair-esm:FILE load as the converters build them, and embed gives the
    mean over real residues of HF's own last hidden state."""
    transformers = pytest.importorskip("transformers")
    from biotransformer.interop import from_fair_esm

    config = transformers.EsmConfig(
        vocab_size=33,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=1,
        mask_token_id=32,
        position_embedding_type="rotary",
        token_dropout=False,
    )
    torch.manual_seed(0)
    hf = transformers.EsmForMaskedLM(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = bt.load_model(f"hf:{tmp_path / 'hf'}")
    assert isinstance(model, bt.MaskedLM) and model.tokenizer.scheme == "protein"
    proteins = ["MKVLAAGIVG", "MKTAYIAKQRQISFVKSHFSRQ"]
    embeddings = model.embed(proteins)
    batch = model.tokenizer(proteins)
    with torch.no_grad():
        hidden = hf.esm(**batch).last_hidden_state
    for i, protein in enumerate(proteins):
        expected = hidden[i, 1 : len(protein) + 1].mean(dim=0).numpy()  # drop <cls>, <eos>
        np.testing.assert_allclose(embeddings.pooled[i], expected, rtol=0, atol=1e-5)

    esm = pytest.importorskip("esm")
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    theirs = esm.model.esm2.ESM2(num_layers=1, embed_dim=32, attention_heads=4, alphabet=alphabet)
    state = {f"encoder.sentence_encoder.{k}": v for k, v in theirs.state_dict().items()}
    cfg = {"encoder_layers": 1, "encoder_embed_dim": 32, "encoder_attention_heads": 4}
    cfg["token_dropout"] = True
    import argparse

    path = tmp_path / "esm2_t1_tiny.pt"
    torch.save({"model": state, "cfg": {"model": argparse.Namespace(**cfg)}}, path)
    loaded = bt.load_model(f"fair-esm:{path}")
    expected_model = from_fair_esm(path)
    ids = loaded.tokenizer(proteins)
    with torch.no_grad():
        assert torch.equal(loaded(**ids).logits, expected_model(**ids).logits)
    classifier = bt.load_model(f"fair-esm:{path}", model_class="SequenceClassifier", num_labels=2)
    assert classifier.loading_info["new"] == ["classifier.bias", "classifier.weight"]
    with pytest.raises(ConfigError, match="unknown MaskedLMHeadConfig option 'num_labels'"):
        bt.load_model(f"fair-esm:{path}", num_labels=2)


def test_model_methods_are_the_api_functions(tiny_dna: bt.MaskedLM) -> None:
    from biotransformer import api

    sequences = ["ACGTAGGA", "TTGACAAT"]
    assert np.array_equal(tiny_dna.embed(sequences).pooled, api.embed(tiny_dna, sequences).pooled)
    assert set(bt.__all__) >= {"load_model", "embed", "predict", "finetune", "pretrain"}
    from biotransformer.heads import _inference

    with pytest.raises(ConfigError, match=r"import biotransformer\.api"):
        _inference("not registered")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pretrain_from_sequences_in_memory(tmp_path: Path) -> None:
    """bt.pretrain on a list of sequences of four letters runs on them (written to a FASTA
    that the run keeps and its config.yaml names) and learns at least which tokens occur: the
    held-out loss ends well below uniform guessing over the vocabulary."""
    rng = np.random.default_rng(0)
    sequences = ["".join(rng.choice(list("ACGT"), 200)) for _ in range(20)]
    result = bt.pretrain(
        train=sequences,
        out=tmp_path / "run",
        model={"preset": "tiny", "hidden_size": 32, "num_heads": 4, "max_length": 64},
        data={"tokenizer": "dna", "window_tokens": 62, "max_length": 64, "max_tokens": 1024},
        training={"lr": 1e-2, "warmup_steps": 2, "max_steps": 10, "eval_every": 10},
    )
    assert result.outcome == "finished" and result.step == 10
    model = result.model
    assert isinstance(model, bt.MaskedLM) and model.tokenizer.scheme == "dna"
    held_out = result.metrics["valid"]["metrics"]["loss"]["value"]
    assert held_out < np.log(model.config.vocab_size) - 1.0
    kept = tmp_path / "run" / "inputs" / "train.fasta"
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["data"]["train_files"] == [str(kept)]
    assert [record.sequence for record in bt.read_sequences(kept)] == sequences


def test_public_names_stay_the_api_after_every_submodule_is_imported() -> None:
    """Importing ``biotransformer.X`` sets the package attribute ``X`` to that module, so a
    public name shared with a submodule (``bt.finetune`` and a ``finetune`` module) would
    turn into the module once anything imported it."""
    import importlib
    import pkgutil

    for module in pkgutil.walk_packages(bt.__path__, prefix="biotransformer."):
        if not module.name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(module.name)
    for name in bt.__all__:
        assert not isinstance(getattr(bt, name), type(bt)), f"bt.{name} is a module"
    assert callable(bt.finetune) and callable(bt.pretrain) and callable(bt.embed)
