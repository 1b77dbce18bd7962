"""Default fine-tuning against the composition baseline, on every labelled set at hand.

Each run is ``finetune`` with no settings beyond the files, the task and the seed: every other
value is the default that ``finetune_defaults`` resolves for the data (a new encoder, since no
pretrained model is given). Its verdict (``metrics.json["verdict"]``) holds the composition
baseline fitted on the same training split and scored on the same test split, and the paired
bootstrap interval of model minus baseline. Data sets:

- ``prom_300_tata``, ``tf_0``: the GUE train/dev/test files in the shared data folder;
- ``amp``: the AMP-vs-UniProt peptide CSV as shipped, split 80/10/10 by ``finetune`` itself
  (after de-duplication; the split depends on the seed);
- ``multiclass``: generated DNA, 100 bp, three classes: a TATA-like box near the start
  (``near``), near the end (``far``) or absent (``none``); k-mer counts see whether a box is
  there, not where;
- ``regression``: generated DNA, 100 bp, value = 1.5 x (box near the start) - 1.0 x (box near
  the end) + Gaussian noise (sd 0.5); the two boxes are drawn independently.

Goal (issue 21): on each data set the mean test metric (MCC; R^2 for regression) beats the
baseline by more than two standard deviations of the model's metric over the seeds, and each
run (training, evaluation, baseline) takes under 15 minutes on the project's 2-core CPU.
Runs go to a pool of ``--jobs`` single-thread worker processes, seed after seed, and the JSON
is rewritten after every run, so an interrupted benchmark still reports what it measured.

    python benchmarks/finetune_defaults.py    # writes benchmarks/results/finetune_defaults.json
    python benchmarks/finetune_defaults.py --seeds 0 --datasets amp multiclass
    python benchmarks/finetune_defaults.py --smoke --out /tmp/fd.json   # seconds

A probe changes settings on top of the defaults (``--set KEY=VALUE``, a ``FinetuneConfig``
key or ``training.KEY``; recorded in the JSON's ``settings.config_extra``) and writes to its
own ``--out``:

    python benchmarks/finetune_defaults.py --datasets tf_0 --seeds 0 --set pooling=max \
        --out /tmp/probe.json
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from biotransformer.environment import machine, versions

REPO = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 15 * 60
GOAL_SDS = 2.0
BOX = "TATAAAAG"
NEAR, FAR = (15, 25), (65, 75)  # where a box may start (inclusive)
GENERATED_SIZES = {"train": 2000, "valid": 400, "test": 1000}
SMOKE_SIZES = {"train": 60, "valid": 30, "test": 30}
DATASETS = ("prom_300_tata", "tf_0", "amp", "multiclass", "regression")
SMOKE_CONFIG = {"preset": "tiny", "max_steps": 4, "bootstrap": 10}


# ---------------------------------------------------------------------------------------------
# Generated tasks with a known answer
# ---------------------------------------------------------------------------------------------


def _plant(rng: np.random.Generator, sequence: list[str], window: tuple[int, int]) -> None:
    """Write the box (each base kept with probability 0.9) at a start drawn from ``window``."""
    start = int(rng.integers(window[0], window[1] + 1))
    for offset, base in enumerate(BOX):
        sequence[start + offset] = base if rng.random() < 0.9 else str(rng.choice(list("ACGT")))


def generated_rows(kind: str, size: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """``size`` (sequence, label) rows of the ``multiclass`` or ``regression`` task."""
    rows = []
    for _ in range(size):
        sequence = list(rng.choice(list("ACGT"), size=100))
        if kind == "multiclass":
            label = str(rng.choice(["near", "far", "none"]))
            if label != "none":
                _plant(rng, sequence, NEAR if label == "near" else FAR)
        else:
            near, far = rng.random() < 0.5, rng.random() < 0.5
            for present, window in ((near, NEAR), (far, FAR)):
                if present:
                    _plant(rng, sequence, window)
            label = f"{1.5 * near - 1.0 * far + rng.normal(0.0, 0.5):.4f}"
        rows.append(("".join(sequence), label))
    return rows


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sequence", "label"])
        writer.writerows(rows)
    return path


def dataset_files(name: str, data: Path, work: Path, sizes: dict[str, int]) -> dict[str, Any]:
    """The files and task of data set ``name`` (generated ones written to ``work``)."""
    if name in ("prom_300_tata", "tf_0"):
        folder = data / "gue" / name
        files = {"train": folder / "train.csv", "valid": folder / "dev.csv"}
        return {**files, "test": folder / "test.csv", "task": "classification"}
    if name == "amp":
        return {"train": data / "peptides" / "AMPvsUniProt.csv", "task": "classification"}
    rng = np.random.default_rng({"multiclass": 1, "regression": 2}[name])
    files = {
        split: write_rows(work / f"{name}_{split}.csv", generated_rows(name, size, rng))
        for split, size in sizes.items()
    }
    return {**files, "task": "classification" if name == "multiclass" else "regression"}


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def finetune_run(name: str, files: dict[str, Any], out: Path, seed: int, extra: dict) -> dict:
    """``finetune`` on defaults (plus ``extra`` config values in smoke mode); its verdict,
    resolved settings and seconds (wall time of the whole run, baseline included)."""
    from biotransformer.config import FinetuneConfig
    from biotransformer.finetuning import finetune

    config = FinetuneConfig(
        train=str(files["train"]),
        valid=None if "valid" not in files else str(files["valid"]),
        test=None if "test" not in files else str(files["test"]),
        output_dir=str(out),
        task=files["task"],
        plots=False,
    )
    config.training.seed = seed
    for key, value in extra.items():
        section, _, field = key.rpartition(".")
        setattr(config.training if section == "training" else config, field, value)
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        result = finetune(config)
    seconds = time.perf_counter() - started
    run = json.loads((out / "run.json").read_text())
    verdict = result.metrics["verdict"]
    return {
        "dataset": name,
        "seed": seed,
        "metric": verdict["metric"],
        "model": verdict["model"],
        "baseline": verdict["baseline"]["value"],
        "baseline_name": verdict["baseline"]["name"],
        "difference": verdict["difference"],
        "ci95": verdict["ci95"],
        "beats_baseline": verdict["beats_baseline"],
        "warnings": verdict["warnings"],
        "n_test": verdict["n"],
        "steps": result.metrics["steps"],
        "best_step": result.best_step,
        "stopped_early_at": result.metrics.get("stopped_early_at"),
        "settings": {key: _setting(config, run, key) for key in run["settings"]},
        "seconds": round(seconds, 1),
    }


def _setting(config: Any, run: dict, key: str) -> Any:
    """The value a run resolved for ``key`` (from its config.yaml)."""
    import yaml

    resolved = yaml.safe_load((Path(config.output_dir) / "config.yaml").read_text())
    section, _, name = key.rpartition(".")
    return (resolved[section] if section else resolved)[name]


def _key_value(text: str, parser: argparse.ArgumentParser) -> tuple[str, Any]:
    """``KEY=VALUE`` as (key, the value read as YAML)."""
    import yaml

    from biotransformer.config import FinetuneConfig, TrainingConfig

    key, equals, value = text.partition("=")
    if not equals or not key:
        parser.error(f"--set {text!r}: expected KEY=VALUE, e.g. pooling=max or training.lr=1e-3")
    section, _, field = key.rpartition(".")
    fields = {f.name for f in dataclasses.fields(TrainingConfig if section else FinetuneConfig)}
    if section not in ("", "training") or field not in fields:
        parser.error(f"--set {key}: not a FinetuneConfig key (or training.KEY)")
    return key, yaml.safe_load(value)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


class _InProcess:
    """An executor that runs each call at once (``--jobs 0``: smoke mode, no workers)."""

    def submit(self, function: Callable[..., Any], /, *args: Any) -> Future:
        future: Future = Future()
        future.set_result(function(*args))
        return future


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def summarise(runs: list[dict]) -> dict:
    """Per data set: model mean and sd over seeds, baseline mean, difference mean, whether
    the difference exceeds ``GOAL_SDS`` sds of the model metric, slowest run."""
    summary = {}
    for name in dict.fromkeys(run["dataset"] for run in runs):
        mine = [run for run in runs if run["dataset"] == name]
        model = [run["model"] for run in mine]
        sd = statistics.stdev(model) if len(model) > 1 else None
        difference = statistics.mean(run["difference"] for run in mine)
        slowest = max(run["seconds"] for run in mine)
        summary[name] = {
            "metric": mine[0]["metric"],
            "seeds": [run["seed"] for run in mine],
            "model_mean": statistics.mean(model),
            "model_sd": sd,
            "baseline_mean": statistics.mean(run["baseline"] for run in mine),
            "difference_mean": difference,
            "beats_by_2_sd": None if sd is None else difference > GOAL_SDS * sd,
            "max_seconds": slowest,
            "within_15_min": slowest <= GOAL_SECONDS,
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny generated sets, seconds")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("BIOTRANSFORMER_SHARED_DATA", REPO.parent / "shared" / "data")),
        help="the shared data folder (default: $BIOTRANSFORMER_SHARED_DATA or ../shared/data)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="result JSON, rewritten after every run (default: results/finetune_defaults.json)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds")
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="data sets"
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (0: in-process)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a probe: a FinetuneConfig key (or training.KEY) set on top of the defaults, the "
        "value read as YAML; repeatable; needs --out",
    )
    args = parser.parse_args(argv)
    if args.set and args.out is None:
        parser.error("--set changes the defaults: give the probe its own --out")
    args.out = args.out or REPO / "benchmarks" / "results" / "finetune_defaults.json"
    if args.smoke:
        args.datasets, args.seeds, args.jobs = ["multiclass", "regression"], [0], 0
    sizes, extra = (SMOKE_SIZES, SMOKE_CONFIG) if args.smoke else (GENERATED_SIZES, {})
    extra = {**extra, **dict(_key_value(text, parser) for text in args.set)}
    started, load_before = time.perf_counter(), os.getloadavg()
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "mode": "smoke" if args.smoke else "full",
        "machine": {
            **machine(),
            "torch_threads": 1,
            "jobs": args.jobs,
            "load_average_1_5_15min_at_start": load_before,
        },
        "versions": versions("torch", "scikit-learn"),
        "goal": f"model mean beats the baseline by > {GOAL_SDS} sd of the model over seeds; "
        f"each run under {GOAL_SECONDS} s",
        "settings": {"seeds": args.seeds, "datasets": args.datasets, "config_extra": extra},
        "runs": [],
    }

    def record(run: dict) -> None:
        result["runs"].append(run)
        result["summary"] = summarise(result["runs"])
        result["machine"]["load_average_1_5_15min_at_end"] = os.getloadavg()
        result["wall_time_s"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"{run['dataset']} seed {run['seed']}: {run['metric']} {run['model']:.3f} vs "
            f"baseline {run['baseline']:.3f} ({run['seconds']:.0f} s)",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="finetune-defaults-") as tmp:
        work = Path(tmp)
        files = {name: dataset_files(name, args.data, work, sizes) for name in args.datasets}
        context = (
            ProcessPoolExecutor(args.jobs, get_context("spawn"), initializer=_one_thread)
            if args.jobs
            else contextlib.nullcontext(_InProcess())
        )
        with context as pool:
            futures = [
                pool.submit(finetune_run, name, files[name], work / f"{name}_{seed}", seed, extra)
                for seed in args.seeds
                for name in args.datasets
            ]
            for future in futures:
                record(future.result())
    print(f"wrote {args.out} in {result['wall_time_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
