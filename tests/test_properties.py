"""Properties across modules: random valid FASTA survives reader + tokenizer unchanged, and
random bytes given to either reader (``io`` and ``prepare``'s streaming one) raise nothing but
the project's ``InputError``. (Per-module properties live in test_io and test_tokenizers.)"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from biotransformer.data.shards import prepare_corpus
from biotransformer.errors import InputError
from biotransformer.io import read_sequences
from biotransformer.tokenizers import Tokenizer

SCHEMES = {
    "dna": ("dna", "dna-kmer:k=3", "dna-kmer:k=4,stride=4"),
    "protein": ("protein",),
}
LETTERS = {"dna": "ACGTNacgtn", "protein": "ACDEFGHIKLMNPQRSTVWYX"}


@st.composite
def fasta_files(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]]]:
    """(alphabet, FASTA text with wrapped lines and either newline, [(id, sequence)])."""
    alphabet = draw(st.sampled_from(sorted(SCHEMES)))
    records = draw(
        st.lists(
            st.tuples(
                st.text("abcXYZ019_.|:-", min_size=1, max_size=12),
                st.text(LETTERS[alphabet], min_size=1, max_size=200),
            ),
            min_size=1,
            max_size=6,
            unique_by=lambda record: record[0],
        )
    )
    width = draw(st.integers(1, 80))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = ""
    for record_id, sequence in records:
        lines = [sequence[i : i + width] for i in range(0, len(sequence), width)]
        text += f">{record_id} some description{newline}" + newline.join(lines) + newline
    return alphabet, text, records


@settings(max_examples=50, deadline=None)
@given(fasta_files(), st.booleans())
def test_valid_fasta_round_trips_through_reader_and_every_tokenizer(
    fasta: tuple[str, str, list[tuple[str, str]]], compressed: bool
) -> None:
    alphabet, text, records = fasta
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("x.fa.gz" if compressed else "x.fa")
        path.write_bytes(gzip.compress(text.encode()) if compressed else text.encode())
        read = [(r.id, r.sequence) for r in read_sequences(path, alphabet=alphabet)]
    assert read == records
    for spec in SCHEMES[alphabet]:
        tokenizer = Tokenizer.from_spec(spec)
        for _, sequence in read:
            if "kmer" in spec and "N" in sequence.upper():
                continue  # a k-mer holding N is <unk>: decode documents the loss
            expected = sequence.upper() if alphabet == "dna" else sequence
            assert tokenizer.decode(tokenizer.encode(sequence)) == expected, spec


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"", b">r1\n", b"\x1f\x8b"]))
def test_random_bytes_through_prepare_raise_only_input_errors(data: bytes, prefix: bytes) -> None:
    """``prepare`` has its own streaming FASTA/gzip reader: it must fail as politely."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.fa"
        path.write_bytes(prefix + data)
        try:
            summary = prepare_corpus(
                [path], Tokenizer.from_spec("dna"), Path(folder) / "out", progress=False
            )
        except InputError as error:
            assert str(path) in str(error)
            return
    assert sum(summary.tokens.values()) > 0
