"""LoRA: only adapters and head train, adapters reload to the same outputs, merging is exact."""

from __future__ import annotations

import pytest
import torch

from biotransformer.config import ModelConfig
from biotransformer.errors import ConfigError
from biotransformer.heads import MaskedLM, SequenceClassifier, SequenceRegressor, load_model
from biotransformer.lora import LoraSettings, apply_lora, load_adapter, merge_lora, save_adapter

pytest.importorskip("peft")


def tiny_classifier() -> SequenceClassifier:
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", vocab_size=33, pad_id=1)
    return SequenceClassifier(config, num_labels=2, classifier="esm")


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(4, 30, (4, 10), generator=generator)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 6:] = 0
    ids[attention_mask == 0] = 1
    return {
        "input_ids": ids,
        "attention_mask": attention_mask,
        "labels": torch.tensor([0, 1, 1, 0]),
    }


def train(model: torch.nn.Module, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**batch()).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    inputs = batch()
    with torch.no_grad():
        return model(inputs["input_ids"], inputs["attention_mask"]).logits


def test_parse_and_validation():
    settings = LoraSettings.parse("r=8,alpha=16,dropout=0.1,targets=qkv+out")
    assert settings == LoraSettings(r=8, alpha=16.0, dropout=0.1, targets=("qkv", "out"))
    with pytest.raises(ConfigError, match="bad LoRA option 'rank=4'"):
        LoraSettings.parse("rank=4")
    with pytest.raises(ConfigError, match="targets"):
        LoraSettings(targets=("fc1",))


def imported_classifier() -> SequenceClassifier:
    transformers = pytest.importorskip("transformers")
    from biotransformer.interop import from_hf

    torch.manual_seed(0)
    config = transformers.EsmConfig(
        vocab_size=33,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        pad_token_id=1,
        mask_token_id=32,
        token_dropout=True,
        num_labels=2,
    )
    return from_hf(transformers.EsmForSequenceClassification(config))


@pytest.mark.parametrize("build", [tiny_classifier, imported_classifier])
def test_only_adapters_and_head_change(build):
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraSettings(r=4, alpha=8))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or not n.startswith("encoder.") for n in trainable)
    train(model)
    after = model.state_dict()
    for key, value in after.items():
        if "lora_" in key:
            continue
        unchanged = torch.equal(before[key.replace(".base_layer", "")], value)
        assert unchanged == key.startswith("encoder."), key
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in after.items() if "lora_B" in k)


def test_saved_adapter_reloads_to_the_same_outputs_and_merges(tmp_path):
    base = tiny_classifier()
    base.save_pretrained(tmp_path / "base")
    model = apply_lora(load_model(tmp_path / "base"), LoraSettings(r=4, alpha=8))
    train(model)
    expected = logits(model)
    save_adapter(model, tmp_path / "adapter")
    reloaded = load_adapter(load_model(tmp_path / "base"), tmp_path / "adapter")
    assert torch.equal(logits(reloaded), expected)
    merged = merge_lora(reloaded)
    assert (logits(merged) - expected).abs().max() < 1e-5
    assert merged.state_dict().keys() == base.state_dict().keys()
    merged.save_pretrained(tmp_path / "merged")
    assert torch.allclose(logits(load_model(tmp_path / "merged")), expected, atol=1e-5)


def test_tied_decoder_stays_frozen():
    model = MaskedLM(ModelConfig.from_preset("tiny", vocab_size=33))
    apply_lora(model, LoraSettings(r=2, alpha=4, targets=("qkv",)))
    assert not model.encoder.embed_tokens.weight.requires_grad
    assert model.lm_head.dense.weight.requires_grad
    assert not model.lm_head.decoder.weight.requires_grad


def test_adapter_keeps_a_regressors_target_scaling(tmp_path):
    base = SequenceRegressor(ModelConfig.from_preset("tiny", vocab_size=33), num_outputs=1)
    base.save_pretrained(tmp_path / "base")
    model = apply_lora(load_model(tmp_path / "base"), LoraSettings(r=2, alpha=4))
    model.fit_target_scaling(torch.tensor([1.0, 5.0, 9.0]))
    save_adapter(model, tmp_path / "adapter")
    reloaded = load_adapter(load_model(tmp_path / "base"), tmp_path / "adapter")
    assert torch.equal(reloaded.target_mean, model.target_mean)
    assert torch.equal(reloaded.target_std, model.target_std)
