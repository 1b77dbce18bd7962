"""``biotransformer evaluate``: metrics of a model directory on labelled data, with 95% CIs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biotransformer.atomic import json_text
from biotransformer.cli.common import (
    add_device_options,
    add_max_tokens_option,
    add_model_option,
    add_window_options,
    load_launched_model,
    load_task_with_threshold,
    non_negative_int,
    open_fraction,
    probability,
    window_options,
)
from biotransformer.cli.finetune import add_label_options
from biotransformer.errors import ConfigError, InputError
from biotransformer.outputs import (
    add_overwrite_option,
    check_output_file,
    claim_run_directory,
    text_output,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a model directory on labelled data (metrics with bootstrap CIs)",
        description=(
            "Classification: accuracy, F1, MCC, AUROC, AUPRC (average precision); regression: "
            "Pearson, Spearman, R^2, RMSE, MAE; masked-LM: held-out loss and perplexity. Each "
            "with a percentile bootstrap 95%% confidence interval. A decision threshold "
            "stored with the model (model/config.json, from finetune --tune-threshold) is used."
        ),
    )
    add_model_option(parser, "a model")
    parser.add_argument("--data", required=True, metavar="FILE", help="labelled FASTA/CSV/TSV")
    parser.add_argument(
        "--metrics-out",
        metavar="FILE.json",
        help="write the metrics as JSON here ('-' or none: print them)",
    )
    parser.add_argument(
        "--predictions-out", metavar="FILE.tsv", help="also write the predictions as TSV"
    )
    add_overwrite_option(parser, "--metrics-out, --predictions-out or --report-dir")
    parser.add_argument(
        "--report-dir",
        metavar="DIR",
        help="write ROC/PR/confusion or predicted-vs-true plots and report.html here",
    )
    parser.add_argument(
        "--threshold",
        type=probability,
        default=None,
        help="decision threshold for binary classification (default: the stored one, or 0.5)",
    )
    parser.add_argument(
        "--bootstrap",
        type=non_negative_int,
        default=1000,
        help="bootstrap resamples (default: 1000; 0 skips the confidence intervals)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the bootstrap and masking"
    )
    parser.add_argument(
        "--mask-rate",
        type=open_fraction,
        default=0.15,
        help="masked-LM: share of tokens masked for the held-out loss (default: 0.15)",
    )
    add_max_tokens_option(parser)
    add_window_options(parser)
    add_label_options(parser)
    add_device_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Check the outputs, claim --report-dir (when given) for the run, evaluate."""
    inputs = [args.model, args.data, args.labels_file]
    files = {"--metrics-out": args.metrics_out, "--predictions-out": args.predictions_out}
    given = {flag: path for flag, path in files.items() if path is not None}
    for flag, path in given.items():
        check_output_file(
            path,
            flag=flag,
            inputs=[*inputs, args.report_dir],
            overwrite=args.overwrite,
            allow_stdout=flag == "--metrics-out",
        )
    if len(given) == 2 and Path(args.metrics_out).resolve() == Path(args.predictions_out).resolve():
        raise ConfigError(
            f"--metrics-out and --predictions-out are the same file ({args.metrics_out}). "
            "Fix: give them different names"
        )
    if args.report_dir is None:
        return evaluate(args, None)
    from biotransformer.runtime import launched_accelerator

    with claim_run_directory(
        args.report_dir,
        command="evaluate",
        flag="--report-dir",
        inputs=inputs,
        overwrite=args.overwrite,
        accelerator=launched_accelerator(),
    ) as report:
        return evaluate(args, report.path)


def evaluate(args: argparse.Namespace, report_dir: Path | None) -> int:
    """Evaluate and write or print the metrics."""
    from biotransformer.config import ReadOptions
    from biotransformer.finetune_data import read_labelled
    from biotransformer.inference import evaluate_records, write_predictions_tsv
    from biotransformer.runtime import is_main
    from biotransformer.visualize import write_run_report

    accelerator, model = load_launched_model(args)
    task = load_task_with_threshold(args, model)
    windows = window_options(args, model)
    read = ReadOptions(
        sequence_column=args.sequence_column,
        label_column=args.label_column,
        id_column=args.id_column,
        label_from=args.label_from,
        labels_file=args.labels_file,
        duplicate_ids=args.duplicate_ids,
    )
    records = read_labelled(
        args.data,
        task.task if task.has_labels else "classification",
        read,
        labelled=task.has_labels,
        alphabet=model.tokenizer.alphabet,
    )
    if is_main(accelerator):
        print(
            f"evaluating {len(records)} records of {args.data} "
            f"({args.bootstrap} bootstrap resamples for the 95% CIs)",
            file=sys.stderr,
        )
    try:
        metrics, predictions = evaluate_records(
            model,
            records,
            task,
            max_tokens=args.max_tokens,
            bootstrap=args.bootstrap,
            seed=args.seed,
            mask_rate=args.mask_rate,
            accelerator=accelerator,
            windows=windows,
            rc_average=args.rc_average,
        )
    except InputError as error:  # labels checked against the model's name the data file
        raise error.with_path(args.data) from None
    if not is_main(accelerator):
        return 0
    metrics = {
        "model": str(args.model),
        "model_source": getattr(model, "source", None),
        "data": str(args.data),
        "seed": args.seed,
        **metrics,
    }
    with text_output(args.metrics_out) as handle:
        handle.write(json_text(metrics))
    if predictions is not None and args.predictions_out:
        write_predictions_tsv(predictions, args.predictions_out)
    if report_dir is not None:
        print(f"writing the plots and {report_dir / 'report.html'}", file=sys.stderr)
        write_run_report(
            report_dir,
            task,
            records,
            predictions,
            {Path(args.data).name: metrics},
            data=Path(args.data).name,
            model=str(args.model),
        )
    return 0
