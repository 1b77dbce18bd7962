"""Device and precision flags, and streamed inference outputs: chunked writes, --resume after a
real kill, one output from two ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from helpers import run_torchrun, tiny_binary_classifier

from biotransformer.cli import main
from biotransformer.devices import place_model, resolve_device, resolve_dtype, resolve_placement
from biotransformer.errors import ConfigError
from biotransformer.inference import embed_records, predict_records
from biotransformer.io import SequenceRecord

RNG = np.random.default_rng(7)
RECORDS = [
    SequenceRecord(f"r{i}", "".join(RNG.choice(list("ACGT"), int(RNG.integers(8, 90)))))
    for i in range(60)
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny classifier saved with its tokenizer, and a FASTA of the 60 records."""
    root = tmp_path_factory.mktemp("stream")
    model = tiny_binary_classifier()
    model.save_pretrained(root / "model", tokenizer=model.tokenizer)
    (root / "in.fa").write_text("".join(f">{r.id}\n{r.sequence}\n" for r in RECORDS))
    return root


# ---------------------------------------------------------------------------------------------
# --device and --dtype
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusals are for a machine without")
@pytest.mark.parametrize("name", ["cuda", "cuda:1", "mps"])
def test_a_device_that_is_not_there_is_refused_naming_the_flag(name):
    if name == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    with pytest.raises(ConfigError, match=f"--device {name}.*Fix: use --device cpu"):
        resolve_device(name)


def test_auto_takes_the_cpu_here_in_fp32_and_fp16_on_the_cpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    placement = resolve_placement("auto", "auto")
    assert placement.device == torch.device("cpu") and placement.dtype == torch.float32
    with pytest.raises(ConfigError, match=r"--dtype fp16 on the CPU.*Fix: use --dtype bf16"):
        resolve_dtype("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="'tpu' is not one of"):
        resolve_device("tpu")


def test_under_a_launcher_each_rank_is_told_to_take_its_own_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        pytest.skip("no GPU: the rank's GPU is checked where there are GPUs")
    with pytest.raises(ConfigError, match="would put every rank on one GPU"):
        resolve_device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda", 1)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bf16_weights_embed_and_predict_like_fp32_on_the_cpu():
    fp32 = tiny_binary_classifier()
    bf16 = place_model(tiny_binary_classifier(), resolve_placement("cpu", "bf16"))
    assert next(bf16.parameters()).dtype == torch.bfloat16
    assert all(b.dtype != torch.bfloat16 for b in bf16.buffers())
    a = embed_records(fp32, RECORDS[:30]).pooled
    b = embed_records(bf16, RECORDS[:30]).pooled
    assert b.dtype == np.float32
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99
    scores = predict_records(bf16, RECORDS[:30], bf16.task).scores
    np.testing.assert_allclose(
        scores, predict_records(fp32, RECORDS[:30], fp32.task).scores, atol=0.02
    )


def test_the_flags_reach_the_model_of_a_command(model_dir, tmp_path, capsys):
    base = ["--model", str(model_dir / "model"), "--input", str(model_dir / "in.fa")]
    out = tmp_path / "p.tsv"
    assert main(["predict", *base, "--out", str(out), "--device", "cpu", "--dtype", "bf16"]) == 0
    assert len(out.read_text().splitlines()) == len(RECORDS) + 1
    with pytest.raises(SystemExit):
        main(["predict", *base, "--out", str(tmp_path / "q.tsv"), "--dtype", "fp8"])
    assert "--dtype: invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_chunked_outputs_equal_the_in_memory_results(model_dir, tmp_path):
    model = tiny_binary_classifier()
    base = ["--model", str(model_dir / "model"), "--input", str(model_dir / "in.fa")]
    main(["embed", *base, "--out", str(tmp_path / "e.h5"), "--per-token", "--chunk-records", "7"])
    main(["predict", *base, "--out", str(tmp_path / "p.tsv"), "--chunk-records", "7"])
    whole = embed_records(model, RECORDS, per_token=True)
    with h5py.File(tmp_path / "e.h5") as handle:
        assert [name.decode() for name in handle["ids"][()]] == [r.id for r in RECORDS]
        np.testing.assert_allclose(handle["embeddings"][()], whole.pooled, atol=1e-5)
        np.testing.assert_array_equal(handle["offsets"][()], whole.offsets)
        np.testing.assert_allclose(handle["tokens"][()], whole.tokens, atol=1e-5)
        assert handle["embeddings"].chunks is not None and handle["embeddings"].maxshape[0] is None
    rows = [line.split("\t") for line in (tmp_path / "p.tsv").read_text().splitlines()[1:]]
    scores = predict_records(model, RECORDS, model.task).scores
    np.testing.assert_allclose([[float(x) for x in row[2:]] for row in rows], scores, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside


def _h5_arrays(path):
    with h5py.File(path) as handle:
        return {name: handle[name][()] for name in handle}


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["embed", "predict"])
def test_a_killed_run_resumes_to_the_output_of_an_uninterrupted_one(
    model_dir, tmp_path, command, capsys
):
    suffix = ".h5" if command == "embed" else ".tsv"
    killed, whole = tmp_path / f"killed{suffix}", tmp_path / f"whole{suffix}"
    base = [command, "--model", str(model_dir / "model"), "--input", str(model_dir / "in.fa")]
    base += ["--chunk-records", "2"] + (["--per-token"] if command == "embed" else [])
    progress = tmp_path / f".{killed.name}.partial.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "biotransformer", *base, "--out", str(killed)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        if progress.is_file() and json.loads(progress.read_text() or "{}").get("records", 0) >= 6:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads(progress.read_text())["records"]
    assert 6 <= done < len(RECORDS) and not killed.exists()
    assert main([*base, "--out", str(killed)]) == 2
    assert "add --resume to continue it" in capsys.readouterr().err
    assert main([*base, "--out", str(killed), "--resume", "--max-tokens", "999"]) == 2
    assert "differs in max_tokens" in capsys.readouterr().err
    assert main([*base, "--out", str(killed), "--resume"]) == 0
    assert main([*base, "--out", str(whole)]) == 0
    assert not progress.exists()
    if command == "predict":
        assert killed.read_bytes() == whole.read_bytes()
        return
    resumed, reference = _h5_arrays(killed), _h5_arrays(whole)
    assert set(resumed) == set(reference) == {"embeddings", "ids", "windows", "tokens", "offsets"}
    for name, values in reference.items():
        np.testing.assert_array_equal(resumed[name], values, err_msg=name)


TWO_RANKS = """
import sys
from biotransformer.cli import main
from biotransformer.runtime import leave_process_group
code = main(sys.argv[1:])
leave_process_group()
sys.exit(code)
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_ranks_write_one_output_equal_to_one_process(model_dir, tmp_path):
    (tmp_path / "run.py").write_text(TWO_RANKS)
    base = ["embed", "--model", str(model_dir / "model"), "--input", str(model_dir / "in.fa")]
    base += ["--chunk-records", "25", "--max-tokens", "256"]
    run_torchrun(
        [str(tmp_path / "run.py"), *base, "--out", str(tmp_path / "two.h5")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert main([*base, "--out", str(tmp_path / "one.h5")]) == 0
    two, one = _h5_arrays(tmp_path / "two.h5"), _h5_arrays(tmp_path / "one.h5")
    np.testing.assert_array_equal(two["ids"], one["ids"])
    np.testing.assert_allclose(two["embeddings"], one["embeddings"], atol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_score_variants_streams_chunks_equal_to_one_pass(model_dir, tmp_path):
    from biotransformer.heads import load_model
    from biotransformer.variants import read_reference, read_variants, score_head

    sequence = RECORDS[0].sequence
    (tmp_path / "ref.fa").write_text(f">ref\n{sequence}\n")
    rows = [
        f"v{i}\t{i + 1}\t{sequence[i]}\t{'A' if sequence[i] != 'A' else 'C'}"
        for i in range(0, len(sequence), 3)
    ]
    (tmp_path / "v.tsv").write_text("id\tposition\tref\talt\n" + "\n".join(rows) + "\n")
    out = tmp_path / "scores.tsv"
    arguments = ["score-variants", "--model", str(model_dir / "model")]
    arguments += ["--reference", str(tmp_path / "ref.fa"), "--variants", str(tmp_path / "v.tsv")]
    assert main([*arguments, "--out", str(out), "--chunk-records", "4"]) == 0
    model = load_model(model_dir / "model")
    reference = read_reference(tmp_path / "ref.fa")
    variants = read_variants(tmp_path / "v.tsv", reference)
    expected = score_head(model, model.task, variants, reference)
    table = [line.split("\t") for line in out.read_text().splitlines()]
    assert table[0] == ["id", "record", "mutations", "delta_0", "delta_1"]
    assert [row[0] for row in table[1:]] == [variant.id for variant in variants]
    written = np.array([[float(value) for value in row[3:]] for row in table[1:]])
    np.testing.assert_allclose(written, np.stack(list(expected.values()), axis=1), atol=1e-6)
