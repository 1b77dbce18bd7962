"""Flags and input reading shared by the commands that run a model over sequence files.

Input columns and batch size (embed, predict, evaluate, saliency, plot-embeddings), windows for
long records and strand averaging (predict, evaluate, embed), and reading the ``--input`` records
with the model's alphabet (embed, predict). Each flag keeps one name, default and help text here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Value types of numeric flags: each checks its domain, so argparse names the flag, prints the
# allowed range and exits with status 2 (no traceback) before any work starts.


def _number(value: str, kind: type, what: str) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
    if kind is float and not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}: give a finite number")
    return number


def _bounded(kind: type, what: str, ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        number = _number(value, kind, what)
        if not ok(number):
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}")
        return number

    parse.__name__ = what  # argparse names the type in "invalid <name> value" messages
    return parse


positive_int = _bounded(int, "an integer >= 1", lambda n: n >= 1)
non_negative_int = _bounded(int, "an integer >= 0", lambda n: n >= 0)
any_int = _bounded(int, "an integer", lambda n: True)
positive_float = _bounded(float, "a finite number > 0", lambda x: x > 0)
non_negative_float = _bounded(float, "a finite number >= 0", lambda x: x >= 0)
probability = _bounded(float, "a number in [0, 1]", lambda x: 0.0 <= x <= 1.0)
fraction = _bounded(float, "a number in [0, 1)", lambda x: 0.0 <= x < 1.0)
open_fraction = _bounded(float, "a number in (0, 1)", lambda x: 0.0 < x < 1.0)

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


def column(value: str) -> str | int:
    """A column name, or a 0-based position when the value is a number."""
    return int(value) if value.isdigit() else value


def add_duplicate_ids_option(parser: argparse._ActionsContainer) -> None:
    """``--duplicate-ids``: what reading does with a record id seen before."""
    from biotransformer.io import DUPLICATE_ID_POLICIES

    parser.add_argument(
        "--duplicate-ids",
        choices=DUPLICATE_ID_POLICIES,
        default="error",
        help="a record id seen twice: error (default), warn (keep both, say so) or allow",
    )


def add_column_options(parser: argparse.ArgumentParser) -> None:
    """``--sequence-column``, ``--id-column`` and ``--duplicate-ids`` of an unlabelled input."""
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
    add_duplicate_ids_option(parser)


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
    from biotransformer.heads import load_model
    from biotransformer.runtime import launched_accelerator

    accelerator = launched_accelerator()
    model = load_model(args.model, require_tokenizer=True)
    if accelerator is not None:
        model.to(accelerator.device)
    return accelerator, model


def load_task_with_threshold(args: argparse.Namespace, model: Any) -> Any:
    """The model's task, with ``--threshold`` (when given) as its decision threshold."""
    task = model.task
    if args.threshold is not None:
        task.threshold = args.threshold
    return task


def read_input_records(args: argparse.Namespace, model: Any) -> list[Any]:
    """Every unlabelled record of ``--input``, checked against the model's alphabet (a
    record of the other alphabet is refused with the fix for this command: another model)."""
    from biotransformer.errors import InputError
    from biotransformer.io import read_sequences

    try:
        return list(
            read_sequences(
                args.input,
                sequence_column=args.sequence_column,
                id_column=args.id_column,
                label_column=None,
                alphabet=model.tokenizer.alphabet,
                duplicate_ids=args.duplicate_ids,
            )
        )
    except InputError as error:
        if not error.problem.startswith("this looks like"):
            raise
        other = "DNA" if model.tokenizer.alphabet == "protein" else "protein"
        raise InputError(
            f"{error.problem}, and --model {args.model} reads {model.tokenizer.alphabet}",
            path=error.path,
            record=error.record,
            line=error.line,
            fix=f"use a {other} model, or check the file",
        ) from None


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
    """The ``WindowOptions`` the flags ask for; a ``--window-overlap`` that is not smaller
    than ``model``'s window (in letters) is refused before any work."""
    from biotransformer.errors import ConfigError
    from biotransformer.windows import WindowOptions, first_window_size

    size = first_window_size(model.tokenizer, model.config.max_length)
    if args.window_overlap is not None and args.window_overlap >= size:
        raise ConfigError(
            f"--window-overlap {args.window_overlap} is not smaller than the window of "
            f"--model {args.model} ({size} letters). Fix: give a --window-overlap below {size} "
            "(default: a quarter of the window)"
        )
    return WindowOptions(overlap=args.window_overlap, aggregate=args.window_aggregate)
