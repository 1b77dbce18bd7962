"""Run configs: YAML sections map 1:1 onto dataclasses, overrides, and errors that help."""

from __future__ import annotations

import pytest
import yaml

from biotransformer.config import (
    DataConfig,
    RunConfig,
    TrainingConfig,
    load_run_config,
    run_config_from_dict,
)
from biotransformer.errors import ConfigError

MINIMAL = {"model": {"preset": "tiny"}, "data": {"shard_dir": "shards", "max_length": 64}}


def write(tmp_path, values) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_sections_map_onto_dataclasses(tmp_path):
    config = load_run_config(write(tmp_path, MINIMAL))
    assert isinstance(config, RunConfig)
    assert isinstance(config.data, DataConfig)
    assert isinstance(config.training, TrainingConfig)
    assert config.data.shard_dir == "shards"
    assert config.training == TrainingConfig()


def test_overrides_parse_values_as_yaml(tmp_path):
    config = load_run_config(
        write(tmp_path, MINIMAL),
        [
            "training.lr=3e-4",
            "training.max_steps=20",
            "training.max_grad_norm=null",
            "training.betas=[0.9, 0.95]",
            "model.num_layers=3",
            "data.span_length=5",
        ],
    )
    assert config.training.lr == pytest.approx(3e-4)
    assert isinstance(config.training.lr, float)
    assert config.training.max_steps == 20
    assert config.training.max_grad_norm is None
    assert config.training.betas == [0.9, 0.95]
    assert config.model == {"preset": "tiny", "num_layers": 3}
    assert config.data.span_length == 5


def test_model_section_takes_vocab_size_and_pad_from_the_tokenizer():
    config = run_config_from_dict({**MINIMAL, "model": {"preset": "tiny", "hidden_size": 32}})
    model = config.model_config(vocab_size=9, pad_id=0)
    assert (model.vocab_size, model.pad_id, model.hidden_size, model.num_layers) == (9, 0, 32, 2)
    with pytest.raises(ConfigError, match="comes from the tokenizer"):
        run_config_from_dict({**MINIMAL, "model": {"preset": "tiny", "vocab_size": 9}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**MINIMAL, "trainig": {}}, "did you mean 'training'"),
        ({**MINIMAL, "training": {"warmup_step": 5}}, r"training\.warmup_step.*'warmup_steps'"),
        ({**MINIMAL, "model": {"num_layer": 2}}, r"model\.num_layer.*'num_layers'"),
        ({**MINIMAL, "data": {"shard_dir": "x", "max_token": 9}}, "'max_tokens'"),
        ({**MINIMAL, "training": {"learning_rate": 1.0}}, "valid keys: output_dir, lr"),
    ],
)
def test_unknown_keys_suggest_the_closest_valid_key(values, message):
    with pytest.raises(ConfigError, match=message):
        run_config_from_dict(values)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.lr=-1", r"training\.lr = -1"),
        ("training.lr=fast", r"training\.lr = 'fast' has type str"),
        ("training.schedule=step", r"training\.schedule = 'step' is not one of"),
        ("training.mixed_precision=fp8", "mixed_precision"),
        ("data.max_length=100", "exceeds the model's max_length = 64"),
        ("model.position=absolute", "position"),
        ("training.max_steps", "section.key=value"),
        ("lr=1e-3", r"unknown key lr \(did you mean 'training\.lr'\?\)"),
    ],
)
def test_bad_values_name_the_field(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(write(tmp_path, MINIMAL), [override])


def test_data_source_must_be_given_once():
    with pytest.raises(ConfigError, match=r"train_files or data\.shard_dir"):
        run_config_from_dict({"model": {"preset": "tiny"}})
    with pytest.raises(ConfigError, match="only one of"):
        run_config_from_dict({"data": {"shard_dir": "x", "train_files": ["a.fa"]}})


def test_to_dict_round_trips_through_yaml(tmp_path):
    config = load_run_config(write(tmp_path, MINIMAL), ["training.lr=1e-3"])
    again = run_config_from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again == config


def test_missing_and_broken_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_run_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(broken)
