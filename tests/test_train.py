"""The training loop: Accelerate pitfalls, loss normalisation, checkpoints, signals, NaN,
exact resume after SIGKILL, two processes against one, and the tiny recipe on a real genome."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.data_loader import BatchSamplerShard
from helpers import reset_accelerate_state, run_torchrun
from safetensors.torch import load_file

from biotransformer.checkpointing import Checkpointer, complete_checkpoints, latest_checkpoint
from biotransformer.config import ModelConfig, TrainingConfig, run_config_from_dict
from biotransformer.data.collator import MaskingCollator
from biotransformer.data.sampler import TokenBudgetBatchSampler
from biotransformer.data.shards import ShardDataset
from biotransformer.engine import (
    BatchStream,
    LoopContext,
    MetricsLog,
    TrainerState,
    TrainingDiverged,
    accumulate_gradients,
    build_optimizer,
    build_scheduler,
    train_loop,
)
from biotransformer.errors import ConfigError
from biotransformer.heads import MaskedLM, load_model
from biotransformer.runtime import make_accelerator
from biotransformer.tokenizers import Tokenizer
from biotransformer.train import pretrain

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

REPO = Path(__file__).resolve().parents[1]
GENOME = "genomes/GCF_001457455.1_NCTC11397_genomic.fna.gz"
# One thread per process: the test machines are small and shared, and an oversubscribed
# OpenMP pool is many times slower than a single thread.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_fasta(path: Path, records: int, length: int, seed: int = 0) -> Path:
    """Random DNA with a repeated motif every 50 bases, so there is something to learn."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        for r in range(records):
            bases = rng.choice(list("ACGT"), size=length)
            for start in range(0, length - 8, 50):
                bases[start : start + 8] = list("GATTACAG")
            handle.write(f">seq{r}\n{''.join(bases)}\n")
    return path


def run_values(tmp_path: Path, fasta: Path, **training) -> dict:
    """A tiny run config as YAML-ready values."""
    return {
        "model": {
            "preset": "tiny",
            "hidden_size": 16,
            "num_layers": 2,
            "num_heads": 2,
            "ffn_size": 32,
            "max_length": 64,
        },
        "data": {
            "train_files": [str(fasta)],
            "tokenizer": "dna",
            "window_tokens": 62,
            "valid_fraction": 0.1,
            "max_length": 64,
            "max_tokens": 512,
        },
        "training": {
            "output_dir": str(tmp_path / "run"),
            "lr": 3e-3,
            "warmup_steps": 2,
            "max_steps": 6,
            "save_every": 2,
            "keep_last": 2,
            "eval_every": 3,
            "log_every": 1,
            **training,
        },
    }


def read_log(run_dir: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "valid_loss" in r]


def masked_lm_batches(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Micro-batches of different sizes, so their target counts differ."""
    tokenizer = Tokenizer.from_spec("dna")
    collator = MaskingCollator(tokenizer, mask_rate=0.3, seed=seed)
    rng = np.random.default_rng(seed)
    batches = []
    for b in range(count):
        items = [
            {
                "index": 10 * b + i,
                "input_ids": tokenizer.encode("".join(rng.choice(list("ACGT"), n))),
            }
            for i, n in enumerate(rng.integers(8, 40, size=2 + 2 * b))
        ]
        batches.append(collator(items))
    return batches


def tiny_model(seed: int = 0) -> MaskedLM:
    torch.manual_seed(seed)
    return MaskedLM(ModelConfig.from_preset("tiny", vocab_size=20, pad_id=0))


# ---------------------------------------------------------------------------------------------
# Accelerate pitfalls
# ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_prepared_scheduler_steps_once_per_optimizer_step(monkeypatch):
    """Accelerate's default steps a prepared scheduler num_processes times per optimizer step;
    the loop's accelerator turns that off, so warmup and decay count optimizer steps."""
    import accelerate.scheduler as accelerate_scheduler
    from accelerate.scheduler import AcceleratedScheduler

    class TwoProcesses:
        num_processes = 2

    monkeypatch.setattr(accelerate_scheduler, "AcceleratorState", TwoProcesses)
    counts = {}
    for step_with_optimizer in (True, False):
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        optimizer.step_was_skipped = False
        inner = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        wrapped = AcceleratedScheduler(inner, optimizer, step_with_optimizer=step_with_optimizer)
        for _ in range(3):
            wrapped.step()
        counts[step_with_optimizer] = inner.last_epoch
    assert counts == {True: 6, False: 3}

    accelerator = make_accelerator(TrainingConfig())
    assert accelerator.step_scheduler_with_optimizer is False


def test_even_batches_repeats_batches_and_the_sampler_avoids_it():
    """Variable-size batches through Accelerate's sharding: with even_batches=True the last
    rank repeats a batch (samples counted twice), with False the ranks take different numbers
    of steps (a distributed run hangs). TokenBudgetBatchSampler shards by rank itself."""
    batches = [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9], [10, 11]]
    rank1 = list(BatchSamplerShard(batches, num_processes=2, process_index=1, even_batches=True))
    assert rank1 == [[3, 4], [9], [0, 1, 2]]  # batch [0, 1, 2] seen twice in the epoch
    uneven = [
        len(list(BatchSamplerShard(batches, num_processes=2, process_index=r, even_batches=False)))
        for r in (0, 1)
    ]
    assert uneven == [3, 2]

    lengths = np.random.default_rng(0).integers(5, 60, size=101)
    shares = [
        list(TokenBudgetBatchSampler(lengths, 200, seed=1, num_replicas=2, rank=r)) for r in (0, 1)
    ]
    assert len(shares[0]) == len(shares[1])
    seen = [i for share in shares for batch in share for i in batch]
    assert sorted(seen) == list(range(len(lengths)))


def test_checkpoints_save_the_trainer_state_and_data_position(tmp_path):
    """The state objects handed to the Checkpointer are saved in state.json; a resumed
    stream continues with exactly the batch the saved one would have produced next."""
    accelerator = Accelerator()
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    lengths = np.arange(10, 40)
    dataset = [{"index": i, "input_ids": np.ones(n, dtype=np.int64)} for i, n in enumerate(lengths)]
    collate = MaskingCollator(Tokenizer.from_spec("dna"), seed=3)

    def stream() -> BatchStream:
        return BatchStream(dataset, TokenBudgetBatchSampler(lengths, 120, seed=3), collate)

    def checkpointer(state: TrainerState, batches: BatchStream) -> Checkpointer:
        return Checkpointer(
            accelerator,
            tmp_path / "checkpoints",
            keep_last=1,
            kind="pretrain",
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            state={"trainer": state, "data": batches},
        )

    first = stream()
    state = TrainerState(step=7, samples_seen=70, targets_seen=700, first_loss=2.5)
    for _ in range(len(first.sampler) + 2):  # into the second epoch
        next(first)
    folder = checkpointer(state, first).save(state.step, {"epoch": first.epoch})
    expected = next(first)

    second, restored = stream(), TrainerState()
    checkpointer(restored, second).restore(folder)
    assert restored == state
    assert (second.epoch, second.batches_done) == (1, 2)
    assert torch.equal(next(second)["input_ids"], expected["input_ids"])


# ---------------------------------------------------------------------------------------------
# Loss normalisation and the optimizer
# ---------------------------------------------------------------------------------------------


def test_loss_is_summed_token_loss_over_all_targets_of_the_step():
    micro = masked_lm_batches(3)
    counts = [int((b["labels"] != -100).sum()) for b in micro]
    assert len(set(counts)) == 3

    reference = tiny_model()
    total = sum(
        reference(**{k: b[k] for k in ("input_ids", "attention_mask", "labels")}).loss_sum
        for b in micro
    )
    (total / sum(counts)).backward()

    accelerator = Accelerator(gradient_accumulation_steps=3)
    model = accelerator.prepare(tiny_model())
    totals = accumulate_gradients(accelerator, model, micro)

    assert totals.targets == sum(counts)
    assert totals.loss_sum == pytest.approx(total.item(), rel=1e-6)
    for (name, expected), actual in zip(
        reference.named_parameters(), model.parameters(), strict=True
    ):
        torch.testing.assert_close(actual.grad, expected.grad, rtol=1e-5, atol=1e-7, msg=name)

    mean_of_means = tiny_model()
    sum(
        mean_of_means(**{k: b[k] for k in ("input_ids", "attention_mask", "labels")}).loss
        for b in micro
    ).div(3).backward()
    differs = [
        not torch.allclose(p.grad, q.grad, rtol=1e-3)
        for p, q in zip(mean_of_means.parameters(), reference.parameters(), strict=True)
        if q.grad is not None and q.grad.abs().sum() > 0
    ]
    assert any(differs)


def test_weight_decay_spares_norms_biases_and_embeddings():
    model = tiny_model()
    optimizer = build_optimizer(model, TrainingConfig(weight_decay=0.1))
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    for name, param in model.named_parameters():
        exempt = param.ndim < 2 or "norm" in name or "embed" in name
        assert (id(param) not in decayed) == exempt, name
    assert decayed


def test_schedule_warms_up_then_decays_to_the_floor():
    training = TrainingConfig(lr=1.0, warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, training)
    lrs = []
    for _ in range(20):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == sorted(lrs[:4]) and lrs[3] < 1.0
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[4:] == sorted(lrs[4:], reverse=True)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------
# The loop: checkpoints, NaN, signals
# ---------------------------------------------------------------------------------------------


class PoisonAt(torch.nn.Module):
    """Wraps a model; from forward call ``at`` on its loss is NaN, or it sends a signal."""

    def __init__(self, inner: torch.nn.Module, at: int, signum: int | None = None) -> None:
        super().__init__()
        self.inner, self.at, self.signum, self.calls = inner, at, signum, 0

    def forward(self, **inputs):
        self.calls += 1
        output = self.inner(**inputs)
        if self.calls >= self.at and self.signum is None:
            output.loss_sum = output.loss_sum * float("nan")
        if self.calls == self.at and self.signum is not None:
            os.kill(os.getpid(), self.signum)
        return output


def loop_parts(tmp_path: Path, model: torch.nn.Module, **training):
    training = TrainingConfig(
        output_dir=str(tmp_path),
        max_steps=8,
        save_every=2,
        log_every=1,
        warmup_steps=1,
        **training,
    )
    accelerator = make_accelerator(training)
    optimizer = build_optimizer(model, training)
    scheduler = build_scheduler(optimizer, training)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    tokenizer = Tokenizer.from_spec("dna")
    rng = np.random.default_rng(0)
    dataset = [
        {"index": i, "input_ids": tokenizer.encode("".join(rng.choice(list("ACGT"), 30)))}
        for i in range(40)
    ]
    sampler = TokenBudgetBatchSampler([len(d["input_ids"]) for d in dataset], 128, seed=0)
    batches = BatchStream(dataset, sampler, MaskingCollator(tokenizer, seed=0))
    state = TrainerState()
    checkpointer = Checkpointer(
        accelerator,
        tmp_path / "checkpoints",
        training.keep_last,
        kind="pretrain",
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        state={"trainer": state, "data": batches},
    )
    context = LoopContext(
        checkpointer=checkpointer, log=MetricsLog(accelerator, tmp_path / "log.jsonl")
    )
    return accelerator, model, optimizer, scheduler, batches, state, training, context


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    parts = loop_parts(tmp_path, PoisonAt(tiny_model(), at=5))
    with pytest.raises(TrainingDiverged, match=r"step 5: the training loss is nan.*step 4"):
        train_loop(*parts)
    assert [step for step, _ in complete_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    saved = load_file(tmp_path / "checkpoints" / "step-00000004" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert parts[5].step == 4


def test_sigterm_saves_at_the_step_boundary_and_the_run_resumes(tmp_path):
    parts = loop_parts(tmp_path, PoisonAt(tiny_model(), at=3, signum=signal.SIGTERM))
    assert train_loop(*parts) == "interrupted"
    assert parts[5].step == 3
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    reset_accelerate_state()
    again = loop_parts(tmp_path, PoisonAt(tiny_model(), at=10**9))
    again[7].checkpointer.restore(latest_checkpoint(tmp_path / "checkpoints"))
    assert again[5].step == 3
    assert train_loop(*again) == "finished"
    assert again[5].step == 8
    assert [step for step, _ in complete_checkpoints(tmp_path / "checkpoints")] == [6, 8]


# ---------------------------------------------------------------------------------------------
# pretrain() end to end on a small FASTA
# ---------------------------------------------------------------------------------------------


def test_pretrain_writes_run_files_checkpoints_and_model(tmp_path):
    fasta = write_fasta(tmp_path / "toy.fa", records=4, length=2000)
    config = run_config_from_dict(run_values(tmp_path, fasta))
    result = pretrain(config)
    run = tmp_path / "run"
    assert result.outcome == "finished" and result.step == 6
    assert yaml.safe_load((run / "config.yaml").read_text()) == config.to_dict()
    provenance = json.loads((run / "run.json").read_text())
    assert provenance["seed"] == 0 and provenance["torch"] == torch.__version__
    train_rows, valid_rows = read_log(run)
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert {"epoch", "loss", "lr", "tokens_per_s", "grad_norm"} <= set(train_rows[0])
    assert [r["step"] for r in valid_rows] == [3, 6]
    assert valid_rows[-1]["valid_perplexity"] == pytest.approx(
        math.exp(valid_rows[-1]["valid_loss"])
    )
    assert [step for step, _ in complete_checkpoints(run / "checkpoints")] == [4, 6]
    model = load_model(run / "model")
    assert isinstance(model, MaskedLM) and model.tokenizer.vocab_size == model.config.vocab_size
    title = re.search("<h1>(.*)</h1>", (run / "report.html").read_text()).group(1)
    parameters = model.num_parameters() / 1e6
    assert title == (
        f"Masked-LM pretraining on toy.fa, model: tiny (2 layers of width 16), "
        f"{parameters:.2f}M parameters, dna"
    )

    reset_accelerate_state()
    with pytest.raises(ConfigError, match="--resume latest"):
        pretrain(config)
    reset_accelerate_state()
    again = pretrain(config, resume="latest")  # already at max_steps: nothing to do
    assert again.step == 6 and again.outcome == "finished"
    assert len(read_log(run)[0]) == 6


def test_resume_needs_a_complete_checkpoint(tmp_path):
    fasta = write_fasta(tmp_path / "toy.fa", records=2, length=500)
    config = run_config_from_dict(run_values(tmp_path, fasta))
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        pretrain(config, resume="latest")
    reset_accelerate_state()
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        pretrain(config, resume=tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_compiled_training_matches_eager_and_resumes_an_eager_checkpoint(tmp_path):
    fasta = write_fasta(tmp_path / "toy.fa", records=4, length=2000)
    steps = {"max_steps": 4, "save_every": 2, "eval_every": 2}

    def run(name: str, *, compile: bool, resume: str | None = None) -> Path:
        reset_accelerate_state()
        values = run_values(tmp_path / name, fasta, compile=compile, **steps)
        pretrain(run_config_from_dict(values), resume=resume)
        return tmp_path / name / "run"

    torch._dynamo.utils.counters.clear()
    eager = run("eager", compile=False)
    assert not torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = run("compiled", compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    for rows in (0, 1):  # training, then validation rows
        key = ("loss", "valid_loss")[rows]
        assert [r[key] for r in read_log(compiled)[rows]] == pytest.approx(
            [r[key] for r in read_log(eager)[rows]], rel=1e-4
        )
    expected = model_weights(eager)
    assert model_weights(compiled).keys() == expected.keys()  # no "_orig_mod." prefixes

    resumed = tmp_path / "resumed" / "run"
    shutil.copytree(eager, resumed)
    shutil.rmtree(resumed / "model")
    shutil.rmtree(latest_checkpoint(resumed / "checkpoints"))  # back to step 2
    run("resumed", compile=True, resume="latest")
    for weights in (model_weights(compiled), model_weights(resumed)):
        assert all(torch.allclose(weights[k], expected[k], atol=1e-5) for k in expected)


# ---------------------------------------------------------------------------------------------
# Slow: processes killed, launched in pairs, and the tiny recipe on the real genome
# ---------------------------------------------------------------------------------------------


def cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "biotransformer", "pretrain", str(config), *args]


def model_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_and_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    fasta = write_fasta(tmp_path / "toy.fa", records=6, length=3000)
    values = run_values(tmp_path, fasta, max_steps=40, save_every=10, eval_every=20)
    values["model"].update(dropout=0.1, attention_dropout=0.1)  # RNG state must be restored
    values["training"]["gradient_accumulation_steps"] = 2
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(values))
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    subprocess.run(
        cli(config, "--output-dir", str(straight)),
        check=True,
        env=SUBPROCESS_ENV,
        capture_output=True,
    )

    process = subprocess.Popen(
        cli(config, "--output-dir", str(killed)),
        env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 200
    while latest_checkpoint(killed / "checkpoints") is None and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model").exists(), "the run finished before it could be killed"
    resumed_from = json.loads(
        (latest_checkpoint(killed / "checkpoints") / "checkpoint.json").read_text()
    )["step"]
    assert resumed_from < 40

    subprocess.run(
        cli(config, "--output-dir", str(killed), "--resume", "latest"),
        check=True,
        env=SUBPROCESS_ENV,
        capture_output=True,
    )
    expected, actual = model_weights(straight), model_weights(killed)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    for key, rows in (("loss", 0), ("valid_loss", 1)):
        assert [r[key] for r in read_log(straight)[rows]] == [
            r[key] for r in read_log(killed)[rows]
        ]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    fasta = write_fasta(tmp_path / "toy.fa", records=4, length=2480)
    values = run_values(tmp_path, fasta, max_steps=8, save_every=4, eval_every=4)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(values))
    script = tmp_path / "pretrain_and_dump.py"
    script.write_text(
        "import os, sys\n"
        "from safetensors.torch import save_file\n"
        "from biotransformer.config import load_run_config\n"
        "from biotransformer.train import pretrain\n"
        "result = pretrain(load_run_config(sys.argv[1], sys.argv[2:]))\n"
        "state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}\n"
        "state.pop('lm_head.decoder.weight')  # tied to the token embedding\n"
        "rank = os.environ.get('RANK', '0')\n"
        "save_file(state, f'{result.output_dir}/rank{rank}.safetensors')\n"
    )
    single, double = tmp_path / "single", tmp_path / "double"

    # The same global batches: one process takes two micro-batches per step, two processes
    # one each (the sampler deals batch i to rank i % 2).
    subprocess.run(
        [
            sys.executable,
            str(script),
            str(config),
            f"training.output_dir={single}",
            "training.gradient_accumulation_steps=2",
        ],
        check=True,
        env=SUBPROCESS_ENV,
        capture_output=True,
    )
    lengths = ShardDataset(single / "data", "train", max_length=64).lengths
    batches = TokenBudgetBatchSampler(lengths, 512, seed=0).global_batches()
    assert TokenBudgetBatchSampler(lengths, 512, seed=0, num_replicas=2).global_batches() == batches
    assert len(batches) >= 2 * 8, "the run must stay within one epoch"

    run_torchrun([str(script), str(config), f"training.output_dir={double}"], env=SUBPROCESS_ENV)
    rank0, rank1 = (load_file(double / f"rank{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    single_weights = load_file(single / "rank0.safetensors")
    assert all(torch.allclose(rank0[n], single_weights[n], rtol=1e-4, atol=1e-6) for n in rank0)

    train_1, valid_1 = read_log(single)
    train_2, valid_2 = read_log(double)
    assert [r["step"] for r in train_1] == [r["step"] for r in train_2] == list(range(1, 9))
    assert [r["lr"] for r in train_1] == pytest.approx([r["lr"] for r in train_2], rel=1e-12)
    pairs = [(a["loss"], b["loss"]) for a, b in zip(train_1, train_2, strict=True)]
    pairs += [(a["valid_loss"], b["valid_loss"]) for a, b in zip(valid_1, valid_2, strict=True)]
    worst = max(abs(b - a) / abs(a) for a, b in pairs)
    print(f"2 ranks vs 1 process: largest relative loss difference {worst:.2e}")
    assert worst < 1e-5
