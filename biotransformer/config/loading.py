"""The one loader of every command's config: a YAML file, then typed values (the flags
given), then dotted ``key=value`` overrides (values parsed as YAML), checked key by key
against the dataclass tree, then the tree's ``validate()``.

    config = load_config(FinetuneConfig, "finetune.yaml", ["training.lr=1e-3", "epochs=2"])

An unknown key names the closest valid one; a malformed value names the override.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from biotransformer.config.commands import TOKENIZER_MODEL_KEYS, RunConfig
from biotransformer.config.fields import (
    check_value,
    field_types,
    suggest_key,
    union_members,
)
from biotransformer.config.model import ModelConfig
from biotransformer.errors import ConfigError

T = typing.TypeVar("T")


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> T:
    """The validated ``cls`` config from an optional YAML file, then ``values`` (already
    typed, e.g. from flags; dotted keys), then ``key=value`` overrides (values parsed as
    YAML; a dotted key names a section: ``training.lr=3e-4``)."""
    tree = read_yaml(path) if path is not None else {}
    for key, value in (values or {}).items():
        set_dotted(tree, key, value)
    for override in overrides:
        key, value = parse_override(override)
        try:
            check_key(cls, key)
        except ConfigError as error:
            raise ConfigError(f"override {override!r}: {error}") from None
        set_dotted(tree, key, value)
    return config_from_dict(cls, tree)


def load_run_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """A pretraining ``RunConfig``: ``load_config(RunConfig, path, overrides)``."""
    return load_config(RunConfig, path, overrides)


def run_config_from_dict(values: Mapping[str, Any]) -> RunConfig:
    """A pretraining ``RunConfig`` from a mapping: ``config_from_dict(RunConfig, values)``."""
    return config_from_dict(RunConfig, values)


def apply_overrides(config: T, overrides: Sequence[str]) -> T:
    """A copy of ``config`` with ``key=value`` overrides applied, validated."""
    return load_config(type(config), values=dataclasses.asdict(config), overrides=overrides)


def config_from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build and validate a ``cls`` config from a nested mapping; an unknown key is an error
    naming the closest valid one, a value of the wrong type one naming the key."""
    config = _build(cls, values, "", None)
    config.validate()
    return config


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a YAML config file; a missing or unreadable file is a ``ConfigError``."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text. Fix: give a YAML config") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys, not {type(values).__name__}")
    return values


def parse_override(override: str) -> tuple[str, Any]:
    """The dotted key and the YAML value of one ``key=value`` override (empty: null)."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key or not all(key.split(".")):
        raise ConfigError(
            f"override {override!r} is not of the form key=value (section.key=value for a key "
            "of a section, e.g. training.lr=3e-4)"
        )
    return key, parse_override_value(override, raw)


def parse_override_value(override: str, raw: str) -> Any:
    """The YAML value of one ``key=value`` override (empty: null); malformed YAML is a
    ``ConfigError`` naming the override."""
    if not raw.strip():
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"override {override!r}: the value {raw!r} is not valid YAML ({reason}). Fix: "
            "give a number, a word, true/false, null or a list such as [0.9, 0.98]; quote a "
            "value with spaces"
        ) from None


def check_key(cls: type, key: str) -> None:
    """Raise ``ConfigError`` unless the dotted ``key`` names a field of the ``cls`` tree (or
    a key of a ``model`` section, checked when the config is built)."""
    parts = key.split(".")
    owner, prefix = cls, ""
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        item = _fields(owner).get(part)
        if item is None:
            raise ConfigError(_unknown(owner, part, None if last else {}, prefix))
        hint = field_types(owner)[part]
        if "model_keys" in item.metadata:
            return
        if not dataclasses.is_dataclass(hint):
            if not last:
                raise ConfigError(f"{prefix}{part} is a value, not a section")
            return
        owner, prefix = hint, f"{prefix}{part}."


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``training.lr`` in a nested mapping, making the sections on the way."""
    *sections, name = key.split(".")
    for section in sections:
        if not isinstance(tree.get(section), dict):
            tree[section] = {}
        tree = tree[section]
    tree[name] = value


def field_at(cls: type, key: str) -> tuple[dataclasses.Field, Any, Any]:
    """The field a dotted key names, its type and its default (from the enclosing section's
    default: fine-tuning's ``training.lr`` is 3e-4, not ``TrainingConfig``'s 5e-4)."""
    *sections, name = key.split(".")
    owner, default_owner = cls, None
    for section in sections:
        item = _fields(owner)[section]
        default_owner = (
            getattr(default_owner, section) if default_owner is not None else _default(item)
        )
        owner = field_types(owner)[section]
    item = _fields(owner)[name]
    default = getattr(default_owner, name) if default_owner is not None else _default(item)
    return item, field_types(owner)[name], default


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {item.name: item for item in dataclasses.fields(cls)}


def _default(item: dataclasses.Field) -> Any:
    """A field's default value, or ``dataclasses.MISSING`` for a required one."""
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def _build(cls: type[T], values: Any, prefix: str, base: T | None) -> T:
    """``cls`` from a mapping: nested sections start from ``base``'s (or the field's default)."""
    if not isinstance(values, Mapping):
        where = f"the {prefix[:-1]} section" if prefix else "a config"
        raise ConfigError(f"{where} must be a mapping of keys, not {values!r}")
    fields, hints = _fields(cls), field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(_unknown(cls, key, value, prefix))
        item, hint, name = fields[key], hints[key], f"{prefix}{key}"
        if dataclasses.is_dataclass(hint):
            section = getattr(base, key) if base is not None else _default(item)
            kwargs[key] = _build(hint, {} if value is None else value, f"{name}.", section)
        elif "model_keys" in item.metadata:
            start = getattr(base, key) if base is not None else _default(item)
            kwargs[key] = {**start, **_model_keys(value, name, item.metadata["model_keys"])}
        else:
            value = _coerce_float(value, hint)
            check_value(name, value, hint)
            kwargs[key] = value
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    missing = [key for key, item in fields.items() if key not in kwargs and _required(item)]
    if missing:
        key = f"{prefix}{missing[0]}"
        raise MissingKeyError(
            key, f"{key} is required. Fix: give {key}: in the config file, or {key}=VALUE"
        )
    return cls(**kwargs)


class MissingKeyError(ConfigError):
    """A required key (``train`` of a fine-tune) has no value; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _required(item: dataclasses.Field) -> bool:
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING


def _unknown(cls: type, key: str, value: Any, prefix: str) -> str:
    """The message for an unknown key: the same name in a section, else the closest sibling,
    else the valid keys."""
    known = list(_fields(cls))
    if isinstance(value, Mapping) and not prefix:
        return f"unknown section {key!r}{suggest_key(key, known)}"
    hints = field_types(cls)
    nested = [
        f"{name}.{key}"
        for name, hint in hints.items()
        if dataclasses.is_dataclass(hint) and key in _fields(hint)
    ]
    close = f" (did you mean {nested[0]!r}?)" if nested else suggest_key(key, known)
    return f"unknown key {prefix}{key}{close}"


def _model_keys(values: Any, name: str, extra: Sequence[str]) -> dict[str, Any]:
    """A ``model`` section: ModelConfig fields (and ``extra`` keys), typed; the vocabulary
    size and padding id come from the tokenizer."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"the {name} section must be a mapping of ModelConfig fields")
    hints = field_types(ModelConfig)
    known = [*extra, *(key for key in hints if key not in TOKENIZER_MODEL_KEYS)]
    checked = {}
    for key, value in values.items():
        if key in TOKENIZER_MODEL_KEYS:
            raise ConfigError(f"{name}.{key} comes from the tokenizer: remove it from the config")
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}{suggest_key(key, known)}")
        if key in hints:
            value = _coerce_float(value, hints[key])
            check_value(f"{name}.{key}", value, hints[key])
        checked[key] = value
    return checked


def _coerce_float(value: Any, hint: Any) -> Any:
    """YAML reads ``3e-4`` as a string; read it as a number where the field takes floats."""
    members = union_members(hint)
    if isinstance(value, list) and any(typing.get_origin(m) is list for m in members):
        item = next(typing.get_args(m)[0] for m in members if typing.get_origin(m) is list)
        return [_coerce_float(element, item) for element in value]
    if isinstance(value, str) and float in members:
        try:
            return float(value)
        except ValueError:
            return value
    return value
