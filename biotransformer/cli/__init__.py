"""``biotransformer <command>``: the command line, one module per command.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``handler`` to a function taking the parsed arguments and returning an exit status. Command
modules import torch and friends inside their handler, so ``--help`` stays fast.

No command prints a traceback. Exit statuses: 0 success; 2 a bad flag or input (argparse's
usage errors and every ``BioTransformerError``: one line naming the flag, file or record and
the fix); 1 the system refused (an ``OSError``: disk full, permission denied... one line naming
the path and the fix) or an internal error (a bug: one line, the traceback only with
``BIOTRANSFORMER_DEBUG=1``); 130 interrupted; 141 (quietly) when the reader of stdout went
away, as in ``biotransformer datasets list | head -1``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys
import traceback
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
    "predict_contacts",
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
    except BrokenPipeError:  # the reader of stdout went away (``| head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as error:
        _debug_traceback()
        print(f"biotransformer: error: {os_error_message(error)}", file=sys.stderr)
        return 1
    except Exception as error:
        _debug_traceback()
        print(
            f"biotransformer: internal error: {type(error).__name__}: {error}. This is a bug: "
            f"rerun with {DEBUG_VARIABLE}=1 to see the traceback and report it",
            file=sys.stderr,
        )
        return 1
    finally:
        _leave_process_group()


DEBUG_VARIABLE = "BIOTRANSFORMER_DEBUG"

# The fix for each error number an OSError may carry; others get a generic one.
_OS_FIXES: dict[int, str] = {
    errno.ENOSPC: "free space on that file system, or write somewhere else",
    errno.EDQUOT: "free space within your disk quota, or write somewhere else",
    errno.EFBIG: "the file outgrew the file system's or the process's size limit (ulimit -f): "
    "raise the limit or write somewhere else",
    errno.EACCES: "check the permissions of that path, or use another one",
    errno.EPERM: "check the permissions of that path, or use another one",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EISDIR: "that path is a directory: give a file path",
    errno.ENOTDIR: "a part of that path is a file, not a directory: give another path",
    errno.ENAMETOOLONG: "use a shorter file name",
    errno.ENOENT: "check that the path exists",
    errno.EEXIST: "that path already exists: remove it or give another one",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
}


def os_error_message(error: OSError) -> str:
    """One line for an ``OSError``: the path, what the system said, and a fix. HDF5's errors
    (through h5py) carry the error number, file and message inside their text: read there."""
    text = str(error)
    number = error.errno
    if number is None and (found := re.search(r"errno = (\d+)", text)):
        number = int(found[1])
    paths = [str(name) for name in (error.filename, error.filename2) if name is not None]
    if not paths and (found := re.search(r"filename = '([^']+)'", text)):
        paths = [found[1]]
    reason = error.strerror or text
    if found := re.search(r"error message = '([^']+)'", reason):
        reason = found[1]
    reason = " ".join(reason.split())
    where = f"{' -> '.join(paths)}: " if paths else ""
    fix = _OS_FIXES.get(number or -1, "check the path and the file system")
    return f"{where}{reason[:1].lower()}{reason[1:]}. Fix: {fix}"


def _debug_traceback() -> None:
    """The traceback of the exception being handled, on stderr, under BIOTRANSFORMER_DEBUG=1."""
    if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
        traceback.print_exc()


def _leave_process_group() -> None:
    """Leave the process group, if a run joined one (only ``runtime`` builds Accelerators:
    when it was never imported, nothing is to leave and torch stays unimported)."""
    runtime = sys.modules.get("biotransformer.runtime")
    if runtime is not None:
        runtime.leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
