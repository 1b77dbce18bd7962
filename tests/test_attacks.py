"""The attack corpus: hostile inputs through every command, as a hostile user would give them.

Each ``Case`` is one command line run in-process through ``biotransformer.cli.main`` inside a
fresh copy of a small workspace (models, inputs, prepared shards; finished runs for the slow
cases), with that workspace as the working directory. A refused case must exit non-zero, print
no traceback and no "internal error", name the file or flag in ``names`` on stderr, and change
nothing in the workspace outside its declared ``outputs`` (a snapshot of every path: type,
size, mtime, sha256, permissions, link target, before and after). Destroying cases declare no
output at all: their inputs, links and foreign files must come out untouched. An ``accepted``
case must exit 0 and pass its own ``check``.

The corpus is data (``CASES``, built by one small function per kind); docs/command-bad-inputs.md
lists it by kind with counts, and ``test_docs_table_counts_match_the_corpus`` keeps the two
equal. Two attacks need real processes and are separate tests: a planted pickle in a
checkpoint folder, and two runs started into one directory at the same moment.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import resource
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import reset_accelerate_state, save_legacy_model_directory

from biotransformer.checkpointing import latest_checkpoint
from biotransformer.cli import COMMAND_MODULES, main
from biotransformer.config import ModelConfig
from biotransformer.heads import MaskedLM, SequenceClassifier
from biotransformer.tokenizers import Tokenizer

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "command-bad-inputs.md"
SUBPROCESS_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}
KINDS = (
    "destroy",
    "domain",
    "model-files",
    "import",
    "override",
    "data",
    "shards",
    "resume",
    "saliency-ids",
    "misc",
)
KIND_TEXT = {
    "destroy": "`--out` equal to or inside an input, a model's `config.json`, a symlink, a FIFO, "
    "`.` or a directory, a non-empty directory the command did not write, a finished run",
    "domain": "numeric flags and config keys out of their domain: 0, -1, nan, inf, thresholds "
    "outside [0, 1], unknown or unavailable precisions, out-of-range layers and heads",
    "model-files": "a model directory's `config.json`, `model.safetensors`, `task.json` or "
    "`tokenizer.json` damaged, mistyped, from the future or swapped",
    "import": "fair-esm `.pt` files and HuggingFace directories that are truncated, not what "
    "they claim, or incomplete",
    "override": "malformed `key=value` overrides: broken YAML, no key, no name, unknown keys, "
    "wrong types",
    "data": "input files the reader's own table does not cover: UTF-16, absent columns, "
    "`1` and `1.0` as two classes, empty tables, directories, empty sequences",
    "shards": "prepared shards truncated or their manifest edited, then `prepare` and "
    "`pretrain` run again",
    "resume": "`--resume` of something that is not a checkpoint, of nothing, or of another "
    "command's checkpoints",
    "saliency-ids": "record ids with `/`, `_`, `:`, `..` or 300 characters (accepted: one "
    "distinct file set per record, inside `--out`)",
    "misc": "`-` as `--out`: stdout for text tables, refused for binary outputs; a full disk; "
    "output permissions and strict JSON (accepted); `datasets` with unknown names or malformed "
    "local files",
}
RECORDS = 24


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hostile command line. ``argv`` is relative to the case's workspace (the working
    directory); ``names`` must all appear on stderr (``a|b``: either); ``outputs`` are the
    workspace paths the command may change (nothing else may); ``setup`` spoils the workspace
    first; ``needs`` copies in expensive artefacts (``shards``, ``ftrun``, ``prun``); ``check``
    verifies an accepted case's result from the workspace and stdout; ``absent`` are words the
    message must not hold (advice that cannot work); ``max_file_bytes`` caps the size of any
    file the command writes, as a full disk would (``RLIMIT_FSIZE``); ``either``: refused,
    or accepted and passing ``check`` (two fixes are right)."""

    name: str
    kind: str
    argv: tuple[str, ...]
    names: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    setup: Callable[[Path], None] | None = None
    needs: tuple[str, ...] = ()
    accepted: bool = False
    check: Callable[[Path, str], None] | None = None
    slow: bool = False
    cpu_only: bool = False
    absent: tuple[str, ...] = ()
    max_file_bytes: int | None = None
    either: bool = False

    @property
    def command(self) -> str:
        """The command attacked: ``predict``, ``datasets get``..."""
        return " ".join(self.argv[:2]) if self.argv[0] == "datasets" else self.argv[0]


def finetune(
    *extra: str, overrides: tuple[str, ...] = (), out: str = "ft", train: str = "data.csv"
) -> tuple[str, ...]:
    """A fast fine-tuning command line (a new tiny model) on the workspace's labelled CSV."""
    return (
        "finetune", "--train", train, "--preset", "tiny", "--tokenizer", "dna", "--epochs", "1",
        "--bootstrap", "0", "--max-tokens", "256", "--out", out, *extra, *overrides,
        "plots=false",
    )  # fmt: skip


def warm_start(model: str) -> tuple[str, ...]:
    """Fine-tuning warm-started from ``model`` (no preset or tokenizer of its own)."""
    return (
        "finetune", "--train", "data.csv", "--model", model, "--epochs", "1", "--bootstrap",
        "0", "--max-tokens", "256", "--out", "ft", "plots=false",
    )  # fmt: skip


def quickstart(*extra: str, data: str = "data.csv", out: str = "qs") -> tuple[str, ...]:
    """A quickstart on the workspace's small CSV: one pretraining step, a short fine-tune."""
    return (
        "quickstart", "--data", data, "--out", out, "--pretrain-steps", "1",
        "--finetune-epochs", "0.5", "--bootstrap", "0", *extra,
    )  # fmt: skip


def pretrain(*extra: str, out: str = "pt") -> tuple[str, ...]:
    """Pretraining from the workspace's tiny config; overrides go before the flags."""
    return ("pretrain", "pretrain.yaml", *extra, "--output-dir", out)


PREDICT = ("predict", "--model", "clf", "--input", "seqs.fa")
EVALUATE = ("evaluate", "--model", "clf", "--data", "data.csv", "--bootstrap", "0")
EMBED = ("embed", "--model", "clf", "--input", "seqs.fa")
CONTACTS = ("predict-contacts", "--model", "clf", "--input", "seqs.fa")
SCORE = ("score-variants", "--model", "clf", "--reference", "ref.fa", "--variants", "variants.tsv")
SALIENCY = ("saliency", "--model", "clf", "--input", "seqs.fa", "--max-records", "2")
PLOT_EMB = ("plot-embeddings", "--model", "clf", "--data", "seqs.fa", "--label-from", "key:label")
PLOT_ATT = ("plot-attention", "--model", "clf", "--input", "seqs.fa")
GET_GUE = (
    "datasets", "get", "gue-prom_core_tata", "--from", "src", "--cache", "cache", "--out", "got",
)  # fmt: skip
PREPARE = ("prepare", "genome.fa", "--tokenizer", "dna", "--window-tokens", "62", "--quiet")


def write(path: str, content: str | bytes) -> Callable[[Path], None]:
    """A setup that writes one file (parents created)."""

    def setup(root: Path) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)

    return setup


def steps(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    """Several setups, in order."""

    def setup(root: Path) -> None:
        for each in setups:
            each(root)

    return setup


def foreign(directory: str) -> Callable[[Path], None]:
    """A non-empty directory of the user's that no biotransformer command wrote."""
    return steps(
        write(f"{directory}/notes.txt", "my notes\n"),
        write(f"{directory}/results/table.csv", "a,b\n1,2\n"),
    )


def symlink(link: str, target: str) -> Callable[[Path], None]:
    """A relative symlink ``link`` to a file ``target`` of the user's."""

    def setup(root: Path) -> None:
        (root / target).write_text("the link's target\n")
        (root / link).symlink_to(target)

    return setup


def fifo(path: str) -> Callable[[Path], None]:
    """A named pipe: a special file that must never be opened for writing or replaced."""
    return lambda root: os.mkfifo(root / path)


def directory(path: str) -> Callable[[Path], None]:
    """An empty directory."""
    return lambda root: (root / path).mkdir(parents=True)


def destroy_cases() -> list[Case]:
    def case(name, argv, names, setup=None, **options):
        return Case(name, "destroy", tuple(argv), tuple(names), setup=setup, **options)

    return [
        case("predict-out-is-input", [*PREDICT, "--out", "seqs.fa"], ["seqs.fa"]),
        case("predict-contacts-out-is-input", [*CONTACTS, "--out", "seqs.fa"], ["seqs.fa"]),
        case("predict-out-is-config", [*PREDICT, "--out", "clf/config.json"], ["config.json"]),
        case(
            "predict-out-is-symlink",
            [*PREDICT, "--out", "link.tsv"],
            ["link.tsv"],
            symlink("link.tsv", "kept.tsv"),
        ),
        case(
            "predict-out-is-fifo", [*PREDICT, "--out", "pipe.tsv"], ["pipe.tsv"], fifo("pipe.tsv")
        ),
        case("predict-out-is-dot", [*PREDICT, "--out", "."], ["--out"]),
        case("predict-out-is-directory", [*PREDICT, "--out", "mine"], ["mine"], foreign("mine")),
        case(
            "evaluate-metrics-out-is-input",
            [*EVALUATE, "--metrics-out", "data.csv"],
            ["data.csv"],
        ),
        case(
            "evaluate-predictions-out-is-task-json",
            [*EVALUATE, "--predictions-out", "clf/task.json"],
            ["task.json"],
        ),
        case("evaluate-report-dir-is-model", [*EVALUATE, "--report-dir", "clf"], ["clf"]),
        case(
            "evaluate-metrics-out-is-fifo",
            [*EVALUATE, "--metrics-out", "pipe.json"],
            ["pipe.json"],
            fifo("pipe.json"),
        ),
        case("embed-out-is-input", [*EMBED, "--out", "seqs.fa"], ["seqs.fa"]),
        case(
            "embed-out-is-symlink",
            [*EMBED, "--out", "link.h5"],
            ["link.h5"],
            symlink("link.h5", "kept.h5"),
        ),
        case(
            "embed-out-is-weights",
            [*EMBED, "--out", "clf/model.safetensors"],
            ["model.safetensors"],
        ),
        case("score-variants-out-is-variants", [*SCORE, "--out", "variants.tsv"], ["variants.tsv"]),
        case("score-variants-out-is-reference", [*SCORE, "--out", "ref.fa"], ["ref.fa"]),
        case(
            "saliency-out-is-foreign-dir", [*SALIENCY, "--out", "mine"], ["mine"], foreign("mine")
        ),
        case("saliency-out-is-model-dir", [*SALIENCY, "--out", "clf"], ["clf"]),
        case("saliency-out-is-input-file", [*SALIENCY, "--out", "seqs.fa"], ["seqs.fa"]),
        case(
            "convert-out-is-foreign-dir",
            ["convert", "--from", "biotransformer", "clf", "--out", "mine"],
            ["mine"],
            foreign("mine"),
        ),
        case(
            "convert-out-is-its-input",
            ["convert", "--from", "biotransformer", "clf", "--out", "clf"],
            ["clf"],
        ),
        case(
            "convert-to-hf-out-is-foreign-dir",
            ["convert", "--from", "biotransformer", "mlm", "--to", "hf", "--out", "mine"],
            ["mine"],
            foreign("mine"),
        ),
        case(
            "quickstart-data-inside-out",
            quickstart(data="proj/data/mine.csv", out="proj"),
            ["mine.csv"],
            steps(
                lambda root: (root / "proj" / "data").mkdir(parents=True),
                lambda root: shutil.copy(root / "data.csv", root / "proj/data/mine.csv"),
                write("proj/finetune/notes.txt", "unrelated notes\n"),
            ),
        ),
        case("quickstart-out-is-foreign-dir", quickstart(out="mine"), ["mine"], foreign("mine")),
        case("quickstart-out-is-input", quickstart(out="data.csv"), ["data.csv"]),
        case("finetune-out-is-foreign-dir", finetune(out="mine"), ["mine"], foreign("mine")),
        case("finetune-out-is-train-file", finetune(out="data.csv"), ["data.csv"]),
        case(
            "finetune-out-holds-train-file",
            finetune(train="mine/train.csv", out="mine"),
            ["mine"],
            steps(
                directory("mine"),
                lambda root: shutil.copy(root / "data.csv", root / "mine" / "train.csv"),
            ),
        ),
        case(
            "finetune-out-is-symlink",
            finetune(out="runlink"),
            ["runlink"],
            steps(directory("elsewhere"), lambda root: (root / "runlink").symlink_to("elsewhere")),
        ),
        case("prepare-out-is-foreign-dir", [*PREPARE, "--out", "mine"], ["mine"], foreign("mine")),
        case("prepare-out-is-input", [*PREPARE, "--out", "genome.fa"], ["genome.fa"]),
        case(
            "prepare-out-holds-input",
            ["prepare", "mine/genome.fa", *PREPARE[2:], "--out", "mine"],
            ["mine"],
            steps(
                directory("mine"),
                lambda root: shutil.copy(root / "genome.fa", root / "mine" / "genome.fa"),
            ),
        ),
        case("pretrain-out-is-foreign-dir", pretrain(out="mine"), ["mine"], foreign("mine")),
        case("pretrain-out-is-dot", pretrain(out="."), ["--output-dir|training.output_dir"]),
        case(
            "datasets-get-out-is-foreign-dir",
            [*GET_GUE[:-1], "mine"],
            ["mine"],
            steps(foreign("mine"), local_gue("src")),
        ),
        case(
            "plot-attention-out-is-input",
            [*PLOT_ATT, "--out", "seqs.fa"],
            ["seqs.fa"],
        ),
        case(
            "plot-embeddings-out-is-config",
            [*PLOT_EMB, "--out", "clf/config.json"],
            ["config.json"],
        ),
        case(
            "plot-embeddings-out-is-symlink",
            [*PLOT_EMB, "--out", "link.png"],
            ["link.png"],
            symlink("link.png", "kept.png"),
        ),
        case(
            "finetune-rerun-into-finished-run",
            finetune(out="ftrun"),
            ["--overwrite"],
            needs=("ftrun",),
            slow=True,
        ),
    ]


def local_gue(folder: str, train: bytes | None = None) -> Callable[[Path], None]:
    """A local copy of gue-prom_core_tata's three CSV files (its card has no checksums)."""

    def setup(root: Path) -> None:
        (root / folder).mkdir(parents=True, exist_ok=True)
        rows = (root / "data.csv").read_bytes()
        for split in ("train", "dev", "test"):
            content = train if split == "train" and train is not None else rows
            (root / folder / f"{split}.csv").write_bytes(content)

    return setup


def domain_cases() -> list[Case]:
    def case(name, argv, names, outputs=(), **options):
        return Case(name, "domain", tuple(argv), tuple(names), tuple(outputs), **options)

    cases = []
    for value in ("5", "-1", "nan", "inf"):
        cases.append(
            case(f"predict-threshold-{value}", [*PREDICT, "--out", "p.tsv", "--threshold", value],
                 ["--threshold"], ["p.tsv"])
        )  # fmt: skip
    for command, base, out in (
        ("predict", PREDICT, ("--out", "p.tsv")),
        ("evaluate", EVALUATE, ("--metrics-out", "p.tsv")),
        ("embed", EMBED, ("--out", "p.tsv")),
        ("predict-contacts", CONTACTS, ("--out", "p.tsv")),
        ("plot-embeddings", PLOT_EMB, ("--out", "p.tsv")),
        ("score-variants", SCORE, ("--out", "p.tsv")),
    ):
        cases.append(
            case(f"{command}-max-tokens-0", [*base, *out, "--max-tokens", "0"], ["--max-tokens"],
                 ["p.tsv"])
        )  # fmt: skip
    cases += [
        case("predict-max-tokens-negative", [*PREDICT, "--out", "p.tsv", "--max-tokens", "-1"],
             ["--max-tokens"], ["p.tsv"]),
        case("predict-window-overlap-negative",
             [*PREDICT, "--out", "p.tsv", "--window-overlap", "-1"], ["--window-overlap"],
             ["p.tsv"]),
        case("embed-window-overlap-huge", [*EMBED, "--out", "e.h5", "--window-overlap", "100000"],
             ["--window-overlap"], ["e.h5"]),
        case("embed-layer-out-of-range", [*EMBED, "--out", "e.h5", "--layers", "99"],
             ["--layers"], ["e.h5"]),
        case("evaluate-bootstrap-negative", [*EVALUATE, "--bootstrap", "-5"], ["--bootstrap"]),
        case("evaluate-threshold-nan", [*EVALUATE, "--threshold", "nan"], ["--threshold"]),
        case("evaluate-seed-negative", [*EVALUATE, "--seed", "-1"], ["--seed"]),
        case("evaluate-mask-rate-0",
             ["evaluate", "--model", "mlm", "--data", "seqs.fa", "--mask-rate", "0"],
             ["--mask-rate"]),
        case("evaluate-mask-rate-above-1",
             ["evaluate", "--model", "mlm", "--data", "seqs.fa", "--mask-rate", "1.5"],
             ["--mask-rate"]),
        case("saliency-max-records-negative", [*SALIENCY, "--out", "s", "--max-records", "-1"],
             ["--max-records"], ["s"]),
        case("saliency-batch-size-0", [*SALIENCY, "--out", "s", "--batch-size", "0"],
             ["--batch-size"], ["s"]),
        case("score-variants-batch-size-0",
             ["score-variants", "--model", "mlm", "--reference", "ref.fa", "--variants",
              "variants.tsv", "--out", "v.tsv", "--batch-size", "0"], ["--batch-size"],
             ["v.tsv"]),
        case("plot-attention-layer-out-of-range", [*PLOT_ATT, "--out", "a.png", "--layer", "99"],
             ["--layer"], ["a.png"]),
        case("plot-attention-head-out-of-range", [*PLOT_ATT, "--out", "a.png", "--head", "99"],
             ["--head"], ["a.png"]),
        case("plot-embeddings-layer-out-of-range",
             [*PLOT_EMB, "--out", "e.png", "--layers", "-99"], ["--layers"], ["e.png"]),
        case("prepare-window-tokens-0", [*PREPARE, "--out", "sh", "--window-tokens", "0"],
             ["--window-tokens"], ["sh"]),
        case("prepare-stride-0", [*PREPARE, "--out", "sh", "--stride", "0"], ["--stride"],
             ["sh"]),
        case("prepare-valid-fraction-2", [*PREPARE, "--out", "sh", "--valid-fraction", "2"],
             ["--valid-fraction"], ["sh"]),
        case("prepare-max-n-fraction-nan", [*PREPARE, "--out", "sh", "--max-n-fraction", "nan"],
             ["--max-n-fraction"], ["sh"]),
        case("prepare-seed-negative", [*PREPARE, "--out", "sh", "--seed", "-1"], ["--seed"],
             ["sh"]),
        case("quickstart-finetune-epochs-nan", quickstart("--finetune-epochs", "nan"),
             ["--finetune-epochs"], ["qs"]),
        case("quickstart-pretrain-steps-0", quickstart("--pretrain-steps", "0"),
             ["--pretrain-steps"], ["qs"]),
        case("quickstart-bootstrap-negative", quickstart("--bootstrap", "-1"), ["--bootstrap"],
             ["qs"]),
        case("quickstart-seed-negative", quickstart("--seed", "-1"), ["--seed"], ["qs"]),
        case("pretrain-lr-inf", pretrain("training.lr=inf"), ["training.lr"], ["pt"],
             absent=("--resume",)),
        case("pretrain-eps-negative", pretrain("training.eps=-1"), ["training.eps"], ["pt"]),
        case("pretrain-seed-negative", pretrain("training.seed=-1"), ["training.seed"], ["pt"]),
        case("pretrain-fp16-on-cpu", pretrain("training.mixed_precision=fp16"),
             ["training.mixed_precision"], ["pt"], cpu_only=True),
        case("pretrain-precision-unknown", pretrain("training.mixed_precision=fp8"),
             ["training.mixed_precision"], ["pt"]),
        case("pretrain-max-tokens-0", pretrain("data.max_tokens=0"), ["data.max_tokens"], ["pt"]),
    ]  # fmt: skip
    for flag, value in (
        ("--epochs", "nan"),
        ("--epochs", "inf"),
        ("--lr", "0"),
        ("--lr", "-1"),
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--max-tokens", "0"),
        ("--max-length", "0"),
        ("--max-length", "-5"),
        ("--valid-fraction", "nan"),
        ("--test-fraction", "1.5"),
        ("--rc-augment", "nan"),
        ("--bootstrap", "-5"),
        ("--seed", "-1"),
        ("--pos-weight", "-1"),
        ("--pos-weight", "nan"),
    ):
        cases.append(
            case(f"finetune{flag}-{value}", finetune(flag, value), [flag], ["ft"])
        )  # fmt: skip
    cases += [
        case("finetune-fp16-on-cpu", finetune(overrides=("training.mixed_precision=fp16",)),
             ["training.mixed_precision"], ["ft"], cpu_only=True),
        case("finetune-precision-unknown", finetune(overrides=("training.mixed_precision=int3",)),
             ["training.mixed_precision"], ["ft"]),
        case("finetune-lr-10-diverges", finetune("--epochs", "3", "--lr", "10"),
             ["--lr|training.lr"], ["ft"], slow=True, absent=("--resume",)),
    ]  # fmt: skip
    return cases


def model_files_cases() -> list[Case]:
    def config(path: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
        def setup(root: Path) -> None:
            file = root / path
            file.write_text(json.dumps(change(json.loads(file.read_text()))))

        return setup

    def truncate(path: str) -> Callable[[Path], None]:
        def setup(root: Path) -> None:
            data = (root / path).read_bytes()
            (root / path).write_bytes(data[: len(data) // 2])

        return setup

    def swapped_tokenizer(root: Path) -> None:
        original = Tokenizer.load(root / "clf" / "tokenizer.json")
        other = Tokenizer.from_spec("dna:eos=true,lowercase=error")
        assert other.vocab_size == original.vocab_size and other.spec != original.spec
        other.save(root / "clf")

    def case(name, argv, names, setup, outputs=()):
        return Case(name, "model-files", tuple(argv), tuple(names), tuple(outputs), setup)

    task = "clf/task.json"
    return [
        case("config-json-is-5", [*PREDICT, "--out", "p.tsv"], ["config.json"],
             write("clf/config.json", "5"), ["p.tsv"]),
        case("config-json-is-null", [*EMBED, "--out", "e.h5"], ["config.json"],
             write("clf/config.json", "null"), ["e.h5"]),
        case("config-json-is-list", EVALUATE, ["config.json"], write("clf/config.json", "[]")),
        case("config-format-version-string", [*SALIENCY, "--out", "s"], ["config.json"],
             config("clf/config.json", lambda d: {**d, "format_version": "2"}), ["s"]),
        case("config-format-version-future", [*PLOT_ATT, "--out", "a.png"], ["config.json"],
             config("clf/config.json", lambda d: {**d, "format_version": 999}), ["a.png"]),
        case("config-model-not-a-mapping", [*PREDICT, "--out", "p.tsv"], ["config.json"],
             config("clf/config.json", lambda d: {**d, "model": 7}), ["p.tsv"]),
        case("config-hidden-size-string", warm_start("clf"), ["config.json"],
             config("clf/config.json", lambda d: {**d, "model": {**d["model"],
                                                                  "hidden_size": "big"}}),
             ["ft"]),
        case("weights-missing", [*SCORE, "--out", "v.tsv"], ["model.safetensors"],
             lambda root: (root / "clf" / "model.safetensors").unlink(), ["v.tsv"]),
        case("weights-truncated",
             ["convert", "--from", "biotransformer", "clf", "--out", "converted"],
             ["model.safetensors"], truncate("clf/model.safetensors"), ["converted"]),
        case("task-threshold-high", [*PREDICT, "--out", "p.tsv"], ["task.json"],
             config(task, lambda d: {**d, "threshold": "high"}), ["p.tsv"]),
        case("task-threshold-2", EVALUATE, ["task.json"],
             config(task, lambda d: {**d, "threshold": 2})),
        case("task-threshold-nan", [*PREDICT, "--out", "p.tsv"], ["task.json"],
             write(task, '{"task": "classification", "labels": ["0", "1"], "threshold": NaN, '
                   '"rc_average": false}'), ["p.tsv"]),
        case("task-rc-average-yes", [*PREDICT, "--out", "p.tsv"], ["task.json"],
             config(task, lambda d: {**d, "rc_average": "yes"}), ["p.tsv"]),
        case("task-labels-not-a-list", [*PREDICT, "--out", "p.tsv"], ["task.json"],
             config(task, lambda d: {**d, "labels": "01"}), ["p.tsv"]),
        case("task-json-garbage", EVALUATE, ["task.json"], write(task, "{not json")),
        case("config-head-threshold-high", [*PREDICT, "--out", "p.tsv"], ["config.json"],
             config("clf/config.json", lambda d: {**d, "head": {**d["head"],
                                                                 "threshold": 1.5}}),
             ["p.tsv"]),
        case("config-head-rc-average-yes", EVALUATE, ["config.json"],
             config("clf/config.json", lambda d: {**d, "head": {**d["head"],
                                                                 "rc_average": "yes"}})),
        case("tokenizer-swapped-same-vocab-size", [*PREDICT, "--out", "p.tsv"],
             ["tokenizer.json"], swapped_tokenizer, ["p.tsv"]),
        case("tokenizer-json-garbage", [*PLOT_EMB, "--out", "e.png"], ["tokenizer.json"],
             write("clf/tokenizer.json", b"\x00\x01garbage"), ["e.png"]),
        case("tokenizer-json-is-list", [*PREDICT, "--out", "p.tsv"], ["tokenizer.json"],
             write("clf/tokenizer.json", "[1, 2]"), ["p.tsv"]),
    ]  # fmt: skip


def fair_esm_bytes(values: object) -> bytes:
    """``torch.save`` of plain containers, as a fair-esm file would be written."""
    import io

    buffer = io.BytesIO()
    torch.save(values, buffer)
    return buffer.getvalue()


def import_cases() -> list[Case]:
    esm_cfg = {"cfg": {"model": {}}, "model": {"encoder.layers.0.x": torch.zeros(2)}}
    whole = fair_esm_bytes(esm_cfg)

    def hf_dir(path: str, config: dict | None, weights: bool = False) -> Callable[[Path], None]:
        def setup(root: Path) -> None:
            (root / path).mkdir()
            if config is not None:
                (root / path / "config.json").write_text(json.dumps(config))
            if weights:
                (root / path / "model.safetensors").write_bytes(b"\x00" * 64)

        return setup

    esm = {
        "model_type": "esm", "architectures": ["EsmForMaskedLM"], "vocab_size": 33,
        "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 64,
        "position_embedding_type": "rotary", "pad_token_id": 1, "mask_token_id": 32,
    }  # fmt: skip
    bert = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 30}

    def convert(kind, path, name, setup):
        return Case(name, "import", ("convert", "--from", kind, path, "--out", "conv"), (path,),
                    ("conv",), setup)  # fmt: skip

    return [
        convert("fair-esm", "esm.pt", "fair-esm-truncated",
                write("esm.pt", whole[: len(whole) // 2])),
        convert("fair-esm", "esm.pt", "fair-esm-not-a-zip",
                write("esm.pt", random.Random(512).randbytes(512))),
        convert("fair-esm", "esm.pt", "fair-esm-zip-without-keys",
                write("esm.pt", fair_esm_bytes({"weights": torch.zeros(2)}))),
        convert("fair-esm", "esm.pt", "fair-esm-cfg-without-fields", write("esm.pt", whole)),
        convert("fair-esm", "esm.pt", "fair-esm-json-named-pt", write("esm.pt", '{"cfg": 1}')),
        convert("fair-esm", "esm.pt", "fair-esm-empty-zip", write("esm.pt", empty_zip())),
        convert("hf", "hfdir", "hf-without-config", hf_dir("hfdir", None, weights=True)),
        convert("hf", "hfdir", "hf-other-model-type", hf_dir("hfdir", bert, weights=True)),
        convert("hf", "hfdir", "hf-without-weights", hf_dir("hfdir", esm)),
        convert("hf", "hfdir", "hf-garbage-weights", hf_dir("hfdir", esm, weights=True)),
        convert("hf", "seqs.fa", "hf-path-is-a-file", None),
        Case("finetune-model-fair-esm-garbage", "import",
             warm_start("fair-esm:esm.pt"),
             ("esm.pt",), ("ft",), write("esm.pt", random.Random(256).randbytes(256))),
        Case("finetune-model-hf-empty-dir", "import",
             warm_start("hf:hfdir"),
             ("hfdir",), ("ft",), directory("hfdir")),
    ]  # fmt: skip


def empty_zip() -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w"):
        pass
    return buffer.getvalue()


def override_cases() -> list[Case]:
    bad = (
        ("yaml-unclosed", "training.lr=[1,", "training.lr"),
        ("no-key", "=3", "=3"),
        ("no-name", "training.=1", "training."),
        ("unknown-key", "training.nosuch=1", "training.nosuch"),
        ("wrong-type-string", "training.lr=abc", "training.lr"),
        ("wrong-type-list", "training.max_steps=[1]", "training.max_steps"),
    )
    cases = [
        Case(f"pretrain-{name}", "override", pretrain(text), (key,), ("pt",))
        for name, text, key in bad
    ]
    cases += [
        Case(f"finetune-{name}", "override", finetune(overrides=(text,)), (key,), ("ft",))
        for name, text, key in bad
    ]
    cases += [
        Case("finetune-model-key-wrong-type", "override",
             finetune(overrides=("model.num_layers=two",)), ("model.num_layers",), ("ft",)),
        Case("finetune-bare-key-wrong-type", "override",
             finetune(overrides=("evals_per_epoch=often",)), ("evals_per_epoch",), ("ft",)),
        Case("finetune-unknown-section", "override",
             finetune(overrides=("optimizer.lr=1",)), ("optimizer",), ("ft",)),
        Case("pretrain-model-key-negative", "override", pretrain("model.hidden_size=-1"),
             ("model.hidden_size",), ("pt",)),
    ]  # fmt: skip
    return cases


def data_cases() -> list[Case]:
    def utf16(path: str, source: str) -> Callable[[Path], None]:
        def setup(root: Path) -> None:
            (root / path).write_bytes((root / source).read_text().encode("utf-16"))

        return setup

    def case(name, argv, names, setup=None, outputs=()):
        return Case(name, "data", tuple(argv), tuple(names), tuple(outputs), setup)

    one_and_one = "sequence,label\n" + "".join(
        f"{s},{label}\n" for s, label in zip(sequences(RECORDS), ["0", "1", "1.0"] * 8, strict=True)
    )
    return [
        case("utf16-fasta", ["predict", "--model", "clf", "--input", "u16.fa", "--out", "p.tsv"],
             ["u16.fa", "UTF-16"], utf16("u16.fa", "seqs.fa"), ["p.tsv"]),
        case("utf16-csv", finetune(train="u16.csv"), ["u16.csv", "UTF-16"],
             utf16("u16.csv", "data.csv"), ["ft"]),
        case("label-column-absent", [*EVALUATE, "--label-column", "nosuch"], ["--label-column"]),
        case("labels-1-and-1.0", finetune(train="ones.csv"), ["ones.csv"],
             write("ones.csv", one_and_one),
             ["ft"]),
        case("empty-csv", ["evaluate", "--model", "clf", "--data", "empty.csv"], ["empty.csv"],
             write("empty.csv", "sequence,label\n")),
        case("input-is-directory", ["embed", "--model", "clf", "--input", "indir", "--out",
                                    "e.h5"], ["indir"], directory("indir"), ["e.h5"]),
        case("train-is-directory", finetune(train="indir"), ["indir"], directory("indir"), ["ft"]),
        case("plot-attention-header-only-csv",
             ["plot-attention", "--model", "clf", "--input", "empty.csv", "--out", "a.png"],
             ["empty.csv"], write("empty.csv", "sequence\n"), ["a.png"]),
        case("plot-attention-empty-sequence",
             ["plot-attention", "--model", "clf", "--sequence", "", "--out", "a.png"],
             ["--sequence"], None, ["a.png"]),
        case("plot-attention-protein-sequence",
             ["plot-attention", "--model", "clf", "--sequence", "MKWVTFISLL", "--out", "a.png"],
             ["--sequence"], None, ["a.png"]),
        case("saliency-id-column-absent", [*SALIENCY, "--out", "s", "--id-column", "nosuch"],
             ["--id-column"], None, ["s"]),
        case("variant-beyond-reference", [*SCORE[:-1], "far.tsv", "--out", "v.tsv"],
             ["far.tsv"],
             write("far.tsv", "id\tsequence\tposition\tref\talt\nv1\tref\t999\tA\tC\n"),
             ["v.tsv"]),
    ]  # fmt: skip


def shards_readable(root: Path, stdout: str) -> None:
    """A re-run of prepare that repaired the shards: every shard the manifest lists opens."""
    import h5py

    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for name in split["shards"]:
            with h5py.File(root / "shards" / name, "r") as handle:
                assert len(handle.keys()) > 0, name


def shard_cases() -> list[Case]:
    def truncate_shard(root: Path) -> None:
        shard = root / "shards" / "train-00000.h5"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    def edit_manifest(change: Callable[[dict], object]) -> Callable[[Path], None]:
        def setup(root: Path) -> None:
            path = root / "shards" / "manifest.json"
            path.write_text(json.dumps(change(json.loads(path.read_text()))))

        return setup

    def missing_shard(manifest: dict) -> dict:
        manifest["splits"]["train"]["shards"].append("train-00099.h5")
        return manifest

    shard_pretrain = pretrain("data.train_files=[]", "data.shard_dir=shards")
    return [
        Case("prepare-rerun-over-truncated-shard", "shards", (*PREPARE, "--out", "shards"),
             ("train-00000.h5",), ("shards",), truncate_shard, ("shards",), either=True,
             check=shards_readable),
        Case("pretrain-on-truncated-shard", "shards", shard_pretrain, ("train-00000.h5",),
             ("pt",), truncate_shard, ("shards",)),
        Case("pretrain-manifest-garbage", "shards", shard_pretrain, ("manifest.json",), ("pt",),
             write("shards/manifest.json", "{"), ("shards",)),
        Case("pretrain-manifest-names-missing-shard", "shards", shard_pretrain,
             ("train-00099.h5",), ("pt",), edit_manifest(missing_shard), ("shards",)),
        Case("pretrain-manifest-format-version-string", "shards", shard_pretrain,
             ("manifest.json",), ("pt",),
             edit_manifest(lambda m: {**m, "format_version": "one"}), ("shards",)),
        Case("pretrain-manifest-is-list", "shards", shard_pretrain, ("manifest.json",), ("pt",),
             write("shards/manifest.json", "[]"), ("shards",)),
    ]  # fmt: skip


def resume_cases() -> list[Case]:
    def case(name, argv, names, outputs, setup=None, **options):
        return Case(name, "resume", tuple(argv), tuple(names), tuple(outputs), setup, **options)

    return [
        case("pretrain-resume-a-file", pretrain("--resume", "seqs.fa"), ["--resume"], ["pt"]),
        case("pretrain-resume-latest-nothing", pretrain("--resume", "latest"), ["--resume"],
             ["pt"]),
        case("finetune-resume-plain-dir", finetune("--resume", "notackpt"), ["--resume"], ["ft"],
             write("notackpt/x.txt", "x")),
        case("finetune-resume-latest-nothing", finetune("--resume", "latest"), ["--resume"],
             ["ft"]),
        case("finetune-resume-latest-on-pretraining-run", finetune("--resume", "latest",
                                                                   out="prun"),
             ["prun"], [], needs=("prun",), slow=True),
        case("finetune-resume-a-pretraining-checkpoint",
             finetune("--resume", "prun/checkpoints/" + "step-00000004"), ["step-00000004"],
             ["ft"], needs=("prun",), slow=True),
        case("pretrain-resume-latest-on-finetune-run", pretrain("--resume", "latest", out="ftrun"),
             ["ftrun"], [], needs=("ftrun",), slow=True),
    ]  # fmt: skip


def saliency_id_cases() -> list[Case]:
    def ids_fasta(ids: list[str]) -> Callable[[Path], None]:
        records = sequences(len(ids))
        return write("ids.fa", "".join(f">{i}\n{s}\n" for i, s in zip(ids, records, strict=True)))

    def distinct(count: int) -> Callable[[Path, str], None]:
        def check(root: Path, stdout: str) -> None:
            out = root / "s"
            tables = sorted(out.rglob("*.ism.tsv"))
            assert len(tables) == count, tables
            assert len(list(out.rglob("*.png"))) == 2 * count
            assert all(len(p.name.encode()) <= 255 and out in p.parents for p in tables)
            first_columns = {p.read_text().splitlines()[1] for p in tables}
            assert len(first_columns) == count, "two records wrote one file set"

        return check

    def case(name, ids):
        return Case(f"saliency-ids-{name}", "saliency-ids",
                    ("saliency", "--model", "clf", "--input", "ids.fa", "--out", "s"),
                    outputs=("s",), setup=ids_fasta(ids), accepted=True,
                    check=distinct(len(ids)))  # fmt: skip

    return [
        case("slash-underscore-colon", ["a/b", "a_b", "a:b"]),
        case("300-characters", ["x" * 300, "x" * 299 + "y"]),
        case("dot-dot", ["..", "../escape", "."]),
        case("case-only", ["Rec", "rec"]),
    ]


def misc_cases() -> list[Case]:
    def table_on_stdout(header: str) -> Callable[[Path, str], None]:
        def check(root: Path, stdout: str) -> None:
            assert not (root / "-").exists(), "a file named '-' was written"
            assert stdout.startswith(header), stdout[:200]

        return check

    def case(name, argv, names, outputs=(), setup=None):
        return Case(name, "misc", tuple(argv), tuple(names), tuple(outputs), setup)

    return [
        case("embed-out-dash", [*EMBED, "--out", "-"], ["--out"]),
        case("predict-contacts-out-dash", [*CONTACTS, "--out", "-"], ["--out"]),
        case("predict-contacts-without-contact-head", [*CONTACTS, "--out", "c.h5"],
             ["no contact head"], ["c.h5"]),
        case("plot-attention-out-dash", [*PLOT_ATT, "--out", "-"], ["--out"]),
        case("plot-embeddings-out-dash", [*PLOT_EMB, "--out", "-"], ["--out"]),
        Case("predict-out-dash-is-stdout", "misc", (*PREDICT, "--out", "-"), accepted=True,
             check=table_on_stdout("id\t")),
        Case("score-variants-out-dash-is-stdout", "misc", (*SCORE, "--out", "-"), accepted=True,
             check=table_on_stdout("id\t")),
        Case("datasets-list", "misc", ("datasets", "list"), accepted=True,
             check=lambda root, stdout: None if "gue-tf_0" in stdout else pytest.fail(stdout)),
        case("datasets-get-unknown-name",
             ["datasets", "get", "no-such-set", "--out", "got", "--cache", "cache"],
             ["no-such-set"], ["got", "cache"]),
        case("datasets-get-malformed-local-csv", GET_GUE, ["train.csv"], ["got", "cache"],
             local_gue("src", train=b"\x00\xff\xfe garbage\n" * 10)),
        case("datasets-get-local-csv-without-columns", GET_GUE, ["train.csv"], ["got", "cache"],
             local_gue("src", train=b"a;b;c\n1;2;3\n")),
        case("datasets-get-malformed-local-fasta",
             ["datasets", "get", "nt-downstream-promoter_all", "--from", "src", "--out", "got",
              "--cache", "cache"], ["train.fna"], ["got", "cache"],
             write("src/train.fna", ">no pipe label here\nACGT\n>x|y|z\n")),
        case("datasets-get-malformed-local-folder",
             ["datasets", "get", "genomic-benchmarks-human_nontata_promoters", "--from", "src",
              "--out", "got", "--cache", "cache"], ["a.txt"], ["got", "cache"],
             steps(write("src/train/positive/a.txt", b"\xff\xfe\x00binary"),
                   write("src/train/negative/b.txt", "ACGTACGT\n"),
                   write("src/test/positive/c.txt", "ACGTACGA\n"),
                   write("src/test/negative/d.txt", "ACGTACGC\n"))),
        Case("predict-disk-full", "misc", (*PREDICT, "--out", "p.tsv"), ("p.tsv",),
             max_file_bytes=256, slow=True),
        Case("embed-disk-full", "misc", (*EMBED, "--per-token", "--out", "e.h5"), ("e.h5",),
             max_file_bytes=8192, slow=True),
        Case("convert-disk-full", "misc",
             ("convert", "--from", "biotransformer", "clf", "--out", "conv"), ("conv",),
             outputs=("conv",), max_file_bytes=4096, slow=True),
        Case("embed-h5-gets-usual-permissions", "misc", (*EMBED, "--out", "e.h5"),
             outputs=("e.h5",), accepted=True, check=usual_permissions("e.h5")),
        Case("evaluate-metrics-json-is-strict", "misc",
             ("evaluate", "--model", "clf", "--data", "zeros.csv", "--bootstrap", "20",
              "--metrics-out", "m.json"),
             outputs=("m.json",), setup=write("zeros.csv", single_class_csv()), accepted=True,
             check=strict_json("m.json")),
        case("datasets-get-cache-is-a-file", [*GET_GUE[:6], "seqs.fa", *GET_GUE[7:]],
             ["seqs.fa"], ["got"], local_gue("src")),
    ]  # fmt: skip


def usual_permissions(path: str) -> Callable[[Path, str], None]:
    """An accepted case's output has the mode of any file the user creates (0666 - umask)."""

    def check(root: Path, stdout: str) -> None:
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE((root / path).stat().st_mode) == 0o666 & ~umask

    return check


def strict_json(path: str) -> Callable[[Path, str], None]:
    """An accepted case's JSON output parses without NaN or Infinity."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds a bare {constant}: not JSON")

    return lambda root, stdout: json.loads((root / path).read_text(), parse_constant=refuse)


def single_class_csv() -> str:
    """Labelled rows of one class: AUROC and MCC are undefined, so NaN is tempting."""
    return "sequence,label\n" + "".join(f"{s},0\n" for s in sequences(RECORDS, seed=3))


def sequences(count: int, length: int = 40, seed: int = 0) -> list[str]:
    """Random DNA records, the same for the same arguments."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), size=length)) for _ in range(count)]


CASES: list[Case] = [
    *destroy_cases(),
    *domain_cases(),
    *model_files_cases(),
    *import_cases(),
    *override_cases(),
    *data_cases(),
    *shard_cases(),
    *resume_cases(),
    *saliency_id_cases(),
    *misc_cases(),
]


# ---------------------------------------------------------------------------------------------
# Artefacts and the workspace
# ---------------------------------------------------------------------------------------------


def pretrain_yaml(genome: str, output_dir: str, max_steps: int = 4) -> str:
    return json.dumps(
        {
            "model": {"preset": "tiny", "max_length": 64},
            "data": {
                "train_files": [genome],
                "tokenizer": "dna",
                "window_tokens": 62,
                "valid_fraction": 0.1,
                "max_length": 64,
                "max_tokens": 512,
            },
            "training": {
                "output_dir": output_dir,
                "lr": 3e-3,
                "warmup_steps": 1,
                "max_steps": max_steps,
                "save_every": 2,
                "keep_last": 2,
                "eval_every": 2,
                "log_every": 1,
            },
        }
    )


def write_inputs(root: Path) -> None:
    """The small inputs every case starts from."""
    records = sequences(RECORDS)
    (root / "seqs.fa").write_text(
        "".join(f">s{i} label={i % 2}\n{s}\n" for i, s in enumerate(records))
    )
    (root / "data.csv").write_text(
        "sequence,label\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(records))
    )
    (root / "ref.fa").write_text(f">ref\n{records[0]}\n")
    alt = "C" if records[0][0] != "C" else "G"
    (root / "variants.tsv").write_text(
        f"id\tsequence\tposition\tref\talt\nv1\tref\t1\t{records[0][0]}\t{alt}\n"
    )
    genome = sequences(4, length=2000, seed=1)
    (root / "genome.fa").write_text("".join(f">chr{i}\n{s}\n" for i, s in enumerate(genome)))
    (root / "pretrain.yaml").write_text(pretrain_yaml("genome.fa", "pt"))


def tiny_model(kind: str, directory: Path) -> None:
    tokenizer = Tokenizer.from_spec("dna")
    torch.manual_seed(0)
    config = ModelConfig.from_preset(
        "tiny", vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id
    )
    if kind == "clf":
        model = SequenceClassifier(config, label2id={"0": 0, "1": 1})
    else:
        model = MaskedLM(config)
    model.tokenizer = tokenizer
    # as written before config.json held the decision fields: the task.json attacks apply
    save_legacy_model_directory(model, directory)


def run_cli(argv: list[str] | tuple[str, ...]) -> int:
    """``main(argv)`` as the console script would end: SystemExit becomes its status."""
    try:
        return int(main(list(argv)) or 0)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models and inputs every case copies: built once."""
    root = tmp_path_factory.mktemp("attack-artefacts")
    write_inputs(root)
    tiny_model("clf", root / "clf")
    tiny_model("mlm", root / "mlm")
    return root


def _build(root: Path, name: str, argv: list[str]) -> Path:
    """Run one command in ``root`` to make an artefact; it must succeed."""
    cwd = Path.cwd()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reset_accelerate_state()
    os.chdir(root)
    try:
        assert run_cli(argv) == 0, f"building {name} failed"
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        reset_accelerate_state()
    return root / name


@pytest.fixture(scope="session")
def shards(artefacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of the small genome, prepared once."""
    root = tmp_path_factory.mktemp("attack-shards")
    shutil.copy(artefacts / "genome.fa", root / "genome.fa")
    return _build(root, "shards", [*PREPARE, "--out", "shards"])


@pytest.fixture(scope="session")
def ftrun(artefacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished fine-tuning run directory."""
    root = tmp_path_factory.mktemp("attack-ftrun")
    shutil.copy(artefacts / "data.csv", root / "data.csv")
    return _build(root, "ftrun", list(finetune(out="ftrun")))


@pytest.fixture(scope="session")
def prun(artefacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished pretraining run directory, its checkpoints kept (steps 2 and 4)."""
    root = tmp_path_factory.mktemp("attack-prun")
    shutil.copy(artefacts / "genome.fa", root / "genome.fa")
    shutil.copy(artefacts / "pretrain.yaml", root / "pretrain.yaml")
    return _build(root, "prun", list(pretrain(out="prun")))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: its type and, for files, size, mtime, sha256, mode; for
    links, the target (never followed); for special files, their type and mtime."""
    entries: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder, name)
            info = path.lstat()
            relative = path.relative_to(root).as_posix()
            if stat.S_ISLNK(info.st_mode):
                entries[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[relative] = ("dir", stat.S_IMODE(info.st_mode))
            elif stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                mode = stat.S_IMODE(info.st_mode)
                entries[relative] = ("file", info.st_size, info.st_mtime_ns, digest, mode)
            else:
                entries[relative] = ("special", stat.S_IFMT(info.st_mode), info.st_mtime_ns)
    return entries


def changed_outside(before: dict, after: dict, outputs: tuple[str, ...]) -> list[str]:
    """Paths created, removed or changed that are not an output or inside one."""
    allowed = [Path(output).as_posix().rstrip("/") for output in outputs]
    return sorted(
        path
        for path in before.keys() | after.keys()
        if before.get(path) != after.get(path)
        and not any(path == out or path.startswith(out + "/") for out in allowed)
    )


@contextmanager
def workspace_of(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh workspace for ``case`` as the working directory, torch on one thread."""
    artefacts = request.getfixturevalue("artefacts")
    root = tmp_path / "ws"
    shutil.copytree(artefacts, root, symlinks=True)
    for need in case.needs:
        shutil.copytree(request.getfixturevalue(need), root / need, symlinks=True)
    if case.setup is not None:
        case.setup(root)
    cwd, threads = Path.cwd(), torch.get_num_threads()
    torch.set_num_threads(1)
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def run_on_full_disk(argv: tuple[str, ...], limit: int) -> tuple[int, str, str]:
    """The command in a child process whose writes beyond ``limit`` bytes fail with
    ``OSError(EFBIG)``, as on a full disk (Python ignores SIGXFSZ). A child, because a library
    that crashes on the failed write (HDF5 at exit) must not take the test run with it."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    result = subprocess.run(
        cli(*argv), env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=150,
        preexec_fn=cap,
    )  # fmt: skip
    assert result.returncode >= 0, f"killed by signal {-result.returncode}: {result.stderr}"
    return result.returncode, result.stdout, result.stderr


def _param(case: Case) -> object:
    marks = [pytest.mark.slow] if case.slow else []
    if case.cpu_only:
        marks.append(pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid on a GPU"))
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_attack(
    case: Case,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with workspace_of(case, tmp_path, request) as root:
        before = snapshot(root)
        capsys.readouterr()
        if case.max_file_bytes is not None:
            status, out, err = run_on_full_disk(case.argv, case.max_file_bytes)
        else:
            try:
                status = run_cli(case.argv)
            except BaseException as error:  # any escape is the defect under test
                pytest.fail(f"{case.name}: {type(error).__name__} escaped main(): {error}")
            out, err = capsys.readouterr()
        after = snapshot(root)
    where = f"{case.name} ({' '.join(case.argv)}): status {status}\n{err[-3000:]}"
    text = out + err
    assert "Traceback" not in text and "internal error" not in text.lower(), where
    if case.accepted or (case.either and status == 0):
        assert status == 0, where
        assert case.check is not None
        case.check(root, out)
    else:
        assert status != 0, where
        missing = [name for name in case.names if not any(n in err for n in name.split("|"))]
        assert not missing, f"{where}\nthe message does not name {missing}"
        wrong = [word for word in case.absent if word in err]
        assert not wrong, f"{where}\nthe message should not say {wrong}"
    assert not changed_outside(before, after, case.outputs), (
        f"{where}\nchanged outside {list(case.outputs)}: "
        f"{changed_outside(before, after, case.outputs)}"
    )


# ---------------------------------------------------------------------------------------------
# The corpus itself and its table in the docs
# ---------------------------------------------------------------------------------------------


def commands() -> set[str]:
    every = {name.replace("_", "-") for name in COMMAND_MODULES} - {"datasets"}
    return every | {"datasets list", "datasets get"}


def test_the_corpus_is_large_and_reaches_every_command() -> None:
    assert len(CASES) >= 110
    assert len({case.name for case in CASES}) == len(CASES), "case names must be unique"
    assert {case.kind for case in CASES} == set(KINDS)
    assert {case.command for case in CASES} == commands()
    refused = [case for case in CASES if not case.accepted]
    assert all(case.names for case in refused), "every refusal names a file or flag"
    assert all(case.check is not None for case in CASES if case.accepted or case.either)


def corpus_table() -> str:
    """The markdown table of the corpus by kind, as docs/command-bad-inputs.md holds it."""
    counts = Counter(case.kind for case in CASES)
    lines = ["| kind | cases | what is attacked |", "|---|---|---|"]
    lines += [f"| {kind} | {counts[kind]} | {KIND_TEXT[kind]} |" for kind in KINDS]
    lines.append(f"| total | {len(CASES)} | |")
    return "\n".join(lines)


def test_docs_table_counts_match_the_corpus() -> None:
    text = DOCS.read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([a-z-]+) \| (\d+) \|", text, flags=re.MULTILINE)
    documented = {kind: int(count) for kind, count in rows if kind in (*KINDS, "total")}
    expected = {**Counter(case.kind for case in CASES), "total": len(CASES)}
    assert documented == expected, f"update the table in {DOCS.name} to:\n{corpus_table()}"


# ---------------------------------------------------------------------------------------------
# Attacks that need real processes
# ---------------------------------------------------------------------------------------------


class PlantedPickle:
    """Unpickling this touches ``marker``: proof that a checkpoint file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "biotransformer", *argv]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_planted_pickle_in_a_checkpoint_is_refused_and_never_run(
    artefacts: Path, tmp_path: Path
) -> None:
    for name in ("genome.fa", "pretrain.yaml"):
        shutil.copy(artefacts / name, tmp_path / name)
    first = subprocess.run(
        cli("pretrain", "pretrain.yaml", "--output-dir", "run"),
        cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    newest = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert newest is not None
    marker = tmp_path / "pwned"
    planted = newest / "custom_checkpoint_0.pkl"
    planted.write_bytes(pickle.dumps(PlantedPickle(marker)))

    result = subprocess.run(
        cli("pretrain", "pretrain.yaml", "training.max_steps=6", "--output-dir", "run",
            "--resume", "latest"),
        cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert not marker.exists(), "resuming unpickled the planted file and ran its code"
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert planted.name in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_runs_into_one_directory_one_waits_for_nothing_and_is_refused(
    tmp_path: Path,
) -> None:
    records = sequences(480, length=60, seed=2)
    (tmp_path / "train.csv").write_text(
        "sequence,label\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(records))
    )
    argv = cli(
        "finetune", "--train", "train.csv", "--out", "run", "--preset", "tiny", "--tokenizer",
        "dna", "--epochs", "3", "--bootstrap", "0", "--max-tokens", "512", "plots=false",
    )  # fmt: skip
    logs = [(tmp_path / f"out{i}.txt", tmp_path / f"err{i}.txt") for i in range(2)]
    handles = [(open(out, "w"), open(err, "w")) for out, err in logs]  # noqa: SIM115
    try:
        processes = [
            subprocess.Popen(argv, cwd=tmp_path, env=SUBPROCESS_ENV, stdout=out, stderr=err)
            for out, err in handles
        ]
        ended: dict[int, float] = {}
        deadline = time.monotonic() + 360
        while len(ended) < 2:
            assert time.monotonic() < deadline, "the runs did not end"
            for index, process in enumerate(processes):
                if index not in ended and process.poll() is not None:
                    ended[index] = time.monotonic()
            time.sleep(0.05)
    finally:
        for out, err in handles:
            out.close()
            err.close()
    codes = [process.returncode for process in processes]
    assert sorted(code == 0 for code in codes) == [False, True], codes
    winner = codes.index(0)
    loser = 1 - winner
    message = logs[loser][1].read_text()
    assert "Traceback" not in message, message[-3000:]
    assert str(processes[winner].pid) in message, message[-3000:]
    assert ended[loser] < ended[winner], "the refused run should stop before the other ends"
    run = tmp_path / "run"
    assert (run / "model" / "config.json").is_file() and (run / "metrics.json").is_file()
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_steps = [row["step"] for row in rows if "loss" in row]
    assert train_steps and train_steps == sorted(set(train_steps)), train_steps
