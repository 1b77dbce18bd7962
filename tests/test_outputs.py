"""Where commands write (biotransformer.outputs): inputs, links, special files and files the
user put in an output directory are never replaced or removed; one run per directory."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from helpers import tiny_binary_classifier

from biotransformer.cli import main
from biotransformer.errors import BioTransformerError
from biotransformer.outputs import LOCK_FILE, RUN_RECORD, claim_run_directory, read_run_record
from biotransformer.saliency import MAX_STEM

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

SEQUENCES = ["ACGTACGTAAGGCCTT", "TTGGCCAAACGTACGA", "GGGGCCCCAAAATTTT"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained DNA binary classifier directory."""
    model = tiny_binary_classifier()
    directory = tmp_path_factory.mktemp("outputs") / "model"
    model.save_pretrained(directory)
    return directory


def fasta(path: Path, ids: list[str] | None = None) -> Path:
    ids = ids or [f"s{i}" for i in range(len(SEQUENCES))]
    path.write_text("".join(f">{i}\n{s}\n" for i, s in zip(ids, SEQUENCES * 200, strict=False)))
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` with its bytes (links as their target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(root))] = f"-> {os.readlink(path)}".encode()
        elif path.is_file():
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def refused(argv: list[str], capsys: pytest.CaptureFixture, *needles: str) -> str:
    """Run the command; assert exit 2, no traceback, and every needle in the message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def predict(model_dir: Path, data: Path, out: str | Path, *extra: str) -> list[str]:
    return ["predict", "--model", str(model_dir), "--input", str(data), "--out", str(out), *extra]


# ---------------------------------------------------------------------------------------------
# Single-file outputs
# ---------------------------------------------------------------------------------------------


def test_predict_out_equal_to_the_input_is_refused_and_the_input_kept(tmp_path, model_dir, capsys):
    data = fasta(tmp_path / "x.tsv")
    before = data.read_bytes()
    refused(predict(model_dir, data, data), capsys, "--out", "input", "x.tsv")
    refused(predict(model_dir, data, data, "--overwrite"), capsys, "input")
    assert data.read_bytes() == before


def test_out_inside_the_model_directory_is_refused(tmp_path, model_dir, capsys):
    data = fasta(tmp_path / "in.fa")
    before = tree(model_dir)
    refused(predict(model_dir, data, model_dir / "config.json", "--overwrite"), capsys, "input")
    refused(predict(model_dir, data, model_dir / "new.tsv"), capsys, "inside the input")
    assert tree(model_dir) == before


def test_links_and_special_files_are_refused_and_untouched(tmp_path, model_dir, capsys):
    data = fasta(tmp_path / "in.fa")
    real = tmp_path / "real.tsv"
    real.write_text("mine\n")
    link = tmp_path / "link.tsv"
    link.symlink_to(real)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (link, fifo):
        refused(predict(model_dir, data, target, "--overwrite"), capsys, "never")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "mine\n"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_directory_out_is_refused(tmp_path, model_dir, capsys, monkeypatch):
    data = fasta(tmp_path / "in.fa")
    refused(predict(model_dir, data, tmp_path), capsys, "is a directory", "Fix:")
    monkeypatch.chdir(tmp_path)
    refused(predict(model_dir, data, "."), capsys, "is a directory")
    refused(predict(model_dir, data, data / "below.tsv"), capsys, "is a file")


def test_an_existing_file_needs_overwrite(tmp_path, model_dir, capsys):
    data = fasta(tmp_path / "in.fa")
    out = tmp_path / "predictions.tsv"
    out.write_text("earlier\n")
    refused(predict(model_dir, data, out), capsys, "already exists", "--overwrite")
    assert out.read_text() == "earlier\n"
    assert main(predict(model_dir, data, out, "--overwrite")) == 0
    assert out.read_text().startswith("id\tprediction\tprob_0\tprob_1\n")


def test_dash_writes_the_table_to_standard_output(tmp_path, model_dir, capsys, monkeypatch):
    data = fasta(tmp_path / "in.fa")
    monkeypatch.chdir(tmp_path)
    assert main(predict(model_dir, data, "-")) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "id\tprediction\tprob_0\tprob_1"
    assert [line.split("\t")[0] for line in lines[1:]] == ["s0", "s1", "s2"]
    assert "3 predictions written" in captured.err  # the summary stays out of the pipe
    assert not (tmp_path / "-").exists()


def test_binary_outputs_refuse_dash_and_hdf5_gets_ordinary_permissions(tmp_path, model_dir, capsys):
    data = fasta(tmp_path / "in.fa")
    embed = ["embed", "--model", str(model_dir), "--input", str(data), "--out"]
    refused([*embed, "-"], capsys, "standard output", "binary")
    umask = os.umask(0o022)
    try:
        assert main([*embed, str(tmp_path / "e.h5")]) == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "e.h5").stat().st_mode) == 0o644
    with h5py.File(tmp_path / "e.h5") as handle:
        assert handle["embeddings"].shape[0] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5", "in.fa"]  # no temporary


def test_evaluate_metrics_are_strict_json(tmp_path, model_dir, capsys):
    data = tmp_path / "one-class.csv"  # a single class: MCC and AUROC are undefined (NaN)
    data.write_text("sequence,label\n" + "".join(f"{s},1\n" for s in SEQUENCES))
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--model", str(model_dir), "--data", str(data), "--bootstrap", "5"]
    assert main([*argv, "--metrics-out", str(out)]) == 0

    def bare(name: str) -> None:
        raise AssertionError(f"bare {name} in metrics.json")

    metrics = json.loads(out.read_text(), parse_constant=bare)
    assert metrics["metrics"]["auroc"]["value"] is None
    refused([*argv, "--metrics-out", str(out)], capsys, "already exists")


# ---------------------------------------------------------------------------------------------
# Directories
# ---------------------------------------------------------------------------------------------


def test_convert_refuses_a_foreign_directory_and_leaves_it_intact(tmp_path, model_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")
    before = tree(out)
    argv = ["convert", "--from", "biotransformer", str(model_dir), "--out", str(out)]
    refused(argv, capsys, "notes.txt", "not empty")
    refused([*argv, "--overwrite"], capsys, "notes.txt")
    assert tree(out) == before
    fresh = tmp_path / "fresh"
    argv[-1] = str(fresh)
    assert main(argv) == 0
    refused(argv, capsys, "already holds a model directory", "--overwrite")
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in fresh.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    refused(["convert", "--from", "biotransformer", str(fresh), "--out", str(fresh)], capsys)


def test_quickstart_keeps_user_files_and_refuses_data_inside_out(tmp_path, capsys):
    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    (project / "finetune").mkdir()
    mine = project / "data" / "mine.csv"
    mine.write_text("sequence,label\nACGT,0\n")
    (project / "finetune" / "notes.txt").write_text("keep me")
    before = tree(project)
    argv = ["quickstart", "--data", str(mine), "--out", str(project)]
    refused(argv, capsys, "is or contains the input", "mine.csv")
    refused([*argv, "--overwrite"], capsys, "mine.csv")
    elsewhere = tmp_path / "mine.csv"
    elsewhere.write_text(mine.read_text())
    refused(["quickstart", "--data", str(elsewhere), "--out", str(project)], capsys, "not empty")
    assert tree(project) == before


def test_saliency_file_names_are_safe_unique_and_all_reported(tmp_path, model_dir, capsys):
    long_id = "x" * 300
    ids = ["a/b", "a_b", "a:b", long_id]
    data = fasta(tmp_path / "in.fa", ids)
    data.write_text("".join(f">{i}\n{SEQUENCES[0]}\n" for i in ids))
    out = tmp_path / "saliency"
    argv = ["saliency", "--model", str(model_dir), "--input", str(data), "--out", str(out)]
    assert main(argv) == 0
    assert "saliency of 4 records" in capsys.readouterr().out
    index = [line.split("\t") for line in (out / "index.tsv").read_text().splitlines()[1:]]
    assert [row[0] for row in index] == ids
    stems = [row[1] for row in index]
    assert len(set(stems)) == 4 and stems[1] == "a_b"
    assert all("/" not in s and ":" not in s and len(s) <= MAX_STEM for s in stems)
    for stem in stems:
        for suffix in (".ism.tsv", ".heatmap.png", ".logo.png"):
            assert (out / f"{stem}{suffix}").is_file()
    assert len([p for p in out.iterdir() if not p.name.startswith(".")]) == 13
    refused(argv, capsys, "finished", "--overwrite")  # a second run needs --overwrite


# ---------------------------------------------------------------------------------------------
# Run directories: the record, --overwrite, the lock
# ---------------------------------------------------------------------------------------------


def test_overwrite_removes_only_what_the_earlier_run_wrote(tmp_path):
    run_dir = tmp_path / "run"
    with claim_run_directory(run_dir, command="demo") as run:
        (run.path / "model").mkdir()
        (run.path / "model" / "weights").write_text("1")
        (run.path / "log.jsonl").write_text("{}\n")
    record = read_run_record(run_dir)
    assert record["status"] == "finished" and record["files"] == ["log.jsonl", "model/weights"]
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "model" / "readme").write_text("mine too")
    with (
        pytest.raises(BioTransformerError, match="finished biotransformer demo run"),
        claim_run_directory(run_dir, command="demo"),
    ):
        pass
    with (
        pytest.raises(BioTransformerError, match="demo run, not a other run"),
        claim_run_directory(run_dir, command="other"),
    ):
        pass
    with claim_run_directory(run_dir, command="demo", overwrite=True) as run:
        assert sorted(tree(run_dir)) == [LOCK_FILE, RUN_RECORD, "model/readme", "notes.txt"]
        (run.path / "log.jsonl").write_text("new\n")
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert read_run_record(run_dir)["files"] == ["log.jsonl"]
    assert read_run_record(run_dir)["kept"] == ["model/readme", "notes.txt"]
    assert not (run_dir / LOCK_FILE).exists()


def test_a_record_cannot_make_overwrite_remove_files_outside(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    run_dir = tmp_path / "run"
    with claim_run_directory(run_dir, command="demo"):
        (run_dir / "a").write_text("a")
    record = read_run_record(run_dir)
    record["files"] += ["../precious.txt", str(outside)]
    (run_dir / RUN_RECORD).write_text(json.dumps(record))
    with claim_run_directory(run_dir, command="demo", overwrite=True):
        assert not (run_dir / "a").exists()
    assert outside.read_text() == "keep"


def test_a_failed_first_attempt_leaves_nothing(tmp_path):
    run_dir = tmp_path / "new" / "run"
    with pytest.raises(ValueError), claim_run_directory(run_dir, command="demo"):
        raise ValueError("bad input")
    assert not run_dir.exists()


HOLD = """
import sys, time
from biotransformer.outputs import claim_run_directory
with claim_run_directory(sys.argv[1], command="saliency") as run:
    (run.path / "partial.tsv").write_text("half")
    print("claimed", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
def test_a_second_run_into_a_held_directory_names_the_first(tmp_path, model_dir, capsys):
    out = tmp_path / "saliency"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "claimed"
        data = fasta(tmp_path / "in.fa")
        argv = ["saliency", "--model", str(model_dir), "--input", str(data), "--out", str(out)]
        refused(argv, capsys, "in use by another biotransformer run", f"pid {holder.pid}")
        refused([*argv, "--overwrite"], capsys, "in use", f"pid {holder.pid}")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, RUN_RECORD, "partial.tsv"]
        holder.send_signal(signal.SIGKILL)  # a crash releases the lock
        holder.wait(timeout=30)
        refused(argv, capsys, "unfinished", "--overwrite")  # what it left is not replaced...
        assert main([*argv, "--overwrite"]) == 0  # ...unless asked
        assert (out / "index.tsv").is_file() and not (out / "partial.tsv").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.mark.slow
def test_a_finished_finetune_is_refused_then_replaced_with_overwrite_keeping_user_files(
    tmp_path, capsys
):
    train = tmp_path / "train.csv"
    rows = [(SEQUENCES[i % 3] + "ACGT"[i % 4] * 4, i % 2) for i in range(60)]
    train.write_text("sequence,label\n" + "".join(f"{s},{y}\n" for s, y in rows))
    out = tmp_path / "run"
    argv = ["finetune", "--train", str(train), "--out", str(out), "--preset", "tiny"]
    argv += ["--epochs", "1", "--bootstrap", "0", "training.log_every=1"]
    assert main(argv) == 0
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")
    metrics = (out / "metrics.json").read_bytes()
    refused(argv, capsys, "finished biotransformer finetune run", "--overwrite")
    assert (out / "metrics.json").read_bytes() == metrics
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "model" / "config.json").is_file() and (out / "metrics.json").is_file()
    assert "notes.txt" not in read_run_record(out)["files"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_under_torchrun_a_refusal_reaches_every_rank_without_a_hang(tmp_path):
    """Only rank 0 claims the directory; rank 1 learns the refusal by broadcast and exits too."""
    import yaml

    fasta = tmp_path / "toy.fa"
    fasta.write_text(">a\n" + "ACGT" * 100 + "\n")
    out = tmp_path / "run"
    with claim_run_directory(out, command="pretrain"):
        (out / "run.json").write_text("{}")  # a finished pretraining run
    config = tmp_path / "run.yaml"
    values = {
        "model": {"preset": "tiny", "hidden_size": 16, "num_layers": 1, "num_heads": 2},
        "data": {"train_files": [str(fasta)], "tokenizer": "dna", "max_length": 64},
        "training": {"output_dir": str(out), "max_steps": 2},
    }
    config.write_text(yaml.safe_dump(values))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    launch = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "biotransformer"]
    result = subprocess.run(
        [*launch, "pretrain", str(config)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode != 0
    assert result.stderr.count("holds a finished biotransformer pretrain run") == 2  # both ranks
    assert "Traceback" not in result.stderr.split("biotransformer: error:")[0]
    assert sorted(tree(out)) == [RUN_RECORD, "run.json"]
