"""Scale-out, run for real on CPU: FSDP (version 2) on two gloo ranks, two simulated nodes,
the SLURM script up to its launch line, the DeepSpeed recipe through Accelerate's loader.

Every multi-process test starts real ``torchrun`` launchers; ``pytest -k "fsdp or nodes"``
selects them. One DDP pretraining run (module fixture) is the reference for FSDP and for the
two nodes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import run_torchrun
from safetensors.torch import load_file

from biotransformer.checkpointing import latest_checkpoint
from biotransformer.heads import load_model

ROOT = Path(__file__).resolve().parents[1]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# What `accelerate launch --config_file recipes/accelerate/fsdp.yaml` sets for its fsdp_config
# (test_fsdp_environment_is_the_recipes checks the two agree).
FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "Block",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
    "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
}
# Measured: FSDP vs DDP, largest relative difference of a logged loss over 20 steps.
# Pretraining 3e-7 (float32 reductions in another order), fine-tuning below 1e-6.
LOSS_TOLERANCE = 1e-5
STEPS = 20


def losses(run: Path) -> list[float]:
    """Training losses, one per step, from the run's ``log.jsonl``."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def largest_relative_difference(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) == STEPS
    return max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory):
    """A 20-step tiny pretraining config (dropout on, checkpoint at step 10) and its DDP run
    on two ranks of one node, launched with the command line the SLURM script runs."""
    tmp = tmp_path_factory.mktemp("scaleout")
    rng = np.random.default_rng(0)
    fasta = tmp / "toy.fa"
    genome = ["".join(rng.choice(list("ACGT"), 1200)) for _ in range(4)]
    fasta.write_text("".join(f">s{i}\n{sequence}\n" for i, sequence in enumerate(genome)))
    values = {
        "model": {"preset": "tiny", "hidden_size": 16, "num_layers": 1, "num_heads": 2},
        "data": {"train_files": [str(fasta)], "tokenizer": "dna", "window_tokens": 62},
        "training": {"max_steps": STEPS, "save_every": 10, "eval_every": 10, "log_every": 1},
    }
    values["model"].update(ffn_size=32, max_length=64, dropout=0.1)
    values["data"].update(valid_fraction=0.1, max_length=64, max_tokens=256)
    values["training"].update(warmup_steps=2)
    config = tmp / "run.yaml"
    config.write_text(yaml.safe_dump(values))
    ddp = tmp / "ddp"
    run_torchrun(pretrain_command(config, ddp), env=SUBPROCESS_ENV)
    return config, ddp


def pretrain_command(config: Path, run_dir: Path) -> list[str]:
    return ["-m", "biotransformer", "pretrain", str(config), "--output-dir", str(run_dir)]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fsdp_pretrain_matches_ddp_resumes_bit_identical_and_saves_an_ordinary_model(
    pretrain, tmp_path
):
    config, ddp = pretrain
    env = {**SUBPROCESS_ENV, **FSDP_ENV}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_torchrun(pretrain_command(config, straight), env=env)
    difference = largest_relative_difference(losses(ddp), losses(straight))
    print(f"FSDP vs DDP pretraining: largest relative loss difference {difference:.1e}")
    assert difference < LOSS_TOLERANCE

    # The checkpoint is the unsharded format: the same files and tensor names as DDP's
    checkpoint = latest_checkpoint(straight / "checkpoints")
    info = json.loads((checkpoint / "checkpoint.json").read_text())
    assert info["distributed_type"] == "FSDP" and info["num_processes"] == 2
    ddp_checkpoint = latest_checkpoint(ddp / "checkpoints")
    for name in ("model.safetensors", "optimizer.safetensors"):
        fsdp_tensors, ddp_tensors = load_file(checkpoint / name), load_file(ddp_checkpoint / name)
        assert {k: v.shape for k, v in fsdp_tensors.items()} == {
            k: v.shape for k, v in ddp_tensors.items()
        }

    # Killed after the step-10 checkpoint: its later state gone, resumed under FSDP
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "model")
    shutil.rmtree(resumed / "checkpoints" / checkpoint.name)
    assert latest_checkpoint(resumed / "checkpoints").name == "step-00000010"
    result = run_torchrun([*pretrain_command(config, resumed), "--resume", "latest"], env=env)
    assert "resumed from" in result.stdout + result.stderr
    expected, actual = weights(straight), weights(resumed)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert losses(resumed) == losses(straight)

    # The final model directory: ordinary, loadable in one process, DDP's weights
    model = load_model(straight / "model", require_tokenizer=True)
    reference = weights(ddp)
    assert set(expected) == set(reference)
    assert all(torch.allclose(expected[n], reference[n], atol=1e-5) for n in expected)
    ids = torch.as_tensor(model.tokenizer.encode("ACGTACGTTTGACA"))[None]
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_ddp_checkpoint_resumes_under_fsdp_to_the_ddp_run(pretrain, tmp_path):
    config, ddp = pretrain
    resumed = tmp_path / "resumed"
    shutil.copytree(ddp, resumed)  # killed after the step-10 checkpoint: its later state gone
    shutil.rmtree(resumed / "model")
    shutil.rmtree(latest_checkpoint(resumed / "checkpoints"))
    assert latest_checkpoint(resumed / "checkpoints").name == "step-00000010"
    env = {**SUBPROCESS_ENV, **FSDP_ENV}
    result = run_torchrun([*pretrain_command(config, resumed), "--resume", "latest"], env=env)
    assert "resumed from" in result.stdout + result.stderr
    info = json.loads((latest_checkpoint(resumed / "checkpoints") / "checkpoint.json").read_text())
    assert info["distributed_type"] == "FSDP" and info["step"] == STEPS
    # Steps 1-10 are DDP's own log rows; 11-20 ran sharded, so they match within FSDP's tolerance
    assert losses(resumed)[:10] == losses(ddp)[:10]
    assert largest_relative_difference(losses(ddp), losses(resumed)) < LOSS_TOLERANCE
    expected, actual = weights(ddp), weights(resumed)
    assert set(expected) == set(actual)
    assert all(torch.allclose(expected[n], actual[n], atol=1e-5) for n in expected)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fsdp_finetune_matches_ddp_and_saves_an_ordinary_model(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        bases = rng.choice(list("ACGT"), size=40)
        if i % 2:
            bases[10:16] = list("TATAAA")  # the planted motif of class 1
        rows.append(f"{''.join(bases)},{i % 2}\n")
    train = tmp_path / "train.csv"
    train.write_text("sequence,label\n" + "".join(rows))
    runs = {}
    for name, extra in (("ddp", {}), ("fsdp", FSDP_ENV)):
        runs[name] = tmp_path / name
        command = ["-m", "biotransformer", "finetune", "--train", str(train)]
        command += ["--out", str(runs[name]), "--preset", "tiny", "--max-tokens", "256"]
        command += ["--bootstrap", "0", "--epochs", "4", "training.log_every=1", "plots=false"]
        run_torchrun(command, env={**SUBPROCESS_ENV, **extra})
    ddp_losses, fsdp_losses = losses(runs["ddp"]), losses(runs["fsdp"])
    assert len(ddp_losses) >= 10
    difference = max(abs(a - b) / abs(a) for a, b in zip(ddp_losses, fsdp_losses, strict=True))
    print(f"FSDP vs DDP fine-tuning: largest relative loss difference {difference:.1e}")
    assert difference < LOSS_TOLERANCE
    metrics = [json.loads((runs[n] / "metrics.json").read_text()) for n in ("ddp", "fsdp")]
    assert metrics[0]["best_step"] == metrics[1]["best_step"]
    model = load_model(runs["fsdp"] / "model", require_tokenizer=True)
    assert model.task.task == "classification"
    reference = load_file(runs["ddp"] / "model" / "model.safetensors")
    fsdp = load_file(runs["fsdp"] / "model" / "model.safetensors")
    assert all(torch.allclose(fsdp[n], reference[n], atol=1e-5) for n in reference)


# ---------------------------------------------------------------------------------------------
# Two nodes, simulated; the SLURM script up to its launch line
# ---------------------------------------------------------------------------------------------


def slurm_launch_line(tmp: Path, run_dir: Path, *arguments: str, node_id: int = 0) -> list[str]:
    """Run recipes/slurm/pretrain_multinode.sbatch with SLURM's variables set and ``srun``
    and ``scontrol`` replaced by recorders: the command line it launches, variables resolved."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp / f"srun-{node_id}.json"
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'node-a\\nnode-b\\n'\n")
    (bin_dir / "srun").write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": str(node_id),
        "SLURM_JOB_NAME": "biotransformer-pretrain",
        "RUN_DIR": str(run_dir),
    }
    script = ROOT / "recipes" / "slurm" / "pretrain_multinode.sbatch"
    subprocess.run(["bash", str(script), *arguments], env=env, cwd=tmp, check=True, timeout=30)
    return json.loads(record.read_text())


def test_nodes_slurm_script_resolves_its_launch_line(tmp_path):
    """Node 1 of two, a run directory that holds a checkpoint (a requeued job)."""
    run_dir = tmp_path / "runs" / "dna"
    line = slurm_launch_line(tmp_path, run_dir, "pretrain_dna_base", "training.max_steps=9")
    assert line[-2:] != ["--resume", "latest"]  # nothing to resume yet
    (run_dir / "checkpoints" / "step-00000010").mkdir(parents=True)
    line = slurm_launch_line(
        tmp_path, run_dir, "pretrain_dna_base", "training.max_steps=9", node_id=1
    )
    assert line[:3] == ["accelerate", "launch", "--multi_gpu"]
    assert dict(zip(line[3:13:2], line[4:14:2], strict=True)) == {
        "--num_machines": "2",
        "--num_processes": "8",
        "--machine_rank": "1",
        "--main_process_ip": "node-a",
        "--main_process_port": "29500",
    }
    assert line[13:15] == ["--mixed_precision", "bf16"]
    assert line[15:] == [
        "-m", "biotransformer", "pretrain", "pretrain_dna_base", "training.max_steps=9",
        "--output-dir", str(run_dir), "--resume", "latest",
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_nodes_run_the_slurm_command_and_see_the_batches_of_one_node(pretrain, tmp_path):
    """Two launchers, one per simulated node (``--nnodes 2``, a node rank each, rendezvous on
    127.0.0.1, as accelerate launch's static rendezvous does), one process each, run the
    command line of the SLURM script; the run equals two ranks on one node bit for bit."""
    config, ddp = pretrain
    run_dir = tmp_path / "two-nodes"
    launched = slurm_launch_line(tmp_path, run_dir, str(config))
    command = launched[launched.index("-m") :]
    assert command == [*pretrain_command(config, run_dir)]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    port = free_port()
    nodes = []
    for node_rank in (0, 1):
        launcher = [torchrun, "--nnodes", "2", "--node_rank", str(node_rank)]
        launcher += ["--nproc_per_node", "1", "--master_addr", "127.0.0.1"]
        launcher += ["--master_port", str(port), *command]
        nodes.append(
            subprocess.Popen(
                launcher,
                env=SUBPROCESS_ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["num_processes"] == 2
    assert losses(run_dir) == losses(ddp)
    expected, actual = weights(ddp), weights(run_dir)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


# ---------------------------------------------------------------------------------------------
# The recipes as Accelerate reads them
# ---------------------------------------------------------------------------------------------


def test_fsdp_environment_is_the_recipes():
    """FSDP_ENV, which the CPU tests launch with, is what Accelerate makes of fsdp.yaml."""
    from accelerate.commands.config.config_args import load_config_from_file

    recipe = load_config_from_file(str(ROOT / "recipes" / "accelerate" / "fsdp.yaml"))
    fsdp = recipe.fsdp_config
    assert str(fsdp["fsdp_version"]) == FSDP_ENV["FSDP_VERSION"]
    assert fsdp["fsdp_auto_wrap_policy"] == FSDP_ENV["FSDP_AUTO_WRAP_POLICY"]
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == FSDP_ENV["FSDP_TRANSFORMER_CLS_TO_WRAP"]
    assert fsdp["fsdp_state_dict_type"] == FSDP_ENV["FSDP_STATE_DICT_TYPE"]
    for key in ("reshard_after_forward", "cpu_ram_efficient_loading"):
        assert str(fsdp[f"fsdp_{key}"]).lower() == FSDP_ENV[f"FSDP_{key.upper()}"]


def test_deepspeed_recipe_is_validated_by_accelerate():
    """deepspeed.yaml through Accelerate's config loader and its DeepSpeed plugin (which
    builds the DeepSpeed config without DeepSpeed installed): ZeRO stage 2, nothing offloaded,
    the accumulation and clipping of biotransformer's defaults."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    from biotransformer.config import TrainingConfig

    recipe = load_config_from_file(str(ROOT / "recipes" / "accelerate" / "deepspeed.yaml"))
    assert recipe.distributed_type == DistributedType.DEEPSPEED
    plugin = DeepSpeedPlugin(**recipe.deepspeed_config)
    config = plugin.deepspeed_config
    assert config["zero_optimization"]["stage"] == 2
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert config["zero_optimization"]["offload_param"]["device"] == "none"
    defaults = TrainingConfig()
    assert config["gradient_accumulation_steps"] == defaults.gradient_accumulation_steps
    assert config["gradient_clipping"] == defaults.max_grad_norm


def test_fsdp_refuses_at_the_start_a_model_it_cannot_gather_into_an_ordinary_one():
    """Weights the model's config does not build (LoRA adapters: ``apply_lora`` adds such
    weights to the block linears) could not be held by FSDP's replica for evaluation and the
    model directory."""
    from helpers import tiny_binary_classifier

    from biotransformer.errors import ConfigError
    from biotransformer.sharding import check_rebuildable

    model = tiny_binary_classifier()
    check_rebuildable(model)
    qkv = model.encoder.layers[0].attn.qkv
    qkv.register_parameter("lora_A", torch.nn.Parameter(torch.zeros(2, qkv.in_features)))
    with pytest.raises(ConfigError, match=r"LoRA adapters.*Fix: train it with DDP"):
        check_rebuildable(model)
