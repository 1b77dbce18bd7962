"""Interruptions and many processes: SIGKILL at random moments then resume (pretrain) or rerun
(prepare) gives the uninterrupted result bit for bit; a save killed midway leaves the previous
model directory loadable; 2-rank evaluate equals 1 process exactly on a ragged dataset; the
same seed and config give bit-identical fine-tuned weights, with provenance in run.json."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from accelerate.state import AcceleratorState, GradientState
from test_inference import free_port
from test_train import SUBPROCESS_ENV, cli, model_weights, read_log, run_values, write_fasta

from biotransformer.checkpointing import latest_checkpoint
from biotransformer.cli import main
from biotransformer.heads import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def kill_after(command: list[str], delay: float, ready: callable = lambda: True) -> None:
    """Start ``command``, wait until ``ready()`` then ``delay`` seconds, and SIGKILL it."""
    process = subprocess.Popen(
        command, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 100
    while not ready() and process.poll() is None:
        assert time.monotonic() < deadline, "the process never became ready"
        time.sleep(0.02)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()


def shard_contents(directory: Path) -> dict[str, bytes | list]:
    """Every dataset of every shard, as bytes (HDF5 files themselves carry timestamps)."""
    contents = {}
    for shard in sorted(directory.glob("*.h5")):
        with h5py.File(shard) as handle:
            for name, dataset in handle.items():
                values = np.asarray(dataset)
                exact = values.tolist() if values.dtype == object else values.tobytes()
                contents[f"{shard.name}/{name}"] = exact
    return contents


@pytest.mark.timeout(150)
def test_prepare_killed_at_random_moments_then_rerun_equals_an_uninterrupted_run(tmp_path):
    fasta = write_fasta(tmp_path / "corpus.fa", records=40, length=500_000)
    args = ["--tokenizer", "dna-kmer:k=3", "--window-tokens", "200", "--quiet"]
    prepare = [sys.executable, "-m", "biotransformer", "prepare", str(fasta), *args]
    subprocess.run(
        [*prepare, "--out", str(tmp_path / "straight")],
        check=True,
        env=SUBPROCESS_ENV,
        capture_output=True,
    )
    expected = shard_contents(tmp_path / "straight")
    for seed in (1, 2):
        out = tmp_path / f"killed{seed}"
        kill_after(
            [*prepare, "--out", str(out)],
            random.Random(seed).uniform(0.0, 0.3),
            ready=lambda out=out: any(out.glob("*.partial")),
        )
        assert not (out / "manifest.json").exists(), "prepare finished before the kill"
        subprocess.run(
            [*prepare, "--out", str(out)], check=True, env=SUBPROCESS_ENV, capture_output=True
        )
        assert shard_contents(out) == expected, seed


@pytest.mark.timeout(200)
def test_pretrain_killed_at_random_moments_resumes_bit_identically(tmp_path):
    fasta = write_fasta(tmp_path / "toy.fa", records=4, length=2000)
    values = run_values(tmp_path, fasta, max_steps=24, save_every=4, eval_every=8)
    values["model"].update(dropout=0.1)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(values))
    straight = tmp_path / "straight"
    subprocess.run(cli(config, "--output-dir", str(straight)), check=True, env=SUBPROCESS_ENV)
    resumed = 0
    for seed in (3, 4):
        killed = tmp_path / f"killed{seed}"
        kill_after(
            cli(config, "--output-dir", str(killed)),
            random.Random(seed).uniform(0.0, 0.4),
            ready=lambda killed=killed: latest_checkpoint(killed / "checkpoints") is not None,
        )
        if (killed / "model").exists():  # finished before the kill: nothing to resume
            continue
        subprocess.run(
            cli(config, "--output-dir", str(killed), "--resume", "latest"),
            check=True,
            env=SUBPROCESS_ENV,
        )
        expected, actual = model_weights(straight), model_weights(killed)
        assert all(torch.equal(expected[name], actual[name]) for name in expected), seed
        assert [r["loss"] for r in read_log(straight)[0]] == [
            r["loss"] for r in read_log(killed)[0]
        ]
        resumed += 1
    assert resumed, "every run finished before its kill"


KILLED_SAVE = """
import os, sys, torch
from biotransformer import atomic
from biotransformer.heads import load_model
model = load_model(sys.argv[1])
with torch.no_grad():
    for parameter in model.parameters():
        parameter.add_(1.0)
atomic._fsync_tree = lambda root: os._exit(9)  # killed once the new files are written
model.save_pretrained(sys.argv[1], tokenizer=model.tokenizer)
"""


@pytest.mark.timeout(60)
def test_a_save_killed_midway_leaves_the_previous_model_directory_loadable(tmp_path):

    from biotransformer.config import ModelConfig
    from biotransformer.heads import MaskedLM
    from biotransformer.tokenizers import Tokenizer

    tokenizer = Tokenizer.from_spec("dna")
    model = MaskedLM(ModelConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size))
    directory = tmp_path / "model"
    model.save_pretrained(directory, tokenizer=tokenizer)
    before = {k: v.clone() for k, v in load_model(directory).state_dict().items()}
    result = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(directory)], env=SUBPROCESS_ENV, timeout=50
    )
    assert result.returncode == 9
    after = load_model(directory).state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def labelled_fasta(path: Path, records: int) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w") as handle:
        for i in range(records):
            bases = "".join(rng.choice(list("ACGT"), size=int(rng.integers(30, 60))))
            handle.write(f">s{i} label={i % 2}\n{'TATAAA' if i % 2 else ''}{bases}\n")
    return path


@pytest.mark.timeout(200)
def test_two_rank_evaluate_equals_one_process_exactly_on_a_ragged_dataset(tmp_path, capsys):
    train = labelled_fasta(tmp_path / "train.fa", 40)
    finetune = ["finetune", "--train", str(train), "--label-from", "key:label", "--preset", "tiny"]
    options = ["--epochs", "2", "--bootstrap", "20", "--max-tokens", "512", "plots=false"]
    assert main([*finetune, "--out", str(tmp_path / "a"), *options]) == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    assert main([*finetune, "--out", str(tmp_path / "b"), *options]) == 0
    first, second = (tmp_path / run / "model" / "model.safetensors" for run in ("a", "b"))
    assert first.read_bytes() == second.read_bytes(), "the same seed and config must repeat"
    provenance = json.loads((tmp_path / "a" / "run.json").read_text())
    for key in ("seed", "biotransformer", "torch", "accelerate", "git_commit", "command"):
        assert key in provenance, key
    resolved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert resolved["training"]["seed"] == 0 and resolved["training"]["max_steps"] > 0

    data = labelled_fasta(tmp_path / "eval.fa", 13)  # odd: one rank gets the extra sample
    evaluate = ["evaluate", "--model", str(tmp_path / "a" / "model"), "--data", str(data)]
    evaluate += ["--label-from", "key:label", "--bootstrap", "50", "--max-tokens", "128"]
    single, double = tmp_path / "single.json", tmp_path / "double.json"
    assert (
        main(
            [*evaluate, "--metrics-out", str(single), "--predictions-out", str(tmp_path / "1.tsv")]
        )
        == 0
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "biotransformer",
         *evaluate, "--metrics-out", str(double), "--predictions-out", str(tmp_path / "2.tsv")],
        check=True, env=SUBPROCESS_ENV, capture_output=True,
    )  # fmt: skip
    assert json.loads(single.read_text()) == json.loads(double.read_text())
    rows = (tmp_path / "2.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[0] for row in rows] == [f"s{i}" for i in range(13)]
    assert (tmp_path / "1.tsv").read_text() == (tmp_path / "2.tsv").read_text()
