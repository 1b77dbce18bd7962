"""``ModelConfig``: the architecture of a Transformer encoder, validated, with named presets.

Presets describe an architecture only; the vocabulary size comes from the tokenizer::

    config = ModelConfig.from_preset("protein-t6-8M", vocab_size=tokenizer.vocab_size)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from biotransformer.config.fields import check_field_types, did_you_mean
from biotransformer.errors import ConfigError

POSITIONS = ("sinusoidal", "learned", "rotary", "alibi")
NORMS = ("pre", "post")
ACTIVATIONS = ("gelu", "swiglu")


@dataclass
class ModelConfig:
    """Architecture of a Transformer encoder.

    ``max_length`` is the longest sequence (in tokens, special tokens included) the model
    accepts; it sizes the position table for ``learned`` and ``sinusoidal`` encodings.
    ``ffn_size`` is the feed-forward hidden width (the width of each gate for ``swiglu``).
    ``pad_id`` is the padding token, whose embedding is kept at zero.

    Options that reproduce ESM-2 and Nucleotide Transformer checkpoints exactly (see
    docs/models.md): ``token_dropout`` zeroes the embeddings of ``mask_id`` tokens and rescales
    the others by ``(1 - token_dropout_ratio) / (1 - observed mask ratio)``;
    ``embedding_layer_norm`` normalises the embeddings before the first block;
    ``position_offset`` shifts ``learned`` positions so that token ``t`` reads row
    ``position_offset + t`` (ESM: ``pad_id + 1``).

    Options that reproduce ESM C: ``qk_norm`` normalises queries and keys (a LayerNorm without
    bias over all heads) before rotary positions; ``residual_scale`` divides each sublayer's
    output before the residual sum (ESM C: sqrt(num_layers / 36)); ``final_norm_bias = False``
    drops the bias of the final LayerNorm. With ``activation = "swiglu"`` and ``bias = False``
    they make ESM C's block.
    """

    vocab_size: int
    hidden_size: int = 320
    num_layers: int = 6
    num_heads: int = 20
    ffn_size: int = 1280
    dropout: float = 0.0
    attention_dropout: float = 0.0
    max_length: int = 1024
    position: str = "rotary"
    norm: str = "pre"
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    pad_id: int | None = 0
    bias: bool = True
    rotary_base: float = 10000.0
    initializer_range: float = 0.02
    gradient_checkpointing: bool = False
    mask_id: int | None = None
    token_dropout: bool = False
    token_dropout_ratio: float = 0.12
    embedding_layer_norm: bool = False
    position_offset: int = 0
    qk_norm: bool = False
    residual_scale: float = 1.0
    final_norm_bias: bool = True

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad field."""
        check_field_types(self, "ModelConfig.")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ModelConfig.{name} = {getattr(self, name)} must be >= 1")
        if self.max_length < 1:
            raise ConfigError(f"ModelConfig.max_length = {self.max_length} must be >= 1")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"ModelConfig.{name} = {getattr(self, name)} must be in [0, 1)")
        for name, choices in (
            ("position", POSITIONS),
            ("norm", NORMS),
            ("activation", ACTIVATIONS),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"ModelConfig.{name} = {getattr(self, name)!r} is not one of {list(choices)}"
                )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"ModelConfig.hidden_size = {self.hidden_size} is not divisible by "
                f"num_heads = {self.num_heads}"
            )
        if self.position == "rotary" and self.head_size % 2:
            raise ConfigError(
                f"ModelConfig.position = 'rotary' needs an even head size, but hidden_size / "
                f"num_heads = {self.head_size}"
            )
        if self.position == "sinusoidal" and self.hidden_size % 2:
            raise ConfigError(
                f"ModelConfig.hidden_size = {self.hidden_size} must be even for sinusoidal "
                "positions"
            )
        if self.pad_id is not None and not 0 <= self.pad_id < self.vocab_size:
            raise ConfigError(
                f"ModelConfig.pad_id = {self.pad_id} is outside the vocabulary "
                f"(vocab_size = {self.vocab_size})"
            )
        for name in ("layer_norm_eps", "rotary_base", "initializer_range", "residual_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ModelConfig.{name} = {getattr(self, name)} must be > 0")
        if self.mask_id is not None and not 0 <= self.mask_id < self.vocab_size:
            raise ConfigError(
                f"ModelConfig.mask_id = {self.mask_id} is outside the vocabulary "
                f"(vocab_size = {self.vocab_size})"
            )
        if self.token_dropout and self.mask_id is None:
            raise ConfigError("ModelConfig.token_dropout = True needs mask_id, the <mask> token id")
        if not 0.0 <= self.token_dropout_ratio < 1.0:
            raise ConfigError(
                f"ModelConfig.token_dropout_ratio = {self.token_dropout_ratio} must be in [0, 1)"
            )
        if self.position_offset < 0:
            raise ConfigError(f"ModelConfig.position_offset = {self.position_offset} must be >= 0")
        if self.position_offset and self.position != "learned":
            raise ConfigError(
                f"ModelConfig.position_offset = {self.position_offset} applies to learned "
                f"positions only, not position = {self.position!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a dict; an unknown key is an error that suggests the closest field."""
        known = [field.name for field in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown ModelConfig key {key!r}{did_you_mean(key, known)}")
        if "vocab_size" not in values:
            raise ConfigError(
                "ModelConfig.vocab_size is required: pass vocab_size=tokenizer.vocab_size"
            )
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named architecture, e.g. ``from_preset("protein-t6-8M", vocab_size=33)``."""
        if name not in PRESETS:
            raise ConfigError(
                f"unknown model preset {name!r}{did_you_mean(name, list(PRESETS))}; "
                f"presets: {', '.join(PRESETS)}"
            )
        return cls.from_dict({**PRESETS[name], **overrides})


def _esm2_like(layers: int, width: int, heads: int, max_length: int) -> dict[str, Any]:
    return {
        "hidden_size": width,
        "num_layers": layers,
        "num_heads": heads,
        "ffn_size": 4 * width,
        "max_length": max_length,
        "position": "rotary",
    }


# Parameter counts in the names assume a ~33-token vocabulary (ESM-2's sizes); a DNA k-mer
# vocabulary adds vocab_size x hidden_size.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 16,
        "num_layers": 2,
        "num_heads": 2,
        "ffn_size": 32,
        "max_length": 64,
        "position": "rotary",
    },
    # A new encoder fine-tuned from scratch on a labelled set (finetune_defaults.NEW_PRESET).
    "small": {
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "ffn_size": 256,
        "max_length": 1024,
        "position": "rotary",
        "dropout": 0.1,
    },
    "dna-t6-8M": _esm2_like(6, 320, 20, 1024),
    "dna-t12-35M": _esm2_like(12, 480, 20, 1024),
    "dna-t30-150M": _esm2_like(30, 640, 20, 1024),
    "protein-t6-8M": _esm2_like(6, 320, 20, 1026),
    "protein-t12-35M": _esm2_like(12, 480, 20, 1026),
    "protein-t30-150M": _esm2_like(30, 640, 20, 1026),
    "protein-t33-650M": _esm2_like(33, 1280, 20, 1026),
}
