"""``biotransformer predict``: a fine-tuned model's predictions for every input record."""

from __future__ import annotations

import argparse

from biotransformer.cli.common import (
    add_column_options,
    add_max_tokens_option,
    add_window_options,
    load_launched_model,
    probability,
    reading_options,
    window_arguments,
)
from biotransformer.outputs import add_overwrite_option, check_output_file, report_stream


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` command."""
    parser = subparsers.add_parser(
        "predict",
        help="predict labels or values for sequences, to TSV",
        description=(
            "Run a fine-tuned model directory over FASTA/CSV/TSV sequences and write one TSV "
            "row per record, in input order: id, prediction, then prob_<label> per class "
            "(classification, multilabel) or value (regression). Binary classification uses "
            "the threshold stored with the model (finetune --tune-threshold), else 0.5."
        ),
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="a model directory")
    parser.add_argument("--input", required=True, metavar="FILE", help="FASTA/CSV/TSV sequences")
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE.tsv",
        help="predictions TSV ('-': standard output)",
    )
    add_overwrite_option(parser)
    add_column_options(parser)
    parser.add_argument(
        "--threshold",
        type=probability,
        default=None,
        help="decision threshold for binary/multilabel (default: the stored one, or 0.5)",
    )
    add_max_tokens_option(parser)
    add_window_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Predict (``biotransformer.api.predict``) and write the TSV."""
    from biotransformer.api import predict
    from biotransformer.inference import write_predictions_tsv
    from biotransformer.runtime import is_main

    check_output_file(
        args.out, inputs=[args.input, args.model], overwrite=args.overwrite, allow_stdout=True
    )
    accelerator, model = load_launched_model(args)
    predictions = predict(
        model,
        args.input,
        threshold=args.threshold,
        rc_average=args.rc_average,
        max_tokens=args.max_tokens,
        accelerator=accelerator,
        **window_arguments(args),
        **reading_options(args),
    )
    if not is_main(accelerator):
        return 0
    write_predictions_tsv(predictions, args.out)
    count = len(predictions.ids)
    print(f"{count} predictions written to {args.out}", file=report_stream(args.out))
    return 0
