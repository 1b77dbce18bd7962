"""``biotransformer plot-attention``: a model's attention over one sequence, as a heatmap."""

from __future__ import annotations

import argparse
from typing import Any

from biotransformer.cli.common import (
    add_device_options,
    any_int,
    load_placed_model,
    naming_input,
    non_negative_int,
)
from biotransformer.outputs import add_overwrite_option, check_output_file


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plot-attention`` command."""
    parser = subparsers.add_parser(
        "plot-attention",
        help="plot one layer's attention weights over one sequence",
        description=(
            "Run the model's encoder over one sequence (--sequence, or the first record of "
            "--input) and draw one layer's attention weights as a heatmap, queries on rows and "
            "keys on columns, tokens on the axes: one head, or the mean over heads."
        ),
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="any model directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sequence", metavar="SEQ", help="the sequence, as letters")
    source.add_argument(
        "--input", metavar="FILE", help="a FASTA/CSV/TSV file whose first record is used"
    )
    parser.add_argument("--out", required=True, metavar="FILE.png", help="the PNG to write")
    add_overwrite_option(parser)
    parser.add_argument(
        "--layer",
        type=any_int,
        default=-1,
        help="encoder layer, 0-based, negative from the end (default: -1, the last)",
    )
    parser.add_argument(
        "--head",
        type=non_negative_int,
        default=None,
        help="attention head (default: the mean over heads)",
    )
    add_device_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Compute the attention weights and write the PNG."""
    from biotransformer.visualize import plot_attention_of

    check_output_file(args.out, inputs=[args.model, args.input], overwrite=args.overwrite)
    model = load_placed_model(args)
    sequence = the_sequence(args, model)
    plot_attention_of(model, sequence, args.out, layer=args.layer, head=args.head)
    print(f"attention map of layer {args.layer} written to {args.out}")
    return 0


def the_sequence(args: argparse.Namespace, model: Any) -> str:
    """``--sequence``, or the first record of ``--input``, checked against the model's
    tokenizer: an empty sequence, an empty file or letters the model does not read are
    refused naming the flag or the file and record."""
    from biotransformer.errors import InputError
    from biotransformer.io import read_sequences

    if args.sequence is not None:
        sequence = "".join(args.sequence.split())
        if not sequence:
            raise InputError(
                "--sequence is empty", fix="give the sequence's letters, or --input FILE"
            )
        try:
            model.tokenizer.encode(sequence, max_length=model.config.max_length)
        except InputError as error:
            at = "" if error.position is None else f" at position {error.position}"
            raise InputError(
                f"--sequence{at}: {error.problem}, and --model {args.model} reads "
                f"{model.tokenizer.alphabet}",
                fix=f"give a {model.tokenizer.alphabet} sequence, or a model that reads it",
            ) from None
        return sequence
    record = next(iter(read_sequences(args.input, label_column=None)), None)
    if record is None:
        raise InputError(
            "holds no records", path=args.input, fix="give a file with at least one sequence"
        )
    with naming_input(args.input, record):
        model.tokenizer.encode(record.sequence, max_length=model.config.max_length)
    return record.sequence
