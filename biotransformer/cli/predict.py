"""``biotransformer predict``: a fine-tuned model's predictions for every input record."""

from __future__ import annotations

import argparse

from biotransformer.cli.common import (
    add_column_options,
    add_device_options,
    add_max_tokens_option,
    add_resume_option,
    add_window_options,
    load_launched_model,
    load_task_with_threshold,
    naming_input,
    probability,
    read_input_records,
    stream_fingerprint,
    window_fingerprint,
    window_options,
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
            "the threshold stored with the model (finetune --tune-threshold), else 0.5. Rows are "
            "written as they come (a few thousand records at a time), so memory does not grow "
            "with the number of records; --resume continues a run that was stopped."
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
    add_resume_option(parser)
    add_column_options(parser)
    parser.add_argument(
        "--threshold",
        type=probability,
        default=None,
        help="decision threshold for binary/multilabel (default: the stored one, or 0.5)",
    )
    add_max_tokens_option(parser)
    add_window_options(parser)
    add_device_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Predict chunk by chunk, appending each chunk's rows to the TSV (resumable)."""
    from itertools import islice

    from biotransformer.inference import iter_predictions, prediction_header, prediction_rows
    from biotransformer.runtime import is_main
    from biotransformer.streaming import TableStream

    check_output_file(
        args.out, inputs=[args.input, args.model], overwrite=args.overwrite, allow_stdout=True
    )
    accelerator, model = load_launched_model(args)
    task = load_task_with_threshold(args, model)
    windows = window_options(args, model)
    table = TableStream(
        args.out,
        stream_fingerprint(
            args,
            model,
            {"input": args.input},
            threshold=task.threshold,
            rc_average=args.rc_average,
            task=task.task,
            **window_fingerprint(args),
        ),
        header=prediction_header(task),
        resume=args.resume,
        overwrite=args.overwrite,
    )
    kept = done = table.done
    records = islice(read_input_records(args, model), kept, None)
    with naming_input(args.input):
        for part in iter_predictions(
            model,
            records,
            task,
            max_tokens=args.max_tokens,
            accelerator=accelerator,
            windows=windows,
            rc_average=args.rc_average,
            chunk_records=args.chunk_records,
        ):
            if is_main(accelerator):
                table.append(prediction_rows(part))
            done += len(part.ids)
    if not is_main(accelerator):
        return 0
    table.finish()
    resumed = f" ({kept} kept from the stopped run)" if kept else ""
    print(f"{done} predictions written to {args.out}{resumed}", file=report_stream(args.out))
    return 0
