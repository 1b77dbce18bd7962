"""How a config field is declared and checked: numeric domains, ``option`` metadata, and
type checks against the real annotations (``typing.get_type_hints``).

A ``Domain`` is both a flag's argparse type and a config key's check, so the range of a value
is stated once; ``option`` puts a field's help text, domain and choices in its metadata, from
which ``cli/flags.py`` builds the flag that is an alias of the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from typing import Any

from biotransformer.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Domains of numbers: one definition serves a flag (argparse type) and a config key (check)
# ---------------------------------------------------------------------------------------------


class Domain:
    """The values a number may take, e.g. ``Domain(int, "an integer >= 1", lambda n: n >= 1)``.

    Called with a string it is an argparse type: the number, or ``ArgumentTypeError`` that
    argparse prints as one line naming the flag. ``accepts(value)`` checks a config value.
    """

    def __init__(self, kind: type, what: str, ok: Callable[[Any], bool]) -> None:
        self.kind, self.what, self.ok = kind, what, ok
        self.__name__ = what  # argparse names the type in "invalid <name> value" messages

    def __call__(self, text: str) -> Any:
        try:
            number = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.what}") from None
        if self.kind is float and not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.what}: give a finite number")
        if not self.ok(number):
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.what}")
        return number

    def accepts(self, value: Any) -> bool:
        """Whether a (type-checked) config value lies in the domain."""
        return (not isinstance(value, float) or math.isfinite(value)) and self.ok(value)


positive_int = Domain(int, "an integer >= 1", lambda n: n >= 1)
non_negative_int = Domain(int, "an integer >= 0", lambda n: n >= 0)
any_int = Domain(int, "an integer", lambda n: True)
positive_float = Domain(float, "a finite number > 0", lambda x: x > 0)
non_negative_float = Domain(float, "a finite number >= 0", lambda x: x >= 0)
probability = Domain(float, "a number in [0, 1]", lambda x: 0.0 <= x <= 1.0)
fraction = Domain(float, "a number in [0, 1)", lambda x: 0.0 <= x < 1.0)
open_fraction = Domain(float, "a number in (0, 1)", lambda x: 0.0 < x < 1.0)


def column(value: str) -> str | int:
    """A column name, or a 0-based position when the value is a number."""
    return int(value) if value.isdigit() else value


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    domain: Domain | None = None,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    flag: Mapping[str, Any] | None = None,
    factory: Callable[[], Any] | None = None,
    model_keys: Sequence[str] | None = None,
) -> Any:
    """A config field with its metadata: ``help`` (a flag's help text), ``domain`` (numbers:
    checked here and the type of a flag), ``choices`` (strings), ``parse`` (how a flag's text
    becomes the value, when neither says) and ``flag`` (other ``add_argument`` options).
    ``model_keys`` marks a ``model`` section: a mapping of ModelConfig fields (and these extra
    keys), checked key by key; YAML and overrides merge into its default."""
    metadata = {"help": help, "domain": domain, "choices": choices, "parse": parse, "flag": flag}
    if model_keys is not None:
        metadata["model_keys"] = tuple(model_keys)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Types: every value is checked against the field's real annotation
# ---------------------------------------------------------------------------------------------


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type annotation of each field of a dataclass."""
    return typing.get_type_hints(cls)


def union_members(hint: Any) -> tuple[Any, ...]:
    """The members of a union (``int | None`` -> int, NoneType), or the type itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def type_name(hint: Any) -> str:
    """How an annotation is written: ``float | None``, ``list[float]``."""
    members = union_members(hint)
    if len(members) > 1:
        return " | ".join(type_name(member) for member in members)
    if hint is type(None):
        return "None"
    if hint is Any:
        return "Any"
    origin = typing.get_origin(hint)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(hint))}]"
    return hint.__name__


_SCALARS: dict[Any, Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    type(None): lambda v: v is None,
    Any: lambda v: True,
}


def check_value(name: str, value: Any, hint: Any) -> None:
    """``value`` fits the annotation ``hint`` (scalars, unions, ``list[...]``,
    ``dict[str, ...]``; ``bool`` is no ``int``, an ``int`` is a ``float``) and, when a number,
    is finite: no config value may be NaN or infinite."""
    for member in union_members(hint):
        origin = typing.get_origin(member)
        if origin is list and isinstance(value, list):
            for item in value:
                check_value(name, item, typing.get_args(member)[0])
            return
        if origin is dict and isinstance(value, dict):
            item_type = typing.get_args(member)[1]
            if not all(isinstance(key, str) for key in value):
                break
            for key, item in value.items():
                check_value(f"{name}.{key}", item, item_type)
            return
        if member in _SCALARS and _SCALARS[member](value):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} = {value!r} must be a finite number")
            return
    raise ConfigError(
        f"{name} = {value!r} has type {type(value).__name__}, expected {type_name(hint)}"
    )


def check_values(cls: type, values: Mapping[str, Any], prefix: str) -> None:
    """Check each value of a mapping against the field of ``cls`` it names."""
    hints = field_types(cls)
    for key, value in values.items():
        check_value(f"{prefix}{key}", value, hints[key])


def check_field_types(config: Any, prefix: str) -> None:
    """Check every field of a config dataclass against its annotation (finite numbers too),
    its domain and its choices; ``prefix`` names the section in messages (``training.lr``)."""
    hints = field_types(type(config))
    for item in dataclasses.fields(config):
        if dataclasses.is_dataclass(hints[item.name]):
            continue  # a section: validated by its own validate()
        name, value = f"{prefix}{item.name}", getattr(config, item.name)
        check_value(name, value, hints[item.name])
        domain, choices = item.metadata.get("domain"), item.metadata.get("choices")
        if domain is not None and _SCALARS[float](value) and not domain.accepts(value):
            raise ConfigError(f"{name} = {value!r} must be {domain.what}")
        if choices is not None and isinstance(value, str) and value not in choices:
            raise ConfigError(f"{name} = {value!r} is not one of {list(choices)}")


def did_you_mean(word: str, choices: list[str]) -> str:
    """`` (did you mean 'lr'?)`` when a choice is close to ``word``, else nothing."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def suggest_key(key: str, known: list[str]) -> str:
    """`` (did you mean 'lr'?)``, or the list of valid keys when none is close."""
    return did_you_mean(key, known) or f"; valid keys: {', '.join(known)}"


def require(ok: bool, name: str, value: Any, condition: str) -> None:
    """Raise ``ConfigError`` (``name = value must be condition``) unless ``ok``."""
    if not ok:
        raise ConfigError(f"{name} = {value!r} must be {condition}")
