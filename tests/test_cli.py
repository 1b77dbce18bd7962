"""The console script: help, version, and clean errors."""

from __future__ import annotations

import subprocess
import sys

import biotransformer
from biotransformer.cli import main


def test_help_lists_commands_and_exits_zero(capsys):
    try:
        main(["--help"])
    except SystemExit as stop:
        assert stop.code == 0
    out = capsys.readouterr().out
    assert "usage: biotransformer" in out
    assert "COMMAND" in out


def test_version_matches_package(capsys):
    try:
        main(["--version"])
    except SystemExit as stop:
        assert stop.code == 0
    assert capsys.readouterr().out.strip() == f"biotransformer {biotransformer.__version__}"


def test_console_script_runs_as_module():
    result = subprocess.run(
        [sys.executable, "-m", "biotransformer", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == f"biotransformer {biotransformer.__version__}"


def test_every_command_has_help(capsys):
    from biotransformer.cli import build_parser

    parser = build_parser()
    subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name, subparser in subparsers[0].choices.items() if subparsers else []:
        help_text = subparser.format_help()
        assert name in help_text
        for action in subparser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"flag {action.option_strings} of '{name}' has no help text"


def test_lazy_public_names_resolve():
    assert biotransformer.BioTransformerError.__name__ == "BioTransformerError"
    assert "InputError" in dir(biotransformer)
