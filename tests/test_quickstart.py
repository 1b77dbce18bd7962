"""The quickstart: the whole path on the synthetic task beats its own k-mer baseline."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_report import assert_table_equals_metrics, parse_report

from biotransformer import synthetic
from biotransformer.cli import build_parser
from biotransformer.config import QuickstartConfig
from biotransformer.quickstart import REPORT_IMAGES, REPORT_SECTIONS

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_quickstart(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "biotransformer", "quickstart", *args],
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )


def assert_report_matches_metrics(out) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    table = parse_report(out / "report.html")
    assert_table_equals_metrics(table, {name: metrics[name] for name in REPORT_SECTIONS})
    assert set(table.images) <= set(REPORT_IMAGES)
    return metrics


def test_cli_defaults_are_the_librarys():
    args = build_parser().parse_args(["quickstart"])
    defaults = QuickstartConfig()
    assert (args.out, args.seed, args.data) == (defaults.output_dir, defaults.seed, None)
    assert (args.pretrain_steps, args.finetune_epochs, args.bootstrap) == (
        defaults.pretrain_steps,
        defaults.finetune_epochs,
        defaults.bootstrap,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_default_quickstart_beats_its_kmer_baseline(tmp_path):
    out = tmp_path / "run"
    printed = run_quickstart("--out", str(out)).stdout
    metrics = assert_report_matches_metrics(out)
    model = metrics["test"]["metrics"]["mcc"]
    baseline = metrics["k-mer baseline test"]["metrics"]["mcc"]
    assert 0.3 <= baseline["value"] <= 0.6
    assert model["value"] > baseline["value"] + 0.15
    assert model["ci_low"] > baseline["ci_high"]  # the intervals do not even overlap
    assert metrics["task"] == synthetic.TASK_NAME
    assert set(parse_report(out / "report.html").images) == set(REPORT_IMAGES)
    for line in (f"{model['value']:.3f}", f"{baseline['value']:.3f}", "next:", "predict"):
        assert line in printed
    assert str(out / "report.html") in printed
    # the data are the seed's: the same bytes as generating them again
    train = synthetic.generate(0)["train"]
    with open(out / "data" / "train.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["sequence"] for row in rows] == train.sequences
    assert [int(row["label"]) for row in rows] == train.labels


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quickstart_on_the_users_labelled_csv(tmp_path):
    rng = np.random.default_rng(5)
    data = tmp_path / "mine.csv"
    with open(data, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seq", "class"])
        for i in range(200):
            motif = "GGGCCCGG" if i % 2 else "TTTAAATT"
            writer.writerow(["".join(rng.choice(list("ACGT"), 40)) + motif, f"c{i % 2}"])
    out = tmp_path / "run"
    options = ["--data", str(data), "--sequence-column", "seq", "--label-column", "class"]
    options += ["--out", str(out), "--pretrain-steps", "4", "--bootstrap", "20"]
    run_quickstart(*options)
    (out / "notes.txt").write_text("mine")
    run_quickstart(*options, "--seed", "1", "--overwrite")  # replaces the previous run's files
    assert (out / "notes.txt").read_text() == "mine"  # and only those
    metrics = assert_report_matches_metrics(out)
    assert metrics["task"] == str(data)
    assert metrics["seed"] == 1
    assert metrics["labels"] == ["c0", "c1"]
    assert sum(metrics["splits"].values()) == 200
    assert metrics["k-mer baseline test"]["metrics"]["mcc"]["value"] == 1.0
    for name in ("train", "valid", "test"):
        assert (out / "data" / f"{name}.csv").exists()
