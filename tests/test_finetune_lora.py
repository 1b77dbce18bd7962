"""Fine-tuning a converted HuggingFace ESM checkpoint through the command line, with and
without LoRA: only adapters and head train, the saved adapter reloads to the same outputs, and
model/ is an ordinary model directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from biotransformer import interop
from biotransformer.cli import main
from biotransformer.heads import load_model
from biotransformer.lora import load_adapter
from biotransformer.tokenizers import ESM2_TOKENS

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

pytestmark = pytest.mark.timeout(120)
AMINO_ACIDS = list("ACDEFGHIKLMNPQRSTVWY")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A random tiny ESM-2 masked LM saved as HuggingFace does, and 60 labelled proteins."""
    tmp = tmp_path_factory.mktemp("hf_finetune")
    torch.manual_seed(0)
    config = transformers.EsmConfig(
        vocab_size=len(ESM2_TOKENS),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        position_embedding_type="rotary",
        pad_token_id=ESM2_TOKENS.index("<pad>"),
        mask_token_id=ESM2_TOKENS.index("<mask>"),
        token_dropout=True,
    )
    transformers.EsmForMaskedLM(config).save_pretrained(tmp / "hf")
    (tmp / "hf" / "vocab.txt").write_text("\n".join(ESM2_TOKENS) + "\n")
    rng = np.random.default_rng(0)
    rows = ["sequence,label"]
    for _ in range(60):
        sequence = "".join(rng.choice(AMINO_ACIDS, rng.integers(20, 40)))
        rows.append(f"{sequence},{int(sequence.count('K') + sequence.count('R') > 3)}")
    (tmp / "train.csv").write_text("\n".join(rows) + "\n")
    return tmp


def finetune(inputs, out, *extra: str) -> dict:
    command = ["finetune", "--train", str(inputs / "train.csv"), "--task", "classification",
               "--model", f"hf:{inputs / 'hf'}", "--out", str(out), "--epochs", "1",
               "--max-tokens", "300", "--lr", "1e-2", "--bootstrap", "10", *extra,
               "plots=false"]  # fmt: skip
    assert main(command) == 0
    assert (out / "metrics.json").is_file()
    assert (out / "imported" / "config.json").is_file()
    return json.loads((out / "run.json").read_text())


def logits(model, inputs) -> torch.Tensor:
    sequences = [line.split(",")[0] for line in (inputs / "train.csv").read_text().split()[1:]]
    batch = model.tokenizer.encode_batch(sequences[:8])
    with torch.no_grad():
        return model(
            torch.as_tensor(batch["input_ids"]), torch.as_tensor(batch["attention_mask"])
        ).logits


def test_full_finetune_of_a_converted_checkpoint(inputs, tmp_path):
    run = finetune(inputs, tmp_path / "run")
    assert run["parameters"]["trainable"] == run["parameters"]["total"]
    assert not (tmp_path / "run" / "adapter").exists()
    base = load_model(tmp_path / "run" / "imported").state_dict()
    tuned = load_model(tmp_path / "run" / "model").state_dict()
    key = "encoder.layers.0.attn.qkv.weight"
    assert not torch.equal(base[key], tuned[key])


def test_lora_trains_adapters_and_head_only_and_the_adapter_reloads(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    run = finetune(inputs, out, "--lora", "r=4,alpha=8", "evals_per_epoch=3")
    trainable, total = run["parameters"]["trainable"], run["parameters"]["total"]
    assert 0 < trainable < total / 2
    assert f"parameters: {trainable:,} of {total:,} trainable" in capsys.readouterr().out

    adapter = load_file(out / "adapter" / "adapter.safetensors")
    assert all("lora_" in key or not key.startswith("encoder.") for key in adapter)
    assert "classifier.weight" in adapter
    assert any(value.abs().sum() > 0 for key, value in adapter.items() if "lora_B" in key)

    # model/ is ordinary: the imported encoder with each adapter folded into its linear
    base = load_model(out / "imported").state_dict()
    merged = load_model(out / "model")
    scale = 8 / 4
    for key, value in merged.state_dict().items():
        if not key.startswith("encoder."):
            continue
        module = key.removesuffix(".weight")
        if f"{module}.lora_A.default.weight" in adapter:
            lora_a, lora_b = (adapter[f"{module}.lora_{x}.default.weight"] for x in "AB")
            assert torch.allclose(value, base[key] + scale * lora_b @ lora_a, atol=1e-6), key
        else:
            assert torch.equal(value, base[key]), key

    # the adapter on the imported base reproduces the fine-tuned model
    saved = json.loads((out / "model" / "config.json").read_text())
    base_model = load_model(out / "imported", saved["model_type"], **saved["head"])
    reloaded = load_adapter(base_model, out / "adapter")
    assert (logits(reloaded, inputs) - logits(merged, inputs)).abs().max() < 1e-5

    predictions = tmp_path / "p.tsv"
    assert main(["predict", "--model", str(out / "model"), "--input",
                 str(inputs / "train.csv"), "--out", str(predictions)]) == 0  # fmt: skip
    assert len(predictions.read_text().splitlines()) == 61
    interop.to_hf(load_model(out / "model", "MaskedLM"), tmp_path / "hf_export")
    assert (tmp_path / "hf_export" / "config.json").is_file()


def test_lora_on_a_native_model_directory(inputs, tmp_path):
    native = tmp_path / "native"
    interop.from_hf(inputs / "hf").save_pretrained(native)
    out = tmp_path / "run"
    command = ["finetune", "--train", str(inputs / "train.csv"), "--model", str(native),
               "--lora", "r=2,alpha=2,targets=qkv", "--out", str(out), "--bootstrap", "10",
               "max_steps=3", "plots=false"]  # fmt: skip
    assert main(command) == 0
    assert not (out / "imported").exists()
    assert json.loads((out / "run.json").read_text())["base_model"] == str(native)
    adapter = load_file(out / "adapter" / "adapter.safetensors")
    assert {key.split(".")[4] for key in adapter if "lora_" in key} == {"qkv"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lora", "rank=4"], "bad LoRA option 'rank=4'"),
        (["--lora", "r=4", "--freeze-encoder"], "--lora or --freeze-encoder"),
    ],
)
def test_bad_lora_flags_are_config_errors(inputs, tmp_path, capsys, extra, message):
    command = ["finetune", "--train", str(inputs / "train.csv"), "--out", str(tmp_path),
               "--preset", "tiny", *extra]  # fmt: skip
    assert main(command) == 2
    assert message in capsys.readouterr().err
