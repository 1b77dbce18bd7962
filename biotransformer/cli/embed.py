"""``biotransformer embed``: encoder embeddings of sequences, to HDF5."""

from __future__ import annotations

import argparse

from biotransformer.cli.finetune import column
from biotransformer.cli.long_inputs import add_window_options, window_options


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
    parser.add_argument(
        "--per-token", action="store_true", help="also store every token's embedding"
    )
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        metavar="L",
        help="hidden states to use: 0 = token embeddings, 1..num_layers the blocks, negative "
        "from the end (default: -1, the last layer after the final norm)",
    )
    parser.add_argument(
        "--sequence-column",
        type=column,
        default="sequence",
        help="CSV/TSV column of the sequences: name or 0-based position (default: sequence)",
    )
    parser.add_argument(
        "--id-column",
        type=column,
        default=None,
        help="CSV/TSV column of the ids (default: FILE:LINE)",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=16384, help="padded tokens per batch (default: 16384)"
    )
    add_window_options(parser, rc_average=False)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Embed and write the HDF5 file."""
    from biotransformer.heads import load_model
    from biotransformer.inference import (
        embed_records,
        is_main,
        launched_accelerator,
        write_embeddings_h5,
    )
    from biotransformer.io import read_sequences

    accelerator = launched_accelerator()
    model = load_model(args.model, require_tokenizer=True)
    if accelerator is not None:
        model.to(accelerator.device)
    records = list(
        read_sequences(
            args.input,
            sequence_column=args.sequence_column,
            id_column=args.id_column,
            label_column=None,
            alphabet=model.tokenizer.alphabet,
        )
    )
    embeddings = embed_records(
        model,
        records,
        layers=args.layers,
        per_token=args.per_token,
        max_tokens=args.max_tokens,
        accelerator=accelerator,
        windows=window_options(args),
    )
    if not is_main(accelerator):
        return 0
    write_embeddings_h5(
        embeddings,
        args.out,
        attributes={"model": str(args.model), "tokenizer": model.tokenizer.spec},
    )
    print(f"{len(records)} embeddings of width {embeddings.pooled.shape[1]} written to {args.out}")
    return 0
