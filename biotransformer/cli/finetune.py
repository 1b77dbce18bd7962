"""``biotransformer finetune``: labelled FASTA/CSV to a selected model and test metrics."""

from __future__ import annotations

import argparse

from biotransformer.cli.common import (
    add_duplicate_ids_option,
    column,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from biotransformer.errors import ConfigError
from biotransformer.outputs import add_overwrite_option
from biotransformer.tasks import FINETUNE_TASKS


def add_label_options(parser: argparse.ArgumentParser) -> None:
    """The ``read_sequences`` options shared by finetune and evaluate."""
    group = parser.add_argument_group("reading sequences and labels")
    group.add_argument(
        "--sequence-column",
        type=column,
        default="sequence",
        help="CSV/TSV column holding the sequences: a name, or a 0-based position "
        "(default: sequence)",
    )
    group.add_argument(
        "--label-column",
        type=column,
        default="label",
        help="CSV/TSV column holding the labels, or the label column of --labels-file "
        "(default: label)",
    )
    group.add_argument(
        "--id-column",
        type=column,
        default=None,
        help="CSV/TSV column holding record ids, or the id column of --labels-file "
        "(default: FILE:LINE for tables, 'id' in a labels file)",
    )
    group.add_argument(
        "--label-from",
        default=None,
        metavar="SPEC",
        help="FASTA/FASTQ labels from the header: key:NAME (a NAME=value pair), field:N "
        "(0-based '|' field) or regex:PATTERN (one group)",
    )
    group.add_argument(
        "--labels-file",
        default=None,
        metavar="FILE",
        help="a CSV/TSV sidecar table with an id and a label column, matched by record id",
    )
    add_duplicate_ids_option(group)


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
            "  biotransformer finetune --train train.csv --model hf:esm2_t6_8M_UR50D "
            "--lora r=8,alpha=16 --out runs/lora\n"
            "  biotransformer finetune --train seqs.fasta --label-from key:class "
            "--preset tiny --out runs/z model.num_layers=2 training.weight_decay=0.0"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--train", required=True, metavar="FILE", help="labelled training data")
    parser.add_argument(
        "--valid",
        metavar="FILE",
        help="validation data (default: --valid-fraction of --train, without leakage)",
    )
    parser.add_argument(
        "--test",
        metavar="FILE",
        help="test data (default: --test-fraction of --train, without leakage)",
    )
    parser.add_argument(
        "--task",
        choices=FINETUNE_TASKS,
        default="classification",
        help="classification (binary or multi-class), multilabel (comma-separated labels), "
        "regression (numbers) or token-classification (one label character per residue) "
        "(default: classification)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_overwrite_option(parser)
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="PATH|latest",
        help="continue a killed or stopped run from a checkpoint folder, or from the newest "
        "one in OUT/checkpoints ('latest', the default when the flag has no value); "
        "checkpoints are saved every training.save_every steps",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        metavar="DIR",
        help="warm start from this model directory (e.g. a pretrained masked-LM), or from "
        "hf:PATH (a local HuggingFace ESM directory) or fair-esm:PATH (an ESM-2 .pt file), "
        "converted into OUT/imported; its tokenizer is used",
    )
    model.add_argument(
        "--preset",
        help="architecture of a new model (default: dna-t6-8M for DNA, protein-t6-8M for "
        "protein, detected from the data)",
    )
    model.add_argument(
        "--tokenizer",
        metavar="SPEC",
        help="tokenizer of a new model: dna, dna-kmer:k=6, protein... (default: dna or protein)",
    )
    model.add_argument(
        "--pooling",
        choices=("cls", "mean", "max", "attention"),
        default="mean",
        help="how a sequence head pools token states (default: mean)",
    )
    model.add_argument(
        "--classifier",
        choices=("linear", "esm"),
        help="classification head: linear (dropout, linear; the default for a new head) or esm "
        "(dense, tanh, linear, as HF's EsmForSequenceClassification; with --pooling cls the "
        "model exports to HuggingFace with 'convert --to hf')",
    )
    model.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="train the head only (a linear probe on the encoder's features)",
    )
    model.add_argument(
        "--lora",
        metavar="r=R,alpha=A",
        help="train LoRA adapters (and the head) instead of the encoder: r= rank (default 8), "
        "alpha= scale, update alpha/r*BA (default 16), dropout= on the adapter input "
        "(default 0), targets= encoder linears joined by + (default qkv+out+up+down); the "
        "adapters and head go to OUT/adapter, model/ holds them merged (needs peft)",
    )
    train = parser.add_argument_group("training")
    train.add_argument(
        "--epochs", type=positive_float, default=3.0, help="passes over train (default: 3)"
    )
    train.add_argument(
        "--lr", type=positive_float, default=None, help="peak learning rate (default 3e-4)"
    )
    train.add_argument(
        "--max-tokens",
        type=positive_int,
        default=8192,
        help="padded tokens per batch; batches are filled by length (default: 8192)",
    )
    train.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        help="crop sequences to this many tokens (default: the model's max_length)",
    )
    train.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of splits, init, batches"
    )
    train.add_argument(
        "--class-weights",
        choices=("balanced",),
        default=None,
        help="weight the cross-entropy by inverse class frequency (multilabel: pos_weight)",
    )
    train.add_argument(
        "--pos-weight",
        default=None,
        metavar="W|balanced",
        help="weight of positives: binary classification (class 1) or every label of a "
        "multilabel task; 'balanced' uses negatives/positives",
    )
    train.add_argument(
        "--tune-threshold",
        action="store_true",
        help="tune the decision threshold for MCC on validation; stored in model/config.json",
    )
    train.add_argument(
        "--rc-augment",
        type=probability,
        default=0.0,
        metavar="P",
        help="DNA: serve each training sample reverse-complemented with probability P, drawn "
        "from (seed, epoch, index) (default: 0, off)",
    )
    train.add_argument(
        "--rc-average",
        action="store_true",
        help="DNA, sequence-level tasks: score validation and test (and, stored in "
        "model/config.json, later predict/evaluate runs) as the mean over both strands",
    )
    split = parser.add_argument_group("splits")
    split.add_argument(
        "--valid-fraction", type=fraction, default=0.1, help="share of train for validation (0.1)"
    )
    split.add_argument(
        "--test-fraction", type=fraction, default=0.1, help="share of train for test (0.1)"
    )
    split.add_argument(
        "--group-column",
        type=column,
        default=None,
        help="keep records with the same value together: a CSV/TSV column, or for FASTA a "
        "--label-from style spec (key:cluster)",
    )
    split.add_argument(
        "--bootstrap",
        type=non_negative_int,
        default=1000,
        help="bootstrap resamples for the 95%% confidence intervals (default: 1000; 0 skips "
        "the intervals)",
    )
    add_label_options(parser)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides: training.KEY (e.g. training.weight_decay=0), model.KEY for a "
        "new model (model.num_layers=2), or a fine-tuning key (evals_per_epoch=2)",
    )
    parser.set_defaults(handler=run)


def build_config(args: argparse.Namespace) -> object:
    """The ``FinetuneConfig`` of the parsed arguments and overrides."""
    from biotransformer.finetune import FinetuneConfig, ReadOptions, apply_overrides

    config = FinetuneConfig(
        train=args.train,
        valid=args.valid,
        test=args.test,
        task=args.task,
        output_dir=args.out,
        model_dir=args.model,
        preset=args.preset,
        tokenizer=args.tokenizer,
        pooling=args.pooling,
        classifier=args.classifier,
        freeze_encoder=args.freeze_encoder,
        lora=args.lora,
        epochs=args.epochs,
        max_tokens=args.max_tokens,
        max_length=args.max_length,
        class_weights=args.class_weights,
        pos_weight=_pos_weight(args.pos_weight),
        tune_threshold=args.tune_threshold,
        rc_augment=args.rc_augment,
        rc_average=args.rc_average,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        bootstrap=args.bootstrap,
        resume=args.resume,
        overwrite=args.overwrite,
        read=ReadOptions(
            sequence_column=args.sequence_column,
            label_column=args.label_column,
            id_column=args.id_column,
            label_from=args.label_from,
            labels_file=args.labels_file,
            group_column=args.group_column,
            duplicate_ids=args.duplicate_ids,
        ),
    )
    config.training.seed = args.seed
    if args.lr is not None:
        config.training.lr = args.lr
    return apply_overrides(config, args.overrides)


def _pos_weight(value: str | None) -> float | str | None:
    if value is None or value == "balanced":
        return value
    try:
        return positive_float(value)
    except argparse.ArgumentTypeError:
        raise ConfigError(
            f"--pos-weight {value!r}: give a finite number > 0 or 'balanced'"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Fine-tune and print where the results are; 130 when stopped by a signal."""
    from biotransformer.finetune import finetune

    result = finetune(build_config(args))
    if result.outcome == "interrupted":
        return 130
    split = "test" if "test" in result.metrics else "valid"
    summary = ", ".join(
        f"{name} {entry['value']:.4f}" for name, entry in result.metrics[split]["metrics"].items()
    )
    print(f"{split}: {summary}")
    print(f"model: {result.model_dir}; metrics: {result.output_dir / 'metrics.json'}")
    return 0
