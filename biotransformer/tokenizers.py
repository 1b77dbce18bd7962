"""Token schemes for DNA and protein: built from a spec string, vectorised, saved as JSON.

A scheme is chosen by a spec string ``NAME[:key=value,...]``:

``dna``
    One token per nucleotide. A C G T, N and the IUPAC ambiguity codes R Y S W K M B D H V
    each have their own token.
``dna-kmer:k=K[,stride=S]``
    k-mers of A/C/G/T taken every ``stride`` bases (stride 1: overlapping, as DNABERT;
    stride = k: non-overlapping, as Nucleotide Transformer). Single-nucleotide tokens for all
    15 letters follow the 4**k k-mers, for tails and ambiguous bases.
``dna-bpe:vocab=V``
    Byte-pair encoding trained on the user's FASTA with HuggingFace ``tokenizers`` (as
    DNABERT-2); the trained model is stored inside ``tokenizer.json``.
``protein``
    ESM-2's alphabet with ESM-2's ids (33 tokens), so ESM checkpoints map id for id.

Options (all recorded in the JSON and in the canonical ``spec``):

==============  ==============================  ==========================================
option          schemes                         values (default first)
==============  ==============================  ==========================================
``cls``         all                             ``true``: prepend ``<cls>``
``eos``         all                             ``false`` for DNA, ``true`` for protein
``max_length``  all                             ``none`` or total tokens, specials included
``lowercase``   all                             ``upper`` (soft-masked bases) | ``error``
``ambiguous``   dna                             ``token`` | ``unk`` | ``error``
``ambiguous``   dna-kmer                        ``unk`` if stride 1, else ``fallback`` |
                                                ``error``
``ambiguous``   dna-bpe                         ``token`` | ``error``
``k``           dna-kmer                        ``6`` (1..8)
``stride``      dna-kmer                        ``1`` (1..k)
``tail``        dna-kmer                        ``fallback`` (single bases) | ``drop``
``vocab``       dna-bpe                         ``4096``
``stop``        protein                         ``strip`` a trailing ``*`` | ``error``
==============  ==============================  ==========================================

Letter rules. k-mer ``ambiguous=unk``: the k-mers sit on one grid over the whole sequence and
a k-mer holding a non-ACGT base becomes ``<unk>``. ``ambiguous=fallback``: the sequence is
cut at each ambiguous base, which becomes a single-letter token, and each A/C/G/T run is
tiled with k-mers on its own. Bases left after the last whole k-mer of a run (the tail, or a
whole run shorter than k) become single-letter tokens, or are dropped with ``tail=drop``.
An internal ``*`` in a protein and any character without a token raise ``InputError`` naming
the character and its 1-based position.

Vocabulary: ``Tokenizer.from_spec(spec, vocabulary=tokens)`` keeps the scheme's segmentation
but numbers tokens as in ``tokens`` (a checkpoint's ``vocab.txt``, e.g. Nucleotide
Transformer's ``<unk> <pad> <mask> <cls> ...`` then its 6-mers): scheme tokens missing from it
read ``<unk>``, and its tokens outside the scheme are special (never produced, never masked).

Offsets: ``encode_batch(..., return_offsets=True)`` gives for each sequence an ``(n, 2)``
array of ``[start, end)`` spans in the input string, one row per token; ``<cls>`` and
``<eos>`` get ``(-1, -1)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from biotransformer.atomic import write_json
from biotransformer.errors import ConfigError, InputError

FORMAT = "biotransformer-tokenizer"
FORMAT_VERSION = 1
FILENAME = "tokenizer.json"

DNA_LETTERS = "ACGTNRYSWKMBDHV"  # codes 0..14; codes 0..3 are the 2-bit bases
AMBIGUOUS_DNA = DNA_LETTERS[4:]
DNA_SPECIALS = ("<pad>", "<unk>", "<cls>", "<eos>", "<mask>")  # ids 0..4, as DNABERT
ESM2_TOKENS = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y",
    "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-",
    "<null_1>", "<mask>",
)  # fmt: skip
PROTEIN_SPECIALS = ("<cls>", "<pad>", "<eos>", "<unk>", "<null_1>", "<mask>")
MAX_K = 8
BPE_TRAIN_CHUNK = 2000  # bases per training piece: BPE words need not span a chromosome

_COMPLEMENT = str.maketrans("ACGTNRYSWKMBDHVacgtnryswkmbdhv", "TGCANYRSWMKVHDBtgcanyrswmkvhdb")
_INVALID = 255


def reverse_complement(seq: str) -> str:
    """Reverse complement of a DNA sequence; IUPAC codes and lowercase are kept as such."""
    data = np.frombuffer(_ascii(seq, "reverse_complement"), np.uint8)
    known = _byte_table({**{c: 1 for c in DNA_LETTERS}, **{c.lower(): 1 for c in DNA_LETTERS}})
    bad = np.flatnonzero(known[data] == _INVALID)
    if bad.size:
        raise InputError(
            f"character {seq[bad[0]]!r} is not a DNA letter",
            position=int(bad[0]) + 1,
            fix=f"use only {DNA_LETTERS} (either case)",
        )
    return seq.translate(_COMPLEMENT)[::-1]


# ----------------------------------------------------------------------------- the spec


def _parse_bool(text: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in value:
        raise ValueError("expected true or false")
    return value[text.lower()]


def _parse_int(text: str) -> int:
    return int(text)


def _parse_optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _choice(*values: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in values:
            raise ValueError(f"expected one of {', '.join(values)}")
        return text

    parse.values = values  # type: ignore[attr-defined]
    return parse


_COMMON: dict[str, Callable[[str], Any]] = {
    "cls": _parse_bool,
    "eos": _parse_bool,
    "max_length": _parse_optional_int,
    "lowercase": _choice("upper", "error"),
}
OPTIONS: dict[str, dict[str, Callable[[str], Any]]] = {
    "dna": {"ambiguous": _choice("token", "unk", "error"), **_COMMON},
    "dna-kmer": {
        "k": _parse_int,
        "stride": _parse_int,
        "ambiguous": _choice("unk", "fallback", "error"),
        "tail": _choice("fallback", "drop"),
        **_COMMON,
    },
    "dna-bpe": {"vocab": _parse_int, "ambiguous": _choice("token", "error"), **_COMMON},
    "protein": {"stop": _choice("strip", "error"), **_COMMON},
}
SCHEMES = tuple(OPTIONS)


def _defaults(scheme: str, given: dict[str, Any]) -> dict[str, Any]:
    common = {"cls": True, "eos": scheme == "protein", "max_length": None, "lowercase": "upper"}
    if scheme == "dna":
        return {"ambiguous": "token", **common}
    if scheme == "dna-kmer":
        stride = given.get("stride", 1)
        ambiguous = "unk" if stride == 1 else "fallback"
        return {"k": 6, "stride": 1, "ambiguous": ambiguous, "tail": "fallback", **common}
    if scheme == "dna-bpe":
        return {"vocab": 4096, "ambiguous": "token", **common}
    return {"stop": "strip", **common}


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``NAME[:key=value,...]`` into the scheme and its full, validated options."""
    scheme, _, rest = spec.strip().partition(":")
    if scheme not in OPTIONS:
        raise ConfigError(f"unknown token scheme {scheme!r} in spec {spec!r}; valid: {SCHEMES}")
    allowed = OPTIONS[scheme]
    given: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise ConfigError(
                f"unknown option {item!r} in spec {spec!r}; {scheme} takes "
                f"{', '.join(f'{name}=' for name in allowed)}"
            )
        if key in given:
            raise ConfigError(f"option {key!r} given twice in spec {spec!r}")
        try:
            given[key] = allowed[key](text.strip())
        except ValueError as error:
            raise ConfigError(f"bad value {text!r} for {key} in spec {spec!r}: {error}") from None
    options = {**_defaults(scheme, given), **given}
    _check_options(scheme, options, spec)
    return scheme, options


def _check_options(scheme: str, options: dict[str, Any], spec: str) -> None:
    if scheme == "dna-kmer":
        if not 1 <= options["k"] <= MAX_K:
            raise ConfigError(f"k must be 1..{MAX_K} in spec {spec!r}, got {options['k']}")
        if not 1 <= options["stride"] <= options["k"]:
            raise ConfigError(f"stride must be 1..k in spec {spec!r}, got {options['stride']}")
    if scheme == "dna-bpe" and options["vocab"] < len(DNA_SPECIALS) + len(DNA_LETTERS):
        raise ConfigError(f"vocab must be at least 20 in spec {spec!r}, got {options['vocab']}")
    max_length = options["max_length"]
    if max_length is not None and max_length < 1 + options["cls"] + options["eos"]:
        raise ConfigError(f"max_length={max_length} leaves no room for a token in {spec!r}")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def canonical_spec(scheme: str, options: dict[str, Any]) -> str:
    """The spec string naming every option, in a fixed order."""
    order = [key for key in OPTIONS[scheme] if key in options]
    return f"{scheme}:" + ",".join(f"{key}={_format_value(options[key])}" for key in order)


# ----------------------------------------------------------------------------- letters


def _byte_table(mapping: dict[str, int]) -> np.ndarray:
    """A 256-entry lookup table: byte -> value, ``_INVALID`` for bytes not in ``mapping``."""
    table = np.full(256, _INVALID, np.uint8)
    for letter, value in mapping.items():
        table[ord(letter)] = value
    return table


def _ascii(text: str, what: str) -> bytes:
    try:
        return text.encode("ascii")
    except UnicodeEncodeError as error:
        raise InputError(
            f"character {text[error.start]!r} is not a sequence letter ({what})",
            position=error.start + 1,
            fix="sequences are plain ASCII letters",
        ) from None
    except AttributeError:
        raise InputError(f"expected a sequence string, got {type(text).__name__}") from None


def _ragged_arange(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of ``counts`` items: each item's group and its index inside the group."""
    owner = np.repeat(np.arange(counts.size), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(owner.size) - starts[owner]


# ----------------------------------------------------------------------------- segmenters
#
# A segmenter turns the validated letters of a whole batch (concatenated) into flat content
# tokens in input order: ids, start and end in the batch buffer, and the count per sequence.


class _Tokens:
    """Flat content tokens of a batch: ``ids + shift``, ``counts`` per row, ``spans()``.

    ``ids`` may be a narrow dtype with the constant ``shift`` added only when the ids are
    written to the output, saving a pass. ``spans()`` returns the start and end of each token
    in the batch buffer; it is computed only when offsets are asked for.
    """

    def __init__(
        self,
        ids: np.ndarray,
        counts: np.ndarray,
        spans: Callable[[], tuple[np.ndarray, np.ndarray]],
        shift: int = 0,
    ) -> None:
        self.ids, self.counts, self.spans, self.shift = ids, counts, spans, shift


class _Letters:
    """One token per letter; the byte table gives the id directly."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def segment(self, values: np.ndarray, lengths: np.ndarray, bounds: np.ndarray) -> _Tokens:
        def spans() -> tuple[np.ndarray, np.ndarray]:
            starts = np.arange(values.size)
            return starts, starts + 1

        return _Tokens(values, lengths, spans)


class _Kmers:
    """k-mers every ``stride`` letters; tails and (with fallback) ambiguous bases as singles."""

    def __init__(self, k: int, stride: int, ambiguous: str, tail: str, first_kmer: int) -> None:
        self.k, self.stride, self.ambiguous, self.tail = k, stride, ambiguous, tail
        self.first_kmer = first_kmer
        self.first_single = first_kmer + 4**k
        self.unk = DNA_SPECIALS.index("<unk>")

    def segment(self, codes: np.ndarray, lengths: np.ndarray, bounds: np.ndarray) -> _Tokens:
        ambiguous = codes >= 4
        runs = self.ambiguous == "fallback" and bool(ambiguous.any())
        if runs:
            unit_starts, unit_owner = self._runs(ambiguous, bounds)
            lone = ambiguous[unit_starts]  # an ambiguous base, a unit of its own
        else:
            unit_starts, unit_owner = bounds[:-1], np.arange(lengths.size)
            lone = np.zeros(lengths.size, bool)
        unit_lengths = np.diff(np.append(unit_starts, codes.size))
        k, s = self.k, self.stride
        n_kmers = np.where((unit_lengths >= k) & ~lone, (unit_lengths - k) // s + 1, 0)
        tail_start = np.where(n_kmers > 0, (n_kmers - 1) * s + k, 0)
        n_tail = unit_lengths - tail_start
        if s == 1 and not runs and not n_tail.any():  # the common case: only k-mers
            valid = self._kmer_starts(bounds, codes.size)
            spans = lambda: (np.flatnonzero(valid), np.flatnonzero(valid) + k)  # noqa: E731
            if ambiguous.any():
                return _Tokens(self._kmer_ids(codes, ambiguous, valid), n_kmers, spans)
            if not valid.size:
                return _Tokens(np.zeros(0, np.int64), n_kmers, spans)
            return _Tokens(_rolling_codes(codes, k)[valid], n_kmers, spans, self.first_kmer)
        if self.tail == "drop":
            n_tail = np.where(lone, n_tail, 0)
        per_unit = n_kmers + n_tail
        counts = np.bincount(unit_owner, weights=per_unit, minlength=lengths.size).astype(np.int64)
        unit, j = _ragged_arange(per_unit)
        is_kmer = j < n_kmers[unit]
        starts = unit_starts[unit] + np.where(is_kmer, j * s, tail_start[unit] + j - n_kmers[unit])
        singles = codes[starts].astype(np.int64) + self.first_single
        ids = np.where(is_kmer, self._kmer_ids(codes, ambiguous, starts), singles)
        return _Tokens(ids, counts, lambda: (starts, starts + np.where(is_kmer, k, 1)))

    def _kmer_starts(self, bounds: np.ndarray, size: int) -> np.ndarray:
        """Mask of stride-1 window starts when every sequence is empty or at least k long."""
        valid = np.ones(max(size - self.k + 1, 0), bool)
        last = bounds[1:, None] - np.arange(1, self.k)[None, :]  # the k-1 last letters
        last = last[(last >= 0) & (last < valid.size)]
        valid[last] = False
        return valid

    def _kmer_ids(self, codes: np.ndarray, ambiguous: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Ids of the k-mers at ``starts`` (indices, or a mask over window starts)."""
        k = self.k
        windows = codes.size - k + 1
        if windows <= 0:
            return np.zeros(starts.size, np.int64)
        if starts.dtype != bool:
            starts = np.minimum(starts, windows - 1)
        ids = np.add(_rolling_codes(codes & 3, k)[starts], self.first_kmer, dtype=np.int64)
        if ambiguous.any():
            seen = np.concatenate([[0], np.cumsum(ambiguous)])
            ids[(seen[k:] > seen[:-k])[starts]] = self.unk
        return ids

    @staticmethod
    def _runs(ambiguous: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Units: each ambiguous letter alone, and each run of A/C/G/T, within sequences."""
        start = np.zeros(ambiguous.size + 1, bool)
        start[bounds[:-1]] = True
        start[:-1] |= ambiguous
        start[1:] |= ambiguous
        unit_starts = np.flatnonzero(start[:-1])
        owner = np.searchsorted(bounds, unit_starts, side="right") - 1
        return unit_starts, owner


class _Bpe:
    """A HuggingFace ``tokenizers`` BPE model over uppercased, validated letters."""

    def __init__(self, model_json: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.model_json = model_json
        self.model = HFTokenizer.from_str(model_json)

    def segment(self, letters: np.ndarray, lengths: np.ndarray, bounds: np.ndarray) -> _Tokens:
        text = letters.tobytes().decode("ascii")
        pieces = [text[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]
        encodings = self.model.encode_batch(pieces, add_special_tokens=False)
        counts = np.fromiter((len(e.ids) for e in encodings), np.int64, count=len(encodings))
        ids = np.fromiter((i for e in encodings for i in e.ids), np.int64, count=counts.sum())
        spans = np.array([span for e in encodings for span in e.offsets], np.int64)
        spans = spans.reshape(-1, 2) + np.repeat(bounds[:-1], counts)[:, None]
        return _Tokens(ids, counts, lambda: (spans[:, 0], spans[:, 1]))


def _rolling_codes(two_bit: np.ndarray, k: int) -> np.ndarray:
    """2-bit codes of every k-long window, built by doubling: log2(k) passes, not k."""
    blocks: dict[int, np.ndarray] = {1: two_bit.astype(np.uint16)}
    width = 1
    while width * 2 <= k:
        block = blocks[width]
        blocks[width * 2] = (block[:-width] << (2 * width)) | block[width:]
        width *= 2
    codes, covered = blocks[width], width
    while covered < k:
        width //= 2
        if covered + width <= k:
            size = two_bit.size - covered - width + 1
            codes = (codes[:size] << (2 * width)) | blocks[width][covered : covered + size]
            covered += width
    return codes


def train_bpe(sequences: Iterable[str], vocab_size: int) -> str:
    """Train a BPE model on validated, uppercased DNA; returns the HF tokenizer JSON."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, trainers

    model = HFTokenizer(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(DNA_SPECIALS),
        initial_alphabet=list(DNA_LETTERS),
        limit_alphabet=len(DNA_LETTERS),
        show_progress=False,
    )

    def chunks() -> Iterator[str]:
        for seq in sequences:
            for start in range(0, len(seq), BPE_TRAIN_CHUNK):
                yield seq[start : start + BPE_TRAIN_CHUNK]

    model.train_from_iterator(chunks(), trainer)
    return model.to_str()


def read_fasta_sequences(paths: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    """The sequences of FASTA or gzipped FASTA files, read (and refused) as ``io`` reads them."""
    from biotransformer.io import fasta_records

    for path in paths:
        for _, sequence in fasta_records(Path(path)):
            yield sequence


# ----------------------------------------------------------------------------- tokenizer


class Tokenizer:
    """A token scheme: letters -> ids with its own special tokens; see the module docstring."""

    def __init__(
        self,
        scheme: str,
        options: dict[str, Any],
        bpe_model: str | None = None,
        vocabulary: Sequence[str] | None = None,
    ) -> None:
        self.scheme = scheme
        self.options = dict(options)
        self.spec = canonical_spec(scheme, options)
        self.alphabet = "protein" if scheme == "protein" else "dna"
        self.add_cls: bool = options["cls"]
        self.add_eos: bool = options["eos"]
        self.max_length: int | None = options["max_length"]
        self.k: int = options.get("k", 1)
        self.stride: int = options.get("stride", 1)
        self.bpe_model: str | None = None
        self.tokens: list[str] = []
        if scheme == "protein":
            self._build_protein()
        elif scheme == "dna":
            self._build_dna()
        elif scheme == "dna-kmer":
            self._build_kmer()
        else:
            if bpe_model is None:
                raise ConfigError(
                    f"{scheme} must be trained: pass train_files=[...] to Tokenizer.from_spec"
                )
            self._build_bpe(bpe_model)
        index = {token: i for i, token in enumerate(self.tokens)}
        self.pad_id, self.unk_id = index["<pad>"], index["<unk>"]
        self.cls_id, self.eos_id, self.mask_id = index["<cls>"], index["<eos>"], index["<mask>"]
        specials = PROTEIN_SPECIALS if scheme == "protein" else DNA_SPECIALS
        self.special_ids: tuple[int, ...] = tuple(sorted(index[t] for t in specials))
        unknown_letter = "X" if scheme == "protein" else "N"
        shown = {t: "" for t in specials} | {"<unk>": unknown_letter, "<mask>": unknown_letter}
        self._text: np.ndarray = np.array([shown.get(t, t) for t in self.tokens], dtype=object)
        self.vocabulary: list[str] | None = None
        self._to_vocab: np.ndarray | None = None
        if vocabulary is not None:
            self._renumber(list(vocabulary), specials)

    def _renumber(self, vocabulary: list[str], specials: Sequence[str]) -> None:
        """Give the scheme's tokens the ids they have in ``vocabulary`` (a checkpoint's own
        token list): scheme tokens it lacks read ``<unk>``, its extra tokens are specials."""
        index = {token: i for i, token in enumerate(vocabulary)}
        if len(index) != len(vocabulary):
            raise ConfigError("the vocabulary lists a token twice")
        missing = [token for token in DNA_SPECIALS if token not in index]
        if missing:
            raise ConfigError(f"the vocabulary lacks the special tokens {missing}")
        self._to_vocab = np.array([index.get(t, index["<unk>"]) for t in self.tokens], np.int64)
        own = {token: i for i, token in enumerate(self.tokens)}
        self._from_vocab = np.array([own.get(token, -1) for token in vocabulary], np.int64)
        extra = [index[token] for token in vocabulary if token not in own]
        named = [index[token] for token in specials if token in index]
        self.special_ids = tuple(sorted(named + extra))
        self.pad_id, self.unk_id = index["<pad>"], index["<unk>"]
        self.cls_id, self.eos_id, self.mask_id = index["<cls>"], index["<eos>"], index["<mask>"]
        self.tokens = self.vocabulary = vocabulary

    # --- construction per scheme

    def _letter_table(self, letters: str, values: Sequence[int]) -> np.ndarray:
        mapping = dict(zip(letters, values, strict=True))
        if self.options["lowercase"] == "upper":
            mapping |= {
                letter.lower(): value for letter, value in zip(letters, values, strict=True)
            }
        return _byte_table(mapping)

    def _dna_letters(self) -> str:
        return DNA_LETTERS[:4] if self.options["ambiguous"] == "error" else DNA_LETTERS

    def _build_protein(self) -> None:
        self.tokens = list(ESM2_TOKENS)
        letters = "".join(t for t in ESM2_TOKENS if len(t) == 1)
        self.letters = letters
        self._table = self._letter_table(letters, [ESM2_TOKENS.index(c) for c in letters])
        self._segmenter: _Letters | _Kmers | _Bpe = _Letters(self._table)

    def _build_dna(self) -> None:
        self.tokens = [*DNA_SPECIALS, *DNA_LETTERS]
        self.letters = self._dna_letters()
        first = len(DNA_SPECIALS)
        ids = [first + DNA_LETTERS.index(c) for c in self.letters]
        if self.options["ambiguous"] == "unk":
            ids = [first + i if i < 4 else DNA_SPECIALS.index("<unk>") for i in range(15)]
        self._table = self._letter_table(self.letters, ids)
        self._segmenter = _Letters(self._table)

    def _build_kmer(self) -> None:
        k = self.k
        codes = np.arange(4**k)[:, None] >> (2 * np.arange(k - 1, -1, -1))[None, :] & 3
        kmers = np.frombuffer(b"ACGT", np.uint8)[codes]
        kmer_tokens = kmers.view(f"S{k}").ravel().astype(str).tolist()
        self.tokens = [*DNA_SPECIALS, *kmer_tokens, *DNA_LETTERS]
        self.letters = self._dna_letters()
        self._table = self._letter_table(self.letters, range(len(self.letters)))
        self._segmenter = _Kmers(
            k, self.stride, self.options["ambiguous"], self.options["tail"], len(DNA_SPECIALS)
        )

    def _build_bpe(self, bpe_model: str) -> None:
        self.bpe_model = bpe_model
        self._segmenter = _Bpe(bpe_model)
        vocab = self._segmenter.model.get_vocab()
        self.tokens = sorted(vocab, key=vocab.__getitem__)
        if tuple(self.tokens[: len(DNA_SPECIALS)]) != DNA_SPECIALS:
            raise ConfigError(f"BPE model's special tokens are not {DNA_SPECIALS}")
        self.letters = self._dna_letters()
        self._table = self._letter_table(self.letters, [ord(c) for c in self.letters])

    # --- public constructors

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        train_files: Iterable[str | os.PathLike[str]] | None = None,
        train_sequences: Iterable[str] | None = None,
        vocabulary: Sequence[str] | None = None,
    ) -> Tokenizer:
        """Build a scheme from its spec; ``dna-bpe`` trains on FASTA files or sequences.
        ``vocabulary`` renumbers the scheme's tokens to a checkpoint's own ids."""
        scheme, options = parse_spec(spec)
        if scheme != "dna-bpe":
            if train_files is not None or train_sequences is not None:
                raise ConfigError(f"{scheme} is not trained: drop train_files/train_sequences")
            return cls(scheme, options, vocabulary=vocabulary)
        if train_files is None and train_sequences is None:
            raise ConfigError("dna-bpe must be trained: pass train_files=[FASTA paths]")
        sources: list[Iterable[str]] = []
        if train_files is not None:
            sources.append(read_fasta_sequences(train_files))
        if train_sequences is not None:
            sources.append(train_sequences)
        checker = cls("dna", {key: options[key] for key in OPTIONS["dna"]})
        clean = (checker.normalize(seq) for source in sources for seq in source)
        bpe_model = train_bpe(clean, options["vocab"])
        return cls(scheme, options, bpe_model=bpe_model, vocabulary=vocabulary)

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.tokens)

    @property
    def max_token_letters(self) -> int:
        """The most letters one token covers: a sequence of n letters has at least
        n / max_token_letters tokens (short of k-mer tails dropped or a protein's stop)."""
        if self.scheme == "dna-kmer":
            return self.k
        if self.scheme == "dna-bpe":
            specials = set(DNA_SPECIALS)
            return max(len(token) for token in self.tokens if token not in specials)
        return 1

    # --- letters

    def _lookup(self, seqs: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate a batch: table values of all letters, lengths, and row bounds."""
        lengths = np.fromiter(map(len, seqs), np.int64, count=len(seqs))
        data = np.frombuffer(_ascii("".join(seqs), f"{self.scheme} scheme"), np.uint8)
        if self.alphabet == "protein" and self.options["stop"] == "strip" and 42 in data:
            data, lengths = _strip_stops(data, lengths)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        values = self._table[data]
        if values.size and values.max() == _INVALID:
            self._raise_invalid(data, values, bounds)
        return values, lengths, bounds

    def _raise_invalid(self, data: np.ndarray, values: np.ndarray, bounds: np.ndarray) -> None:
        where = int(np.flatnonzero(values == _INVALID)[0])
        row = int(np.searchsorted(bounds, where, side="right")) - 1
        char = chr(data[where])
        in_batch = f" (sequence {row + 1} of the batch)" if bounds.size > 2 else ""
        upper = char.upper()
        if char != upper and upper in self.letters:
            problem, fix = f"lowercase letter {char!r}", "uppercase it or use lowercase=upper"
        elif upper in AMBIGUOUS_DNA and self.alphabet == "dna":
            problem = f"ambiguous base {char!r}"
            fix = f"remove it or use ambiguous={'unk' if self.scheme == 'dna-kmer' else 'token'}"
        elif char == "*" and self.alphabet == "protein":
            problem = "stop '*' inside a protein (only a trailing '*' is removed)"
            if self.options["stop"] == "error":
                problem, fix = "stop '*'", "remove it or use stop=strip"
            else:
                fix = "split the record at the stop or remove the '*'"
        else:
            kind = "an amino acid" if self.alphabet == "protein" else "a DNA base"
            problem, fix = f"character {char!r} is not {kind}", f"valid letters: {self.letters}"
        error = InputError(
            f"{problem} for scheme {self.scheme}{in_batch}",
            position=where - bounds[row] + 1,
            fix=fix,
        )
        error.batch_row = row  # type: ignore[attr-defined]  # the batch's row, for callers
        raise error

    def normalize(self, seq: str) -> str:
        """The sequence as the scheme reads it: validated, uppercased, trailing stop removed."""
        _, lengths, _ = self._lookup([seq])
        return seq[: lengths[0]].upper()

    # --- encode / decode

    def encode_batch(
        self,
        seqs: Sequence[str],
        *,
        add_special_tokens: bool = True,
        max_length: int | None = None,
        return_offsets: bool = False,
    ) -> dict[str, Any]:
        """Encode sequences to padded ``input_ids`` and ``attention_mask`` (B, T) int64.

        ``return_offsets`` adds ``offsets``: per sequence an (n, 2) int64 array of
        ``[start, end)`` spans in that sequence, (-1, -1) for ``<cls>`` and ``<eos>``.
        """
        values, lengths, bounds = self._lookup(seqs)
        tokens = self._segmenter.segment(values, lengths, bounds)
        cls = int(add_special_tokens and self.add_cls)
        eos = int(add_special_tokens and self.add_eos)
        limit = self.max_length if max_length is None else max_length
        ids, counts, shift = tokens.ids, tokens.counts, tokens.shift
        if self._to_vocab is not None:
            ids, shift = self._to_vocab[ids.astype(np.int64) + shift], 0
        keep = None
        if limit is not None and counts.size and counts.max() > limit - cls - eos:
            room = limit - cls - eos
            if room < 1:
                raise ConfigError(f"max_length={limit} leaves no room for a token")
            _, j = _ragged_arange(counts)
            keep = j < room
            ids = ids[keep]
            warnings.warn(
                f"{int((counts > room).sum())} of {counts.size} sequences truncated to "
                f"max_length={limit} tokens ({int((counts - room).clip(0).sum())} tokens dropped)",
                stacklevel=2,
            )
            counts = np.minimum(counts, room)
        width = (int(counts.max()) if counts.size else 0) + cls + eos
        input_ids = np.full((counts.size, width), self.pad_id, np.int64)
        if cls:
            input_ids[:, 0] = self.cls_id
        if counts.size and counts.min() == counts.max():
            rows = ids.reshape(counts.size, int(counts[0]))
            np.add(rows, shift, out=input_ids[:, cls : cls + counts[0]], dtype=np.int64)
        else:
            content = input_ids[:, cls:]
            content[np.arange(width - cls)[None, :] < counts[:, None]] = np.add(
                ids, shift, dtype=np.int64
            )
        if eos:
            input_ids[np.arange(counts.size), counts + cls] = self.eos_id
        total = counts + cls + eos
        attention_mask = np.empty_like(input_ids)
        np.less(np.arange(width)[None, :], total[:, None], out=attention_mask, casting="unsafe")
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if return_offsets:
            batch["offsets"] = self._offsets(tokens, keep, counts, bounds, cls, eos)
        return batch

    @staticmethod
    def _offsets(
        tokens: _Tokens,
        keep: np.ndarray | None,
        counts: np.ndarray,
        bounds: np.ndarray,
        cls: int,
        eos: int,
    ) -> list[np.ndarray]:
        spans = np.stack(tokens.spans(), axis=1).astype(np.int64)
        if keep is not None:
            spans = spans[keep]
        spans -= np.repeat(bounds[:-1], counts)[:, None]
        special = np.full((1, 2), -1, np.int64)
        rows = np.split(spans, np.cumsum(counts)[:-1])
        return [np.concatenate([special] * cls + [row] + [special] * eos) for row in rows]

    def encode(
        self, seq: str, *, add_special_tokens: bool = True, max_length: int | None = None
    ) -> np.ndarray:
        """Token ids of one sequence, a 1-D int64 array."""
        batch = self.encode_batch(
            [seq], add_special_tokens=add_special_tokens, max_length=max_length
        )
        return batch["input_ids"][0]

    def __call__(
        self,
        sequences: str | Sequence[str],
        *,
        return_tensors: Literal["pt", "np"] | None = "pt",
        padding: bool | Literal["longest", "max_length"] = True,
        max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> dict[str, Any]:
        """Encode like a HuggingFace tokenizer: ``{"input_ids", "attention_mask"}``, (B, T)
        int64 tensors (``return_tensors="pt"``), numpy arrays (``"np"``) or, with
        ``return_tensors=None``, one list of ids per sequence. ``padding``: ``True`` (or
        ``"longest"``) pads to the longest sequence, ``"max_length"`` to ``max_length`` (else
        the tokenizer's own), ``False`` pads nothing (lists only). Longer sequences are
        cropped to ``max_length`` tokens with a warning. A single string is a batch of one.
        """
        batch = [sequences] if isinstance(sequences, str) else list(sequences)
        if padding is False and return_tensors is not None:
            raise ConfigError(
                "padding=False gives sequences of different lengths, which do not stack into "
                "one tensor. Fix: pass padding=True, or return_tensors=None for lists of ids"
            )
        if padding not in (True, False, "longest", "max_length"):
            raise ConfigError(
                f"padding={padding!r} is not one of True, False, 'longest', 'max_length'"
            )
        if return_tensors not in ("pt", "np", None):
            raise ConfigError(f"return_tensors={return_tensors!r} is not one of 'pt', 'np', None")
        encoded = self.encode_batch(
            batch, add_special_tokens=add_special_tokens, max_length=max_length
        )
        input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
        if padding == "max_length":
            width = max_length if max_length is not None else self.max_length
            if width is None:
                raise ConfigError(
                    "padding='max_length' needs a length. Fix: pass max_length=N, or build the "
                    "tokenizer with a max_length option"
                )
            extra = width - input_ids.shape[1]
            input_ids = np.pad(input_ids, ((0, 0), (0, extra)), constant_values=self.pad_id)
            attention_mask = np.pad(attention_mask, ((0, 0), (0, extra)))
        if return_tensors is None:
            lengths = attention_mask.sum(axis=1)
            return {
                "input_ids": [row[:n].tolist() for row, n in zip(input_ids, lengths, strict=True)],
                "attention_mask": [[1] * int(n) for n in lengths],
            }
        if return_tensors == "np":
            return {"input_ids": input_ids, "attention_mask": attention_mask}
        import torch

        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
        }

    def offsets(self, seq: str, *, add_special_tokens: bool = True) -> np.ndarray:
        """Token index -> ``[start, end)`` span of one sequence, (n, 2) int64."""
        batch = self.encode_batch([seq], add_special_tokens=add_special_tokens, return_offsets=True)
        return batch["offsets"][0]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The sequence spelled by ``ids``; specials vanish, ``<unk>``/``<mask>`` read N (X).

        Exact inverse of ``encode`` unless a k-mer was ``<unk>`` or a tail was dropped.
        """
        ids = np.asarray(ids, np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise InputError(f"token ids must be in 0..{self.vocab_size - 1}")
        ids = ids[~np.isin(ids, (self.pad_id, self.cls_id, self.eos_id))]
        if self._to_vocab is not None:
            ids = self._from_vocab[ids]
            ids = ids[ids >= 0]
        if self.scheme != "dna-kmer" or self.k == 1:
            return "".join(self._text[ids])
        return self._decode_kmers(ids)

    def _decode_kmers(self, ids: np.ndarray) -> str:
        """Place tokens: a k-mer after a k-mer moves by ``stride``, else after the previous."""
        if not ids.size:
            return ""
        k, first_single = self.k, self._segmenter.first_single  # type: ignore[union-attr]
        single = ids >= first_single
        length = np.where(single, 1, k)
        step = np.where(single[1:] | single[:-1], length[:-1], self.stride)
        starts = np.concatenate([[0], np.cumsum(step)])
        letters = np.full(int((starts + length).max()), ord("N"), np.uint8)
        codes = ids - len(DNA_SPECIALS)
        known = ~single & (ids >= len(DNA_SPECIALS))
        shifts = 2 * np.arange(k - 1, -1, -1)
        bases = np.frombuffer(b"ACGT", np.uint8)[(codes[known, None] >> shifts) & 3]
        letters[(starts[known, None] + np.arange(k)).ravel()] = bases.ravel()
        alphabet = np.frombuffer(DNA_LETTERS.encode(), np.uint8)
        letters[starts[single]] = alphabet[ids[single] - first_single]
        return letters.tobytes().decode("ascii")

    # --- saving

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer (JSON-serialisable)."""
        names = ("pad", "unk", "cls", "eos", "mask")
        data: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "spec": self.spec,
            "scheme": self.scheme,
            "alphabet": self.alphabet,
            "options": self.options,
            "special_tokens": {name: getattr(self, f"{name}_id") for name in names},
            "special_ids": list(self.special_ids),
            "vocab_size": self.vocab_size,
            "tokens": self.tokens,
        }
        if self.bpe_model is not None:
            data["bpe_model"] = self.bpe_model
        if self.vocabulary is not None:
            data["vocabulary"] = self.vocabulary
        return data

    def fingerprint(self) -> str:
        """SHA-256 of what decides the ids (spec, tokens, vocabulary, BPE model): two
        tokenizers with the same fingerprint turn every sequence into the same ids."""
        identity = {
            "spec": self.spec,
            "tokens": self.tokens,
            "vocabulary": self.vocabulary,
            "bpe_model": self.bpe_model,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer:
        """Rebuild from ``to_dict()``; every stored field must equal the rebuilt tokenizer's
        (a hand-edited option, token or special id is refused, naming the field)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a tokenizer is a JSON object, not {type(data).__name__}")
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ConfigError(
                f"not a {FORMAT} version {FORMAT_VERSION} dict: format="
                f"{data.get('format')!r} version={data.get('format_version')!r}"
            )
        spec, bpe_model, vocabulary = (
            data.get("spec"),
            data.get("bpe_model"),
            data.get("vocabulary"),
        )
        if not isinstance(spec, str):
            raise ConfigError(f"field 'spec' = {spec!r} must be a tokenizer spec string")
        if not isinstance(bpe_model, (str, type(None))):
            raise ConfigError("field 'bpe_model' must be the BPE model's JSON text")
        if not (vocabulary is None or _is_str_list(vocabulary)):
            raise ConfigError("field 'vocabulary' must be a list of tokens")
        scheme, options = parse_spec(spec)
        try:
            tokenizer = cls(scheme, options, bpe_model=bpe_model, vocabulary=vocabulary)
        except ConfigError:
            raise
        except Exception as error:  # the tokenizers library's own errors on a bad BPE model
            raise ConfigError(f"its vocabulary or BPE model cannot be rebuilt ({error})") from None
        rebuilt = tokenizer.to_dict()
        for key, value in data.items():
            if key not in rebuilt:
                raise ConfigError(f"unknown field {key!r}")
            if value != rebuilt[key]:
                raise ConfigError(
                    f"field {key!r} does not match the tokenizer its spec {spec!r} builds "
                    f"(stored {_short(value)}, expected {_short(rebuilt[key])})"
                )
        return tokenizer

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``directory/tokenizer.json`` atomically; returns its path."""
        path = Path(directory) / FILENAME
        write_json(path, self.to_dict(), indent=1)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load from a directory holding ``tokenizer.json`` or from the file itself."""
        path = Path(path)
        file = path / FILENAME if path.is_dir() else path
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no tokenizer at {file}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{file} is not valid JSON: {error}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as error:
            raise ConfigError(
                f"{file}: {error}. Fix: use the tokenizer.json written by biotransformer with "
                "its model or data, unedited"
            ) from None

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str]) -> Tokenizer:
        """The tokenizer of a model directory (or a ``tokenizer.json``), as HuggingFace's
        ``from_pretrained``; a source that is no file or directory is read as a spec
        (``"protein"``, ``"dna-kmer:k=6"``)."""
        path = Path(source)
        if path.exists():
            return cls.load(path)
        try:
            return cls.from_spec(os.fspath(source))
        except ConfigError as error:
            raise ConfigError(
                f"{source}: no such file or directory, and not a tokenizer spec ({error}). "
                "Fix: pass a model directory, a tokenizer.json, or a spec such as 'protein' or "
                "'dna-kmer:k=6'"
            ) from None

    def __repr__(self) -> str:
        return f"Tokenizer({self.spec!r}, vocab_size={self.vocab_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _strip_stops(data: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop one trailing ``*`` per protein; internal ones stay, to be reported."""
    ends = np.cumsum(lengths) - 1
    trailing = (lengths > 0) & (data[np.maximum(ends, 0)] == ord("*"))
    keep = np.ones(data.size, bool)
    keep[ends[trailing]] = False
    return data[keep], lengths - trailing
