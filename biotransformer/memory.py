"""Pre-flight memory check: refuse a token budget that cannot fit before training starts.

An out-of-memory kill cannot be caught, and on a CPU machine it may come after minutes of
data preparation; so ``pretrain`` and ``finetune`` estimate the memory of one training step
first and stop with advice when it exceeds what the process may use.

The estimate (bytes, for ``N`` padded tokens per micro-batch of sequences of ``T`` tokens,
hidden size ``h``, feed-forward size ``f``, ``H`` heads, ``L`` layers, ``d`` bytes per value):

- activations kept for the backward pass, per layer and token: ``(10 h + 2 f) d`` for the
  norms, projections, residuals and feed-forward (``3 f`` instead of ``2 f`` for SwiGLU),
  plus ``2 H T d`` for the attention scores and probabilities (the unfused attention path;
  fused kernels need less, so the estimate errs on the safe side);
- with gradient checkpointing only each layer's input (``h d`` per token) is kept, plus one
  layer recomputed at a time; without training (inference) one layer at a time;
- the output logits and their gradient: ``2 V d`` per token (``V`` the vocabulary);
- weights, gradients and the two AdamW moments in float32: ``16`` bytes per parameter
  (``4`` without training); with FSDP over ``S`` processes (``shards``) ``16 / S`` bytes per
  parameter, plus the weights and gradients (``8`` bytes per parameter) that are whole while a
  step runs: two layers (the one computed, the one prefetched) and the parameters outside the
  layers (embeddings, head), which the outermost FSDP unit keeps gathered.

It is an order-of-magnitude guard, not a profiler: a budget is refused only when the estimate
exceeds the memory available (``MemAvailable``, the address-space limit ``RLIMIT_AS`` less
what the process already maps, or the free memory of the CUDA device).
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass
from pathlib import Path

from biotransformer.config import ModelConfig
from biotransformer.errors import ConfigError

GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training (or inference) step needs, by part."""

    activations: int
    logits: int
    parameters: int

    @property
    def total(self) -> int:
        return self.activations + self.logits + self.parameters


def parameter_count(config: ModelConfig) -> int:
    """Weights of the encoder (embeddings, attention, feed-forward, norms), roughly."""
    outside_layers = (config.vocab_size + config.max_length) * config.hidden_size
    return outside_layers + config.num_layers * layer_parameter_count(config)


def layer_parameter_count(config: ModelConfig) -> int:
    """Weights of one encoder layer (attention, feed-forward, norms)."""
    h, f = config.hidden_size, config.ffn_size
    ffn_weights = (3 if config.activation == "swiglu" else 2) * h * f
    return 4 * h * h + ffn_weights + 6 * h + f


def estimate_memory(
    config: ModelConfig,
    tokens_per_batch: int,
    max_length: int,
    *,
    training: bool = True,
    dtype_bytes: int = 4,
    gradient_checkpointing: bool | None = None,
    shards: int = 1,
) -> MemoryEstimate:
    """The memory of one process's step on ``tokens_per_batch`` padded tokens of
    ``max_length``-token sequences, its model state sharded over ``shards`` processes (FSDP;
    1: not sharded). The formula is in the module docstring."""
    if gradient_checkpointing is None:
        gradient_checkpointing = config.gradient_checkpointing
    h, f = config.hidden_size, config.ffn_size
    feed_forward = (3 if config.activation == "swiglu" else 2) * f
    per_token_layer = (10 * h + feed_forward + 2 * config.num_heads * max_length) * dtype_bytes
    layer = tokens_per_batch * per_token_layer
    if not training:
        activations = layer
    elif gradient_checkpointing:
        activations = config.num_layers * tokens_per_batch * h * dtype_bytes + layer
    else:
        activations = config.num_layers * layer
    logits = tokens_per_batch * config.vocab_size * dtype_bytes * (2 if training else 1)
    count = parameter_count(config)
    parameters = count * (16 if training else 4)
    if shards > 1:
        layers = min(2, config.num_layers) * layer_parameter_count(config)
        whole = count - config.num_layers * layer_parameter_count(config) + layers
        parameters = -(-parameters // shards) + whole * (8 if training else 4)
    return MemoryEstimate(activations, logits, parameters)


def available_memory(device: str = "cpu") -> tuple[int, str] | None:
    """Bytes this process can still allocate and where the figure comes from, or None."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free, f"free memory of {device}"
    limits: list[tuple[int, str]] = []
    meminfo = _proc_value(Path("/proc/meminfo"), "MemAvailable:")
    if meminfo is not None:
        limits.append((meminfo, "MemAvailable"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        mapped = _proc_value(Path("/proc/self/status"), "VmSize:") or 0
        limits.append((max(soft - mapped, 0), "the address-space limit (ulimit -v)"))
    return min(limits) if limits else None


def _proc_value(path: Path, key: str) -> int | None:
    """A ``kB`` value of a /proc file, in bytes."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return None


def preflight(
    config: ModelConfig,
    tokens_per_batch: int,
    max_length: int,
    *,
    device: str = "cpu",
    budget_option: str = "--max-tokens",
    shards: int = 1,
) -> MemoryEstimate:
    """Raise ``ConfigError`` when one training step of ``tokens_per_batch`` tokens cannot fit
    (model state sharded over ``shards`` FSDP processes); the message suggests the largest
    budget that would, gradient checkpointing and, when the model state alone does not fit,
    FSDP over more processes."""
    estimate = estimate_memory(config, tokens_per_batch, max_length, shards=shards)
    available = available_memory(device)
    if available is None or estimate.total <= available[0]:
        return estimate
    room, source = available

    def total(tokens: int, **options: bool) -> int:
        return estimate_memory(config, tokens, max_length, shards=shards, **options).total

    fitting = tokens_per_batch
    while fitting > max_length and total(fitting) > room:
        fitting = max(fitting // 2, max_length)
    checkpointed = total(tokens_per_batch, gradient_checkpointing=True)
    if estimate.parameters >= room:
        advice = [
            f"the model state alone ({estimate.parameters / GIB:.1f} GiB) does not fit: shard "
            "it with FSDP over more processes (docs/scaling.md)"
        ]
    elif total(fitting) <= room:
        advice = [f"lower {budget_option} to {fitting}"]
    else:
        advice = [f"crop sequences to fewer than {max_length} tokens (a smaller max_length)"]
    if not config.gradient_checkpointing and checkpointed < estimate.total:
        advice.append(
            f"set model.gradient_checkpointing=true (about {checkpointed / GIB:.1f} GiB at this "
            "budget)"
        )
    advice.append("or use a machine or device with more memory")
    sharding = f", model state sharded over {shards} processes" if shards > 1 else ""
    raise ConfigError(
        f"a training step of {tokens_per_batch} tokens ({max_length}-token sequences"
        f"{sharding}) needs about {estimate.total / GIB:.1f} GiB "
        f"({estimate.activations / GIB:.1f} GiB of activations, "
        f"{estimate.parameters / GIB:.1f} GiB of weights, gradients and optimizer state), but "
        f"only {room / GIB:.1f} GiB is available ({source}); it would be killed for lack of "
        f"memory. Fix: {', '.join(advice)}"
    )
