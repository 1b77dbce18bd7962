"""Flags and input reading shared by the commands that run a model over sequence files.

Input columns and batch size (embed, predict, evaluate, saliency, plot-embeddings), windows for
long records and strand averaging (predict, evaluate, embed), and the keyword arguments of the
Python API (``biotransformer.api``) they become. Each flag keeps one name, default and help text
here.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from biotransformer.cli.flags import add_config_flags
from biotransformer.config import (
    ReadOptions,
    any_int,
    fraction,
    non_negative_float,
    non_negative_int,
    open_fraction,
    positive_float,
    positive_int,
    probability,
)

# Value types of numeric flags (``config.Domain``, the same checks as config keys): each checks
# its domain, so argparse names the flag, prints the allowed range and exits with status 2 (no
# traceback) before any work starts.

#: Every value type a numeric flag may use; a test checks that each numeric flag uses one.
NUMERIC_TYPES = (
    positive_int,
    non_negative_int,
    any_int,
    positive_float,
    non_negative_float,
    probability,
    fraction,
    open_fraction,
)


def add_duplicate_ids_option(parser: argparse._ActionsContainer) -> None:
    """``--duplicate-ids``: what reading does with a record id seen before."""
    add_config_flags(parser, ReadOptions, {"--duplicate-ids": "duplicate_ids"})


def add_column_options(parser: argparse.ArgumentParser) -> None:
    """``--sequence-column``, ``--id-column`` and ``--duplicate-ids`` of an unlabelled input."""
    add_config_flags(
        parser,
        ReadOptions,
        {
            "--sequence-column": "sequence_column",
            "--id-column": "id_column",
            "--duplicate-ids": "duplicate_ids",
        },
    )


def add_max_tokens_option(parser: argparse.ArgumentParser) -> None:
    """``--max-tokens``: the padded tokens of one batch."""
    parser.add_argument(
        "--max-tokens",
        type=positive_int,
        default=16384,
        help="padded tokens per batch (default: 16384)",
    )


def load_launched_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The accelerator of an ``accelerate launch`` (or None) and ``--model`` on its device."""
    from biotransformer.api import load_model
    from biotransformer.runtime import launched_accelerator

    accelerator = launched_accelerator()
    model = load_model(args.model, require_tokenizer=True)
    if accelerator is not None:
        model.to(accelerator.device)
    return accelerator, model


def load_task_with_threshold(args: argparse.Namespace, model: Any) -> Any:
    """The model's task, with ``--threshold`` (when given) as its decision threshold."""
    from biotransformer.api import task_with_threshold

    return task_with_threshold(model, args.threshold)


def reading_options(args: argparse.Namespace) -> dict[str, Any]:
    """The API's keyword arguments of the column flags (``add_column_options``)."""
    return {
        "sequence_column": args.sequence_column,
        "id_column": args.id_column,
        "duplicate_ids": args.duplicate_ids,
    }


def window_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The API's keyword arguments of the window flags (``add_window_options``)."""
    return {"window_overlap": args.window_overlap, "window_aggregate": args.window_aggregate}


@contextmanager
def naming_input(path: str, record: Any = None) -> Iterator[None]:
    """Errors about a record (tokenising, windows, labels) name the input file it came from
    and, when the work was on one ``record``, that record."""
    from biotransformer.errors import InputError

    try:
        yield
    except InputError as error:
        if error.record is None and record is not None:
            error = InputError(
                error.problem,
                record=record.id,
                line=record.line,
                position=error.position,
                fix=error.fix,
            )
        if error.record is None:
            raise
        raise error.with_path(path) from None


def add_window_options(parser: argparse.ArgumentParser, *, rc_average: bool = True) -> None:
    """``--window-overlap``, ``--window-aggregate`` and (with ``rc_average``) ``--rc-average``."""
    parser.add_argument(
        "--window-overlap",
        type=non_negative_int,
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
            action=argparse.BooleanOptionalAction,
            default=None,
            help="DNA: average the sequence-level scores of both strands (reverse complement); "
            "--no-rc-average scores the given strand only (default: what the model was "
            "fine-tuned with, stored in its config.json; off when it has none)",
        )


def window_options(args: argparse.Namespace, model: Any) -> Any:
    """The ``WindowOptions`` the flags ask for (``api.window_options``)."""
    from biotransformer.api import window_options as options

    return options(model, args.window_overlap, args.window_aggregate)
