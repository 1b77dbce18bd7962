"""Fine-tuning quality on GUE prom_300_tata and tf_0, and on the AMP peptide set, on this CPU.

For each GUE task: a k-mer (3..6) count + logistic-regression baseline recomputed on the same
splits, then ``finetune`` (decision threshold tuned for MCC on validation) from scratch and
from the tiny pretrained model (recipe ``pretrain_dna_tiny``, pretrained here unless
``--pretrained DIR`` is given), 3 seeds each; test MCC mean and standard deviation beside
DNABERT-2's published MCC. Peptides: 5-fold
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
from pathlib import Path

import numpy as np

from biotransformer.baselines import kmer_baseline

REPO = Path(__file__).resolve().parents[1]
DNABERT2_MCC = {"prom_300_tata": 0.7159, "tf_0": 0.7199}
ARCHITECTURE = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "ffn_size": 256}
FULL = {
    "seeds": [0, 1, 2],
    "gue": {
        "prom_300_tata": {"max_steps": 80, "valid_rows": 200},
        "tf_0": {"max_steps": 80, "valid_rows": 200},
    },
    "max_tokens": 4096,
    "lr": 2e-3,
    "dropout": 0.1,
    "evals_per_run": 2,
    "pretrain_steps": 120,
    "peptide_folds": 5,
    "peptide_steps": 40,
    "peptide_max_tokens": 4096,
    "bootstrap": 200,
}
SMOKE = {
    **FULL,
    "seeds": [0],
    "gue": {
        "prom_300_tata": {"max_steps": 2, "valid_rows": 16, "rows": 48},
        "tf_0": {"max_steps": 2, "valid_rows": 16, "rows": 48},
    },
    "max_tokens": 2048,
    "evals_per_run": 1,
    "pretrain_steps": 0,
    "peptide_folds": 2,
    "peptide_steps": 2,
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
    max_steps: int,
    settings: dict,
    pretrained: Path | None,
    max_tokens: int,
    valid_fraction: float = 0.0,
) -> dict:
    """One fine-tuning run; returns test MCC, validation MCC and seconds."""
    from biotransformer.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(
        train=str(train),
        valid=None if valid is None else str(valid),
        test=str(test),
        output_dir=str(out),
        model_dir=None if pretrained is None else str(pretrained),
        preset=None if pretrained is not None else "tiny",
        model={} if pretrained is not None else {**ARCHITECTURE, "dropout": settings["dropout"]},
        max_steps=max_steps,
        max_tokens=max_tokens,
        evals_per_epoch=settings["evals_per_run"],
        valid_fraction=valid_fraction,
        test_fraction=0.0,
        bootstrap=settings["bootstrap"],
        tune_threshold=True,
        plots=False,
    )
    config.training.lr = settings["lr"]
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


def summarise(runs: list[dict]) -> dict:
    values = np.array([run["test_mcc"] for run in runs])
    return {
        "mcc_mean": float(values.mean()),
        "mcc_sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "runs": runs,
    }


def pretrain_tiny(out: Path, steps: int, data: Path) -> tuple[Path | None, str]:
    """The tiny pretrained model from the recipe, ``steps`` optimizer steps; None if the
    library's ``pretrain`` is not available."""
    try:
        from biotransformer.config import load_run_config
        from biotransformer.train import pretrain
    except ImportError as error:
        return None, f"pretrain() unavailable ({error}): from scratch only"
    genome = data / "genomes" / "GCF_001457455.1_NCTC11397_genomic.fna.gz"
    config = load_run_config(
        REPO / "recipes" / "configs" / "pretrain_dna_tiny.yaml",
        [
            f"data.train_files=[{genome}]",
            f"training.output_dir={out}",
            f"model.num_layers={ARCHITECTURE['num_layers']}",
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
    note = f"recipe pretrain_dna_tiny with model.num_layers={ARCHITECTURE['num_layers']}"
    return result.model_dir, f"{note}, {steps} steps"


def gue_task(name: str, data: Path, work: Path, settings: dict, pretrained: Path | None) -> dict:
    spec = settings["gue"][name]
    folder = data / "gue" / name
    rows = spec.get("rows")
    train = read_csv(folder / "train.csv", rows)
    valid = read_csv(folder / "dev.csv", spec["valid_rows"])
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
    for init, model_dir in inits.items():
        runs = [
            finetune_run(
                files["train"],
                files["valid"],
                files["test"],
                work / f"{name}_{init}_{seed}",
                seed=seed,
                max_steps=spec["max_steps"],
                settings=settings,
                pretrained=model_dir,
                max_tokens=settings["max_tokens"],
            )
            for seed in settings["seeds"]
        ]
        result[init] = summarise(runs)
        print(
            f"{name} {init}: {result[init]['mcc_mean']:.3f} ± {result[init]['mcc_sd']:.3f} "
            f"(baseline {baseline:.3f})",
            flush=True,
        )
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def peptides(data: Path, work: Path, settings: dict) -> dict:
    """5-fold CV on the AMP peptide CSV after de-duplication (stratified folds)."""
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
    runs, baselines = [], []
    for fold, (train_index, test_index) in enumerate(folds.split(sequences, labels)):
        train = ([sequences[i] for i in train_index], labels[train_index].tolist())
        test = ([sequences[i] for i in test_index], labels[test_index].tolist())
        baselines.append(kmer_baseline(train, test, (1, 3)))
        run = finetune_run(
            write_csv(work / f"peptides_train_{fold}.csv", *train),
            None,
            write_csv(work / f"peptides_test_{fold}.csv", *test),
            work / f"peptides_{fold}",
            seed=0,
            max_steps=settings["peptide_steps"],
            settings=settings,
            pretrained=None,
            max_tokens=settings["peptide_max_tokens"],
            valid_fraction=0.1,
        )
        runs.append({"fold": fold, **run})
    result = summarise(runs)
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
        help="a pretrained model directory to warm start from (default: pretrain the tiny "
        "recipe here)",
    )
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    torch_threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    with tempfile.TemporaryDirectory(prefix="gue-bench-") as tmp:
        work = Path(tmp)
        pretrained, pretrained_note = args.pretrained, "given with --pretrained"
        if pretrained is None and settings["pretrain_steps"] > 0:
            pretrain_started = time.perf_counter()
            pretrained, pretrained_note = pretrain_tiny(
                work / "pretrain", settings["pretrain_steps"], args.data
            )
            pretrained_note += f" ({time.perf_counter() - pretrain_started:.0f} s)"
        elif pretrained is None:
            pretrained_note = "not pretrained in smoke mode"
        print(f"pretrained model: {pretrained_note}", flush=True)
        tasks = {
            name: gue_task(name, args.data, work, settings, pretrained) for name in settings["gue"]
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
        },
        "versions": versions(),
        "mode": "smoke" if args.smoke else "full",
        "settings": {**settings, "architecture": ARCHITECTURE, "tokenizer": "dna (single nt)"},
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
