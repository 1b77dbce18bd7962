"""Every fine-tuning task end to end on planted-signal data: finetune -> evaluate -> predict
-> report, and the result is well above chance, not only an exit status 0.

The matrix covers each dimension at least once (not every cross product):

| task                         | input | start                | driven through |
|------------------------------|-------|----------------------|----------------|
| 3-class (labels a/b/c)       | CSV   | new encoder          | the CLI        |
| binary                       | FASTA | new encoder          | the Python API |
| 3-class (labels 0/1/2)       | FASTA | warm start + LoRA    | the Python API |
| multilabel                   | CSV   | warm start           | the Python API |
| regression (planted effect)  | FASTA | new encoder          | the Python API |
| token classification         | CSV   | new encoder          | the Python API |

Each model is then evaluated (``evaluate --report-dir``) and used (``predict``) on a fresh
file drawn from the same planted rule. Training length and learning rate are set explicitly
(tiny models, k-mer tokens, a few dozen steps), so the numbers do not move with the
package's defaults. Trained models are shared through module-scoped fixtures.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import reset_accelerate_state
from scipy import stats
from sklearn.metrics import matthews_corrcoef

from biotransformer.cli import main
from biotransformer.config import FinetuneConfig, TrainingConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MOTIFS = {"a": "TATAAA", "b": "GCGCGC", "c": "CACGTG"}
LENGTH = 40
# A tiny encoder that learns a planted 6-mer in a few dozen steps: overlapping 3-mer tokens.
TINY = {
    "preset": "tiny",
    "tokenizer": "dna-kmer:k=3",
    "model": {"hidden_size": 32, "ffn_size": 64},
}
TRAINING = {"max_steps": 30, "max_tokens": 1024, "bootstrap": 20}
# The API runs skip their own plots: the command-line run and every `evaluate --report-dir`
# draw them.
API = {**TRAINING, "plots": False}
LR = 5e-3


# ---------------------------------------------------------------------------------------------
# Planted-signal data: the label is a rule of the sequence
# ---------------------------------------------------------------------------------------------


def planted(rng: np.random.Generator, motifs: list[str]) -> tuple[str, list[int]]:
    """A random sequence with each motif written in at its own non-overlapping place; the
    start of each."""
    letters = list(rng.choice(list("ACGT"), LENGTH))
    slots = rng.choice(LENGTH // 6, size=len(motifs), replace=False)
    starts = []
    for motif, slot in zip(motifs, slots, strict=True):
        start = int(slot) * 6
        letters[start : start + 6] = motif
        starts.append(start)
    return "".join(letters), starts


def classes(n: int, names: list[str], seed: int) -> list[tuple[str, str]]:
    """(sequence, label): class k carries motif k twice."""
    rng = np.random.default_rng(seed)
    motifs = list(MOTIFS.values())
    rows = []
    for i in range(n):
        k = i % len(names)
        rows.append((planted(rng, [motifs[k]] * 2)[0], names[k]))
    return rows


def multilabels(n: int, seed: int) -> list[tuple[str, str]]:
    """(sequence, labels): each motif present or not, at least one; labels comma-joined."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        present = [name for name in MOTIFS if rng.random() < 0.5] or [str(rng.choice(["a", "c"]))]
        rows.append((planted(rng, [MOTIFS[name] for name in present])[0], ",".join(present)))
    return rows


def values(n: int, seed: int) -> list[tuple[str, str]]:
    """(sequence, value): the value is the number of TATAAA copies (0-3) plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        copies = i % 4
        sequence = planted(rng, [MOTIFS["a"]] * copies)[0]
        rows.append((sequence, f"{copies + rng.normal(0, 0.1):.3f}"))
    return rows


def token_labels(n: int, seed: int) -> list[tuple[str, str]]:
    """(sequence, per-residue labels): ``m`` on the residues of a planted TATAAA, ``.``
    elsewhere."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        sequence, starts = planted(rng, [MOTIFS["a"]] * (1 + i % 2))
        marks = ["."] * LENGTH
        for start in starts:
            marks[start : start + 6] = "m" * 6
        rows.append((sequence, "".join(marks)))
    return rows


def write_csv(rows: list[tuple[str, str]], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sequence", "label"])
        writer.writerows(rows)
    return path


def write_fasta(rows: list[tuple[str, str]], path: Path, key: str) -> Path:
    path.write_text("".join(f">r{i} {key}={label}\n{seq}\n" for i, (seq, label) in enumerate(rows)))
    return path


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


def cli(*arguments: str) -> None:
    """One ``biotransformer`` command in this process; it must succeed."""
    reset_accelerate_state()
    assert main([str(argument) for argument in arguments]) == 0, arguments


def finetune_api(out: Path, train: Path, task: str, **options) -> Path:
    """``finetune`` through the Python API; the run directory."""
    from biotransformer.finetuning import finetune

    reset_accelerate_state()
    read = options.pop("read", {})
    settings = {**TINY, **API, **options}
    if "model_dir" in settings:
        settings = {k: v for k, v in settings.items() if k not in TINY}
    config = FinetuneConfig(
        train=str(train),
        output_dir=str(out),
        task=task,
        training=TrainingConfig(lr=LR, schedule="linear", min_lr_ratio=0.0, seed=0),
        **settings,
    )
    for key, value in read.items():
        setattr(config.read, key, value)
    finetune(config)
    return out


def use(run: Path, data: Path, *read_flags: str) -> tuple[dict, list[dict]]:
    """``evaluate --report-dir`` and ``predict`` of the run's model on ``data``: the
    evaluation's metrics and the prediction rows."""
    model = run / "model"
    cli(
        "evaluate", "--model", model, "--data", data, "--bootstrap", "20",
        "--metrics-out", run / "eval.json", "--report-dir", run / "evaluate", *read_flags,
    )  # fmt: skip
    assert (run / "evaluate" / "report.html").exists()
    cli("predict", "--model", model, "--input", data, "--out", run / "new.tsv")
    with (run / "new.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return json.loads((run / "eval.json").read_text()), rows


def held_out_metrics(run: Path) -> dict:
    """The test split's metric values from ``metrics.json``."""
    metrics = json.loads((run / "metrics.json").read_text())
    return {name: entry["value"] for name, entry in metrics["test"]["metrics"].items()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("matrix")


@pytest.fixture(scope="module")
def multiclass_cli(work: Path) -> Path:
    """3 classes a/b/c from CSV, a new encoder, through the command line."""
    train = write_csv(classes(240, ["a", "b", "c"], seed=0), work / "abc.csv")
    out = work / "abc"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        cli(
            "finetune", "--train", train, "--task", "classification", "--out", out,
            "--preset", "tiny", "--tokenizer", "dna-kmer:k=3", "--lr", LR,
            "--max-tokens", 1024, "--bootstrap", 20,
        "max_steps=30", "model.hidden_size=32", "model.ffn_size=64",
        )  # fmt: skip
    (work / "abc_stdout.txt").write_text(printed.getvalue())
    return out


# ---------------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------------


def test_multiclass_csv_new_model_through_the_cli(multiclass_cli, work):
    """Issue 21: 3+ classes crashed after training and in ``evaluate --report-dir``."""
    run = multiclass_cli
    assert held_out_metrics(run)["mcc"] > 0.6  # chance: 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["threshold"] is None and "threshold" not in metrics["test"]  # arg-max
    printed = (work / "abc_stdout.txt").read_text()
    # no silent minutes after training: each step of the final evaluation says what it does
    steps = ["on valid: 24 records, 20 bootstrap", "on test: 24 records", "writing the plots"]
    positions = [printed.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), printed
    report = (run / "report.html").read_text()
    assert "3-class classification (a, b, c) of abc.csv, model: new tiny encoder" in report
    new = write_csv(classes(60, ["a", "b", "c"], seed=1), work / "abc_new.csv")
    evaluation, rows = use(run, new)
    assert evaluation["metrics"]["mcc"]["value"] > 0.6
    truth = [label for _, label in classes(60, ["a", "b", "c"], seed=1)]
    accuracy = np.mean([row["prediction"] == label for row, label in zip(rows, truth, strict=True)])
    assert accuracy > 0.75  # chance: 1/3
    assert {"prob_a", "prob_b", "prob_c"} <= set(rows[0])


def test_a_finished_finetune_is_not_overwritten(multiclass_cli, work, capsys):
    run = multiclass_cli
    before = (run / "model" / "model.safetensors").read_bytes()
    reset_accelerate_state()
    code = main(
        ["finetune", "--train", str(work / "abc.csv"), "--out", str(run), "--preset", "tiny"]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "finished" in error and "--overwrite" in error
    assert (run / "model" / "model.safetensors").read_bytes() == before


def test_binary_fasta_new_model(work):
    train = write_fasta(classes(200, ["neg", "pos"], seed=2), work / "binary.fa", "class")
    run = finetune_api(work / "binary", train, "classification", read={"label_from": "key:class"})
    assert held_out_metrics(run)["mcc"] > 0.6
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["threshold"] == metrics["test"]["threshold"] == 0.5  # what decided
    new = write_fasta(classes(60, ["neg", "pos"], seed=3), work / "binary_new.fa", "class")
    evaluation, rows = use(run, new, "--label-from", "key:class")
    assert evaluation["metrics"]["auroc"]["value"] > 0.85  # chance: 0.5
    assert [row["prediction"] for row in rows].count("pos") in range(20, 41)


def test_numeric_multiclass_fasta_warm_start_with_lora(multiclass_cli, work):
    """Labels 0/1/2 (numbers) from FASTA headers, LoRA on the encoder of the a/b/c model."""
    rows = classes(240, ["0", "1", "2"], seed=4)
    train = write_fasta(rows, work / "numeric.fa", "class")
    run = finetune_api(
        work / "lora",
        train,
        "classification",
        model_dir=str(multiclass_cli / "model"),
        lora="r=4,alpha=8",
        read={"label_from": "key:class"},
    )
    assert json.loads((run / "metrics.json").read_text())["labels"] == ["0", "1", "2"]
    assert held_out_metrics(run)["mcc"] > 0.6
    assert (run / "adapter").is_dir()
    new = write_fasta(classes(60, ["0", "1", "2"], seed=5), work / "numeric_new.fa", "class")
    evaluation, predicted = use(run, new, "--label-from", "key:class")
    assert evaluation["metrics"]["mcc"]["value"] > 0.6
    assert {row["prediction"] for row in predicted} == {"0", "1", "2"}


def test_multilabel_csv_warm_start(multiclass_cli, work):
    train = write_csv(multilabels(240, seed=6), work / "multilabel.csv")
    run = finetune_api(
        work / "multilabel", train, "multilabel", model_dir=str(multiclass_cli / "model")
    )
    assert held_out_metrics(run)["mcc"] > 0.5
    new_rows = multilabels(60, seed=7)
    new = write_csv(new_rows, work / "multilabel_new.csv")
    evaluation, predicted = use(run, new)
    assert evaluation["metrics"]["mcc"]["value"] > 0.5
    truth = np.array([[name in label.split(",") for name in MOTIFS] for _, label in new_rows])
    calls = np.array(
        [[name in row["prediction"].split(",") for name in MOTIFS] for row in predicted]
    )
    assert matthews_corrcoef(truth.ravel(), calls.ravel()) > 0.5


def test_regression_fasta_new_model(work):
    train = write_fasta(values(240, seed=8), work / "values.fa", "value")
    run = finetune_api(work / "regression", train, "regression", read={"label_from": "key:value"})
    assert held_out_metrics(run)["spearman"] > 0.6
    new_rows = values(60, seed=9)
    new = write_fasta(new_rows, work / "values_new.fa", "value")
    evaluation, predicted = use(run, new, "--label-from", "key:value")
    assert evaluation["metrics"]["spearman"]["value"] > 0.6
    truth = [float(value) for _, value in new_rows]
    assert stats.spearmanr(truth, [float(row["prediction"]) for row in predicted])[0] > 0.6
    assert "predicted vs true" in (run / "evaluate" / "report.html").read_text()


def test_token_classification_csv_new_model(work):
    train = write_csv(token_labels(200, seed=10), work / "tokens.csv")
    run = finetune_api(work / "tokens", train, "token-classification")
    assert held_out_metrics(run)["mcc"] > 0.5
    new = write_csv(token_labels(40, seed=11), work / "tokens_new.csv")
    evaluation, predicted = use(run, new)
    assert evaluation["metrics"]["mcc"]["value"] > 0.5
    assert len(predicted[0]["prediction"]) > 0
