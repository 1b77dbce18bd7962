"""``biotransformer finetune``: labelled FASTA/CSV to a selected model and test metrics."""

from __future__ import annotations

import argparse

from biotransformer.cli.flags import add_config_flags, config_from_args
from biotransformer.config import FinetuneConfig, ReadOptions

# The flags of reading records and labels, as keys of ReadOptions (shared with evaluate).
READ_FLAGS = {
    "--sequence-column": "sequence_column",
    "--label-column": "label_column",
    "--id-column": "id_column",
    "--label-from": "label_from",
    "--labels-file": "labels_file",
    "--duplicate-ids": "duplicate_ids",
}

# Each flag of ``finetune`` and the FinetuneConfig key it sets, by argument group.
FLAG_GROUPS: dict[str | None, dict[str, str]] = {
    None: {
        "--train": "train",
        "--valid": "valid",
        "--test": "test",
        "--task": "task",
        "--out": "output_dir",
        "--overwrite": "overwrite",
        "--resume": "resume",
    },
    "model": {
        "--model": "model_dir",
        "--preset": "preset",
        "--tokenizer": "tokenizer",
        "--pooling": "pooling",
        "--classifier": "classifier",
        "--freeze-encoder": "freeze_encoder",
        "--lora": "lora",
    },
    "training": {
        "--epochs": "epochs",
        "--max-steps": "max_steps",
        "--patience": "patience",
        "--lr": "training.lr",
        "--max-tokens": "max_tokens",
        "--max-length": "max_length",
        "--seed": "training.seed",
        "--class-weights": "class_weights",
        "--pos-weight": "pos_weight",
        "--tune-threshold": "tune_threshold",
        "--rc-augment": "rc_augment",
        "--rc-average": "rc_average",
    },
    "splits": {
        "--valid-fraction": "valid_fraction",
        "--test-fraction": "test_fraction",
        "--group-column": "read.group_column",
        "--bootstrap": "bootstrap",
    },
    "reading sequences and labels": {flag: f"read.{key}" for flag, key in READ_FLAGS.items()},
}
FLAGS = {flag: key for group in FLAG_GROUPS.values() for flag, key in group.items()}


def add_label_options(parser: argparse.ArgumentParser) -> None:
    """The ``read_sequences`` options shared by finetune and evaluate."""
    group = parser.add_argument_group("reading sequences and labels")
    add_config_flags(group, ReadOptions, READ_FLAGS)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` command."""
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on labelled sequences and evaluate it",
        description=(
            "Fine-tune an encoder with a task head on labelled FASTA/CSV/TSV data. Missing "
            "validation/test splits are carved out of --train after removing duplicates "
            "(reverse complements included for DNA), stratified by label or by --group-column. "
            "The model is selected on validation; the test split is evaluated once at the end. "
            "OUT receives model/, metrics.json, predictions_*.tsv, config.yaml, run.json, "
            "log.jsonl, plots and report.html."
        ),
        epilog=(
            "examples:\n"
            "  biotransformer finetune --train train.csv --task classification --out runs/x\n"
            "  biotransformer finetune --train train.csv --valid dev.csv --test test.csv "
            "--model runs/pretrain/model --out runs/y --epochs 5 --lr 1e-3\n"
            "  biotransformer finetune --train train.csv --model hf:facebook/esm2_t6_8M_UR50D "
            "--lora r=8,alpha=16 --out runs/lora\n"
            "  biotransformer finetune --train seqs.fasta --label-from key:class "
            "--preset tiny --out runs/z model.num_layers=2 training.weight_decay=0.0"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML fine-tuning config (the keys of FinetuneConfig; flags and KEY=VALUE "
        "overrides take precedence over it)",
    )
    for title, flags in FLAG_GROUPS.items():
        add_config_flags(
            parser if title is None else parser.add_argument_group(title),
            FinetuneConfig,
            flags,
        )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides: training.KEY (e.g. training.weight_decay=0), model.KEY for a "
        "new model (model.num_layers=2), read.KEY, or a fine-tuning key (evals_per_epoch=2)",
    )
    parser.set_defaults(handler=run)


def build_config(args: argparse.Namespace) -> FinetuneConfig:
    """The ``FinetuneConfig`` of ``--config``, the flags given and the overrides."""
    return config_from_args(FinetuneConfig, args, FLAGS, path=args.config, overrides=args.overrides)


def run(args: argparse.Namespace) -> int:
    """Fine-tune (``biotransformer.api``) and print where the results are; 130 when stopped
    by a signal."""
    from biotransformer.api import run_finetune
    from biotransformer.verdict import verdict_lines

    result = run_finetune(build_config(args))
    if result.outcome == "interrupted":
        return 130
    split = "test" if "test" in result.metrics else "valid"
    summary = ", ".join(
        f"{name} {entry['value']:.4f}" for name, entry in result.metrics[split]["metrics"].items()
    )
    print(f"{split}: {summary}")
    if "verdict" in result.metrics:
        print("\n".join(verdict_lines(result.metrics["verdict"])))
    print(f"model: {result.model_dir}; metrics: {result.output_dir / 'metrics.json'}")
    return 0
