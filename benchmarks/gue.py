"""Fine-tuning quality on GUE prom_300_tata and tf_0, and on the AMP peptide set, on this CPU.

For each GUE task: a k-mer (3..6) count + logistic-regression baseline recomputed on the same
splits, then ``finetune`` (several epochs; decision threshold tuned for MCC on validation) from
scratch and from a tiny pretrained model, 3 seeds each; test MCC mean and standard deviation
beside DNABERT-2's published MCC. Each task has its own k-mer tokenizer: non-overlapping
3-mers for the 300 bp promoters (overlapping 6-mers overfit them), overlapping 6-mers for the
101 bp binding sites (non-overlapping k-mers split a motif across three reading frames). The
pretrained model of a task is the recipe ``pretrain_dna_tiny`` with that tokenizer, pretrained
here by masked-LM on the task's training sequences (labels unused; unless ``--pretrained DIR``
is given) for a task's ``pretrain_steps``; a task's ``pretrained_lr`` is the fine-tuning rate
from it. tf_0 trains on both strands (``rc_augment``) and is selected, thresholded and tested
on the mean of both strands' scores (``rc_average``): binding sites are strand-symmetric, the
oriented promoters are not. Independent runs go to ``jobs`` worker processes of one thread
each. Peptides: 5-fold
cross-validation after de-duplication, with an amino-acid k-mer (1..3) baseline on the same
folds. Every setting is stored in the JSON with the results.

    python benchmarks/gue.py                 # full run, writes benchmarks/results/gue.json
    python benchmarks/gue.py --smoke --out /tmp/gue.json   # seconds, tiny subsets
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from biotransformer.baselines import kmer_baseline

REPO = Path(__file__).resolve().parents[1]
DNABERT2_MCC = {"prom_300_tata": 0.7159, "tf_0": 0.7199}
ARCHITECTURE = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "ffn_size": 256}
FULL = {
    "seeds": [0, 1, 2],
    "gue": {
        "prom_300_tata": {
            "tokenizer": "dna-kmer:k=3,stride=3",
            "epochs": 15,
            "evals_per_epoch": 1,
            "lr": 2e-3,
            "weight_decay": 0.01,
            "pretrain_steps": 400,
        },
        "tf_0": {
            "tokenizer": "dna-kmer:k=6,stride=1",
            "epochs": 6,
            "evals_per_epoch": 2,
            "lr": 3e-3,
            "pretrained_lr": 1e-3,
            "weight_decay": 0.1,
            "pretrain_steps": 12000,
            "rc_augment": 0.5,
            "rc_average": True,
        },
    },
    "max_tokens": 4096,
    "peptide_lr": 2e-3,
    "dropout": 0.1,
    "jobs": 2,
    "peptide_folds": 5,
    "peptide_steps": 2000,
    "peptide_evals_per_epoch": 1,
    "peptide_max_tokens": 4096,
    "bootstrap": 200,
}
SMOKE = {
    **FULL,
    "seeds": [0],
    "gue": {
        name: {**spec, "epochs": 1, "evals_per_epoch": 1, "rows": 48, "pretrain_steps": 0}
        for name, spec in FULL["gue"].items()
    },
    "max_tokens": 2048,
    "jobs": 1,
    "peptide_folds": 2,
    "peptide_steps": 2,
    "peptide_evals_per_epoch": 1,
    "peptide_rows": 120,
    "bootstrap": 10,
}


def read_csv(path: Path, rows: int | None = None) -> tuple[list[str], list[int]]:
    """Sequences and integer labels of a GUE-style ``sequence,label`` CSV (first ``rows``)."""
    sequences, labels = [], []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            sequences.append(row["sequence"])
            labels.append(int(row["label"]))
            if rows is not None and len(sequences) >= rows:
                break
    return sequences, labels


def write_csv(path: Path, sequences: list[str], labels: list[int]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sequence", "label"])
        writer.writerows(zip(sequences, labels, strict=True))
    return path


def finetune_run(
    train: Path,
    valid: Path | None,
    test: Path,
    out: Path,
    *,
    seed: int,
    settings: dict,
    pretrained: Path | None,
    max_tokens: int,
    evals_per_epoch: int,
    tokenizer: str | None = None,
    lr: float,
    weight_decay: float = 0.01,
    epochs: float = 1.0,
    max_steps: int | None = None,
    valid_fraction: float = 0.0,
    rc_augment: float = 0.0,
    rc_average: bool = False,
) -> dict:
    """One fine-tuning run (``epochs``, or ``max_steps`` when given); returns test MCC,
    validation MCC and seconds. A pretrained model keeps its own tokenizer."""
    from biotransformer.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(
        train=str(train),
        valid=None if valid is None else str(valid),
        test=str(test),
        output_dir=str(out),
        model_dir=None if pretrained is None else str(pretrained),
        preset=None if pretrained is not None else "tiny",
        model={} if pretrained is not None else {**ARCHITECTURE, "dropout": settings["dropout"]},
        tokenizer=None if pretrained is not None else tokenizer,
        epochs=epochs,
        max_steps=max_steps,
        max_tokens=max_tokens,
        evals_per_epoch=evals_per_epoch,
        valid_fraction=valid_fraction,
        test_fraction=0.0,
        bootstrap=settings["bootstrap"],
        tune_threshold=True,
        rc_augment=rc_augment,
        rc_average=rc_average,
        plots=False,
    )
    config.training.lr = lr
    config.training.weight_decay = weight_decay
    config.training.seed = seed
    config.training.log_every = 10
    with contextlib.redirect_stderr(io.StringIO()):
        result = finetune(config)
    return {
        "seed": seed,
        "test_mcc": result.metrics["test"]["metrics"]["mcc"]["value"],
        "test_mcc_ci": [
            result.metrics["test"]["metrics"]["mcc"]["ci_low"],
            result.metrics["test"]["metrics"]["mcc"]["ci_high"],
        ],
        "valid_mcc": result.metrics["valid"]["metrics"]["mcc"]["value"],
        "best_step": result.best_step,
        "seconds": round(result.seconds, 1),
    }


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_parallel(function: Callable[..., Any], calls: list[dict], jobs: int) -> list[Any]:
    """``function(**call)`` for each call, in order: in this process when ``jobs`` is 1, else
    in ``jobs`` spawned worker processes of one thread each (runs are independent)."""
    if jobs == 1:
        return [function(**call) for call in calls]
    with ProcessPoolExecutor(jobs, get_context("spawn"), initializer=_one_thread) as pool:
        futures = [pool.submit(function, **call) for call in calls]
        return [future.result() for future in futures]


def summarise(runs: list[dict]) -> dict:
    values = np.array([run["test_mcc"] for run in runs])
    return {
        "mcc_mean": float(values.mean()),
        "mcc_sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "runs": runs,
    }


def pretrain_tiny(out: Path, steps: int, fasta: Path, tokenizer: str, dropout: float) -> Path:
    """The recipe ``pretrain_dna_tiny`` (with ``ARCHITECTURE``'s depth, ``tokenizer`` and
    ``dropout``) pretrained for ``steps`` optimizer steps on ``fasta``; its model directory."""
    from biotransformer.config import load_run_config
    from biotransformer.train import pretrain

    config = load_run_config(
        REPO / "recipes" / "configs" / "pretrain_dna_tiny.yaml",
        [
            f"data.train_files=[{fasta}]",
            f"data.tokenizer={tokenizer}",
            f"training.output_dir={out}",
            f"model.num_layers={ARCHITECTURE['num_layers']}",
            f"model.dropout={dropout}",
            f"training.max_steps={steps}",
            "training.save_every=0",
            "training.eval_every=0",
            f"training.warmup_steps={max(steps // 12, 1)}",
        ],
    )
    with contextlib.redirect_stderr(io.StringIO()):
        result = pretrain(config)
    if result.model_dir is None:
        raise SystemExit(f"pretraining stopped at step {result.step} ({result.outcome})")
    return Path(result.model_dir)


def pretrain_tasks(data: Path, work: Path, settings: dict) -> tuple[dict[str, Path], str]:
    """One pretrained model per GUE task, on that task's training sequences, in parallel."""
    calls = {}
    for name, spec in settings["gue"].items():
        sequences, _ = read_csv(data / "gue" / name / "train.csv", spec.get("rows"))
        fasta = work / f"{name}_train.fa"
        fasta.write_text("".join(f">{i}\n{sequence}\n" for i, sequence in enumerate(sequences)))
        calls[name] = {
            "out": work / f"pretrain_{name}",
            "steps": spec["pretrain_steps"],
            "fasta": fasta,
            "tokenizer": spec["tokenizer"],
            "dropout": settings["dropout"],
        }
    started = time.perf_counter()
    models = run_parallel(pretrain_tiny, list(calls.values()), settings["jobs"])
    steps = ", ".join(f"{name} {call['steps']} steps" for name, call in calls.items())
    note = (
        f"recipe pretrain_dna_tiny with model.num_layers={ARCHITECTURE['num_layers']}, "
        f"model.dropout={settings['dropout']}, the task's tokenizer, "
        f"masked-LM on the task's own training sequences ({steps}; "
        f"labels unused; validation and test sequences never seen), both tasks in "
        f"{time.perf_counter() - started:.0f} s"
    )
    return dict(zip(calls, models, strict=True)), note


def gue_task(name: str, data: Path, work: Path, settings: dict, pretrained: Path | None) -> dict:
    spec = settings["gue"][name]
    folder = data / "gue" / name
    rows = spec.get("rows")
    train = read_csv(folder / "train.csv", rows)
    valid = read_csv(folder / "dev.csv", rows)
    test = read_csv(folder / "test.csv", rows)
    started = time.perf_counter()
    baseline = kmer_baseline(train, test, (3, 6))
    files = {
        split: write_csv(work / f"{name}_{split}.csv", *values)
        for split, values in (("train", train), ("valid", valid), ("test", test))
    }
    result = {
        "n_train": len(train[0]),
        "n_valid": len(valid[0]),
        "n_test": len(test[0]),
        "baseline_kmer3to6_logreg_mcc": baseline,
        "dnabert2_published_mcc": DNABERT2_MCC[name],
    }
    inits = {"scratch": None}
    if pretrained is not None:
        inits["pretrained"] = pretrained
    calls = [
        {
            "train": files["train"],
            "valid": files["valid"],
            "test": files["test"],
            "out": work / f"{name}_{init}_{seed}",
            "seed": seed,
            "settings": settings,
            "pretrained": model_dir,
            "max_tokens": settings["max_tokens"],
            "evals_per_epoch": spec["evals_per_epoch"],
            "tokenizer": spec["tokenizer"],
            "epochs": spec["epochs"],
            "lr": spec["lr"] if model_dir is None else spec.get("pretrained_lr", spec["lr"]),
            "weight_decay": spec["weight_decay"],
            "rc_augment": spec.get("rc_augment", 0.0),
            "rc_average": spec.get("rc_average", False),
        }
        for init, model_dir in inits.items()
        for seed in settings["seeds"]
    ]
    runs = run_parallel(finetune_run, calls, settings["jobs"])
    for index, init in enumerate(inits):
        result[init] = summarise(
            runs[index * len(settings["seeds"]) : (index + 1) * len(settings["seeds"])]
        )
        margin = result[init]["mcc_mean"] - baseline
        result[init]["above_baseline_by_more_than_2sd"] = bool(margin > 2 * result[init]["mcc_sd"])
        result[init]["below_dnabert2_by"] = DNABERT2_MCC[name] - result[init]["mcc_mean"]
        print(
            f"{name} {init}: {result[init]['mcc_mean']:.3f} ± {result[init]['mcc_sd']:.3f} "
            f"(baseline {baseline:.3f})",
            flush=True,
        )
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def peptides(data: Path, work: Path, settings: dict) -> dict:
    """5-fold CV on the AMP peptide CSV after de-duplication (stratified folds; the folds
    train in parallel like the GUE runs)."""
    from sklearn.model_selection import StratifiedKFold

    from biotransformer.io import read_sequences
    from biotransformer.splits import deduplicate

    started = time.perf_counter()
    records = list(read_sequences(data / "peptides" / "AMPvsUniProt.csv"))
    unique = deduplicate(records, "protein")
    order = np.random.default_rng(0).permutation(len(unique.records))
    kept = [unique.records[i] for i in order[: settings.get("peptide_rows")]]
    sequences = [record.sequence for record in kept]
    labels = np.array([int(record.label) for record in kept])
    folds = StratifiedKFold(settings["peptide_folds"], shuffle=True, random_state=0)
    calls, baselines = [], []
    for fold, (train_index, test_index) in enumerate(folds.split(sequences, labels)):
        train = ([sequences[i] for i in train_index], labels[train_index].tolist())
        test = ([sequences[i] for i in test_index], labels[test_index].tolist())
        baselines.append(kmer_baseline(train, test, (1, 3)))
        calls.append(
            {
                "train": write_csv(work / f"peptides_train_{fold}.csv", *train),
                "valid": None,
                "test": write_csv(work / f"peptides_test_{fold}.csv", *test),
                "out": work / f"peptides_{fold}",
                "seed": 0,
                "settings": settings,
                "pretrained": None,
                "max_tokens": settings["peptide_max_tokens"],
                "evals_per_epoch": settings["peptide_evals_per_epoch"],
                "lr": settings["peptide_lr"],
                "max_steps": settings["peptide_steps"],
                "valid_fraction": 0.1,
            }
        )
    runs = run_parallel(finetune_run, calls, settings["jobs"])
    result = summarise([{"fold": fold, **run} for fold, run in enumerate(runs)])
    baseline_values = np.array(baselines)
    return {
        "n_records": len(records),
        "n_distinct": len(unique.records),
        "n_used": len(kept),
        "scratch": result,
        "baseline_aa_kmer1to3_logreg_mcc_mean": float(baseline_values.mean()),
        "baseline_aa_kmer1to3_logreg_mcc_sd": float(baseline_values.std(ddof=1))
        if len(baseline_values) > 1
        else 0.0,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def versions() -> dict:
    import sklearn
    import torch

    from biotransformer import __version__

    return {
        "biotransformer": __version__,
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny subsets, seconds")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("BIOTRANSFORMER_SHARED_DATA", REPO.parent / "shared" / "data")),
        help="the shared data folder (default: $BIOTRANSFORMER_SHARED_DATA or ../shared/data)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "gue.json",
        help="result JSON (default: benchmarks/results/gue.json)",
    )
    parser.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="a pretrained model directory to warm start both tasks from, with its own "
        "tokenizer (default: pretrain the tiny recipe here on each task's training sequences)",
    )
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    torch_threads = (
        1 if settings["jobs"] > 1 else int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    )
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gue-bench-") as tmp:
        work = Path(tmp)
        pretrained: dict[str, Path | None] = dict.fromkeys(settings["gue"], args.pretrained)
        pretrained_note = "given with --pretrained"
        if args.pretrained is None and all(s["pretrain_steps"] for s in settings["gue"].values()):
            pretrained, pretrained_note = pretrain_tasks(args.data, work, settings)
        elif args.pretrained is None:
            pretrained_note = "not pretrained in smoke mode"
        print(f"pretrained model: {pretrained_note}", flush=True)
        tasks = {
            name: gue_task(name, args.data, work, settings, pretrained[name])
            for name in settings["gue"]
        }
        peptide = peptides(args.data, work, settings)
        print(
            f"peptides: {peptide['scratch']['mcc_mean']:.3f} ± {peptide['scratch']['mcc_sd']:.3f}"
            f" (baseline {peptide['baseline_aa_kmer1to3_logreg_mcc_mean']:.3f})",
            flush=True,
        )
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch_threads,
            "load_average_1_5_15min_at_start": load_before,
            "load_average_1_5_15min_at_end": os.getloadavg(),
        },
        "versions": versions(),
        "mode": "smoke" if args.smoke else "full",
        "settings": {
            **settings,
            "architecture": ARCHITECTURE,
            "schedule": "finetune's default: linear warmup over 6% of the steps, linear decay to 0",
        },
        "pretrained": pretrained_note,
        "tasks": tasks,
        "peptides": peptide,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} in {result['wall_time_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
