"""Tokenisation speed: biotransformer's schemes against the tools people use today.

On the same sequences, in interleaved rounds (median of rounds):

- ``protein`` against HuggingFace ``EsmTokenizer`` (built from ESM-2's vocabulary, written
  to a temporary file; nothing is downloaded);
- overlapping 6-mers (``dna-kmer:k=6``) against a plain Python loop over a k-mer dict;

on 101-letter inputs (GUE tf_0 DNA; proteome cut into pieces) and 2 kb inputs (genome and
proteome pieces). Real data come from ``../shared/data`` when present, random letters
otherwise. Our timing includes letter validation, padding and the attention mask; the peers
validate nothing (unknown letters become ``<unk>``). Each call encodes one batch of about
26 k letters (256 x 101, 13 x 2 kb), a training batch; each contestant first warms up.

``large_batches`` also times ours alone on 128 k-letter batches: there the int64 outputs are
big enough for glibc to map fresh pages on every call, and page faults, not tokenising, set
the speed.

Writes ``benchmarks/results/tokenization.json`` atomically. ``--smoke`` runs tiny sizes in seconds.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gzip
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from biotransformer.atomic import atomic_write
from biotransformer.environment import machine, versions
from biotransformer.tokenizers import ESM2_TOKENS, Tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIOTRANSFORMER_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "tokenization.json"
LENGTHS = {"101": 101, "2k": 2000}
BATCH_LETTERS = 26_000
LARGE_BATCH_LETTERS = 128_000
TARGETS = {  # letters per second on 101-letter inputs, and speed-ups over the peers
    "protein_101_per_s": 50e6,
    "kmer6_101_per_s": 100e6,
    "protein_101_vs_esm": 100.0,
    "kmer6_101_vs_python": 20.0,
}


# ----------------------------------------------------------------------------- inputs


def _pieces(text: str, length: int, count: int) -> list[str]:
    text = text * (1 + length * count // max(len(text), 1))
    return [text[i * length : (i + 1) * length] for i in range(count)]


def _random(alphabet: str, size: int, seed: int) -> str:
    letters = np.frombuffer(alphabet.encode(), np.uint8)
    return letters[np.random.default_rng(seed).integers(0, len(letters), size)].tobytes().decode()


def _fasta_text(path: Path, limit: int) -> str:
    parts, size = [], 0
    with gzip.open(path, "rt") as handle:
        for line in handle:
            if not line.startswith(">"):
                parts.append(line.strip().rstrip("*"))
                size += len(parts[-1])
                if size >= limit:
                    break
    return "".join(parts)


def load_inputs(count: dict[str, int]) -> tuple[dict[str, dict[str, list[str]]], str]:
    """DNA and protein inputs for each length: real data if ../shared/data is there."""
    need = max(LENGTHS[name] * n for name, n in count.items())
    if SHARED_DATA.is_dir():
        genome = _fasta_text(next((SHARED_DATA / "genomes").glob("*.fna.gz")), need)
        proteome = _fasta_text(next((SHARED_DATA / "proteins").glob("*.faa.gz")), need)
        with open(SHARED_DATA / "gue" / "tf_0" / "train.csv", newline="") as handle:
            rows = itertools.islice(csv.DictReader(handle), count["101"])
            tf = [row["sequence"] for row in rows]
        source = "../shared/data: GUE tf_0 (101 bp), C. diphtheriae genome, bacterial proteome"
    else:
        genome = _random("ACGT", need, 0)
        proteome = _random("LAGVSERTIDPKQNFYMHWC", need, 1)
        tf = _pieces(_random("ACGT", 101 * count["101"], 2), 101, count["101"])
        source = "random letters (../shared/data absent)"
    inputs = {
        "101": {"dna": tf, "protein": _pieces(proteome, 101, count["101"])},
        "2k": {
            "dna": _pieces(genome, 2000, count["2k"]),
            "protein": _pieces(proteome, 2000, count["2k"]),
        },
    }
    return inputs, source


# ----------------------------------------------------------------------------- contestants


def batched(encode: Callable[[Sequence[str]], object], size: int) -> Callable[[list[str]], None]:
    def run(seqs: list[str]) -> None:
        for start in range(0, len(seqs), size):
            encode(seqs[start : start + size])

    return run


def python_kmer_loop(k: int, tokenizer: Tokenizer) -> Callable[[Sequence[str]], np.ndarray]:
    """The plain Python way: uppercase, slide a window, look each k-mer up in a dict."""
    vocab = {token: i for i, token in enumerate(tokenizer.tokens)}
    cls, unk, pad = tokenizer.cls_id, tokenizer.unk_id, tokenizer.pad_id

    def encode(seqs: Sequence[str]) -> np.ndarray:
        rows = []
        for seq in seqs:
            seq = seq.upper()
            rows.append([cls] + [vocab.get(seq[i : i + k], unk) for i in range(len(seq) - k + 1)])
        width = max(map(len, rows))
        return np.array([row + [pad] * (width - len(row)) for row in rows], np.int64)

    return encode


def esm_tokenizer(directory: Path) -> Callable[[Sequence[str]], object] | None:
    try:
        from transformers import EsmTokenizer
    except ImportError:
        return None
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(ESM2_TOKENS) + "\n")
    esm = EsmTokenizer(vocab_file=str(vocab))
    return lambda seqs: esm(list(seqs), padding=True, return_tensors="np")


def timed(run: Callable[[list[str]], None], seqs: list[str], min_seconds: float) -> float:
    """Seconds for one pass over ``seqs``, repeating fast runs to last ``min_seconds``."""
    repeats, start = 0, time.perf_counter()
    while True:
        run(seqs)
        repeats += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / repeats


def compare(
    contestants: dict[str, Callable[[list[str]], None]],
    seqs: list[str],
    rounds: int,
    min_seconds: float,
    warm_up: float,
) -> dict[str, float]:
    """Median letters per second of each contestant, in interleaved rounds."""
    letters = sum(map(len, seqs))
    for run in contestants.values():
        timed(run, seqs, warm_up)  # steady state: glibc's malloc adapts its mmap threshold
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, run in contestants.items():
            times[name].append(timed(run, seqs, min_seconds))
    return {name: letters / statistics.median(values) for name, values in times.items()}


# ----------------------------------------------------------------------------- main


def run_benchmark(smoke: bool) -> dict[str, object]:
    count = {"101": 64, "2k": 4} if smoke else {"101": 4096, "2k": 200}
    rounds, min_seconds, warm_up = (2, 0.0, 0.0) if smoke else (7, 0.05, 0.5)
    inputs, source = load_inputs(count)
    protein = Tokenizer.from_spec("protein")
    kmer = Tokenizer.from_spec("dna-kmer:k=6")
    figures: dict[str, dict[str, float | None]] = {}
    large_batches: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        esm = esm_tokenizer(Path(tmp))
        for name, length in LENGTHS.items():
            batch = max(1, BATCH_LETTERS // length)
            contestants = {"biotransformer": batched(protein.encode_batch, batch)}
            if esm is not None:
                contestants["hf_esm_tokenizer"] = batched(esm, batch)
            speed = compare(contestants, inputs[name]["protein"], rounds, min_seconds, warm_up)
            figures[f"protein_{name}"] = {
                "biotransformer_per_s": speed["biotransformer"],
                "hf_esm_tokenizer_per_s": speed.get("hf_esm_tokenizer"),
            }
            contestants = {
                "biotransformer": batched(kmer.encode_batch, batch),
                "python_dict_loop": batched(python_kmer_loop(6, kmer), batch),
            }
            speed = compare(contestants, inputs[name]["dna"], rounds, min_seconds, warm_up)
            figures[f"kmer6_{name}"] = {
                "biotransformer_per_s": speed["biotransformer"],
                "python_dict_loop_per_s": speed["python_dict_loop"],
            }
            large = max(1, LARGE_BATCH_LETTERS // length)
            large_batches[name] = {
                f"{scheme}_per_s": compare(
                    {scheme: batched(tok.encode_batch, large)},
                    inputs[name][alphabet],
                    rounds,
                    min_seconds,
                    warm_up,
                )[scheme]
                for scheme, tok, alphabet in (
                    ("protein", protein, "protein"),
                    ("kmer6", kmer, "dna"),
                )
            }
    ratios: dict[str, float | None] = {}
    for name in LENGTHS:
        esm_speed = figures[f"protein_{name}"]["hf_esm_tokenizer_per_s"]
        ours = figures[f"protein_{name}"]["biotransformer_per_s"]
        ratios[f"protein_{name}_vs_esm"] = None if esm_speed is None else ours / esm_speed
        loop = figures[f"kmer6_{name}"]
        ratios[f"kmer6_{name}_vs_python"] = (
            loop["biotransformer_per_s"] / loop["python_dict_loop_per_s"]
        )
    values = {
        "protein_101_per_s": figures["protein_101"]["biotransformer_per_s"],
        "kmer6_101_per_s": figures["kmer6_101"]["biotransformer_per_s"],
        "protein_101_vs_esm": ratios["protein_101_vs_esm"],
        "kmer6_101_vs_python": ratios["kmer6_101_vs_python"],
    }
    targets = {
        key: {
            "target": goal,
            "value": values[key],
            "met": None if values[key] is None else values[key] >= goal,
        }
        for key, goal in TARGETS.items()
    }
    return {
        "benchmark": "tokenize",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke": smoke,
        "machine": machine(),
        "versions": versions("numpy", "tokenizers", "transformers"),
        "settings": {
            "rounds": rounds,
            "statistic": "median of interleaved rounds",
            "batch_letters": BATCH_LETTERS,
            "sequences": count,
            "source": source,
            "units": "letters (bases or residues) per second, validation included for ours",
        },
        "figures": figures,
        "large_batches": {"batch_letters": LARGE_BATCH_LETTERS, **large_batches},
        "ratios": ratios,
        "targets": targets,
        "all_targets_met": all(t["met"] for t in targets.values()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes")
    args = parser.parse_args(argv)
    result = run_benchmark(args.smoke)
    with atomic_write(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    for name, figure in result["figures"].items():
        shown = ", ".join(f"{key} {value / 1e6:.1f} M" for key, value in figure.items() if value)
        print(f"{name}: {shown}")
    for name, target in result["targets"].items():
        print(f"{name}: {target['value']} (target {target['target']:g}, met: {target['met']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
