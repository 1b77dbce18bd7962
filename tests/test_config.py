"""Configs: ModelConfig (validation naming the field, JSON round trip, presets) and the one
loader of every command's config tree (YAML, dotted overrides, types from annotations)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from biotransformer.config import (
    PRESETS,
    FinetuneConfig,
    ModelConfig,
    QuickstartConfig,
    ReadOptions,
    RunConfig,
    TrainingConfig,
    check_value,
    field_types,
    load_config,
)
from biotransformer.errors import ConfigError
from biotransformer.heads import MaskedLM


def test_json_round_trip() -> None:
    config = ModelConfig(vocab_size=33, hidden_size=32, num_heads=4, position="alibi", pad_id=1)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hidden_size": 30, "num_heads": 4}, "hidden_size"),
        ({"hidden_size": 12, "num_heads": 4, "position": "rotary"}, "rotary"),
        ({"position": "relative"}, "position"),
        ({"norm": "sandwich"}, "norm"),
        ({"activation": "relu"}, "activation"),
        ({"dropout": 1.5}, "dropout"),
        ({"num_layers": 0}, "num_layers"),
        ({"pad_id": 40}, "pad_id"),
        ({"hidden_size": "32"}, "hidden_size"),
        ({"tie_embeddings": 1}, "tie_embeddings"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
    ],
)
def test_validation_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**{"vocab_size": 33, "hidden_size": 16, "num_heads": 2, **overrides})


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'"):
        ModelConfig.from_dict({"vocab_size": 33, "hiden_size": 16})


def test_vocab_size_comes_from_the_tokenizer() -> None:
    with pytest.raises(ConfigError, match="vocab_size is required"):
        ModelConfig.from_preset("tiny")


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'protein-t6-8M'.*presets: tiny"):
        ModelConfig.from_preset("protein-t6-8m", vocab_size=33)


def test_preset_overrides() -> None:
    config = ModelConfig.from_preset("tiny", vocab_size=9, position="learned", pad_id=1)
    assert (config.vocab_size, config.position, config.pad_id) == (9, "learned", 1)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_names_are_honest(name: str) -> None:
    """The size in a preset's name matches its parameter count (33-token vocab) within 15%."""
    config = ModelConfig.from_preset(name, vocab_size=33)
    with torch.device("meta"):
        count = MaskedLM(config).num_parameters()
    if name in ("tiny", "small"):  # named by size class, not by count
        assert count < {"tiny": 20_000, "small": 150_000}[name]
        return
    claimed = float(name.rsplit("-", 1)[1].rstrip("M")) * 1e6
    assert abs(count - claimed) / claimed < 0.15, count
    layers = int(name.split("-")[1][1:])
    assert config.num_layers == layers


# ------------------------------------------------------------------ the one config loader


@pytest.mark.parametrize(
    ("value", "hint", "ok"),
    [
        (0.5, float | list[float] | None, True),
        ([0.5, 1], float | list[float] | None, True),
        (None, float | list[float] | None, True),
        ("x", float | list[float] | None, False),
        ([True], list[float], False),
        (1, float, True),
        (True, int, False),
        ({"a": 1}, dict[str, int], True),
        ({"a": "1"}, dict[str, int], False),
        (2, str | int, True),
    ],
)
def test_values_are_checked_against_real_annotations(value, hint, ok) -> None:
    if ok:
        check_value("key", value, hint)
    else:
        with pytest.raises(ConfigError, match=r"key(\.a)? = .* expected"):
            check_value("key", value, hint)


def test_types_come_from_the_annotations_not_their_text() -> None:
    hints = field_types(FinetuneConfig)
    assert hints["pos_weight"] == float | str | None
    assert hints["training"] is TrainingConfig
    assert hints["read"] is ReadOptions


@pytest.mark.parametrize(
    ("cls", "text", "check"),
    [
        (
            RunConfig,
            "model: {preset: tiny}\ndata: {shard_dir: s, max_length: 64}\ntraining: {lr: 1e-3}\n",
            lambda c: c.training.lr == 1e-3 and c.data.shard_dir == "s",
        ),
        (
            FinetuneConfig,
            "train: t.csv\noutput_dir: o\nepochs: 2\ntraining: {lr: 1e-3}\n"
            "read: {label_column: y}\n",
            lambda c: c.training.lr == 1e-3 and c.epochs == 2 and c.read.label_column == "y",
        ),
        (
            QuickstartConfig,
            "seed: 2\nfinetune_epochs: 5e-1\nread: {label_from: 'key:class'}\n",
            lambda c: c.seed == 2 and c.finetune_epochs == 0.5 and c.read.label_from == "key:class",
        ),
    ],
)
def test_every_command_loads_from_yaml_with_yaml_float_strings(tmp_path, cls, text, check) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    config = load_config(cls, path)
    assert isinstance(config, cls) and check(config)
    assert load_config(cls, values=dataclasses.asdict(config)) == config  # a round trip


@pytest.mark.parametrize(
    ("cls", "values", "override", "says"),
    [
        (FinetuneConfig, {"train": "t", "output_dir": "o"}, "tasks=x", "did you mean 'task'"),
        (QuickstartConfig, {}, "read.label_colum=y", "did you mean 'label_column'"),
        (RunConfig, {"data": {"shard_dir": "s"}}, "data.max_token=9", "did you mean 'max_tokens'"),
        (FinetuneConfig, {"train": "t", "output_dir": "o"}, "model.vocab_size=9", "tokenizer"),
        (QuickstartConfig, {}, "model.vocab_size=9", "tokenizer"),
        (FinetuneConfig, {"train": "t", "output_dir": "o"}, "epochs.x=1", "not a section"),
        (QuickstartConfig, {}, "seed=-1", "seed = -1 must be an integer >= 0"),
        (FinetuneConfig, {"train": "t", "output_dir": "o"}, "pooling=sum", "pooling = 'sum'"),
    ],
)
def test_one_override_syntax_and_error_for_every_command(cls, values, override, says) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(cls, values=values, overrides=[override])
