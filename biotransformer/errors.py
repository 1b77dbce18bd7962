"""The package's own exceptions: every deliberate failure is a ``BioTransformerError``.

The command line prints these as one clear message (no traceback) and exits with status 2.
"""

from __future__ import annotations

from os import PathLike


class BioTransformerError(Exception):
    """Base class of every error the package raises on purpose."""


class InputError(BioTransformerError, ValueError):
    """Bad input data: names the file, the record or line, what is wrong, and the fix."""

    def __init__(
        self,
        problem: str,
        *,
        path: str | PathLike[str] | None = None,
        record: str | None = None,
        line: int | None = None,
        position: int | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.record = record
        self.line = line
        self.position = position
        self.fix = fix
        super().__init__(self._format())

    def with_path(self, path: str | PathLike[str]) -> InputError:
        """This error naming ``path``, unless it already names a file."""
        if self.path is not None:
            return self
        return InputError(
            self.problem,
            path=path,
            record=self.record,
            line=self.line,
            position=self.position,
            fix=self.fix,
        )

    def _format(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.record is not None:
            where.append(f"record {self.record!r}")
        if self.position is not None:
            where.append(f"position {self.position}")
        message = f"{', '.join(where)}: {self.problem}" if where else self.problem
        if self.fix:
            message += f". Fix: {self.fix}"
        return message


class ConfigError(BioTransformerError, ValueError):
    """A configuration value or key is invalid; the message names the field and the fix."""


class ModelDirectoryError(BioTransformerError):
    """A model directory is missing files, corrupted, or does not match the requested class."""
