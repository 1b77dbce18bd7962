"""Each benchmark script runs end to end at tiny sizes and writes the JSON it promises."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_smoke(repo_root, tmp_path, name, *extra, timeout=120, as_module=False):
    """Run ``benchmarks/NAME.py --smoke --out TMP/NAME.json [extra]`` and return that JSON."""
    out = tmp_path / f"{name}.json"
    if as_module:  # imports its siblings as benchmarks.*, so it runs from the repository root
        command = ["-m", f"benchmarks.{name}"]
        cwd = repo_root
    else:
        command = [str(repo_root / "benchmarks" / f"{name}.py")]
        cwd = None
    subprocess.run(
        [sys.executable, *command, "--smoke", "--out", str(out), *extra],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    return json.loads(out.read_text())


def test_tokenize_benchmark_smoke(repo_root, tmp_path):
    result = run_smoke(repo_root, tmp_path, "tokenization")
    assert {"date", "machine", "versions", "figures", "ratios", "targets"} <= set(result)
    assert set(result["figures"]) == {"protein_101", "protein_2k", "kmer6_101", "kmer6_2k"}
    assert result["figures"]["kmer6_101"]["biotransformer_per_s"] > 0
    assert set(result["targets"]) == {
        "protein_101_per_s",
        "kmer6_101_per_s",
        "protein_101_vs_esm",
        "kmer6_101_vs_python",
    }


def test_prepare_benchmark_smoke(repo_root, tmp_path):
    result = run_smoke(repo_root, tmp_path, "prepare", "--tmp", str(tmp_path))
    assert {"date", "machine", "versions", "figures", "targets", "all_targets_met"} <= set(result)
    assert set(result["figures"]) == {"many_1mbp_records", "one_250mbp_record"}
    for figure in result["figures"].values():
        assert figure["mbp_per_s"] > 0 and 0 < figure["peak_memory_gib"] < 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bt-prepare-bench-")]


def test_padding_benchmark_smoke(repo_root, tmp_path):
    result = run_smoke(repo_root, tmp_path, "padding")
    assert {"date", "machine", "versions", "figures", "targets", "all_targets_met"} <= set(result)
    figures = result["figures"]
    assert figures["token_budget_real_share"] > figures["random_batches_real_share"] > 0


def test_train_throughput_benchmark_smoke(repo_root, tmp_path):
    result = run_smoke(repo_root, tmp_path, "train_throughput", as_module=True)
    assert {"synthetic", "protein", "bf16", "flops_formula", "machine", "targets"} <= set(result)
    table = result["synthetic"]["median"]
    assert {"ours", "hf_esm", "fair_esm"} <= set(table)
    assert all(row["train_tokens_per_s"] > 0 and row["mfu"] > 0 for row in table.values())
    assert result["synthetic"]["ratios"]["ours_train_vs_fair_esm"] > 0
    breakdown = result["time_breakdown"]
    for model in ("ours", "hf_esm", "fair_esm"):
        for shares in breakdown["shares"][model].values():
            assert set(shares) == {"gemm", "attention", "other"}
            assert sum(shares.values()) == pytest.approx(1.0)
    ceiling = breakdown["ceilings"]["ours_train_vs_hf_esm"]
    assert ceiling >= result["synthetic"]["ratios"]["ours_train_vs_hf_esm"]


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_gue_benchmark_smoke(repo_root, shared_data, tmp_path):
    result = run_smoke(repo_root, tmp_path, "gue", "--data", str(shared_data), timeout=170)
    assert {"date", "machine", "versions", "settings", "tasks", "peptides", "wall_time_s"} <= set(
        result
    )
    for name in ("prom_300_tata", "tf_0"):
        task = result["tasks"][name]
        for init in ("scratch", "pretrained"):  # pretrained: queued after its pretraining
            assert {"mcc_mean", "mcc_sd", "auroc_mean", "auroc_sd", "runs"} <= set(task[init])
        assert -1.0 <= task["baseline_kmer3to6_logreg_mcc"] <= 1.0
        assert "baseline_kmer3to6_logreg_auroc" in task  # NaN when a tiny test split has one class
        assert task["dnabert2_published_mcc"] > 0.7
    assert result["peptides"]["n_distinct"] == 4642
    assert "prom_300_tata 2 steps" in result["pretrained"]


def test_variants_benchmark_smoke(repo_root, tmp_path):
    result = run_smoke(repo_root, tmp_path, "variants")
    assert {"date", "machine", "versions", "figures", "ratio", "target_met"} <= set(result)
    figures = result["figures"]
    assert figures["biotransformer_variants_per_s"] > 0 and figures["fair_esm_variants_per_s"] > 0
    assert figures["max_abs_score_difference"] < 1e-3  # the same scores, computed both ways


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_embed_throughput_benchmark_smoke(repo_root, shared_data, tmp_path):
    result = run_smoke(repo_root, tmp_path, "embed_throughput", as_module=True)
    assert {"machine", "versions", "settings", "figures", "targets_met"} <= set(result)
    for name in ("proteins", "generated"):
        figure = result["figures"][name]
        assert set(figure["records_per_s"]) == {"ours", "fair_esm", "hf"}
        assert all(rate > 0 for rate in figure["records_per_s"].values())
        # the same weights in the three pipelines: the same embeddings
        assert max(figure["max_abs_difference_from_ours"].values()) < 1e-4
    assert result["figures"]["ours_first_20k"]["peak_rss_mib"] > 0


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_gpu_check_dry_run_runs_every_step_on_the_cpu(repo_root, shared_data, tmp_path):
    out = tmp_path / "gpu_check.json"
    subprocess.run(
        [str(repo_root / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=170,
    )
    result = json.loads(out.read_text())
    assert result["dry_run"] and set(result["training"]) == {"esm2_35M", "esm2_150M"}
    for figure in result["training"].values():
        assert all(rate > 0 for rate in figure["train_tokens_per_s"].values())
        assert set(figure["mfu"]) == {"ours", "hf_esm"}
    for name in ("proteins", "few"):
        assert all(rate > 0 for rate in result["embedding"][name]["records_per_s"].values())
    assert result["finetune"]["passed"], result["finetune"]


def test_scaling_benchmark_smoke(repo_root, tmp_path):
    result = run_smoke(repo_root, tmp_path, "scaling", as_module=True)
    measured, projected = result["measured"], result["projected"]
    assert measured["figures"]["single"]["tokens_per_s"] > 0
    assert 0 < measured["figures"]["single"]["mfu"] < 1
    shapes = projected["shapes"]
    assert set(shapes) == {"esm2-35M", "esm2-150M", "esm2-650M", "esm2-3B"}
    assert 6.4e8 < shapes["esm2-650M"]["parameters"] < 6.6e8
    by_gpus = shapes["esm2-650M"]["by_gpus"]
    assert set(by_gpus) == {"1", "8", "16", "64"}
    assert by_gpus["1"]["gpu_hours_per_1e9_tokens"] <= by_gpus["64"]["gpu_hours_per_1e9_tokens"]


def test_finetune_defaults_benchmark_smoke(repo_root, tmp_path):
    result = run_smoke(repo_root, tmp_path, "finetune_defaults")
    assert {"date", "machine", "versions", "goal", "settings", "runs", "summary"} <= set(result)
    assert set(result["summary"]) == {"multiclass", "regression"}
    for run in result["runs"]:  # every run's verdict, with the settings it resolved
        assert run["metric"] == ("r2" if run["dataset"] == "regression" else "mcc")
        assert run["difference"] == pytest.approx(run["model"] - run["baseline"])
        assert run["settings"]["training.lr"] == 0.002  # a new encoder's rate
        assert run["seconds"] > 0
