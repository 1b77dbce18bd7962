"""Flags shared by predict, evaluate and embed: windows for long records, strand averaging."""

from __future__ import annotations

import argparse
from typing import Any


def add_window_options(parser: argparse.ArgumentParser, *, rc_average: bool = True) -> None:
    """``--window-overlap``, ``--window-aggregate`` and (with ``rc_average``) ``--rc-average``."""
    parser.add_argument(
        "--window-overlap",
        type=int,
        default=None,
        metavar="LETTERS",
        help="records longer than the model's max_length are cut into windows overlapping by "
        "this many letters (default: a quarter of the window)",
    )
    parser.add_argument(
        "--window-aggregate",
        choices=("mean", "max"),
        default="mean",
        help="how the windows' sequence outputs are combined (default: mean); token outputs "
        "are stitched per base",
    )
    if rc_average:
        parser.add_argument(
            "--rc-average",
            action="store_true",
            help="DNA: average the sequence-level scores of both strands (reverse complement)",
        )


def window_options(args: argparse.Namespace) -> Any:
    """The ``WindowOptions`` the flags ask for."""
    from biotransformer.windows import WindowOptions

    return WindowOptions(overlap=args.window_overlap, aggregate=args.window_aggregate)
