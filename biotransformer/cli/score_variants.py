"""``biotransformer score-variants``: substitution effects on a masked LM or a fine-tuned head."""

from __future__ import annotations

import argparse

from biotransformer.cli.common import (
    add_device_options,
    add_resume_option,
    load_placed_model,
    positive_int,
    stream_fingerprint,
)
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
            "mutant's prediction minus the wild type's. Writes one TSV row per variant, chunk by "
            "chunk (--chunk-records variants); --resume continues a run that was stopped."
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
    add_resume_option(parser, "variants")
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
    add_device_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Read and check the variants, then score them chunk by chunk, appending each chunk's
    rows to the table (resumable)."""
    from biotransformer.streaming import TableStream
    from biotransformer.variants import (
        read_reference,
        read_variants,
        score_head,
        score_masked_lm,
        score_names,
        score_rows,
    )

    inputs = [args.model, args.reference, args.variants]
    check_output_file(args.out, inputs=inputs, overwrite=args.overwrite, allow_stdout=True)
    model = load_placed_model(args)
    task = model.task
    reference = read_reference(args.reference, alphabet=model.tokenizer.alphabet)
    variants = read_variants(args.variants, reference)
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    names = score_names(model, methods)
    fingerprint = stream_fingerprint(
        args,
        model,
        {"reference": args.reference, "variants": args.variants},
        methods=methods,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
    )
    table = TableStream(
        args.out,
        fingerprint,
        header=["id", "record", "mutations", *names],
        resume=args.resume,
        overwrite=args.overwrite,
    )
    kept = table.done
    for start in range(kept, len(variants), args.chunk_records):
        chunk = variants[start : start + args.chunk_records]
        if task.has_labels:
            scores = score_head(model, task, chunk, reference, max_tokens=args.max_tokens)
        else:
            scores = score_masked_lm(
                model, chunk, reference, methods=methods, batch_size=args.batch_size
            )
        table.append(score_rows(chunk, scores))
    table.finish()
    resumed = f" ({kept} kept from the stopped run)" if kept else ""
    print(
        f"{len(variants)} variants scored ({', '.join(names)}) to {args.out}{resumed}",
        file=report_stream(args.out),
    )
    return 0
