"""Every shipped recipe parses; the tiny DNA recipe learns more than n-gram baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from accelerate.commands.config.config_args import load_config_from_file

from biotransformer.config import load_run_config
from biotransformer.data.collator import MaskingCollator
from biotransformer.data.shards import ShardDataset
from biotransformer.tokenizers import Tokenizer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RUN_CONFIGS = sorted((RECIPES / "configs").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate").glob("*.yaml"))
SCRIPTS = [RECIPES / "pretrain.sh", *sorted((RECIPES / "slurm").glob("*.sbatch"))]


def test_the_expected_recipes_ship():
    names = {path.stem for path in RUN_CONFIGS}
    assert {"pretrain_dna_tiny", "pretrain_dna_base", "pretrain_protein_base"} <= names
    assert {p.stem for p in ACCELERATE_CONFIGS} == {"ddp", "fsdp", "deepspeed"}
    assert all(path.is_file() for path in SCRIPTS)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_run_configs_load_and_build_their_model(path):
    config = load_run_config(path)
    tokenizer = Tokenizer.from_spec(config.data.tokenizer)
    model = config.model_config(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id)
    specials = len(tokenizer.encode("ACGT" if tokenizer.alphabet == "dna" else "MKLV")) - 4
    if tokenizer.k and tokenizer.k > 1:
        specials = len(tokenizer.encode("A" * 20)) - (20 - tokenizer.k + 1)
    assert config.data.window_tokens + specials <= config.data.max_length <= model.max_length
    if tokenizer.k and tokenizer.k > 1 and tokenizer.stride == 1:
        assert config.data.span_length == 2 * tokenizer.k - 1, "k-mer recipes mask in spans"
    assert config.data.train_files, "recipes name their default input"
    assert path.read_text().startswith("#"), "a header comment says how to run it"


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_configs_parse_and_say_how_to_launch(path):
    config = load_config_from_file(str(path))
    assert config.distributed_type.name in {"MULTI_GPU", "FSDP", "DEEPSPEED"}
    header = path.read_text().split("\n\n")[0]
    assert "accelerate launch --config_file recipes/accelerate/" in header
    # each says what has run where: none of them has run on a GPU here
    assert any(note in header for note in ("Untested here", "Not yet run on GPUs", "Never run"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_launch_scripts_are_valid_bash_with_a_launch_line(path):
    subprocess.run(["bash", "-n", str(path)], check=True)
    header = "".join(line for line in path.read_text().splitlines(True)[:8] if line[0] == "#")
    assert "pretrain" in header
    if path.suffix == ".sbatch":
        assert "sbatch recipes/slurm/" in header and "Not run on a cluster" in header


def markov_cross_entropy(
    train: list[np.ndarray], targets: list[tuple[np.ndarray, np.ndarray]], order: int, symbols: int
) -> float:
    """Cross-entropy (nats) of an add-one order-``order`` Markov chain fitted on ``train``, at
    the given (sequence, positions) targets; positions with a shorter history use order 0."""
    counts = np.ones((symbols**order, symbols))
    unigram = np.ones(symbols)
    for seq in train:
        unigram += np.bincount(seq, minlength=symbols)
        context = np.zeros(len(seq) - order, dtype=np.int64)
        for j in range(order):
            context = context * symbols + seq[j : len(seq) - order + j]
        np.add.at(counts, (context, seq[order:]), 1)
    conditional = counts / counts.sum(1, keepdims=True)
    unigram /= unigram.sum()
    losses = []
    for seq, positions in targets:
        for p in positions.tolist():
            if p < order:
                losses.append(-np.log(unigram[seq[p]]))
                continue
            context = 0
            for symbol in seq[p - order : p].tolist():
                context = context * symbols + symbol
            losses.append(-np.log(conditional[context, seq[p]]))
    return float(np.mean(losses))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_recipe_beats_unigram_and_order3_markov_on_held_out_bases(shared_data, tmp_path):
    genome = shared_data / "genomes" / "GCF_001457455.1_NCTC11397_genomic.fna.gz"
    run = tmp_path / "tiny"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "biotransformer",
            "pretrain",
            "pretrain_dna_tiny",
            f"data.train_files=[{genome}]",
            "--output-dir",
            str(run),
        ],
        check=True,
        cwd=RECIPES.parent,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    valid_loss = [r["valid_loss"] for r in rows if "valid_loss" in r][-1]

    # The baselines see the same held-out positions the model was scored on: the sequences of
    # the valid split, masked by the same collator settings as the training loop's evaluation.
    config = load_run_config(run / "config.yaml")
    train_set = ShardDataset(run / "data", "train")
    valid_set = ShardDataset(run / "data", "valid", max_length=config.data.max_length)
    tokenizer = valid_set.tokenizer
    bases = np.array([tokenizer.tokens.index(b) for b in "ACGT"])
    lookup = np.full(tokenizer.vocab_size, -1)
    lookup[bases] = np.arange(4)
    collator = MaskingCollator(
        tokenizer,
        mask_rate=config.data.mask_rate,
        mask_token_rate=1.0,
        random_token_rate=0.0,
        span_length=config.data.span_length,
        seed=config.data.seed,
    )
    targets = []
    for index in range(len(valid_set)):
        ids = valid_set[index]["input_ids"]
        _, labels = collator.mask(ids, index)
        symbols = lookup[ids]
        positions = np.flatnonzero((labels != -100) & (symbols >= 0))
        targets.append((symbols[1:], positions - 1))  # drop <cls>
    train = [lookup[train_set[i]["input_ids"][1:]] for i in range(len(train_set))]
    train = [seq[seq >= 0] for seq in train]
    unigram = markov_cross_entropy(train, targets, 0, 4)
    markov3 = markov_cross_entropy(train, targets, 3, 4)
    print(f"held-out: model {valid_loss:.4f}, unigram {unigram:.4f}, order-3 Markov {markov3:.4f}")
    assert markov3 < unigram
    assert valid_loss < markov3 < unigram
