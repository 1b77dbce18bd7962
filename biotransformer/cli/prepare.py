"""``biotransformer prepare``: tokenise sequence files once into HDF5 pretraining shards."""

from __future__ import annotations

import argparse
from typing import Any

from biotransformer.atomic import json_text
from biotransformer.cli.common import fraction, non_negative_int, positive_int, probability


def register(subparsers: Any) -> None:
    """Add the ``prepare`` command."""
    parser = subparsers.add_parser(
        "prepare",
        help="tokenise FASTA files into HDF5 shards for pretraining",
        description=(
            "Stream FASTA (or FASTQ/CSV/TSV) files, cut long records into windows, tokenise "
            "them and write train/valid HDF5 shards plus manifest.json into --out. Re-running "
            "on the same inputs and options does nothing unless --force."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="sequence files (.gz too)")
    parser.add_argument(
        "--tokenizer",
        required=True,
        metavar="SPEC",
        help="token scheme ('dna', 'dna-kmer:k=6', 'protein', ...) or a tokenizer.json path",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output directory: new or empty, or shards prepared earlier",
    )
    parser.add_argument(
        "--window-tokens", type=positive_int, default=1024, help="tokens per window (default 1024)"
    )
    parser.add_argument(
        "--stride",
        type=positive_int,
        default=None,
        help="tokens between window starts (default: window)",
    )
    parser.add_argument(
        "--valid-fraction",
        type=fraction,
        default=0.01,
        help="share of records (or of a long record's bases) held out for validation",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the validation choice"
    )
    parser.add_argument(
        "--drop-soft-masked",
        action="store_true",
        help="count lowercase bases as masked, like N, when dropping windows",
    )
    parser.add_argument(
        "--max-n-fraction",
        type=probability,
        default=0.5,
        help="drop windows whose share of N bases exceeds this (default 0.5)",
    )
    parser.add_argument("--force", action="store_true", help="replace existing shards")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the shards and print the summary as JSON."""
    from pathlib import Path

    from biotransformer.data.shards import MANIFEST, prepare_corpus
    from biotransformer.outputs import claim_run_directory, holds_files
    from biotransformer.tokenizers import Tokenizer

    spec = args.tokenizer
    with claim_run_directory(
        args.out,
        command="prepare",
        inputs=[*args.inputs, spec if Path(spec).exists() else None],
        resume=True,  # prepare_corpus skips, refuses or (--force) replaces its earlier shards
        recognise=holds_files(MANIFEST),
    ):
        tokenizer = Tokenizer.load(spec) if Path(spec).exists() else Tokenizer.from_spec(spec)
        summary = prepare_corpus(
            args.inputs,
            tokenizer,
            args.out,
            window_tokens=args.window_tokens,
            stride=args.stride,
            valid_fraction=args.valid_fraction,
            seed=args.seed,
            force=args.force,
            keep_soft_masked=not args.drop_soft_masked,
            max_n_fraction=args.max_n_fraction,
            progress=not args.quiet,
        )
    print(json_text({**summary.to_dict(), "mbp_per_s": round(summary.mbp_per_s, 1)}), end="")
    return 0
