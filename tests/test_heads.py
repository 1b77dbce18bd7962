"""Task heads: losses, pooling, overfitting one batch, and model directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import biotransformer as bt
from biotransformer.errors import ConfigError, ModelDirectoryError
from biotransformer.heads import POOLINGS, BioTransformerModel, ModelOutput, set_class_weights

VOCAB = 11


def tiny(**overrides: object) -> bt.ModelConfig:
    return bt.ModelConfig.from_preset("tiny", **{"vocab_size": VOCAB, **overrides})


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded sequences (pad id 0) and their attention mask."""
    torch.manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, 7))
    ids[1, 4:] = 0
    return ids, (ids != 0).long()


def test_masked_lm_shapes_and_tied_decoder() -> None:
    model = bt.MaskedLM(tiny())
    ids, mask = batch()
    out = model(ids, mask, output_hidden_states=True, output_attentions=True)
    assert isinstance(out, ModelOutput) and out.logits.shape == (2, 7, VOCAB)
    assert out.loss is None and len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert model.lm_head.decoder.weight is model.encoder.embed_tokens.weight
    untied = bt.MaskedLM(tiny(tie_embeddings=False))
    assert untied.num_parameters() == model.num_parameters() + VOCAB * 16


def test_masked_lm_loss_ignores_minus_100() -> None:
    model = bt.MaskedLM(tiny())
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 1], labels[1, 3] = 5, 7, 2
    out = model(ids, mask, labels=labels)
    picked = out.logits[labels != -100]
    expected = F.cross_entropy(picked, labels[labels != -100], reduction="sum")
    torch.testing.assert_close(out.loss_sum, expected)
    assert out.num_targets.item() == 3
    torch.testing.assert_close(out.loss, expected / 3)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_shapes_and_padding_invariance(pooling: str) -> None:
    torch.manual_seed(0)
    model = bt.SequenceClassifier(tiny(), num_labels=3, pooling=pooling).double().eval()
    ids, mask = batch()
    logits = model(ids, mask).logits
    assert logits.shape == (2, 3)
    alone = model(ids[1:, :4]).logits
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=0)


def test_classifier_losses_with_class_weights() -> None:
    ids, mask = batch()
    single = bt.SequenceClassifier(tiny(), num_labels=3, class_weights=[1.0, 2.0, 0.5])
    out = single(ids, mask, labels=torch.tensor([2, 1]))
    weights = torch.tensor([0.5, 2.0])
    per_sequence = F.cross_entropy(out.logits, torch.tensor([2, 1]), reduction="none")
    torch.testing.assert_close(out.loss, (per_sequence * weights).sum() / 2)
    assert out.num_targets.item() == 2

    multi = bt.SequenceClassifier(
        tiny(), num_labels=2, problem_type="multi_label", class_weights=[3.0, 1.0]
    )
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = multi(ids, mask, labels=labels)
    expected = F.binary_cross_entropy_with_logits(
        out.logits, labels, pos_weight=torch.tensor([3.0, 1.0])
    )
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("cls", [bt.SequenceClassifier, bt.TokenClassifier])
def test_class_weights_set_after_construction_equal_the_constructors(
    tmp_path: Path, cls: type
) -> None:
    ids, mask = batch()
    labels = torch.tensor([1, 0]) if cls is bt.SequenceClassifier else torch.ones_like(ids)
    torch.manual_seed(0)
    given = cls(tiny(), num_labels=2, class_weights=[1.0, 3.0])
    torch.manual_seed(0)
    later = cls(tiny(), num_labels=2)
    set_class_weights(later, [1.0, 3.0])
    assert later.head_config == given.head_config
    torch.testing.assert_close(
        later(ids, mask, labels=labels).loss, given(ids, mask, labels=labels).loss
    )
    document = json.loads((later.save_pretrained(tmp_path) / "config.json").read_text())
    assert document["head"]["class_weights"] == [1.0, 3.0]
    with pytest.raises(ConfigError, match="class_weights"):
        set_class_weights(later, [1.0])


def test_head_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="num_labels is required"):
        bt.SequenceClassifier(tiny())
    with pytest.raises(ConfigError, match="pooling"):
        bt.SequenceClassifier(tiny(), num_labels=2, pooling="sum")
    with pytest.raises(ConfigError, match="class_weights"):
        bt.SequenceClassifier(tiny(), num_labels=2, class_weights=[1.0])
    with pytest.raises(ConfigError, match="num_labels=2 for a binary"):
        bt.SequenceClassifier(tiny(), num_labels=1)
    model = bt.SequenceClassifier(tiny(), label2id={"no": 0, "yes": 1})
    assert model.head_config.num_labels == 2


def test_regressor_standardises_targets() -> None:
    model = bt.SequenceRegressor(tiny(), num_outputs=2)
    targets = torch.tensor([[100.0, -3.0], [200.0, -1.0], [300.0, -2.0]])
    model.fit_target_scaling(targets)
    ids, mask = batch()
    out = model(ids, mask, labels=targets[:2])
    standardised = (out.logits - model.target_mean) / model.target_std
    expected = F.mse_loss(standardised, (targets[:2] - model.target_mean) / model.target_std)
    torch.testing.assert_close(out.loss, expected)
    assert out.logits.shape == (2, 2) and abs(out.logits[0, 0].item() - 200) < 100


def test_token_classifier_shapes_and_ignored_labels() -> None:
    model = bt.TokenClassifier(tiny(), num_labels=4)
    ids, mask = batch()
    labels = torch.randint(0, 4, ids.shape).masked_fill(mask == 0, -100)
    out = model(ids, mask, labels=labels)
    assert out.logits.shape == (2, 7, 4) and out.num_targets.item() == 11


def test_model_api() -> None:
    model = bt.SequenceClassifier.from_preset("tiny", vocab_size=VOCAB, num_labels=3, pad_id=1)
    assert model.config.pad_id == 1 and model.head_config.num_labels == 3
    n = model.num_parameters()
    assert n == sum(p.numel() for p in model.parameters())
    assert model.flops_per_token(100) == 6 * n + 12 * 2 * 100 * 16


def overfit_cases() -> list[tuple[str, BioTransformerModel, torch.Tensor]]:
    ids, mask = batch()
    mlm_labels = ids.masked_fill(mask == 0, -100)
    token_labels = torch.randint(0, 3, ids.shape).masked_fill(mask == 0, -100)
    return [
        ("mlm", bt.MaskedLM(tiny()), mlm_labels),
        ("single", bt.SequenceClassifier(tiny(), num_labels=3), torch.tensor([2, 0])),
        (
            "multi",
            bt.SequenceClassifier(tiny(), num_labels=2, problem_type="multi_label"),
            torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        ),
        ("regression", bt.SequenceRegressor(tiny(), pooling="attention"), torch.tensor([1.0, -1])),
        ("token", bt.TokenClassifier(tiny(), num_labels=3), token_labels),
    ]


@pytest.mark.parametrize("case", range(5))
def test_tiny_model_overfits_one_batch(case: int) -> None:
    torch.manual_seed(0)
    name, model, labels = overfit_cases()[case]
    ids, mask = batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = model(ids, mask, labels=labels).loss.item()
    for _ in range(60):
        loss = model(ids, mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * first, (name, first, loss.item())


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (bt.MaskedLM, {}),
        (bt.SequenceClassifier, {"label2id": {"a": 0, "b": 1, "c": 2}, "pooling": "attention"}),
        (bt.SequenceRegressor, {"num_outputs": 2}),
        (bt.TokenClassifier, {"num_labels": 4}),
    ],
)
def test_save_load_round_trip(tmp_path: Path, cls: type, options: dict) -> None:
    torch.manual_seed(0)
    model = cls(tiny(position="alibi", activation="swiglu"), **options).eval()
    if cls is bt.SequenceRegressor:
        model.fit_target_scaling(torch.tensor([[1.0, 10.0], [3.0, 30.0]]))
    model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    document = json.loads((tmp_path / "model" / "config.json").read_text())
    assert document["model_type"] == cls.__name__ and document["model"]["position"] == "alibi"
    loaded = bt.load_model(tmp_path / "model")
    assert type(loaded) is cls and not loaded.training
    assert loaded.config == model.config and loaded.head_config == model.head_config
    assert loaded.loading_info == {"new": [], "unused": []}
    ids, mask = batch()
    torch.testing.assert_close(loaded(ids, mask).logits, model(ids, mask).logits, atol=0, rtol=0)
    if cls is bt.MaskedLM:
        assert loaded.lm_head.decoder.weight is loaded.encoder.embed_tokens.weight
    model.save_pretrained(tmp_path / "model")  # overwriting a directory is atomic too
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_masked_lm_encoder_warm_starts_a_classifier(tmp_path: Path) -> None:
    mlm = bt.MaskedLM(tiny())
    mlm.save_pretrained(tmp_path / "mlm")
    classifier = bt.SequenceClassifier.from_pretrained(tmp_path / "mlm", num_labels=2)
    assert type(classifier) is bt.SequenceClassifier
    assert classifier.loading_info["new"] == ["classifier.bias", "classifier.weight"]
    assert classifier.loading_info["unused"] == [
        "lm_head.bias",
        "lm_head.dense.bias",
        "lm_head.dense.weight",
        "lm_head.norm.bias",
        "lm_head.norm.weight",
    ]
    for key, value in mlm.encoder.state_dict().items():
        assert torch.equal(classifier.encoder.state_dict()[key], value)


def test_broken_directories_give_clear_errors(tmp_path: Path) -> None:
    directory = tmp_path / "model"
    with pytest.raises(ModelDirectoryError, match="not a directory"):
        bt.load_model(directory)
    bt.MaskedLM(tiny()).save_pretrained(directory)
    config_path = directory / "config.json"
    weights_path = directory / "model.safetensors"
    good_config, good_weights = config_path.read_text(), weights_path.read_bytes()

    weights_path.write_bytes(good_weights[: len(good_weights) // 2])
    with pytest.raises(ModelDirectoryError, match=r"model\.safetensors: cannot be read.*Fix"):
        bt.load_model(directory)
    weights_path.write_bytes(good_weights)

    document = json.loads(good_config)
    document["model"]["hidden_size"] = 32
    document["model"]["num_heads"] = 2
    config_path.write_text(json.dumps(document))
    with pytest.raises(ModelDirectoryError, match=r"safetensors: weight '.+' has shape"):
        bt.load_model(directory)

    document["model"] = {**json.loads(good_config)["model"], "hiden_size": 3}
    config_path.write_text(json.dumps(document))
    with pytest.raises(ModelDirectoryError, match=r"config\.json: unknown ModelConfig key"):
        bt.load_model(directory)

    config_path.write_text(good_config.replace('"MaskedLM"', '"Wizard"'))
    with pytest.raises(ModelDirectoryError, match="unknown model_type 'Wizard'"):
        bt.load_model(directory)

    config_path.write_text(good_config[:-10])
    with pytest.raises(ModelDirectoryError, match=r"config\.json: not valid JSON"):
        bt.load_model(directory)

    config_path.write_text(good_config)
    weights_path.unlink()
    with pytest.raises(ModelDirectoryError, match=r"model\.safetensors: not found"):
        bt.load_model(directory)
    config_path.unlink()
    with pytest.raises(ModelDirectoryError, match=r"config\.json: not found"):
        bt.load_model(directory)


def test_tokenizer_travels_with_the_model(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("biotransformer.tokenizers")
    tokenizer = tokenizers.Tokenizer.from_spec("protein")
    config = tiny(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id)
    model = bt.MaskedLM(config).eval()
    model.save_pretrained(tmp_path / "model", tokenizer=tokenizer)
    loaded = bt.load_model(tmp_path / "model")
    assert loaded.tokenizer == tokenizer
    encoded = loaded.tokenizer.encode_batch(["MKTAYIAK", "MKV"])
    ids = torch.as_tensor(encoded["input_ids"])
    mask = torch.as_tensor(encoded["attention_mask"])
    torch.testing.assert_close(loaded(ids, mask).logits, model(ids, mask).logits)
    with pytest.raises(ConfigError, match="vocab_size"):
        bt.MaskedLM(tiny()).save_pretrained(tmp_path / "other", tokenizer=tokenizer)
    (tmp_path / "model" / "tokenizer.json").write_text("{")
    with pytest.raises(ModelDirectoryError, match=r"tokenizer\.json.*Fix"):
        bt.load_model(tmp_path / "model")


def test_masked_lm_target_logits_only_matches_full_loss() -> None:
    torch.manual_seed(0)
    full = bt.MaskedLM(tiny())
    sparse = bt.MaskedLM(tiny(), target_logits_only=True)
    sparse.load_state_dict(full.state_dict())
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 1], labels[1, 3] = 5, 7, 2
    expected, got = full(ids, mask, labels=labels), sparse(ids, mask, labels=labels)
    assert got.logits.shape == (3, VOCAB) and got.num_targets.item() == 3
    torch.testing.assert_close(got.logits, expected.logits[labels != -100], atol=1e-6, rtol=0)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-6, rtol=0)
    expected.loss.backward()
    got.loss.backward()
    for a, b in zip(full.parameters(), sparse.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=0)
    assert sparse(ids, mask).logits.shape == (2, 7, VOCAB)


def test_commands_refuse_a_model_directory_without_its_tokenizer(tmp_path):
    from biotransformer.cli import main

    model = bt.MaskedLM(bt.ModelConfig.from_preset("tiny", vocab_size=20))
    model.save_pretrained(tmp_path / "model")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGT\n")
    with pytest.raises(ModelDirectoryError, match=r"tokenizer\.json: missing"):
        bt.load_model(tmp_path / "model", require_tokenizer=True)
    assert (
        main(
            [
                "embed",
                "--model",
                str(tmp_path / "model"),
                "--input",
                str(fasta),
                "--out",
                str(tmp_path / "e.h5"),
            ]
        )
        == 2
    )
