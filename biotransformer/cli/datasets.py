"""``biotransformer datasets list|get``: the public benchmarks described by dataset cards."""

from __future__ import annotations

import argparse
from typing import Any

from biotransformer.outputs import add_overwrite_option, claim_run_directory


def register(subparsers: Any) -> None:
    """Add ``datasets`` with its ``list`` and ``get`` subcommands."""
    parser = subparsers.add_parser(
        "datasets",
        help="list public benchmarks, or download one and convert it to CSV",
        description=(
            "Public benchmarks described by dataset cards (source, license, citation, format, "
            "splits). 'get' downloads a dataset, verifies its checksum, caches it and writes "
            "one 'sequence,label' CSV per split, the format 'finetune' reads."
        ),
    )
    commands = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: _help(parser))

    list_parser = commands.add_parser(
        "list",
        help="table of the known datasets",
        description="Print each dataset's name, task, alphabet, splits and license.",
    )
    list_parser.set_defaults(handler=_list)

    get_parser = commands.add_parser(
        "get",
        help="download, verify, cache and convert one dataset",
        description=(
            "Write OUT/train.csv, OUT/dev.csv, OUT/test.csv (the splits the dataset has) "
            "with header 'sequence,label'. Offline, take the files from a folder with --from."
        ),
    )
    get_parser.add_argument("name", metavar="NAME", help="dataset name, as in 'datasets list'")
    get_parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the converted CSV files"
    )
    get_parser.add_argument(
        "--cache",
        metavar="DIR",
        default=None,
        help="download cache (default: $BIOTRANSFORMER_CACHE/datasets, else "
        "~/.cache/biotransformer/datasets)",
    )
    get_parser.add_argument(
        "--from",
        dest="from_dir",
        metavar="DIR",
        default=None,
        help="take the dataset's files from this folder instead of downloading them",
    )
    get_parser.add_argument(
        "--mirror",
        metavar="URL",
        default=None,
        help="replace the scheme and host of every download URL with this one "
        "(default: $BIOTRANSFORMER_DATASETS_MIRROR)",
    )
    add_overwrite_option(get_parser)
    get_parser.set_defaults(handler=_get)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _list(args: argparse.Namespace) -> int:
    from biotransformer.dataset_cards import list_cards

    rows = [("NAME", "TASK", "ALPHABET", "SPLITS", "LICENSE")]
    for card in list_cards():
        splits = "/".join(card.derive_splits or card.splits)
        rows.append((card.name, card.task, card.alphabet, splits, card.license))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]))
    return 0


def _get(args: argparse.Namespace) -> int:
    from biotransformer.dataset_cards import fetch_dataset, get_card

    card = get_card(args.name)  # an unknown name is refused before --out is claimed
    csvs = {f"{split}.csv" for split in card.derive_splits or card.splits}
    with claim_run_directory(
        args.out,
        command="datasets get",
        inputs=[args.from_dir],
        overwrite=args.overwrite,
        # an earlier version's output (no run record) holds nothing but the split CSV files
        recognise=lambda directory: all(entry.name in csvs for entry in directory.iterdir()),
    ):
        written = fetch_dataset(
            args.name, args.out, cache_dir=args.cache, base_url=args.mirror, from_dir=args.from_dir
        )
    for split, path in written.items():
        print(f"{split}\t{path}")
    return 0
