"""End to end through the command line on real data: finetune, evaluate, predict, embed."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from biotransformer.cli import main

pytestmark = pytest.mark.slow


def subset(source, target, rows):
    lines = source.read_text().splitlines(keepends=True)
    target.write_text("".join(lines[: rows + 1]))
    return target


def read_tsv(path):
    return list(csv.DictReader(path.open(), delimiter="\t"))


def metric_values(result):
    return {name: entry["value"] for name, entry in result["metrics"].items()}


@pytest.fixture(scope="module")
def gue_run(shared_data, tmp_path_factory):
    """A tiny model fine-tuned on 200 prom_300_tata rows, threshold tuned on validation."""
    tmp = tmp_path_factory.mktemp("gue")
    folder = shared_data / "gue" / "prom_300_tata"
    files = {
        split: subset(folder / f"{split}.csv", tmp / f"{split}.csv", rows)
        for split, rows in (("train", 200), ("dev", 80), ("test", 80))
    }
    out = tmp / "run"
    status = main(
        [
            "finetune",
            "--train", str(files["train"]),
            "--valid", str(files["dev"]),
            "--test", str(files["test"]),
            "--preset", "tiny",
            "--tokenizer", "dna",  # one token per base: the per-token embeddings below
            "--out", str(out),
            "--epochs", "2",
            "--lr", "1e-3",
            "--tune-threshold",
            "--bootstrap", "50",
            "evals_per_epoch=2",
        ]
    )  # fmt: skip
    assert status == 0
    return files, out


@pytest.mark.timeout(120)
def test_finetune_writes_its_outputs_and_metrics_equal_scikit_learn(gue_run):
    _, out = gue_run
    for name in (
        "metrics.json",
        "config.yaml",
        "run.json",
        "log.jsonl",
        "report.html",
        "roc.png",
        "precision_recall.png",
        "confusion_matrix.png",
        "training_curves.png",
        "predictions_valid.tsv",
        "predictions_test.tsv",
    ):
        assert (out / name).is_file(), name
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / "model" / name).is_file(), name
    assert not (out / "model" / "task.json").exists()  # the head's config holds the task
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 80 and metrics["valid"]["n"] == 80
    threshold = metrics["threshold"]
    head = json.loads((out / "model" / "config.json").read_text())["head"]
    assert head["threshold"] == threshold
    rows = read_tsv(out / "predictions_test.tsv")
    truth = np.array([int(r["label"]) for r in csv.DictReader((out.parent / "test.csv").open())])
    p1 = np.array([float(r["prob_1"]) for r in rows])
    predicted = (p1 >= threshold).astype(int)
    assert [r["prediction"] for r in rows] == [str(p) for p in predicted]
    values = metric_values(metrics["test"])
    assert values["mcc"] == pytest.approx(skm.matthews_corrcoef(truth, predicted), abs=1e-12)
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(truth, predicted), abs=1e-12)
    assert values["f1"] == pytest.approx(skm.f1_score(truth, predicted), abs=1e-12)
    assert values["auroc"] == pytest.approx(skm.roc_auc_score(truth, p1), abs=1e-12)
    assert values["auprc"] == pytest.approx(skm.average_precision_score(truth, p1), abs=1e-12)
    run = json.loads((out / "run.json").read_text())
    assert run["splits"]["sizes"] == {"train": 200, "valid": 80, "test": 80}
    assert run["seed"] == 0


@pytest.mark.timeout(120)
def test_evaluate_predict_embed_on_the_saved_model(gue_run, tmp_path):
    files, out = gue_run
    model = str(out / "model")
    assert main(["evaluate", "--model", model, "--data", str(files["test"]),
                 "--metrics-out", str(tmp_path / "m.json"), "--bootstrap", "50",
                 "--report-dir", str(tmp_path / "report")]) == 0  # fmt: skip
    evaluated = json.loads((tmp_path / "m.json").read_text())
    saved = json.loads((out / "metrics.json").read_text())["test"]
    assert evaluated["metrics"].keys() == saved["metrics"].keys()
    for name, entry in saved["metrics"].items():
        assert evaluated["metrics"][name] == pytest.approx(entry, abs=1e-6), name
    assert (tmp_path / "report" / "report.html").is_file()

    assert main(["predict", "--model", model, "--input", str(files["test"]),
                 "--out", str(tmp_path / "p.tsv")]) == 0  # fmt: skip
    predicted = read_tsv(tmp_path / "p.tsv")
    assert predicted == read_tsv(out / "predictions_test.tsv")
    assert [r["id"] for r in predicted] == [f"test:{line}" for line in range(2, 82)]

    embed = ["embed", "--model", model, "--input", str(files["test"]), "--per-token"]
    assert main([*embed, "--out", str(tmp_path / "e.h5"), "--layers", "-1", "1"]) == 0
    with h5py.File(tmp_path / "e.h5") as handle:
        assert handle["embeddings"].shape == (80, 32)
        assert handle["embeddings"].dtype == np.float32
        assert handle["offsets"][-1] == handle["tokens"].shape[0] == 80 * 300
        assert [i.decode() for i in handle["ids"][:]] == [r["id"] for r in predicted]


@pytest.mark.timeout(120)
def test_tf0_without_given_splits_is_split_without_leakage(shared_data, tmp_path):
    train = subset(shared_data / "gue" / "tf_0" / "train.csv", tmp_path / "train.csv", 300)
    out = tmp_path / "run"
    assert main(["finetune", "--train", str(train), "--task", "classification",
                 "--preset", "tiny", "--out", str(out), "--epochs", "1",
                 "--bootstrap", "20", "--class-weights", "balanced"]) == 0  # fmt: skip
    splits = json.loads((out / "run.json").read_text())["splits"]
    assert splits["cross_split_duplicates"] == 0
    assert sum(splits["sizes"].values()) + splits["removed_duplicates"] == 300
    assert splits["sizes"]["valid"] == splits["sizes"]["test"] == 30


@pytest.mark.timeout(150)
def test_peptide_csv_with_sklearn_header(shared_data, tmp_path):
    out = tmp_path / "run"
    assert main(["finetune", "--train", str(shared_data / "peptides" / "AMPvsUniProt.csv"),
                 "--preset", "tiny", "--out", str(out), "--bootstrap", "20",
                 "max_steps=8"]) == 0  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert run["alphabet"] == "protein"
    assert run["splits"]["removed_duplicates"] == 5200 - 4642
    assert run["splits"]["cross_split_duplicates"] == 0
    tokenizer = json.loads((out / "model" / "tokenizer.json").read_text())
    assert "protein" in json.dumps(tokenizer)


@pytest.mark.timeout(120)
def test_fasta_with_labels_in_headers_regression(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(120):
        sequence = "".join(rng.choice(list("ACGT"), 40))
        value = sequence.count("G") + sequence.count("C") + rng.normal(0, 1)
        lines.append(f">chr1/{i} gc={value:.3f} source=synthetic\n{sequence}\n")
    (tmp_path / "train.fa").write_text("".join(lines))
    out = tmp_path / "run"
    assert main(["finetune", "--train", str(tmp_path / "train.fa"), "--task", "regression",
                 "--label-from", "key:gc", "--preset", "tiny", "--out", str(out),
                 "--epochs", "2", "--bootstrap", "20"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    rows = read_tsv(out / "predictions_test.tsv")
    assert all(r["id"].startswith("chr1/") for r in rows)
    values = {r["id"]: float(r["value"]) for r in rows}
    truth = {f"chr1/{i}": float(line.split("gc=")[1].split()[0]) for i, line in enumerate(lines)}
    y = np.array([truth[k] for k in values])
    p = np.array(list(values.values()))
    result = metric_values(metrics["test"])
    assert result["pearson"] == pytest.approx(stats.pearsonr(y, p).statistic, abs=1e-9)
    assert result["spearman"] == pytest.approx(stats.spearmanr(y, p).statistic, abs=1e-9)
    assert result["r2"] == pytest.approx(skm.r2_score(y, p), abs=1e-9)
    assert result["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, p)), abs=1e-9)
    assert (out / "predicted_vs_true.png").is_file()


@pytest.mark.timeout(120)
def test_esm_classifier_exports_to_huggingface_with_the_same_predictions(gue_run, tmp_path):
    import torch
    import transformers

    from biotransformer.heads import load_model

    files, _ = gue_run
    out = tmp_path / "run"
    assert main(["finetune", "--train", str(files["train"]), "--tokenizer", "dna",
                 "--preset", "tiny", "--classifier", "esm", "--pooling", "cls",
                 "--out", str(out), "--bootstrap", "20", "max_steps=4"]) == 0  # fmt: skip
    assert main(["convert", "--from", "biotransformer", "--to", "hf", str(out / "model"),
                 "--out", str(tmp_path / "hf")]) == 0  # fmt: skip
    ours = load_model(out / "model").eval()
    theirs = transformers.EsmForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ids = torch.as_tensor(ours.tokenizer.encode("ACGTTGCAAGGCTTAACG")).long()[None]
    with torch.no_grad():
        expected = ours(ids).logits
        actual = theirs(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_bad_label_column_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("sequence,y\nACGTACGT,1\nACGTTTTT,0\n")
    status = main(["finetune", "--train", str(tmp_path / "train.csv"), "--preset", "tiny",
                   "--out", str(tmp_path / "run"), "--label-column", "label"])  # fmt: skip
    assert status == 2
    message = capsys.readouterr().err
    assert "no column 'label'" in message and "Fix:" in message
    assert "Traceback" not in message


@pytest.mark.timeout(120)
def test_token_classification_from_per_residue_labels(tmp_path):
    rng = np.random.default_rng(2)
    lines = []
    for i in range(80):
        sequence = "".join(rng.choice(list("ACGT"), 30))
        mask = "".join("1" if base in "GC" else "0" for base in sequence)
        lines.append(f">t/{i} mask={mask}\n{sequence}\n")
    (tmp_path / "tok.fa").write_text("".join(lines))
    out = tmp_path / "run"
    command = ["finetune", "--train", str(tmp_path / "tok.fa"), "--task", "token-classification",
               "--label-from", "key:mask", "--preset", "tiny", "--out", str(out)]  # fmt: skip
    assert main([*command, "--epochs", "3", "--lr", "3e-3", "--bootstrap", "10"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["unit"] == "token"
    assert metrics["test"]["n"] == 8 * 30
    assert main(["predict", "--model", str(out / "model"), "--input", str(tmp_path / "tok.fa"),
                 "--out", str(tmp_path / "p.tsv")]) == 0  # fmt: skip
    rows = read_tsv(tmp_path / "p.tsv")
    assert [len(r["prediction"]) for r in rows] == [30] * 80
