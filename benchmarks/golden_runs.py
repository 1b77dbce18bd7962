"""Golden runs: fingerprints of a fixed set of CPU runs, to show a refactor changed no numbers.

Five command-line runs on generated data (the quickstart's synthetic promoter task, and a
regression task derived from it): a tiny masked-LM pretraining, a binary fine-tune from it with
``--tune-threshold``, a regression fine-tune of a new model, ``predict`` with the binary model
and ``embed`` with the pretrained one. For each run it records a SHA-256 of every model's
tensors (names and bytes, not the file, so metadata may change), of ``metrics.json`` less its
timings, of the training losses in ``log.jsonl``, of the predictions TSV and of each embedding
array, plus the stripped metrics themselves so that a difference can be read.

    python benchmarks/golden_runs.py --record    # writes benchmarks/results/golden_runs.json
    python benchmarks/golden_runs.py             # reruns and compares with that file

The comparison exits 1 and names every fingerprint that differs. Runs are on CPU with one
thread, so on one machine they are bit-reproducible.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from safetensors.numpy import load_file

from biotransformer.atomic import write_json
from biotransformer.environment import machine, versions
from biotransformer.synthetic import generate, write_csv, write_fasta

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "golden_runs.json"
TIMING_KEYS = ("seconds", "tokens_per_s", "saved_at", "started_at", "finished_at")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def strip_timings(value: Any) -> Any:
    """``value`` without the keys that hold wall-clock times or speeds."""
    if isinstance(value, dict):
        return {k: strip_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [strip_timings(item) for item in value]
    return value


def weights_digest(model_dir: Path) -> str:
    tensors = load_file(model_dir / "model.safetensors")
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        hasher.update(name.encode())
        hasher.update(np.ascontiguousarray(tensors[name]).tobytes())
    return hasher.hexdigest()


def losses_digest(log: Path) -> str:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    losses = [(row["step"], row["loss"]) for row in rows if "loss" in row]
    return digest(json.dumps(losses).encode())


def text_or_array_digest(values: np.ndarray | str, work: Path) -> str:
    """Numbers by their bytes; text (record ids name their file) with the run's temporary
    folder replaced by ``WORK``."""
    if isinstance(values, str) or values.dtype.kind in "OSU":
        items = [values] if isinstance(values, str) else list(np.ravel(values))
        texts = [v.decode() if isinstance(v, bytes) else str(v) for v in items]
        return digest("\n".join(t.replace(str(work), "WORK") for t in texts).encode())
    return digest(np.ascontiguousarray(values).tobytes())


def run_fingerprint(out: Path) -> dict[str, Any]:
    """The fingerprints of one training run directory."""
    metrics = strip_timings(json.loads((out / "metrics.json").read_text()))
    return {
        "weights": weights_digest(out / "model"),
        "metrics": digest(json.dumps(metrics, sort_keys=True).encode()),
        "losses": losses_digest(out / "log.jsonl"),
        "metrics_stripped": metrics,
    }


def regression_csv(sequences: list[str], path: Path) -> Path:
    """A planted numeric effect: GC content (x10) plus the number of TATA boxes."""
    values = [10 * (s.count("G") + s.count("C")) / len(s) + s.count("TATA") for s in sequences]
    return write_csv(sequences, [f"{v:.4f}" for v in values], path)


def biotransformer(*arguments: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "biotransformer", *arguments]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(arguments[:1])} failed:\n{result.stderr[-4000:]}")


def golden_runs(work: Path) -> dict[str, Any]:
    """Run the five commands in ``work`` and return their fingerprints."""
    splits = generate(seed=0)
    data = {
        name: write_csv(s.sequences, s.labels, work / f"{name}.csv") for name, s in splits.items()
    }
    corpus = write_fasta(splits["train"].sequences, work / "corpus.fasta")
    regression = {
        name: regression_csv(s.sequences, work / f"{name}_value.csv") for name, s in splits.items()
    }
    pretrain, binary, values = work / "pretrain", work / "binary", work / "regression"
    biotransformer(
        "pretrain", "pretrain_dna_tiny", f"data.train_files=[{corpus}]",
        f"training.output_dir={pretrain}", "training.max_steps=30", "training.warmup_steps=5",
        "training.eval_every=10", "training.save_every=10", "model.max_length=80",
        "data.max_length=80", "data.window_tokens=66",
    )  # fmt: skip
    biotransformer(
        "finetune", "--model", str(pretrain / "model"), "--train", str(data["train"]),
        "--valid", str(data["valid"]), "--test", str(data["test"]), "--task", "classification",
        "--tune-threshold", "--epochs", "1", "--bootstrap", "50", "--out", str(binary),
        "plots=false",
    )  # fmt: skip
    biotransformer(
        "finetune", "--preset", "tiny", "--tokenizer", "dna", "--train",
        str(regression["train"]), "--valid", str(regression["valid"]), "--test",
        str(regression["test"]), "--task", "regression", "--epochs", "1", "--bootstrap", "50",
        "--out", str(values), "plots=false",
    )  # fmt: skip
    predictions, embeddings = work / "predictions.tsv", work / "embeddings.h5"
    biotransformer(
        "predict", "--model", str(binary / "model"), "--input", str(data["test"]),
        "--out", str(predictions),
    )  # fmt: skip
    biotransformer(
        "embed", "--model", str(pretrain / "model"), "--input", str(data["test"]),
        "--out", str(embeddings),
    )  # fmt: skip
    arrays: dict[str, str] = {}
    with h5py.File(embeddings, "r") as handle:
        for name, item in handle.items():
            arrays[name] = text_or_array_digest(item[()], work)
    with open(predictions, newline="") as handle:
        rows = sum(1 for _ in csv.reader(handle, delimiter="\t")) - 1
    return {
        "pretrain": run_fingerprint(pretrain),
        "finetune_binary": run_fingerprint(binary),
        "finetune_regression": run_fingerprint(values),
        "predict": {"tsv": text_or_array_digest(predictions.read_text(), work), "rows": rows},
        "embed": arrays,
    }


def differences(recorded: Any, current: Any, where: str = "") -> list[str]:
    """Every path at which the fingerprints differ."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(recorded) | set(current)):
            if key not in recorded or key not in current:
                found.append(
                    f"{where}/{key}: only in {'current' if key in current else 'recorded'}"
                )
            else:
                found.extend(differences(recorded[key], current[key], f"{where}/{key}"))
        return found
    return [] if recorded == current else [f"{where}: {recorded!r} -> {current!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help=f"write {RESULT.name}")
    parser.add_argument("--out", type=Path, default=RESULT, help="the fingerprints file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        runs = golden_runs(Path(work))
    if args.record:
        write_json(
            args.out,
            {
                "benchmark": "golden_runs",
                "date": datetime.date.today().isoformat(),
                "machine": machine(),
                **versions("torch", "accelerate", "numpy"),
                "runs": runs,
            },
        )
        print(f"recorded {args.out}")
        return 0
    recorded = json.loads(args.out.read_text())["runs"]
    found = differences(recorded, runs)
    for line in found:
        print(line)
    print("identical to the golden runs" if not found else f"{len(found)} differences")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
