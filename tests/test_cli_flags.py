"""Flags are aliases of config keys: one default, one list of choices, the same config."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import yaml

from biotransformer.cli import build_parser, main
from biotransformer.cli import finetune as finetune_cli
from biotransformer.cli import pretrain as pretrain_cli
from biotransformer.cli import quickstart as quickstart_cli
from biotransformer.cli.flags import config_from_args, flag_dest
from biotransformer.config import (
    FinetuneConfig,
    QuickstartConfig,
    ReadOptions,
    RunConfig,
    field_at,
)
from biotransformer.errors import ConfigError

COMMANDS = {
    "finetune": (FinetuneConfig, finetune_cli.FLAGS),
    "quickstart": (QuickstartConfig, quickstart_cli.FLAGS),
    "pretrain": (RunConfig, pretrain_cli.FLAGS),
}
REQUIRED = ["--train", "t.csv", "--out", "o"]  # finetune's two keys without a default


def command_parser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def finetune_config(*argv: str) -> FinetuneConfig:
    return finetune_cli.build_config(build_parser().parse_args(["finetune", *argv]))


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_default_is_the_dataclass_default(command: str) -> None:
    """A default is stated once: each aliased flag's default is its key's dataclass default
    (finetune's --lr: None, chosen by the start (finetune_defaults), from FinetuneConfig's
    training section, not TrainingConfig's)."""
    cls, flags = COMMANDS[command]
    actions = {a.option_strings[0]: a for a in command_parser(command)._actions if a.option_strings}
    for flag, key in flags.items():
        _, _, default = field_at(cls, key)
        expected = None if default is dataclasses.MISSING else default
        assert actions[flag].default == expected, (command, flag, key)
    if command == "finetune":
        assert actions["--lr"].default is None
    else:
        assert actions[flag].default is not None


@pytest.mark.parametrize("command", list(COMMANDS))
def test_flag_choices_are_the_fields_choices(command: str) -> None:
    cls, flags = COMMANDS[command]
    actions = {a.option_strings[0]: a for a in command_parser(command)._actions if a.option_strings}
    for flag, key in flags.items():
        item, _, _ = field_at(cls, key)
        if item.metadata.get("choices") and not item.metadata.get("domain"):
            assert tuple(actions[flag].choices) == tuple(item.metadata["choices"]), flag


def test_finetune_help_states_the_automatic_defaults() -> None:
    text = " ".join(command_parser("finetune").format_help().split())
    assert "0.002 for a new encoder, 0.0003 warm started" in text
    assert "--epochs EPOCHS passes over train (default: 10 for a new encoder, 3 warm" in text
    assert "--patience PATIENCE stop after this many validation evaluations" in text


# One non-default value per flag, as typed on the command line and as a key=value override.
FLAG_VALUES = {
    "--valid": "v.csv",
    "--test": "x.csv",
    "--task": "regression",
    "--resume": "latest",
    "--model": "m",
    "--preset": "tiny",
    "--tokenizer": "dna-kmer:k=3",
    "--pooling": "cls",
    "--classifier": "esm",
    "--lora": "r=4",
    "--epochs": "2.5",
    "--max-steps": "40",
    "--patience": "3",
    "--lr": "1e-3",
    "--max-tokens": "100",
    "--max-length": "50",
    "--seed": "7",
    "--class-weights": "balanced",
    "--pos-weight": "2",
    "--rc-augment": "0.5",
    "--valid-fraction": "0.2",
    "--test-fraction": "0.3",
    "--group-column": "cluster",
    "--bootstrap": "10",
    "--sequence-column": "seq",
    "--label-column": "y",
    "--id-column": "name",
    "--label-from": "key:class",
    "--labels-file": "labels.csv",
    "--duplicate-ids": "warn",
}


@pytest.mark.parametrize("flag", [f for f in finetune_cli.FLAGS if f not in ("--train", "--out")])
def test_a_finetune_flag_and_its_key_give_the_same_config(flag: str) -> None:
    key = finetune_cli.FLAGS[flag]
    value = FLAG_VALUES.get(flag)  # None: a switch
    assert value is not None or field_at(FinetuneConfig, key)[1] is bool
    by_flag = [flag] if value is None else [flag, value]
    by_key = [f"{key}={'true' if value is None else value}"]
    try:
        assert finetune_config(*REQUIRED, *by_flag) == finetune_config(*REQUIRED, *by_key)
    except ConfigError as error:  # a value that needs another setting: the same refusal
        with pytest.raises(ConfigError) as again:
            finetune_config(*REQUIRED, *by_key)
        assert str(again.value) == str(error)


def test_a_quickstart_flag_and_its_key_give_the_same_config() -> None:
    parser = build_parser()
    argv = ["--seed", "3", "--finetune-epochs", "0.5", "--label-column", "y", "--overwrite"]
    overrides = ["seed=3", "finetune_epochs=0.5", "read.label_column=y", "overwrite=true"]
    flags, keys = (parser.parse_args(["quickstart", *words]) for words in (argv, overrides))
    by_flags = config_from_args(QuickstartConfig, flags, quickstart_cli.FLAGS)
    by_keys = config_from_args(
        QuickstartConfig, keys, quickstart_cli.FLAGS, overrides=keys.overrides
    )
    assert by_flags == by_keys
    assert (by_flags.seed, by_flags.finetune_epochs, by_flags.read.label_column) == (3, 0.5, "y")


def test_precedence_default_yaml_flag_override(tmp_path) -> None:
    """dataclass default < the YAML file < a flag given < a key=value override."""
    path = tmp_path / "finetune.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "train": "a.csv",
                "output_dir": "runs/a",
                "epochs": 5,
                "bootstrap": 10,
                "training": {"lr": "1e-3", "weight_decay": 0.0},
                "read": {"label_column": "y"},
            }
        )
    )
    config = finetune_config("--config", str(path), "--epochs", "2", "bootstrap=20")
    assert (config.train, config.output_dir) == ("a.csv", "runs/a")
    assert config.epochs == 2.0  # the flag over the YAML
    assert config.bootstrap == 20  # the override over the YAML
    assert config.training.lr == 1e-3 and isinstance(config.training.lr, float)
    assert config.training.weight_decay == 0.0
    assert config.training.schedule == "linear"  # fine-tuning's default section, kept
    assert config.read == ReadOptions(label_column="y")
    assert finetune_config("--config", str(path), "--epochs", "2", "epochs=4").epochs == 4.0
    # a flag left at its default does not undo the YAML
    assert finetune_config("--config", str(path)).epochs == 5.0


def test_quickstart_from_a_yaml_file(tmp_path) -> None:
    path = tmp_path / "quickstart.yaml"
    path.write_text(
        "seed: 4\npretrain_steps: 5\nmodel:\n  num_layers: 1\nread:\n  label_column: y\n"
    )
    args = build_parser().parse_args(["quickstart", "--config", str(path), "--seed", "2"])
    config = config_from_args(
        QuickstartConfig, args, quickstart_cli.FLAGS, path=args.config, overrides=args.overrides
    )
    assert (config.seed, config.pretrain_steps, config.read.label_column) == (2, 5, "y")
    assert config.model == {**QuickstartConfig().model, "num_layers": 1}  # merged key by key


def test_a_missing_required_key_names_its_flag(capsys) -> None:
    assert main(["finetune", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "--train is required" in err and "train: in the config file" in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["finetune", *REQUIRED, "bootstrp=5"], "unknown key bootstrp (did you mean 'bootstrap'?)"),
        (["quickstart", "bootstrp=5"], "unknown key bootstrp (did you mean 'bootstrap'?)"),
        (["pretrain", "pretrain_dna_tiny", "training.lrr=1"], "(did you mean 'lr'?)"),
        (["finetune", *REQUIRED, "training.lr=[1,"], "the value '[1,' is not valid YAML"),
        (["quickstart", "seed=[1,"], "the value '[1,' is not valid YAML"),
        (["pretrain", "pretrain_dna_tiny", "training.lr=[1,"], "the value '[1,' is not valid YAML"),
        (["finetune", *REQUIRED, "lr=1e-3"], "(did you mean 'training.lr'?)"),
        (["pretrain", "pretrain_dna_tiny", "lr=1e-3"], "(did you mean 'training.lr'?)"),
        (["quickstart", "seed"], "is not of the form key=value"),
        (["finetune", *REQUIRED, "seed"], "is not of the form key=value"),
    ],
)
def test_every_command_takes_the_same_override_syntax_and_errors(argv, says, capsys, tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)  # nothing may be written
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert f"override {argv[-1]!r}" in err
    assert not any(tmp_path.iterdir())


def test_flag_dest_is_argparse_dest() -> None:
    actions = command_parser("finetune")._actions
    dests = {a.option_strings[0]: a.dest for a in actions if a.option_strings}
    assert all(dests[flag] == flag_dest(flag) for flag in finetune_cli.FLAGS)


def test_the_documented_finetune_yaml_loads(tmp_path) -> None:
    from conftest import REPO_ROOT

    text = (REPO_ROOT / "docs" / "finetuning.md").read_text()
    path = tmp_path / "finetune.yaml"
    path.write_text(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    config = finetune_config("--config", str(path), "--epochs", "5")
    assert (config.train, config.output_dir, config.epochs) == ("train.csv", "runs/x", 5.0)
    assert config.training.lr == 3e-4 and config.read.label_column == "label"
