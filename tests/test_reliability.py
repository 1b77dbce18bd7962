"""Interruptions and many processes: SIGKILL at random moments then resume (pretrain,
finetune) or rerun (prepare) gives the uninterrupted result bit for bit; a save killed midway
leaves the previous model directory loadable; 2-rank evaluate equals 1 process exactly on a
ragged dataset, 2-rank finetune equals 1 process with the same global batch; the same seed and
config give bit-identical fine-tuned weights, with provenance in run.json."""

from __future__ import annotations

import json
import os
import random
import shutil
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
from helpers import reset_accelerate_state, run_torchrun
from safetensors.torch import load_file
from test_train import SUBPROCESS_ENV, cli, model_weights, read_log, run_values, write_fasta

from biotransformer import finetuning as finetune_module
from biotransformer.checkpointing import latest_checkpoint
from biotransformer.cli import main
from biotransformer.config import FinetuneConfig, ReadOptions
from biotransformer.data.sampler import TokenBudgetBatchSampler
from biotransformer.finetuning import FinetuneResult
from biotransformer.heads import load_model
from biotransformer.inference import predict_logits

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerate_state")]


def start_until_ready(command: list[str], ready: callable) -> subprocess.Popen:
    """Start ``command`` and return it once ``ready()`` holds (or it has exited)."""
    process = subprocess.Popen(
        command, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 100
    while not ready() and process.poll() is None:
        assert time.monotonic() < deadline, "the process never became ready"
        time.sleep(0.02)
    return process


def kill_after(command: list[str], delay: float, ready: callable = lambda: True) -> bool:
    """Start ``command``, wait until ``ready()`` then ``delay`` seconds, and SIGKILL it;
    whether the kill interrupted it (False: it had already exited)."""
    process = start_until_ready(command, ready)
    time.sleep(delay)
    interrupted = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return interrupted


def seconds_after_ready(command: list[str], ready: callable) -> float:
    """Run ``command`` to success; the seconds from ``ready()`` to its exit: the window in
    which a kill interrupts the same work, however fast this machine is."""
    process = start_until_ready(command, ready)
    ready_at = time.monotonic()
    assert process.wait() == 0, f"{command} failed"
    return time.monotonic() - ready_at


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
    straight = tmp_path / "straight"
    window = seconds_after_ready(
        [*prepare, "--out", str(straight)], ready=lambda: any(straight.glob("*.partial"))
    )
    expected = shard_contents(straight)
    for seed in (1, 2):
        out = tmp_path / f"killed{seed}"
        delay = random.Random(seed).uniform(0.0, 0.6) * window
        # This run can be faster than the measured one (the other test workers' load varies):
        # one that finished before its kill is run again with a kill four times sooner.
        while (
            not kill_after(
                [*prepare, "--out", str(out)],
                delay,
                ready=lambda out=out: any(out.glob("*.partial")),
            )
            or (out / "manifest.json").exists()
        ):
            assert delay > 1e-3, "prepare finished before every kill"
            shutil.rmtree(out)
            delay /= 4
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
    reset_accelerate_state()
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
    run_torchrun(
        ["-m", "biotransformer",
         *evaluate, "--metrics-out", str(double), "--predictions-out", str(tmp_path / "2.tsv")],
        env=SUBPROCESS_ENV,
    )  # fmt: skip
    assert json.loads(single.read_text()) == json.loads(double.read_text())
    rows = (tmp_path / "2.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[0] for row in rows] == [f"s{i}" for i in range(13)]
    assert (tmp_path / "1.tsv").read_text() == (tmp_path / "2.tsv").read_text()


def labelled_csv(path: Path, records: int, seed: int = 0) -> Path:
    """40-base DNA, label 1 when it carries TATAAA; every sequence is 42 tokens long."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        handle.write("id,sequence,label\n")
        for i in range(records):
            bases = rng.choice(list("ACGT"), size=40)
            if i % 2:
                bases[10:16] = list("TATAAA")
            handle.write(f"r{seed}_{i},{''.join(bases)},{i % 2}\n")
    return path


def finetune_cli(
    train: Path, out: Path, *options: str, overrides: tuple[str, ...] = ()
) -> list[str]:
    """``python -m biotransformer finetune`` on a tiny model; ``overrides`` go last."""
    command = [sys.executable, "-m", "biotransformer", "finetune", "--train", str(train)]
    command += ["--out", str(out), "--preset", "tiny", "--bootstrap", "20", "--max-tokens", "512"]
    return [*command, *options, "plots=false", *overrides]


def log_rows(run: Path) -> list[dict]:
    """log.jsonl without its timing column."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in rows]


def final_metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("seconds")
    return metrics


@pytest.mark.timeout(150)
def test_finetune_killed_at_random_moments_resumes_bit_identically(tmp_path, capsys):
    train = labelled_csv(tmp_path / "train.csv", 120)
    # log_every=1: a log row sums the steps since the previous one, so a row whose window
    # spans the resume point would cover only the resumed steps.
    overrides = ("training.save_every=5", "training.log_every=1", "model.dropout=0.1")

    def command(out: Path, *options: str) -> list[str]:
        return finetune_cli(train, out, "--epochs", "10", *options, overrides=overrides)

    straight = tmp_path / "straight"
    subprocess.run(command(straight), check=True, env=SUBPROCESS_ENV)
    expected = load_file(straight / "model" / "model.safetensors")
    assert not (straight / "checkpoints").exists(), "a finished run removes its checkpoints"
    resumed = 0
    for seed in (5, 6):
        killed = tmp_path / f"killed{seed}"
        kill_after(
            command(killed),
            random.Random(seed).uniform(0.0, 0.6),
            ready=lambda killed=killed: latest_checkpoint(killed / "checkpoints") is not None,
        )
        if (killed / "metrics.json").exists():  # finished before the kill: nothing to resume
            continue
        assert main(command(killed)[3:]) == 2
        assert "already holds checkpoints" in capsys.readouterr().err
        subprocess.run(command(killed, "--resume", "latest"), check=True, env=SUBPROCESS_ENV)
        actual = load_file(killed / "model" / "model.safetensors")
        assert all(torch.equal(expected[name], actual[name]) for name in expected), seed
        assert final_metrics(killed) == final_metrics(straight), seed
        assert log_rows(killed) == log_rows(straight), seed
        resumed += 1
    assert resumed, "every run finished before its kill"


FINETUNE_AND_DUMP = """
import sys
from safetensors.torch import save_file
from biotransformer import engine
from biotransformer.cli import main

def train_and_dump(accelerator, model, *args):
    outcome = train_loop(accelerator, model, *args)
    state = accelerator.unwrap_model(model).state_dict()
    weights = {name: tensor.detach().clone() for name, tensor in state.items()}
    save_file(weights, f"{sys.argv[1]}.rank{accelerator.process_index}.safetensors")
    return outcome

train_loop, engine.train_loop = engine.train_loop, train_and_dump
sys.exit(main(sys.argv[2:]))
"""


def leaves(value: object, prefix: str = "") -> dict[str, object]:
    """Every leaf of a JSON value, by its path."""
    if isinstance(value, dict):
        return {
            k: v for key, item in value.items() for k, v in leaves(item, f"{prefix}/{key}").items()
        }
    if isinstance(value, list):
        return {
            k: v for i, item in enumerate(value) for k, v in leaves(item, f"{prefix}/{i}").items()
        }
    return {prefix: value}


@pytest.mark.timeout(150)
def test_two_rank_finetune_equals_one_process_with_the_same_global_batch(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", 120)
    valid = labelled_csv(tmp_path / "valid.csv", 15, seed=1)  # odd: ragged ends
    test = labelled_csv(tmp_path / "test.csv", 13, seed=2)
    # 10 batches of 12 sequences per epoch: one process takes two micro-batches per step,
    # two ranks one each (the sampler deals batch i to rank i % 2), the same global batch.
    assert len(TokenBudgetBatchSampler([42] * 120, 512).global_batches()) == 10
    script = tmp_path / "finetune_and_dump.py"
    script.write_text(FINETUNE_AND_DUMP)
    runs = {"single": tmp_path / "single", "double": tmp_path / "double"}

    def command(name: str, *overrides: str) -> list[str]:
        options = ["--valid", str(valid), "--test", str(test), "--id-column", "id"]
        full = finetune_cli(train, runs[name], *options, "--epochs", "3", overrides=overrides)
        return [str(script), str(runs[name]), *full[3:]]

    subprocess.run(
        [sys.executable, *command("single", "training.gradient_accumulation_steps=2")],
        check=True, env=SUBPROCESS_ENV, capture_output=True,
    )  # fmt: skip
    run_torchrun(command("double"), env=SUBPROCESS_ENV)
    rank0, rank1 = (load_file(f"{runs['double']}.rank{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    single = load_file(f"{runs['single']}.rank0.safetensors")
    assert all(torch.allclose(rank0[n], single[n], rtol=1e-4, atol=1e-6) for n in rank0)

    one, two = (leaves(final_metrics(runs[name])) for name in ("single", "double"))
    assert one.keys() == two.keys()
    for key, value in one.items():
        if isinstance(value, float):
            assert two[key] == pytest.approx(value, abs=1e-5), key
        else:
            assert two[key] == value, key
    for split, data in (("valid", valid), ("test", test)):
        ids = [line.split(",")[0] for line in data.read_text().splitlines()[1:]]
        tables = [
            [
                line.split("\t")
                for line in (runs[name] / f"predictions_{split}.tsv").read_text().splitlines()[1:]
            ]
            for name in ("single", "double")
        ]
        assert [row[0] for row in tables[1]] == ids, split  # none dropped or repeated
        assert [row[:2] for row in tables[0]] == [row[:2] for row in tables[1]], split
        probabilities = [np.array([row[2:] for row in table], dtype=float) for table in tables]
        np.testing.assert_allclose(probabilities[1], probabilities[0], atol=1e-5)


@pytest.mark.timeout(60)
def test_finetune_stopped_by_sigterm_resumes_with_its_model_selection(tmp_path, monkeypatch):
    """SIGTERM (sent here at the first validation) saves a checkpoint at the next step and
    stops; resume="latest" carries on with the best score so far and ends as a straight run."""
    train = labelled_csv(tmp_path / "train.csv", 60)

    def run(out: str, resume: str | None = None) -> FinetuneResult:
        reset_accelerate_state()
        config = FinetuneConfig(
            train=str(train),
            output_dir=str(tmp_path / out),
            preset="tiny",
            epochs=4,
            evals_per_epoch=2,
            max_tokens=512,
            bootstrap=5,
            plots=False,
            resume=resume,
            read=ReadOptions(id_column="id"),
        )
        return finetune_module.finetune(config)

    straight = run("straight")
    signalled = []

    def predict_and_signal(*args: object, **kwargs: object) -> list[np.ndarray]:
        if not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return predict_logits(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "predict_logits", predict_and_signal)
    stopped = run("stopped")
    monkeypatch.undo()
    assert stopped.outcome == "interrupted" and stopped.metrics == {}
    assert not (tmp_path / "stopped" / "metrics.json").exists()
    first_eval = next(r["step"] for r in log_rows(tmp_path / "stopped") if "valid_loss" in r)
    checkpoint = latest_checkpoint(tmp_path / "stopped" / "checkpoints")
    assert json.loads((checkpoint / "checkpoint.json").read_text())["step"] == first_eval + 1

    resumed = run("stopped", resume="latest")
    assert resumed.outcome == "finished" and resumed.best_step == straight.best_step
    expected, actual = (load_file(r.model_dir / "model.safetensors") for r in (straight, resumed))
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert final_metrics(tmp_path / "stopped") == final_metrics(tmp_path / "straight")
    assert not (tmp_path / "stopped" / "checkpoints").exists()
