"""A worked example of the Python API: a labelled FASTA file to a fine-tuned model, its test
metrics, embeddings of every sequence and a plot of them.

    python recipes/python_api_example.py --fasta data.fasta --label-from key:label \\
        --out runs/example

Headers carry the labels (``>seq1 label=promoter`` with ``--label-from key:label``). The run
fine-tunes a new encoder of ``--preset`` (``docs/api.md``: ``model=`` warm-starts from a
pretrained one instead), embeds every sequence with the selected model, and draws the first
two principal components of the embeddings coloured by label into ``OUT/embeddings_pca.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import biotransformer as bt
from biotransformer.plots import plot_embeddings


def main(argv: list[str] | None = None) -> bt.RunResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasta", required=True, help="labelled FASTA file")
    parser.add_argument("--label-from", default="key:label", help="where a header's label is")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--preset", default="tiny", help="architecture of the new encoder")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    out = Path(args.out)

    # 1. Fine-tune: validation and test splits are carved out of the file without leakage.
    keys: dict = {"bootstrap": args.bootstrap}
    if args.max_steps is not None:
        keys["max_steps"] = args.max_steps
    if args.lr is not None:
        keys["training"] = {"lr": args.lr}
    result = bt.finetune(
        train=args.fasta,
        read={"label_from": args.label_from},
        task="classification",
        preset=args.preset,
        out=out / "finetune",
        overwrite=True,
        **keys,
    )
    test = result.metrics["test"]["metrics"]
    print("test MCC {value:.3f} (95% CI {ci_low:.3f} to {ci_high:.3f})".format(**test["mcc"]))

    # 2. Embed every sequence with the selected model: one row per record, in file order.
    model = result.model
    records = bt.read_sequences(args.fasta, label_from=args.label_from)
    labels = [record.label for record in records]
    embeddings = model.embed(args.fasta)
    print(f"embeddings: {embeddings.pooled.shape[0]} x {embeddings.pooled.shape[1]}")

    # 3. Plot them: the first two principal components, coloured by label.
    plot_embeddings(embeddings.pooled, labels, out / "embeddings_pca.png")
    print(f"plot: {out / 'embeddings_pca.png'}; report: {result.output_dir / 'report.html'}")
    return result


if __name__ == "__main__":
    main()
