"""``biotransformer saliency``: in-silico mutagenesis and gradient x input of a fine-tuned head."""

from __future__ import annotations

import argparse

from biotransformer.cli.common import (
    add_column_options,
    add_device_options,
    load_placed_model,
    naming_input,
    positive_int,
)
from biotransformer.outputs import add_overwrite_option, claim_run_directory


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
            "score loss when mutated), and index.tsv (id, file stem). ID is the record id "
            "when it is a safe file name, else its safe characters plus a short hash."
        ),
    )
    parser.add_argument(
        "--model", required=True, metavar="DIR", help="a fine-tuned model directory"
    )
    parser.add_argument("--input", required=True, metavar="FILE", help="FASTA/CSV/TSV sequences")
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (new or empty)"
    )
    add_overwrite_option(parser)
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
    add_device_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Explain the first records and write tables and plots."""
    from itertools import islice

    from biotransformer.io import read_sequences
    from biotransformer.saliency import explain, file_stem, write_saliency, write_saliency_index

    with claim_run_directory(
        args.out, command="saliency", inputs=[args.model, args.input], overwrite=args.overwrite
    ) as run:
        model = load_placed_model(args)
        task = model.task
        records = read_sequences(
            args.input,
            sequence_column=args.sequence_column,
            id_column=args.id_column,
            label_column=None,
            duplicate_ids=args.duplicate_ids,
        )
        index: list[tuple[str, str]] = []
        stems: set[str] = set()
        for record in islice(records, args.max_records):
            with naming_input(args.input, record):
                result = explain(
                    model, task, record, target=args.target, batch_size=args.batch_size
                )
            stem = file_stem(record.id, stems)
            write_saliency(result, run.path, stem)
            index.append((record.id, stem))
            stems.add(stem)
        write_saliency_index(index, run.path)
    print(f"saliency of {len(index)} records written to {args.out} (index: index.tsv)")
    return 0
