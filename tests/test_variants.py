"""Variant effects: parsing against a reference, and scores equal to a direct computation."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from biotransformer.cli import main
from biotransformer.config import ModelConfig
from biotransformer.errors import InputError
from biotransformer.heads import MaskedLM, SequenceRegressor
from biotransformer.inference import predict_records
from biotransformer.io import SequenceRecord
from biotransformer.tokenizers import Tokenizer
from biotransformer.variants import (
    MaskedLMScorer,
    Substitution,
    Variant,
    parse_mutations,
    read_variants,
    score_head,
    score_masked_lm,
    write_scores_tsv,
)

PROTEIN = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
DNA = "ACGTTGCAAGGCTTACCGATAGGCTAACGTTA"


def masked_lm(spec: str, **overrides: object) -> MaskedLM:
    tokenizer = Tokenizer.from_spec(spec)
    torch.manual_seed(0)
    config = ModelConfig.from_preset(
        "tiny", vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, **overrides
    )
    model = MaskedLM(config).eval()
    model.tokenizer = tokenizer
    return model


@torch.no_grad()
def direct_log_probs(model: MaskedLM, ids: np.ndarray) -> np.ndarray:
    logits = model(torch.from_numpy(ids)[None]).logits[0]
    return torch.log_softmax(logits, dim=-1).numpy()


# ----------------------------------------------------------------------------- parsing


def test_parse_protein_notation_and_combinations():
    assert parse_mutations("A42G") == [Substitution(42, "A", "G")]
    assert [str(c) for c in parse_mutations("a4g:L5P; K7R")] == ["A4G", "L5P", "K7R"]
    with pytest.raises(InputError, match="'A42' is not a substitution"):
        parse_mutations("A42", path="v.tsv", line=3)


def test_tsv_by_sites_and_by_notation(tmp_path):
    reference = {"p": PROTEIN}
    sites = tmp_path / "v.tsv"
    sites.write_text("id\tposition\tref\talt\nv1\t4\tA\tG\nv2\t4,5\tA,Y\tG,W\n")
    variants = read_variants(sites, reference)
    assert [v.mutations for v in variants] == ["A4G", "A4G:Y5W"]
    assert variants[1].apply(PROTEIN)[3:5] == "GW"
    notation = tmp_path / "n.tsv"
    notation.write_text("id\tmutation\nx\tM1A:K2R\n")
    assert read_variants(notation, reference)[0].mutations == "M1A:K2R"


def test_reference_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "v.tsv"
    path.write_text("id\tposition\tref\talt\nok\t1\tM\tA\nbad\t4\tC\tG\n")
    with pytest.raises(InputError) as caught:
        read_variants(path, {"p": PROTEIN})
    message = str(caught.value)
    assert str(path) in message and "line 3" in message and "'bad'" in message
    assert "reference mismatch at position 4" in message and "has 'A'" in message


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("v\t99\tA\tG", "outside"),
        ("v\t4\tA\tA", "changes nothing"),
        ("v\t4,4\tA,A\tG,C", "given twice"),
        ("v\tx\tA\tG", "whole number"),
    ],
)
def test_bad_rows_name_the_line(tmp_path, row, problem):
    path = tmp_path / "v.tsv"
    path.write_text(f"id\tposition\tref\talt\n{row}\n")
    with pytest.raises(InputError, match=rf"line 2.*{problem}"):
        read_variants(path, {"p": PROTEIN})


def test_several_records_need_a_sequence_column(tmp_path):
    path = tmp_path / "v.tsv"
    path.write_text("id\tposition\tref\talt\nv\t1\tA\tG\n")
    reference = {"a": "ACGT", "b": "TTTT"}
    with pytest.raises(InputError, match="does not name one"):
        read_variants(path, reference)
    path.write_text("id\tsequence\tposition\tref\talt\nv\tb\t2\tT\tG\n")
    assert read_variants(path, reference)[0].record == "b"


def test_vcf_against_a_reference(tmp_path):
    path = tmp_path / "small.vcf"
    path.write_text(
        "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
        "chr1\t2\trs1\tC\tT\t.\t.\t.\n"
        "chr1\t5\t.\tT\tA,G\t.\t.\t.\n"
    )
    variants = read_variants(path, {"chr1": DNA})
    assert [(v.id, v.mutations) for v in variants] == [
        ("rs1", "C2T"),
        ("chr1:5T>A/A", "T5A"),
        ("chr1:5T>G/G", "T5G"),
    ]
    path.write_text("##fileformat=VCFv4.2\nchr1\t2\t.\tCG\tC\t.\t.\t.\n")
    with pytest.raises(InputError, match=r"line 2.*not a single-base substitution"):
        read_variants(path, {"chr1": DNA})
    path.write_text("##fileformat=VCFv4.2\nchr2\t2\t.\tC\tT\t.\t.\t.\n")
    with pytest.raises(InputError, match="'chr2' is not in the reference"):
        read_variants(path, {"chr1": DNA})


# ----------------------------------------------------------------------------- scores


def test_protein_scores_equal_a_direct_computation():
    model = masked_lm("protein")
    tokenizer = model.tokenizer
    reference = {"p": PROTEIN}
    variants = [
        Variant("a", "p", (Substitution(4, "A", "G"),)),
        Variant("b", "p", (Substitution(4, "A", "W"), Substitution(10, "R", "K"))),
    ]
    scores = score_masked_lm(
        model, variants, reference, methods=("masked_marginal", "wt_marginal", "pll_diff")
    )
    ids = tokenizer.encode(PROTEIN)  # <cls> first: residue p sits at token p
    letter = {c: tokenizer.tokens.index(c) for c in "AGWRK"}

    def masked(position: int, ref: str, alt: str) -> float:
        corrupted = ids.copy()
        corrupted[position] = tokenizer.mask_id
        log_probs = direct_log_probs(model, corrupted)[position]
        return log_probs[letter[alt]] - log_probs[letter[ref]]

    expected = [masked(4, "A", "G"), masked(4, "A", "W") + masked(10, "R", "K")]
    np.testing.assert_allclose(scores["masked_marginal"], expected, atol=1e-5)
    wild = direct_log_probs(model, ids)
    expected_wt = wild[4, letter["G"]] - wild[4, letter["A"]]
    np.testing.assert_allclose(scores["wt_marginal"][0], expected_wt, atol=1e-5)

    def pll(sequence: str) -> float:
        tokens = tokenizer.encode(sequence)
        total = 0.0
        for i in range(1, len(tokens) - 1):
            corrupted = tokens.copy()
            corrupted[i] = tokenizer.mask_id
            total += direct_log_probs(model, corrupted)[i, tokens[i]]
        return total

    mutant = variants[0].apply(PROTEIN)
    np.testing.assert_allclose(scores["pll_diff"][0], pll(mutant) - pll(PROTEIN), atol=1e-4)


def test_kmer_scores_mask_every_covering_token():
    model = masked_lm("dna-kmer:k=3")
    tokenizer = model.tokenizer
    site = 12  # 1-based; the reference has 'C' there
    assert DNA[site - 1] == "C"
    variant = Variant("v", "d", (Substitution(site, "C", "T"),))
    score = score_masked_lm(model, [variant], {"d": DNA}, methods=("masked_marginal",))
    ids, offsets = tokenizer.encode(DNA), tokenizer.offsets(DNA)
    covering = [t for t, (a, b) in enumerate(offsets) if a <= site - 1 < b]
    assert len(covering) == 3
    corrupted = ids.copy()
    corrupted[covering] = tokenizer.mask_id
    log_probs = direct_log_probs(model, corrupted)
    terms = []
    for token in covering:
        a, b = offsets[token]
        span, offset = DNA[a:b], site - 1 - a
        alt = span[:offset] + "T" + span[offset + 1 :]
        row = log_probs[token]
        terms.append(row[tokenizer.tokens.index(alt)] - row[tokenizer.tokens.index(span)])
    np.testing.assert_allclose(score["masked_marginal"][0], np.mean(terms), atol=1e-5)


def test_bpe_scores_are_finite():
    rng = np.random.default_rng(0)
    corpus = ["".join(rng.choice(list("ACGT"), 500)) for _ in range(20)]
    tokenizer = Tokenizer.from_spec("dna-bpe:vocab=200", train_sequences=corpus)
    torch.manual_seed(0)
    model = MaskedLM(ModelConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size)).eval()
    model.tokenizer = tokenizer
    variants = [
        Variant(f"v{i}", "d", (Substitution(i, DNA[i - 1], "A" if DNA[i - 1] != "A" else "C"),))
        for i in (1, 12, 30)
    ]
    scores = score_masked_lm(model, variants, {"d": DNA}, methods=("masked_marginal", "pll_diff"))
    assert all(np.isfinite(column).all() for column in scores.values())


def test_long_reference_is_scored_in_a_window_around_the_site():
    model = masked_lm("protein", max_length=34)
    sequence = PROTEIN * 4  # 132 residues, more than the model reads
    variant = Variant("v", "p", (Substitution(70, sequence[69], "G"),))
    scorer = MaskedLMScorer(model)
    (score,) = scorer.masked_marginal([variant], {"p": sequence})
    context = scorer.context("p", sequence, [69])
    assert len(context.sequence) == 32 and context.start <= 69 < context.start + 32
    ids = model.tokenizer.encode(context.sequence)
    token = 69 - context.start + 1
    ids[token] = model.tokenizer.mask_id
    row = direct_log_probs(model, ids)[token]
    index = model.tokenizer.tokens.index
    np.testing.assert_allclose(score, row[index("G")] - row[index(sequence[69])], atol=1e-5)


def test_head_scores_are_the_change_in_prediction(tmp_path):
    tokenizer = Tokenizer.from_spec("protein")
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size, pad_id=1)
    model = SequenceRegressor(config).eval()
    model.tokenizer = tokenizer
    task = model.task
    variants = [Variant("a", "p", (Substitution(4, "A", "G"),))]
    deltas = score_head(model, task, variants, {"p": PROTEIN})
    before, after = predict_records(
        model,
        [SequenceRecord("w", PROTEIN), SequenceRecord("m", variants[0].apply(PROTEIN))],
        task,
    ).scores[:, 0]
    np.testing.assert_allclose(deltas["delta_value"][0], after - before, atol=1e-6)
    out = write_scores_tsv(variants, deltas, tmp_path / "s.tsv")
    rows = list(csv.reader(out.open(), delimiter="\t"))
    assert rows[0] == ["id", "record", "mutations", "delta_value"]
    assert rows[1][:3] == ["a", "p", "A4G"]


def test_score_variants_command(tmp_path, capsys):
    model = masked_lm("protein")
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "ref.fa").write_text(f">p\n{PROTEIN}\n")
    (tmp_path / "v.tsv").write_text("id\tmutation\nv1\tA4G\nv2\tA4G:R10K\n")
    out = tmp_path / "scores.tsv"
    argv = ["score-variants", "--model", str(tmp_path / "model"), "--reference"]
    argv += [str(tmp_path / "ref.fa"), "--variants", str(tmp_path / "v.tsv"), "--out", str(out)]
    assert main(argv) == 0
    rows = list(csv.reader(out.open(), delimiter="\t"))
    assert rows[0] == ["id", "record", "mutations", "masked_marginal", "wt_marginal"]
    assert [row[2] for row in rows[1:]] == ["A4G", "A4G:R10K"]
    (tmp_path / "v.tsv").write_text("id\tmutation\nv1\tC4G\n")
    assert main([*argv, "--overwrite"]) == 2  # an existing --out needs --overwrite (issue 19)
    assert "reference mismatch at position 4" in capsys.readouterr().err
    assert [row[2] for row in csv.reader(out.open(), delimiter="\t")][1:] == ["A4G", "A4G:R10K"]
