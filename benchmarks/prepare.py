"""``prepare`` throughput and peak memory on large generated FASTA files.

Two inputs, generated into a temporary folder and deleted afterwards (never committed):
500 Mbp in records of 1 Mbp, and one 250 Mbp record (a chromosome). Each is prepared with the
single-nucleotide scheme (``dna``, windows of 1024 tokens, 1 % held out) in a fresh child
process, which reports its own peak resident memory. Throughput counts the whole call:
checksum and index pass, windowing, tokenising and writing the shards.

Writes ``benchmarks/results/prepare.json``. ``--smoke`` runs 4 Mbp inputs in seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from biotransformer.atomic import atomic_write
from biotransformer.environment import machine, versions

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "prepare.json"
LINE = 80
TARGETS = {"mbp_per_s": 50.0, "peak_memory_gib": 1.0}
SPEC = "dna"

CHILD = """
import json, resource, sys
from biotransformer.data.shards import prepare_corpus
from biotransformer.tokenizers import Tokenizer
summary = prepare_corpus([sys.argv[1]], Tokenizer.from_spec(sys.argv[3]), sys.argv[2],
                         window_tokens=1024, valid_fraction=0.01, progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({**summary.to_dict(), "mbp_per_s": summary.mbp_per_s, "peak_bytes": peak}))
"""


def generate(path: Path, records: int, record_bases: int, seed: int = 0) -> None:
    """Random A/C/G/T FASTA with 80-letter lines, written 1 Mbp at a time."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", np.uint8)
    piece = 1_000_000  # a multiple of LINE
    with open(path, "wb") as handle:
        for record in range(records):
            handle.write(f">record{record} generated\n".encode())
            for start in range(0, record_bases, piece):
                size = min(piece, record_bases - start)
                bases = letters[rng.integers(0, 4, size, dtype=np.uint8)]
                lines = size // LINE
                body = np.empty((lines, LINE + 1), np.uint8)
                body[:, :LINE] = bases[: lines * LINE].reshape(lines, LINE)
                body[:, LINE] = ord("\n")
                handle.write(body.tobytes())
                if size % LINE:
                    handle.write(bases[lines * LINE :].tobytes() + b"\n")


def measure(fasta: Path, work: Path) -> dict:
    out = work / f"{fasta.stem}-shards"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(fasta), str(out), SPEC],
        check=True,
        capture_output=True,
        text=True,
    )
    summary = json.loads(result.stdout)
    shutil.rmtree(out)
    return {
        "input_mbp": summary["bases"] / 1e6,
        "input_bytes": fasta.stat().st_size,
        "seconds": summary["seconds"],
        "mbp_per_s": summary["mbp_per_s"],
        "peak_memory_gib": summary["peak_bytes"] / 2**30,
        "sequences": summary["sequences"],
        "tokens": summary["tokens"],
        "split_by": summary["split_by"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="4 Mbp inputs, seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON path")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for generated inputs")
    args = parser.parse_args()
    cases = {
        "many_1mbp_records": (4, 1_000_000) if args.smoke else (500, 1_000_000),
        "one_250mbp_record": (1, 4_000_000) if args.smoke else (1, 250_000_000),
    }
    figures = {}
    work = Path(tempfile.mkdtemp(prefix="bt-prepare-bench-", dir=args.tmp))
    try:
        for name, (records, bases) in cases.items():
            fasta = work / f"{name}.fa"
            generate(fasta, records, bases)
            figures[name] = {"records": records, "record_bases": bases, **measure(fasta, work)}
            fasta.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    targets = {
        name: {
            "mbp_per_s": {
                "target": TARGETS["mbp_per_s"],
                "met": figure["mbp_per_s"] >= TARGETS["mbp_per_s"],
            },
            "peak_memory_gib": {
                "target": TARGETS["peak_memory_gib"],
                "met": figure["peak_memory_gib"] < TARGETS["peak_memory_gib"],
            },
        }
        for name, figure in figures.items()
    }
    result = {
        "benchmark": "prepare",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "machine": machine(),
        "versions": versions("numpy", "h5py"),
        "settings": {
            "tokenizer": SPEC,
            "window_tokens": 1024,
            "valid_fraction": 0.01,
            "input": "random A/C/G/T, 80-letter lines, uncompressed, generated and deleted",
            "timing": "whole prepare_corpus call in a fresh process; peak = its max RSS",
        },
        "figures": figures,
        "targets": targets,
        "all_targets_met": all(t["met"] for case in targets.values() for t in case.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
