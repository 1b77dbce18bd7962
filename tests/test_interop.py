"""ESM-2 / Nucleotide Transformer import and export: parity with HuggingFace and fair-esm on
random tiny models, round trips, and clear refusals."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import random

import pytest
import torch

from biotransformer import interop
from biotransformer.config import ModelConfig
from biotransformer.errors import ConfigError
from biotransformer.heads import MaskedLM, SequenceClassifier, TokenClassifier, load_model
from biotransformer.tokenizers import Tokenizer

transformers = pytest.importorskip("transformers")

TOL = 1e-5
PAD, MASK, CLS = 1, 32, 0  # ESM-2's alphabet


def esm_config(**overrides) -> transformers.EsmConfig:
    values = dict(
        vocab_size=33,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        pad_token_id=PAD,
        mask_token_id=MASK,
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.EsmConfig(**{**values, **overrides})


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every weight, LayerNorms and biases included, so no mapping hides behind 1s/0s."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def padded_batch(vocab: int, pad: int, cls: int, mask: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of lengths 12, 8, 5 (right padded), with <mask> tokens in two rows."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(max(pad, cls, 3) + 1, min(vocab, 30), (3, 12), generator=generator)
    ids[:, 0] = cls
    attention_mask = (torch.arange(12)[None, :] < torch.tensor([12, 8, 5])[:, None]).long()
    ids[attention_mask == 0] = pad
    ids[0, 3] = ids[1, 4] = ids[1, 6] = mask
    return ids, attention_mask


def assert_parity(theirs, ours, ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    with torch.no_grad():
        expected = theirs(ids, attention_mask=attention_mask, output_hidden_states=True)
        got = ours(ids, attention_mask=attention_mask, output_hidden_states=True)
    assert (expected.logits - got.logits).abs().max() < TOL
    assert len(expected.hidden_states) == len(got.hidden_states)
    for a, b in zip(expected.hidden_states, got.hidden_states, strict=True):
        assert (a - b).abs().max() < TOL


def protein_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three proteins as our tokenizer writes them (<cls> ... <eos>, right padded)."""
    tokenizer = Tokenizer.from_spec("protein")
    rows = [tokenizer.encode(s) for s in ("MKTAYIAKQRQISFVKSHF", "GAVLIWMKKE", "MSTNPKPQR")]
    ids = torch.full((3, max(map(len, rows))), PAD)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row)
    return ids, (ids != PAD).long()


def test_contact_maps_match_hf_predict_contacts_and_survive_export(tmp_path):
    hf = randomised(transformers.EsmForMaskedLM(esm_config(num_hidden_layers=3)))
    hf.set_attn_implementation("eager")  # attention maps come from the eager path only
    ours = interop.from_hf(hf)
    assert ours.head_config.contact_head
    ids, attention_mask = protein_batch()
    with torch.no_grad():
        expected = hf.predict_contacts(ids, attention_mask)
    got = ours.predict_contacts(ids, attention_mask)
    assert got.shape == expected.shape == (3, ids.shape[1] - 2, ids.shape[1] - 2)
    assert (expected - got).abs().max() < TOL
    assert torch.allclose(got, got.transpose(1, 2))
    ours.save_pretrained(tmp_path / "bt")
    reloaded = load_model(tmp_path / "bt")
    assert torch.equal(reloaded.predict_contacts(ids, attention_mask), got)
    interop.to_hf(reloaded, tmp_path / "hf")
    back = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    back.eval()
    with torch.no_grad():
        assert (back.predict_contacts(ids, attention_mask) - got).abs().max() < TOL
    with pytest.raises(ConfigError, match="no contact head"):
        MaskedLM(ours.config).predict_contacts(ids, attention_mask)


@pytest.mark.parametrize(
    ("position", "token_dropout", "tied"),
    list(itertools.product(["rotary", "absolute"], [True, False], [True, False])),
)
def test_hf_masked_lm_parity(position, token_dropout, tied):
    config = esm_config(
        position_embedding_type=position,
        token_dropout=token_dropout,
        tie_word_embeddings=tied,
        emb_layer_norm_before=position == "absolute",
    )
    hf = randomised(transformers.EsmForMaskedLM(config))
    ours = interop.from_hf(hf)
    assert ours.config.token_dropout is token_dropout and ours.config.tie_embeddings is tied
    assert_parity(hf, ours, *padded_batch(33, PAD, CLS, MASK))


@pytest.mark.parametrize("hf_class", ["EsmForSequenceClassification", "EsmForTokenClassification"])
def test_hf_classifier_parity_through_a_directory(hf_class, tmp_path):
    hf = randomised(getattr(transformers, hf_class)(esm_config(num_labels=3)))
    hf.save_pretrained(tmp_path)
    ours = interop.from_hf(tmp_path)
    assert isinstance(ours, SequenceClassifier if "Sequence" in hf_class else TokenClassifier)
    assert ours.tokenizer.spec.startswith("protein")
    assert_parity(hf, ours, *padded_batch(33, PAD, CLS, MASK))


def nt_vocabulary() -> list[str]:
    """Nucleotide Transformer v1's layout: specials, 6-mers over ATCG, single letters."""
    kmers = ["".join(p) for p in itertools.product("ATCG", repeat=6)]
    return ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>", *kmers, "A", "T", "C", "G", "N"]


def test_nucleotide_transformer_import_with_its_vocabulary(tmp_path):
    vocab = nt_vocabulary()
    config = esm_config(
        vocab_size=len(vocab),
        pad_token_id=1,
        mask_token_id=2,
        max_position_embeddings=20,
        layer_norm_eps=1e-12,
        position_embedding_type="absolute",
        tie_word_embeddings=False,
    )
    hf = randomised(transformers.EsmForMaskedLM(config))
    hf.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    ours = interop.from_hf(tmp_path)
    tok = ours.tokenizer
    assert (tok.unk_id, tok.pad_id, tok.mask_id, tok.cls_id) == (0, 1, 2, 3)
    assert ours.config.position_offset == 2 and ours.config.max_length == 18
    batch = tok.encode_batch(["ATCGGATTTACA" + "GGN", "AAAAAAC"])
    assert batch["input_ids"][0].tolist() == [
        3,
        vocab.index("ATCGGA"),
        vocab.index("TTTACA"),
        vocab.index("G"),
        vocab.index("G"),
        vocab.index("N"),
    ]
    assert batch["input_ids"][1].tolist() == [3, vocab.index("AAAAAA"), vocab.index("C"), 1, 1, 1]
    ids, attention_mask = (torch.from_numpy(batch[key]) for key in ("input_ids", "attention_mask"))
    assert_parity(hf, ours, ids, attention_mask)


@pytest.mark.parametrize("token_dropout", [True, False])
def test_fair_esm_checkpoint_parity(token_dropout, tmp_path):
    esm = pytest.importorskip("esm")
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    theirs = esm.model.esm2.ESM2(
        num_layers=2,
        embed_dim=32,
        attention_heads=4,
        alphabet=alphabet,
        token_dropout=token_dropout,
    )
    with torch.no_grad():  # fair-esm draws embeddings from N(0, 1): tied logits reach ~20, where
        theirs.embed_tokens.weight.mul_(0.1)  # fp32 steps are 2e-6; ESM-2's own weights are small
    randomised(theirs)
    cfg = argparse.Namespace(
        encoder_layers=2,
        encoder_embed_dim=32,
        encoder_attention_heads=4,
        token_dropout=token_dropout,
    )
    state = {f"encoder.sentence_encoder.{k}": v for k, v in theirs.state_dict().items()}
    path = tmp_path / "esm2_t2_tiny.pt"
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    reference, _ = esm.pretrained.load_model_and_alphabet_core(
        "esm2_t2_tiny", torch.load(path, weights_only=False)
    )
    ours = interop.from_fair_esm(path)
    ids, attention_mask = padded_batch(33, PAD, CLS, MASK)
    with torch.no_grad():
        expected = reference.eval()(ids, repr_layers=[0, 1, 2])
        got = ours(ids, attention_mask=attention_mask, output_hidden_states=True)
    assert (expected["logits"] - got.logits).abs().max() < TOL
    for layer, hidden in enumerate(got.hidden_states):
        assert (expected["representations"][layer] - hidden).abs().max() < TOL
    ids, attention_mask = protein_batch()
    with torch.no_grad():
        contacts = reference(ids, return_contacts=True)["contacts"]
    assert (contacts - ours.predict_contacts(ids, attention_mask)).abs().max() < TOL


@pytest.mark.parametrize("seed", range(40))
def test_fair_esm_random_bytes_are_a_model_directory_error(seed, tmp_path):
    """Garbage of any kind (the legacy unpickler raises IndexError, KeyError... on some
    bytes) is one error naming the file, never an internal error."""
    from biotransformer.errors import ModelDirectoryError

    path = tmp_path / "esm.pt"
    path.write_bytes(random.Random(seed).randbytes(64 + 16 * seed))
    with pytest.raises(ModelDirectoryError, match=r"esm\.pt"):
        interop.from_fair_esm(path)


def test_fair_esm_refuses_pickled_code(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"model": {}, "cfg": {"model": ValueError("not allowed")}}, path)
    with pytest.raises(Exception, match="weights_only"):
        interop.from_fair_esm(path)


@pytest.mark.parametrize("position", ["rotary", "learned"])
def test_ours_to_hf_to_ours_is_identical(position, tmp_path):
    from biotransformer.tokenizers import Tokenizer

    config = ModelConfig.from_preset(
        "tiny",
        vocab_size=33,
        pad_id=PAD,
        mask_id=MASK,
        position=position,
        token_dropout=True,
        embedding_layer_norm=True,
        position_offset=PAD + 1 if position == "learned" else 0,
    )
    ours = randomised(MaskedLM(config))
    ours.tokenizer = Tokenizer.from_spec("protein")
    interop.to_hf(ours, tmp_path / "hf")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert_parity(hf, ours, *padded_batch(33, PAD, CLS, MASK))
    back = interop.from_hf(tmp_path / "hf")
    assert back.config == ours.config and back.tokenizer == ours.tokenizer
    mine, theirs = ours.state_dict(), back.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[key], theirs[key]) for key in mine)


def test_export_of_a_classifier_and_a_native_learned_table(tmp_path):
    config = ModelConfig.from_preset("tiny", vocab_size=33, pad_id=PAD, position="learned")
    ours = randomised(SequenceClassifier(config, num_labels=2, classifier="esm"))
    interop.to_hf(ours, tmp_path / "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert_parity(hf, ours, *padded_batch(33, PAD, CLS, MASK))


@pytest.mark.parametrize(
    ("overrides", "head", "option"),
    [
        ({"position": "alibi"}, {}, "ModelConfig.position = 'alibi'"),
        ({"norm": "post"}, {}, "ModelConfig.norm"),
        ({"activation": "swiglu"}, {}, "ModelConfig.activation"),
        ({}, {"num_labels": 2}, "classifier = 'linear'"),
    ],
)
def test_export_refusal_names_the_option(overrides, head, option, tmp_path):
    config = ModelConfig.from_preset("tiny", vocab_size=33, pad_id=PAD, **overrides)
    model = SequenceClassifier(config, **head) if head else MaskedLM(config)
    with pytest.raises(ConfigError, match=option.replace("(", r"\(")):
        interop.to_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_cli_convert_imports_and_exports(tmp_path, capsys):
    from biotransformer.cli import main

    hf = randomised(transformers.EsmForMaskedLM(esm_config(token_dropout=True)))
    hf.save_pretrained(tmp_path / "hf")
    assert (
        main(["convert", "--from", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "bt")]) == 0
    )
    assert '"model_type": "MaskedLM"' in capsys.readouterr().out
    ours = load_model(tmp_path / "bt")
    assert ours.tokenizer.spec.startswith("protein")
    assert_parity(hf, ours, *padded_batch(33, PAD, CLS, MASK))
    argv = ["convert", "--from", "biotransformer", str(tmp_path / "bt"), "--to", "hf"]
    assert main([*argv, "--out", str(tmp_path / "back")]) == 0
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "back").eval()
    assert_parity(back, ours, *padded_batch(33, PAD, CLS, MASK))
    alibi = MaskedLM(ModelConfig.from_preset("tiny", vocab_size=33, pad_id=PAD, position="alibi"))
    alibi.save_pretrained(tmp_path / "alibi")
    argv = ["convert", "--from", "biotransformer", str(tmp_path / "alibi"), "--to", "hf"]
    assert main([*argv, "--out", str(tmp_path / "no")]) == 2
    assert "ModelConfig.position = 'alibi'" in capsys.readouterr().err


# ------------------------------------------------------------------ ESM C


def esmc_config(**overrides) -> transformers.EsmcConfig:
    values = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    return transformers.EsmcConfig(**{**values, **overrides})


def esmc_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Proteins as ESM C's own tokenizer writes them (right padded), one with a <mask>."""
    from transformers.models.esmc.tokenization_esmc import EsmcTokenizer

    batch = EsmcTokenizer()(
        ["MKTAYIAKQRQISFVKSHF", "GAVLIW<mask>KKE", "MSTNPK"], padding=True, return_tensors="pt"
    )
    return batch["input_ids"], batch["attention_mask"]


def assert_esmc_parity(theirs, ours, ids, attention_mask) -> None:
    """Logits and the last hidden state within 1e-5 at every real token (padding positions
    are masked out of attention in both, but ESM C leaves their own outputs unzeroed)."""
    real = attention_mask.bool()
    with torch.no_grad():
        expected = theirs(ids, attention_mask=attention_mask, output_hidden_states=True)
        got = ours(ids, attention_mask=attention_mask, output_hidden_states=True)
        base = theirs.esmc(ids, attention_mask=attention_mask).last_hidden_state
    assert (expected.logits - got.logits)[real if got.logits.dim() == 3 else ...].abs().max() < TOL
    assert (base - got.hidden_states[-1])[real].abs().max() < TOL


@pytest.mark.parametrize("hf_class", ["EsmcForMaskedLM", "EsmcForSequenceClassification"])
def test_esmc_parity_and_round_trip(hf_class, tmp_path):
    hf = randomised(getattr(transformers, hf_class)(esmc_config(num_labels=3)))
    hf.save_pretrained(tmp_path / "hf")
    ours = interop.from_hf(tmp_path / "hf")
    config = ours.config
    assert config.qk_norm and not config.bias and config.activation == "swiglu"
    assert config.residual_scale == pytest.approx((3 / 36) ** 0.5)
    ids, attention_mask = esmc_batch()
    assert ours.tokenizer.encode("MKTAYIAKQRQISFVKSHF").tolist() == ids[0].tolist()
    assert_esmc_parity(hf, ours, ids, attention_mask)
    ours.save_pretrained(tmp_path / "bt")
    interop.to_hf(load_model(tmp_path / "bt"), tmp_path / "back")
    back = getattr(transformers, hf_class).from_pretrained(tmp_path / "back").eval()
    assert_esmc_parity(back, ours, ids, attention_mask)
    again = interop.from_hf(tmp_path / "back")
    mine, theirs = ours.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[key], theirs[key]) for key in mine)


def test_esmc_tokenizer_is_transformers_own():
    from transformers.models.esmc.tokenization_esmc import SEQUENCE_VOCAB

    ours = interop.esmc_tokenizer(64)
    assert ours.tokens[: len(SEQUENCE_VOCAB)] == list(SEQUENCE_VOCAB)
    assert ours.vocab_size == 64 and ours.pad_id == 1 and ours.mask_id == 32


@pytest.mark.parametrize(
    ("change", "option"),
    [
        ({"final_norm_bias": True}, "final_norm_bias"),
        ({"residual_scale": 1.0}, "residual_scale"),
        ({"bias": True}, "bias"),
    ],
)
def test_esmc_export_refusal_names_the_option(change, option, tmp_path):
    hf = transformers.EsmcForMaskedLM(esmc_config())
    config = dataclasses.replace(interop.from_hf(hf).config, **change)
    with pytest.raises(ConfigError, match=f"ModelConfig.{option} = "):
        interop.to_hf(MaskedLM(config), tmp_path / "out")
