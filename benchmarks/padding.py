"""Share of real tokens in batches: token-budget batches against random batches.

On the real proteome (``../shared/data/proteins``, 2100 proteins; random lengths drawn from a
similar distribution when the folder is absent), tokenised with ``protein`` and cropped to
1024 tokens: ``TokenBudgetBatchSampler`` (16384 tokens per batch) against random batches of
the same mean size padded to their longest. Real share = real tokens / (batch x longest).

Writes ``benchmarks/results/padding.json``. ``--smoke`` uses 300 sequences and runs in seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

import numpy as np

from biotransformer.atomic import atomic_write
from biotransformer.data.sampler import TokenBudgetBatchSampler
from biotransformer.environment import machine, versions

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIOTRANSFORMER_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "padding.json"
MAX_LENGTH = 1024
MAX_TOKENS = 16384
EPOCHS = 5
TARGET = 0.95


def protein_lengths() -> tuple[np.ndarray, str]:
    """Token lengths (with ``<cls>`` and ``<eos>``, cropped) of the real proteome."""
    files = sorted((SHARED_DATA / "proteins").glob("*.faa.gz"))
    if not files:
        rng = np.random.default_rng(0)
        lengths = rng.lognormal(5.6, 0.6, 2100).astype(int) + 2
        return np.minimum(lengths, MAX_LENGTH), "random log-normal lengths (no ../shared/data)"
    from biotransformer.io import read_sequences
    from biotransformer.tokenizers import Tokenizer

    tokenizer = Tokenizer.from_spec("protein")
    sequences = [record.sequence for record in read_sequences(files[0])]
    lengths = np.array([len(tokenizer.encode(seq)) for seq in sequences])
    return np.minimum(lengths, MAX_LENGTH), f"../shared/data/proteins/{files[0].name}"


def real_share(batches: list[np.ndarray], lengths: np.ndarray) -> float:
    real = sum(int(lengths[batch].sum()) for batch in batches)
    padded = sum(len(batch) * int(lengths[batch].max()) for batch in batches)
    return real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="300 sequences, seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON path")
    args = parser.parse_args()
    lengths, source = protein_lengths()
    if args.smoke:
        lengths = lengths[:300]
    budget_shares, random_shares, batch_sizes = [], [], []
    for epoch in range(EPOCHS):
        sampler = TokenBudgetBatchSampler(lengths, MAX_TOKENS, seed=0)
        sampler.set_epoch(epoch)
        batches = [np.array(batch) for batch in sampler]
        budget_shares.append(real_share(batches, lengths))
        size = max(1, round(len(lengths) / len(batches)))
        batch_sizes.append(size)
        order = np.random.default_rng([0, epoch]).permutation(len(lengths))
        random_batches = [order[i : i + size] for i in range(0, len(order), size)]
        random_shares.append(real_share(random_batches, lengths))
    figures = {
        "sequences": len(lengths),
        "real_tokens": int(lengths.sum()),
        "token_budget_real_share": float(np.mean(budget_shares)),
        "random_batches_real_share": float(np.mean(random_shares)),
        "mean_sequences_per_batch": float(np.mean(batch_sizes)),
    }
    met = figures["token_budget_real_share"] >= TARGET
    result = {
        "benchmark": "padding",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "machine": machine(),
        "versions": versions("numpy"),
        "settings": {
            "source": source,
            "tokenizer": "protein",
            "max_length": MAX_LENGTH,
            "max_tokens": MAX_TOKENS,
            "epochs_averaged": EPOCHS,
            "random_batches": "same mean number of sequences per batch, padded to the longest",
        },
        "figures": figures,
        "targets": {"token_budget_real_share": {"target": TARGET, "met": met}},
        "all_targets_met": met,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
