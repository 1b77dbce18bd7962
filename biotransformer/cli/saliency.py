"""``biotransformer saliency``: in-silico mutagenesis and gradient x input of a fine-tuned head."""

from __future__ import annotations

import argparse

from biotransformer.cli.common import add_column_options, naming_input, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``saliency`` command."""
    parser = subparsers.add_parser(
        "saliency",
        help="which positions drive a fine-tuned model's prediction (ISM heatmap, logo)",
        description=(
            "For every input record: in-silico saturation mutagenesis (every position x every "
            "letter, batched) and gradient x input of the target's score (log-odds of a class, "
            "a multilabel logit or a regression value). Writes per record ID.ism.tsv, "
            "ID.heatmap.png (position x letter) and ID.logo.png (letters scaled by the mean "
            "score loss when mutated)."
        ),
    )
    parser.add_argument(
        "--model", required=True, metavar="DIR", help="a fine-tuned model directory"
    )
    parser.add_argument("--input", required=True, metavar="FILE", help="FASTA/CSV/TSV sequences")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--target",
        default=None,
        help="label to explain (default: the last class, the positive one of a binary task)",
    )
    parser.add_argument(
        "--max-records",
        type=positive_int,
        default=20,
        help="explain at most this many records, the first ones (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        help="mutants per forward pass (default: %(default)s)",
    )
    add_column_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Explain the first records and write tables and plots."""
    from itertools import islice

    from biotransformer.heads import load_model
    from biotransformer.inference import load_task
    from biotransformer.io import read_sequences
    from biotransformer.saliency import explain, write_saliency

    model = load_model(args.model, require_tokenizer=True)
    task = load_task(model, args.model)
    records = read_sequences(
        args.input,
        sequence_column=args.sequence_column,
        id_column=args.id_column,
        label_column=None,
        duplicate_ids=args.duplicate_ids,
    )
    count = 0
    for record in islice(records, args.max_records):
        with naming_input(args.input, record):
            result = explain(model, task, record, target=args.target, batch_size=args.batch_size)
        write_saliency(result, args.out)
        count += 1
    print(f"saliency of {count} records written to {args.out}")
    return 0
