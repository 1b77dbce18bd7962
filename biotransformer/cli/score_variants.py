"""``biotransformer score-variants``: substitution effects on a masked LM or a fine-tuned head."""

from __future__ import annotations

import argparse

from biotransformer.cli.common import positive_int
from biotransformer.outputs import add_overwrite_option, check_output_file, report_stream


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``score-variants`` command."""
    parser = subparsers.add_parser(
        "score-variants",
        help="score substitutions against a reference (masked-LM log-odds or change in prediction)",
        description=(
            "Variants as a TSV (id, position, ref, alt; 1-based; several sites comma-separated), "
            "a TSV of id and mutation in protein notation (A42G, combinations A42G:L45P) or a "
            "VCF of single-base substitutions; every reference letter is checked. Masked-LM "
            "models: masked_marginal and wt_marginal log-odds (as ESM-1v; combinations sum "
            "their sites) and, with --methods, pll_diff. Fine-tuned heads: delta_<label>, the "
            "mutant's prediction minus the wild type's. Writes one TSV row per variant."
        ),
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="a model directory")
    parser.add_argument(
        "--reference", required=True, metavar="FILE.fasta", help="the reference sequence(s)"
    )
    parser.add_argument(
        "--variants", required=True, metavar="FILE", help="variants TSV or VCF (.vcf, .vcf.gz)"
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE.tsv", help="scores TSV ('-': standard output)"
    )
    add_overwrite_option(parser)
    parser.add_argument(
        "--methods",
        default="masked_marginal,wt_marginal",
        help="masked-LM scores, comma-separated, from masked_marginal, wt_marginal, pll_diff "
        "(one forward pass per token of each sequence; slow) (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="masked sequences per forward pass (default: %(default)s)",
    )
    parser.add_argument(
        "--max-tokens",
        type=positive_int,
        default=16384,
        help="fine-tuned heads: padded tokens per batch (default: %(default)s)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Read, check and score the variants (``biotransformer.api.score_variants``), write them."""
    from biotransformer.api import load_model, score_variants
    from biotransformer.variants import write_scores_tsv

    inputs = [args.model, args.reference, args.variants]
    check_output_file(args.out, inputs=inputs, overwrite=args.overwrite, allow_stdout=True)
    model = load_model(args.model, require_tokenizer=True)
    result = score_variants(
        model,
        args.reference,
        args.variants,
        methods=[method.strip() for method in args.methods.split(",") if method.strip()],
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
    )
    write_scores_tsv(result.variants, result.scores, args.out)
    print(
        f"{len(result.variants)} variants scored ({', '.join(result.scores)}) to {args.out}",
        file=report_stream(args.out),
    )
    return 0
