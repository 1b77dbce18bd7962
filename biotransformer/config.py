"""Model configuration: one typed dataclass, validated, with named presets and a JSON form.

Presets describe an architecture only; the vocabulary size comes from the tokenizer::

    config = ModelConfig.from_preset("protein-t6-8M", vocab_size=tokenizer.vocab_size)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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
        for name in ("layer_norm_eps", "rotary_base", "initializer_range"):
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
                raise ConfigError(f"unknown ModelConfig key {key!r}{_did_you_mean(key, known)}")
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
                f"unknown model preset {name!r}{_did_you_mean(name, list(PRESETS))}; "
                f"presets: {', '.join(PRESETS)}"
            )
        return cls.from_dict({**PRESETS[name], **overrides})


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


SCALAR_TYPES = ("None", "bool", "int", "float", "str")


def _matches_annotation(value: Any, annotation: str) -> bool:
    """Whether a value fits a scalar annotation string (``int``, ``float | None``, ``str``...).

    ``bool`` is not an ``int`` here, and an ``int`` is a ``float``. An annotation that is not
    a union of scalars (a nested dataclass, a dict) is not checked here.
    """
    allowed = [part.strip() for part in annotation.split("|")]
    if not all(part in SCALAR_TYPES for part in allowed):
        return True
    checks = {
        "None": value is None,
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }
    return any(checks[part] for part in allowed)


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
    "dna-t6-8M": _esm2_like(6, 320, 20, 1024),
    "dna-t12-35M": _esm2_like(12, 480, 20, 1024),
    "dna-t30-150M": _esm2_like(30, 640, 20, 1024),
    "protein-t6-8M": _esm2_like(6, 320, 20, 1026),
    "protein-t12-35M": _esm2_like(12, 480, 20, 1026),
    "protein-t30-150M": _esm2_like(30, 640, 20, 1026),
    "protein-t33-650M": _esm2_like(33, 1280, 20, 1026),
}


# Run configuration: the YAML files in recipes/configs map 1:1 onto these dataclasses.

SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class DataConfig:
    """Where the pretraining data comes from and how it is batched and masked.

    Either ``train_files`` (FASTA inputs, prepared into ``<output_dir>/data`` on first use) or
    ``shard_dir`` (shards written earlier by ``biotransformer prepare``) names the corpus.
    ``tokenizer`` is a spec (``dna``, ``dna-kmer:k=6``, ``dna-bpe:vocab=4096``, ``protein``);
    with ``shard_dir`` it may be null (the shards' own tokenizer is used). Long records are cut
    into windows of ``window_tokens`` tokens, ``stride`` tokens apart (default: no overlap).
    ``max_length`` crops sequences (special tokens included); ``max_tokens`` is the padded
    token budget of one micro-batch on one process. ``span_length`` null means the masking
    default: spans of ``2k - 1`` for overlapping k-mers, single tokens otherwise.
    """

    train_files: list[str] = dataclasses.field(default_factory=list)
    shard_dir: str | None = None
    tokenizer: str | None = "dna"
    window_tokens: int = 1022
    stride: int | None = None
    valid_fraction: float = 0.01
    max_length: int = 1024
    max_tokens: int = 16384
    mask_rate: float = 0.15
    mask_token_rate: float = 0.8
    random_token_rate: float = 0.1
    span_length: int | None = None
    num_workers: int = 0
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad field."""
        check_field_types(self, "data.")
        if not self.train_files and self.shard_dir is None:
            raise ConfigError("data.train_files or data.shard_dir must name the training data")
        if self.train_files and self.shard_dir is not None:
            raise ConfigError("set only one of data.train_files and data.shard_dir")
        if self.tokenizer is None and self.shard_dir is None:
            raise ConfigError("data.tokenizer may be null only with data.shard_dir")
        for name in ("max_tokens", "max_length", "window_tokens"):
            _require(getattr(self, name) >= 1, f"data.{name}", getattr(self, name), ">= 1")
        for name in ("stride", "span_length"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"data.{name}", value, ">= 1 (or null)")
        for name in ("num_workers", "seed"):
            _require(getattr(self, name) >= 0, f"data.{name}", getattr(self, name), ">= 0")
        _require(
            0.0 <= self.valid_fraction < 1.0,
            "data.valid_fraction",
            self.valid_fraction,
            "in [0, 1)",
        )
        _require(0.0 < self.mask_rate < 1.0, "data.mask_rate", self.mask_rate, "in (0, 1)")
        _require(
            self.mask_token_rate >= 0
            and self.random_token_rate >= 0
            and self.mask_token_rate + self.random_token_rate <= 1.0,
            "data.mask_token_rate + data.random_token_rate",
            self.mask_token_rate + self.random_token_rate,
            "in [0, 1]",
        )
        if self.max_length > self.max_tokens:
            raise ConfigError(
                f"data.max_length = {self.max_length} exceeds data.max_tokens = "
                f"{self.max_tokens}: a batch must hold at least one sequence"
            )


@dataclass
class TrainingConfig:
    """Optimisation, checkpointing and logging of one training run.

    ``max_steps`` counts optimizer steps; one step takes ``gradient_accumulation_steps``
    micro-batches on every process. ``save_every``, ``eval_every`` and ``log_every`` are in
    optimizer steps (0 turns eval or saving off; the last step is always evaluated and saved).
    ``compile`` compiles the model's forward in place with ``torch.compile`` (inductor): the
    same results and checkpoints after a first minute of compiling; on the 2-core CPU of
    ``benchmarks/train_throughput.py`` its speed was within -4% to +6% of eager, the noise
    between rounds, because GEMMs and attention kernels dominate there.
    """

    output_dir: str = "runs/pretrain"
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    max_steps: int = 1000
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    compile: bool = False
    save_every: int = 500
    keep_last: int = 2
    eval_every: int = 200
    log_every: int = 10
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad field."""
        check_field_types(self, "training.")
        _require(self.lr > 0, "training.lr", self.lr, "> 0")
        _require(self.weight_decay >= 0, "training.weight_decay", self.weight_decay, ">= 0")
        _require(self.eps > 0, "training.eps", self.eps, "> 0")
        _require(
            len(self.betas) == 2 and all(0.0 <= beta < 1.0 for beta in self.betas),
            "training.betas",
            self.betas,
            "two numbers in [0, 1)",
        )
        for name in ("max_steps", "gradient_accumulation_steps", "log_every", "keep_last"):
            _require(getattr(self, name) >= 1, f"training.{name}", getattr(self, name), ">= 1")
        for name in ("warmup_steps", "save_every", "eval_every", "seed"):
            _require(getattr(self, name) >= 0, f"training.{name}", getattr(self, name), ">= 0")
        _require(
            0.0 <= self.min_lr_ratio <= 1.0, "training.min_lr_ratio", self.min_lr_ratio, "in [0, 1]"
        )
        if self.max_grad_norm is not None:
            _require(
                self.max_grad_norm > 0,
                "training.max_grad_norm",
                self.max_grad_norm,
                "> 0 (or null for no clipping)",
            )
        for name, choices in (("schedule", SCHEDULES), ("mixed_precision", MIXED_PRECISIONS)):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"training.{name} = {getattr(self, name)!r} is not one of {list(choices)}"
                )


@dataclass
class RunConfig:
    """A whole run: ``model`` (a preset name and/or ModelConfig fields), ``data``, ``training``.

    ``model`` stays a mapping until the tokenizer is known, because the vocabulary size and
    the padding id come from the tokenizer: see ``model_config``.
    """

    model: dict[str, Any]
    data: DataConfig
    training: TrainingConfig

    def model_config(self, *, vocab_size: int, pad_id: int | None) -> ModelConfig:
        """The ModelConfig of this run for a tokenizer with this vocabulary and padding id."""
        fields = {key: value for key, value in self.model.items() if key != "preset"}
        fields.update(vocab_size=vocab_size, pad_id=pad_id)
        preset = self.model.get("preset")
        if preset is None:
            return ModelConfig.from_dict(fields)
        return ModelConfig.from_preset(preset, **fields)

    def to_dict(self) -> dict[str, Any]:
        """A YAML-ready dict that ``run_config_from_dict`` turns back into an equal config."""
        return {
            "model": dict(self.model),
            "data": dataclasses.asdict(self.data),
            "training": dataclasses.asdict(self.training),
        }


RUN_SECTIONS: dict[str, type] = {"data": DataConfig, "training": TrainingConfig}
_PLACEHOLDER_VOCAB = 4096


def run_config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig; unknown keys are errors naming the closest valid key."""
    if not isinstance(values, dict):
        raise ConfigError(f"a run config is a mapping of sections, not {type(values).__name__}")
    sections = ["model", *RUN_SECTIONS]
    for key in values:
        if key not in sections:
            raise ConfigError(f"unknown config section {key!r}{_suggest(key, sections)}")
    model = _model_section(values.get("model") or {})
    data = _section_from_dict(DataConfig, "data", values.get("data") or {})
    training = _section_from_dict(TrainingConfig, "training", values.get("training") or {})
    config = RunConfig(model=model, data=data, training=training)
    try:
        model_length = config.model_config(vocab_size=_PLACEHOLDER_VOCAB, pad_id=0).max_length
    except ConfigError as error:  # a run config's ModelConfig fields are its model.KEY keys
        raise ConfigError(str(error).replace("ModelConfig.", "model.")) from None
    if data.max_length > model_length:
        raise ConfigError(
            f"data.max_length = {data.max_length} exceeds the model's max_length = "
            f"{model_length}. Fix: lower data.max_length or set model.max_length"
        )
    return config


def load_run_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config and apply ``section.key=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text. Fix: give a YAML run config") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    for override in overrides:
        _apply_override(values, override)
    return run_config_from_dict(values)


def _apply_override(values: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"override {override!r} is not of the form section.key=value (e.g. training.lr=3e-4)"
        )
    section, name = parts
    if not isinstance(values.setdefault(section, {}), dict):
        values[section] = {}
    values[section][name] = parse_override_value(override, raw)


def parse_override_value(override: str, raw: str) -> Any:
    """The YAML value of one ``key=value`` override (empty: null); malformed YAML is a
    ``ConfigError`` naming the override."""
    if not raw.strip():
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"override {override!r}: the value {raw!r} is not valid YAML ({reason}). Fix: "
            "give a number, a word, true/false, null or a list such as [0.9, 0.98]; quote a "
            "value with spaces"
        ) from None


def _model_section(values: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ConfigError("the model section must be a mapping of ModelConfig fields")
    known = ["preset", *(field.name for field in dataclasses.fields(ModelConfig))]
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown key model.{key}{_suggest(key, known)}")
    for key in ("vocab_size", "pad_id"):
        if key in values:
            raise ConfigError(f"model.{key} comes from the tokenizer: remove it from the config")
    model = {key: _coerce_float(value, ModelConfig, key) for key, value in values.items()}
    return model


def _section_from_dict(cls: type, section: str, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"the {section} section must be a mapping, not {values!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(f"unknown key {section}.{key}{_suggest(key, list(fields))}")
    converted = {}
    for key, value in values.items():
        value = _coerce_float(value, cls, key)
        check_value(f"{section}.{key}", value, str(fields[key].type))
        converted[key] = value
    config = cls(**converted)
    config.validate()
    return config


def _coerce_float(value: Any, cls: type, key: str) -> Any:
    """YAML reads ``3e-4`` as a string; accept it where the field is a float."""
    annotation = {field.name: str(field.type) for field in dataclasses.fields(cls)}.get(key, "")
    if annotation == "list[float]" and isinstance(value, list):
        return [_to_float(item) for item in value]
    return _to_float(value) if "float" in annotation else value


def _to_float(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check_value(name: str, value: Any, annotation: str) -> None:
    """``value`` fits ``annotation`` (scalars, unions with None, ``list[...]``) and, when a
    number, is finite: no config value may be NaN or infinite."""
    if annotation.endswith(" | None"):
        if value is None:
            return
        annotation = annotation[: -len(" | None")]
    if annotation.startswith("dict[str, "):
        value_type = annotation[len("dict[str, ") : -1]
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise ConfigError(f"{name} = {value!r} must be a mapping of names to {value_type}")
        for key, item in value.items():
            check_value(f"{name}.{key}", item, value_type)
        return
    if annotation.startswith("list["):
        item_type = annotation[len("list[") : -1]
        if not isinstance(value, list):
            raise ConfigError(f"{name} = {value!r} must be a list of {item_type}")
        for item in value:
            check_value(name, item, item_type)
        return
    if not _matches_annotation(value, annotation):
        raise ConfigError(
            f"{name} = {value!r} has type {type(value).__name__}, expected {annotation}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} = {value!r} must be a finite number")


def check_field_types(config: Any, prefix: str) -> None:
    """Check every field of a config dataclass against its annotation (finite numbers too);
    ``prefix`` names the section in messages (``training.lr``)."""
    for field in dataclasses.fields(config):
        check_value(f"{prefix}{field.name}", getattr(config, field.name), str(field.type))


def check_model_overrides(values: dict[str, Any], prefix: str = "model.") -> None:
    """Each ``model.KEY`` override names a ModelConfig field and has its type (checked before
    the tokenizer, which sets the vocabulary, is known)."""
    fields = {field.name: str(field.type) for field in dataclasses.fields(ModelConfig)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key {prefix}{key}{_suggest(key, list(fields))}")
        check_value(f"{prefix}{key}", value, fields[key])


def check_mixed_precision_device(mixed_precision: str) -> None:
    """Refuse a ``training.mixed_precision`` this machine cannot run, before any work: fp16
    needs a CUDA (or MPS) GPU; bf16 runs on CPUs (autocast) and on GPUs that support it."""
    import torch

    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if mixed_precision == "fp16" and not (cuda or mps):
        raise ConfigError(
            "training.mixed_precision = 'fp16' needs a GPU and none is available. Fix: set "
            "training.mixed_precision=bf16 (CPU autocast) or training.mixed_precision=no"
        )
    if mixed_precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"training.mixed_precision = 'bf16' is not supported by "
            f"{torch.cuda.get_device_name()}. Fix: set training.mixed_precision=fp16 or no"
        )


def _suggest(key: str, known: list[str]) -> str:
    """`` (did you mean 'lr'?)``, or the list of valid keys when none is close."""
    return _did_you_mean(key, known) or f"; valid keys: {', '.join(known)}"


def _require(ok: bool, name: str, value: Any, condition: str) -> None:
    if not ok:
        raise ConfigError(f"{name} = {value!r} must be {condition}")
