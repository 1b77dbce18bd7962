"""Masked-marginal variant scoring throughput: biotransformer against fair-esm's ESM2.

A random 300-residue protein; every one of the 19 substitutions at evenly spaced sites is
scored by its masked marginal (ESM-1v): one forward pass per site with that residue masked,
log p(alt) - log p(ref). fair-esm's ``ESM2`` (12 layers, width 480, 20 heads, random weights)
and our ``protein-t12-35M`` ``MaskedLM`` holding the same weights (imported with
``interop.from_fair_esm``) run exactly the same masked sequences in the same batch size, in
eval mode under ``torch.inference_mode``, fp32, 2 threads. Rounds alternate between the two;
the figure is the median over rounds. The scores of both are compared as a correctness check.

Writes ``benchmarks/results/variants.json``. ``--smoke`` uses a 2-layer model and runs in
seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from biotransformer.atomic import atomic_write
from biotransformer.config import PRESETS
from biotransformer.environment import machine, versions
from biotransformer.interop import from_fair_esm
from biotransformer.variants import MaskedLMScorer, Substitution, Variant

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "variants.json"
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
LENGTH = 300
BATCH_SIZE = 8
THREADS = 2


def fair_esm_model(layers: int, width: int, heads: int) -> torch.nn.Module:
    import esm

    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm2.ESM2(
        num_layers=layers,
        embed_dim=width,
        attention_heads=heads,
        alphabet=alphabet,
        token_dropout=True,
    )
    return model.eval()


def ours_from(esm_model: torch.nn.Module, layers: int, width: int, heads: int) -> torch.nn.Module:
    """Our MaskedLM with the same weights, through a fair-esm checkpoint file."""
    cfg = {
        "encoder_embed_dim": width,
        "encoder_layers": layers,
        "encoder_attention_heads": heads,
        "token_dropout": True,
    }
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "esm2.pt"
        torch.save({"cfg": {"model": cfg}, "model": esm_model.state_dict()}, path)
        return from_fair_esm(path)


def esm_masked_marginal(
    model: torch.nn.Module, alphabet: object, sequence: str, sites: list[int]
) -> np.ndarray:
    """(sites, 20) log p(letter) - log p(reference) with the site masked, fair-esm's way."""
    converter = alphabet.get_batch_converter()
    _, _, tokens = converter([("p", sequence)])
    letters = [alphabet.get_idx(a) for a in AMINO_ACIDS]
    rows = []
    for first in range(0, len(sites), BATCH_SIZE):
        chunk = sites[first : first + BATCH_SIZE]
        batch = tokens.repeat(len(chunk), 1)
        for i, site in enumerate(chunk):
            batch[i, site + 1] = alphabet.mask_idx
        log_probs = torch.log_softmax(model(batch)["logits"], dim=-1)
        for i, site in enumerate(chunk):
            row = log_probs[i, site + 1]
            rows.append((row[letters] - row[alphabet.get_idx(sequence[site])]).numpy())
    return np.stack(rows)


def our_variants(sequence: str, sites: list[int]) -> list[Variant]:
    return [
        Variant(f"{sequence[s]}{s + 1}{a}", "p", (Substitution(s + 1, sequence[s], a),))
        for s in sites
        for a in AMINO_ACIDS
        if a != sequence[s]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2-layer model, 4 sites, seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON path")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per side")
    parser.add_argument("--sites", type=int, default=30, help="masked sites (evenly spaced)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    preset = PRESETS["protein-t12-35M"]
    layers, width, heads = preset["num_layers"], preset["hidden_size"], preset["num_heads"]
    rounds, n_sites = args.rounds, args.sites
    if args.smoke:
        layers, width, heads, rounds, n_sites = 2, 64, 4, 1, 4
    rng = np.random.default_rng(0)
    sequence = "".join(rng.choice(list(AMINO_ACIDS), LENGTH))
    sites = np.linspace(0, LENGTH - 1, n_sites).round().astype(int).tolist()

    import esm

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    theirs = fair_esm_model(layers, width, heads)
    ours = ours_from(theirs, layers, width, heads)
    variants = our_variants(sequence, sites)
    reference = {"p": sequence}
    timings: dict[str, list[float]] = {"biotransformer": [], "fair_esm": []}
    with torch.inference_mode():
        esm_scores = esm_masked_marginal(theirs, alphabet, sequence, sites[:1])  # warm-up
        MaskedLMScorer(ours, batch_size=BATCH_SIZE).masked_marginal(variants[:1], reference)
        for _ in range(rounds):
            start = time.perf_counter()
            esm_scores = esm_masked_marginal(theirs, alphabet, sequence, sites)
            timings["fair_esm"].append(time.perf_counter() - start)
            start = time.perf_counter()
            scorer = MaskedLMScorer(ours, batch_size=BATCH_SIZE)
            our_scores = scorer.masked_marginal(variants, reference)
            timings["biotransformer"].append(time.perf_counter() - start)
    keep = np.array([[a != sequence[s] for a in AMINO_ACIDS] for s in sites])
    difference = float(np.abs(esm_scores[keep] - our_scores).max())
    seconds = {name: statistics.median(values) for name, values in timings.items()}
    per_s = {name: len(variants) / value for name, value in seconds.items()}
    ratio = per_s["biotransformer"] / per_s["fair_esm"]
    result = {
        "benchmark": "variants",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "machine": machine(),
        "versions": versions("torch", "fair-esm"),
        "settings": {
            "model": "protein-t12-35M" if not args.smoke else "2 layers, width 64",
            "layers": layers,
            "width": width,
            "heads": heads,
            "parameters": sum(p.numel() for p in ours.parameters()),
            "protein_length": LENGTH,
            "sites": len(sites),
            "variants": len(variants),
            "batch_size": BATCH_SIZE,
            "threads": THREADS,
            "rounds": rounds,
            "dtype": "float32",
        },
        "figures": {
            "biotransformer_variants_per_s": per_s["biotransformer"],
            "fair_esm_variants_per_s": per_s["fair_esm"],
            "seconds": timings,
            "max_abs_score_difference": difference,
        },
        "ratio": ratio,
        "targets": {"ahead_of_fair_esm": {"target": 1.0, "met": ratio > 1.0}},
        "target_met": ratio > 1.0,
    }
    with atomic_write(args.out) as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print(json.dumps(result["figures"], indent=2), f"ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
