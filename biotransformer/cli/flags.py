"""Where a flag becomes a config value: command-line flags are declared aliases of config keys.

A command names, for each flag, the key it sets::

    FLAGS = {"--epochs": "epochs", "--lr": "training.lr"}
    add_config_flags(parser, FinetuneConfig, FLAGS)          # in register()
    config = config_from_args(FinetuneConfig, args, FLAGS,   # in the handler
                              path=args.config, overrides=args.overrides)

Each flag takes its default, type (the field's numeric domain, or its ``parse``), choices and
help text from the dataclass field (``config.option``), so every default and every list of
choices is stated once, in ``biotransformer.config``, and ``--help`` shows the real default.
A config is built as: dataclass defaults < the YAML file < the flags given on the command
line < ``key=value`` overrides.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from biotransformer.config import Domain, MissingKeyError, field_at, load_config

T = TypeVar("T")

# The namespace attribute that lists the dests of the flags given on the command line.
GIVEN = "given_config_flags"


def _record(namespace: argparse.Namespace, dest: str) -> None:
    given = getattr(namespace, GIVEN, None)
    if given is None:
        given = set()
        setattr(namespace, GIVEN, given)
    given.add(dest)


class _Store(argparse._StoreAction):
    """Store the value, and record that the flag was given (a default is not)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        super().__call__(parser, namespace, values, option)
        _record(namespace, self.dest)


class _StoreTrue(argparse._StoreTrueAction):
    """A switch, recorded when given."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        super().__call__(parser, namespace, values, option)
        _record(namespace, self.dest)


def _number_or_word(domain: Domain, words: Sequence[str]) -> Any:
    """A flag type taking a number of ``domain`` or one of ``words`` (``--pos-weight``)."""

    def parse(text: str) -> Any:
        if text in words:
            return text
        try:
            return domain(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {domain.what} or {' or '.join(map(repr, words))}"
            ) from None

    parse.__name__ = f"{domain.what} or {', '.join(words)}"
    return parse


def flag_dest(flag: str) -> str:
    """The attribute argparse stores a flag under: ``--max-tokens`` -> ``max_tokens``."""
    return flag.lstrip("-").replace("-", "_")


def _shown(default: Any) -> str:
    return f"{default:g}" if isinstance(default, float) else str(default)


def add_config_flags(
    parser: argparse._ActionsContainer, cls: type, aliases: Mapping[str, str]
) -> None:
    """Add each flag of ``aliases`` (flag -> dotted key of ``cls``) with its field's default,
    type, choices and help."""
    for flag, key in aliases.items():
        item, hint, default = field_at(cls, key)
        meta = item.metadata
        required = default is dataclasses.MISSING
        help_text = meta["help"]
        if not required and default is not None and hint is not bool and "default" not in help_text:
            help_text = f"{help_text} (default: {_shown(default)})"
        options: dict[str, Any] = {
            "default": None if required else default,
            "help": help_text.replace("%", "%%"),
            **(meta.get("flag") or {}),
        }
        domain, choices = meta.get("domain"), meta.get("choices")
        if hint is bool:
            parser.add_argument(flag, action=_StoreTrue, **options)
            continue
        if domain is not None and choices is not None:
            options["type"] = _number_or_word(domain, choices)
        elif domain is not None or meta.get("parse") is not None:
            options["type"] = domain or meta["parse"]
        elif choices is not None:
            options["choices"] = choices
        parser.add_argument(flag, action=_Store, **options)


def config_from_args(
    cls: type[T],
    args: argparse.Namespace,
    aliases: Mapping[str, str],
    *,
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """The validated ``cls`` config: its defaults, the YAML file ``path``, the flags of
    ``aliases`` given on the command line, then the ``key=value`` ``overrides``."""
    given: set[str] = getattr(args, GIVEN, set())
    values = {
        key: getattr(args, flag_dest(flag))
        for flag, key in aliases.items()
        if flag_dest(flag) in given
    }
    try:
        return load_config(cls, path, overrides, values)
    except MissingKeyError as error:
        flags = [flag for flag, key in aliases.items() if key == error.key]
        if not flags:
            raise
        raise MissingKeyError(
            error.key,
            f"{flags[0]} is required. Fix: give {flags[0]} (or {error.key}: in the config file)",
        ) from None
