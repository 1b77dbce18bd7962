"""``biotransformer quickstart``: the whole path on built-in data (or yours) in minutes."""

from __future__ import annotations

import argparse

from biotransformer.cli.flags import add_config_flags, config_from_args
from biotransformer.config import QuickstartConfig

# Each flag of ``quickstart`` and the QuickstartConfig key it sets.
FLAGS = {
    "--out": "output_dir",
    "--overwrite": "overwrite",
    "--seed": "seed",
    "--data": "data",
    "--label-column": "read.label_column",
    "--sequence-column": "read.sequence_column",
    "--label-from": "read.label_from",
    "--duplicate-ids": "read.duplicate_ids",
    "--pretrain-steps": "pretrain_steps",
    "--finetune-epochs": "finetune_epochs",
    "--bootstrap": "bootstrap",
}


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
        "--config",
        metavar="FILE",
        help="a YAML quickstart config (the keys of QuickstartConfig; flags and KEY=VALUE "
        "overrides take precedence over it)",
    )
    add_config_flags(parser, QuickstartConfig, FLAGS)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. model.num_layers=3 read.label_column=y (values are "
        "parsed as YAML)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the quickstart and print where everything went and what to run next."""
    from biotransformer.quickstart import quickstart, summary_lines

    config = config_from_args(
        QuickstartConfig, args, FLAGS, path=args.config, overrides=args.overrides
    )
    print("\n".join(summary_lines(quickstart(config))))
    return 0
