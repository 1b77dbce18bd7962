"""One-GPU check: bf16 training and embedding throughput against HF ESM and fair-esm, peak
memory, and a fine-tune smoke test. Run through ``benchmarks/gpu_check.sh`` (at most 8 minutes
on one GPU); ``--dry-run`` runs every step at tiny shapes on the CPU in seconds.

- **training**: ESM-2 35M- and 150M-shaped masked LMs (12 x 480 and 30 x 640, 20 heads,
  feed-forward 4x, rotary, pre-LN), ours against HF ``EsmForMaskedLM`` (sdpa) at equal work:
  the same batch (``BATCH`` x ``SEQ_LEN`` tokens, 15% masked), AdamW, bf16 autocast, rounds
  interleaved. MFU = training tokens/s x (6N + 12 L T C) / the bf16 ``torch.mm`` peak
  measured on the same GPU.
- **embedding**: ``embed_throughput``'s three pipelines (ours, fair-esm's extract loop, HF
  ``EsmModel``) with the same 35M-shaped weights, bf16 on the GPU, FASTA -> HDF5.
- **peak memory**: ``torch.cuda.max_memory_allocated`` of each measurement.
- **fine-tune**: ``biotransformer finetune`` of a new ``dna-t6-8M`` model on the synthetic
  planted-motif task, 2 epochs, bf16 mixed precision on the GPU; its test MCC.

Writes ``benchmarks/results/gpu_check.json`` (``--dry-run``: only where ``--out`` says).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import embed_throughput, train_throughput
from benchmarks.train_throughput import Runner, Sizes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gpu_check.json"
SHAPES = {"esm2_35M": (12, 480, 20), "esm2_150M": (30, 640, 20)}
DRY_SHAPES = {"esm2_35M": (1, 32, 4), "esm2_150M": (2, 32, 4)}


@dataclasses.dataclass(frozen=True)
class Plan:
    device: str
    shapes: dict[str, tuple[int, int, int]]
    batch: int
    seq_len: int
    rounds: int
    steps: int
    matmul_size: int
    embed: embed_throughput.Sizes
    finetune_epochs: float
    finetune_model: tuple[str, ...]
    finetune_sizes: tuple[int, int, int]  # train, valid, test


FULL = Plan(
    "cuda",
    SHAPES,
    batch=32,
    seq_len=512,
    rounds=3,
    steps=10,
    matmul_size=8192,
    embed=embed_throughput.Sizes(12, 480, 20, budget=65536, many=20_000, few=2_000, rounds=2),
    finetune_epochs=2.0,
    finetune_model=("--preset", "dna-t6-8M"),
    finetune_sizes=(16000, 500, 1000),
)
DRY = Plan(
    "cpu",
    DRY_SHAPES,
    batch=2,
    seq_len=32,
    rounds=1,
    steps=1,
    matmul_size=256,
    embed=embed_throughput.Sizes(1, 32, 4, budget=1024, proteins=8, many=16, few=8, rounds=1),
    finetune_epochs=1.0,
    finetune_model=("--preset", "tiny", "model.num_layers=1"),
    finetune_sizes=(64, 32, 32),
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def bf16_matmul_peak(size: int, device: torch.device) -> float:
    """bf16 FLOP/s of a square matmul on ``device``, best of five after a warm-up."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


# ---------------------------------------------------------------------------------------------
# Training throughput
# ---------------------------------------------------------------------------------------------


def runners(sizes: Sizes, device: torch.device) -> list[Runner]:
    """Ours and HF's ESM with bf16 autocast on ``device`` (optimizers built after the move)."""
    from biotransformer.tokenizers import Tokenizer

    tokenizer = Tokenizer.from_spec("protein")

    def bf16() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16)

    ours = train_throughput.ours(sizes, tokenizer).to(device)
    built = [
        train_throughput.ours_runner("ours", ours),
        train_throughput.hf_runner(sizes, tokenizer),
    ]
    moved = []
    for runner in built:
        runner.model.to(device)
        moved.append(dataclasses.replace(runner, precision=bf16))
    return moved


def training(name: str, shape: tuple[int, int, int], plan: Plan) -> dict[str, Any]:
    """Training tokens/s, MFU and peak memory of ours and HF at one shape."""
    from biotransformer.data.collator import MaskingCollator
    from biotransformer.tokenizers import Tokenizer

    device = torch.device(plan.device)
    layers, width, heads = shape
    sizes = dataclasses.replace(
        train_throughput.SMOKE,
        num_layers=layers,
        hidden_size=width,
        num_heads=heads,
        ffn_size=4 * width,
        batch_size=plan.batch,
        seq_len=plan.seq_len,
    )
    tokenizer = Tokenizer.from_spec("protein")
    collator = MaskingCollator(tokenizer, mask_rate=0.15, mask_token_rate=1.0, random_token_rate=0)
    batch = train_throughput.synthetic_batch(sizes, tokenizer, collator)
    batch = {k: (None if v is None else v.to(device)) for k, v in batch.items()}
    tokens = train_throughput.real_tokens(batch)
    models = runners(sizes, device)
    flops_per_token = models[0].model.flops_per_token(plan.seq_len)
    rates: dict[str, list[float]] = {runner.name: [] for runner in models}
    memory: dict[str, float | None] = {}
    for runner in models:  # warm-up, and the peak memory of a training step
        reset_peak(device)
        runner.train_step(batch)
        synchronize(device)
        memory[runner.name] = peak_gib(device)
    peaks = []
    for round_index in range(plan.rounds):
        shift = round_index % len(models)
        for runner in models[shift:] + models[:shift]:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(plan.steps):
                runner.train_step(batch)
            synchronize(device)
            rates[runner.name].append(tokens * plan.steps / (time.perf_counter() - start))
        peaks.append(bf16_matmul_peak(plan.matmul_size, device))
    peak = statistics.median(peaks)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for runner in models:
        runner.model.to("cpu")
    return {
        "shape": {"layers": layers, "width": width, "heads": heads, "ffn": 4 * width},
        "parameters": sum(p.numel() for p in models[0].model.parameters()),
        "batch": [plan.batch, plan.seq_len],
        "train_tokens_per_s": medians,
        "mfu": {name: rate * flops_per_token / peak for name, rate in medians.items()},
        "bf16_matmul_peak_tflops": peak / 1e12,
        "peak_memory_gib": memory,
        "ours_vs_hf": medians["ours"] / medians["hf_esm"],
        "rounds": rates,
    }


# ---------------------------------------------------------------------------------------------
# Embedding throughput and the fine-tune smoke test
# ---------------------------------------------------------------------------------------------


def embedding(plan: Plan, work: Path) -> dict[str, Any]:
    """The three FASTA -> HDF5 pipelines in bf16 on the device, in this process."""
    device = torch.device(plan.device)
    dtype = "bf16" if device.type == "cuda" else "fp32"
    sizes = plan.embed
    inputs = embed_throughput.write_inputs(work, sizes)
    models = embed_throughput.write_models(work, sizes)
    figures = {}
    for name in ("proteins", "few"):
        fasta = inputs[name]
        records = sum(1 for line in fasta.open() if line.startswith(">"))
        seconds: dict[str, list[float]] = {p: [] for p in embed_throughput.PIPELINES}
        memory: dict[str, float | None] = {}
        for round_index in range(sizes.rounds):
            order = embed_throughput.PIPELINES
            for pipeline in order[round_index % 3 :] + order[: round_index % 3]:
                reset_peak(device)
                run = embed_throughput.RUNNERS[pipeline]
                out = work / f"{name}.{pipeline}.h5"
                out.unlink(missing_ok=True)
                seconds[pipeline].append(
                    run(models[pipeline], fasta, out, sizes.budget, plan.device, dtype)
                )
                memory[pipeline] = peak_gib(device)
        median = {p: statistics.median(v) for p, v in seconds.items()}
        figures[name] = {
            "records": records,
            "records_per_s": {p: records / s for p, s in median.items()},
            "ours_vs_fair_esm": median["fair_esm"] / median["ours"],
            "ours_vs_hf": median["hf"] / median["ours"],
            "peak_memory_gib": memory,
            "seconds": seconds,
        }
    return {"dtype": dtype, "shape": "esm2_35M" if device.type == "cuda" else "tiny", **figures}


def finetune(plan: Plan, work: Path) -> dict[str, Any]:
    """``biotransformer finetune`` of a new small DNA model on the planted-motif task."""
    from biotransformer.cli import main
    from biotransformer.synthetic import SyntheticTask, generate, write_csv

    sizes = dict(zip(("train", "valid", "test"), plan.finetune_sizes, strict=True))
    splits = generate(seed=0, task=SyntheticTask(sizes=sizes))
    paths = {}
    for name, split in splits.items():
        paths[name] = write_csv(split.sequences, split.labels, work / f"{name}.csv")
    precision = "bf16" if plan.device == "cuda" else "no"
    start = time.perf_counter()
    code = main(
        ["finetune", "--train", str(paths["train"]), "--valid", str(paths["valid"])]
        + ["--test", str(paths["test"]), "--out", str(work / "finetune")]
        + ["--epochs", str(plan.finetune_epochs), "--bootstrap", "20", *plan.finetune_model]
        + ([f"training.mixed_precision={precision}"] if precision == "bf16" else [])
    )
    seconds = time.perf_counter() - start
    written = work / "finetune" / "metrics.json"
    metrics = json.loads(written.read_text()) if code == 0 and written.is_file() else {}
    test = metrics.get("test", {}).get("metrics", {})
    mcc = test.get("mcc", {}).get("value")
    return {
        "exit_code": code,
        "mixed_precision": precision,
        "seconds": seconds,
        "test_mcc": mcc,
        "passed": code == 0 and mcc is not None,
    }


def run(plan: Plan, output: Path, *, dry_run: bool) -> dict[str, Any]:
    from biotransformer.atomic import write_json
    from biotransformer.environment import machine, versions

    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here; run with --dry-run to check the steps")
    torch.manual_seed(0)
    start = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "gpu_check",
        "dry_run": dry_run,
        "machine": machine(),
        "gpu": torch.cuda.get_device_name() if plan.device == "cuda" else None,
        "versions": versions("torch", "transformers", "fair-esm"),
        "flops_formula": train_throughput.FLOPS_FORMULA,
    }
    result["training"] = {name: training(name, shape, plan) for name, shape in plan.shapes.items()}
    with tempfile.TemporaryDirectory(prefix="bt-gpu-check-") as directory:
        work = Path(directory)
        (work / "embed").mkdir()
        result["embedding"] = embedding(plan, work / "embed")
        result["finetune"] = finetune(plan, work)
    result["wall_time_s"] = time.perf_counter() - start
    write_json(output, result)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="every step at tiny shapes on the CPU, seconds"
    )
    parser.add_argument("--out", type=Path, help=f"the JSON to write (default: {RESULTS})")
    args = parser.parse_args(argv)
    output = args.out or RESULTS
    if args.dry_run and args.out is None:
        parser.error("--dry-run writes only where --out says")
    result = run(DRY if args.dry_run else FULL, output, dry_run=args.dry_run)
    summary = {
        "training": {
            name: {k: figure[k] for k in ("train_tokens_per_s", "mfu", "ours_vs_hf")}
            for name, figure in result["training"].items()
        },
        "embedding": {
            name: {k: figure[k] for k in ("records_per_s", "ours_vs_fair_esm", "ours_vs_hf")}
            for name, figure in result["embedding"].items()
            if isinstance(figure, dict)
        },
        "finetune": result["finetune"],
    }
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    main()
