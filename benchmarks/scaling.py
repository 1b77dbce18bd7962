"""Scale-out throughput on this CPU (1 process, 2 ranks DDP, 2 ranks FSDP) and the projection
of real pretraining runs (ESM-2 35M, 150M, 650M and 3B shapes on 1 to 64 GPUs) built on it.

Measured: ``biotransformer pretrain`` of one config (ESM-2-shaped, pre-LN, rotary; 4 layers,
width 128, 4 heads, 512-token windows of the C. diphtheriae genome, 4096 tokens per micro-batch per
process, fp32) run as one process and as 2 ranks with DDP and with FSDP (version 2, gloo),
one thread per process (so 2 ranks use 2 cores). Tokens/s (all processes together) are the
medians of the logged steps after the first 2 (warm-up), over rounds that interleave the
modes; the one-thread fp32 matmul peak is measured in the same rounds, so MFU is achieved model
FLOP/s over (processes x that peak); model FLOPs are ``flops_per_token`` (6 N + 12 L T h).
The single process runs inside the benchmark's own process; ``--smoke`` runs only it (the
2-rank runs are tests/test_scaleout.py's).

Projected (no GPU was available to this benchmark; every GPU figure rests on the stated
assumptions in ``ASSUMPTIONS``): per-token FLOPs of each shape from the model itself, GPU-hours
per 1e9 tokens and for ESM-2's schedule, memory per GPU from ``memory.estimate_memory`` (the
pre-flight's formula) for DDP and FSDP, and the recipe each needs.

    python -m benchmarks.scaling            # writes results/scaling.json (about 10 minutes)
    python -m benchmarks.scaling --smoke    # tiny sizes, one round, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from biotransformer.config import ModelConfig
from biotransformer.data.shards import prepare_corpus
from biotransformer.environment import machine, versions
from biotransformer.heads import MaskedLM
from biotransformer.memory import GIB, estimate_memory
from biotransformer.tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scaling.json"
SHARED_DATA = Path(
    os.environ.get("BIOTRANSFORMER_SHARED_DATA", HERE.parent.parent / "shared" / "data")
)
MODES = ("single", "ddp", "fsdp")
FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "Block",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
}
ASSUMPTIONS = {
    "gpu": "H100 SXM 80 GB",
    "gpu_memory_gib": 80,
    "gpu_bf16_dense_tflops": 989,
    "gpu_mfu": 0.35,
    "gpus_per_node": 8,
    "intra_node_gbytes_per_s": 450,  # NVLink 4, per GPU, one direction
    "inter_node_gbytes_per_s": 50,  # 400 Gb/s InfiniBand per GPU
    "overlap": "communication overlaps the backward pass: step time = max(compute, comm)",
    "sequence_length": 1024,
    "global_batch_tokens": 2_000_000,  # ESM-2's 2M-token batches
    "micro_batch_tokens_per_gpu": 16_384,
    "schedule_tokens": 1.0e12,  # ESM-2: 500K updates of 2M tokens
    "precision": "bf16 autocast; fp32 weights, gradients and AdamW moments",
}
SHAPES = {  # ESM-2 (layers, width, heads); vocabulary 33
    "esm2-35M": (12, 480, 20),
    "esm2-150M": (30, 640, 20),
    "esm2-650M": (33, 1280, 20),
    "esm2-3B": (36, 2560, 40),
}
GPU_COUNTS = (1, 8, 16, 64)


def run_config(smoke: bool, tmp: Path, steps: int) -> dict[str, Any]:
    """The pretraining config every mode runs, its data tokenized once into ``tmp``."""
    width, layers, window = (32, 1, 126) if smoke else (128, 4, 510)
    if smoke:  # 40 kbp of random DNA: the smoke test needs no data folder
        genome = tmp / "random.fa"
        bases = np.random.default_rng(0).choice(list("ACGT"), 40_000)
        genome.write_text(f">random\n{''.join(bases)}\n")
    else:
        genome = SHARED_DATA / "genomes" / "GCF_001457455.1_NCTC11397_genomic.fna.gz"
    shard_dir = tmp / "shards"
    prepare_corpus([genome], Tokenizer.from_spec("dna"), shard_dir, window_tokens=window,
                   valid_fraction=0.0, progress=False)  # fmt: skip
    return {
        "model": {
            "hidden_size": width,
            "num_layers": layers,
            "num_heads": 4,
            "ffn_size": 4 * width,
            "max_length": window + 2,
            "position": "rotary",
            "dropout": 0.0,
        },
        "data": {
            "shard_dir": str(shard_dir),
            "tokenizer": "dna",
            "window_tokens": window,
            "valid_fraction": 0.0,
            "max_length": window + 2,
            "max_tokens": 1024 if smoke else 4096,
        },
        "training": {
            "output_dir": str(tmp / "run"),
            "max_steps": steps,
            "warmup_steps": 1,
            "log_every": 1,
            "save_every": 0,
            "eval_every": 0,
            "lr": 1e-3,
        },
    }


def measure_run(mode: str, config: dict[str, Any], tmp: Path) -> float:
    """Median tokens/s (all processes together) of the logged steps after the first two."""
    run_dir = tmp / f"{mode}-{time.monotonic_ns()}"
    config = {**config, "training": {**config["training"], "output_dir": str(run_dir)}}
    path = tmp / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    if mode == "single":  # in this process, on one thread
        pretrain_here(path)
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        command = [torchrun, "--standalone", "--nproc_per_node", "2"]
        command += ["-m", "biotransformer", "pretrain", str(path)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", **(FSDP_ENV if mode == "fsdp" else {})}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        if result.returncode:
            raise RuntimeError(f"{mode} run failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    rates = [row["tokens_per_s"] for row in rows if "tokens_per_s" in row][2:]
    return statistics.median(rates)


def pretrain_here(config: Path) -> None:
    """``biotransformer pretrain CONFIG`` in this process on one thread, with Accelerate's
    process-wide state dropped before and after (each run builds its own)."""
    from accelerate.state import AcceleratorState, GradientState

    from biotransformer.cli import main as cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        if cli(["pretrain", str(config)]) != 0:
            raise RuntimeError(f"single-process run of {config} failed")
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        torch.set_num_threads(threads)


def matmul_peak(size: int, repeats: int) -> float:
    """fp32 FLOP/s of a square matmul on one thread (the best of ``repeats``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    torch.set_num_threads(threads)
    return best


def flops_per_token(model: dict[str, Any], seq_len: int, vocab_size: int = 9) -> int:
    config = ModelConfig(vocab_size=vocab_size, **model)
    with torch.device("meta"):
        return MaskedLM(config).flops_per_token(seq_len)


def measured(smoke: bool, rounds: int, steps: int) -> dict[str, Any]:
    modes = MODES[:1] if smoke else MODES
    with tempfile.TemporaryDirectory(prefix="bt-scaling-") as name:
        tmp = Path(name)
        config = run_config(smoke, tmp, steps)
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        peaks = []
        for round_index in range(rounds):
            shift = round_index % len(modes)
            order = modes[shift:] + modes[:shift]
            for mode in order:
                rates[mode].append(measure_run(mode, config, tmp))
            peaks.append(matmul_peak(256 if smoke else 2048, 3 if smoke else 10))
    seq_len = config["model"]["max_length"]
    per_token = flops_per_token(config["model"], seq_len)
    peak = statistics.median(peaks)
    figures = {}
    for mode in modes:
        tokens_per_s = statistics.median(rates[mode])
        processes = 1 if mode == "single" else 2
        figures[mode] = {
            "processes": processes,
            "tokens_per_s": tokens_per_s,
            "rounds": rates[mode],
            "mfu": tokens_per_s * per_token / (processes * peak),
        }
    single = figures["single"]["tokens_per_s"]
    return {
        "config": config["model"] | {"max_tokens_per_process": config["data"]["max_tokens"]},
        "flops_per_token": per_token,
        "matmul_peak_flops_1_thread": peak,
        "figures": figures,
        "ratios": {
            f"{mode}_vs_single": figure["tokens_per_s"] / single
            for mode, figure in figures.items()
            if mode != "single"
        },
    }


def esm2_config(layers: int, width: int, heads: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=33,
        hidden_size=width,
        num_layers=layers,
        num_heads=heads,
        ffn_size=4 * width,
        max_length=ASSUMPTIONS["sequence_length"] + 2,
        position="rotary",
    )


def communication_seconds(parameters: int, gpus: int, recipe: str) -> float:
    """Seconds per optimizer step of gradient (DDP) or weight and gradient (FSDP) traffic per
    GPU: ring all-reduce of fp32 gradients, 2 (G-1)/G x 4P bytes; FSDP all-gathers bf16
    weights twice and reduce-scatters fp32 gradients, (G-1)/G x (2 x 2P + 4P) bytes."""
    if gpus == 1:
        return 0.0
    share = (gpus - 1) / gpus
    volume = share * (2 * 4 if recipe == "ddp" else 2 * 2 + 4) * parameters
    link = "intra" if gpus <= ASSUMPTIONS["gpus_per_node"] else "inter"
    return volume / (ASSUMPTIONS[f"{link}_node_gbytes_per_s"] * 1e9)


def projection() -> dict[str, Any]:
    a = ASSUMPTIONS
    gpu_flops = a["gpu_bf16_dense_tflops"] * 1e12 * a["gpu_mfu"]
    rows = {}
    for name, shape in SHAPES.items():
        config = esm2_config(*shape)
        with torch.device("meta"):
            model = MaskedLM(config)
        parameters = model.num_parameters()
        per_token = model.flops_per_token(a["sequence_length"])
        compute_hours_per_1e9 = 1e9 * per_token / gpu_flops / 3600
        by_gpus = {}
        for gpus in GPU_COUNTS:
            memory = {}
            for recipe, shards in (("ddp", 1), ("fsdp", gpus)):
                for checkpointing in (False, True):
                    estimate = estimate_memory(
                        config,
                        a["micro_batch_tokens_per_gpu"],
                        a["sequence_length"],
                        dtype_bytes=2,
                        gradient_checkpointing=checkpointing,
                        shards=shards,
                    )
                    label = recipe + ("+activation-checkpointing" if checkpointing else "")
                    memory[label] = round(estimate.total / GIB, 1)
            fits = [label for label, gib in memory.items() if gib <= a["gpu_memory_gib"]]
            recipe = fits[0] if fits else "does not fit: smaller micro-batches or more GPUs"
            base = recipe.split("+")[0] if fits else "fsdp"
            step_compute = a["global_batch_tokens"] * per_token / gpus / gpu_flops
            step_comm = communication_seconds(parameters, gpus, base)
            efficiency = step_compute / max(step_compute, step_comm)
            gpu_hours_per_1e9 = compute_hours_per_1e9 / efficiency
            by_gpus[str(gpus)] = {
                "memory_gib_per_gpu": memory,
                "recipe": recipe,
                "step_compute_s": step_compute,
                "step_communication_s": step_comm,
                "scaling_efficiency": efficiency,
                "gpu_hours_per_1e9_tokens": gpu_hours_per_1e9,
                "gpu_hours_schedule": gpu_hours_per_1e9 * a["schedule_tokens"] / 1e9,
                "days_schedule": gpu_hours_per_1e9 * a["schedule_tokens"] / 1e9 / gpus / 24,
            }
        rows[name] = {
            "layers_width_heads": list(shape),
            "parameters": parameters,
            "flops_per_token": per_token,
            "by_gpus": by_gpus,
        }
    return {"assumptions": a, "shapes": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON to write")
    args = parser.parse_args(argv)
    rounds, steps = (1, 4) if args.smoke else (args.rounds, args.steps)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "versions": versions("torch", "accelerate"),
        "smoke": args.smoke,
        "measured": measured(args.smoke, rounds, steps),
        "projected": projection(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    figures = result["measured"]["figures"]
    for mode, figure in figures.items():
        print(f"{mode:6} {figure['tokens_per_s']:10.0f} tokens/s  MFU {figure['mfu']:.1%}")


if __name__ == "__main__":
    main()
