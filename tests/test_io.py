"""Tests of biotransformer.io: real data counts, labels, duplicates, and every bad input."""

from __future__ import annotations

import gzip
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import biotransformer as bt
from biotransformer import io as bio_io
from biotransformer.errors import ConfigError, InputError
from biotransformer.io import (
    SequenceRecord,
    cross_split_duplicates,
    find_duplicates,
    guess_alphabet,
    read_sequences,
)

PROTEIN = "MNINELLKDKDLKVTKYRKLILENLKSCDNPISAEELFDKLKKDYDMDLSTIYRNLNILE"
DNA = "ACGTTGCAACGTAGCTAGCTAGGATCCAGT"


def write(path: Path, text: str | bytes) -> Path:
    """Write text (as UTF-8, exactly, no newline translation) or bytes; gzip for .gz."""
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def read(path: Path, **options) -> list[SequenceRecord]:
    return list(read_sequences(path, **options))


def refused(path: Path, *fragments: str, **options) -> str:
    """Read ``path``, expect an InputError whose message names the file and the fragments."""
    with pytest.raises(InputError) as caught:
        read(path, **options)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert "Fix: " in message
    return message


# The real data in ../shared/data


@pytest.mark.parametrize(
    ("name", "counts"),
    [("prom_300_tata", (4904, 613, 613)), ("tf_0", (32378, 1000, 1000))],
)
def test_gue_splits_counts_and_balanced_labels(shared_data: Path, name: str, counts) -> None:
    for split, count in zip(("train", "dev", "test"), counts, strict=True):
        records = read(shared_data / "gue" / name / f"{split}.csv", alphabet="dna")
        assert len(records) == count
        assert {record.label for record in records} == {"0", "1"}
        assert records[0].id == f"{split}:2" and records[0].line == 2
    assert len(records[0].sequence) == {"prom_300_tata": 300, "tf_0": 101}[name]


def test_genome_is_one_record(shared_data: Path) -> None:
    path = shared_data / "genomes" / "GCF_001457455.1_NCTC11397_genomic.fna.gz"
    (record,) = read(path, alphabet="dna")
    assert record.id == "NZ_LN831026.1"
    assert len(record.sequence) == 2_463_666
    assert record.label is None and record.line == 1


def test_proteins_with_header_labels(shared_data: Path) -> None:
    path = shared_data / "proteins" / "938293.PRJEB85.HG003687.faa.gz"
    records = read(path, alphabet="protein", label_from="key:gc_cont", label_type="numeric")
    assert len(records) == 2100
    assert sum(record.sequence.endswith("*") for record in records) == 2099
    assert records[0].id == "938293.PRJEB85.HG003688_1"
    assert records[0].label == pytest.approx(0.319)
    assert records[0].sequence.startswith("MNINELLKDKDLKV")
    partial = read(path, label_from="key:partial")
    assert partial[0].label == "00" and {r.label for r in partial} <= {"00", "01", "10", "11"}
    refused(path, "looks like protein", "record '938293.PRJEB85.HG003688_1'", alphabet="dna")


def test_peptides_sklearn_header_and_duplicates(shared_data: Path) -> None:
    records = read(shared_data / "peptides" / "AMPvsUniProt.csv", alphabet="protein")
    assert len(records) == 5200
    assert [sum(r.label == label for r in records) for label in ("1", "0")] == [2600, 2600]
    assert records[0] == SequenceRecord("AMPvsUniProt:2", "GLWSKIKEVGKEAAKAAAKAAGKAALGAVSEAV", "1")
    report = find_duplicates(records)
    assert (report.n_records, report.n_distinct) == (5200, 4642)
    assert len(report.groups) == 222
    assert len(report.conflicting) == 22
    assert "22 with conflicting labels" in report.summary()


def test_gue_cross_split_duplicates(shared_data: Path) -> None:
    folder = shared_data / "gue" / "prom_300_tata"
    report = cross_split_duplicates(
        {split: read_sequences(folder / f"{split}.csv") for split in ("train", "dev", "test")}
    )
    pairs = [frozenset(group.splits) for group in report.groups]
    assert pairs.count(frozenset({"train", "dev"})) == 14
    assert pairs.count(frozenset({"train", "test"})) == 6
    assert all(len(group.ids) == len(group.splits) for group in report.groups)


# Accepted inputs


def test_fasta_wrapped_lowercase_blank_lines_and_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "x.fa", "\n>a first\nACGT\nacgt\n\n>b\nNNNN-..\n>c\nA\n")
    records = read(path)
    assert [(r.id, r.sequence, r.line) for r in records] == [
        ("a", "ACGTacgt", 2),
        ("b", "NNNN-..", 6),
        ("c", "A", 8),
    ]


def test_crlf_bom_and_unicode_headers(tmp_path: Path) -> None:
    path = write(tmp_path / "x.fasta", "\ufeff>α β-γ 5′ end\r\nACGT\r\nTT\r\n>δ\r\nGG\r\n")
    assert [(r.id, r.sequence) for r in read(path)] == [("α", "ACGTTT"), ("δ", "GG")]
    table = write(tmp_path / "x.csv", "\ufeffsequence,label\r\nACGT,1\r\n")
    assert read(table) == [SequenceRecord("x:2", "ACGT", "1")]


def test_gzip_found_by_content_whatever_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "x.fa"
    path.write_bytes(gzip.compress(b">a\nACGT\n"))
    assert read(path) == [SequenceRecord("a", "ACGT")]
    assert read(write(tmp_path / "y.fasta.gz", ">a\nAC\n")) == [SequenceRecord("a", "AC")]


def test_fastq_records_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "r.fq.gz", "@r1 x\nACGT\n+\n@III\n@r2\nGG\n+r2\nII\n")
    records = read(path)
    assert [(r.id, r.sequence, r.line) for r in records] == [("r1", "ACGT", 1), ("r2", "GG", 5)]


def test_format_sniffed_for_unknown_suffix(tmp_path: Path) -> None:
    assert read(write(tmp_path / "a.txt", ">a\nAC\n"))[0].sequence == "AC"
    assert read(write(tmp_path / "b.txt", "@a\nAC\n+\nII\n"))[0].sequence == "AC"
    assert read(write(tmp_path / "c.txt", "sequence\tlabel\nAC\t1\n"))[0].label == "1"
    assert read(write(tmp_path / "d.seq", "sequence,label\nAC,1\n"))[0].label == "1"


def test_header_labels_key_field_regex(tmp_path: Path) -> None:
    path = write(
        tmp_path / "x.fa", ">s1|cls_A class=a;score=1.5\nAC\n>s2|cls_B class=b score=-2\nGT\n"
    )
    assert [r.label for r in read(path, label_from="key:class")] == ["a", "b"]
    assert [r.label for r in read(path, label_from="key:score", label_type="numeric")] == [1.5, -2]
    by_field = [r.label for r in read(path, label_from="field:1")]
    assert by_field == ["cls_A class=a;score=1.5", "cls_B class=b score=-2"]
    assert [r.label for r in read(path, label_from=r"regex:cls_(\w)")] == ["A", "B"]
    assert [r.id for r in read(path)] == ["s1|cls_A", "s2|cls_B"]


def test_multilabel_and_sidecar_labels(tmp_path: Path) -> None:
    fasta = write(tmp_path / "x.fa", ">a\nAC\n>b\nGT\n")
    sidecar = write(
        tmp_path / "labels.tsv", "id\tlabel\tother\nb\tkinase, membrane\t\na\tsoluble\t\n"
    )
    records = read(fasta, labels_file=sidecar, label_type="multilabel")
    assert [r.label for r in records] == [("soluble",), ("kinase", "membrane")]


def test_csv_columns_ids_and_whitespace(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "name,seq,y\nfirst, AC GT ,0.5\nsecond,TT, 2\n")
    records = read(path, sequence_column="seq", label_column="y", id_column="name")
    assert records == [SequenceRecord("first", "ACGT", "0.5"), SequenceRecord("second", "TT", "2")]
    unlabelled = read(write(tmp_path / "u.csv", "sequence\nAC\n"))
    assert unlabelled == [SequenceRecord("u:2", "AC")]
    no_header = read(write(tmp_path / "n.csv", "AC,1\nGT,0\n"), header=False)
    assert no_header == [SequenceRecord("n:1", "AC", "1"), SequenceRecord("n:2", "GT", "0")]
    by_position = read(write(tmp_path / "p.tsv", "x\ty\n1\tAC\n"), sequence_column=1)
    assert by_position == [SequenceRecord("p:2", "AC", None)]


def test_column_options_for_a_fasta_file_are_refused_by_flag(tmp_path: Path) -> None:
    path = write(tmp_path / "s.fa", ">a\nACGT\n")
    for option in ("id_column", "sequence_column"):
        with pytest.raises(InputError, match=f"s.fa: --{option.replace('_', '-')} .* is FASTA"):
            read(path, **{option: "nosuch"})
    labels = write(tmp_path / "labels.csv", "name,label\na,1\n")
    assert read(path, labels_file=labels, id_column="name")[0].label == "1"


def test_duplicate_ids_warn_and_allow(tmp_path: Path) -> None:
    path = write(tmp_path / "d.fa", ">a\nAC\n>a\nGT\n")
    with pytest.warns(UserWarning, match=r"line 3, record 'a': duplicate id"):
        assert len(read(path, duplicate_ids="warn")) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read(path, duplicate_ids="allow")) == 2


def test_guess_alphabet() -> None:
    assert guess_alphabet(DNA) == "dna"
    assert guess_alphabet(DNA.lower() + "NNN") == "dna"
    assert guess_alphabet(PROTEIN) == "protein"
    assert guess_alphabet("---") == "dna"


def test_find_duplicates_groups_and_conflicts() -> None:
    records = [
        SequenceRecord("a", "ACGT", "1"),
        SequenceRecord("b", "ACGT", "0"),
        SequenceRecord("c", "ACGT", "1"),
        SequenceRecord("d", "GG", "1"),
        SequenceRecord("e", "GG", "1"),
        SequenceRecord("f", "TT", "1"),
    ]
    report = find_duplicates(records)
    assert (report.n_records, report.n_distinct, len(report.groups)) == (6, 3, 2)
    assert [group.ids for group in report.conflicting] == [("a", "b", "c")]


def test_public_exports() -> None:
    assert bt.read_sequences is read_sequences
    assert bt.SequenceRecord is SequenceRecord


# Refused inputs: each message names the file, the line or record, and a fix


def test_empty_file(tmp_path: Path) -> None:
    refused(write(tmp_path / "e.fa", ""), "the file is empty")
    refused(write(tmp_path / "w.csv", " \n\n"), "the file is empty")
    refused(write(tmp_path / "e.fa.gz", ""), "the file is empty")


def test_missing_file(tmp_path: Path) -> None:
    refused(tmp_path / "absent.fa", "cannot open the file")


def test_binary_data(tmp_path: Path) -> None:
    refused(write(tmp_path / "b.fa", b"\x00\x01\x02>a\nACGT\n"), "binary data")


@pytest.mark.parametrize(
    ("encoding", "named"),
    [
        ("utf-16", "UTF-16"),
        ("utf-16-le", "UTF-16LE"),
        ("utf-16-be", "UTF-16BE"),
        ("utf-32", "UTF-32"),
        ("utf-32-le", "UTF-32LE"),
        ("utf-32-be", "UTF-32BE"),
    ],
)
def test_utf16_and_utf32_text_is_named_with_the_conversion(
    tmp_path: Path, encoding: str, named: str
) -> None:
    """Wide text (with or without a byte-order mark) is not called binary: the message names
    its encoding and the iconv line that converts it."""
    text = ">a\nACGT\n>b\nGGCC\n"
    path = write(tmp_path / "w.fa", text.encode(encoding))
    message = refused(path, f"{named} text, not UTF-8", f"iconv -f {named} -t UTF-8")
    assert "binary" not in message
    converted = tmp_path / "w-utf8.fa"
    assert str(converted) in message
    converted.write_text(path.read_bytes().decode(encoding))  # what iconv would write
    assert [record.sequence for record in read(converted)] == ["ACGT", "GGCC"]


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "l.fa", b">a\nACGT\n>caf\xe9\nACGT\n")
    refused(path, "line 3", "byte 0xE9 is not UTF-8")


def test_truncated_gzip(tmp_path: Path) -> None:
    lines = "".join(f">r{i}\n{DNA * 4}\n" for i in range(3000))
    whole = gzip.compress(lines.encode())
    path = tmp_path / "t.fa.gz"
    path.write_bytes(whole[: len(whole) // 2])
    message = refused(path, "gzip data is truncated or corrupt", "line ")
    assert "gzip -t" in message
    tiny = tmp_path / "tiny.fa.gz"
    tiny.write_bytes(gzip.compress(b">a\nACGT\n")[:15])
    refused(tiny, "truncated or corrupt", "line 1")


def test_other_compression_refused(tmp_path: Path) -> None:
    refused(write(tmp_path / "x.fa", b"BZh91AY&SY..."), "bzip2-compressed")


def test_fastq_given_as_fasta(tmp_path: Path) -> None:
    path = write(tmp_path / "reads.fasta", "@r1\nACGT\n+\nIIII\n")
    refused(path, "line 1", "looks like FASTQ", "format='fastq'")
    refused(write(tmp_path / "f.fq", ">a\nAC\n"), "line 1", "looks like FASTA")
    refused(write(tmp_path / "f.csv", "\n>a\nAC\n"), "line 2", "looks like FASTA")


def test_no_header_in_fasta(tmp_path: Path) -> None:
    refused(write(tmp_path / "plain.fa", "ACGT\nACGT\n"), "line 1", "no '>' header line")


def test_sequence_before_first_header(tmp_path: Path) -> None:
    path = write(tmp_path / "s.fa", "\nACGT\n>a\nAC\n")
    refused(path, "line 2", "before the first '>' header (which is on line 3)")


def test_empty_sequence(tmp_path: Path) -> None:
    path = write(tmp_path / "e.fa", ">a\nAC\n>b desc\n>c\nGG\n")
    refused(path, "line 3", "record 'b'", "empty sequence")
    refused(write(tmp_path / "e.csv", "sequence,label\nAC,1\n ,0\n"), "line 3", "empty sequence")


def test_header_without_id(tmp_path: Path) -> None:
    refused(write(tmp_path / "h.fa", ">a\nAC\n>\nGT\n"), "line 3", "no id")


def test_invalid_characters_name_the_position(tmp_path: Path) -> None:
    path = write(tmp_path / "i.fa", ">a\nACGT\n>b\nACGT\nAC#T\n")
    refused(path, "line 3", "record 'b'", "position 7", "'#'")
    genbank = write(tmp_path / "g.fa", ">x\n        1 acgtacgtac gtacgtacgt\n")
    refused(genbank, "record 'x'", "position 1", "'1'", "GenBank")
    tabs = write(tmp_path / "t.fa", ">x\nAC\tGT\n")
    refused(tabs, "record 'x'", "position 3", "'\\t'")


def test_protein_given_as_dna(tmp_path: Path) -> None:
    path = write(tmp_path / "p.fa", f">d\n{DNA}\n>p\n{PROTEIN}\n")
    message = refused(path, "line 3", "record 'p'", "looks like protein", alphabet="dna")
    assert "90%" in message
    near_dna = write(tmp_path / "n.fa", f">x\n{DNA}E\n")
    refused(near_dna, "position 31", "not an IUPAC nucleotide code", alphabet="dna")


def test_dna_given_as_protein(tmp_path: Path) -> None:
    path = write(tmp_path / "d.faa", f">d\n{DNA * 2}\n")
    refused(path, "record 'd'", "looks like DNA", alphabet="protein")
    assert read(write(tmp_path / "short.faa", ">s\nGAGA\n"), alphabet="protein")


def test_duplicate_ids_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "d.fa", ">a\nAC\n>b\nAC\n>a\nGT\n")
    refused(path, "line 5", "record 'a'", "duplicate id (first seen on line 1)")
    table = write(tmp_path / "d.csv", "id,sequence\nx,AC\nx,GT\n")
    refused(table, "line 3", "record 'x'", "duplicate id", id_column="id")


def test_labels_missing_from_headers(tmp_path: Path) -> None:
    path = write(tmp_path / "m.fa", ">a class=1\nAC\n>b\nGT\n")
    refused(path, "line 3", "record 'b'", "label missing", label_from="key:class")
    refused(path, "record 'b'", "label missing", label_from=r"regex:class=(\d)")


def test_labels_missing_from_sidecar(tmp_path: Path) -> None:
    fasta = write(tmp_path / "m.fa", ">a\nAC\n>b\nGT\n")
    sidecar = write(tmp_path / "labels.csv", "id,label\na,1\n")
    message = refused(fasta, "line 3", "record 'b'", "label missing", labels_file=sidecar)
    assert str(sidecar) in message


def test_sidecar_without_columns_or_with_repeats(tmp_path: Path) -> None:
    fasta = write(tmp_path / "m.fa", ">a\nAC\n")
    no_id = write(tmp_path / "no_id.csv", "name,label\na,1\n")
    with pytest.raises(InputError, match=r"no_id\.csv, line 1: no column 'id'"):
        read(fasta, labels_file=no_id)
    repeated = write(tmp_path / "rep.csv", "id,label\na,1\na,0\n")
    with pytest.raises(InputError, match=r"rep\.csv, line 3: id 'a' has a second label"):
        read(fasta, labels_file=repeated)


def test_csv_without_expected_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "seq,label\nAC,1\n")
    refused(path, "line 1", "names no column 'sequence'", "['seq', 'label']")
    refused(path, "line 1", "no column 'target'", sequence_column="seq", label_column="target")
    refused(path, "line 1", "no column 'x'", sequence_column="seq", id_column="x")
    refused(write(tmp_path / "u.csv", "sequence\nAC\n"), "no column 'label'", label_type="class")
    refused(path, "line 1", "no header line", header=False, sequence_column="seq")


def test_csv_short_row_and_empty_label(tmp_path: Path) -> None:
    refused(write(tmp_path / "s.csv", "sequence,label\nAC,1\nGT\n"), "line 3", "1 field(s)")
    refused(write(tmp_path / "l.csv", "sequence,label\nAC,1\nGT,\n"), "line 3", "label missing")


def test_non_numeric_regression_label(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "sequence,label\nAC,0.5\nGT,high\n")
    refused(path, "line 3", "record 'r:3'", "'high' is not a finite number", label_type="numeric")


def test_sklearn_header_row_count_checked(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "3,1,neg,pos\nAC, 1\nGT, 0\n")
    refused(path, "declares 3 rows, but the file has 2")
    assert len(read(write(tmp_path / "ok.csv", "2,1,neg,pos\nAC, 1\nGT, 0\n"))) == 2
    refused(write(tmp_path / "n.csv", "AC,1\n"), "line 1", "not 'n_samples", header="sklearn")


def test_csv_field_too_large(tmp_path: Path) -> None:
    path = write(tmp_path / "big.csv", f"sequence,label\nAC,1\n{'A' * 140_000},0\n")
    refused(path, "line 3", "field larger than field limit", "FASTA")


def test_malformed_fastq(tmp_path: Path) -> None:
    refused(write(tmp_path / "m.fq", "@r1\nACGT\n+\nII\n"), "line 4", "not valid FASTQ")
    refused(write(tmp_path / "n.fq", "@r1\nACGT\n+\nIIII\nr2\n"), "line 5", "not valid FASTQ")


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "x.fa", ">a\nAC\n")
    for options in (
        {"label_from": "column:2"},
        {"label_from": "regex:no group"},
        {"label_from": "regex:(("},
        {"label_type": "ordinal"},
        {"duplicate_ids": "ignore"},
        {"format": "genbank"},
        {"alphabet": "rna"},
    ):
        with pytest.raises(ConfigError):
            read(path, **options)
    with pytest.raises(ConfigError, match="label_column"):
        read(write(tmp_path / "x.csv", "sequence\nAC\n"), label_from="key:a")


def test_bad_inputs_table_names_existing_tests(repo_root: Path) -> None:
    table = (repo_root / "docs" / "bad-inputs.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")]
    header, *cases = [[cell.strip() for cell in row] for row in rows]
    assert header == ["case", "input", "behaviour", "message", "test"]
    assert len({case[0] for case in cases}) == len(cases)
    for case in cases:
        assert case[2] in ("accepted", "refused"), case
        assert callable(globals().get(case[4])), case


# Properties


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(st.characters(categories=["L", "N"]) | st.sampled_from("_.:|-"), min_size=1),
            st.text("ACGTNacgtnRY*-.", min_size=1, max_size=300),
            st.text(st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"]), max_size=20),
        ),
        min_size=1,
        max_size=8,
        unique_by=lambda item: item[0],
    ),
    st.integers(1, 90),
    st.sampled_from(["\n", "\r\n"]),
)
def test_valid_fasta_round_trips(entries, width: int, newline: str) -> None:
    text = ""
    for record_id, sequence, description in entries:
        text += f">{record_id} {description}{newline}"
        text += "".join(
            f"{sequence[i : i + width]}{newline}" for i in range(0, len(sequence), width)
        )
    with tempfile.TemporaryDirectory() as folder:
        records = read(write(Path(folder) / "x.fa", text))
    assert [(r.id, r.sequence) for r in records] == [(i, s) for i, s, _ in entries]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([".fa", ".fq", ".csv", ".tsv", ".txt", ".fa.gz"]))
def test_random_bytes_raise_only_input_errors(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x{suffix}"
        path.write_bytes(data)
        try:
            records = read(path)
        except InputError as error:
            assert str(path) in str(error)
            return
    assert all(record.sequence and record.id for record in records)


# The streaming FASTA reader (prepare, BPE training, dataset cards): what read_sequences reads


STREAMED = {
    "plain": ">a desc\nACGT\nAC\n>b\nGGTT\n",
    "crlf": ">a\r\nAC GT\r\nAC\r\n>b\r\nGG\r\n",
    "no-final-newline": ">a\nACGT\n>b\nGG",
    "blank-lines": "\n\n>a\nAC\n\nGT\n>b\nTT\n",
    "lowercase-and-gaps": ">a\nacgtN-.*\n>b\nRYKM\n",
    "unicode-header": ">\u00e9t\u00e9 r\u00e9sum\u00e9\nACGT\n",
}
BAD_STREAMED = {
    "text-before-header": "note\n>a\nACGT\n",
    "no-header": "ACGT\nACGT\n",
    "header-without-id": ">a\nAC\n>\nGT\n",
    "genbank": ">a\n        1 acgtacgtac gtacgtacgt\n",
    "mid-line-marker": ">a\nAC>GT\n",
}


@pytest.mark.parametrize("chunk", [1, 3, 1 << 22])
@pytest.mark.parametrize("case", sorted(STREAMED))
def test_streamed_fasta_is_what_read_sequences_reads(tmp_path, monkeypatch, case, chunk):
    monkeypatch.setattr(bio_io, "READ_BYTES", chunk)
    path = write(tmp_path / "x.fa", STREAMED[case])
    expected = [(r.id, r.sequence) for r in bio_io.read_sequences(path, label_column=None)]
    assert list(bio_io.fasta_records(path)) == expected
    gzipped = tmp_path / "x.fa.gz"
    gzipped.write_bytes(gzip.compress(path.read_bytes()))
    assert list(bio_io.fasta_records(gzipped)) == expected


@pytest.mark.parametrize("chunk", [1, 1 << 22])
@pytest.mark.parametrize("case", sorted(BAD_STREAMED))
def test_streamed_fasta_is_refused_as_read_sequences_refuses_it(tmp_path, monkeypatch, case, chunk):
    monkeypatch.setattr(bio_io, "READ_BYTES", chunk)
    path = write(tmp_path / "x.fa", BAD_STREAMED[case])
    with pytest.raises(InputError) as expected:
        list(bio_io.read_sequences(path, label_column=None))
    with pytest.raises(InputError) as streamed:
        list(bio_io.fasta_records(path))
    assert str(streamed.value) == str(expected.value)


def test_streamed_fasta_refuses_bytes_that_are_not_utf8_and_a_cut_gzip(tmp_path):
    """(A UTF-8 letter cut by a chunk boundary is named as a byte that is not UTF-8.)"""
    not_residue = ">a\nACG\u00e9T\n".encode()
    for name, content in (
        ("h.fa", b">a\xff\nAC\n"),
        ("s.fa", b">a\nAC\xffGT\n"),
        ("e.fa", not_residue),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InputError) as expected:
            list(bio_io.read_sequences(path, label_column=None))
        with pytest.raises(InputError) as streamed:
            list(bio_io.fasta_records(path))
        assert str(streamed.value) == str(expected.value)
    cut = tmp_path / "cut.fa.gz"
    data = gzip.compress(b">a\n" + b"ACGT" * 50000)
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="gzip data is truncated or corrupt"):
        list(bio_io.fasta_records(cut))
