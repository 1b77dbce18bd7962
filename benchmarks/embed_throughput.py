"""End-to-end embedding throughput, FASTA -> HDF5: biotransformer vs fair-esm vs HF ESM.

The same weights in each: a random ESM-2-shaped model built by fair-esm (``ESM2``), imported
with ``interop.from_fair_esm`` (ours) and exported with ``interop.to_hf`` (HF ``EsmModel``,
sdpa attention). Each pipeline reads the same plain FASTA, mean-pools the last layer over the
residues and writes an HDF5 file of (N, D) float32 embeddings and ids in input order:

- ours: ``biotransformer embed --max-tokens BUDGET`` (streams chunk by chunk to the file);
- fair-esm: its ``extract.py`` loop: ``FastaBatchedDataset.from_file``, batches to a token
  budget (``get_batch_indices``), the alphabet's batch converter, ``repr_layers``, the mean
  of ``representations[1 : len + 1]``, all rows written at the end;
- HF: ``EsmTokenizer`` + ``EsmModel`` in a plain loop of ``HF_BATCH`` records in input order,
  padded to the longest, masked mean, all rows written at the end.

Every pipeline runs in its own process (2 threads, fp32), timed from reading the FASTA to
the closed HDF5 file (interpreter start excluded; ours' time includes importing its inference
code and loading its model, the peers' does not), with its peak RSS. Rounds interleave the
pipelines in a rotating order; the figures are medians. The model is ESM-2-shaped but small
(2 layers, width 128, 8 heads) so that a run fits this 2-core CPU; ``--layers/--width/--heads``
give the published shapes. Inputs: the shared 2,100-protein file (cropped to 1,022 residues,
``*`` dropped) and 200k generated short proteins (8 to 40 residues), each run by all three
pipelines. Ours also runs the first 20k generated records once: its peak RSS there against
its peak RSS at 200k records shows whether memory grows with the number of records.

    python -m benchmarks.embed_throughput            # writes results/embed_throughput.json
    python -m benchmarks.embed_throughput --smoke    # tiny sizes, in one process, seconds
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "embed_throughput.json"
SHARED = Path(os.environ.get("BIOTRANSFORMER_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
PROTEINS = SHARED / "proteins"
RESIDUES = "LAGVSERTIDPKQNFYMHWC"
MAX_RESIDUES = 1022
HF_BATCH = 16
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PIPELINES = ("ours", "fair_esm", "hf")
TARGETS = {"vs_fair_esm": 1.5, "vs_hf": 1.3, "rss_200k_over_20k": 1.25}


@dataclass(frozen=True)
class Sizes:
    num_layers: int = 2
    hidden_size: int = 128
    num_heads: int = 8
    budget: int = 8192  # tokens per batch, ours and fair-esm
    proteins: int | None = None  # None: all 2,100
    many: int = 200_000
    few: int = 20_000
    rounds: int = 3


SMOKE = Sizes(1, 32, 4, proteins=12, many=60, few=12, rounds=1)


# ---------------------------------------------------------------------------------------------
# Inputs and the shared weights
# ---------------------------------------------------------------------------------------------


def write_inputs(directory: Path, sizes: Sizes) -> dict[str, Path]:
    """The plain FASTA files every pipeline reads."""
    proteins = directory / "proteins.fa"
    sources = sorted(PROTEINS.glob("*.faa.gz"))
    if not sources:
        raise SystemExit(f"no *.faa.gz under {PROTEINS}: set BIOTRANSFORMER_SHARED_DATA")
    with proteins.open("w") as out:
        count = 0
        for path in sources:
            with gzip.open(path, "rt") as handle:
                for name, sequence in _fasta(handle):
                    if sizes.proteins is not None and count >= sizes.proteins:
                        break
                    out.write(f">{name}\n{sequence.replace('*', '')[:MAX_RESIDUES]}\n")
                    count += 1
    rng = np.random.default_rng(0)
    letters = np.array(list(RESIDUES))
    lengths = rng.integers(8, 41, sizes.many)
    paths = {name: directory / f"{name}.fa" for name in ("many", "few")}
    limits = {"many": sizes.many, "few": sizes.few}
    handles = {name: path.open("w") for name, path in paths.items()}
    for i, length in enumerate(lengths):
        text = f">g{i}\n{''.join(rng.choice(letters, length))}\n"
        for name, handle in handles.items():
            if i < limits[name]:
                handle.write(text)
    for handle in handles.values():
        handle.close()
    return {"proteins": proteins, **paths}


def _fasta(handle: Any) -> Any:
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    for title, sequence in SimpleFastaParser(handle):
        yield title.split()[0], sequence


def write_models(directory: Path, sizes: Sizes) -> dict[str, Path]:
    """fair-esm's random ESM2 checkpoint, our model directory and the HF directory, one set of
    weights."""
    import esm

    from biotransformer.interop import from_fair_esm, to_hf

    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm2.ESM2(
        sizes.num_layers, sizes.hidden_size, sizes.num_heads, alphabet=alphabet
    )
    cfg = {
        "encoder_embed_dim": sizes.hidden_size,
        "encoder_layers": sizes.num_layers,
        "encoder_attention_heads": sizes.num_heads,
        "token_dropout": True,
    }
    paths = {"fair_esm": directory / "esm2.pt", "ours": directory / "ours", "hf": directory / "hf"}
    torch.save({"cfg": {"model": cfg}, "model": model.state_dict()}, paths["fair_esm"])
    ours = from_fair_esm(paths["fair_esm"])
    ours.save_pretrained(paths["ours"], tokenizer=ours.tokenizer)
    to_hf(ours, paths["hf"])
    return paths


# ---------------------------------------------------------------------------------------------
# The three pipelines (each run in a worker process)
# ---------------------------------------------------------------------------------------------


def run_ours(
    model: Path, fasta: Path, out: Path, budget: int, device: str = "cpu", dtype: str = "fp32"
) -> float:
    from biotransformer.cli import main

    start = time.perf_counter()
    arguments = ["--model", str(model), "--input", str(fasta), "--out", str(out)]
    arguments += ["--max-tokens", str(budget), "--device", device, "--dtype", dtype]
    code = main(["embed", *arguments])
    assert code == 0, f"embed exited {code}"
    return time.perf_counter() - start


def run_fair_esm(
    model_path: Path,
    fasta: Path,
    out: Path,
    budget: int,
    device: str = "cpu",
    dtype: str = "fp32",
) -> float:
    import esm

    data = torch.load(model_path, weights_only=True)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    cfg = data["cfg"]["model"]
    model = esm.model.esm2.ESM2(
        cfg["encoder_layers"],
        cfg["encoder_embed_dim"],
        cfg["encoder_attention_heads"],
        alphabet=alphabet,
    )
    model.load_state_dict(data["model"])
    model.to(device=device, dtype=DTYPES[dtype]).eval()
    layer = cfg["encoder_layers"]
    start = time.perf_counter()
    dataset = esm.FastaBatchedDataset.from_file(str(fasta))
    batches = dataset.get_batch_indices(budget, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(
        dataset,
        collate_fn=alphabet.get_batch_converter(MAX_RESIDUES),
        batch_sampler=batches,
    )
    rows: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for labels, strs, toks in loader:
            output = model(toks.to(device), repr_layers=[layer])
            representations = output["representations"][layer].float()
            for i, label in enumerate(labels):
                length = min(MAX_RESIDUES, len(strs[i]))
                rows[label] = representations[i, 1 : length + 1].mean(0).cpu().numpy()
    _write_h5(out, dataset.sequence_labels, [rows[name] for name in dataset.sequence_labels])
    return time.perf_counter() - start


def run_hf(
    directory: Path,
    fasta: Path,
    out: Path,
    budget: int,
    device: str = "cpu",
    dtype: str = "fp32",
) -> float:
    from transformers import EsmModel, EsmTokenizer

    tokenizer = EsmTokenizer.from_pretrained(str(directory))
    model = EsmModel.from_pretrained(
        str(directory), add_pooling_layer=False, attn_implementation="sdpa"
    ).to(device=device, dtype=DTYPES[dtype])
    model.eval()
    start = time.perf_counter()
    with fasta.open() as handle:
        records = list(_fasta(handle))
    names, rows = [], []
    with torch.inference_mode():
        for first in range(0, len(records), HF_BATCH):
            batch = records[first : first + HF_BATCH]
            encoded = tokenizer(
                [sequence for _, sequence in batch],
                padding=True,
                truncation=True,
                max_length=MAX_RESIDUES + 2,
                return_tensors="pt",
            )
            encoded = encoded.to(device)
            hidden = model(**encoded).last_hidden_state.float()  # (B, T, D)
            keep = encoded["attention_mask"].clone()
            keep[:, 0] = 0  # <cls>
            rows_index = torch.arange(len(batch), device=keep.device)
            keep[rows_index, keep.sum(1)] = 0  # <eos>, the last real token
            weights = keep.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
            names += [name for name, _ in batch]
            rows += list(pooled.cpu().numpy())
    _write_h5(out, names, rows)
    return time.perf_counter() - start


def _write_h5(path: Path, names: list[str], rows: list[np.ndarray]) -> None:
    import h5py

    with h5py.File(path, "w") as handle:
        handle.create_dataset("embeddings", data=np.stack(rows).astype(np.float32))
        handle.create_dataset("ids", data=names, dtype=h5py.string_dtype(encoding="utf-8"))


RUNNERS = {"ours": run_ours, "fair_esm": run_fair_esm, "hf": run_hf}


def worker(pipeline: str, model: Path, fasta: Path, out: Path, budget: int) -> dict[str, float]:
    """Run one pipeline in this process: its seconds and this process's peak RSS."""
    torch.set_num_threads(2)
    out.unlink(missing_ok=True)
    seconds = RUNNERS[pipeline](model, fasta, out, budget)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"seconds": seconds, "peak_rss_mib": peak}


def run_worker(pipeline: str, model: Path, fasta: Path, out: Path, budget: int) -> dict:
    """``worker`` in a fresh process (its own peak RSS)."""
    command = [sys.executable, "-m", "benchmarks.embed_throughput", "--worker", pipeline]
    command += ["--model", str(model), "--fasta", str(fasta), "--h5", str(out)]
    command += ["--budget", str(budget)]
    result = subprocess.run(
        command, cwd=HERE.parent, capture_output=True, text=True, check=False, timeout=7200
    )
    if result.returncode != 0:
        raise RuntimeError(f"{pipeline} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


def pooled_difference(outputs: dict[str, Path]) -> dict[str, float]:
    """Max |difference| of each peer's embeddings from ours (the same weights: ~1e-5)."""
    import h5py

    def read(path: Path) -> tuple[list[str], np.ndarray]:
        with h5py.File(path) as handle:
            return [n.decode() for n in handle["ids"][()]], handle["embeddings"][()]

    ids, ours = read(outputs["ours"])
    result = {}
    for name in ("fair_esm", "hf"):
        their_ids, theirs = read(outputs[name])
        assert their_ids == ids, f"{name} wrote ids in another order"
        result[name] = float(np.abs(theirs - ours).max())
    return result


def measure(
    name: str, fasta: Path, models: dict[str, Path], work: Path, sizes: Sizes, smoke: bool
) -> dict[str, Any]:
    """Interleaved rounds of the three pipelines on one FASTA file."""
    records = sum(1 for line in fasta.open() if line.startswith(">"))
    timings: dict[str, list[dict[str, float]]] = {p: [] for p in PIPELINES}
    outputs = {p: work / f"{name}.{p}.h5" for p in PIPELINES}
    for round_ in range(sizes.rounds):
        order = PIPELINES[round_ % 3 :] + PIPELINES[: round_ % 3]
        for pipeline in order:
            run = worker if smoke else run_worker
            outputs[pipeline].unlink(missing_ok=True)
            timings[pipeline].append(
                run(pipeline, models[pipeline], fasta, outputs[pipeline], sizes.budget)
            )
            print(f"{name} round {round_} {pipeline}: {timings[pipeline][-1]}", flush=True)
    seconds = {p: statistics.median(t["seconds"] for t in timings[p]) for p in PIPELINES}
    return {
        "records": records,
        "records_per_s": {p: records / seconds[p] for p in PIPELINES},
        "seconds_median": seconds,
        "peak_rss_mib": {p: max(t["peak_rss_mib"] for t in timings[p]) for p in PIPELINES},
        "rounds": timings,
        "ratios": {
            "ours_vs_fair_esm": seconds["fair_esm"] / seconds["ours"],
            "ours_vs_hf": seconds["hf"] / seconds["ours"],
        },
        "max_abs_difference_from_ours": pooled_difference(outputs),
    }


def run(sizes: Sizes, output: Path, *, smoke: bool) -> dict[str, Any]:
    from biotransformer.atomic import write_json
    from biotransformer.environment import machine, versions

    with tempfile.TemporaryDirectory(prefix="bt-embed-bench-") as directory:
        work = Path(directory)
        inputs = write_inputs(work, sizes)
        models = write_models(work, sizes)
        few = (worker if smoke else run_worker)(
            "ours", models["ours"], inputs["few"], work / "few.h5", sizes.budget
        )
        print(f"ours at {sizes.few} records: {few}", flush=True)
        proteins = measure("proteins", inputs["proteins"], models, work, sizes, smoke)
        generated = measure("generated", inputs["many"], models, work, sizes, smoke)
    few["records"] = sizes.few
    few["records_per_s"] = sizes.few / few["seconds"]
    rss_ratio = generated["peak_rss_mib"]["ours"] / few["peak_rss_mib"]
    figures = {"proteins": proteins, "generated": generated, "ours_first_20k": few}
    met = {
        "proteins_vs_fair_esm": proteins["ratios"]["ours_vs_fair_esm"] >= TARGETS["vs_fair_esm"],
        "proteins_vs_hf": proteins["ratios"]["ours_vs_hf"] >= TARGETS["vs_hf"],
        "generated_vs_fair_esm": generated["ratios"]["ours_vs_fair_esm"] >= TARGETS["vs_fair_esm"],
        "generated_vs_hf": generated["ratios"]["ours_vs_hf"] >= TARGETS["vs_hf"],
        "rss_200k_within_25pct_of_20k": rss_ratio <= TARGETS["rss_200k_over_20k"],
    }
    result = {
        "benchmark": "embed_throughput",
        "smoke": smoke,
        "machine": machine(),
        "versions": versions("torch", "transformers", "fair-esm", "h5py"),
        "settings": {**asdict(sizes), "hf_batch": HF_BATCH, "threads": 2, "dtype": "float32"},
        "figures": figures,
        "rss_200k_over_20k": rss_ratio,
        "targets": TARGETS,
        "targets_met": met,
        "all_targets_met": all(met.values()),
    }
    write_json(output, result)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one process, seconds")
    parser.add_argument("--out", type=Path, help=f"the JSON to write (full run: {RESULTS})")
    parser.add_argument("--rounds", type=int, default=Sizes.rounds)
    parser.add_argument("--layers", type=int, default=Sizes.num_layers)
    parser.add_argument("--width", type=int, default=Sizes.hidden_size)
    parser.add_argument("--heads", type=int, default=Sizes.num_heads)
    parser.add_argument("--proteins", type=int, help="the first N proteins (default: all)")
    parser.add_argument(
        "--many", type=int, default=Sizes.many, help="generated records all three run"
    )
    parser.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fasta", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--h5", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.fasta, args.h5, args.budget)))
        return None
    shape = {"num_layers": args.layers, "hidden_size": args.width, "num_heads": args.heads}
    chosen = {"rounds": args.rounds, "proteins": args.proteins, "many": args.many}
    sizes = SMOKE if args.smoke else Sizes(**chosen, **shape)
    output = args.out or (None if args.smoke else RESULTS)
    if output is None:
        parser.error("--smoke writes only where --out says")
    result = run(sizes, output, smoke=args.smoke)
    summary = {
        name: {
            "records_per_s": figure["records_per_s"],
            "ratios": figure["ratios"],
            "peak_rss_mib": figure["peak_rss_mib"],
        }
        for name, figure in result["figures"].items()
        if "ratios" in figure
    }
    print(json.dumps({**summary, "rss_200k_over_20k": result["rss_200k_over_20k"]}, indent=2))
    return result


if __name__ == "__main__":
    main()
