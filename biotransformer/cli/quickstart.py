"""``biotransformer quickstart``: the whole path on built-in data (or yours) in minutes."""

from __future__ import annotations

import argparse

from biotransformer.cli.common import (
    add_duplicate_ids_option,
    column,
    non_negative_int,
    positive_float,
    positive_int,
)
from biotransformer.outputs import add_overwrite_option


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``quickstart`` command."""
    parser = subparsers.add_parser(
        "quickstart",
        help="pretrain, fine-tune, evaluate and report on a built-in synthetic task (or yours)",
        description=(
            "Generate the synthetic planted-motif promoter task (or read --data), pretrain a "
            "tiny DNA encoder on its training sequences, fine-tune it as a classifier, "
            "evaluate it on the test split with 95%% bootstrap CIs next to a k-mer "
            "logistic-regression baseline, and write report.html with every plot. A few "
            "minutes on a laptop CPU."
        ),
        epilog="example: biotransformer quickstart --out quickstart-run --seed 1",
    )
    parser.add_argument(
        "--out",
        default="quickstart-run",
        metavar="DIR",
        help="output directory: new or empty, or a previous quickstart run with --overwrite "
        "(default: quickstart-run)",
    )
    add_overwrite_option(parser)
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the generated data, the splits and training (default: 0)",
    )
    parser.add_argument(
        "--data",
        metavar="FILE",
        help="a labelled DNA FASTA/CSV/TSV of yours instead of the synthetic task; split 80/10/10 "
        "without leakage",
    )
    parser.add_argument(
        "--label-column",
        type=column,
        default="label",
        help="with --data: the CSV/TSV label column (default: label)",
    )
    parser.add_argument(
        "--sequence-column",
        type=column,
        default="sequence",
        help="with --data: the CSV/TSV sequence column (default: sequence)",
    )
    parser.add_argument(
        "--label-from",
        metavar="SPEC",
        help="with a FASTA --data: labels from the header, e.g. key:class or field:1",
    )
    add_duplicate_ids_option(parser)
    parser.add_argument(
        "--pretrain-steps",
        type=positive_int,
        default=200,
        help="masked-LM pretraining steps (default: 200)",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=positive_float,
        default=1.5,
        help="fine-tuning passes over the training split (default: 1.5)",
    )
    parser.add_argument(
        "--bootstrap",
        type=non_negative_int,
        default=1000,
        help="bootstrap resamples for the 95%% confidence intervals (default: 1000; 0 skips "
        "the intervals)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the quickstart and print where everything went and what to run next."""
    from biotransformer.finetune import ReadOptions
    from biotransformer.quickstart import QuickstartConfig, quickstart, summary_lines

    config = QuickstartConfig(
        output_dir=args.out,
        seed=args.seed,
        data=args.data,
        read=ReadOptions(
            sequence_column=args.sequence_column,
            label_column=args.label_column,
            label_from=args.label_from,
            duplicate_ids=args.duplicate_ids,
        ),
        pretrain_steps=args.pretrain_steps,
        finetune_epochs=args.finetune_epochs,
        bootstrap=args.bootstrap,
        overwrite=args.overwrite,
    )
    print("\n".join(summary_lines(quickstart(config))))
    return 0
