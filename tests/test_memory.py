"""The pre-flight memory estimate, and a budget refused under a real address-space limit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from biotransformer.config import ModelConfig
from biotransformer.errors import ConfigError
from biotransformer.memory import GIB, estimate_memory, preflight


def small_config(**overrides) -> ModelConfig:
    values = dict(hidden_size=8, num_layers=2, num_heads=2, ffn_size=16, max_length=64)
    return ModelConfig(vocab_size=10, **{**values, **overrides})


def test_estimate_follows_the_documented_formula() -> None:
    config = small_config()
    estimate = estimate_memory(config, tokens_per_batch=100, max_length=50)
    per_token_layer = (10 * 8 + 2 * 16 + 2 * 2 * 50) * 4
    assert estimate.activations == 2 * 100 * per_token_layer
    assert estimate.logits == 100 * 10 * 4 * 2
    checkpointed = estimate_memory(config, 100, 50, gradient_checkpointing=True)
    assert checkpointed.activations == 2 * 100 * 8 * 4 + 100 * per_token_layer
    inference = estimate_memory(config, 100, 50, training=False)
    assert inference.activations == 100 * per_token_layer
    assert inference.parameters * 4 == estimate.parameters
    assert estimate_memory(config, 200, 50).activations == 2 * estimate.activations


def test_a_small_budget_passes_and_an_absurd_one_is_refused_with_advice() -> None:
    config = ModelConfig.from_preset("dna-t6-8M", vocab_size=16)
    assert preflight(small_config(), 512, 64).total < GIB
    with pytest.raises(ConfigError) as refused:
        preflight(config, 2**30, 1024)
    message = str(refused.value)
    assert "--max-tokens to" in message and "gradient_checkpointing=true" in message


def test_fsdp_shards_the_model_state_but_keeps_two_layers_whole() -> None:
    from biotransformer.memory import layer_parameter_count, parameter_count

    config = small_config(num_layers=6)
    whole = estimate_memory(config, 100, 50)
    sharded = estimate_memory(config, 100, 50, shards=4)
    count, layer = parameter_count(config), layer_parameter_count(config)
    gathered = count - 6 * layer + 2 * layer  # embeddings and two layers, gathered
    assert sharded.parameters == -(-16 * count // 4) + 8 * gathered
    assert sharded.activations == whole.activations and sharded.logits == whole.logits
    assert sharded.parameters < whole.parameters


def test_a_model_whose_state_cannot_fit_is_refused_with_fsdp_advice() -> None:
    """About 2.4e11 parameters: 3.9 TB of weights, gradients and AdamW moments in float32."""
    config = ModelConfig(
        vocab_size=33, hidden_size=20480, num_layers=48, num_heads=64, ffn_size=81920
    )
    with pytest.raises(ConfigError) as refused:
        preflight(config, 1024, 1024)
    message = str(refused.value)
    assert "the model state alone" in message and "FSDP over more processes" in message
    with pytest.raises(ConfigError) as sharded:
        preflight(config, 1024, 1024, shards=8)
    assert "model state sharded over 8 processes" in str(sharded.value)


SCRIPT = """
import resource, sys
from pathlib import Path
from biotransformer.cli import main
from biotransformer.memory import GIB, available_memory

mapped = next(
    int(line.split()[1]) * 1024
    for line in Path("/proc/self/status").read_text().splitlines()
    if line.startswith("VmSize:")
)
limit = mapped + 2 * GIB
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
room, source = available_memory()
assert room <= 2 * GIB and "address-space" in source, (room, source)
fasta = Path(sys.argv[1])
fasta.write_text("".join(f">s{i} label={i % 2}\\n{'ACGT' * 60}{i:b}\\n".replace("0", "A")
                         .replace("1", "C") for i in range(64)))
sys.exit(main([
    "finetune", "--train", str(fasta), "--label-from", "key:label", "--out", sys.argv[2],
    "--preset", "dna-t6-8M", "--tokenizer", "dna", "--max-tokens", "65536", "--epochs", "1",
]))
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_budget_too_large_for_rlimit_as_is_refused_not_killed(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(SCRIPT),
            str(tmp_path / "x.fa"),
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=110,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "address-space limit" in result.stderr
    assert "Fix: lower --max-tokens to" in result.stderr
    assert "gradient_checkpointing=true" in result.stderr
