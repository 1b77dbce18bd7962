"""``biotransformer embed``: encoder embeddings of sequences, to HDF5."""

from __future__ import annotations

import argparse

from biotransformer.cli.common import (
    add_column_options,
    add_max_tokens_option,
    add_window_options,
    any_int,
    load_launched_model,
    reading_options,
    window_arguments,
)
from biotransformer.outputs import add_overwrite_option, check_output_file


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``embed`` command."""
    parser = subparsers.add_parser(
        "embed",
        help="embed sequences with a model's encoder, to HDF5",
        description=(
            "Mean-pooled embeddings (over non-special tokens) of every record as one (N, D) "
            "float32 dataset 'embeddings' plus 'ids' (UTF-8 strings, in input order). With "
            "--per-token also 'tokens' (sum of T_i, D) and 'offsets' (N+1): record i owns "
            "tokens[offsets[i]:offsets[i+1]]. Several --layers are concatenated along D; the "
            "attribute 'layers' lists them. Batches are filled up to --max-tokens."
        ),
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="any model directory")
    parser.add_argument("--input", required=True, metavar="FILE", help="FASTA/CSV/TSV sequences")
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="HDF5 output")
    add_overwrite_option(parser)
    parser.add_argument(
        "--per-token", action="store_true", help="also store every token's embedding"
    )
    parser.add_argument(
        "--layers",
        type=any_int,
        nargs="+",
        default=None,
        metavar="L",
        help="hidden states to use: 0 = token embeddings, 1..num_layers the blocks, negative "
        "from the end (default: -1, the last layer after the final norm)",
    )
    add_column_options(parser)
    add_max_tokens_option(parser)
    add_window_options(parser, rc_average=False)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Embed (``biotransformer.api.embed``) and write the HDF5 file."""
    from biotransformer.api import embed
    from biotransformer.inference import write_embeddings_h5
    from biotransformer.runtime import is_main

    check_output_file(args.out, inputs=[args.input, args.model], overwrite=args.overwrite)
    accelerator, model = load_launched_model(args)
    embeddings = embed(
        model,
        args.input,
        layers=args.layers,
        per_token=args.per_token,
        max_tokens=args.max_tokens,
        accelerator=accelerator,
        **window_arguments(args),
        **reading_options(args),
    )
    if not is_main(accelerator):
        return 0
    write_embeddings_h5(
        embeddings,
        args.out,
        attributes={"model": str(args.model), "tokenizer": model.tokenizer.spec},
    )
    count, width = embeddings.pooled.shape
    print(f"{count} embeddings of width {width} written to {args.out}")
    return 0
