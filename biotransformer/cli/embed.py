"""``biotransformer embed``: encoder embeddings of sequences, to HDF5."""

from __future__ import annotations

import argparse
import json

from biotransformer.cli.common import (
    add_column_options,
    add_device_options,
    add_max_tokens_option,
    add_model_option,
    add_resume_option,
    add_window_options,
    any_int,
    load_launched_model,
    naming_input,
    read_input_records,
    stream_fingerprint,
    window_fingerprint,
    window_options,
)
from biotransformer.constants import POOLINGS
from biotransformer.outputs import add_overwrite_option, check_output_file


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``embed`` command."""
    parser = subparsers.add_parser(
        "embed",
        help="embed sequences with a model's encoder, to HDF5",
        description=(
            "Pooled embeddings (the mean, or with --pooling max the maximum, over non-special "
            "tokens) of every record as one (N, D) "
            "float32 dataset 'embeddings' plus 'ids' (UTF-8 strings, in input order). With "
            "--per-token also 'tokens' (sum of T_i, D) and 'offsets' (N+1): record i owns "
            "tokens[offsets[i]:offsets[i+1]]. Several --layers are concatenated along D; the "
            "attribute 'layers' lists them. Batches are filled up to --max-tokens. Results are "
            "written as they come (a few thousand records at a time), so memory does not grow "
            "with the number of records; --resume continues a run that was stopped."
        ),
    )
    add_model_option(parser, "any model")
    parser.add_argument("--input", required=True, metavar="FILE", help="FASTA/CSV/TSV sequences")
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="HDF5 output")
    add_overwrite_option(parser)
    add_resume_option(parser)
    parser.add_argument(
        "--per-token", action="store_true", help="also store every token's embedding"
    )
    parser.add_argument(
        "--pooling",
        choices=POOLINGS,
        default="mean",
        help="how a record's (a window's) token embeddings become its row: their mean "
        "(default) or element-wise maximum",
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
    add_device_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Embed chunk by chunk, appending each to the HDF5 file (resumable)."""
    from itertools import islice

    import numpy as np

    from biotransformer.inference import append_embeddings, iter_embeddings, resolve_layers
    from biotransformer.runtime import is_main
    from biotransformer.streaming import EmbeddingsStream

    check_output_file(args.out, inputs=[args.input, args.model], overwrite=args.overwrite)
    accelerator, model = load_launched_model(args)
    windows = window_options(args, model)
    layers = resolve_layers(args.layers, model.config.num_layers)
    stream = EmbeddingsStream(
        args.out,
        stream_fingerprint(
            args,
            model,
            {"input": args.input},
            layers=layers,
            per_token=args.per_token,
            pooling=args.pooling,
            **window_fingerprint(args),
        ),
        attributes={
            "layers": np.asarray(layers, dtype=np.int64),
            "model": str(args.model),
            "model_source": json.dumps(getattr(model, "source", None)),
            "pooling": args.pooling,
            "tokenizer": model.tokenizer.spec,
        },
        resume=args.resume,
        overwrite=args.overwrite,
    )
    kept = done = stream.done
    width = 0
    records = islice(read_input_records(args, model), kept, None)
    with naming_input(args.input):
        for part in iter_embeddings(
            model,
            records,
            layers=layers,
            per_token=args.per_token,
            pooling=args.pooling,
            max_tokens=args.max_tokens,
            accelerator=accelerator,
            windows=windows,
            chunk_records=args.chunk_records,
        ):
            if is_main(accelerator):
                append_embeddings(stream, part)
            done, width = done + len(part.ids), part.pooled.shape[1]
    if not is_main(accelerator):
        return 0
    stream.finish()
    resumed = f" ({kept} kept from the stopped run)" if kept else ""
    print(f"{done} embeddings of width {width} written to {args.out}{resumed}")
    return 0
