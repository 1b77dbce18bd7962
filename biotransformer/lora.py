"""LoRA adapters through ``peft`` on any of our models, native or imported.

``apply_lora`` wraps the encoder's linear layers (the fused ``qkv``, the attention output
and the feed-forward ``up``/``down`` by default) with low-rank adapters and freezes every
encoder weight, so only the adapters and the task head train. ``save_adapter`` writes those
weights alone; ``load_adapter`` puts them back on a model built from the same base;
``merge_lora`` folds the adapters into plain linear layers for saving or export.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from biotransformer.atomic import atomic_directory, json_text, safetensors_os_errors
from biotransformer.errors import ConfigError, ModelDirectoryError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE)
TARGETS = ("qkv", "out", "up", "down")


@dataclass
class LoraSettings:
    """Rank ``r``, scale ``alpha`` (the update is ``alpha / r * B A``), dropout on the
    adapter input, and which block linears (of ``qkv``, ``out``, ``up``, ``down``) get one."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.r < 1:
            raise ConfigError(f"LoRA r = {self.r} must be >= 1")
        if self.alpha <= 0:
            raise ConfigError(f"LoRA alpha = {self.alpha} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout = {self.dropout} must be in [0, 1)")
        if not self.targets or set(self.targets) - set(TARGETS):
            raise ConfigError(f"LoRA targets {list(self.targets)} must be a subset of {TARGETS}")

    @classmethod
    def parse(cls, text: str) -> LoraSettings:
        """From ``r=8,alpha=16[,dropout=0.05][,targets=qkv+out]`` (the ``--lora`` flag)."""
        values: dict[str, object] = {}
        casts = {"r": int, "alpha": float, "dropout": float}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in (*casts, "targets"):
                raise ConfigError(
                    f"bad LoRA option {item!r} in {text!r}; options: r=, alpha=, dropout=, "
                    "targets= (e.g. qkv+out)"
                )
            try:
                values[key] = tuple(value.split("+")) if key == "targets" else casts[key](value)
            except ValueError:
                raise ConfigError(f"bad value for LoRA {key} in {text!r}") from None
        return cls(**values)  # type: ignore[arg-type]


def _require_peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError('LoRA needs peft: pip install "biotransformer[hf]"') from None
    return peft


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Add adapters to ``model.encoder`` in place; freeze the encoder, keep the head
    trainable (a decoder tied to the embedding stays frozen). Logs the trainable count."""
    peft = _require_peft()
    pattern = rf"encoder\.layers\.\d+\.(attn|ffn)\.({'|'.join(settings.targets)})"
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=pattern,
    )
    peft.inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = "lora_" in name or not name.startswith("encoder.")
    model.lora_settings = settings
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "LoRA r=%d alpha=%g on %s: %d of %d parameters trainable (%.2f%%)",
        settings.r,
        settings.alpha,
        "+".join(settings.targets),
        trainable,
        total,
        100 * trainable / total,
    )
    return model


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter and head weights, with the head's saved buffers (a regressor's target
    scaling): what LoRA training changes."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    names |= {name for name, _ in model.named_buffers() if not name.startswith("encoder.")}
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in names}


def save_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write the LoRA settings and the adapter and head weights to ``directory``."""
    settings = getattr(model, "lora_settings", None)
    if settings is None:
        raise ConfigError("this model has no LoRA adapters: call apply_lora first")
    with atomic_directory(directory, replaces=ADAPTER_FILES) as staging:
        (staging / ADAPTER_CONFIG_FILE).write_text(json_text(asdict(settings)))
        with safetensors_os_errors(staging / ADAPTER_WEIGHTS_FILE):
            save_file(trainable_state_dict(model), staging / ADAPTER_WEIGHTS_FILE)
    return Path(directory)


def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Add the adapters saved in ``directory`` to ``model`` (the same base) and load them
    with the head weights saved beside them."""
    directory = Path(directory)
    config_path = directory / ADAPTER_CONFIG_FILE
    if not config_path.is_file():
        raise ModelDirectoryError(f"{config_path}: not found. Fix: pass a save_adapter directory")
    settings = LoraSettings(**json.loads(config_path.read_text()))
    return load_adapter_weights(apply_lora(model, settings), directory)


def load_adapter_weights(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Load the adapter and head weights saved in ``directory`` into ``model``, which has
    the same adapters already (e.g. to go back to an earlier ``save_adapter``)."""
    directory = Path(directory)
    state = load_file(directory / ADAPTER_WEIGHTS_FILE)
    expected = set(trainable_state_dict(model))
    if set(state) != expected:
        raise ModelDirectoryError(
            f"{directory}: adapter weights do not fit this model: missing "
            f"{sorted(expected - set(state))[:4]}, unexpected {sorted(set(state) - expected)[:4]}"
        )
    model.load_state_dict(state, strict=False)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its linear layer and drop the LoRA wrappers, in place; the
    encoder is trainable again afterwards."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    for parameter in model.parameters():
        parameter.requires_grad = True
    if hasattr(model, "lora_settings"):
        del model.lora_settings
    return model
