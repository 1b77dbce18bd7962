"""ModelConfig: validation naming the field, JSON round trip, presets."""

from __future__ import annotations

import json

import pytest
import torch

from biotransformer.config import PRESETS, ModelConfig
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
    if name == "tiny":
        assert count < 20_000
        return
    claimed = float(name.rsplit("-", 1)[1].rstrip("M")) * 1e6
    assert abs(count - claimed) / claimed < 0.15, count
    layers = int(name.split("-")[1][1:])
    assert config.num_layers == layers
