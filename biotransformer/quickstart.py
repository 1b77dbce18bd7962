"""The newcomer's path in one call: data, pretraining, fine-tuning, evaluation and a report.

``quickstart(config)`` runs the whole path on a 2-core CPU in a few minutes. Without data of
the user's it generates the synthetic planted-motif promoter task (``synthetic``); with
``data`` it reads a labelled FASTA/CSV and splits it without leakage (``splits``). It then
pretrains a tiny DNA encoder by masked-token prediction on the training sequences
(``train.pretrain``), fine-tunes it as a classifier selected on validation
(``finetune.finetune``, which evaluates the test split once, with bootstrap CIs), fits the
k-mer count + logistic-regression baseline on the same splits (``baselines``), and writes
one report. The output directory::

    data/            train.csv, valid.csv, test.csv (the splits used), corpus.fasta
    pretrain/        the pretraining run (model/, log.jsonl, curves, report.html)
    finetune/        the fine-tuning run (model/, metrics.json, predictions, plots, report.html)
    embeddings_pca.png, attention.png
    metrics.json     the model's and the baseline's test metrics with 95% CIs, pretraining
                     held-out loss, the MCC margin, seconds per stage
    report.html      every number and plot on one page

The output directory is claimed first (``outputs.claim_run_directory``): a directory that
holds files of the user's, or ``--data``, is refused; a previous quickstart run there is
replaced only with ``overwrite`` (``--overwrite``), which removes just the files that run wrote.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biotransformer import plots, synthetic
from biotransformer.atomic import write_json
from biotransformer.baselines import kmer_baseline_scores
from biotransformer.config import FinetuneConfig, QuickstartConfig, run_config_from_dict
from biotransformer.errors import ConfigError
from biotransformer.finetune_data import read_labelled
from biotransformer.finetuning import finetune
from biotransformer.heads import load_model
from biotransformer.io import SequenceRecord, guess_alphabet
from biotransformer.metrics import evaluate_predictions
from biotransformer.outputs import RunDirectory, claim_run_directory
from biotransformer.report import metrics_tables
from biotransformer.splits import split_records
from biotransformer.tasks import TaskInfo
from biotransformer.train import pretrain
from biotransformer.visualize import plot_attention_of, plot_embeddings_of

MAX_TOKENS = 4096
PRETRAIN_LR = 2e-3
FINETUNE_LR = 1e-3
SPLIT_FRACTIONS = {"valid": 0.1, "test": 0.1}
KMER_RANGE = (3, 6)


@dataclass
class QuickstartResult:
    """Where everything went and the two numbers that matter."""

    output_dir: Path
    task: str
    model_dir: Path
    data_dir: Path
    report: Path
    metrics: dict[str, Any]
    model_mcc: float
    baseline_mcc: float
    seconds: float


def _labelled_splits(config: QuickstartConfig) -> tuple[str, dict[str, list[SequenceRecord]]]:
    """The task's name and its train/valid/test records: the synthetic task, or the user's
    file split (deduplicated, stratified) by ``split_records``."""
    if config.data is None:
        generated = synthetic.generate(config.seed)
        return synthetic.TASK_NAME, {
            name: [
                SequenceRecord(f"{name}_{i}", sequence, str(label))
                for i, (sequence, label) in enumerate(
                    zip(split.sequences, split.labels, strict=True)
                )
            ]
            for name, split in generated.items()
        }
    records = read_labelled(config.data, "classification", config.read)
    alphabet = guess_alphabet(records[0].sequence)
    if alphabet != "dna":
        raise ConfigError(f"{config.data}: the quickstart pretrains a DNA model; this is protein")
    result = split_records(records, fractions=SPLIT_FRACTIONS, alphabet="dna", seed=config.seed)
    return str(config.data), result.splits


def _write_data(splits: dict[str, list[SequenceRecord]], data_dir: Path) -> dict[str, Path]:
    """The splits as ``sequence,label`` CSVs and the training sequences as a FASTA corpus."""
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        name: synthetic.write_csv(
            [r.sequence for r in records], [r.label for r in records], data_dir / f"{name}.csv"
        )
        for name, records in splits.items()
    }
    paths["corpus"] = synthetic.write_fasta(
        [r.sequence for r in splits["train"]], data_dir / "corpus.fasta"
    )
    return paths


def _pretrain(config: QuickstartConfig, corpus: Path, out: Path, max_length: int) -> Path:
    """A tiny masked-LM on the corpus; the model directory."""
    steps = config.pretrain_steps
    run = run_config_from_dict(
        {
            "model": {**config.model, "max_length": max_length},
            "data": {
                "train_files": [str(corpus)],
                "tokenizer": "dna",
                "window_tokens": max_length - 2,
                "valid_fraction": 0.02,
                "max_length": max_length,
                "max_tokens": MAX_TOKENS,
                "seed": config.seed,
            },
            "training": {
                "output_dir": str(out),
                "lr": PRETRAIN_LR,
                "warmup_steps": max(steps // 10, 1),
                "max_steps": steps,
                "save_every": 0,
                "keep_last": 1,
                "eval_every": max(steps // 4, 1),
                "log_every": max(steps // 50, 1),
                "seed": config.seed,
            },
        }
    )
    result = pretrain(run)
    if result.model_dir is None:
        raise ConfigError(f"pretraining stopped at step {result.step} ({result.outcome})")
    return result.model_dir


def _baseline(
    splits: dict[str, list[SequenceRecord]], labels: list[str], bootstrap: int
) -> dict[str, Any]:
    """Test metrics (with CIs) of the k-mer logistic regression fitted on train."""
    ids = {label: index for index, label in enumerate(labels)}

    def encoded(records: list[SequenceRecord]) -> tuple[list[str], list[int]]:
        return [r.sequence for r in records], [ids[str(r.label)] for r in records]

    train, test = encoded(splits["train"]), encoded(splits["test"])
    scores = kmer_baseline_scores(train, test[0], KMER_RANGE)
    problem = TaskInfo("classification", labels).problem
    result = evaluate_predictions(problem, np.asarray(test[1]), scores, bootstrap=bootstrap)
    result["model"] = f"k-mer counts (k = {KMER_RANGE[0]}..{KMER_RANGE[1]}) + logistic regression"
    return result


# What a quickstart run writes into its output directory (report.html's images included).
OUTPUTS = (
    "data",
    "pretrain",
    "finetune",
    "metrics.json",
    "report.html",
    "embeddings_pca.png",
    "attention.png",
)


def quickstart(config: QuickstartConfig) -> QuickstartResult:
    """Data, pretraining, fine-tuning, test evaluation, baseline and report; see module doc."""
    config.validate()
    with claim_run_directory(
        config.output_dir,
        command="quickstart",
        inputs=[config.data, config.read.labels_file],
        overwrite=config.overwrite,
    ) as run:
        _refuse_user_files_in_the_way(run)
        return _quickstart(config, run.path)


def _refuse_user_files_in_the_way(run: RunDirectory) -> None:
    """Refuse, before any work, files of the user's where the run writes its own."""
    mine = [name for name in run.record.get("kept", []) if name.split("/")[0] in OUTPUTS]
    if mine:
        raise ConfigError(
            f"--out {run.path}: the quickstart writes {', '.join(OUTPUTS)} there, and "
            f"{', '.join(mine[:3])} {'is' if len(mine) == 1 else 'are'} not from a quickstart "
            "run. Fix: give --out a new or empty directory"
        )


def _quickstart(config: QuickstartConfig, out: Path) -> QuickstartResult:
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    task, splits = _labelled_splits(config)
    paths = _write_data(splits, out / "data")
    longest = max(len(r.sequence) for records in splits.values() for r in records)
    max_length = longest + 2
    seconds["data"] = time.perf_counter() - started

    pretrained = _pretrain(config, paths["corpus"], out / "pretrain", max_length)
    seconds["pretrain"] = time.perf_counter() - started - sum(seconds.values())

    tuning = FinetuneConfig(
        train=str(paths["train"]),
        valid=str(paths["valid"]),
        test=str(paths["test"]),
        output_dir=str(out / "finetune"),
        model_dir=str(pretrained),
        epochs=config.finetune_epochs,
        evals_per_epoch=2,
        max_tokens=MAX_TOKENS,
        bootstrap=config.bootstrap,
    )
    tuning.training.lr = FINETUNE_LR
    tuning.training.seed = config.seed
    tuned = finetune(tuning)
    seconds["finetune"] = time.perf_counter() - started - sum(seconds.values())

    baseline = _baseline(splits, tuned.metrics["labels"], config.bootstrap)
    model = load_model(tuned.model_dir)
    test_records = splits["test"]
    plot_embeddings_of(model, test_records, out / "embeddings_pca.png", max_tokens=MAX_TOKENS)
    example = next((r for r in test_records if r.label == tuned.metrics["labels"][-1]), None)
    plot_attention_of(model, (example or test_records[0]).sequence, out / "attention.png")
    seconds["baseline and plots"] = time.perf_counter() - started - sum(seconds.values())

    model_mcc = tuned.metrics["test"]["metrics"]["mcc"]["value"]
    baseline_mcc = baseline["metrics"]["mcc"]["value"]
    pretrain_metrics = json.loads((out / "pretrain" / "metrics.json").read_text())
    metrics = {
        "task": task,
        "seed": config.seed,
        "labels": tuned.metrics["labels"],
        "splits": {name: len(records) for name, records in splits.items()},
        "test": tuned.metrics["test"],
        "k-mer baseline test": baseline,
        "pretraining valid": pretrain_metrics.get("valid", {}),
        "mcc_margin": model_mcc - baseline_mcc,
        "config": dataclasses.asdict(config),
        "seconds": {**seconds, "total": time.perf_counter() - started},
    }
    write_json(out / "metrics.json", metrics)
    report = write_quickstart_report(out, metrics)
    return QuickstartResult(
        output_dir=out,
        task=task,
        model_dir=tuned.model_dir,
        data_dir=out / "data",
        report=report,
        metrics=metrics,
        model_mcc=model_mcc,
        baseline_mcc=baseline_mcc,
        seconds=metrics["seconds"]["total"],
    )


REPORT_SECTIONS = ("test", "k-mer baseline test", "pretraining valid")
REPORT_IMAGES = {
    "pretraining: loss and learning rate": "pretrain/training_curves.png",
    "pretraining: held-out loss and perplexity": "pretrain/validation_metrics.png",
    "fine-tuning: loss and learning rate": "finetune/training_curves.png",
    "fine-tuning: validation metrics": "finetune/validation_metrics.png",
    "test: ROC": "finetune/roc.png",
    "test: precision-recall": "finetune/precision_recall.png",
    "test: confusion matrix": "finetune/confusion_matrix.png",
    "test: embeddings (PCA, fine-tuned encoder)": "embeddings_pca.png",
    "attention of the last layer over one test sequence": "attention.png",
}


def write_quickstart_report(out: Path, metrics: dict[str, Any]) -> Path:
    """``report.html`` of a quickstart run: the sections of ``metrics.json`` and every plot
    of the run that exists."""
    margin = metrics["mcc_margin"]
    notes = [
        f"task: {metrics['task']}; splits {metrics['splits']}; seed {metrics['seed']}",
        f"test MCC of the model minus that of the k-mer baseline: {margin:+.3f}",
        f"baseline: {metrics['k-mer baseline test']['model']}",
        f"seconds: {', '.join(f'{k} {v:.0f}' for k, v in metrics['seconds'].items())}",
    ]
    images = {name: out / path for name, path in REPORT_IMAGES.items() if (out / path).exists()}
    return plots.write_report_html(
        out / "report.html",
        title=f"biotransformer quickstart: {metrics['task']}",
        tables=metrics_tables({name: metrics[name] for name in REPORT_SECTIONS}),
        images=images,
        notes=notes,
    )


def summary_lines(result: QuickstartResult) -> list[str]:
    """What the run did, where everything went and what to run next."""
    out, model, test = result.output_dir, result.model_dir, result.data_dir / "test.csv"
    verdict = "beats" if result.model_mcc > result.baseline_mcc else "does not beat"
    return [
        f"quickstart on the {result.task} finished in {result.seconds:.0f} s",
        f"test MCC: model {result.model_mcc:.3f}, k-mer baseline {result.baseline_mcc:.3f} "
        f"(the model {verdict} its baseline by {result.model_mcc - result.baseline_mcc:+.3f})",
        "",
        f"report (open in a browser): {result.report}",
        f"metrics with 95% CIs:       {out / 'metrics.json'}",
        f"fine-tuned model:           {model}",
        f"pretrained model:           {out / 'pretrain' / 'model'}",
        f"data splits:                {result.data_dir}",
        "",
        "next:",
        f"  biotransformer predict --model {model} --input {test} --out {out / 'predictions.tsv'}",
        f"  biotransformer evaluate --model {model} --data {test} --report-dir {out / 'evaluate'}",
        f"  biotransformer embed --model {model} --input {test} --out {out / 'embeddings.h5'}",
        f"  biotransformer plot-embeddings --model {model} --data {test} "
        f"--out {out / 'embeddings.png'}",
        "  biotransformer quickstart --data YOUR_LABELLED.csv --out my-run   (your own data)",
    ]
