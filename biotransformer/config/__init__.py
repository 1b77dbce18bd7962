"""Configuration: one typed dataclass tree per command, loaded by one loader.

``ModelConfig`` is an encoder's architecture (with named presets; the vocabulary size comes
from the tokenizer)::

    config = ModelConfig.from_preset("protein-t6-8M", vocab_size=tokenizer.vocab_size)

Each command has a tree of dataclasses: ``RunConfig`` (pretrain: ``model``, ``data``,
``training``), ``FinetuneConfig`` (with its ``read`` and ``training`` sections) and
``QuickstartConfig``. ``load_config(Class, yaml_path, ["section.key=value", ...])`` reads any
of them the same way: an optional YAML file, then dotted ``key=value`` overrides (values parsed
as YAML), every key checked against the dataclass (an unknown key names the closest valid
one), every value against its type annotation and its domain, then the tree's ``validate``.

A field's help text, numeric domain and choices are its metadata (``option``): command-line
flags are aliases of keys built from it (``cli/flags.py``), so each default and each list of
choices is stated once, here.

    fields     numeric domains, ``option`` metadata, type checks from the real annotations
    model      ModelConfig and its presets
    commands   the tree of each command: RunConfig, FinetuneConfig, QuickstartConfig
    loading    load_config: YAML, typed values, dotted overrides, validate()
"""

from __future__ import annotations

from biotransformer.config.commands import (
    CLASSIFIERS,
    MIXED_PRECISIONS,
    POOLINGS,
    QUICKSTART_MODEL,
    SCHEDULES,
    TOKENIZER_MODEL_KEYS,
    DataConfig,
    FinetuneConfig,
    QuickstartConfig,
    ReadOptions,
    RunConfig,
    TrainingConfig,
    check_mixed_precision_device,
)
from biotransformer.config.fields import (
    Domain,
    any_int,
    check_field_types,
    check_value,
    check_values,
    column,
    field_types,
    fraction,
    non_negative_float,
    non_negative_int,
    open_fraction,
    option,
    positive_float,
    positive_int,
    probability,
    type_name,
)
from biotransformer.config.loading import (
    MissingKeyError,
    apply_overrides,
    check_key,
    config_from_dict,
    field_at,
    load_config,
    load_run_config,
    parse_override,
    parse_override_value,
    read_yaml,
    run_config_from_dict,
    set_dotted,
)
from biotransformer.config.model import ACTIVATIONS, NORMS, POSITIONS, PRESETS, ModelConfig

__all__ = [
    "ACTIVATIONS",
    "CLASSIFIERS",
    "MIXED_PRECISIONS",
    "NORMS",
    "POOLINGS",
    "POSITIONS",
    "PRESETS",
    "QUICKSTART_MODEL",
    "SCHEDULES",
    "TOKENIZER_MODEL_KEYS",
    "DataConfig",
    "Domain",
    "FinetuneConfig",
    "MissingKeyError",
    "ModelConfig",
    "QuickstartConfig",
    "ReadOptions",
    "RunConfig",
    "TrainingConfig",
    "any_int",
    "apply_overrides",
    "check_field_types",
    "check_key",
    "check_mixed_precision_device",
    "check_value",
    "check_values",
    "column",
    "config_from_dict",
    "field_at",
    "field_types",
    "fraction",
    "load_config",
    "load_run_config",
    "non_negative_float",
    "non_negative_int",
    "open_fraction",
    "option",
    "parse_override",
    "parse_override_value",
    "positive_float",
    "positive_int",
    "probability",
    "read_yaml",
    "run_config_from_dict",
    "set_dotted",
    "type_name",
]
