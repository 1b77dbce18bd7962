"""Token schemes: exact ids, letter rules, offsets, round trips, save/load, BPE on a genome."""

from __future__ import annotations

import gzip
import itertools
import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import biotransformer as bt
from biotransformer.errors import ConfigError, InputError
from biotransformer.tokenizers import ESM2_TOKENS, Tokenizer, parse_spec, reverse_complement

# DNA ids: <pad>0 <unk>1 <cls>2 <eos>3 <mask>4, then A5 C6 G7 T8 N9 R10 Y11 S12 W13 K14 M15
# B16 D17 H18 V19 (dna); k-mers from 5 in ACGT order, then the 15 single letters (dna-kmer).
CLS, EOS, UNK = 2, 3, 1


def kmer_id(kmer: str) -> int:
    return 5 + int(kmer.translate(str.maketrans("ACGT", "0123")), 4)


def single_id(letter: str, k: int) -> int:
    return 5 + 4**k + "ACGTNRYSWKMBDHV".index(letter)


def ids(tok: Tokenizer, seq: str, **kwargs) -> list[int]:
    return tok.encode(seq, **kwargs).tolist()


# ----------------------------------------------------------------------------- exact ids


def test_dna_ids_lowercase_and_iupac():
    tok = Tokenizer.from_spec("dna")
    assert ids(tok, "ACgtN") == [CLS, 5, 6, 7, 8, 9]
    assert ids(tok, "RYSWKMBDHV", add_special_tokens=False) == list(range(10, 20))
    assert tok.vocab_size == 20
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tuple(tok.special_ids) == (0, 1, 2, 3, 4)
    assert (tok.k, tok.stride, tok.alphabet) == (1, 1, "dna")


def test_dna_options_eos_and_ambiguous_unk():
    tok = Tokenizer.from_spec("dna:eos=true,cls=false,ambiguous=unk")
    assert ids(tok, "ANrt") == [5, UNK, UNK, 8, EOS]


def test_overlapping_kmers_with_n_short_and_lowercase():
    tok = Tokenizer.from_spec("dna-kmer:k=3")
    assert tok.vocab_size == 5 + 64 + 15
    assert ids(tok, "acgTA") == [CLS, kmer_id("ACG"), kmer_id("CGT"), kmer_id("GTA")]
    # every window touching N is <unk> (DNABERT); the grid is kept
    assert ids(tok, "ACNGTA") == [CLS, UNK, UNK, UNK, kmer_id("GTA")]
    # shorter than k: single-nucleotide tokens
    assert ids(tok, "AC") == [CLS, single_id("A", 3), single_id("C", 3)]
    assert ids(tok, "") == [CLS]


def test_nonoverlapping_kmers_fall_back_like_nucleotide_transformer():
    tok = Tokenizer.from_spec("dna-kmer:k=3,stride=3")
    assert tok.options["ambiguous"] == "fallback"
    # tail shorter than k -> singles
    assert ids(tok, "ACGTTGCA", add_special_tokens=False) == [
        kmer_id("ACG"),
        kmer_id("TTG"),
        single_id("C", 3),
        single_id("A", 3),
    ]
    # N splits the sequence; the k-mer grid restarts after it
    assert ids(tok, "ACGTNGGGA", add_special_tokens=False) == [
        kmer_id("ACG"),
        single_id("T", 3),
        single_id("N", 3),
        kmer_id("GGG"),
        single_id("A", 3),
    ]


def test_kmer_options_unk_and_tail_drop():
    tok = Tokenizer.from_spec("dna-kmer:k=3,stride=3,ambiguous=unk,tail=drop,eos=true")
    assert ids(tok, "ACGTNGGGAC") == [CLS, kmer_id("ACG"), UNK, kmer_id("GGA"), EOS]


def test_protein_ids_are_esm2():
    tok = Tokenizer.from_spec("protein")
    assert tok.tokens == list(ESM2_TOKENS) and tok.vocab_size == 33
    assert (tok.cls_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 32)
    assert tuple(tok.special_ids) == (0, 1, 2, 3, 31, 32)
    assert ids(tok, "MKt*") == [0, 20, 15, 11, 2]
    assert ids(tok, "XBUZO.-", add_special_tokens=False) == [24, 25, 26, 27, 28, 29, 30]


def test_protein_ids_match_hf_esm_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers (extra 'hf') absent")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(ESM2_TOKENS) + "\n")
    esm = transformers.EsmTokenizer(vocab_file=str(vocab))
    tok = Tokenizer.from_spec("protein")
    sample = ["MKTAYIAKQRQISFVKSHFSRQ", "ACDEFGHIKLMNPQRSTVWY", "XBUZO", "M"]
    expected = esm(sample, padding=True)
    batch = tok.encode_batch(sample)
    assert batch["input_ids"].tolist() == expected["input_ids"]
    assert batch["attention_mask"].tolist() == expected["attention_mask"]


# ----------------------------------------------------------------------------- letter rules


@pytest.mark.parametrize(
    ("spec", "seq", "char", "position"),
    [
        ("dna", "ACGTJ", "J", 5),
        ("dna", "ACU", "U", 3),
        ("dna-kmer:k=3", "AC GT", " ", 3),
        ("dna-kmer:k=3,ambiguous=error", "ACGN", "N", 4),
        ("dna:lowercase=error", "ACgT", "g", 3),
        ("protein", "MK*LV", "*", 3),
        ("protein:stop=error", "MKLV*", "*", 5),
        ("protein", "MKJ", "J", 3),
        ("protein", "MKé", "é", 3),
    ],
)
def test_bad_letters_name_character_and_position(spec, seq, char, position):
    with pytest.raises(InputError) as caught:
        Tokenizer.from_spec(spec).encode(seq)
    assert caught.value.position == position
    assert repr(char) in str(caught.value)
    assert "Fix:" in str(caught.value)


def test_bad_letter_in_batch_names_the_sequence():
    with pytest.raises(InputError, match=r"position 2: .*sequence 2 of the batch"):
        Tokenizer.from_spec("dna").encode_batch(["ACGT", "AZ"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rna", "unknown token scheme 'rna'.*'dna', 'dna-kmer', 'dna-bpe', 'protein'"),
        ("dna-kmer:q=3", "unknown option 'q=3'.*k=, stride="),
        ("dna-kmer:k=0", "k must be 1..8"),
        ("dna-kmer:k=3,stride=4", "stride must be 1..k"),
        ("dna:cls=maybe", "bad value 'maybe' for cls"),
        ("dna:ambiguous=fallback", "expected one of token, unk, error"),
        ("dna:cls=true,cls=false", "given twice"),
        ("dna-bpe:vocab=64", "must be trained"),
    ],
)
def test_bad_specs_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        Tokenizer.from_spec(spec)


def test_canonical_spec_reproduces_the_tokenizer():
    tok = Tokenizer.from_spec("dna-kmer:k=6,stride=6,eos=true")
    assert tok.spec.startswith("dna-kmer:k=6,stride=6,ambiguous=fallback,tail=fallback")
    assert parse_spec(tok.spec) == (tok.scheme, tok.options)
    assert Tokenizer.from_spec(tok.spec) == tok


def test_reverse_complement_iupac_and_case():
    assert reverse_complement("AACGTn") == "nACGTT"
    assert reverse_complement("RYKMBVDHSW") == "WSDHBVKMRY"
    assert bt.reverse_complement is reverse_complement
    with pytest.raises(InputError, match="'U'"):
        reverse_complement("ACU")


@given(st.text(alphabet="ACGTNRYSWKMBDHVacgtnryswkmbdhv", max_size=60))
def test_reverse_complement_twice_is_identity(seq):
    assert reverse_complement(reverse_complement(seq)) == seq


# ----------------------------------------------------------------------------- batches


def test_batch_padding_and_attention_mask():
    tok = Tokenizer.from_spec("dna-kmer:k=3,eos=true")
    batch = tok.encode_batch(["ACGTA", "AC", ""])
    assert batch["input_ids"].dtype == np.int64 and batch["attention_mask"].dtype == np.int64
    assert batch["input_ids"].tolist() == [
        [CLS, kmer_id("ACG"), kmer_id("CGT"), kmer_id("GTA"), EOS],
        [CLS, single_id("A", 3), single_id("C", 3), EOS, 0],
        [CLS, EOS, 0, 0, 0],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]
    for row, seq in zip(batch["input_ids"], ["ACGTA", "AC", ""], strict=True):
        assert row[row != tok.pad_id].tolist() == ids(tok, seq)


def test_max_length_truncates_and_warns():
    tok = Tokenizer.from_spec("dna:eos=true")
    with pytest.warns(UserWarning, match="1 of 2 sequences truncated to max_length=4"):
        batch = tok.encode_batch(["ACGTAC", "AC"], max_length=4, return_offsets=True)
    assert batch["input_ids"].tolist() == [[CLS, 5, 6, EOS], [CLS, 5, 6, EOS]]
    assert batch["offsets"][0].tolist() == [[-1, -1], [0, 1], [1, 2], [-1, -1]]
    capped = Tokenizer.from_spec("protein:max_length=3")
    with pytest.warns(UserWarning):
        assert ids(capped, "MKV") == [0, 20, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ids(capped, "M") == [0, 20, 2]


@pytest.mark.parametrize(
    ("spec", "seq", "spans"),
    [
        ("dna", "ACG", [(-1, -1), (0, 1), (1, 2), (2, 3)]),
        ("dna-kmer:k=3", "ACGTA", [(-1, -1), (0, 3), (1, 4), (2, 5)]),
        ("dna-kmer:k=3", "AC", [(-1, -1), (0, 1), (1, 2)]),
        (
            "dna-kmer:k=2,stride=2,eos=true",
            "ACGNTTG",
            [(-1, -1), (0, 2), (2, 3), (3, 4), (4, 6), (6, 7), (-1, -1)],
        ),
        ("protein", "MKV*", [(-1, -1), (0, 1), (1, 2), (2, 3), (-1, -1)]),
    ],
)
def test_offsets(spec, seq, spans):
    assert Tokenizer.from_spec(spec).offsets(seq).tolist() == [list(span) for span in spans]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.text(alphabet="ACGTNacgtn", max_size=30), min_size=1, max_size=4),
    st.sampled_from(["dna-kmer:k=3", "dna-kmer:k=4,stride=2", "dna-kmer:k=3,stride=3"]),
)
def test_offsets_cover_the_letters_each_token_spells(seqs, spec):
    tok = Tokenizer.from_spec(spec)
    batch = tok.encode_batch(seqs, return_offsets=True)
    for seq, row, spans in zip(seqs, batch["input_ids"], batch["offsets"], strict=True):
        for token_id, (start, end) in zip(row, spans, strict=False):
            if token_id in (tok.cls_id, tok.unk_id):
                continue
            assert tok.tokens[token_id] == seq[start:end].upper()


# ----------------------------------------------------------------------------- round trips


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="ACGTNRYSWKMBDHV", max_size=50), st.integers(1, 5), st.data())
def test_kmer_fallback_round_trip(seq, k, data):
    stride = data.draw(st.integers(1, k))
    tok = Tokenizer.from_spec(f"dna-kmer:k={k},stride={stride},ambiguous=fallback,eos=true")
    assert tok.decode(tok.encode(seq)) == seq


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="ACGTacgt", max_size=50), st.integers(1, 6))
def test_overlapping_kmer_round_trip(seq, k):
    tok = Tokenizer.from_spec(f"dna-kmer:k={k}")
    assert tok.decode(tok.encode(seq)) == seq.upper()


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="ACGTNRYSWKMBDHVacgtn", max_size=50))
def test_dna_round_trip(seq):
    tok = Tokenizer.from_spec("dna")
    assert tok.decode(tok.encode(seq)) == seq.upper()


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="LAGVSERTIDPKQNFYMHWCXBUZO.-", max_size=50))
def test_protein_round_trip(seq):
    tok = Tokenizer.from_spec("protein")
    assert tok.decode(tok.encode(seq + "*")) == seq


def test_decode_marks_letters_hidden_by_unk():
    tok = Tokenizer.from_spec("dna-kmer:k=3")
    assert tok.decode(tok.encode("ACGNACGT")) == "ACGNACGT"
    assert tok.decode(tok.encode("NACGT")) == "NACGT"
    assert tok.decode([tok.cls_id, tok.mask_id, tok.pad_id]) == "NNN"


# ----------------------------------------------------------------------------- saving


@pytest.mark.parametrize(
    "spec", ["dna", "dna-kmer:k=6", "dna-kmer:k=6,stride=6,eos=true,max_length=512", "protein"]
)
def test_save_load_identity(tmp_path, spec):
    tok = Tokenizer.from_spec(spec)
    path = tok.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    stored = json.loads(path.read_text())
    assert stored["special_tokens"]["pad"] == tok.pad_id and stored["tokens"] == tok.tokens
    for again in (Tokenizer.load(tmp_path), Tokenizer.load(path), Tokenizer.from_dict(stored)):
        assert again == tok
        assert again.encode("ACGTNACGTAGGT").tolist() == tok.encode("ACGTNACGTAGGT").tolist()


def test_load_rejects_foreign_or_tampered_json(tmp_path):
    tok = Tokenizer.from_spec("dna")
    data = tok.to_dict()
    with pytest.raises(ConfigError, match="field 'tokens' does not match"):
        Tokenizer.from_dict({**data, "tokens": data["tokens"][::-1]})
    # every stored field is checked, not only the tokens: an edited option, special id or
    # vocabulary size with an unchanged spec is refused
    for key, value in (
        ("options", {**data["options"], "lowercase": "error"}),
        ("special_tokens", {**data["special_tokens"], "mask": 0}),
        ("vocab_size", data["vocab_size"] + 1),
        ("alphabet", "protein"),
        ("extra", 1),
    ):
        with pytest.raises(ConfigError, match=repr(key)):
            Tokenizer.from_dict({**data, key: value})
    for spec in (5, None, ["dna"]):
        with pytest.raises(ConfigError, match="'spec'"):
            Tokenizer.from_dict({**data, "spec": spec})
    with pytest.raises(ConfigError, match="JSON object"):
        Tokenizer.from_dict([data])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a biotransformer-tokenizer"):
        Tokenizer.from_dict({"format": "hf"})
    with pytest.raises(ConfigError, match="no tokenizer"):
        Tokenizer.load(tmp_path)


# ----------------------------------------------------------------------------- BPE


def genome_slice(shared_data, length: int) -> str:
    path = next((shared_data / "genomes").glob("*.fna.gz"))
    with gzip.open(path, "rt") as handle:
        handle.readline()
        lines, size = [], 0
        while size < length:
            line = handle.readline().strip()
            lines.append(line)
            size += len(line)
    return "".join(lines)[:length]


@pytest.fixture(scope="module")
def bpe(shared_data, tmp_path_factory) -> tuple[Tokenizer, str]:
    genome = genome_slice(shared_data, 300_000)
    fasta = tmp_path_factory.mktemp("bpe") / "slice.fna"
    fasta.write_text(">slice\n" + genome[:200_000] + "\n")
    return Tokenizer.from_spec("dna-bpe:vocab=256", train_files=[fasta]), genome[200_000:]


def test_bpe_trains_on_genome_with_fixed_special_ids(bpe):
    tok, held_out = bpe
    assert tok.tokens[:5] == ["<pad>", "<unk>", "<cls>", "<eos>", "<mask>"]
    assert 20 < tok.vocab_size <= 256
    encoded = tok.encode(held_out[:5000])
    assert encoded[0] == tok.cls_id
    assert len(encoded) < 5000 / 2  # merges compress the held-out genome
    assert tok.decode(encoded) == held_out[:5000]


def test_bpe_reloads_to_identical_encodings(bpe, tmp_path):
    tok, held_out = bpe
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert "bpe_model" in json.loads((tmp_path / "tokenizer.json").read_text())
    pieces = [held_out[i : i + 700].lower() for i in range(0, 7000, 700)] + ["ACGNNRT"]
    first = tok.encode_batch(pieces, return_offsets=True)
    second = again.encode_batch(pieces, return_offsets=True)
    assert np.array_equal(first["input_ids"], second["input_ids"])
    for seq, row, spans in zip(pieces, first["input_ids"], first["offsets"], strict=True):
        assert [tok.tokens[i] for i in row[1 : len(spans)]] == [
            seq[a:b].upper() for a, b in spans[1:]
        ]


def test_largest_kmer_ids_survive_ragged_batches():
    tok = Tokenizer.from_spec("dna-kmer:k=8")
    batch = tok.encode_batch(["T" * 8, "T" * 9])
    top = kmer_id("T" * 8)
    assert top == 65540 == tok.vocab_size - 16
    assert batch["input_ids"].tolist() == [[CLS, top, 0], [CLS, top, top]]


def test_vocabulary_renumbers_a_scheme_to_a_checkpoints_ids(tmp_path):
    kmers = ["".join(pair) for pair in itertools.product("ATCG", repeat=2)]
    vocab = ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>", *kmers, "A", "T", "C", "G", "N"]
    spec = "dna-kmer:k=2,stride=2,ambiguous=fallback,eos=false"
    tok = Tokenizer.from_spec(spec, vocabulary=vocab)
    assert (tok.unk_id, tok.pad_id, tok.mask_id, tok.cls_id, tok.eos_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == len(vocab) and tok.special_ids == (0, 1, 2, 3, 4, 5)
    batch = tok.encode_batch(["ATCGANRTG", "GG"])
    expected = [3, *(vocab.index(t) for t in ("AT", "CG", "A", "N", "<unk>", "TG"))]
    assert batch["input_ids"].tolist() == [expected, [3, vocab.index("GG"), 1, 1, 1, 1, 1]]
    assert tok.decode(batch["input_ids"][0]) == "ATCGANNNTG"  # <unk> reads as a k-mer of N
    assert Tokenizer.load(tok.save(tmp_path)) == tok
    with pytest.raises(ConfigError, match="lacks the special tokens"):
        Tokenizer.from_spec(spec, vocabulary=vocab[1:])
