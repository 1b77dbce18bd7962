"""Sequence input: FASTA, FASTQ, CSV and TSV (each optionally gzipped) to ``SequenceRecord``s.

``read_sequences`` streams records one at a time. Memory is bounded by the longest record
(Biopython joins the lines of one FASTA/FASTQ record before yielding it; CSV/TSV rows are read
one at a time), plus the set of ids seen so far when duplicate ids are checked, plus the
sidecar label table when one is given.

``stream_fasta`` (and ``fasta_events`` under it) is the one FASTA reader that never holds a
record whole: a record id, then its bases in pieces of a few MiB. ``prepare`` cuts windows of
chromosomes from it; ``fasta_records`` joins its pieces for BPE training and dataset cards.
It refuses what ``read_sequences`` refuses, with the same messages: text before the first
header, a header without an id, bytes that are not UTF-8, characters that are not residue
letters, ``*``, ``-`` or ``.``; it leaves empty records, duplicate ids and the alphabet to its
caller.

Every problem with the input is an ``InputError`` that names the file, the line and record,
what is wrong and how to fix it; ``docs/bad-inputs.md`` lists the cases.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import math
import os
import re
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, TextIO

from Bio.SeqIO.FastaIO import SimpleFastaParser
from Bio.SeqIO.QualityIO import FastqGeneralIterator

from biotransformer.errors import ConfigError, InputError

Label = str | float | tuple[str, ...]
Format = Literal["fasta", "fastq", "csv", "tsv"]
HeaderLabel = Callable[[str], str | None]
RawRecord = tuple[str, str, str | None, int]  # id, sequence, header line or label field, line

FORMAT_SUFFIXES: dict[str, Format] = {
    **dict.fromkeys((".fa", ".fasta", ".fna", ".faa", ".fas", ".ffn", ".fsa"), "fasta"),
    **dict.fromkeys((".fq", ".fastq"), "fastq"),
    ".csv": "csv",
    **dict.fromkeys((".tsv", ".tab"), "tsv"),
}
LABEL_TYPES = ("class", "multilabel", "numeric")
DUPLICATE_ID_POLICIES = ("error", "warn", "allow")

# Composition check: the share of A, C, G, T, U, N among the letters of the first
# ALPHABET_SAMPLE residues. DNA sits near 1.0, proteins near 0.3 (A, C, G, T and N are also
# amino acids, so no single letter tells them apart).
ALPHABET_SAMPLE = 1000
DNA_FRACTION_THRESHOLD = 0.9
PROTEIN_MIN_LENGTH_FOR_DNA_CHECK = 50

_HEAD_BYTES = 65536
READ_BYTES = 1 << 22  # the streaming FASTA reader reads (and decompresses) this much at a time
_FASTA_WHITESPACE = b" \t\r\n"
# Sequence bytes through ``translate``: a residue letter, '*', '-' or '.' stays itself, any other
# byte becomes NUL (found by a fast ``in``), in the same pass that drops whitespace.
_RESIDUE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz*.-")
_CHECKED = bytes(byte if byte in _RESIDUE_BYTES else 0 for byte in range(256))
_NOT_FASTA_BYTE = re.compile(rb"[^A-Za-z*.\- \t\r\n]")
_GZIP_FIX = "download or copy the file again, and check it with 'gzip -t'"
_COMPRESSION_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"PK\x03\x04": "zip"}
_NOT_SEQUENCE = re.compile(r"[^A-Za-z*.\-]")
_NOT_NUCLEOTIDE = re.compile(r"[^ACGTURYSWKMBDHVNacgturyswkmbdhvn.\-]")
_NOT_LETTER = re.compile(r"[^A-Za-z]")
_NOT_UTF8 = re.compile(r"[\udc80-\udcff]")
_PAIR_SEPARATORS = re.compile(r"[;\s]+")
_DNA_LETTERS = frozenset("ACGTUN")


@dataclass(frozen=True, slots=True)
class SequenceRecord:
    """One sequence with its id, its label (or None), and the line it starts on in its file."""

    id: str
    sequence: str
    label: Label | None = None
    line: int | None = field(default=None, compare=False)


def read_sequences(
    path: str | os.PathLike[str],
    *,
    format: Format | None = None,
    sequence_column: str | int = "sequence",
    label_column: str | int | None = "label",
    id_column: str | int | None = None,
    header: bool | Literal["sklearn"] | None = None,
    label_from: str | None = None,
    labels_file: str | Path | None = None,
    label_type: Literal["class", "multilabel", "numeric"] | None = None,
    alphabet: Literal["dna", "protein"] | None = None,
    duplicate_ids: Literal["error", "warn", "allow"] = "error",
) -> Iterator[SequenceRecord]:
    """Stream the records of a FASTA/FASTQ/CSV/TSV file (optionally gzipped).

    ``format`` is inferred from the suffix (``.fa .fasta .fna .faa .fas .ffn .fsa``, ``.fq
    .fastq``, ``.csv``, ``.tsv .tab``, each optionally ``.gz``) or else from the content.
    Sequences keep their case; whitespace is removed; allowed characters are letters, ``*``,
    ``-`` and ``.`` (with ``alphabet="dna"``: IUPAC nucleotide codes, ``-`` and ``.``).

    CSV/TSV: columns are names (from the header line) or 0-based positions. ``header=None``
    detects the first line: a header if it names ``sequence_column`` (or if
    ``sequence_column`` is a position), skipped if sklearn-style (``n_samples,n_features,
    names...``, row count then checked); ``header=False`` means no header line, with the
    default columns at positions 0 (sequence) and 1 (label). Ids come from ``id_column``, or
    are ``"<file stem>:<line>"``. A missing default ``label`` column means unlabelled records.

    Labels of FASTA/FASTQ records: ``label_from="key:NAME"`` (a ``NAME=value`` pair in the
    header, pairs separated by spaces or ``;``), ``"field:N"`` (0-based ``|``-separated field
    of the header line after ``>``), ``"regex:PATTERN"`` (one group, searched there); or
    ``labels_file``, a CSV/TSV with columns ``id_column`` (default ``id``) and
    ``label_column``. ``label_type``: ``"class"`` (str, default), ``"multilabel"`` (tuple of
    the comma-separated values), ``"numeric"`` (float).

    ``alphabet="dna"`` refuses records whose first 1000 letters are under 90 % A/C/G/T/U/N
    (a protein file); ``alphabet="protein"`` refuses records of 50 or more residues above it.
    ``duplicate_ids`` is ``"error"``, ``"warn"`` or ``"allow"``.
    """
    options = _Options(
        path=Path(path),
        sequence_column=sequence_column,
        label_column=label_column,
        id_column=id_column,
        header=_check_choice("header", header, (None, True, False, "sklearn")),
        label_from=label_from,
        label_type=_check_choice("label_type", label_type, (*LABEL_TYPES, None)),
        alphabet=_check_choice("alphabet", alphabet, ("dna", "protein", None)),
        duplicate_ids=_check_choice("duplicate_ids", duplicate_ids, DUPLICATE_ID_POLICIES),
    )
    options.format = _sniff_format(options.path, format)
    if label_from is not None and labels_file is not None:
        raise ConfigError(f"give {_flag('label_from')} or {_flag('labels_file')}, not both")
    if label_from is not None and options.format in ("csv", "tsv"):
        raise ConfigError(
            f"{_flag('label_from')} reads FASTA/FASTQ headers, but {path} is "
            f"{options.format.upper()}: use {_flag('label_column')}"
        )
    if options.format in ("fasta", "fastq"):
        _check_no_columns(path, options.format, sequence_column, id_column, labels_file)
    options.header_label = None if label_from is None else _header_label_parser(label_from)
    if labels_file is not None:
        options.sidecar = _read_label_table(
            Path(labels_file),
            "id" if id_column is None else id_column,
            "label" if label_column is None else label_column,
        )
        options.sidecar_path = Path(labels_file)
    return _records(options)


def _check_no_columns(
    path: str | Path,
    format: str,
    sequence_column: str | int,
    id_column: str | int | None,
    labels_file: str | Path | None,
) -> None:
    """Column options name CSV/TSV columns: given for a FASTA/FASTQ file (``id_column``
    without a ``labels_file``, where it names the label table's id column), they are refused."""
    given = [
        option
        for option, value, default in (
            ("sequence_column", sequence_column, "sequence"),
            ("id_column", None if labels_file is not None else id_column, None),
        )
        if value != default
    ]
    if given:
        raise InputError(
            f"{_flag(given[0])} names a CSV/TSV column, but the file is {format.upper()} "
            "(ids and sequences come from its records)",
            path=path,
            fix=f"leave {_flag(given[0])} out, or give a CSV/TSV file",
        )


def _looks_like_sequence(value: str) -> bool:
    """A CSV field that is a sequence rather than a column name: long and all letters, or
    nucleotides."""
    letters = value.isalpha()
    return letters and (len(value) >= 20 or (len(value) >= 8 and guess_alphabet(value) == "dna"))


def guess_alphabet(sequence: str) -> Literal["dna", "protein"]:
    """``"dna"`` when at least 90 % of the first 1000 letters are A/C/G/T/U/N, else protein.

    A sequence without letters (only gaps or ``*``) counts as DNA: nothing contradicts it.
    """
    return "dna" if _dna_fraction(sequence) >= DNA_FRACTION_THRESHOLD else "protein"


@dataclass(frozen=True, slots=True)
class DuplicateGroup:
    """Records that share one exact sequence; ``splits`` is filled by cross-split reports."""

    sequence: str
    ids: tuple[str, ...]
    labels: tuple[Label | None, ...]
    splits: tuple[str, ...] = ()

    @property
    def conflicting(self) -> bool:
        """True when the copies carry different labels."""
        return len(set(self.labels)) > 1


@dataclass(frozen=True, slots=True)
class DuplicateReport:
    """Exact duplicate sequences among ``n_records`` records (``n_distinct`` distinct)."""

    n_records: int
    n_distinct: int
    groups: tuple[DuplicateGroup, ...]

    @property
    def conflicting(self) -> tuple[DuplicateGroup, ...]:
        """The groups whose copies carry different labels."""
        return tuple(group for group in self.groups if group.conflicting)

    def summary(self) -> str:
        """One line for a log."""
        return (
            f"{self.n_records} records, {self.n_distinct} distinct sequences, "
            f"{len(self.groups)} duplicated sequences, {len(self.conflicting)} with "
            "conflicting labels"
        )


def find_duplicates(records: Iterable[SequenceRecord]) -> DuplicateReport:
    """Group the records by exact sequence (case-sensitive) and report repeated ones.

    Holds every record (sequence, id, label) in memory: meant for labelled fine-tuning sets.
    """
    return _duplicate_report({"": records}, min_splits=1)


def cross_split_duplicates(splits: Mapping[str, Iterable[SequenceRecord]]) -> DuplicateReport:
    """Sequences found in more than one split (leakage), e.g. ``{"train": ..., "test": ...}``."""
    return _duplicate_report(splits, min_splits=2)


def _duplicate_report(
    splits: Mapping[str, Iterable[SequenceRecord]], *, min_splits: int
) -> DuplicateReport:
    copies: dict[str, list[tuple[str, SequenceRecord]]] = {}
    n_records = 0
    for split, records in splits.items():
        for record in records:
            copies.setdefault(record.sequence, []).append((split, record))
            n_records += 1
    groups = tuple(
        DuplicateGroup(
            sequence=sequence,
            ids=tuple(record.id for _, record in members),
            labels=tuple(record.label for _, record in members),
            splits=tuple(split for split, _ in members) if min_splits > 1 else (),
        )
        for sequence, members in copies.items()
        if len(members) > 1 and len({split for split, _ in members}) >= min_splits
    )
    return DuplicateReport(n_records=n_records, n_distinct=len(copies), groups=groups)


# Options and format detection


@dataclass
class _Options:
    path: Path
    sequence_column: str | int
    label_column: str | int | None
    id_column: str | int | None
    header: bool | Literal["sklearn"] | None
    label_from: str | None
    label_type: str | None
    alphabet: str | None
    duplicate_ids: str
    format: Format = "fasta"
    header_label: HeaderLabel | None = None
    sidecar: dict[str, str] | None = None
    sidecar_path: Path | None = None


def _check_choice(name: str, value: object, choices: tuple[object, ...]) -> object:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {choices}")
    return value


def _sniff_format(path: Path, format: str | None) -> Format:
    """The format from ``format``, the suffix or the content; refuse contradicting content."""
    head = _read_head(path)
    if head.strip() == "":
        raise InputError(
            "the file is empty", path=path, fix="check the path, or re-create the file"
        )
    if encoding := _wide_encoding(head):
        raise InputError(
            f"{encoding} text, not UTF-8",
            path=path,
            fix=f"convert it to UTF-8, e.g. iconv -f {encoding} -t UTF-8 {path} > "
            f"{path.with_name(f'{path.stem}-utf8{path.suffix}')}",
        )
    if "\x00" in head:
        raise InputError(
            "binary data, not a text sequence file",
            path=path,
            fix="give a FASTA, FASTQ, CSV or TSV file (optionally .gz)",
        )
    first_line_number, first_line = next(
        (number, line) for number, line in enumerate(head.splitlines(), 1) if line.strip()
    )
    suffixes = [suffix.lower() for suffix in path.suffixes if suffix.lower() != ".gz"]
    by_suffix = FORMAT_SUFFIXES.get(suffixes[-1]) if suffixes else None
    if format is not None:
        _check_choice("format", format, ("fasta", "fastq", "csv", "tsv"))
    format = format or by_suffix or _format_from_content(first_line)
    if format is None:
        raise InputError(
            f"cannot tell the format from the name or the first line {first_line[:40]!r}",
            path=path,
            line=first_line_number,
            fix="pass format='fasta', 'fastq', 'csv' or 'tsv'",
        )
    looks_like = _format_from_content(first_line)
    if looks_like in ("fasta", "fastq") and looks_like != format:
        hint = {"fasta": ".fasta", "fastq": ".fastq"}[looks_like]
        raise InputError(
            f"this looks like {looks_like.upper()} (starts with {first_line[0]!r}), "
            f"not {format.upper()}",
            path=path,
            line=first_line_number,
            fix=f"rename the file to end in {hint} or pass format={looks_like!r}",
        )
    return format  # type: ignore[return-value]


def _format_from_content(first_line: str) -> Format | None:
    if first_line.startswith(">"):
        return "fasta"
    if first_line.startswith("@"):
        return "fastq"
    if first_line.startswith(("+", ";")):
        return None
    return "tsv" if "\t" in first_line else "csv"


_BOMS = (
    ("\udcff\udcfe\x00\x00", "UTF-32"),
    ("\x00\x00\udcfe\udcff", "UTF-32"),
    ("\udcff\udcfe", "UTF-16"),
    ("\udcfe\udcff", "UTF-16"),
)
# (bytes per letter, where the letter's byte sits, the encoding's name for iconv)
_WIDE_LAYOUTS = ((4, 0, "UTF-32LE"), (4, 3, "UTF-32BE"), (2, 0, "UTF-16LE"), (2, 1, "UTF-16BE"))


def _wide_encoding(head: str) -> str | None:
    """``UTF-16``/``UTF-32`` (with its byte order when there is no byte-order mark) when the
    head, decoded as UTF-8 with surrogate escapes, is text in one of them: a byte-order mark,
    or ASCII letters each padded with one or three NUL bytes."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    sample = head[: len(head[:400]) // 4 * 4]
    if len(sample) < 8 or sample.count("\x00") < len(sample) // 3:
        return None
    for width, offset, encoding in _WIDE_LAYOUTS:
        padding = "".join(sample[i::width] for i in range(width) if i != offset)
        if "\x00" not in sample[offset::width] and set(padding) == {"\x00"}:
            return encoding
    return None


def _read_head(path: Path) -> str:
    """The first 64 KiB of text (decompressed), for sniffing; refuses unreadable files."""
    head = b""
    with _open_binary(path) as stream, _io_errors(path, lambda: head.count(b"\n") + 1):
        while len(head) < _HEAD_BYTES and (chunk := stream.read(_HEAD_BYTES - len(head))):
            head += chunk
    return head.decode("utf-8-sig", errors="surrogateescape")


@contextmanager
def _open_binary(path: Path) -> Iterator[BinaryIO]:
    """The file's bytes, gunzipped when it starts with the gzip magic number."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - a context manager below closes it
    except OSError as error:
        raise InputError(
            f"cannot open the file ({error.strerror or error})",
            path=path,
            fix="check the path and its permissions",
        ) from None
    with raw:
        magic = raw.read(6)
        raw.seek(0)
        for prefix, name in _COMPRESSION_MAGIC.items():
            if magic.startswith(prefix):
                raise InputError(
                    f"the file is {name}-compressed",
                    path=path,
                    fix="decompress it, or recompress it with gzip",
                )
        if magic.startswith(b"\x1f\x8b"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield unzipped  # type: ignore[misc]
        else:
            yield raw


@contextmanager
def _open_lines(path: Path) -> Iterator[_LineReader]:
    """The file as UTF-8 text lines (universal newlines, BOM dropped), counted."""
    with _open_binary(path) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape")
        reader = _LineReader(text, path)
        with _io_errors(path, lambda: reader.line):
            yield reader


class _LineReader:
    """A text handle that counts the lines read and refuses bytes that are not UTF-8.

    Biopython's parsers only iterate, ``readline`` and ``read(0)``, so this is all they need.
    """

    def __init__(self, handle: TextIO, path: Path) -> None:
        self._handle = handle
        self._path = path
        self.line = 0

    def read(self, size: int = -1) -> str:
        return self._handle.read(size)

    def readline(self) -> str:
        return self._checked(self._handle.readline())

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return self._checked(next(self._handle))

    def _checked(self, text: str) -> str:
        if text:
            self.line += 1
            if not text.isascii() and (bad := _NOT_UTF8.search(text)):
                raise _not_utf8(ord(bad.group()) - 0xDC00, self._path, self.line)
        return text


@contextmanager
def _io_errors(path: Path, line: Callable[[], int]) -> Iterator[None]:
    """Turn gzip, csv and Biopython failures into ``InputError``s at the current line."""
    try:
        yield
    except InputError:
        raise
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise _gzip_error(path, error, line()) from None
    except csv.Error as error:
        raise InputError(
            f"not valid CSV/TSV ({error})",
            path=path,
            line=line(),
            fix=f"check the quoting around that line; sequences over {csv.field_size_limit()} "
            "characters belong in a FASTA file",
        ) from None
    except ValueError as error:
        raise InputError(
            f"unreadable content ({error})",
            path=path,
            line=line(),
            fix="check the format of the file around that line",
        ) from None
    except OSError as error:
        raise InputError(
            f"cannot read the file ({error})",
            path=path,
            line=line(),
            fix="check the file and the disk",
        ) from None


def _gzip_error(path: Path, error: object, line: int | None = None) -> InputError:
    return InputError(
        f"the gzip data is truncated or corrupt ({error})", path=path, line=line, fix=_GZIP_FIX
    )


def _not_utf8(byte: int, path: Path, line: int) -> InputError:
    return InputError(
        f"byte 0x{byte:02X} is not UTF-8 text (binary data, or another encoding)",
        path=path,
        line=line,
        fix="save the file as UTF-8 text",
    )


# Readers: each yields (id, sequence, header line or label field, line) from one format


def _records(options: _Options) -> Iterator[SequenceRecord]:
    """Validate and label the raw records of the file, one at a time."""
    seen: dict[str, int] = {}
    with _open_lines(options.path) as lines:
        raw_records = {
            "fasta": _fasta_records,
            "fastq": _fastq_records,
            "csv": _table_records,
            "tsv": _table_records,
        }[options.format](lines, options)
        for record_id, sequence, raw_label, line in raw_records:
            where = {"path": options.path, "line": line, "record": record_id}
            _check_sequence(sequence, options.alphabet, where)
            if options.duplicate_ids != "allow":
                _check_duplicate_id(record_id, line, seen, options, where)
            label = _label(record_id, raw_label, options, where)
            yield SequenceRecord(record_id, sequence, label, line)


def _fasta_records(lines: _LineReader, options: _Options) -> Iterator[RawRecord]:
    first_header = _skip_to_first_header(lines, options.path)
    next_start = lines.line
    for title, sequence in SimpleFastaParser(itertools.chain([first_header], lines)):
        start, next_start = next_start, lines.line
        yield _title_id(title, options.path, start), sequence, title, start


def _skip_to_first_header(lines: _LineReader, path: Path) -> str:
    """Return the first header line; refuse text before it, and files without one."""
    first_text = None
    for text in lines:
        if text.startswith(">"):
            if first_text is None:
                return text
            raise _text_before_header_error(path, first_text, lines.line)
        if first_text is None and text.strip():
            first_text = lines.line
    raise _no_header_error(path, first_text)


def _fastq_records(lines: _LineReader, options: _Options) -> Iterator[RawRecord]:
    records = FastqGeneralIterator(lines)
    next_start = 1
    while True:
        try:
            title, sequence, _quality = next(records)
        except StopIteration:
            return
        except InputError:
            raise
        except ValueError as error:
            raise InputError(
                f"not valid FASTQ ({error})",
                path=options.path,
                line=lines.line,
                fix="each record is an '@id' line, the sequence, a '+' line and a quality "
                "line of the same length",
            ) from None
        start, next_start = next_start, lines.line
        yield _title_id(title, options.path, start), sequence, title, start


def _text_before_header_error(path: Path, first_text: int, header: int) -> InputError:
    return InputError(
        f"sequence or text before the first '>' header (which is on line {header})",
        path=path,
        line=first_text,
        fix="delete those lines, or give them a '>' header line",
    )


def _no_header_error(path: Path, first_text: int | None) -> InputError:
    return InputError(
        "no '>' header line: this is not a FASTA file",
        path=path,
        line=first_text,
        fix="start each record with a line like '>seq1', or pass the right format",
    )


def _title_id(title: str, path: Path, line: int) -> str:
    words = title.split(maxsplit=1)
    if not words:
        raise InputError(
            "the header line has no id", path=path, line=line, fix="write an id after the '>'"
        )
    return words[0]


def _table_records(lines: _LineReader, options: _Options) -> Iterator[RawRecord]:
    rows = csv.reader(lines, delimiter="\t" if options.format == "tsv" else ",")
    first = _next_row(rows)
    if first is None:
        raise InputError("the file has no rows", path=options.path, fix="check the file")
    table = _Table.from_first_row(first, rows.line_num, options)
    data_rows = rows if table.has_header else itertools.chain([first], rows)
    count = 0
    for fields in data_rows:
        if any(value.strip() for value in fields):
            count += 1
            yield table.record(fields, rows.line_num)
    table.check_count(count, rows.line_num)


def _next_row(rows: Iterator[list[str]]) -> list[str] | None:
    return next((fields for fields in rows if any(value.strip() for value in fields)), None)


@dataclass
class _Table:
    """Where the sequence, label and id are in the rows of one CSV/TSV file."""

    path: Path
    stem: str
    sequence_index: int
    label_index: int | None
    id_index: int | None
    has_header: bool
    expected_rows: int | None

    @classmethod
    def from_first_row(cls, first: list[str], line: int, options: _Options) -> _Table:
        """Detect or apply the header mode on the first non-blank row."""
        names = [value.strip() for value in first]
        mode = options.header
        if mode is None:
            if isinstance(options.sequence_column, int) or options.sequence_column in names:
                mode = True
            elif _is_sklearn_header(names):
                mode = "sklearn"
            elif any(_looks_like_sequence(name) for name in names):
                raise InputError(
                    f"the first line looks like data, not a header: it names no column "
                    f"{options.sequence_column!r} (its fields are {names})",
                    path=options.path,
                    line=line,
                    fix="add a header line naming the columns (e.g. 'sequence,label'), or "
                    "pass header=False in Python",
                )
            else:
                raise InputError(
                    f"the first line names no column {options.sequence_column!r} "
                    f"(its fields are {names})",
                    path=options.path,
                    line=line,
                    fix="name the column holding the sequences (--sequence-column NAME; "
                    "sequence_column= in Python), or header=False if the file has no header line",
                )
        if mode == "sklearn" and not _is_sklearn_header(names):
            raise InputError(
                f"header='sklearn', but the first line {names} is not "
                "'n_samples,n_features[,names...]'",
                path=options.path,
                line=line,
                fix="pass header=True (column names), header=False (none) or leave it None",
            )
        if mode is True:
            column = _NamedColumns(names, options.path, line)
        else:
            width = int(names[1]) + 1 if mode == "sklearn" else len(names)
            column = _NamedColumns(None, options.path, line, width=width)
        label_index = column.label(options.label_column, required=options.label_type is not None)
        return cls(
            path=options.path,
            stem=Path(options.path.name.removesuffix(".gz")).stem,
            sequence_index=column.index(options.sequence_column, "sequence_column", "sequence"),
            label_index=label_index,
            id_index=None
            if options.id_column is None
            else column.index(options.id_column, "id_column", None),
            has_header=mode is not False,
            expected_rows=int(names[0]) if mode == "sklearn" else None,
        )

    def record(self, fields: list[str], line: int) -> RawRecord:
        """The raw record of one data row."""
        columns = (self.sequence_index, self.label_index, self.id_index)
        needed = max(index for index in columns if index is not None)
        if len(fields) <= needed:
            raise InputError(
                f"the row has {len(fields)} field(s), but column {needed} is needed",
                path=self.path,
                line=line,
                fix="fill in the missing fields, or check the delimiter (',' for .csv, tab "
                "for .tsv)",
            )
        record_id = (
            f"{self.stem}:{line}" if self.id_index is None else fields[self.id_index].strip()
        )
        if not record_id:
            raise InputError(
                "the id field is empty", path=self.path, line=line, fix="give every row an id"
            )
        sequence = "".join(fields[self.sequence_index].split())
        label = None if self.label_index is None else fields[self.label_index].strip()
        return record_id, sequence, label, line

    def check_count(self, count: int, line: int) -> None:
        """Refuse a file whose row count contradicts its sklearn-style first line."""
        if self.expected_rows is not None and count != self.expected_rows:
            raise InputError(
                f"the sklearn-style first line declares {self.expected_rows} rows, but the "
                f"file has {count}",
                path=self.path,
                line=line,
                fix="the file may be truncated: copy it again, or fix the first line",
            )


@dataclass
class _NamedColumns:
    """Column lookup by name (header line) or by 0-based position (no header line)."""

    names: list[str] | None
    path: Path
    line: int
    width: int = 0

    def index(self, column: str | int, option: str, default_name: str | None) -> int:
        if isinstance(column, int):
            width = self.width if self.names is None else len(self.names)
            if not 0 <= column < width:
                raise InputError(
                    f"{_flag(option)} {column} is outside the {width} column(s) of the file",
                    path=self.path,
                    line=self.line,
                    fix=f"give a 0-based column position below {width}",
                )
            return column
        if self.names is None:
            if column == default_name:
                return 0
            raise InputError(
                f"{_flag(option)} {column!r} names a column, but the file has no header line",
                path=self.path,
                line=self.line,
                fix=f"give {_flag(option)} as a 0-based column position",
            )
        if column not in self.names:
            raise InputError(
                f"no column {column!r} (the header has {self.names})",
                path=self.path,
                line=self.line,
                fix=f"give {_flag(option)} one of those names",
            )
        return self.names.index(column)

    def label(self, column: str | int | None, *, required: bool) -> int | None:
        """The label column; the default ``label`` may be absent (unlabelled records)."""
        if column is None:
            return None
        if column == "label":
            if self.names is None:
                return 1 if self.width > 1 else None
            if "label" not in self.names and not required:
                return None
        return self.index(column, "label_column", None)


def _flag(option: str) -> str:
    """How a reading option is named for both callers: ``--label-column (label_column=)``."""
    return f"--{option.replace('_', '-')} ({option}= in Python)"


def _is_sklearn_header(fields: list[str]) -> bool:
    """``n_samples,n_features[,target names...]``, the first line of sklearn's bundled CSVs."""
    return len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit()


# Labels


def _header_label_parser(spec: str) -> HeaderLabel:
    """The function that finds the raw label in a header line, from ``label_from``."""
    kind, _, argument = spec.partition(":")
    if kind == "key" and argument:

        def by_key(title: str) -> str | None:
            for pair in _PAIR_SEPARATORS.split(title):
                key, equals, value = pair.partition("=")
                if equals and key == argument:
                    return value
            return None

        return by_key
    if kind == "field" and argument.isdigit():
        position = int(argument)

        def by_field(title: str) -> str | None:
            fields = title.split("|")
            return fields[position].strip() if position < len(fields) else None

        return by_field
    if kind == "regex":
        try:
            pattern = re.compile(argument)
        except re.error as error:
            raise ConfigError(
                f"{_flag('label_from')} {spec!r}: bad regular expression ({error})"
            ) from None
        if pattern.groups != 1:
            raise ConfigError(
                f"{_flag('label_from')} {spec!r}: the expression needs exactly one group"
            )

        def by_regex(title: str) -> str | None:
            match = pattern.search(title)
            return None if match is None else match.group(1)

        return by_regex
    raise ConfigError(
        f"{_flag('label_from')} {spec!r} is not 'key:NAME', 'field:N' (0-based) or 'regex:PATTERN'"
    )


def _read_label_table(path: Path, id_column: str | int, label_column: str | int) -> dict[str, str]:
    """A sidecar CSV/TSV with a header line, as {record id: raw label}."""
    format = _sniff_format(path, None)
    if format not in ("csv", "tsv"):
        raise InputError(
            f"a labels file must be CSV or TSV, not {format.upper()}",
            path=path,
            fix="write a table with an 'id' and a 'label' column",
        )
    labels: dict[str, str] = {}
    with _open_lines(path) as lines:
        rows = csv.reader(lines, delimiter="\t" if format == "tsv" else ",")
        names = [value.strip() for value in _next_row(rows) or []]
        columns = _NamedColumns(names, path, rows.line_num)
        id_index = columns.index(id_column, "id_column", None)
        label_index = columns.index(label_column, "label_column", None)
        for fields in rows:
            if not any(value.strip() for value in fields):
                continue
            if len(fields) <= max(id_index, label_index):
                raise InputError(
                    f"the row has {len(fields)} field(s), too few for the id and label columns",
                    path=path,
                    line=rows.line_num,
                    fix="fill in the missing fields",
                )
            record_id = fields[id_index].strip()
            if record_id in labels:
                raise InputError(
                    f"id {record_id!r} has a second label",
                    path=path,
                    line=rows.line_num,
                    fix="keep one row per record id",
                )
            labels[record_id] = fields[label_index].strip()
    return labels


def _label(record_id: str, text: str | None, options: _Options, where: dict) -> Label | None:
    """The typed label of one record from its configured source, or None when unlabelled."""
    if options.sidecar is not None:
        raw = options.sidecar.get(record_id)
        source = f"the labels file {options.sidecar_path} has no row for this id"
        fix = f"add a row for {record_id!r} to {options.sidecar_path}"
    elif options.format in ("fasta", "fastq"):
        if options.header_label is None:
            return None
        raw = options.header_label(text or "")
        source = f"the header has no label for {_flag('label_from')} {options.label_from!r}"
        fix = f"add the label to the header, or change {_flag('label_from')}"
    elif text is None:
        return None
    else:
        raw = text
        source = "the label field is empty"
        fix = "fill in every label, or drop the unlabelled rows"
    if not raw:
        raise InputError(f"label missing: {source}", **where, fix=fix)
    return _convert_label(raw, options.label_type, where)


def _convert_label(raw: str, label_type: str | None, where: dict) -> Label:
    if label_type == "multilabel":
        return tuple(value.strip() for value in raw.split(",") if value.strip())
    if label_type == "numeric":
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InputError(
                f"label {raw!r} is not a finite number",
                **where,
                fix="label_type='numeric' (regression) needs numbers; use 'class' for classes",
            )
        return value
    return raw


# Checks


def _check_sequence(sequence: str, alphabet: str | None, where: dict) -> None:
    """Refuse empty sequences, characters that are not residues, and the wrong alphabet."""
    if not sequence:
        raise InputError(
            "the record has an empty sequence",
            **where,
            fix="remove the record, or add its sequence",
        )
    if bad := _NOT_SEQUENCE.search(sequence):
        _refuse_character(bad.group(), bad.start(), _NOT_RESIDUE, where)
    if alphabet == "dna":
        fraction = _dna_fraction(sequence)
        if fraction < DNA_FRACTION_THRESHOLD:
            raise InputError(
                f"this looks like protein, not DNA: {fraction:.0%} of the first letters are "
                f"A/C/G/T/U/N (DNA has at least {DNA_FRACTION_THRESHOLD:.0%})",
                **where,
                fix="use a protein model (or, for a new model, --tokenizer protein; in "
                "Python alphabet='protein'), or check the file",
            )
        if bad := _NOT_NUCLEOTIDE.search(sequence):
            _refuse_character(bad.group(), bad.start(), "is not an IUPAC nucleotide code", where)
    elif (
        alphabet == "protein"
        and len(sequence) >= PROTEIN_MIN_LENGTH_FOR_DNA_CHECK
        and _dna_fraction(sequence) >= DNA_FRACTION_THRESHOLD
    ):
        raise InputError(
            f"this looks like DNA, not protein: at least {DNA_FRACTION_THRESHOLD:.0%} of the "
            "first letters are A/C/G/T/U/N",
            **where,
            fix="use a DNA model (or, for a new model, --tokenizer dna; in Python "
            "alphabet='dna'), or translate the sequences first",
        )


_NOT_RESIDUE = "is not a residue letter, '*', '-' or '.'"


def _refuse_character(character: str, index: int, problem: str, where: dict) -> None:
    """Refuse ``character`` at 0-based ``index`` of the record ``where`` names."""
    if character.isdigit() or character.isspace():
        fix = (
            "this looks like GenBank/EMBL-style numbered sequence lines: convert the file to "
            "FASTA (e.g. Bio.SeqIO.convert) or remove the numbers and spaces"
        )
    else:
        fix = "remove or replace that character"
    raise InputError(f"character {character!r} {problem}", **where, position=index + 1, fix=fix)


def _dna_fraction(sequence: str) -> float:
    letters = _NOT_LETTER.sub("", sequence[:ALPHABET_SAMPLE]).upper()
    if not letters:
        return 1.0
    return sum(letters.count(letter) for letter in _DNA_LETTERS) / len(letters)


def _check_duplicate_id(
    record_id: str, line: int, seen: dict[str, int], options: _Options, where: dict
) -> None:
    first_line = seen.setdefault(record_id, line)
    if first_line == line:
        return
    error = InputError(
        f"duplicate id (first seen on line {first_line})",
        **where,
        fix="make the ids unique, or pass --duplicate-ids warn or allow (duplicate_ids= in Python)",
    )
    if options.duplicate_ids == "error":
        raise error
    warnings.warn(str(error), UserWarning, stacklevel=3)


# The streaming FASTA reader: a record is never held whole

FastaEvent = tuple[Literal["id"], str] | tuple[Literal["seq"], bytes]


def stream_fasta(path: str | Path) -> Iterator[FastaEvent]:
    """``("id", record id)`` at each header, then ``("seq", bases)`` pieces of a FASTA file
    (optionally gzipped) without line breaks; sniffed and refused like ``read_sequences``
    (an empty, binary, UTF-16 or FASTQ file)."""
    path = Path(path)
    _sniff_format(path, "fasta")
    return fasta_events(decompressed_chunks(read_chunks(path), path), path)


def fasta_records(path: str | Path) -> Iterator[tuple[str, str]]:
    """``(id, sequence)`` of each record of a FASTA file, read by ``stream_fasta``: one record
    is held whole (for consumers of whole sequences: BPE training, dataset cards)."""
    record_id: str | None = None
    pieces: list[bytes] = []
    for _, value in stream_fasta(path):
        if isinstance(value, bytes):
            pieces.append(value)
            continue
        if record_id is not None:
            yield record_id, b"".join(pieces).decode("ascii")
        record_id, pieces = value, []
    if record_id is not None:
        yield record_id, b"".join(pieces).decode("ascii")


def read_chunks(path: str | Path) -> Iterator[bytes]:
    """The file's bytes, ``READ_BYTES`` at a time."""
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_BYTES):
            yield chunk


def decompressed_chunks(chunks: Iterable[bytes], path: str | Path) -> Iterator[bytes]:
    """Plain bytes from plain or gzip (also multi-member, as bgzip writes) chunks; a
    truncated or corrupt gzip stream is refused as ``read_sequences`` refuses it."""
    chunks = iter(chunks)
    first = b""
    while len(first) < 2 and (more := next(chunks, b"")):
        first += more
    if not first.startswith(b"\x1f\x8b"):
        yield first
        yield from chunks
        return
    decompressor = zlib.decompressobj(wbits=31)
    pending, member_open = first, False
    try:
        while pending:
            while pending:
                member_open = True
                yield decompressor.decompress(pending, READ_BYTES)
                pending = decompressor.unconsumed_tail
                if decompressor.eof:
                    pending = decompressor.unused_data + pending
                    decompressor, member_open = zlib.decompressobj(wbits=31), False
            pending = next(chunks, b"")
    except zlib.error as error:
        raise _gzip_error(Path(path), error) from None
    if member_open:
        raise _gzip_error(
            Path(path), "Compressed file ended before the end-of-stream marker was reached"
        )


def fasta_events(chunks: Iterable[bytes], path: str | Path) -> Iterator[FastaEvent]:
    """The events of ``stream_fasta`` from plain FASTA ``chunks``: a ``>`` at the start of a
    line opens a header; spaces, tabs and line breaks are dropped from sequence lines.

    Positions are kept as byte offsets; a line number is counted (by reading the file again
    up to the offset) only for an error message."""
    path = Path(path)
    at = 0  # offset of the current chunk in the file
    at_line_start = True
    header: bytearray | None = None
    header_at = -1  # offset of the last header's '>' (-1: none yet)
    record: str | None = None
    position = 0  # residues of ``record`` so far
    text_at: int | None = None  # offset of the first text before any header
    for chunk in chunks:
        start = 0
        while start < len(chunk):
            if header is not None:
                newline = chunk.find(b"\n", start)
                header += chunk[start : len(chunk) if newline < 0 else newline]
                if newline < 0:
                    break
                record, position = _header_id(header, path, header_at), 0
                yield "id", record
                header, start, at_line_start = None, newline + 1, True
                continue
            marker = _next_header(chunk, start, at_line_start)
            region = chunk[start : len(chunk) if marker < 0 else marker]
            if piece := region.translate(_CHECKED, _FASTA_WHITESPACE):
                if record is None:
                    if text_at is None:
                        text_at = at + start + len(region) - len(region.lstrip(_FASTA_WHITESPACE))
                else:
                    if b"\0" in piece:
                        _refuse_fasta_byte(region, path, at + start, record, header_at, position)
                    yield "seq", piece
                    position += len(piece)
            if region:
                at_line_start = region.endswith(b"\n")
            if marker < 0:
                break
            if record is None and text_at is not None:
                lines = _line_at(path, text_at), _line_at(path, at + marker)
                raise _text_before_header_error(path, *lines)
            header, header_at, start, at_line_start = bytearray(), at + marker, marker + 1, False
        at += len(chunk)
    if header is not None:
        yield "id", _header_id(header, path, header_at)
    if header_at < 0:
        raise _no_header_error(path, None if text_at is None else _line_at(path, text_at))


def _next_header(chunk: bytes, start: int, at_line_start: bool) -> int:
    """The offset in ``chunk`` of the next ``>`` that starts a line, or -1 (a ``>`` inside a
    line is left in the sequence, where it is refused)."""
    marker = chunk.find(b">", start)
    while marker >= 0 and not (chunk[marker - 1] == 10 if marker > start else at_line_start):
        marker = chunk.find(b">", marker + 1)
    return marker


def _line_at(path: Path, offset: int) -> int:
    """The 1-based line of byte ``offset`` of the (decompressed) file, read again."""
    lines, seen = 1, 0
    for chunk in decompressed_chunks(read_chunks(path), path):
        if offset < seen + len(chunk):
            return lines + chunk.count(b"\n", 0, offset - seen)
        lines += chunk.count(b"\n")
        seen += len(chunk)
    return lines


def _header_id(header: bytearray, path: Path, at: int) -> str:
    """The id of the header line whose ``>`` is at byte ``at``; it must be UTF-8."""
    title = bytes(header).decode("utf-8", errors="surrogateescape")
    if not title.isascii() and (bad := _NOT_UTF8.search(title)):
        raise _not_utf8(ord(bad.group()) - 0xDC00, path, _line_at(path, at))
    words = title.split(maxsplit=1)
    return words[0] if words else _title_id(title, path, _line_at(path, at))


def _refuse_fasta_byte(
    region: bytes, path: Path, at: int, record: str, header_at: int, position: int
) -> None:
    """Refuse the first byte of ``region`` (sequence lines at byte ``at``, ``position``
    residues into ``record``) that is not a residue letter, ``*``, ``-`` or ``.``."""
    bad = _NOT_FASTA_BYTE.search(region)
    assert bad is not None
    before = region[: bad.start()]
    character = region[bad.start() : bad.start() + 4].decode("utf-8", errors="surrogateescape")[0]
    if _NOT_UTF8.match(character):
        raise _not_utf8(region[bad.start()], path, _line_at(path, at + bad.start()))
    index = position + len(before.translate(None, _FASTA_WHITESPACE))
    where = {"path": path, "line": _line_at(path, header_at), "record": record}
    _refuse_character(character, index, _NOT_RESIDUE, where)
