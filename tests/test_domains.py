"""Every value is checked against its domain before work starts, and no command prints a
traceback: numeric flags, the command line's handling of system errors and bugs."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import save_legacy_model_directory, tiny_binary_classifier

from biotransformer.cli import build_parser, main
from biotransformer.cli import common as cli_common
from biotransformer.config import ModelConfig
from biotransformer.errors import ConfigError
from biotransformer.tokenizers import Tokenizer

# Values outside each flag type's domain (and one that is no number at all).
BAD_VALUES = {
    cli_common.positive_int: ["0", "-1", "1.5", "x"],
    cli_common.non_negative_int: ["-1", "1.5", "x"],
    cli_common.any_int: ["1.5", "x"],
    cli_common.positive_float: ["0", "-1", "nan", "inf", "x"],
    cli_common.non_negative_float: ["-1", "nan", "inf", "x"],
    cli_common.probability: ["-0.1", "1.5", "5", "nan", "inf", "x"],
    cli_common.fraction: ["-0.1", "1", "nan", "inf", "x"],
    cli_common.open_fraction: ["0", "1", "nan", "inf", "x"],
}
GOOD_VALUES = {
    cli_common.positive_int: ["1", "16384"],
    cli_common.non_negative_int: ["0", "7"],
    cli_common.any_int: ["-1", "0", "3"],
    cli_common.positive_float: ["1e-4", "3"],
    cli_common.non_negative_float: ["0", "2.5"],
    cli_common.probability: ["0", "0.5", "1"],
    cli_common.fraction: ["0", "0.99"],
    cli_common.open_fraction: ["0.01", "0.5"],
}


def command_parsers(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (command words, parser) reachable from ``parser``, subcommands included."""
    found = [(prefix, parser)] if prefix else []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                found.extend(command_parsers(subparser, (*prefix, name)))
    return found


def numeric_flags() -> list[tuple[tuple[str, ...], str, object]]:
    """(command, flag, type) of every flag whose value is a number, from the real parsers."""
    flags = []
    for command, parser in command_parsers(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.type in (*BAD_VALUES, int, float):
                flags.append((command, action.option_strings[0], action.type))
    return flags


NUMERIC_FLAGS = numeric_flags()


def test_every_numeric_flag_has_a_domain() -> None:
    unchecked = [
        f"{' '.join(command)} {flag}"
        for command, flag, kind in NUMERIC_FLAGS
        if kind in (int, float)
    ]
    assert not unchecked, f"numeric flags without a domain type from cli.common: {unchecked}"
    assert len(NUMERIC_FLAGS) >= 30
    assert set(BAD_VALUES) == set(cli_common.NUMERIC_TYPES)


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [
        pytest.param(command, flag, value, id=f"{'-'.join(command)}{flag}={value}")
        for command, flag, kind in NUMERIC_FLAGS
        for value in BAD_VALUES.get(kind, [])
    ],
)
def test_numeric_flag_refuses_values_outside_its_domain(
    command: tuple[str, ...], flag: str, value: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as stop:
        main([*command, f"{flag}={value}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err
    assert repr(value) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("kind", cli_common.NUMERIC_TYPES, ids=lambda kind: kind.__name__)
def test_numeric_types_accept_their_domain(kind) -> None:
    for value in GOOD_VALUES[kind]:
        assert kind(value) == (int(value) if "integer" in kind.__name__ else float(value))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained DNA binary classifier, in a directory written before config.json held
    the decision fields (with the task.json that finetune wrote then), so that both files'
    fields are checked."""
    model = tiny_binary_classifier()
    directory = tmp_path_factory.mktemp("domains") / "model"
    save_legacy_model_directory(model, directory)
    return directory


def write_fasta(path: Path, count: int) -> Path:
    path.write_text("".join(f">r{i}\n{'ACGT' * 10}\n" for i in range(count)))
    return path


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, nearly full file system: a 64 KiB tmpfs (needs root and mount; skipped
    otherwise), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tiny tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("command", ["predict", "embed", "prepare"])
def test_a_full_disk_is_one_line_naming_the_path(
    command: str, model_dir: Path, tmp_path: Path, full_disk: Path
) -> None:
    """Each command writes more than the disk holds (a TSV, an HDF5 file, HDF5 shards): exit
    1, one line naming where it wrote and the fix; in a child process, as HDF5 could crash it."""
    records = write_fasta(tmp_path / "in.fa", 3000)
    if command == "prepare":
        argv = ["prepare", str(records), "--tokenizer", "dna", "--quiet"]
        argv += ["--out", str(full_disk / "shards")]
    else:
        argv = [command, "--model", str(model_dir), "--input", str(records)]
        argv += ["--out", str(full_disk / ("e.h5" if command == "embed" else "p.tsv"))]
    result = subprocess.run(
        [sys.executable, "-m", "biotransformer", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=120,
    )
    err = result.stderr
    assert result.returncode == 1, err
    assert "Traceback" not in err
    assert "no space left on device" in err.lower()
    assert str(full_disk) in err
    assert "Fix: free space" in err
    assert len(err.strip().splitlines()) == 1
    assert not [p for p in full_disk.rglob("*") if p.is_file()]  # nothing half-written left


def test_a_file_size_limit_is_one_line_naming_the_path(model_dir: Path, tmp_path: Path) -> None:
    """The same path without root: RLIMIT_FSIZE makes a write fail with EFBIG."""
    records = write_fasta(tmp_path / "in.fa", 3000)
    out = tmp_path / "p.tsv"

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "biotransformer",
            "predict",
            "--model",
            str(model_dir),
            "--input",
            str(records),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "file too large" in result.stderr.lower()
    assert "ulimit -f" in result.stderr
    assert not out.exists()


def test_an_unexpected_exception_is_one_line_and_a_traceback_only_when_debugging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import biotransformer.cli.datasets as datasets_command

    def broken(args: argparse.Namespace) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(datasets_command, "_list", broken)
    monkeypatch.delenv("BIOTRANSFORMER_DEBUG", raising=False)
    assert main(["datasets", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "internal error: ZeroDivisionError: division by zero" in err
    assert "BIOTRANSFORMER_DEBUG=1" in err
    assert "Traceback" not in err

    monkeypatch.setenv("BIOTRANSFORMER_DEBUG", "1")
    assert main(["datasets", "list"]) == 1
    assert "Traceback" in capsys.readouterr().err


# ------------------------------------------------------------------------- config domains


@pytest.mark.parametrize("value", [".nan", ".inf", "0", "-1", "nan", "inf"])
def test_every_rate_must_be_finite_and_positive(value: str) -> None:
    from biotransformer.config import load_run_config

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "pretrain_dna_tiny.yaml"
    with pytest.raises(ConfigError, match=r"training\.lr = .* must be"):
        load_run_config(recipe, [f"training.lr={value}"])


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("data.mask_rate=.nan", "data.mask_rate"),
        ("data.max_tokens=0", "data.max_tokens"),
        ("data.seed=-1", "data.seed"),
        ("training.seed=-3", "training.seed"),
        ("training.eps=0", "training.eps"),
        ("training.max_grad_norm=.inf", "training.max_grad_norm"),
        ("training.betas=[0.9, .nan]", "training.betas"),
        ("training.weight_decay=yes", "training.weight_decay"),
        ("training.mixed_precision=fp8", "training.mixed_precision"),
        ("model.dropout=.nan", "model.dropout"),
    ],
)
def test_run_config_values_outside_their_domain_are_named(override: str, named: str) -> None:
    from biotransformer.config import load_run_config

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "pretrain_dna_tiny.yaml"
    with pytest.raises(ConfigError) as error:
        load_run_config(recipe, [override])
    assert named in str(error.value)


@pytest.mark.parametrize(
    "override", ["training.lr=[1,", "training.lr={", "training.lr='x", "x=", "training.lr"]
)
def test_a_malformed_override_is_one_line_naming_it(
    override: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    status = main(["pretrain", "pretrain_dna_tiny", override, "--output-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" not in err
    assert repr(override) in err
    assert "=" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_malformed_finetune_override_names_it(tmp_path: Path) -> None:
    from biotransformer.config import FinetuneConfig, apply_overrides

    config = FinetuneConfig(train="t.csv", output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"override 'training.lr=\[1,'.*not valid YAML"):
        apply_overrides(config, ["training.lr=[1,"])


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_length": 0}, "max_length"),
        ({"bootstrap": -5}, "bootstrap"),
        ({"epochs": float("nan")}, "epochs"),
        ({"epochs": float("inf")}, "epochs"),
        ({"pos_weight": -1.0}, "pos_weight"),
        ({"rc_augment": float("nan")}, "rc_augment"),
        ({"max_steps": 0}, "max_steps"),
        ({"evals_per_epoch": 1.5}, "evals_per_epoch"),
        ({"tune_threshold": "yes"}, "tune_threshold"),
    ],
)
def test_finetune_config_values_outside_their_domain_are_named(
    changes: dict, named: str, tmp_path: Path
) -> None:
    from biotransformer.config import FinetuneConfig

    config = FinetuneConfig(train="t.csv", output_dir=str(tmp_path), **changes)
    with pytest.raises(ConfigError, match=named):
        config.validate()


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_finetune_rate_override_must_be_finite_and_positive(value: str, tmp_path: Path) -> None:
    from biotransformer.config import FinetuneConfig, apply_overrides

    config = FinetuneConfig(train="t.csv", output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"training\.lr"):
        apply_overrides(config, [f"training.lr={value}"])


def test_quickstart_config_checks_types_and_seed(tmp_path: Path) -> None:
    from biotransformer.config import QuickstartConfig

    with pytest.raises(ConfigError, match="seed"):
        QuickstartConfig(output_dir=str(tmp_path), seed=-1).validate()
    with pytest.raises(ConfigError, match="finetune_epochs"):
        QuickstartConfig(output_dir=str(tmp_path), finetune_epochs=float("nan")).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on this machine's GPU")
def test_fp16_on_a_cpu_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    status = main(
        ["pretrain", "pretrain_dna_tiny", "training.mixed_precision=fp16", "--output-dir", str(out)]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert "training.mixed_precision = 'fp16' needs a GPU" in err
    assert "bf16" in err
    assert not (out / "model").exists()
    assert not (out / "log.jsonl").exists()


# ------------------------------------------------------------------ model directory files


@pytest.fixture
def model_copy(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny classifier, to damage."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def predict_with(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run ``predict`` with ``model`` on a small FASTA; (exit status, stderr)."""
    records = write_fasta(tmp_path / "in.fa", 4)
    status = main(
        [
            "predict",
            "--model",
            str(model),
            "--input",
            str(records),
            "--out",
            str(tmp_path / "p.tsv"),
            "--overwrite",  # a test may predict twice into one file
        ]
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def edit_json(path: Path, change) -> None:
    document = json.loads(path.read_text())
    path.write_text(json.dumps(change(document)))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("5", "a JSON int, not an object"),
        ("null", "a JSON NoneType, not an object"),
        ('["model"]', "a JSON list, not an object"),
        ("{", "not valid JSON"),
    ],
)
def test_a_config_json_that_is_not_an_object_is_named(
    text: str, says: str, model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (model_copy / "config.json").write_text(text)
    status, err = predict_with(model_copy, tmp_path, capsys)
    assert status == 2
    assert f"{model_copy / 'config.json'}: {says}" in err
    assert "Fix:" in err and "save_pretrained" not in err


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("format_version", "1", "format_version = '1' must be a whole number"),
        ("format_version", 1.5, "format_version = 1.5 must be a whole number"),
        ("format_version", True, "format_version = True must be a whole number"),
        ("format_version", 99, "format_version 99 is newer"),
        ("model_type", 3, "field 'model_type'"),
        ("model", "tiny", "field 'model'"),
        ("head", [1], "field 'head'"),
        ("tokenizer", {"spec": "dna"}, "field 'tokenizer' must hold"),
    ],
)
def test_config_json_fields_are_typed(
    field: str,
    value: object,
    says: str,
    model_copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    edit_json(model_copy / "config.json", lambda document: {**document, field: value})
    status, err = predict_with(model_copy, tmp_path, capsys)
    assert status == 2
    assert "config.json" in err and says in err


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("model", "hidden_size", "16"),
        ("model", "dropout", None),
        ("head", "num_labels", "2"),
        ("head", "label2id", ["0", "1"]),
        ("head", "pooling", 1),
    ],
)
def test_config_json_model_and_head_values_are_typed(
    section: str,
    key: str,
    value: object,
    model_copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    def change(document: dict) -> dict:
        document[section][key] = value
        return document

    edit_json(model_copy / "config.json", change)
    status, err = predict_with(model_copy, tmp_path, capsys)
    assert status == 2
    assert "config.json" in err and key in err
    assert "re-save the model with biotransformer" in err


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("threshold", "high", "head.threshold = 'high' has type str, expected float"),
        ("threshold", 5, "threshold = 5 must be a number in [0, 1]"),
        ("threshold", float("nan"), "head.threshold = nan must be a finite number"),
        ("threshold", [0.5, 0.5], "threshold = [0.5, 0.5] must be a number"),
        ("threshold", True, "head.threshold = True has type bool, expected float"),
        ("rc_average", "yes", "head.rc_average = 'yes' has type str, expected bool"),
        ("rc_average", 1, "head.rc_average = 1 has type int, expected bool"),
    ],
)
def test_config_json_head_decision_fields_are_checked(
    key: str,
    value: object,
    says: str,
    model_copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    def change(document: dict) -> dict:
        document["head"][key] = value
        return document

    (model_copy / "task.json").unlink()  # a directory written today holds no task.json
    edit_json(model_copy / "config.json", change)
    status, err = predict_with(model_copy, tmp_path, capsys)
    assert status == 2
    assert f"{model_copy / 'config.json'}: {says}" in err
    assert "re-save the model with biotransformer" in err


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("threshold", "high", "threshold = 'high' must be a number in [0, 1]"),
        ("threshold", 5, "threshold = 5 must be a number in [0, 1]"),
        ("threshold", float("nan"), "threshold = nan must be a number in [0, 1]"),
        ("threshold", [0.5, 0.5], "threshold = [0.5, 0.5] must be a number"),
        ("threshold", True, "threshold = True must be a number"),
        ("rc_average", "yes", "rc_average = 'yes' must be true or false"),
        ("rc_average", 1, "rc_average = 1 must be true or false"),
        ("labels", ["a", "b"], "labels = ['a', 'b'], but the model's are ['0', '1']"),
        ("labels", "01", "labels = '01' must be a list"),
        ("task", "regression", "task = 'regression', but the model is a classification model"),
        ("task", "spam", "task = 'spam' is not one of"),
    ],
)
def test_task_json_fields_are_typed_and_agree_with_the_model(
    field: str,
    value: object,
    says: str,
    model_copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    edit_json(model_copy / "task.json", lambda document: {**document, field: value})
    status, err = predict_with(model_copy, tmp_path, capsys)
    assert status == 2
    assert f"{model_copy / 'task.json'}: {says}" in err
    assert "Fix: put back the task.json" in err


def test_a_valid_task_json_threshold_decides(
    model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    edit_json(model_copy / "task.json", lambda document: {**document, "threshold": 0.0})
    status, _ = predict_with(model_copy, tmp_path, capsys)
    assert status == 0
    rows = (tmp_path / "p.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[1] for row in rows] == ["1"] * 4  # P >= 0 always


def test_a_tokenizer_with_other_options_is_refused(
    model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Same vocabulary size, other options: it would change the ids, so it is refused."""
    other = Tokenizer.from_spec("dna:cls=false")
    assert other.vocab_size == Tokenizer.from_spec("dna").vocab_size
    other.save(model_copy)
    status, err = predict_with(model_copy, tmp_path, capsys)
    assert status == 2
    assert f"{model_copy / 'tokenizer.json'}: not the tokenizer this model was saved with" in err
    assert "its spec differs" in err
    assert "Fix: put back the tokenizer.json saved with this model" in err


def test_a_directory_saved_before_the_tokenizer_record_still_loads(
    model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    edit_json(
        model_copy / "config.json",
        lambda document: {k: v for k, v in document.items() if k != "tokenizer"},
    )
    assert predict_with(model_copy, tmp_path, capsys)[0] == 0
    # what can still be checked without the record: the vocabulary size and special ids
    Tokenizer.from_spec("dna-kmer:k=2").save(model_copy)
    status, err = predict_with(model_copy, tmp_path, capsys)
    assert status == 2
    assert "tokens, but config.json says vocab_size" in err


# ------------------------------------------------------------------ imported checkpoints


def fair_esm_file(path: Path, **changes: object) -> Path:
    """A small ESM-2 checkpoint laid out as fair-esm saves one (built from our own MaskedLM
    through the key mapping), with ``changes`` applied to the top-level dict."""
    import argparse as argparse_module

    from biotransformer.heads import MaskedLM
    from biotransformer.interop import fair_esm_names
    from biotransformer.tokenizers import ESM2_TOKENS

    config = ModelConfig(
        vocab_size=len(ESM2_TOKENS),
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        ffn_size=64,
        pad_id=1,
        mask_id=32,
    )
    model = MaskedLM(config)
    ours = model.state_dict()
    state = {}
    for key, theirs in fair_esm_names(model).items():
        for name, part in zip(theirs, torch.chunk(ours[key], len(theirs)), strict=True):
            state[f"encoder.sentence_encoder.{name}"] = part.clone()
    cfg = argparse_module.Namespace(
        encoder_layers=1, encoder_embed_dim=16, encoder_attention_heads=2, token_dropout=False
    )
    torch.save({"model": state, "cfg": {"model": cfg}, **changes}, path)
    return path


def convert(source: str, path: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    status = main(["convert", "--from", source, str(path), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.err


def test_a_well_formed_fair_esm_file_converts(tmp_path: Path, capsys: pytest.CaptureFixture):
    status, err = convert("fair-esm", fair_esm_file(tmp_path / "esm2.pt"), tmp_path, capsys)
    assert status == 0, err
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("truncate", "not a readable PyTorch checkpoint"),
        ("not-a-zip", "refused by torch.load(weights_only=True)"),
        ("empty", "not a readable PyTorch checkpoint"),
        ("no-cfg", "not a fair-esm ESM-2 checkpoint"),
        ("cfg-list", "not a fair-esm ESM-2 checkpoint"),
        ("no-layers-key", "not a fair-esm ESM-2 checkpoint"),
        ("model-not-tensors", "not a fair-esm ESM-2 checkpoint"),
        ("missing-weight", "the checkpoint lacks"),
        ("a-list", "not a fair-esm ESM-2 checkpoint"),
        ("directory", "not found or not a file"),
    ],
)
def test_a_malformed_fair_esm_file_is_one_line_naming_it(
    damage: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import argparse as argparse_module

    path = tmp_path / "esm2.pt"
    if damage in ("truncate", "not-a-zip", "empty"):
        data = fair_esm_file(path).read_bytes()
        path.write_bytes(
            {"truncate": data[: len(data) // 2], "not-a-zip": b"\x80\x02}q" * 50, "empty": b""}[
                damage
            ]
        )
    elif damage == "no-cfg":
        fair_esm_file(path)
        torch.save({"model": {}}, path)
    elif damage == "cfg-list":
        fair_esm_file(path, cfg=[1, 2])
    elif damage == "no-layers-key":
        fair_esm_file(path, cfg={"model": argparse_module.Namespace(encoder_embed_dim=16)})
    elif damage == "model-not-tensors":
        fair_esm_file(path, model={"x": 1})
    elif damage == "missing-weight":
        data = torch.load(fair_esm_file(path), weights_only=False)
        data["model"].pop(next(iter(data["model"])))
        torch.save(data, path)
    elif damage == "a-list":
        torch.save([1, 2, 3], path)
    else:
        path.mkdir()
    status, err = convert("fair-esm", path, tmp_path, capsys)
    assert status == 2
    assert f"{path}: " in err and says in err
    assert "Fix: pass an ESM-2 checkpoint file" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("no-config", "config.json: not found"),
        ("config-not-json", "config.json: cannot be read by transformers"),
        ("bert", "model_type 'bert' is not one of ['esm', 'esmc']"),
        ("unknown-model-type", "config.json: cannot be read by transformers"),
        ("no-weights", "its weights cannot be loaded"),
        ("truncated-weights", "its weights cannot be loaded"),
        ("a-file", "not a directory"),
    ],
)
def test_a_malformed_hf_directory_is_one_line_naming_it(
    damage: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    transformers = pytest.importorskip("transformers")
    directory = tmp_path / "hf"
    config = transformers.EsmConfig(
        vocab_size=33,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
        pad_token_id=1,
        mask_token_id=32,
    )
    transformers.EsmForMaskedLM(config).save_pretrained(directory)
    weights = directory / "model.safetensors"
    if damage == "no-config":
        (directory / "config.json").unlink()
    elif damage == "config-not-json":
        (directory / "config.json").write_text("{")
    elif damage == "bert":
        transformers.BertConfig(hidden_size=16, num_attention_heads=2).save_pretrained(directory)
    elif damage == "unknown-model-type":
        edit_json(directory / "config.json", lambda document: {**document, "model_type": "zzz"})
    elif damage == "no-weights":
        weights.unlink()
    elif damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        shutil.rmtree(directory)
        directory.write_text("x")
    capsys.readouterr()  # transformers' own progress output while saving the fixture
    status, err = convert("hf", directory, tmp_path, capsys)
    assert status == 2
    assert str(directory) in err and says in err
    assert "Fix: pass a local HuggingFace ESM or ESM C directory" in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------ messages for the command line


def test_a_config_json_threshold_decides(
    model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (model_copy / "task.json").unlink()

    def change(document: dict) -> dict:
        document["head"]["threshold"] = 0.0
        return document

    edit_json(model_copy / "config.json", change)
    status, _ = predict_with(model_copy, tmp_path, capsys)
    assert status == 0
    rows = (tmp_path / "p.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[1] for row in rows] == ["1"] * 4  # P >= 0 always


@pytest.fixture(scope="module")
def protein_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained protein binary classifier."""
    model = tiny_binary_classifier("protein")
    directory = tmp_path_factory.mktemp("domains-protein") / "model"
    model.save_pretrained(directory)
    return directory


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    status = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


@pytest.mark.parametrize("command", ["predict", "embed", "saliency"])
def test_a_letter_the_tokenizer_refuses_names_the_file_and_the_record(
    command: str, protein_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    records = tmp_path / "p.fa"
    records.write_text(">ok\nMKVL\n>bad\nMKVJL\n")
    out = tmp_path / ("o.h5" if command == "embed" else "o")
    argv = [command, "--model", str(protein_model_dir), "--input", str(records)]
    status, err = run_cli([*argv, "--out", str(out)], capsys)
    assert status == 2
    assert f"{records}, line 3, record 'bad', position 4: character 'J' is not an amino acid" in err
    assert "of the batch" not in err


def test_protein_input_to_a_dna_model_says_use_a_protein_model(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    records = tmp_path / "p.fa"
    records.write_text(">p\nMKVLAAGIVGLLLAQW\n")
    argv = ["predict", "--model", str(model_dir), "--input", str(records)]
    status, err = run_cli([*argv, "--out", str(tmp_path / "o.tsv")], capsys)
    assert status == 2
    assert "this looks like protein, not DNA" in err
    assert "Fix: use a protein model" in err
    assert "alphabet=" not in err


def test_duplicate_ids_name_the_flag_that_accepts_them(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    records = tmp_path / "d.fa"
    records.write_text(">a\nACGTACGT\n>a\nACGTAAAA\n")
    argv = ["predict", "--model", str(model_dir), "--input", str(records)]
    argv += ["--out", str(tmp_path / "o.tsv")]
    status, err = run_cli(argv, capsys)
    assert status == 2
    assert "duplicate id" in err and "--duplicate-ids warn" in err
    with pytest.warns(UserWarning, match="duplicate id"):
        status = main([*argv, "--duplicate-ids", "warn"])
    assert status == 0
    assert len((tmp_path / "o.tsv").read_text().splitlines()) == 3


def test_reading_options_are_named_as_flags(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    table = tmp_path / "t.csv"
    table.write_text("sequence,label\nACGTACGT,1\nACGTAAAA,0\n")
    base = ["evaluate", "--model", str(model_dir), "--data", str(table), "--bootstrap", "0"]
    status, err = run_cli([*base, "--label-column", "y"], capsys)
    assert status == 2
    assert "no column 'y'" in err and "give --label-column (label_column= in Python)" in err
    status, err = run_cli([*base, "--label-from", "key:class"], capsys)
    assert status == 2
    assert "--label-from (label_from= in Python) reads FASTA/FASTQ headers" in err
    assert "use --label-column" in err


def test_a_model_directory_message_names_no_python_method(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    records = write_fasta(tmp_path / "in.fa", 2)
    empty = tmp_path / "empty"  # --out may not lie inside --model
    empty.mkdir()
    argv = ["predict", "--model", str(empty), "--input", str(records)]
    status, err = run_cli([*argv, "--out", str(tmp_path / "o.tsv")], capsys)
    assert status == 2
    assert "config.json: not found" in err
    assert "written by biotransformer (finetune, pretrain or convert)" in err
    assert "save_pretrained" not in err


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("model.hidden_size=abc", "model.hidden_size = 'abc' has type str, expected int"),
        ("model.dropout=.nan", "model.dropout = nan must be a finite number"),
        ("model.hiden_size=3", "unknown key model.hiden_size (did you mean 'hidden_size'?)"),
    ],
)
def test_finetune_model_overrides_are_checked_before_any_work(
    override: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    table = tmp_path / "t.csv"
    table.write_text("sequence,label\nACGTACGTAA,1\nACGTTTTTAA,0\n")
    out = tmp_path / "run"
    status, err = run_cli(["finetune", "--train", str(table), "--out", str(out), override], capsys)
    assert status == 2
    assert says in err
    assert not out.exists()


def test_a_run_config_that_is_not_text_is_named(tmp_path: Path) -> None:
    from biotransformer.config import load_run_config

    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not UTF-8 text"):
        load_run_config(path)
