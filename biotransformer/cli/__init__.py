"""``biotransformer <command>``: the command line, one module per command.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``handler`` to a function taking the parsed arguments and returning an exit status. Command
modules import torch and friends inside their handler, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from biotransformer import __version__
from biotransformer.errors import BioTransformerError

COMMAND_MODULES: tuple[str, ...] = (
    "datasets",
    "pretrain",
    "prepare",
    "convert",
    "finetune",
    "evaluate",
    "predict",
    "embed",
    "score_variants",
    "saliency",
    "quickstart",
    "plot_embeddings",
    "plot_attention",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="biotransformer",
        description=(
            "Transformer encoders for DNA and protein sequences: tokenise FASTA/CSV data, "
            "pretrain by masked-token prediction, fine-tune, evaluate, predict and embed."
        ),
        epilog="Run 'biotransformer COMMAND --help' for the flags of one command.",
    )
    parser.add_argument("--version", action="version", version=f"biotransformer {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(f"biotransformer.cli.{module_name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``biotransformer`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return int(handler(args) or 0)
    except BioTransformerError as error:
        print(f"biotransformer: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("biotransformer: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun, leave the process group before exiting: a process that exits still
    holding a gloo group can abort ("terminate called without an active exception")."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
