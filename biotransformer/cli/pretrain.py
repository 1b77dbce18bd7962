"""``biotransformer pretrain CONFIG [section.key=value ...]``: masked-LM pretraining.

Runs as it is on one process, and unchanged under ``accelerate launch`` or ``torchrun``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from biotransformer.cli.flags import add_config_flags, config_from_args
from biotransformer.config import RunConfig
from biotransformer.errors import ConfigError
from biotransformer.outputs import add_overwrite_option

# Each flag of ``pretrain`` and the RunConfig key it sets.
FLAGS = {"--output-dir": "training.output_dir"}
RECIPE_DIRS = (
    Path.cwd() / "recipes" / "configs",
    Path(__file__).resolve().parents[2] / "recipes" / "configs",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pretrain`` command."""
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain an encoder by masked-token prediction from a YAML config",
        description=(
            "Masked-LM pretraining from a YAML run config (model, data, training sections). "
            "Works the same on one CPU and under 'accelerate launch' or 'torchrun'. Writes "
            "config.yaml, run.json, log.jsonl, checkpoints/ and model/ into "
            "training.output_dir."
        ),
        epilog=(
            "example: biotransformer pretrain pretrain_dna_tiny training.max_steps=200 "
            "training.lr=1e-3"
        ),
    )
    parser.add_argument(
        "config",
        metavar="CONFIG",
        help="a YAML run config, or the name of a recipe in recipes/configs (pretrain_dna_tiny)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. training.lr=3e-4 data.max_tokens=8192 "
        "(values are parsed as YAML)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="PATH|latest",
        help="continue from a checkpoint folder, or from the newest one in the run's "
        "checkpoints/ ('latest', the default when the flag has no value)",
    )
    add_config_flags(parser, RunConfig, FLAGS)
    add_overwrite_option(parser, "training.output_dir")
    parser.set_defaults(handler=run)


def resolve_config_path(name: str) -> Path:
    """A config file path as given, else ``recipes/configs/NAME.yaml``."""
    path = Path(name)
    if path.is_file():
        return path
    for directory in RECIPE_DIRS:
        candidate = directory / f"{path.stem if path.suffix else name}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in RECIPE_DIRS if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(
        f"config {name!r}: no such file, and no recipe of that name"
        + (f" (recipes: {', '.join(known)})" if known else "")
    )


def run(args: argparse.Namespace) -> int:
    """Load the config, apply overrides, pretrain; 130 when stopped by a signal."""
    from biotransformer.api import run_pretrain

    path = resolve_config_path(args.config)
    config = config_from_args(RunConfig, args, FLAGS, path=path, overrides=args.overrides)
    result = run_pretrain(config, resume=args.resume, overwrite=args.overwrite)
    if result.outcome == "interrupted":
        return 130
    print(f"pretraining finished at step {result.step}; model saved to {result.model_dir}")
    return 0
