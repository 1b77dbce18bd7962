"""Dataset cards: find, read and fetch the public benchmarks described in ``datasets/``.

A card is one YAML file (source, license, citation, format, splits, and the files with their
URLs and sha256 checksums). ``fetch_dataset`` downloads each file (or takes it from a local
folder), verifies its checksum, keeps it in a cache, and converts it to what ``finetune``
reads: one ``sequence,label`` CSV per split. A file whose card has no published checksum is
trusted on first download: its sha256 is recorded in the cache and later loads must match it.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import http.client
import importlib.resources
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from biotransformer.atomic import atomic_write
from biotransformer.errors import BioTransformerError, ConfigError, InputError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

logger = logging.getLogger(__name__)

CACHE_ENV = "BIOTRANSFORMER_CACHE"
MIRROR_ENV = "BIOTRANSFORMER_DATASETS_MIRROR"
DEFAULT_TIMEOUT_S = 10.0
REQUIRED_FIELDS = (
    "name",
    "title",
    "description",
    "task",
    "alphabet",
    "source",
    "license",
    "citation",
    "format",
    "splits",
    "files",
    "manual",
)
FILE_FIELDS = ("split", "file", "url", "sha256", "convert")
TASKS = ("classification", "regression")
ALPHABETS = ("dna", "protein")
_CHUNK = 1 << 20

Rows = list[tuple[str, str]]


@dataclass(frozen=True)
class DataFile:
    """One distributed file of a dataset: which split it feeds and how to get and read it."""

    split: str
    file: str
    url: str | None
    sha256: str | None
    convert: str
    checksum_of: str | None = None


@dataclass(frozen=True)
class DatasetCard:
    """What a benchmark is, where it comes from, and how its files become CSVs."""

    name: str
    title: str
    description: str
    task: str
    alphabet: str
    source: tuple[str, ...]
    license: str
    citation: str
    format: str
    splits: dict[str, int | None]
    files: tuple[DataFile, ...]
    manual: str
    labels: tuple[str, ...] | None = None
    derive_splits: dict[str, int] | None = None

    @classmethod
    def from_dict(cls, data: Any, *, origin: str) -> DatasetCard:
        """Build a card from parsed YAML; a missing or malformed field is a ``ConfigError``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: a dataset card must be a YAML mapping")
        missing = [field for field in REQUIRED_FIELDS if field not in data]
        if missing:
            raise ConfigError(f"{origin}: missing field(s) {', '.join(missing)}")
        known = {*REQUIRED_FIELDS, "labels", "derive_splits"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{origin}: unknown field(s) {', '.join(unknown)}")
        if data["task"] not in TASKS:
            raise ConfigError(f"{origin}: task must be one of {TASKS}, not {data['task']!r}")
        if data["alphabet"] not in ALPHABETS:
            raise ConfigError(f"{origin}: alphabet must be one of {ALPHABETS}")
        files = tuple(_data_file(entry, origin=origin) for entry in data["files"] or ())
        if not files:
            raise ConfigError(f"{origin}: 'files' lists no file")
        source = data["source"]
        derive = data.get("derive_splits")
        if derive is not None and not all(isinstance(v, int) and v > 0 for v in derive.values()):
            raise ConfigError(f"{origin}: derive_splits must map split names to positive ints")
        return cls(
            name=str(data["name"]),
            title=str(data["title"]),
            description=str(data["description"]),
            task=data["task"],
            alphabet=data["alphabet"],
            source=tuple(source) if isinstance(source, list) else (str(source),),
            license=str(data["license"]),
            citation=str(data["citation"]),
            format=str(data["format"]),
            splits=dict(data["splits"]),
            files=files,
            manual=str(data["manual"]),
            labels=tuple(data["labels"]) if data.get("labels") else None,
            derive_splits=dict(derive) if derive else None,
        )


def _data_file(entry: Any, *, origin: str) -> DataFile:
    if not isinstance(entry, dict) or not set(FILE_FIELDS) <= set(entry):
        raise ConfigError(f"{origin}: each entry of 'files' needs {', '.join(FILE_FIELDS)}")
    sha256 = entry["sha256"]
    if sha256 is not None and not _is_sha256(sha256):
        raise ConfigError(f"{origin}: sha256 of {entry['file']!r} is not 64 hex digits or null")
    if entry["convert"] not in CONVERTERS:
        raise ConfigError(
            f"{origin}: convert rule {entry['convert']!r} unknown; use one of {sorted(CONVERTERS)}"
        )
    return DataFile(
        split=str(entry["split"]),
        file=str(entry["file"]),
        url=entry["url"],
        sha256=sha256,
        convert=entry["convert"],
        checksum_of=entry.get("checksum_of"),
    )


def _is_sha256(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


# Finding and reading cards


def cards_folder() -> Traversable:
    """Where the cards live: ``biotransformer/cards`` in a wheel, else ``datasets/``."""
    packaged = importlib.resources.files("biotransformer") / "cards"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "datasets"


def list_cards() -> list[DatasetCard]:
    """Every dataset card shipped with the package, sorted by name."""
    cards = []
    for entry in cards_folder().iterdir():
        if entry.name.endswith(".yaml"):
            card = DatasetCard.from_dict(yaml.safe_load(entry.read_text()), origin=entry.name)
            if f"{card.name}.yaml" != entry.name:
                raise ConfigError(f"{entry.name}: card name {card.name!r} differs from file name")
            cards.append(card)
    return sorted(cards, key=lambda card: card.name)


def get_card(name: str) -> DatasetCard:
    """The card called ``name``; an unknown name is a ``ConfigError`` listing the known ones."""
    cards = {card.name: card for card in list_cards()}
    if name in cards:
        return cards[name]
    close = difflib.get_close_matches(name, cards, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(cards)}")


# Converting distributed files to (sequence, label) rows


def _read_sequence_label_csv(path: Path, card: DatasetCard) -> Rows:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"sequence", "label"} <= set(reader.fieldnames):
            raise InputError(
                f"expected a header with columns 'sequence' and 'label', got {reader.fieldnames}",
                path=path,
                line=1,
            )
        rows = []
        for row in reader:
            if row["sequence"] is None or row["label"] is None:
                raise InputError(
                    "a row with fewer fields than the header", path=path, line=reader.line_num
                )
            rows.append((row["sequence"].strip(), row["label"].strip()))
        return rows


def _read_modlamp_csv(path: Path, card: DatasetCard) -> Rows:
    with open(path) as handle:
        lines = handle.read().splitlines()
    header = [field.strip() for field in lines[0].split(",")] if lines else []
    if len(header) < 3 or not header[0].isdigit():
        raise InputError(
            "expected a sklearn-style first line 'n_samples,n_features,class names...'",
            path=path,
            line=1,
        )
    n_samples, class_names = int(header[0]), header[2:]
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) >= len(class_names):
            raise InputError(
                f"expected 'SEQUENCE, LABEL' with LABEL below {len(class_names)}",
                path=path,
                line=number,
            )
        rows.append((fields[0], fields[1]))
    if len(rows) != n_samples:
        raise InputError(f"the first line announces {n_samples} rows, found {len(rows)}", path=path)
    return rows


def _read_fasta_pipe_label(path: Path, card: DatasetCard) -> Rows:
    from biotransformer.io import fasta_records  # Biopython: only when a card needs it

    rows = []
    for record_id, sequence in fasta_records(path):
        if "|" not in record_id:
            raise InputError(
                "expected a header 'NAME|LABEL'", path=path, record=record_id, fix=card.manual
            )
        rows.append((sequence, record_id.rsplit("|", 1)[1]))
    return rows


def _read_genomic_benchmarks_folder(path: Path, card: DatasetCard) -> Rows:
    labels = card.labels or ()
    rows: Rows = []
    for class_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        if class_dir.name not in labels:
            raise InputError(
                f"class folder {class_dir.name!r} is not one of the card's labels {list(labels)}",
                path=class_dir,
            )
        label = str(labels.index(class_dir.name))
        rows.extend((_read_text(file), label) for file in sorted(class_dir.glob("*.txt")))
    return rows


def _read_text(path: Path) -> str:
    """One sequence file of a folder dataset; not UTF-8 is an ``InputError`` naming it."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path=path) from None


CONVERTERS: dict[str, Callable[[Path, DatasetCard], Rows]] = {
    "csv-sequence-label": _read_sequence_label_csv,
    "modlamp-csv": _read_modlamp_csv,
    "fasta-pipe-label": _read_fasta_pipe_label,
    "genomic-benchmarks-folder": _read_genomic_benchmarks_folder,
}
FOLDER_CONVERTERS = frozenset({"genomic-benchmarks-folder"})


def _split_by_hash(rows: Rows, shares: dict[str, int]) -> dict[str, Rows]:
    """Deterministic split: a row's split follows from the sha256 of its sequence, so exact
    duplicate sequences always land in the same split."""
    total = sum(shares.values())
    splits: dict[str, Rows] = {name: [] for name in shares}
    for sequence, label in rows:
        bucket = int.from_bytes(hashlib.sha256(sequence.encode()).digest()[:8], "big") % total
        for name, share in shares.items():
            if bucket < share:
                splits[name].append((sequence, label))
                break
            bucket -= share
    return splits


# Fetching: cache, local folder, download


def dataset_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The dataset cache: ``cache_dir``, else ``$BIOTRANSFORMER_CACHE/datasets``, else
    ``~/.cache/biotransformer/datasets``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "datasets"
    return Path.home() / ".cache" / "biotransformer" / "datasets"


def fetch_dataset(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    from_dir: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Path]:
    """Get dataset ``name`` and write ``out_dir/{split}.csv`` (``sequence,label``) per split.

    Files come from the cache, else from ``from_dir``, else from their URL (its scheme and
    host replaced by ``base_url`` or ``$BIOTRANSFORMER_DATASETS_MIRROR`` when given).
    """
    card = get_card(name)
    cache = dataset_cache_dir(cache_dir) / card.name
    mirror = base_url or os.environ.get(MIRROR_ENV) or None
    local = None if from_dir is None else Path(from_dir)
    rows: dict[str, Rows] = {}
    for entry in card.files:
        source = _obtain(card, entry, cache, local, mirror, timeout)
        rows.setdefault(entry.split, []).extend(_convert(source, entry, card, cache))
    if card.derive_splits:
        rows = _split_by_hash(
            [row for split_rows in rows.values() for row in split_rows], card.derive_splits
        )
    written = {}
    for split, split_rows in rows.items():
        written[split] = Path(out_dir) / f"{split}.csv"
        _write_csv(written[split], split_rows)
    return written


def _convert(source: Path, entry: DataFile, card: DatasetCard, cache: Path) -> Rows:
    """The (sequence, label) rows of one obtained file; a file its converter cannot read is
    an ``InputError`` naming it (and the fix: the right file, or a fresh copy in the cache)."""
    fix = (
        f"check that it is the file {entry.file!r} of dataset {card.name!r}; a copy in the "
        f"cache ({cache}) can be deleted to get it again"
    )
    try:
        return CONVERTERS[entry.convert](source, card)
    except InputError as error:
        raise (
            error
            if error.fix
            else InputError(
                error.problem, path=error.path, record=error.record, line=error.line, fix=fix
            )
        ) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path=source, fix=fix) from None
    except (ValueError, csv.Error) as error:  # csv's own parse errors
        raise InputError(
            f"cannot be read as {entry.convert} ({error})", path=source, fix=fix
        ) from None


def _write_csv(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sequence", "label"])
        writer.writerows(rows)


def _obtain(
    card: DatasetCard,
    entry: DataFile,
    cache: Path,
    local: Path | None,
    mirror: str | None,
    timeout: float,
) -> Path:
    """The path of ``entry``'s file, verified: from the cache, a local folder or its URL."""
    if entry.convert in FOLDER_CONVERTERS:
        if local is None or not (local / entry.file).is_dir():
            raise _by_hand_error(card, cache, f"folder {entry.file!r} must be given by hand")
        return local / entry.file
    cached = cache / entry.file
    if cached.is_file():
        _verify_cached(cached, entry)
        return cached
    if local is not None:
        path = _find_local(card, entry, local, cache)
        with open(path, "rb") as stream:
            _store(stream, cached, entry, origin=str(path))
        return cached
    if entry.url is None:
        raise _by_hand_error(card, cache, f"{entry.file!r} has no direct download URL")
    url = _mirrored(entry.url, mirror)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            _store(response, cached, entry, origin=url)
    except (OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise _by_hand_error(card, cache, f"could not download {url} ({reason})") from error
    return cached


def _mirrored(url: str, mirror: str | None) -> str:
    if not mirror:
        return url
    original, base = urlsplit(url), urlsplit(mirror)
    path = base.path.rstrip("/") + original.path
    return urlunsplit((base.scheme, base.netloc, path, original.query, ""))


def _find_local(card: DatasetCard, entry: DataFile, local: Path, cache: Path) -> Path:
    for candidate in (local / entry.file, local / Path(entry.file).name):
        if candidate.is_file():
            return candidate
    raise _by_hand_error(card, cache, f"{local / entry.file} does not exist")


def _store(stream: IO[bytes], target: Path, entry: DataFile, *, origin: str) -> None:
    """Copy ``stream`` to ``target`` while hashing; a checksum mismatch keeps nothing."""
    digest = hashlib.sha256()
    with atomic_write(target, "wb") as out:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        actual = digest.hexdigest()
        if entry.sha256 is not None and actual != entry.sha256:
            raise BioTransformerError(
                f"checksum mismatch for {origin}: expected sha256 {entry.sha256}, got {actual}; "
                "the file was not kept. The source may have changed or the download was "
                "corrupted: check the source, or get the file by hand and use --from"
            )
    if entry.sha256 is None:
        _record_first_checksum(target, actual, origin=origin)


def _record_first_checksum(target: Path, actual: str, *, origin: str) -> None:
    with atomic_write(_record_path(target)) as handle:
        handle.write(f"{actual}\n")
    logger.warning(
        "%s: NOT verified against a published checksum (the dataset card has none); "
        "recorded its sha256 %s in %s, and later loads are checked against it",
        origin,
        actual,
        _record_path(target),
    )


def _record_path(target: Path) -> Path:
    return target.with_name(f"{target.name}.sha256")


def _verify_cached(cached: Path, entry: DataFile) -> None:
    actual = _sha256_of(cached)
    record = _record_path(cached)
    if entry.sha256 is not None:
        expected = entry.sha256
    elif record.is_file():
        expected = record.read_text().strip()
    else:
        _record_first_checksum(cached, actual, origin=str(cached))
        return
    if actual != expected:
        cached.unlink()
        raise BioTransformerError(
            f"cached file {cached} has sha256 {actual}, expected {expected}; it was removed, "
            "run the command again to download it afresh"
        )


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _by_hand_error(card: DatasetCard, cache: Path, problem: str) -> BioTransformerError:
    expected = "\n".join(
        f"  - {entry.file}" + (f"  (from {entry.url})" if entry.url else "") for entry in card.files
    )
    return BioTransformerError(
        f"{problem}.\nTo get '{card.name}' by hand: {card.manual.strip()}\n"
        f"Put these files in one folder:\n{expected}\n"
        f"then run 'biotransformer datasets get {card.name} --from FOLDER --out DIR' "
        f"(files are copied into the cache {cache})"
    )
