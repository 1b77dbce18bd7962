"""``biotransformer plot-embeddings``: PCA of a model's embeddings, coloured by label."""

from __future__ import annotations

import argparse

from biotransformer.cli.common import (
    add_device_options,
    add_duplicate_ids_option,
    add_max_tokens_option,
    any_int,
    load_placed_model,
)
from biotransformer.config import column
from biotransformer.outputs import add_overwrite_option, check_output_file


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plot-embeddings`` command."""
    parser = subparsers.add_parser(
        "plot-embeddings",
        help="plot the first two principal components of a model's embeddings, by label",
        description=(
            "Embed every record of --data with the model's encoder (mean over non-special "
            "tokens of the last layer, or of --layers) and draw the first two principal "
            "components as a PNG, one colour per label (a colour scale for many numeric "
            "labels; one colour when the data have no labels)."
        ),
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="any model directory")
    parser.add_argument(
        "--data", required=True, metavar="FILE", help="FASTA/CSV/TSV sequences, labels optional"
    )
    parser.add_argument("--out", required=True, metavar="FILE.png", help="the PNG to write")
    add_overwrite_option(parser)
    parser.add_argument(
        "--sequence-column",
        type=column,
        default="sequence",
        help="CSV/TSV column of the sequences (default: sequence)",
    )
    parser.add_argument(
        "--label-column",
        type=column,
        default="label",
        help="CSV/TSV column of the labels that colour the points (default: label)",
    )
    parser.add_argument(
        "--label-from",
        metavar="SPEC",
        help="FASTA labels from the header: key:NAME, field:N or regex:PATTERN",
    )
    parser.add_argument(
        "--layers",
        type=any_int,
        nargs="+",
        default=None,
        metavar="L",
        help="hidden states to use, concatenated (default: -1, the last layer)",
    )
    add_duplicate_ids_option(parser)
    add_max_tokens_option(parser)
    add_device_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Embed, project and write the PNG."""
    from biotransformer.io import read_sequences
    from biotransformer.visualize import plot_embeddings_of

    check_output_file(args.out, inputs=[args.model, args.data], overwrite=args.overwrite)
    model = load_placed_model(args)
    records = list(
        read_sequences(
            args.data,
            sequence_column=args.sequence_column,
            label_column=args.label_column,
            label_from=args.label_from,
            label_type="class",
            duplicate_ids=args.duplicate_ids,
        )
    )
    plot_embeddings_of(model, records, args.out, layers=args.layers, max_tokens=args.max_tokens)
    print(f"PCA of {len(records)} embeddings written to {args.out}")
    return 0
