"""Variant effects: variants read against a reference, scored by a masked LM or a fine-tuned head.

Inputs. The reference is a FASTA file (one or more records). Variants come as

- a TSV with a header: ``id``, ``position`` (1-based), ``ref``, ``alt``; several sites of one
  combination are comma-separated in each of the three columns (``12,40`` / ``A,C`` / ``G,T``);
- a TSV with ``id`` and ``mutation`` in protein notation, ``A42G``, combinations joined by
  ``:`` (``A42G:L45P``, as ESM), ``;``, ``,`` or ``+``;
- a VCF (``.vcf`` / ``.vcf.gz``, or a ``##fileformat=VCF`` first line): single-base
  substitutions, one variant per ALT allele, ``CHROM`` naming the reference record.

A TSV may name the reference record in a ``sequence`` (or ``record``, ``chrom``) column; without
it, the reference must hold one record. Every reference letter is checked: a mismatch, a
position outside the sequence or an indel is an ``InputError`` naming the file and line.

Masked-LM scores (``score_masked_lm``), each the sum over the sites of a combination (sites
are treated as additive, as ESM-1v does for multiple mutations):

- ``masked_marginal``: log p(alt) - log p(ref) at the site, every token covering the site
  masked (ESM-1v's masked marginal), one forward pass per site, batched;
- ``wt_marginal``: the same read from one unmasked pass over the wild type;
- ``pll_diff`` (on request, costly): pseudo-log-likelihood of the mutant minus that of the wild
  type; the PLL sums, over every token, its log-probability with the tokens overlapping it
  masked (one pass per token).

A letter's log-probability at a masked token spanning several letters (k-mers, BPE) is read
from that token's distribution: for k-mers, the k-mer spelling the context with that letter at
the site (so log p(alt) - log p(ref) is the log-odds of the two letters given the rest of the
k-mer); for BPE, whose vocabulary need not hold the mutated string, the total probability of
the tokens that spell that letter at the site's offset from the masked token's start (NaN when
no token of the vocabulary does). With several covering tokens (overlapping k-mers), the
site's score is the mean over them.

Sequences longer than the model's ``max_length`` are scored in a window of letters centred on
the variant's sites (the ``windows`` size for the scheme).

Fine-tuned heads (``score_head``): the change in prediction, mutant minus wild type, of each
class probability (classification) or value (regression).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from biotransformer.errors import ConfigError, InputError
from biotransformer.io import SequenceRecord, read_sequences
from biotransformer.windows import first_window_size

if TYPE_CHECKING:
    from biotransformer.tokenizers import Tokenizer

METHODS = ("masked_marginal", "wt_marginal", "pll_diff")
DEFAULT_METHODS = ("masked_marginal", "wt_marginal")
_MUTATION = re.compile(r"^([A-Za-z*])(\d+)([A-Za-z*])$")
_SEPARATORS = re.compile(r"[:;,+]")
_RECORD_COLUMNS = ("sequence", "record", "chrom")
_NOTATION_COLUMNS = ("mutation", "mutations", "variant")


# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Substitution:
    """One letter changed: 1-based ``position``, reference and alternative letters."""

    position: int
    ref: str
    alt: str

    def __str__(self) -> str:
        return f"{self.ref}{self.position}{self.alt}"


@dataclass(frozen=True)
class Variant:
    """One or more substitutions of reference record ``record``, read from ``line``."""

    id: str
    record: str
    changes: tuple[Substitution, ...]
    line: int | None = None

    @property
    def mutations(self) -> str:
        """The variant in ESM's notation, ``A42G:L45P``."""
        return ":".join(str(change) for change in self.changes)

    def apply(self, sequence: str) -> str:
        """The mutant sequence."""
        letters = list(sequence)
        for change in self.changes:
            letters[change.position - 1] = change.alt
        return "".join(letters)


def read_reference(
    path: str | os.PathLike[str], *, alphabet: Literal["dna", "protein"] | None = None
) -> dict[str, str]:
    """Reference records by id, uppercased, in file order; with ``alphabet``, records that look
    like the other alphabet are refused."""
    records = {
        record.id: record.sequence.upper() for record in read_sequences(path, alphabet=alphabet)
    }
    if not records:
        raise InputError("the reference holds no sequence", path=path, fix="check the file")
    return records


def parse_mutations(text: str, *, path: Any = None, line: int | None = None) -> list[Substitution]:
    """``A42G`` or a combination ``A42G:L45P`` (also joined by ``;``, ``,`` or ``+``)."""
    changes = []
    for part in filter(None, (piece.strip() for piece in _SEPARATORS.split(text))):
        match = _MUTATION.match(part)
        if match is None:
            raise InputError(
                f"{part!r} is not a substitution in the form A42G",
                path=path,
                line=line,
                fix="write REF POSITION ALT (1-based), combinations joined by ':'",
            )
        ref, position, alt = match.groups()
        changes.append(Substitution(int(position), ref.upper(), alt.upper()))
    if not changes:
        raise InputError("no substitution given", path=path, line=line, fix="e.g. A42G")
    return changes


def read_variants(path: str | os.PathLike[str], reference: dict[str, str]) -> list[Variant]:
    """Variants of a TSV or VCF (see the module docstring), checked against ``reference``."""
    path = Path(path)
    text = _read_text(path)
    if path.name.lower().endswith((".vcf", ".vcf.gz")) or text.startswith("##fileformat=VCF"):
        variants = list(_vcf_variants(text, path, reference))
    else:
        variants = list(_tsv_variants(text, path, reference))
    if not variants:
        raise InputError("the file holds no variants", path=path, fix="check the file")
    for variant in variants:
        check_variant(variant, reference, path)
    return variants


def _read_text(path: Path) -> str:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return handle.read()
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", path=path, fix="check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot be read ({error})", path=path) from None


def _tsv_variants(text: str, path: Path, reference: dict[str, str]) -> Iterable[Variant]:
    rows = csv.reader(io.StringIO(text), delimiter="\t")
    header = [name.strip().lower() for name in next(rows, [])]
    columns = {name: i for i, name in enumerate(header)}
    record_column = next((name for name in _RECORD_COLUMNS if name in columns), None)
    by_sites = {"position", "ref", "alt"} <= set(columns)
    notation = next(
        (name for name in ("mutation", "mutations", "variant") if name in columns), None
    )
    if "id" not in columns or not (by_sites or notation):
        raise InputError(
            f"the header {header} lacks the variant columns",
            path=path,
            line=1,
            fix="give columns id, position, ref, alt (tab-separated), or id and mutation",
        )
    for line, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < len(header):
            raise InputError(f"{len(row)} fields for {len(header)} columns", path=path, line=line)
        field = {name: row[i].strip() for name, i in columns.items()}
        record = field[record_column] if record_column else _only_record(reference, path, line)
        if by_sites:
            changes = _site_columns(field, path, line)
        else:
            changes = parse_mutations(field[notation], path=path, line=line)
        yield Variant(field["id"], record, tuple(changes), line)


def _site_columns(field: dict[str, str], path: Path, line: int) -> list[Substitution]:
    positions, refs, alts = (field[name].split(",") for name in ("position", "ref", "alt"))
    if not len(positions) == len(refs) == len(alts):
        raise InputError(
            "position, ref and alt list different numbers of sites",
            path=path,
            line=line,
            fix="give one comma-separated entry per site in each column",
        )
    changes = []
    for position, ref, alt in zip(positions, refs, alts, strict=True):
        if not position.strip().isdigit():
            raise InputError(f"position {position!r} is not a whole number", path=path, line=line)
        changes.append(Substitution(int(position), ref.strip().upper(), alt.strip().upper()))
    return changes


def _only_record(reference: dict[str, str], path: Path, line: int) -> str:
    if len(reference) != 1:
        raise InputError(
            f"the reference holds {len(reference)} records and the variant does not name one",
            path=path,
            line=line,
            fix="add a 'sequence' column with the reference record id",
        )
    return next(iter(reference))


def _vcf_variants(text: str, path: Path, reference: dict[str, str]) -> Iterable[Variant]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.startswith("#"):
            continue
        fields = raw.split("\t")
        if len(fields) < 5:
            raise InputError(
                f"{len(fields)} tab-separated fields; a VCF line has at least 5",
                path=path,
                line=line,
                fix="CHROM POS ID REF ALT, tab-separated",
            )
        chrom, position, name, ref, alts = (field.strip() for field in fields[:5])
        if not position.isdigit():
            raise InputError(f"POS {position!r} is not a whole number", path=path, line=line)
        for alt in alts.split(","):
            if len(ref) != 1 or len(alt) != 1:
                raise InputError(
                    f"{ref}>{alt} is not a single-base substitution",
                    path=path,
                    line=line,
                    fix="only substitutions are scored; remove indels and multi-base records",
                )
            label = name if name != "." else f"{chrom}:{position}{ref.upper()}>{alt.upper()}"
            if len(alts.split(",")) > 1:
                label = f"{label}/{alt.upper()}"
            yield Variant(
                label, chrom, (Substitution(int(position), ref.upper(), alt.upper()),), line
            )


def check_variant(variant: Variant, reference: dict[str, str], path: Any = None) -> None:
    """An ``InputError`` unless every site lies in the named record and matches its letter."""
    if variant.record not in reference:
        raise InputError(
            f"reference record {variant.record!r} is not in the reference FASTA",
            path=path,
            line=variant.line,
            fix=f"name one of {list(reference)[:5]}",
        )
    sequence = reference[variant.record]
    seen = set()
    for change in variant.changes:
        where = {"path": path, "line": variant.line, "record": variant.id}
        if not 1 <= change.position <= len(sequence):
            raise InputError(
                f"position {change.position} is outside {variant.record!r} (1..{len(sequence)})",
                **where,
                fix="positions are 1-based",
            )
        actual = sequence[change.position - 1]
        if actual != change.ref:
            raise InputError(
                f"reference mismatch at position {change.position} of {variant.record!r}: "
                f"the reference has {actual!r}, the variant says {change.ref!r}",
                **where,
                fix="check the positions are 1-based and refer to this reference",
            )
        if change.alt == change.ref:
            raise InputError(f"{change} changes nothing", **where, fix="remove it")
        if change.position in seen:
            raise InputError(f"position {change.position} is given twice", **where)
        seen.add(change.position)


# ---------------------------------------------------------------------------------------------
# Masked-LM scores
# ---------------------------------------------------------------------------------------------


class _LetterReader:
    """Log-probability of a letter at a masked token, from that token's distribution."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.bpe = tokenizer.scheme == "dna-bpe"
        self.index: dict[str, int] = {}
        for i, token in enumerate(tokenizer.tokens):
            if i not in tokenizer.special_ids:
                self.index.setdefault(token, i)
        if self.bpe:
            strings = list(self.index)
            self.ids = np.array([self.index[s] for s in strings])
            self.lengths = np.array([len(s) for s in strings])
            width = int(self.lengths.max())
            self.letters = np.array([list(s.ljust(width)) for s in strings])

    def log_prob(self, log_probs: np.ndarray, span: str, offset: int, letter: str) -> float:
        """log p(``letter`` at ``offset``) from one token's ``log_probs`` (V,), the token
        spelling ``span`` in the reference."""
        if self.bpe:
            chosen = (self.lengths > offset) & (self.letters[:, offset] == letter)
            if not chosen.any():
                return float("nan")
            return float(np.logaddexp.reduce(log_probs[self.ids[chosen]]))
        spelled = span[:offset] + letter + span[offset + 1 :]
        if spelled not in self.index:
            raise InputError(
                f"the token {spelled!r} is not in the model's vocabulary",
                fix="variants next to ambiguous bases cannot be scored with this scheme",
            )
        return float(log_probs[self.index[spelled]])


@dataclass
class _Context:
    """The stretch of a reference that the model reads for one variant, tokenised."""

    start: int
    sequence: str
    ids: np.ndarray
    offsets: np.ndarray

    def covering(self, site: int) -> np.ndarray:
        """Token indices covering 0-based ``site`` of the record."""
        local = site - self.start
        return np.flatnonzero((self.offsets[:, 0] <= local) & (self.offsets[:, 1] > local))


class MaskedLMScorer:
    """Scores of variants with a masked-LM model; forward passes in batches of rows."""

    def __init__(self, model: torch.nn.Module, *, batch_size: int = 16) -> None:
        if model.tokenizer is None:
            raise ConfigError("the model directory has no tokenizer.json")
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.batch_size = batch_size
        self.reader = _LetterReader(self.tokenizer)
        self.device = next(model.parameters()).device
        self._contexts: dict[tuple[str, int, int], _Context] = {}

    def context(self, record: str, sequence: str, sites: Sequence[int]) -> _Context:
        """The whole record when it fits the model, else a window centred on the sites."""
        size = len(sequence)
        if len(self.tokenizer.encode(sequence, max_length=size + 2)) > self.model.config.max_length:
            size = first_window_size(self.tokenizer, self.model.config.max_length)
            while True:
                middle = (min(sites) + max(sites)) // 2
                start = min(max(middle - size // 2, 0), len(sequence) - size)
                piece = sequence[start : start + size]
                if len(self.tokenizer.encode(piece, max_length=size + 2)) <= (
                    self.model.config.max_length
                ):
                    break
                size -= max(size // 16, 1)
            if max(sites) - min(sites) >= size:
                raise InputError(
                    f"the sites span {max(sites) - min(sites) + 1} letters, more than the "
                    f"model reads at once ({size})",
                    fix="score sites this far apart as separate variants",
                )
        else:
            start = 0
        key = (record, start, size)
        if key not in self._contexts:
            piece = sequence[start : start + size]
            batch = self.tokenizer.encode_batch([piece], max_length=size + 2, return_offsets=True)
            self._contexts[key] = _Context(start, piece, batch["input_ids"][0], batch["offsets"][0])
        return self._contexts[key]

    @torch.no_grad()
    def log_probs(
        self, rows: Sequence[np.ndarray], heads: Sequence[np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """Log-softmax (T, V) of every row of token ids, run in batches (rows padded). With
        ``heads`` (token indices per row) the LM head runs only there; other rows are NaN."""
        out: list[np.ndarray] = []
        pad = self.tokenizer.pad_id
        for first in range(0, len(rows), self.batch_size):
            chunk = rows[first : first + self.batch_size]
            longest = max(len(row) for row in chunk)
            ids = np.full((len(chunk), longest), pad, np.int64)
            mask = np.zeros_like(ids)
            for i, row in enumerate(chunk):
                ids[i, : len(row)], mask[i, : len(row)] = row, 1
            ids_t, mask_t = torch.from_numpy(ids).to(self.device), torch.from_numpy(mask)
            hidden = self.model.encoder(ids_t, mask_t.to(self.device)).last_hidden_state
            if heads is None:
                logits = self.model.lm_head(hidden)  # (B, T, V)
                log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
                out.extend(log_probs[i, : len(row)] for i, row in enumerate(chunk))
                continue
            chosen = heads[first : first + self.batch_size]
            batch_rows = np.concatenate([np.full(len(h), i) for i, h in enumerate(chosen)])
            tokens = np.concatenate(chosen)
            logits = self.model.lm_head(hidden[batch_rows, tokens])  # (N, V)
            picked = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
            for i, row in enumerate(chunk):
                full = np.full((len(row), picked.shape[1]), np.nan)
                full[tokens[batch_rows == i]] = picked[batch_rows == i]
                out.append(full)
        return out

    def site_score(self, context: _Context, log_probs: np.ndarray, change: Substitution) -> float:
        """Mean over the covering tokens of log p(alt) - log p(ref), from ``log_probs`` (T, V)."""
        site = change.position - 1
        scores = []
        for token in context.covering(site):
            a, b = context.offsets[token]
            span = context.sequence[a:b]
            offset = site - context.start - a
            row = log_probs[token]
            alt = self.reader.log_prob(row, span, offset, change.alt)
            scores.append(alt - self.reader.log_prob(row, span, offset, change.ref))
        if not scores:
            raise InputError(f"no token covers {change}", fix="the scheme dropped this letter")
        return float(np.mean(scores))

    def masked_marginal(self, variants: Sequence[Variant], reference: dict[str, str]) -> np.ndarray:
        """Sum over each variant's sites of the masked-marginal log-odds; one masked row per
        distinct site, shared by every variant at that site."""
        contexts = [self._variant_context(v, reference) for v in variants]
        where: dict[tuple[int, int], int] = {}
        rows, heads = [], []
        for variant, context in zip(variants, contexts, strict=True):
            for change in variant.changes:
                key = (id(context), change.position - 1)
                if key not in where:
                    covering = context.covering(change.position - 1)
                    masked = context.ids.copy()
                    masked[covering] = self.tokenizer.mask_id
                    where[key] = len(rows)
                    rows.append(masked)
                    heads.append(covering)
        log_probs = self.log_probs(rows, heads)
        return np.array(
            [
                sum(
                    self.site_score(c, log_probs[where[(id(c), ch.position - 1)]], ch)
                    for ch in v.changes
                )
                for v, c in zip(variants, contexts, strict=True)
            ]
        )

    def wt_marginal(self, variants: Sequence[Variant], reference: dict[str, str]) -> np.ndarray:
        """Sum over each variant's sites of the log-odds read from the unmasked wild type."""
        contexts = [self._variant_context(v, reference) for v in variants]
        distinct = {id(c): c for c in contexts}
        order = list(distinct)
        log_probs = dict(zip(order, self.log_probs([distinct[k].ids for k in order]), strict=True))
        return np.array(
            [
                sum(self.site_score(c, log_probs[id(c)], ch) for ch in v.changes)
                for v, c in zip(variants, contexts, strict=True)
            ]
        )

    def pseudo_log_likelihood(self, sequences: Sequence[str]) -> np.ndarray:
        """Per sequence: the sum over tokens of log p(token) with the tokens overlapping it
        masked, one row per token."""
        rows, owners, targets = [], [], []
        for n, sequence in enumerate(sequences):
            batch = self.tokenizer.encode_batch(
                [sequence], max_length=len(sequence) + 2, return_offsets=True
            )
            ids, offsets = batch["input_ids"][0], batch["offsets"][0]
            for token in np.flatnonzero(offsets[:, 0] >= 0):
                a, b = offsets[token]
                overlap = (offsets[:, 0] < b) & (offsets[:, 1] > a)
                masked = ids.copy()
                masked[overlap] = self.tokenizer.mask_id
                rows.append(masked)
                owners.append(n)
                targets.append((token, ids[token]))
        totals = np.zeros(len(sequences))
        for owner, (token, target), log_probs in zip(
            owners, targets, self.log_probs(rows), strict=True
        ):
            totals[owner] += log_probs[token, target]
        return totals

    def pll_diff(self, variants: Sequence[Variant], reference: dict[str, str]) -> np.ndarray:
        """PLL(mutant) - PLL(wild type), both over the variant's context."""
        contexts = [self._variant_context(v, reference) for v in variants]
        wild = {id(c): c.sequence for c in contexts}
        wild_pll = dict(zip(wild, self.pseudo_log_likelihood(list(wild.values())), strict=True))
        mutants = [
            _shifted(v, c.start).apply(c.sequence) for v, c in zip(variants, contexts, strict=True)
        ]
        mutant_pll = self.pseudo_log_likelihood(mutants)
        return np.array([m - wild_pll[id(c)] for m, c in zip(mutant_pll, contexts, strict=True)])

    def _variant_context(self, variant: Variant, reference: dict[str, str]) -> _Context:
        sites = [change.position - 1 for change in variant.changes]
        return self.context(variant.record, reference[variant.record], sites)


def _shifted(variant: Variant, start: int) -> Variant:
    """The variant with positions relative to a context starting at 0-based ``start``."""
    changes = tuple(Substitution(c.position - start, c.ref, c.alt) for c in variant.changes)
    return Variant(variant.id, variant.record, changes, variant.line)


def score_masked_lm(
    model: torch.nn.Module,
    variants: Sequence[Variant],
    reference: dict[str, str],
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """The requested ``methods`` (see the module docstring) for every variant."""
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise ConfigError(f"unknown scoring methods {unknown}; known: {list(METHODS)}")
    scorer = MaskedLMScorer(model, batch_size=batch_size)
    return {method: getattr(scorer, method)(variants, reference) for method in methods}


# ---------------------------------------------------------------------------------------------
# Fine-tuned heads
# ---------------------------------------------------------------------------------------------


def score_head(
    model: torch.nn.Module,
    task: Any,
    variants: Sequence[Variant],
    reference: dict[str, str],
    *,
    max_tokens: int = 16384,
) -> dict[str, np.ndarray]:
    """``delta_<label>`` (or ``delta_value``): mutant minus wild-type prediction per variant."""
    from biotransformer.inference import predict_records

    if task.spec.per_token:
        raise ConfigError(
            "variant effects of a per-token head are not defined here: use a sequence-level "
            "head, or 'biotransformer saliency' for per-position effects"
        )
    wild_ids = list(dict.fromkeys(variant.record for variant in variants))
    records = [SequenceRecord(f"wt:{name}", reference[name]) for name in wild_ids]
    records += [
        SequenceRecord(f"mut:{i}", variant.apply(reference[variant.record]))
        for i, variant in enumerate(variants)
    ]
    scores = np.asarray(predict_records(model, records, task, max_tokens=max_tokens).scores)
    wild = {name: scores[i] for i, name in enumerate(wild_ids)}
    mutant = scores[len(wild_ids) :]
    deltas = mutant - np.stack([wild[variant.record] for variant in variants])
    names = task.output_names
    return {f"delta_{name}": deltas[:, i] for i, name in enumerate(names)}


def score_names(model: torch.nn.Module, methods: Sequence[str]) -> list[str]:
    """The score columns ``score-variants`` writes for ``model``: the masked-LM ``methods``, or
    ``delta_<output>`` for a fine-tuned head."""
    task = model.task
    if task.has_labels:
        return [f"delta_{name}" for name in task.output_names]
    return list(methods)


def score_rows(variants: Sequence[Variant], scores: dict[str, np.ndarray]) -> Iterable[list[str]]:
    """One table row per variant: ``id``, ``record``, ``mutations``, then the scores."""
    for i, variant in enumerate(variants):
        values = [repr(float(column[i])) for column in scores.values()]
        yield [variant.id, variant.record, variant.mutations, *values]


def write_scores_tsv(
    variants: Sequence[Variant], scores: dict[str, np.ndarray], path: str | os.PathLike[str]
) -> Path:
    """``id``, ``record``, ``mutations`` (``A42G:L45P``) and one column per score, written
    aside and renamed (``-``: standard output)."""
    from biotransformer.streaming import TableStream

    table = TableStream(path, {}, header=["id", "record", "mutations", *scores], overwrite=True)
    table.append(score_rows(variants, scores))
    table.finish()
    return Path(path)
