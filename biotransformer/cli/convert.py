"""``biotransformer convert``: ESM-2 / Nucleotide Transformer checkpoints in and out."""

from __future__ import annotations

import argparse
from typing import Any

from biotransformer.atomic import json_text
from biotransformer.outputs import add_overwrite_option, check_model_directory_output

SOURCES = ("hf", "fair-esm", "biotransformer")
TARGETS = ("biotransformer", "hf")


def register(subparsers: Any) -> None:
    """Add ``convert``."""
    parser = subparsers.add_parser(
        "convert",
        help="import a HuggingFace or fair-esm ESM checkpoint, or export one to HuggingFace",
        description=(
            "Convert a checkpoint: a HuggingFace ESM directory or Hub repository (ESM-2, "
            "Nucleotide Transformer; ORG/NAME[@REVISION] through the HuggingFace cache), a "
            "fair-esm ESM-2 .pt file, or a biotransformer model directory, into a biotransformer "
            "model directory or a HuggingFace ESM directory that transformers loads with its "
            "own classes."
        ),
    )
    parser.add_argument(
        "--from",
        dest="source",
        choices=SOURCES,
        required=True,
        help="format of PATH: hf (EsmForMaskedLM/SequenceClassification/TokenClassification "
        "directory or Hub repository ORG/NAME[@REVISION]), fair-esm (.pt file) or "
        "biotransformer (model directory)",
    )
    parser.add_argument("path", metavar="PATH", help="the checkpoint directory, file or Hub name")
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="directory to write: new or empty, or an earlier model directory with --overwrite",
    )
    add_overwrite_option(parser)
    parser.add_argument(
        "--to",
        choices=TARGETS,
        default="biotransformer",
        help="format of DIR: a biotransformer model directory (default) or a HuggingFace "
        "ESM directory",
    )
    parser.set_defaults(handler=_convert)


def _convert(args: argparse.Namespace) -> int:
    from biotransformer import interop
    from biotransformer.heads import MODEL_FILES
    from biotransformer.hub import FAIR_ESM_PREFIX, HUB_PREFIX, load_model

    check_model_directory_output(
        args.out,
        owned=(*MODEL_FILES, *interop.HF_FILES),
        inputs=[args.path],
        overwrite=args.overwrite,
    )
    prefix = {"hf": HUB_PREFIX, "fair-esm": FAIR_ESM_PREFIX, "biotransformer": ""}[args.source]
    model = load_model(prefix + args.path)
    if args.to == "hf":
        interop.to_hf(model, args.out)
    else:
        model.save_pretrained(args.out)
    summary = {
        "out": str(args.out),
        "format": args.to,
        "model_type": type(model).__name__,
        "parameters": model.num_parameters(),
        "tokenizer": None if model.tokenizer is None else model.tokenizer.spec,
        "source": model.source,
    }
    print(json_text(summary, indent=None), end="")
    return 0
