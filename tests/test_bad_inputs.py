"""Every command against generated bad inputs, as documented in docs/command-bad-inputs.md:
accepted (exit 0) or refused (exit 2) with one message naming the file and the fix."""

from __future__ import annotations

import gzip
import itertools
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_binary_classifier

from biotransformer.cli import main
from biotransformer.io import read_sequences

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "docs" / "command-bad-inputs.md"
COMMANDS = ("prepare", "finetune", "evaluate", "predict", "embed", "score-variants")
RECORDS = 12
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def random_sequences(alphabet: str = "ACGT", count: int = RECORDS, length: int = 40) -> list[str]:
    rng = random.Random(len(alphabet))
    return ["".join(rng.choice(alphabet) for _ in range(length)) for _ in range(count)]


def fasta(
    header: Callable[[int], str] = lambda i: f"s{i} label={i % 2}",
    sequence: Callable[[str], str] = lambda s: s,
    newline: str = "\n",
    alphabet: str = "ACGT",
) -> bytes:
    """Labelled FASTA, two classes, with a hook to spoil the headers or sequences."""
    records = random_sequences(alphabet)
    text = "".join(f">{header(i)}{newline}{sequence(s)}{newline}" for i, s in enumerate(records))
    return text.encode()


def csv_rows(header: str | None) -> bytes:
    rows = "".join(f"{s},{i % 2}\n" for i, s in enumerate(random_sequences()))
    return ((header + "\n") if header else "").encode() + rows.encode()


def bad_inputs() -> dict[str, tuple[str, bytes]]:
    """Each case as (file name, content); the long single line is built by its own test."""
    compressed = gzip.compress(fasta())
    garbage = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    return {
        "empty-file": ("x.fa", b""),
        "only-headers": ("x.fa", fasta(sequence=lambda s: "")),
        "no-header": ("x.fa", "\n".join(random_sequences()).encode()),
        "sequence-before-header": ("x.fa", b"ACGTACGT\n" + fasta()),
        "crlf": ("x.fa", fasta(newline="\r\n")),
        "mixed-case": ("x.fa", fasta(sequence=lambda s: s[:20].lower() + s[20:])),
        "genbank-text": (
            "x.fa",
            fasta(sequence=lambda s: f"        1 {s[:10].lower()} {s[10:20].lower()}"),
        ),
        "fastq-as-fasta": (
            "x.fa",
            "".join(
                f"@s{i} label={i % 2}\n{s}\n+\n{'I' * len(s)}\n"
                for i, s in enumerate(random_sequences())
            ).encode(),
        ),
        "protein-as-dna": ("x.fa", fasta(alphabet="ACDEFGHIKLMNPQRSTVWY")),
        "binary-garbage": ("x.fa", garbage + b"\0"),
        "truncated-gzip": ("x.fa.gz", compressed[: len(compressed) // 2]),
        "duplicate-ids": ("x.fa", fasta(header=lambda i: f"s{i % 6} label={i % 2}")),
        "unicode-headers": ("x.fa", fasta(header=lambda i: f"séq_{i}_α label={i % 2} descripción")),
        "missing-labels": (
            "x.fa",
            fasta(header=lambda i: f"s{i}" + ("" if i == 5 else f" label={i % 2}")),
        ),
        "wrong-label-type": (
            "x.fa",
            fasta(header=lambda i: f"s{i} label={'high' if i else 'low'}"),
        ),
        "csv-wrong-columns": ("x.csv", csv_rows("seq,y")),
        "csv-no-header": ("x.csv", csv_rows(None)),
    }


def documented() -> dict[str, dict[str, tuple[str, str | None]]]:
    """``{case: {command: (behaviour, message fragment)}}`` from the table."""
    lines = TABLE.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| case |"))
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    rows = [line.split(" | ") for line in table]  # the first table only: the corpus follows
    rows = [[cell.strip(" |") for cell in row] for row in rows if row[0].startswith("| ")]
    header, *cases = rows
    assert header == ["case", "input", *COMMANDS]
    table = {}
    for case, _, *cells in cases:
        entries = {}
        for command, cell in zip(COMMANDS, cells, strict=True):
            match = re.fullmatch(r"(accepted|refused|-)(?: `(.+)`)?", cell)
            assert match, (case, command, cell)
            entries[command] = (match[1], match[2])
        table[case] = entries
    return table


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained DNA binary classifier: the commands' behaviour, not its quality."""
    model = tiny_binary_classifier()
    directory = tmp_path_factory.mktemp("bad-inputs") / "model"
    model.save_pretrained(directory)
    return directory


def command_line(command: str, case: str, path: Path, model: Path, out: Path) -> list[str]:
    """The argument list that gives ``path`` to ``command`` (see the table's preamble)."""
    labels = [] if path.suffix == ".csv" else ["--label-from", "key:label"]
    task = ["--task", "regression"] if case == "wrong-label-type" else []
    variants = out / "variants.tsv"
    variants.write_text(variant_row(path))
    return {
        "prepare": ["prepare", str(path), "--tokenizer", "dna", "--out", str(out / "shards")],
        "finetune": [
            "finetune", "--train", str(path), "--out", str(out / "run"), "--preset", "tiny",
            "--tokenizer", "dna", "--epochs", "1", "--bootstrap", "0", "--max-tokens", "256",
            *labels, *task, "plots=false",
        ],
        "evaluate": [
            "evaluate", "--model", str(model), "--data", str(path), "--bootstrap", "0",
            "--metrics-out", str(out / "metrics.json"), *labels,
        ],
        "predict": [
            "predict", "--model", str(model), "--input", str(path), "--out", str(out / "p.tsv"),
        ],
        "embed": ["embed", "--model", str(model), "--input", str(path), "--out", str(out / "e.h5")],
        "score-variants": [
            "score-variants", "--model", str(model), "--reference", str(path),
            "--variants", str(variants), "--out", str(out / "scores.tsv"),
        ],
    }[command]  # fmt: skip


def variant_row(path: Path) -> str:
    """A substitution at position 1 of the file's first record (any record for bad files)."""
    header = "id\tsequence\tposition\tref\talt\n"
    try:
        first = next(read_sequences(path, label_column=None))
    except Exception:  # a bad file: the reference is refused before the variants are read
        return header + "v1\ts0\t1\tA\tC\n"
    ref = first.sequence[0].upper()
    return header + f"v1\t{first.id}\t1\t{ref}\t{'G' if ref == 'C' else 'C'}\n"


def check(
    status: int, stderr: str, path: Path, behaviour: str, fragment: str | None, where: str
) -> None:
    assert "Traceback" not in stderr, where
    if behaviour == "accepted":
        assert status == 0, f"{where}: {stderr}"
        return
    message = [line for line in stderr.splitlines() if line.startswith("biotransformer: error")]
    assert status == 2 and len(message) == 1, f"{where}: status {status}, {stderr}"
    assert fragment in message[0], f"{where}: {message[0]}"
    assert str(path) in message[0] and "Fix:" in message[0], f"{where}: {message[0]}"


def test_table_covers_every_generated_case_and_command() -> None:
    table = documented()
    assert set(table) == set(bad_inputs()) | {"long-single-line"}
    assert all(set(entries) == set(COMMANDS) for entries in table.values())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(bad_inputs()))
def test_each_command_handles_each_case_as_documented(
    case: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, content = bad_inputs()[case]
    path = tmp_path / name
    path.write_bytes(content)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for command, (behaviour, fragment) in documented()[case].items():
            out = tmp_path / command
            out.mkdir()
            status = main(command_line(command, case, path, model_dir, out))
            check(status, capsys.readouterr().err, path, behaviour, fragment, f"{case}/{command}")
            if behaviour == "accepted" and command == "predict":
                assert len((out / "p.tsv").read_text().splitlines()) == RECORDS + 1
    finally:
        torch.set_num_threads(threads)


def test_accepted_inputs_are_normalised(model_dir: Path, tmp_path: Path) -> None:
    for case, expected_ids in (
        ("crlf", [f"s{i}" for i in range(RECORDS)]),
        ("unicode-headers", [f"séq_{i}_α" for i in range(RECORDS)]),
    ):
        path = tmp_path / f"{case}.fa"
        path.write_bytes(bad_inputs()[case][1])
        out = tmp_path / f"{case}.tsv"
        assert (
            main(["predict", "--model", str(model_dir), "--input", str(path), "--out", str(out)])
            == 0
        )
        rows = out.read_text(encoding="utf-8").splitlines()[1:]
        assert [row.split("\t")[0] for row in rows] == expected_ids
    records = list(read_sequences(tmp_path / "crlf.fa", label_from="key:label"))
    assert all("\r" not in r.sequence and r.label in ("0", "1") for r in records)


@pytest.mark.timeout(120)
def test_refusals_reach_the_terminal_without_a_traceback(model_dir: Path, tmp_path: Path) -> None:
    """Through the console entry point, in a fresh process: one line, exit status 2."""
    for case, command in (("truncated-gzip", "prepare"), ("binary-garbage", "predict")):
        name, content = bad_inputs()[case]
        path = tmp_path / f"{case}-{name}"
        path.write_bytes(content)
        out = tmp_path / f"{case}-out"
        out.mkdir()
        argv = command_line(command, case, path, model_dir, out)
        result = subprocess.run(
            [sys.executable, "-m", "biotransformer", *argv],
            capture_output=True,
            text=True,
            env=SUBPROCESS_ENV,
            timeout=100,
        )
        behaviour, fragment = documented()[case][command]
        check(result.returncode, result.stderr, path, behaviour, fragment, f"{case}/{command}")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_50_mbp_single_line_is_prepared_and_refused_by_finetune_as_documented(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chr.fa"
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)[
        np.random.default_rng(0).integers(0, 4, 50_000_000, dtype=np.uint8)
    ]
    with open(path, "wb") as handle:
        handle.write(b">chr1 label=1\n")
        handle.write(bases.tobytes())
        handle.write(b"\n")
    del bases
    for command, (behaviour, fragment) in documented()["long-single-line"].items():
        if behaviour == "-":
            continue
        out = tmp_path / command
        out.mkdir()
        status = main(command_line(command, "long-single-line", path, model_dir, out))
        check(status, capsys.readouterr().err, path, behaviour, fragment, command)
