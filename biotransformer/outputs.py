"""Where commands may write: the output-path policy of every command, in one place.

A command checks its outputs before any work, writes only the files it names inside them, and
removes only what it wrote itself. Nothing a user owns is replaced or deleted.

Single-file outputs (``predict --out``, ``embed --out``, ``evaluate --metrics-out``, plots...),
``check_output_file``:

- ``-`` is standard output for text tables (predict and score-variants TSV, evaluate's
  metrics JSON); binary outputs (HDF5, PNG) refuse it.
- refused: an output that is one of the command's inputs, or lies inside one (``--out
  MODEL/config.json``); a directory (``.`` too); a symbolic link (never followed or replaced:
  give the real path); a special file (device, FIFO, socket); a path below a file.
- an existing regular file is replaced (atomically) only with ``--overwrite``.

Run directories (``finetune --out``, ``quickstart --out``, pretrain's ``training.output_dir``,
``prepare --out``, ``saliency --out``, ``evaluate --report-dir``), ``claim_run_directory``:

- claimed before any work. Absent or empty: created. A symbolic link, a file, or a directory
  that is, contains or lies inside one of the inputs: refused.
- the run keeps a record, ``.biotransformer-run.json``: the command, its arguments, pid, host,
  start and end, its status (``running``, ``finished``, ``interrupted``, ``failed``), the
  files that were there before it (``kept``) and, when it ends, every file it wrote
  (``files``, paths relative to the directory). A run killed outright never writes ``files``;
  then every file not in ``kept`` counts as written by it.
- a non-empty directory without a record, that the command does not recognise as its own
  output from an earlier version (prepared shards, a model directory), is refused.
- an earlier run's directory: ``--resume`` continues it (pretrain, finetune; prepare compares
  its inputs itself). A finished run, an unfinished run of a command that cannot resume, or a
  run of another command is refused unless ``--overwrite``, which first removes the files that
  run wrote and nothing else. An unfinished pretrain or fine-tune is left to the command's
  checkpoint rules (checkpoints present: ``--resume latest``, or refusal).
- one run per directory at a time: the run holds ``fcntl.flock`` on ``.biotransformer-lock``
  (pid, host, command, start time as JSON) until it ends, crash included; a second run gets an
  error naming the first. Under torchrun only the main process claims; the others learn the
  outcome by broadcast, so a refusal never leaves them waiting.

Model directories written whole (``convert --out``, ``save_pretrained``) are guarded by
``atomic.atomic_directory``: an existing one is replaced only when it holds nothing but model
files; ``check_model_directory_output`` applies the rules above to ``convert --out``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from biotransformer.atomic import atomic_write, json_text, write_json
from biotransformer.errors import ConfigError, InputError

if TYPE_CHECKING:
    from accelerate import Accelerator

STDOUT = "-"
RUN_RECORD = ".biotransformer-run.json"
LOCK_FILE = ".biotransformer-lock"
RECORD_VERSION = 1
_OWN = (RUN_RECORD, LOCK_FILE)

PathLike = str | os.PathLike[str]

# ---------------------------------------------------------------------------------------------
# Single files
# ---------------------------------------------------------------------------------------------


def _relation(output: Path, inputs: Iterable[PathLike | None]) -> Path | None:
    """The first input that ``output`` is, lies inside, or contains (resolved paths)."""
    resolved = output.resolve()
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        source = Path(item).resolve()
        if resolved == source or source in resolved.parents or resolved in source.parents:
            return Path(item)
        with contextlib.suppress(OSError):
            if output.exists() and os.path.samefile(output, source):
                return Path(item)
    return None


def _refuse_link_or_special(path: Path, flag: str) -> None:
    if path.is_symlink():
        raise InputError(
            f"{flag}: is a symbolic link; biotransformer never writes through or replaces a link",
            path=path,
            fix=f"give {flag} the real path ({path.resolve()}), a new name, or '-' for "
            "standard output where the command allows it",
        )
    with contextlib.suppress(FileNotFoundError):
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise InputError(
                f"{flag}: is a special file (device, FIFO or socket); biotransformer never "
                "replaces one",
                path=path,
                fix=f"give {flag} a regular file name ('-' is standard output where allowed)",
            )


def _refuse_file_ancestor(path: Path, flag: str) -> None:
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InputError(
                    f"{flag}: {parent} is a file, so nothing can be written below it",
                    path=path,
                    fix=f"give {flag} a path in a directory",
                )
            return


def check_output_file(
    path: PathLike,
    *,
    flag: str = "--out",
    inputs: Iterable[PathLike | None] = (),
    overwrite: bool = False,
    allow_stdout: bool = False,
) -> Path | None:
    """Check a single-file output before any work; None means standard output (``-``).

    Raises ``InputError`` (naming ``flag``) for ``-`` where ``allow_stdout`` is False, a
    directory, a symbolic link, a special file, an output that is or lies inside one of
    ``inputs``, and an existing file unless ``overwrite``. See the module doc."""
    if str(path) == STDOUT:
        if allow_stdout:
            return None
        raise InputError(
            f"{flag} -: standard output takes text tables only; this output is binary",
            fix=f"give {flag} a file name",
        )
    target = Path(path)
    _refuse_file_ancestor(target, flag)
    _refuse_link_or_special(target, flag)
    if target.is_dir():
        raise InputError(
            f"{flag}: is a directory",
            path=target,
            fix=f"give {flag} a file name, e.g. {target / 'out'}{target.suffix}",
        )
    source = _relation(target, inputs)
    if source is not None:
        raise InputError(
            f"{flag}: is or lies inside the input {source}; writing it would destroy the input",
            path=target,
            fix=f"give {flag} a new file outside the inputs",
        )
    if target.exists() and not overwrite:
        raise InputError(
            f"{flag}: already exists",
            path=target,
            fix="pass --overwrite to replace it, or choose a new name",
        )
    return target


@contextlib.contextmanager
def text_output(path: PathLike | None, **open_kwargs: Any) -> Iterator[IO[str]]:
    """Standard output for None or ``-``, else ``path`` written atomically."""
    if path is None or str(path) == STDOUT:
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_write(path, "w", **open_kwargs) as handle:
        yield handle


def report_stream(path: PathLike | None) -> IO[str]:
    """Where a command's summary line goes: standard error when its output is standard
    output (so a pipe receives the table only), else standard output."""
    return sys.stderr if path is None or str(path) == STDOUT else sys.stdout


# ---------------------------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------------------------


def _files(directory: Path) -> list[str]:
    """Relative paths (posix) of every file and link below ``directory``, sorted, without the
    directory's own record and lock."""
    found = []
    for root, dirs, names in os.walk(directory):
        base = Path(root)
        for name in names + [d for d in dirs if (base / d).is_symlink()]:
            relative = (base / name).relative_to(directory).as_posix()
            if relative not in _OWN:
                found.append(relative)
    return sorted(found)


def read_run_record(directory: PathLike) -> dict[str, Any] | None:
    """The run record of ``directory``, or None when it has none (or an unreadable one)."""
    try:
        record = json.loads((Path(directory) / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _recorded_paths(directory: Path, record: dict[str, Any]) -> list[str]:
    """What an earlier run wrote: its ``files``, or (killed before recording them) every
    file that was not there before it."""
    files = record.get("files")
    if not isinstance(files, list):
        kept = set(record.get("kept") or [])
        files = [name for name in _files(directory) if name not in kept]
    return [name for name in files if isinstance(name, str)]


def _remove_written(directory: Path, relative_paths: Iterable[str]) -> None:
    """Remove the listed files (never anything outside ``directory``), then the directories
    they leave empty."""
    root = directory.resolve()
    emptied: set[Path] = set()
    for relative in relative_paths:
        path = directory / relative
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            continue
        if not (path.is_symlink() or path.is_file()):
            continue
        if root not in path.parent.resolve().parents and path.parent.resolve() != root:
            continue
        path.unlink()
        emptied.update(p for p in path.parents if root in p.resolve().parents)
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _lock_holder(directory: Path) -> str:
    try:
        info = json.loads((directory / LOCK_FILE).read_text())
        return (
            f"pid {info.get('pid')} on {info.get('host')}, "
            f"'{info.get('command')}', started {info.get('started_at')}"
        )
    except (OSError, ValueError, AttributeError):
        return "a process that is starting"


def _in_use(directory: Path, flag: str) -> ConfigError:
    return ConfigError(
        f"{directory} is in use by another biotransformer run ({_lock_holder(directory)}). "
        f"Fix: wait for it to finish, or give {flag} another directory"
    )


class _Lock:
    """``flock`` on ``directory/.biotransformer-lock``, released (and the file removed) on
    ``release``; the kernel releases it when the process dies."""

    @staticmethod
    def probe(directory: Path, flag: str) -> None:
        """Raise when another process holds the directory (nothing is created)."""
        try:
            fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(directory, flag) from None
        finally:
            os.close(fd)

    def __init__(self, directory: Path, info: dict[str, Any], flag: str) -> None:
        path = directory / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _in_use(directory, flag) from None
            try:  # the file may have been removed by its holder between open and flock
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json_text(info, indent=None).encode())
        os.fsync(fd)
        self.path, self.fd = path, fd

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)


def _command_line() -> str:
    return " ".join(["biotransformer", *sys.argv[1:]]) if sys.argv else "biotransformer"


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class RunDirectory:
    """A claimed run directory: its path, the record kept in it, and the held lock.
    ``status`` is what the record says when the run ends normally (``finished`` unless the
    command sets ``interrupted``)."""

    path: Path
    record: dict[str, Any] = field(default_factory=dict)
    status: str = "finished"
    created: bool = False
    lock: _Lock | None = None

    def close(self, error: BaseException | None) -> None:
        """Record what the run wrote and how it ended; release the lock."""
        try:
            if self.lock is None:
                return
            if error is None:
                status = self.status
            elif isinstance(error, KeyboardInterrupt):
                status = "interrupted"
            else:
                status = "failed"
            files = _files(self.path)
            kept = set(self.record.get("kept", []))
            written = [name for name in files if name not in kept]
            if error is not None and not written and not kept:
                (self.path / RUN_RECORD).unlink(missing_ok=True)  # nothing to remember
            else:
                self.record.update(
                    status=status, finished_at=_now(), files=written, kept=sorted(kept)
                )
                write_json(self.path / RUN_RECORD, self.record)
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
            if error is not None and self.created:
                with contextlib.suppress(OSError):
                    self.path.rmdir()  # only when empty: a failed first attempt leaves nothing


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class _ClaimRules:
    """How one command claims its run directory (the arguments of ``claim_run_directory``)."""

    command: str
    flag: str
    overwrite: bool
    resume: bool
    resumable: bool
    recognise: Callable[[Path], bool] | None


def _inspect(directory: Path, rules: _ClaimRules) -> tuple[list[str], list[str] | None]:
    """What claiming ``directory`` means: (the files to remove first, the earlier run's
    ``kept`` when this run continues it, else None: everything left is the user's), or an
    error when it may not be claimed. See the module doc for the rules."""
    command, flag, overwrite = rules.command, rules.flag, rules.overwrite
    resume, resumable, recognise = rules.resume, rules.resumable, rules.recognise
    entries = [entry.name for entry in directory.iterdir() if entry.name not in _OWN]
    record = read_run_record(directory)
    if record is None:
        if not entries:
            return [], None
        if recognise is not None and recognise(directory):
            return [], None  # an earlier version's output: the command applies its own rules
        shown = ", ".join(sorted(entries)[:3]) + (" ..." if len(entries) > 3 else "")
        raise ConfigError(
            f"{flag} {directory} is not empty ({shown}) and was not written by biotransformer. "
            f"Fix: give {flag} a new or empty directory"
        )
    earlier = record.get("command", "?")
    status = record.get("status", "running")
    if earlier != command:
        if overwrite:
            return _recorded_paths(directory, record), None
        model = directory / "model"
        use_model = (
            f"to start from its model, pass --model {model} with a new {flag}; "
            if command == "finetune" and (model / "config.json").is_file()
            else ""
        )
        raise ConfigError(
            f"{flag} {directory} holds a biotransformer {earlier} run, not a {command} run. "
            f"Fix: {use_model}give {flag} another directory, or pass --overwrite to replace "
            "the files that run wrote (files you added are kept)"
        )
    kept = list(record.get("kept") or [])
    if resume:
        return [], kept
    if overwrite:
        return _recorded_paths(directory, record), None
    if status != "finished" and resumable:
        return [], kept  # the command's checkpoint rules decide
    if status != "finished" and not _recorded_paths(directory, record):
        return [], kept  # it wrote nothing: nothing to lose
    when = record.get("finished_at") or record.get("started_at")
    state = "a finished" if status == "finished" else f"an unfinished ({status})"
    resume_hint = "--resume latest to continue it (e.g. to more steps), " if resumable else ""
    raise ConfigError(
        f"{flag} {directory} holds {state} biotransformer {command} run ({when}). Fix: pass "
        f"{resume_hint}--overwrite to replace the files that run wrote (files you added are "
        f"kept), or give {flag} a new directory"
    )


def _claim(path: PathLike, rules: _ClaimRules, inputs: Iterable[PathLike | None]) -> RunDirectory:
    directory, flag = Path(path), rules.flag
    _refuse_file_ancestor(directory, flag)
    if directory.is_symlink():
        raise ConfigError(
            f"{flag} {directory} is a symbolic link; biotransformer never writes through a "
            f"link. Fix: give {flag} the real path ({directory.resolve()})"
        )
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{flag} {directory} is a file. Fix: give {flag} a directory")
    inputs = list(inputs)
    source = _relation(directory, inputs)
    if source is not None:
        raise ConfigError(
            f"{flag} {directory} is or contains the input {source} (or lies inside it): the run "
            f"could overwrite or remove it. Fix: give {flag} a directory apart from the inputs"
        )
    if directory.is_dir():
        _Lock.probe(directory, flag)
        _inspect(directory, rules)  # refuse a foreign directory before touching it
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    started = _now()
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line()}
    run = RunDirectory(directory, created=created)
    run.lock = _Lock(directory, {**info, "started_at": started}, flag)
    try:
        remove, kept = _inspect(directory, rules)
        _remove_written(directory, remove)
        present = set(_files(directory))
        run.record = {
            "format_version": RECORD_VERSION,
            "command": rules.command,
            "command_line": info["command"],
            "pid": info["pid"],
            "host": info["host"],
            "started_at": started,
            "status": "running",
            "kept": sorted(present if kept is None else set(kept) & present),
        }
        write_json(directory / RUN_RECORD, run.record)
    except BaseException as error:
        run.close(error)
        raise
    return run


@contextlib.contextmanager
def claim_run_directory(
    path: PathLike,
    *,
    command: str,
    flag: str = "--out",
    inputs: Iterable[PathLike | None] = (),
    overwrite: bool = False,
    resume: bool = False,
    resumable: bool = False,
    recognise: Callable[[Path], bool] | None = None,
    accelerator: Accelerator | None = None,
) -> Iterator[RunDirectory]:
    """Claim ``path`` for one run of ``command`` (see the module doc) and hold it until the
    block ends; the record then lists the files the run wrote.

    ``resume``: this run continues the earlier one (``--resume``; prepare always);
    ``resumable``: an unfinished earlier run is left to the command's own checks;
    ``recognise``: tells an earlier version's output of this command from a foreign
    directory. With ``accelerator`` (or under torchrun) only the main process claims; the
    outcome is broadcast, so every process raises the same error."""
    rules = _ClaimRules(command, flag, overwrite, resume, resumable, recognise)
    distributed = accelerator is not None and accelerator.num_processes > 1
    main = accelerator.is_main_process if accelerator is not None else _main_process()
    run, failure = RunDirectory(Path(path)), None
    if main:
        try:
            run = _claim(path, rules, inputs)
        except ConfigError as error:
            failure = error
            if not distributed:
                raise
        except InputError as error:
            failure = ConfigError(str(error))
            if not distributed:
                raise
    if distributed:
        from accelerate.utils import broadcast_object_list

        message = [None if failure is None else str(failure)]
        broadcast_object_list(message)
        if message[0] is not None:
            if failure is not None:
                raise failure
            raise ConfigError(message[0])
    try:
        yield run
    except BaseException as error:
        run.close(error)
        raise
    run.close(None)


# ---------------------------------------------------------------------------------------------
# Whole model directories (convert --out)
# ---------------------------------------------------------------------------------------------


def check_model_directory_output(
    path: PathLike,
    *,
    owned: Iterable[str],
    flag: str = "--out",
    inputs: Iterable[PathLike | None] = (),
    overwrite: bool = False,
) -> Path:
    """Check a model directory written whole (``convert --out``) before any work: absent or
    empty is fine; an earlier model directory (only names in ``owned``) needs ``overwrite``;
    anything else, a link, a file, or a path related to an input is refused."""
    directory = Path(path)
    _refuse_file_ancestor(directory, flag)
    _refuse_link_or_special(directory, flag)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{flag} {directory} is a file. Fix: give {flag} a directory")
    source = _relation(directory, inputs)
    if source is not None:
        raise ConfigError(
            f"{flag} {directory} is, contains or lies inside the input {source}. Fix: give "
            f"{flag} a new directory apart from the inputs"
        )
    entries = sorted(entry.name for entry in directory.iterdir()) if directory.is_dir() else []
    foreign = [name for name in entries if name not in set(owned)]
    if foreign:
        raise ConfigError(
            f"{flag} {directory} is not empty ({', '.join(foreign[:3])}) and is not a model "
            f"directory biotransformer wrote. Fix: give {flag} a new or empty directory"
        )
    if entries and not overwrite:
        raise ConfigError(
            f"{flag} {directory} already holds a model directory. Fix: pass --overwrite to "
            "replace it, or give a new directory"
        )
    return directory


def add_overwrite_option(parser: Any, what: str = "--out") -> None:
    """The ``--overwrite`` flag of a command, with the policy in its help text."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an existing {what}: a file, or the files an earlier biotransformer run "
        "recorded in a directory (files you put there are kept); without it an existing "
        "output is refused",
    )


def keep_input_copies(
    accelerator: Accelerator, run_directory: Path, sources: Sequence[str]
) -> list[str]:
    """Copy temporary input files (data given in memory to the API) into ``run_directory /
    "inputs"`` under their own names, as files of the run, so that its ``config.yaml`` can
    name files that last; the copies' paths, in order. The main process copies while the
    others wait."""
    folder = run_directory / "inputs"
    copies = [str(folder / Path(source).name) for source in sources]
    if not sources:  # no folder: an empty one is no file of the run's, and --overwrite keeps it
        return copies
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        for source, copy in zip(sources, copies, strict=True):
            with atomic_write(copy, "wb") as handle:
                handle.write(Path(source).read_bytes())
    accelerator.wait_for_everyone()
    return copies


def holds_files(*names: str) -> Callable[[Path], bool]:
    """A ``recognise`` test: the directory holds every one of ``names`` (how a run directory
    written by an earlier version, without a record, is told from a foreign one)."""
    return lambda directory: all((directory / name).is_file() for name in names)


__all__ = [
    "LOCK_FILE",
    "RUN_RECORD",
    "STDOUT",
    "RunDirectory",
    "add_overwrite_option",
    "check_model_directory_output",
    "check_output_file",
    "claim_run_directory",
    "holds_files",
    "keep_input_copies",
    "read_run_record",
    "report_stream",
    "text_output",
]
