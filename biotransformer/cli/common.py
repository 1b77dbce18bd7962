"""Flags and input reading shared by the commands that run a model over sequence files.

Device and precision (every command that runs a model), input columns and batch size (embed,
predict, evaluate, saliency, plot-embeddings), windows for long records and strand averaging
(predict, evaluate, embed), streaming and ``--resume`` (embed, predict, score-variants), and the
keyword arguments of the Python API (``biotransformer.api``) they become. Each flag keeps one
name, default and help text here.
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
from biotransformer.constants import DEVICE_NAMES, DTYPE_NAMES
from biotransformer.hub import SOURCE_HELP

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


def add_model_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--model``: any model source ``hub.load_model`` reads."""
    parser.add_argument("--model", required=True, metavar="MODEL", help=f"{what}: {SOURCE_HELP}")


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``: where and in what precision the model runs."""
    parser.add_argument(
        "--device",
        default="auto",
        metavar="|".join(DEVICE_NAMES),
        help="where the model runs: auto (a CUDA GPU when there is one, else an Apple GPU, "
        "else the CPU; under torchrun each rank takes the GPU of its LOCAL_RANK), cpu, cuda, "
        "cuda:N or mps (default: auto)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default="auto",
        help="precision of the weights and activations: auto (bf16 on a CUDA GPU that "
        "supports it, fp16 on an older one, fp32 on the CPU and MPS), fp32, bf16 or fp16 "
        "(GPU only) (default: auto)",
    )


def load_placed_model(args: argparse.Namespace) -> Any:
    """``--model`` (``biotransformer.api.load_model``: any source ``hub.load_model`` reads)
    on the ``--device`` in the ``--dtype`` the flags ask for (checked before it is read)."""
    from biotransformer.api import load_model
    from biotransformer.devices import keep_no_cpu_kernel_cache, place_model, resolve_placement

    keep_no_cpu_kernel_cache()  # inference: a new batch shape at every step (devices.py)
    placement = resolve_placement(args.device, args.dtype)
    return place_model(load_model(args.model, require_tokenizer=True), placement)


def load_launched_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The accelerator of an ``accelerate launch`` (or None) and ``--model`` on this
    process's ``--device`` in ``--dtype``."""
    from biotransformer.runtime import launched_accelerator

    accelerator = launched_accelerator()
    return accelerator, load_placed_model(args)


def read_input_records(args: argparse.Namespace, model: Any) -> Iterator[Any]:
    """Every unlabelled record of ``--input``, one at a time (``api.iter_file_records``)."""
    from biotransformer.api import iter_file_records

    return iter_file_records(
        args.input, model.tokenizer, args.sequence_column, args.id_column, args.duplicate_ids
    )


def add_resume_option(parser: argparse.ArgumentParser, what: str = "records") -> None:
    """``--resume`` (continue a streamed output where a stopped run left it) and
    ``--chunk-records`` (``what`` is run and written together)."""
    letters = "; a chunk also ends at 4 Mi letters" if what == "records" else ""
    parser.add_argument(
        "--chunk-records",
        type=positive_int,
        default=4096,
        metavar="N",
        help=f"{what} run and written together: memory grows with N, and a stopped run loses "
        f"at most the chunk in progress (default: 4096{letters})",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a run that stopped before the end (killed, out of time) where it "
        f"stopped: the {what} it wrote are kept (the hidden .OUT.partial file beside --out) "
        "and only the rest are run; the model, inputs and options must be the same",
    )


def stream_fingerprint(
    args: argparse.Namespace, model: Any, files: dict[str, str], **options: Any
) -> dict[str, Any]:
    """What must match for ``--resume`` to continue a run: the model directory, the input
    ``files``, the precision, ``--chunk-records`` and the ``options`` that change the output."""
    from biotransformer.streaming import file_fingerprint

    return {
        "model": file_fingerprint(args.model),
        "model_commit": (getattr(model, "source", None) or {}).get("commit"),  # a Hub name's
        **{name: file_fingerprint(path) for name, path in files.items()},
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "chunk_records": args.chunk_records,
        **options,
    }


def window_fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    """The batching and window options of ``embed`` and ``predict`` that change their output."""
    return {
        "max_tokens": args.max_tokens,
        "window_overlap": args.window_overlap,
        "window_aggregate": args.window_aggregate,
    }


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
