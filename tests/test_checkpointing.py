"""Checkpoints in safetensors and JSON: every piece round-trips, loading is strict, a planted
pickle is refused unread, runs of another kind or process count are refused, and training
that diverges stops with a clear error."""

from __future__ import annotations

import ast
import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import reset_accelerate_state, run_torchrun
from safetensors.torch import load_file

from biotransformer.checkpointing import Checkpointer, latest_checkpoint, verify_checkpoint
from biotransformer.cli import main
from biotransformer.config import ModelConfig, TrainingConfig
from biotransformer.engine import TrainerState, build_optimizer, build_scheduler
from biotransformer.errors import ConfigError, ModelDirectoryError
from biotransformer.heads import MaskedLM
from biotransformer.runtime import make_accelerator

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

PACKAGE = Path(__file__).resolve().parents[1] / "biotransformer"
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def parts(tmp_path: Path, seed: int, state: TrainerState, **model) -> Checkpointer:
    """A checkpointer over a tiny masked LM (tied weights), AdamW and its schedule."""
    training = TrainingConfig(output_dir=str(tmp_path), max_steps=10, warmup_steps=2)
    accelerator = make_accelerator(training)
    torch.manual_seed(seed)
    network = MaskedLM(ModelConfig.from_preset("tiny", vocab_size=20, pad_id=0, **model))
    optimizer = build_optimizer(network, training)
    scheduler = build_scheduler(optimizer, training)
    network, optimizer, scheduler = accelerator.prepare(network, optimizer, scheduler)
    return Checkpointer(
        accelerator,
        tmp_path / "checkpoints",
        keep_last=2,
        kind="pretrain",
        model=network,
        optimizer=optimizer,
        scheduler=scheduler,
        state={"trainer": state},
    )


def train_steps(checkpointer: Checkpointer, steps: int) -> None:
    ids = torch.randint(5, 20, (4, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        checkpointer.model(input_ids=ids, labels=ids).loss.backward()
        checkpointer.optimizer.step()
        checkpointer.scheduler.step()
        checkpointer.optimizer.zero_grad()


def draws() -> tuple:
    return random.random(), np.random.random(), torch.rand(3).tolist(), torch.randn(2).tolist()


@pytest.fixture
def saved(tmp_path):
    """A checkpoint after 3 steps, and the random draws that followed its save."""
    checkpointer = parts(tmp_path, 0, TrainerState(step=3, samples_seen=12, first_loss=3.1))
    train_steps(checkpointer, 3)
    folder = checkpointer.save(3, {"epoch": 0})
    return checkpointer, folder, draws()


def test_every_piece_round_trips_exactly(saved, tmp_path):
    original, folder, after_save = saved
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*original.files(), "checkpoint.json"]
    )
    assert not [p for p in folder.iterdir() if p.suffix in (".pkl", ".bin", ".pt")]
    info = json.loads((folder / "checkpoint.json").read_text())
    assert (info["kind"], info["step"], info["num_processes"]) == ("pretrain", 3, 1)

    reset_accelerate_state()
    restored = parts(tmp_path, 1, TrainerState())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restored.restore(folder)
    assert draws() == after_save  # the random streams continue where the save left them
    assert restored.state["trainer"] == original.state["trainer"]
    expected, actual = original.model.state_dict(), restored.model.state_dict()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert restored.model.lm_head.decoder.weight is restored.model.encoder.embed_tokens.weight
    before, after = original.optimizer.state_dict(), restored.optimizer.state_dict()
    assert before["param_groups"] == after["param_groups"]
    assert before["state"].keys() == after["state"].keys() and before["state"]
    for index, entries in before["state"].items():
        for name, tensor in entries.items():
            assert torch.equal(tensor, after["state"][index][name]), (index, name)
    assert restored.scheduler.state_dict() == original.scheduler.state_dict()
    assert restored.last_saved_step == 3

    for checkpointer in (original, restored):  # and training goes on identically
        torch.manual_seed(5)
        train_steps(checkpointer, 2)
    expected, actual = original.model.state_dict(), restored.model.state_dict()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def planted_pickle(path: Path, marker: Path) -> Path:
    """A real pickle that touches ``marker`` when it is loaded."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps(Payload()))
    return path


def test_the_planted_pickle_is_live(tmp_path):
    """The payload used below does run code when unpickled: the tests refuse a real threat."""
    marker = tmp_path / "ran"
    pickle.loads(planted_pickle(tmp_path / "x.pkl", marker).read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ("pickle", ModelDirectoryError, r"custom_checkpoint_0\.pkl: a pickle file.*older"),
        ("extra", ModelDirectoryError, r"notes\.txt: not a file of this checkpoint"),
        ("missing", ModelDirectoryError, r"scheduler\.json: missing from the checkpoint"),
        ("kind", ConfigError, "holds a checkpoint of a fine-tuning run.*Fix:"),
        ("processes", ConfigError, "2 process.*this run has 1.*Fix: resume with 2"),
        ("format", ModelDirectoryError, "not a checkpoint of this version"),
        ("shape", ModelDirectoryError, r"model\.safetensors.*size mismatch"),
        ("optimizer", ModelDirectoryError, r"optimizer\.safetensors: unknown tensor"),
        ("damaged", ModelDirectoryError, r"scheduler\.json: JSONDecodeError.*damaged"),
        ("truncated", ModelDirectoryError, r"rng-rank0\.json: SafetensorError"),
        ("state", ModelDirectoryError, r"state\.json.*keys \['step'\], expected"),
    ],
)
def test_loading_is_strict(saved, tmp_path, change, error, message):
    _, folder, _ = saved
    info_path = folder / "checkpoint.json"
    info = json.loads(info_path.read_text())
    marker = tmp_path / "ran"
    model = {}
    if change == "pickle":
        planted_pickle(folder / "custom_checkpoint_0.pkl", marker)
    elif change == "extra":
        (folder / "notes.txt").write_text("hello")
    elif change == "missing":
        (folder / "scheduler.json").unlink()
    elif change == "kind":
        info["kind"] = "finetune"
    elif change == "processes":
        info["num_processes"] = 2
        for suffix in (".json", ".safetensors"):
            shutil.copy(folder / f"rng-rank0{suffix}", folder / f"rng-rank1{suffix}")
            info["files"].append(f"rng-rank1{suffix}")
    elif change == "format":
        del info["format"]
    elif change == "shape":
        model = {"hidden_size": 24, "ffn_size": 48}
    elif change == "optimizer":
        tensors = load_file(folder / "optimizer.safetensors")
        tensors["state.999.exp_avg"] = torch.zeros(1)
        from safetensors.torch import save_file

        save_file(tensors, folder / "optimizer.safetensors")
    elif change == "damaged":
        (folder / "scheduler.json").write_text('{"base_lrs": [0.1')
    elif change == "truncated":
        data = (folder / "rng-rank0.safetensors").read_bytes()
        (folder / "rng-rank0.safetensors").write_bytes(data[: len(data) // 2])
    elif change == "state":
        (folder / "state.json").write_text('{"trainer": {"step": 3}}')
    info_path.write_text(json.dumps(info))
    reset_accelerate_state()
    with pytest.raises(error, match=message):
        parts(tmp_path / "other", 1, TrainerState(), **model).restore(folder)
    assert not marker.exists()


def test_pruning_and_removal_keep_folders_of_other_formats(saved):
    checkpointer, folder, _ = saved
    foreign = folder.with_name("step-00000001")
    foreign.mkdir()
    (foreign / "checkpoint.json").write_text('{"step": 1, "epoch": 0}')  # an older version's
    for step in (4, 5):
        checkpointer.save(step, {"epoch": 0})
    names = sorted(p.name for p in folder.parent.iterdir())
    assert names == ["step-00000001", "step-00000004", "step-00000005"]
    with pytest.raises(ModelDirectoryError, match="not a checkpoint of this version"):
        verify_checkpoint(foreign, kind="pretrain", num_processes=1)
    checkpointer.remove_all()  # the end of a fine-tuning run
    assert [p.name for p in folder.parent.iterdir()] == ["step-00000001"]
    shutil.rmtree(foreign)
    checkpointer.remove_all()
    assert not folder.parent.exists()


# ---------------------------------------------------------------------------------------------
# Through the command line: planted pickles, the wrong kind of run, divergence
# ---------------------------------------------------------------------------------------------


def labelled_csv(path: Path, records: int = 80) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(records):
        bases = rng.choice(list("ACGT"), size=40)
        if i % 2:
            bases[10:16] = list("TATAAA")
        rows.append(f"{''.join(bases)},{i % 2}\n")
    path.write_text("sequence,label\n" + "".join(rows))
    return path


def finetune_args(train: Path, out: Path, *options: str) -> list[str]:
    return [
        "finetune", "--train", str(train), "--out", str(out), "--preset", "tiny",
        "--max-tokens", "512", "--bootstrap", "0", *options, "plots=false",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pretrain_config(tmp_path_factory):
    """A finished tiny pretraining run (its checkpoints kept) and its config file."""
    tmp = tmp_path_factory.mktemp("pretrain")
    rng = np.random.default_rng(0)
    fasta = tmp / "toy.fa"
    fasta.write_text(
        "".join(f">s{i}\n{''.join(rng.choice(list('ACGT'), 600))}\n" for i in range(3))
    )
    values = {
        "model": {"preset": "tiny", "hidden_size": 16, "num_layers": 1, "num_heads": 2},
        "data": {"train_files": [str(fasta)], "tokenizer": "dna", "window_tokens": 62},
        "training": {"output_dir": str(tmp / "run"), "max_steps": 2, "save_every": 1},
    }
    values["model"].update(ffn_size=32, max_length=64)
    values["data"].update(valid_fraction=0.1, max_length=64, max_tokens=512)
    values["training"].update(warmup_steps=1, eval_every=2, log_every=1)
    config = tmp / "run.yaml"
    config.write_text(yaml.safe_dump(values))
    reset_accelerate_state()
    assert main(["pretrain", str(config)]) == 0
    return config, tmp / "run"


def test_pretrain_resume_refuses_a_planted_pickle_unread(pretrain_config, tmp_path, capsys):
    config, run = pretrain_config
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = tmp_path / "ran"
    planted = planted_pickle(
        latest_checkpoint(copy / "checkpoints") / "custom_checkpoint_0.pkl", marker
    )
    status = main(["pretrain", str(config), "--output-dir", str(copy), "--resume", "latest"])
    err = capsys.readouterr().err
    assert status == 2 and str(planted) in err and "older, pickle-based version" in err
    assert "Traceback" not in err and not marker.exists()


def test_finetune_and_pretrain_refuse_each_others_runs(pretrain_config, tmp_path, capsys):
    config, finished = pretrain_config
    run = tmp_path / "pretrained"
    shutil.copytree(finished, run)
    train = labelled_csv(tmp_path / "train.csv")
    assert main(finetune_args(train, run, "--resume", "latest")) == 2
    err = capsys.readouterr().err
    assert "holds a biotransformer pretrain run, not a finetune run" in err
    assert f"--model {run / 'model'}" in err
    assert main(finetune_args(train, run)) == 2  # without --resume: the same advice
    assert "holds a biotransformer pretrain run" in capsys.readouterr().err

    out = tmp_path / "finetuned"  # lr 10 diverges at step 2, after a checkpoint at step 1
    assert main(finetune_args(train, out, "--lr", "10", "training.save_every=1")) == 2
    err = capsys.readouterr().err
    assert "the training diverged" in err and "--resume latest" in err
    reset_accelerate_state()
    status = main(["pretrain", str(config), "--output-dir", str(out), "--resume", "latest"])
    err = capsys.readouterr().err
    assert status == 2 and "holds a biotransformer finetune run, not a pretrain run" in err
    assert "biotransformer finetune" in err

    marker = tmp_path / "ran"
    planted = planted_pickle(latest_checkpoint(out / "checkpoints") / "random_states_0.pkl", marker)
    reset_accelerate_state()
    assert main(finetune_args(train, out, "--resume", "latest")) == 2
    err = capsys.readouterr().err
    assert str(planted) in err and "Traceback" not in err and not marker.exists()


def test_a_diverging_finetune_stops_and_leaves_no_model(tmp_path, capsys):
    train = labelled_csv(tmp_path / "train.csv")
    out = tmp_path / "out"
    assert main(finetune_args(train, out, "--lr", "10", "--epochs", "3")) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "the training loss rose from 0.6" in err and "the training diverged" in err
    assert "Fix: lower training.lr (finetune: --lr)" in err and "max_grad_norm" in err
    assert "--resume" not in err  # no checkpoint to resume from
    assert not (out / "model").exists() and not (out / "metrics.json").exists()
    reset_accelerate_state()
    assert main(finetune_args(train, tmp_path / "fine", "--lr", "1e-3", "--epochs", "3")) == 0
    assert (tmp_path / "fine" / "model" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# Two processes, and no pickle or Accelerate state functions in the package
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_rank_resume_is_bit_identical_and_needs_two_ranks(pretrain_config, tmp_path, capsys):
    config, _ = pretrain_config
    values = yaml.safe_load(config.read_text())
    values["model"].update(dropout=0.1)
    values["training"].update(max_steps=4, save_every=2)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(values))
    module = ["-m", "biotransformer", "pretrain", str(config), "--output-dir"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_torchrun([*module, str(straight)], env=SUBPROCESS_ENV)
    checkpoint = latest_checkpoint(straight / "checkpoints")
    assert {"rng-rank0.json", "rng-rank1.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "model")
    shutil.rmtree(latest_checkpoint(resumed / "checkpoints"))  # back to step 2
    reset_accelerate_state()
    status = main(["pretrain", str(config), "--output-dir", str(resumed), "--resume", "latest"])
    assert status == 2 and "2 process(es), this run has 1" in capsys.readouterr().err
    run_torchrun([*module, str(resumed), "--resume", "latest"], env=SUBPROCESS_ENV)
    expected, actual = (load_file(r / "model" / "model.safetensors") for r in (straight, resumed))
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


FORBIDDEN_CALLS = {"load_state", "save_state", "register_for_checkpointing", "read_pickle"}


def test_the_package_never_unpickles():
    """No pickle use beyond catching ``pickle.UnpicklingError``, no ``torch.load`` without
    ``weights_only=True``, no ``np.load(allow_pickle=True)``, no Accelerate save/load_state."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", "")]
                if any(n and n.split(".")[0] in ("dill", "cloudpickle", "shelve") for n in names):
                    found.append(f"{where} imports a pickle library")
                if isinstance(node, ast.ImportFrom) and node.module == "pickle":
                    found.append(f"{where} imports from pickle")
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "pickle"
                and node.attr != "UnpicklingError"
            ):
                found.append(f"{where} uses pickle.{node.attr}")
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
            name = node.func.attr
            owner = getattr(node.func.value, "id", "")
            if name in FORBIDDEN_CALLS:
                found.append(f"{where} calls {name}")
            if owner == "torch" and name == "load" and keywords.get("weights_only") is not True:
                found.append(f"{where} calls torch.load without weights_only=True")
            if owner in ("np", "numpy") and name == "load" and keywords.get("allow_pickle"):
                found.append(f"{where} calls np.load with allow_pickle")
    assert not found, found
