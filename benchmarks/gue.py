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
oriented promoters are not. Every run (pretraining, baselines, fine-tuning) goes to one pool
of ``jobs`` worker processes of one thread each; a task's runs from its pretrained model are
queued as soon as that model is ready. Peptides: 5-fold cross-validation after
de-duplication, with an amino-acid k-mer (1..3) baseline on the same folds. Every setting is
stored in the JSON with the results.

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
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from biotransformer.baselines import kmer_baseline, kmer_baseline_metrics
from biotransformer.environment import machine, versions

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
        name: {**spec, "epochs": 1, "evals_per_epoch": 1, "rows": 48, "pretrain_steps": 2}
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
    """One fine-tuning run (``epochs``, or ``max_steps`` when given); returns test and
    validation MCC and AUROC, and seconds. A pretrained model keeps its own tokenizer."""
    from biotransformer.config import FinetuneConfig
    from biotransformer.finetuning import finetune

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
        "test_auroc": result.metrics["test"]["metrics"]["auroc"]["value"],
        "valid_mcc": result.metrics["valid"]["metrics"]["mcc"]["value"],
        "valid_auroc": result.metrics["valid"]["metrics"]["auroc"]["value"],
        "best_step": result.best_step,
        "seconds": round(result.seconds, 1),
    }


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


class InProcess:
    """The ``submit`` of an executor for ``jobs`` = 1: each call runs when submitted."""

    def submit(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(function(*args, **kwargs))
        except Exception as error:  # re-raised by future.result(), like a worker's
            future.set_exception(error)
        return future


def executor(jobs: int) -> contextlib.AbstractContextManager:
    """``jobs`` spawned worker processes of one thread each (runs are independent), or, for
    one job, this process."""
    if jobs == 1:
        return contextlib.nullcontext(InProcess())
    return ProcessPoolExecutor(jobs, get_context("spawn"), initializer=_one_thread)


def timed(function: Callable[..., Any], **call: Any) -> tuple[Any, float]:
    """``function(**call)`` and the seconds it took."""
    started = time.perf_counter()
    return function(**call), time.perf_counter() - started


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation of test MCC and AUROC over ``runs``."""
    summary = {}
    for metric in ("mcc", "auroc"):
        values = np.array([run[f"test_{metric}"] for run in runs])
        summary[f"{metric}_mean"] = float(values.mean())
        summary[f"{metric}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {**summary, "runs": runs}


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


def pretrain_calls(data: Path, work: Path, settings: dict) -> dict[str, dict]:
    """``pretrain_tiny`` calls, one per GUE task, on that task's training sequences."""
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
    return calls


def pretrained_note(calls: dict[str, dict], seconds: dict[str, float], settings: dict) -> str:
    steps = ", ".join(
        f"{name} {call['steps']} steps in {seconds[name]:.0f} s" for name, call in calls.items()
    )
    return (
        f"recipe pretrain_dna_tiny with model.num_layers={ARCHITECTURE['num_layers']}, "
        f"model.dropout={settings['dropout']}, the task's tokenizer, "
        f"masked-LM on the task's own training sequences ({steps}; "
        f"labels unused; validation and test sequences never seen)"
    )


@dataclass
class GueTask:
    """A GUE task's splits, as read and as written to CSVs for ``finetune``."""

    name: str
    splits: dict[str, tuple[list[str], list[int]]]
    files: dict[str, Path]

    @classmethod
    def read(cls, name: str, data: Path, work: Path, settings: dict) -> GueTask:
        folder = data / "gue" / name
        rows = settings["gue"][name].get("rows")
        splits = {
            split: read_csv(folder / f"{source}.csv", rows)
            for split, source in (("train", "train"), ("valid", "dev"), ("test", "test"))
        }
        files = {
            split: write_csv(work / f"{name}_{split}.csv", *values)
            for split, values in splits.items()
        }
        return cls(name, splits, files)

    def finetune_calls(self, init: str, model_dir: Path | None, settings: dict) -> list[dict]:
        """One ``finetune_run`` call per seed, from scratch or from ``model_dir``."""
        spec = settings["gue"][self.name]
        return [
            {
                "train": self.files["train"],
                "valid": self.files["valid"],
                "test": self.files["test"],
                "out": self.files["train"].parent / f"{self.name}_{init}_{seed}",
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
            for seed in settings["seeds"]
        ]

    def result(self, baseline: dict[str, float], runs: dict[str, list[dict]]) -> dict:
        """Split sizes, the baseline's test MCC and AUROC, DNABERT-2's MCC and each
        initialisation's summary: above the baseline by more than 2 sd, in MCC and AUROC."""
        result = {
            **{f"n_{split}": len(values[0]) for split, values in self.splits.items()},
            "baseline_kmer3to6_logreg_mcc": baseline["mcc"],
            "baseline_kmer3to6_logreg_auroc": baseline["auroc"],
            "dnabert2_published_mcc": DNABERT2_MCC[self.name],
        }
        for init, init_runs in runs.items():
            summary = summarise(init_runs)
            margin = {metric: summary[f"{metric}_mean"] - baseline[metric] for metric in baseline}
            summary["above_baseline_by_more_than_2sd"] = bool(margin["mcc"] > 2 * summary["mcc_sd"])
            summary["auroc_above_baseline_by_more_than_2sd"] = bool(
                margin["auroc"] > 2 * summary["auroc_sd"]
            )
            summary["below_dnabert2_by"] = DNABERT2_MCC[self.name] - summary["mcc_mean"]
            result[init] = summary
            print(
                f"{self.name} {init}: MCC {summary['mcc_mean']:.3f} ± {summary['mcc_sd']:.3f} "
                f"(baseline {baseline['mcc']:.3f}), AUROC {summary['auroc_mean']:.3f} ± "
                f"{summary['auroc_sd']:.3f} (baseline {baseline['auroc']:.3f})",
                flush=True,
            )
        return result


@dataclass
class PeptideFolds:
    """The AMP peptide CSV after de-duplication, in stratified folds: the ``finetune_run``
    calls and, per fold, the amino-acid k-mer (1..3) baseline's test MCC."""

    n_records: int
    n_distinct: int
    n_used: int
    calls: list[dict]
    baselines: list[float]

    @classmethod
    def read(cls, data: Path, work: Path, settings: dict) -> PeptideFolds:
        from sklearn.model_selection import StratifiedKFold

        from biotransformer.io import read_sequences
        from biotransformer.splits import deduplicate

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
        return cls(len(records), len(unique.records), len(kept), calls, baselines)

    def result(self, runs: list[dict]) -> dict:
        baselines = np.array(self.baselines)
        result = {
            "n_records": self.n_records,
            "n_distinct": self.n_distinct,
            "n_used": self.n_used,
            "scratch": summarise([{"fold": fold, **run} for fold, run in enumerate(runs)]),
            "baseline_aa_kmer1to3_logreg_mcc_mean": float(baselines.mean()),
            "baseline_aa_kmer1to3_logreg_mcc_sd": float(baselines.std(ddof=1))
            if len(baselines) > 1
            else 0.0,
        }
        print(
            f"peptides: {result['scratch']['mcc_mean']:.3f} ± {result['scratch']['mcc_sd']:.3f}"
            f" (baseline {result['baseline_aa_kmer1to3_logreg_mcc_mean']:.3f})",
            flush=True,
        )
        return result


def run_everything(
    data: Path, work: Path, settings: dict, given: Path | None
) -> tuple[dict, dict, str]:
    """Every run of the benchmark through one pool of ``jobs`` workers: the pretraining runs
    first (longest first), then the baselines, the runs from scratch and the peptide folds;
    each task's runs from its pretrained model are queued as soon as that model is ready,
    so no worker idles while one task still pretrains. Returns the GUE results by task, the
    peptide result and how the pretrained models were made."""
    tasks = {name: GueTask.read(name, data, work, settings) for name in settings["gue"]}
    peptide = PeptideFolds.read(data, work, settings)
    pretrain = (
        pretrain_calls(data, work, settings)
        if given is None and all(spec["pretrain_steps"] for spec in settings["gue"].values())
        else {}
    )
    with executor(settings["jobs"]) as pool:
        pretraining = {
            pool.submit(timed, pretrain_tiny, **call): name
            for name, call in sorted(pretrain.items(), key=lambda item: -item[1]["steps"])
        }
        baselines = {
            name: pool.submit(
                kmer_baseline_metrics, task.splits["train"], task.splits["test"], (3, 6)
            )
            for name, task in tasks.items()
        }
        runs = {
            (name, "scratch"): [
                pool.submit(finetune_run, **call)
                for call in task.finetune_calls("scratch", None, settings)
            ]
            for name, task in tasks.items()
        }
        peptide_runs = [pool.submit(finetune_run, **call) for call in peptide.calls]
        seconds = {}
        if given is not None:
            for name, task in tasks.items():
                calls = task.finetune_calls("pretrained", given, settings)
                runs[name, "pretrained"] = [pool.submit(finetune_run, **c) for c in calls]
        for future in as_completed(pretraining):
            name = pretraining[future]
            model_dir, seconds[name] = future.result()
            calls = tasks[name].finetune_calls("pretrained", model_dir, settings)
            runs[name, "pretrained"] = [pool.submit(finetune_run, **c) for c in calls]
        results = {
            name: task.result(
                baselines[name].result(),
                {
                    init: [future.result() for future in runs[name, init]]
                    for init in ("scratch", "pretrained")
                    if (name, init) in runs
                },
            )
            for name, task in tasks.items()
        }
        peptide_result = peptide.result([future.result() for future in peptide_runs])
    if given is not None:
        note = f"given with --pretrained: {given}"
    elif pretrain:
        note = pretrained_note(pretrain, seconds, settings)
    else:
        note = "not pretrained: a task's pretrain_steps is 0"
    print(f"pretrained model: {note}", flush=True)
    return results, peptide_result, note


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
        tasks, peptide, note = run_everything(args.data, Path(tmp), settings, args.pretrained)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {
            **machine(),  # its load average is the one at the end
            "torch_threads": torch_threads,
            "load_average_1_5_15min_at_start": load_before,
        },
        "versions": versions("torch", "scikit-learn"),
        "mode": "smoke" if args.smoke else "full",
        "settings": {
            **settings,
            "architecture": ARCHITECTURE,
            "schedule": "finetune's default: linear warmup over 6% of the steps, linear decay to 0",
        },
        "pretrained": note,
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
