"""``predict-contacts``: contact maps of an imported ESM-2 model equal HuggingFace's
``predict_contacts`` record by record, whatever the batching; what cannot be is refused."""

from __future__ import annotations

import h5py
import pytest
import torch

from biotransformer import interop
from biotransformer.cli import main
from biotransformer.heads import MaskedLM
from biotransformer.tokenizers import Tokenizer

transformers = pytest.importorskip("transformers")

PROTEINS = {"short": "MKTAYIAK", "long": "MKTAYIAKQRQISFVKSHFSRQ", "mid": "GAVLIWMKKEDD"}


@pytest.fixture(scope="module")
def esm(tmp_path_factory):
    """A random ESM-2-shaped HF masked LM (eager attention, for its maps) and its import."""
    torch.manual_seed(0)
    config = transformers.EsmConfig(
        vocab_size=33,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        pad_token_id=1,
        mask_token_id=32,
        token_dropout=True,
    )
    hf = transformers.EsmForMaskedLM(config).eval()
    hf.set_attn_implementation("eager")
    with torch.no_grad():  # a contact head with weight enough to make the maps differ
        hf.esm.contact_head.regression.weight.normal_(0, 300.0)
    directory = tmp_path_factory.mktemp("esm") / "model"
    interop.from_hf(hf).save_pretrained(directory)
    return hf, directory


def write_fasta(path, proteins):
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in proteins.items()))
    return path


def test_maps_equal_hf_predict_contacts_record_by_record(esm, tmp_path):
    hf, directory = esm
    fasta = write_fasta(tmp_path / "p.fasta", PROTEINS)
    out = tmp_path / "contacts.h5"
    argv = ["predict-contacts", "--model", str(directory), "--input", str(fasta)]
    assert main([*argv, "--out", str(out), "--max-tokens", "48"]) == 0  # several batches
    tokenizer = Tokenizer.from_spec("protein")
    with h5py.File(out) as handle:
        assert [name.decode() for name in handle["ids"][:]] == list(PROTEINS)
        for index, sequence in enumerate(PROTEINS.values()):
            got = handle["contacts"][str(index)][:]
            ids = torch.as_tensor(tokenizer.encode(sequence))[None]
            with torch.no_grad():
                expected = hf.predict_contacts(ids, torch.ones_like(ids))[0].numpy()
            assert got.shape == (len(sequence), len(sequence))
            assert abs(got - expected).max() < 1e-5
            assert got.std() > 0.01  # the maps say something, not a constant


def test_a_model_without_contact_head_or_a_too_long_protein_is_refused(esm, tmp_path, capsys):
    _, directory = esm
    plain = MaskedLM.from_preset("tiny", vocab_size=33, pad_id=1)
    plain.save_pretrained(tmp_path / "plain", tokenizer=Tokenizer.from_spec("protein"))
    fasta = write_fasta(tmp_path / "p.fasta", PROTEINS)
    argv = ["predict-contacts", "--input", str(fasta), "--out", str(tmp_path / "c.h5")]
    assert main([*argv, "--model", str(tmp_path / "plain")]) == 2
    assert "no contact head" in capsys.readouterr().err
    long = write_fasta(tmp_path / "long.fasta", {"titin": "M" * 40})
    argv = ["predict-contacts", "--input", str(long), "--out", str(tmp_path / "c.h5")]
    assert main([*argv, "--model", str(directory)]) == 2
    err = capsys.readouterr().err
    assert (
        "titin" in err
        and "42 tokens, longer than the model's max_length = 30" in err
        and "Fix:" in err
    )
    assert not (tmp_path / "c.h5").exists()
