"""Models by name: a HuggingFace hub cache built here (``hub/models--ORG--NAME/snapshots/SHA``
with ``refs/``), read offline; nothing is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from biotransformer import hub
from biotransformer.errors import ModelDirectoryError
from biotransformer.heads import MaskedLM, SequenceClassifier
from biotransformer.tokenizers import ESM2_TOKENS

transformers = pytest.importorskip("transformers")
constants = pytest.importorskip("huggingface_hub.constants")

MAIN, V1 = "a" * 40, "b" * 40  # the commits of refs/main and of the tag v1
SEQUENCES = ["MKTAYIAKQR", "GAVLIWM", "MKWWQQRRTT"]


def tiny_esm(seed: int) -> torch.nn.Module:
    """A random ESM-2-shaped masked LM; each seed gives other weights."""
    torch.manual_seed(seed)
    config = transformers.EsmConfig(
        vocab_size=33,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=1,
        mask_token_id=32,
        position_embedding_type="rotary",
        token_dropout=True,
    )
    return transformers.EsmForMaskedLM(config).eval()


def tiny_esmc() -> torch.nn.Module:
    torch.manual_seed(3)
    config = transformers.EsmcConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=64,
    )
    return transformers.EsmcForMaskedLM(config).eval()


def add_snapshot(cache: Path, repo_id: str, commit: str, refs: list[str], save) -> Path:
    """``save(snapshot)`` writes the files of ``repo_id`` at ``commit``; ``refs`` point at it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    save(snapshot)
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def save_hf(model: torch.nn.Module):
    def save(snapshot: Path) -> None:
        model.save_pretrained(snapshot)
        (snapshot / "vocab.txt").write_text("\n".join(ESM2_TOKENS) + "\n")

    return save


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    """HF_HOME holding ``test-org/tiny-esm`` (main and tag v1, different weights),
    ``test-org/tiny-esmc`` (ESM C) and ``test-org/tiny-bt`` (a biotransformer model directory)."""
    home = tmp_path_factory.mktemp("hf-home")
    cache = home / "hub"
    add_snapshot(cache, "test-org/tiny-esm", MAIN, ["main"], save_hf(tiny_esm(0)))
    add_snapshot(cache, "test-org/tiny-esm", V1, ["v1"], save_hf(tiny_esm(1)))
    add_snapshot(cache, "test-org/tiny-esmc", MAIN, ["main"], tiny_esmc().save_pretrained)
    native = hub.load_model(f"hf:{cache / 'models--test-org--tiny-esm' / 'snapshots' / MAIN}")
    add_snapshot(
        cache,
        "test-org/tiny-bt",
        MAIN,
        ["main"],
        lambda snapshot: native.save_pretrained(snapshot, tokenizer=native.tokenizer),
    )
    return home


@pytest.fixture
def offline(hub_home, monkeypatch) -> Path:
    """This process reads ``hub_home``'s cache, offline (as HF_HOME and HF_HUB_OFFLINE=1
    would set it at import)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_home


def esm_ids(sequence: str) -> torch.Tensor:
    return torch.tensor([[0, *(ESM2_TOKENS.index(c) for c in sequence), 2]])


def hf_logits(seed: int, sequence: str) -> torch.Tensor:
    with torch.no_grad():
        return tiny_esm(seed)(esm_ids(sequence)).logits


def our_logits(model, sequence: str) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.as_tensor(model.tokenizer.encode(sequence))[None]).logits


def test_hub_names_and_revisions_load_their_own_weights_offline(offline):
    import biotransformer as bt

    main = bt.load_model("hf:test-org/tiny-esm")
    tagged = hub.load_model("test-org/tiny-esm@v1")  # plain name: no such local path
    pinned = hub.load_model(f"hf:test-org/tiny-esm@{MAIN}")
    for model, seed in ((main, 0), (tagged, 1), (pinned, 0)):
        assert isinstance(model, MaskedLM)
        assert (our_logits(model, SEQUENCES[0]) - hf_logits(seed, SEQUENCES[0])).abs().max() < 1e-5
    assert (our_logits(main, SEQUENCES[0]) - our_logits(tagged, SEQUENCES[0])).abs().max() > 0.01
    assert main.source == {
        "source": "hf:test-org/tiny-esm",
        "format": "hf",
        "repo_id": "test-org/tiny-esm",
        "revision": None,
        "commit": MAIN,
    }
    assert tagged.source["revision"] == "v1" and tagged.source["commit"] == V1


def test_an_esmc_repository_loads_with_its_alphabet(offline):
    model = hub.load_model("test-org/tiny-esmc", require_tokenizer=True)
    assert model.config.qk_norm and model.source["commit"] == MAIN
    ids = torch.as_tensor(model.tokenizer.encode(SEQUENCES[2]))[None]
    with torch.no_grad():
        assert (model(ids).logits - tiny_esmc()(ids).logits).abs().max() < 1e-5


def test_a_biotransformer_repository_loads_as_a_model_directory(offline):
    model = hub.load_model("test-org/tiny-bt", require_tokenizer=True)
    assert model.source["format"] == "biotransformer" and model.source["commit"] == MAIN
    assert (our_logits(model, SEQUENCES[1]) - hf_logits(0, SEQUENCES[1])).abs().max() < 1e-5
    classifier = hub.load_model("hf:test-org/tiny-esm", SequenceClassifier, num_labels=2)
    assert classifier.loading_info["new"] == ["classifier.bias", "classifier.weight"]
    assert classifier.source["commit"] == MAIN


def test_a_local_path_wins_over_a_hub_name(offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = hub.load_model("hf:test-org/tiny-bt")
    local.save_pretrained(tmp_path / "test-org" / "tiny-bt", tokenizer=local.tokenizer)
    found = hub.resolve_model_source("test-org/tiny-bt")
    assert found.format == "biotransformer" and found.path == Path("test-org/tiny-bt")
    assert found.repo_id is None


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("hf:test-org/absent", "not in the HuggingFace cache"),
        ("test-org/absent", "no local path test-org/absent exists"),
        ("hf:test-org/tiny-esm@v9", "HF_HUB_OFFLINE=1 is set"),
        ("hf:not a name", "neither a local HuggingFace directory nor a Hub name"),
        ("hf:test-org/tiny-esm@", "neither a local HuggingFace directory nor a Hub name"),
    ],
)
def test_what_cannot_be_found_offline_is_named_with_a_fix(offline, source, message):
    with pytest.raises(ModelDirectoryError) as caught:
        hub.load_model(source)
    assert message in str(caught.value) and "Fix:" in str(caught.value)
    assert source in str(caught.value)


def test_pickled_weights_alone_are_refused(offline):
    def save(snapshot: Path) -> None:  # a repository with a pickled .bin only (never read)
        tiny_esm(2).config.save_pretrained(snapshot)
        (snapshot / "pytorch_model.bin").write_bytes(b"never unpickled")

    add_snapshot(offline / "hub", "test-org/pickled", MAIN, ["main"], save)
    with pytest.raises(ModelDirectoryError, match=r"no \.safetensors weights"):
        hub.load_model("test-org/pickled")


def test_import_model_converts_once_and_keeps_the_source(offline, tmp_path):
    directory, source = hub.import_model("test-org/tiny-esm@v1", tmp_path / "imported")
    assert directory == tmp_path / "imported" and (directory / "config.json").is_file()
    assert source.record()["commit"] == V1
    native, source = hub.import_model("test-org/tiny-bt", tmp_path / "unused")
    assert native == source.path and not (tmp_path / "unused").exists()


def test_embed_by_hub_name(offline, tmp_path):
    from biotransformer.cli import main

    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(SEQUENCES)))
    argv = ["embed", "--model", "test-org/tiny-esm@v1", "--input", str(fasta)]
    assert main([*argv, "--out", str(tmp_path / "e.h5")]) == 0
    with h5py.File(tmp_path / "e.h5") as handle:
        got = handle["embeddings"][:]
        source = json.loads(handle.attrs["model_source"])
    assert source["repo_id"] == "test-org/tiny-esm" and source["revision"] == "v1"
    assert len(source["commit"]) == 40  # the snapshot read, not only the name typed
    hf = tiny_esm(1)
    with torch.no_grad():
        expected = [
            hf(esm_ids(s), output_hidden_states=True).hidden_states[-1][0, 1:-1].mean(0).numpy()
            for s in SEQUENCES
        ]
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_finetune_by_hub_name_offline_from_hf_home_records_the_commit(hub_home, tmp_path):
    """The command line as a user runs it: HF_HOME and HF_HUB_OFFLINE=1 in the environment
    (a subprocess: fine-tuning in this process would import the ``finetune`` module over
    ``bt.finetune``)."""
    rng = np.random.default_rng(0)
    rows = ["sequence,label"]
    for i in range(48):
        residues = rng.choice(list("ACDEFGHIKLMNPQRSTVY"), 12)
        if i % 2:
            residues[rng.integers(12)] = "W"
        rows.append(f"{''.join(residues)},{i % 2}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    env = {**os.environ, "HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    argv = ["finetune", "--train", str(tmp_path / "train.csv"), "--model", "test-org/tiny-esm@v1"]
    argv += ["--out", str(tmp_path / "out"), "--bootstrap", "5", "max_steps=4", "plots=false"]
    result = subprocess.run(
        [sys.executable, "-m", "biotransformer", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["base_model_source"] == {
        "source": "test-org/tiny-esm@v1",
        "format": "hf",
        "repo_id": "test-org/tiny-esm",
        "revision": "v1",
        "commit": V1,
    }
    assert run["base_model"] == str(tmp_path / "out" / "imported")
