"""``biotransformer predict-contacts``: residue contact maps of proteins, to HDF5."""

from __future__ import annotations

import argparse

from biotransformer.cli.common import (
    add_column_options,
    add_device_options,
    add_max_tokens_option,
    add_model_option,
    load_placed_model,
    naming_input,
    reading_options,
)
from biotransformer.outputs import add_overwrite_option, check_output_file


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict-contacts`` command."""
    parser = subparsers.add_parser(
        "predict-contacts",
        help="residue contact maps of proteins from an ESM-2 model's contact head, to HDF5",
        description=(
            "P(contact) between every pair of residues of each protein, from the contact head "
            "of an ESM-2 masked LM (kept when the checkpoint is imported, e.g. --model "
            "hf:facebook/esm2_t33_650M_UR50D). Writes one (L, L) float32 dataset per record, "
            "contacts/<i> for the i-th input record, and 'ids' (input order). Each protein is "
            "read whole: one longer than the model's max_length is refused."
        ),
    )
    add_model_option(parser, "an ESM-2 masked LM")
    parser.add_argument("--input", required=True, metavar="FILE", help="FASTA/CSV/TSV proteins")
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="HDF5 output")
    add_overwrite_option(parser)
    add_column_options(parser)
    add_max_tokens_option(parser)
    add_device_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Predict and write the contact maps."""
    import json

    from biotransformer.api import read_records
    from biotransformer.contacts import contact_maps, write_contacts_h5

    check_output_file(args.out, inputs=[args.input, args.model], overwrite=args.overwrite)
    model = load_placed_model(args)
    records = read_records(args.input, model.tokenizer, **reading_options(args))
    with naming_input(args.input):
        write_contacts_h5(
            contact_maps(model, records, max_tokens=args.max_tokens),
            [record.id for record in records],
            args.out,
            attributes={"model": json.dumps(model.source)},
        )
    print(f"{len(records)} contact maps written to {args.out}")
    return 0
