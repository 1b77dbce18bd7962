"""Configuration: one typed dataclass tree per command, loaded by one loader.

``ModelConfig`` is an encoder's architecture (with named presets; the vocabulary size comes
from the tokenizer)::

    config = ModelConfig.from_preset("protein-t6-8M", vocab_size=tokenizer.vocab_size)

Each command has a tree of dataclasses: ``RunConfig`` (pretrain: ``model``, ``data``,
``training``), ``FinetuneConfig`` (with its ``read`` and ``training`` sections) and
``QuickstartConfig``. ``load_config(Class, yaml_path, ["section.key=value", ...])`` reads any
of them the same way: an optional YAML file, then dotted ``key=value`` overrides (values parsed
as YAML), every key checked against the dataclass (an unknown key names the closest valid
one), every value against its type annotation and its domain, then the tree's ``validate``.

A field's help text, numeric domain and choices are its metadata (``option``): command-line
flags are aliases of keys built from it (``cli/flags.py``), so each default and each list of
choices is stated once, here.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from biotransformer.errors import ConfigError
from biotransformer.io import DUPLICATE_ID_POLICIES

T = typing.TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Domains of numbers: one definition serves a flag (argparse type) and a config key (check)
# ---------------------------------------------------------------------------------------------


class Domain:
    """The values a number may take, e.g. ``Domain(int, "an integer >= 1", lambda n: n >= 1)``.

    Called with a string it is an argparse type: the number, or ``ArgumentTypeError`` that
    argparse prints as one line naming the flag. ``accepts(value)`` checks a config value.
    """

    def __init__(self, kind: type, what: str, ok: Callable[[Any], bool]) -> None:
        self.kind, self.what, self.ok = kind, what, ok
        self.__name__ = what  # argparse names the type in "invalid <name> value" messages

    def __call__(self, text: str) -> Any:
        try:
            number = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.what}") from None
        if self.kind is float and not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.what}: give a finite number")
        if not self.ok(number):
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.what}")
        return number

    def accepts(self, value: Any) -> bool:
        """Whether a (type-checked) config value lies in the domain."""
        return (not isinstance(value, float) or math.isfinite(value)) and self.ok(value)


positive_int = Domain(int, "an integer >= 1", lambda n: n >= 1)
non_negative_int = Domain(int, "an integer >= 0", lambda n: n >= 0)
any_int = Domain(int, "an integer", lambda n: True)
positive_float = Domain(float, "a finite number > 0", lambda x: x > 0)
non_negative_float = Domain(float, "a finite number >= 0", lambda x: x >= 0)
probability = Domain(float, "a number in [0, 1]", lambda x: 0.0 <= x <= 1.0)
fraction = Domain(float, "a number in [0, 1)", lambda x: 0.0 <= x < 1.0)
open_fraction = Domain(float, "a number in (0, 1)", lambda x: 0.0 < x < 1.0)


def column(value: str) -> str | int:
    """A column name, or a 0-based position when the value is a number."""
    return int(value) if value.isdigit() else value


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    domain: Domain | None = None,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    flag: Mapping[str, Any] | None = None,
    factory: Callable[[], Any] | None = None,
    model_keys: Sequence[str] | None = None,
) -> Any:
    """A config field with its metadata: ``help`` (a flag's help text), ``domain`` (numbers:
    checked here and the type of a flag), ``choices`` (strings), ``parse`` (how a flag's text
    becomes the value, when neither says) and ``flag`` (other ``add_argument`` options).
    ``model_keys`` marks a ``model`` section: a mapping of ModelConfig fields (and these extra
    keys), checked key by key; YAML and overrides merge into its default."""
    metadata = {"help": help, "domain": domain, "choices": choices, "parse": parse, "flag": flag}
    if model_keys is not None:
        metadata["model_keys"] = tuple(model_keys)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Types: every value is checked against the field's real annotation
# ---------------------------------------------------------------------------------------------


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type annotation of each field of a dataclass."""
    return typing.get_type_hints(cls)


def _members(hint: Any) -> tuple[Any, ...]:
    """The members of a union (``int | None`` -> int, NoneType), or the type itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def type_name(hint: Any) -> str:
    """How an annotation is written: ``float | None``, ``list[float]``."""
    members = _members(hint)
    if len(members) > 1:
        return " | ".join(type_name(member) for member in members)
    if hint is type(None):
        return "None"
    if hint is Any:
        return "Any"
    origin = typing.get_origin(hint)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(hint))}]"
    return hint.__name__


_SCALARS: dict[Any, Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    type(None): lambda v: v is None,
    Any: lambda v: True,
}


def check_value(name: str, value: Any, hint: Any) -> None:
    """``value`` fits the annotation ``hint`` (scalars, unions, ``list[...]``,
    ``dict[str, ...]``; ``bool`` is no ``int``, an ``int`` is a ``float``) and, when a number,
    is finite: no config value may be NaN or infinite."""
    for member in _members(hint):
        origin = typing.get_origin(member)
        if origin is list and isinstance(value, list):
            for item in value:
                check_value(name, item, typing.get_args(member)[0])
            return
        if origin is dict and isinstance(value, dict):
            item_type = typing.get_args(member)[1]
            if not all(isinstance(key, str) for key in value):
                break
            for key, item in value.items():
                check_value(f"{name}.{key}", item, item_type)
            return
        if member in _SCALARS and _SCALARS[member](value):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} = {value!r} must be a finite number")
            return
    raise ConfigError(
        f"{name} = {value!r} has type {type(value).__name__}, expected {type_name(hint)}"
    )


def check_values(cls: type, values: Mapping[str, Any], prefix: str) -> None:
    """Check each value of a mapping against the field of ``cls`` it names."""
    hints = field_types(cls)
    for key, value in values.items():
        check_value(f"{prefix}{key}", value, hints[key])


def check_field_types(config: Any, prefix: str) -> None:
    """Check every field of a config dataclass against its annotation (finite numbers too),
    its domain and its choices; ``prefix`` names the section in messages (``training.lr``)."""
    hints = field_types(type(config))
    for item in dataclasses.fields(config):
        if dataclasses.is_dataclass(hints[item.name]):
            continue  # a section: validated by its own validate()
        name, value = f"{prefix}{item.name}", getattr(config, item.name)
        check_value(name, value, hints[item.name])
        domain, choices = item.metadata.get("domain"), item.metadata.get("choices")
        if domain is not None and _SCALARS[float](value) and not domain.accepts(value):
            raise ConfigError(f"{name} = {value!r} must be {domain.what}")
        if choices is not None and isinstance(value, str) and value not in choices:
            raise ConfigError(f"{name} = {value!r} is not one of {list(choices)}")


# ---------------------------------------------------------------------------------------------
# Model architecture
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Choices stated once: the flags, the configs and the heads read them from here
# ---------------------------------------------------------------------------------------------

FINETUNE_TASKS = ("classification", "multilabel", "regression", "token-classification")
POOLINGS = ("cls", "mean", "max", "attention")
CLASSIFIERS = ("linear", "esm")
SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISIONS = ("no", "fp16", "bf16")

# A ``model`` section holds ModelConfig fields; these two come from the tokenizer.
TOKENIZER_MODEL_KEYS = ("vocab_size", "pad_id")


# ---------------------------------------------------------------------------------------------
# pretrain: RunConfig (model, data, training); the YAML files in recipes/configs map onto it
# ---------------------------------------------------------------------------------------------


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

    output_dir: str = option(
        "runs/pretrain", help="where the run writes its files", flag={"metavar": "DIR"}
    )
    lr: float = option(5e-4, help="peak learning rate", domain=positive_float)
    weight_decay: float = 0.01
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: str = option("cosine", help="learning-rate schedule", choices=SCHEDULES)
    min_lr_ratio: float = 0.1
    max_steps: int = 1000
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = option(
        "no", help="mixed precision: no, fp16 (GPU) or bf16", choices=MIXED_PRECISIONS
    )
    compile: bool = False
    save_every: int = 500
    keep_last: int = 2
    eval_every: int = 200
    log_every: int = 10
    seed: int = option(0, help="seed of splits, init, batches", domain=non_negative_int)

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad field."""
        check_field_types(self, "training.")
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
        for name in ("warmup_steps", "save_every", "eval_every"):
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


# Only a placeholder: the real vocabulary comes from the tokenizer when the run starts.
_PLACEHOLDER_VOCAB = 4096


@dataclass
class RunConfig:
    """A pretraining run: ``model`` (a preset name and/or ModelConfig fields), ``data``,
    ``training``.

    ``model`` stays a mapping until the tokenizer is known, because the vocabulary size and
    the padding id come from the tokenizer: see ``model_config``.
    """

    model: dict[str, Any] = option(
        help="a preset and ModelConfig fields", factory=dict, model_keys=("preset",)
    )
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def model_config(self, *, vocab_size: int, pad_id: int | None) -> ModelConfig:
        """The ModelConfig of this run for a tokenizer with this vocabulary and padding id."""
        fields = {key: value for key, value in self.model.items() if key != "preset"}
        fields.update(vocab_size=vocab_size, pad_id=pad_id)
        preset = self.model.get("preset")
        if preset is None:
            return ModelConfig.from_dict(fields)
        return ModelConfig.from_preset(preset, **fields)

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad value (model keys as ``model.KEY``)."""
        check_field_types(self, "")
        self.data.validate()
        self.training.validate()
        try:
            model_length = self.model_config(vocab_size=_PLACEHOLDER_VOCAB, pad_id=0).max_length
        except ConfigError as error:  # a run config's ModelConfig fields are its model.KEY keys
            raise ConfigError(str(error).replace("ModelConfig.", "model.")) from None
        if self.data.max_length > model_length:
            raise ConfigError(
                f"data.max_length = {self.data.max_length} exceeds the model's max_length = "
                f"{model_length}. Fix: lower data.max_length or set model.max_length"
            )

    def to_dict(self) -> dict[str, Any]:
        """A YAML-ready dict that ``load_config`` turns back into an equal config."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# finetune: FinetuneConfig (with its read and training sections)
# ---------------------------------------------------------------------------------------------


@dataclass
class ReadOptions:
    """How to read records and labels; the options of ``io.read_sequences``, plus
    ``group_column``: a column (CSV/TSV) or a ``label_from`` spec (FASTA) whose value keeps
    related records in one split."""

    sequence_column: str | int = option(
        "sequence",
        help="CSV/TSV column holding the sequences: a name, or a 0-based position",
        parse=column,
    )
    label_column: str | int | None = option(
        "label",
        help="CSV/TSV column holding the labels, or the label column of --labels-file",
        parse=column,
    )
    id_column: str | int | None = option(
        None,
        help="CSV/TSV column holding record ids, or the id column of --labels-file "
        "(default: FILE:LINE for tables, 'id' in a labels file)",
        parse=column,
    )
    label_from: str | None = option(
        None,
        help="FASTA/FASTQ labels from the header: key:NAME (a NAME=value pair), field:N "
        "(0-based '|' field) or regex:PATTERN (one group)",
        flag={"metavar": "SPEC"},
    )
    labels_file: str | None = option(
        None,
        help="a CSV/TSV sidecar table with an id and a label column, matched by record id",
        flag={"metavar": "FILE"},
    )
    group_column: str | int | None = option(
        None,
        help="keep records with the same value together: a CSV/TSV column, or for FASTA a "
        "--label-from style spec (key:cluster)",
        parse=column,
    )
    duplicate_ids: str = option(
        "error",
        help="a record id seen twice: error, warn (keep both, say so) or allow",
        choices=DUPLICATE_ID_POLICIES,
    )

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad value."""
        check_field_types(self, "read.")


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs. ``training`` is the shared ``TrainingConfig``;
    its ``max_steps`` is derived from ``epochs`` unless ``max_steps`` is set here, and its
    ``output_dir`` is ``output_dir``. ``model`` holds ModelConfig overrides for a preset.
    The model is evaluated on validation ``evals_per_epoch`` times per epoch (or per run, when
    the run is shorter than an epoch) and at the end; the best by ``select_metric`` is kept
    (default: MCC, R^2 for regression, AUROC with ``tune_threshold``, whose threshold is tuned
    after selection).
    ``classifier`` (classification, multilabel): ``linear`` or ``esm`` (HF's
    dense-tanh-linear head; with ``pooling='cls'`` the model exports to HuggingFace); None
    keeps a warm-started classifier's own head and gives a new one ``linear``.
    ``rc_augment`` (DNA only) serves each training sample reverse-complemented with that
    probability, drawn from (seed, epoch, index) (see ``strands``). ``rc_average`` (DNA,
    sequence-level tasks) scores validation, test and later predictions as the mean over both
    strands; it is stored in ``task.json`` as the model's default.
    ``model_dir`` is a model directory, or ``hf:PATH`` / ``fair-esm:PATH`` converted into
    ``output_dir/imported``. ``lora`` (``r=8,alpha=16``, see ``LoraSettings.parse``) trains
    LoRA adapters and the head only, saves them to ``output_dir/adapter`` and merges them
    into ``output_dir/model``.
    ``resume`` (``latest`` or a checkpoint folder) continues a run from its checkpoints
    (``training.save_every``, ``training.keep_last``); they are removed when the run ends.
    ``overwrite`` replaces an earlier run in ``output_dir`` (only the files it recorded as
    written; see ``outputs``): without it, a finished run there is refused.
    The run resolves ``training.max_steps``, ``warmup_steps`` and ``eval_every`` before it
    starts and writes them, as they ran, to ``config.yaml``."""

    train: str = option(help="labelled training data", flag={"metavar": "FILE"})
    output_dir: str = option(help="output directory", flag={"metavar": "DIR"})
    task: str = option(
        "classification",
        help="classification (binary or multi-class), multilabel (comma-separated labels), "
        "regression (numbers) or token-classification (one label character per residue)",
        choices=FINETUNE_TASKS,
    )
    valid: str | None = option(
        None,
        help="validation data (default: --valid-fraction of --train, without leakage)",
        flag={"metavar": "FILE"},
    )
    test: str | None = option(
        None,
        help="test data (default: --test-fraction of --train, without leakage)",
        flag={"metavar": "FILE"},
    )
    model_dir: str | None = option(
        None,
        help="warm start from this model directory (e.g. a pretrained masked-LM), or from "
        "hf:PATH (a local HuggingFace ESM directory) or fair-esm:PATH (an ESM-2 .pt file), "
        "converted into OUT/imported; its tokenizer is used",
        flag={"metavar": "DIR"},
    )
    preset: str | None = option(
        None,
        help="architecture of a new model (default: dna-t6-8M for DNA, protein-t6-8M for "
        "protein, detected from the data)",
    )
    model: dict[str, Any] = option(
        help="ModelConfig fields of a new model", factory=dict, model_keys=()
    )
    tokenizer: str | None = option(
        None,
        help="tokenizer of a new model: dna, dna-kmer:k=6, protein... (default: dna or protein)",
        flag={"metavar": "SPEC"},
    )
    read: ReadOptions = field(default_factory=ReadOptions)
    valid_fraction: float = option(0.1, help="share of train for validation", domain=fraction)
    test_fraction: float = option(0.1, help="share of train for test", domain=fraction)
    epochs: float = option(3.0, help="passes over train", domain=positive_float)
    max_steps: int | None = option(
        None, help="optimizer steps (default: from epochs)", domain=positive_int
    )
    warmup_fraction: float = option(
        0.06, help="share of the steps that warm the learning rate up", domain=fraction
    )
    max_tokens: int = option(
        8192,
        help="padded tokens per batch; batches are filled by length",
        domain=positive_int,
    )
    max_length: int | None = option(
        None,
        help="crop sequences to this many tokens (default: the model's max_length)",
        domain=positive_int,
    )
    pooling: str = option("mean", help="how a sequence head pools token states", choices=POOLINGS)
    classifier: str | None = option(
        None,
        help="classification head: linear (dropout, linear; the default for a new head) or esm "
        "(dense, tanh, linear, as HF's EsmForSequenceClassification; with --pooling cls the "
        "model exports to HuggingFace with 'convert --to hf')",
        choices=CLASSIFIERS,
    )
    freeze_encoder: bool = option(
        False, help="train the head only (a linear probe on the encoder's features)"
    )
    lora: str | None = option(
        None,
        help="train LoRA adapters (and the head) instead of the encoder: r= rank (default 8), "
        "alpha= scale, update alpha/r*BA (default 16), dropout= on the adapter input "
        "(default 0), targets= encoder linears joined by + (default qkv+out+up+down); the "
        "adapters and head go to OUT/adapter, model/ holds them merged (needs peft)",
        flag={"metavar": "r=R,alpha=A"},
    )
    class_weights: str | None = option(
        None,
        help="weight the cross-entropy by inverse class frequency (multilabel: pos_weight)",
        choices=("balanced",),
    )
    pos_weight: float | str | None = option(
        None,
        help="weight of positives: binary classification (class 1) or every label of a "
        "multilabel task; 'balanced' uses negatives/positives",
        domain=positive_float,
        choices=("balanced",),
        flag={"metavar": "W|balanced"},
    )
    tune_threshold: bool = option(
        False, help="tune the decision threshold for MCC on validation; stored in model/task.json"
    )
    select_metric: str | None = option(
        None, help="validation metric that selects the model (default: by task)"
    )
    evals_per_epoch: int = option(1, help="validation evaluations per epoch", domain=positive_int)
    rc_augment: float = option(
        0.0,
        help="DNA: serve each training sample reverse-complemented with probability P, drawn "
        "from (seed, epoch, index) (0: off)",
        domain=probability,
        flag={"metavar": "P"},
    )
    rc_average: bool = option(
        False,
        help="DNA, sequence-level tasks: score validation and test (and, stored in "
        "model/task.json, later predict/evaluate runs) as the mean over both strands",
    )
    bootstrap: int = option(
        1000,
        help="bootstrap resamples for the 95% confidence intervals (0 skips the intervals)",
        domain=non_negative_int,
    )
    plots: bool = option(True, help="write plots and report.html")
    resume: str | None = option(
        None,
        help="continue a killed or stopped run from a checkpoint folder, or from the newest "
        "one in OUT/checkpoints ('latest', the default when the flag has no value); "
        "checkpoints are saved every training.save_every steps",
        flag={"nargs": "?", "const": "latest", "metavar": "PATH|latest"},
    )
    overwrite: bool = option(
        False,
        help="replace an existing --out: the files an earlier biotransformer run recorded "
        "there (files you put there are kept); without it an existing output is refused",
    )
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(lr=3e-4, schedule="linear", min_lr_ratio=0.0)
    )

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad value."""
        from biotransformer.lora import LoraSettings

        check_field_types(self, "")
        self.read.validate()
        if self.model_dir is not None and (self.preset is not None or self.model):
            raise ConfigError(
                "give --model DIR (warm start) or --preset/model.* overrides, not both"
            )
        if self.classifier is not None and self.task not in CLASS_TASKS:
            raise ConfigError("classifier applies to classification and multilabel")
        if self.pos_weight is not None and self.task not in CLASS_TASKS:
            raise ConfigError("pos_weight applies to binary classification and multilabel")
        if self.tune_threshold and self.task not in CLASS_TASKS:
            raise ConfigError("tune_threshold applies to binary classification and multilabel")
        if self.rc_average and self.task == "token-classification":
            raise ConfigError(
                "rc_average applies to sequence-level tasks; per-base labels are "
                "strand-specific: drop --rc-average"
            )
        if self.lora is not None:
            if self.freeze_encoder:
                raise ConfigError("give --lora or --freeze-encoder, not both")
            LoraSettings.parse(self.lora)
        self.training.validate()

    def to_dict(self) -> dict[str, Any]:
        """A YAML-ready dict of every value (``load_config`` reads it back)."""
        return dataclasses.asdict(self)


CLASS_TASKS = ("classification", "multilabel")  # the tasks whose labels are classes


# ---------------------------------------------------------------------------------------------
# quickstart: QuickstartConfig
# ---------------------------------------------------------------------------------------------

QUICKSTART_MODEL = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "ffn_size": 128,
    "position": "rotary",
    "dropout": 0.0,
}


@dataclass
class QuickstartConfig:
    """What one quickstart run does. ``data`` is a labelled FASTA/CSV/TSV of the user's
    (read with ``read``) instead of the synthetic task; ``model`` the tiny encoder's
    ModelConfig fields; ``overwrite`` replaces a previous quickstart run in ``output_dir``."""

    output_dir: str = option(
        "quickstart-run",
        help="output directory: new or empty, or a previous quickstart run with --overwrite",
        flag={"metavar": "DIR"},
    )
    seed: int = option(
        0,
        help="seed of the generated data, the splits and training",
        domain=non_negative_int,
    )
    data: str | None = option(
        None,
        help="a labelled DNA FASTA/CSV/TSV of yours instead of the synthetic task; split "
        "80/10/10 without leakage",
        flag={"metavar": "FILE"},
    )
    read: ReadOptions = field(default_factory=ReadOptions)
    pretrain_steps: int = option(200, help="masked-LM pretraining steps", domain=positive_int)
    finetune_epochs: float = option(
        1.5, help="fine-tuning passes over the training split", domain=positive_float
    )
    bootstrap: int = option(
        1000,
        help="bootstrap resamples for the 95% confidence intervals (0 skips the intervals)",
        domain=non_negative_int,
    )
    model: dict[str, Any] = option(
        help="the tiny encoder's ModelConfig fields",
        factory=lambda: dict(QUICKSTART_MODEL),
        model_keys=(),
    )
    overwrite: bool = option(
        False,
        help="replace a previous quickstart run in --out (only the files it wrote)",
    )

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad value."""
        check_field_types(self, "")
        self.read.validate()


# ---------------------------------------------------------------------------------------------
# The one loader: YAML file -> dotted overrides -> typed dataclass tree -> validate()
# ---------------------------------------------------------------------------------------------


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> T:
    """The validated ``cls`` config from an optional YAML file, then ``values`` (already
    typed, e.g. from flags; dotted keys), then ``key=value`` overrides (values parsed as
    YAML; a dotted key names a section: ``training.lr=3e-4``)."""
    tree = read_yaml(path) if path is not None else {}
    for key, value in (values or {}).items():
        set_dotted(tree, key, value)
    for override in overrides:
        key, value = parse_override(override)
        try:
            check_key(cls, key)
        except ConfigError as error:
            raise ConfigError(f"override {override!r}: {error}") from None
        set_dotted(tree, key, value)
    return config_from_dict(cls, tree)


def load_run_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """A pretraining ``RunConfig``: ``load_config(RunConfig, path, overrides)``."""
    return load_config(RunConfig, path, overrides)


def run_config_from_dict(values: Mapping[str, Any]) -> RunConfig:
    """A pretraining ``RunConfig`` from a mapping: ``config_from_dict(RunConfig, values)``."""
    return config_from_dict(RunConfig, values)


def apply_overrides(config: T, overrides: Sequence[str]) -> T:
    """A copy of ``config`` with ``key=value`` overrides applied, validated."""
    return load_config(type(config), values=dataclasses.asdict(config), overrides=overrides)


def config_from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build and validate a ``cls`` config from a nested mapping; an unknown key is an error
    naming the closest valid one, a value of the wrong type one naming the key."""
    config = _build(cls, values, "", None)
    config.validate()
    return config


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a YAML config file; a missing or unreadable file is a ``ConfigError``."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text. Fix: give a YAML config") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys, not {type(values).__name__}")
    return values


def parse_override(override: str) -> tuple[str, Any]:
    """The dotted key and the YAML value of one ``key=value`` override (empty: null)."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key or not all(key.split(".")):
        raise ConfigError(
            f"override {override!r} is not of the form key=value (section.key=value for a key "
            "of a section, e.g. training.lr=3e-4)"
        )
    return key, parse_override_value(override, raw)


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


def check_key(cls: type, key: str) -> None:
    """Raise ``ConfigError`` unless the dotted ``key`` names a field of the ``cls`` tree (or
    a key of a ``model`` section, checked when the config is built)."""
    parts = key.split(".")
    owner, prefix = cls, ""
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        item = _fields(owner).get(part)
        if item is None:
            raise ConfigError(_unknown(owner, part, None if last else {}, prefix))
        hint = field_types(owner)[part]
        if "model_keys" in item.metadata:
            return
        if not dataclasses.is_dataclass(hint):
            if not last:
                raise ConfigError(f"{prefix}{part} is a value, not a section")
            return
        owner, prefix = hint, f"{prefix}{part}."


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``training.lr`` in a nested mapping, making the sections on the way."""
    *sections, name = key.split(".")
    for section in sections:
        if not isinstance(tree.get(section), dict):
            tree[section] = {}
        tree = tree[section]
    tree[name] = value


def config_keys(cls: type) -> list[str]:
    """Every dotted key of a config tree (``training.lr``), sections included."""
    keys = []
    for name, hint in field_types(cls).items():
        keys.append(name)
        if dataclasses.is_dataclass(hint):
            keys.extend(f"{name}.{key}" for key in config_keys(hint))
    return keys


def field_at(cls: type, key: str) -> tuple[dataclasses.Field, Any, Any]:
    """The field a dotted key names, its type and its default (from the enclosing section's
    default: fine-tuning's ``training.lr`` is 3e-4, not ``TrainingConfig``'s 5e-4)."""
    *sections, name = key.split(".")
    owner, default_owner = cls, None
    for section in sections:
        item = _fields(owner)[section]
        default_owner = (
            getattr(default_owner, section) if default_owner is not None else _default(item)
        )
        owner = field_types(owner)[section]
    item = _fields(owner)[name]
    default = getattr(default_owner, name) if default_owner is not None else _default(item)
    return item, field_types(owner)[name], default


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {item.name: item for item in dataclasses.fields(cls)}


def _default(item: dataclasses.Field) -> Any:
    """A field's default value, or ``dataclasses.MISSING`` for a required one."""
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def _build(cls: type[T], values: Any, prefix: str, base: T | None) -> T:
    """``cls`` from a mapping: nested sections start from ``base``'s (or the field's default)."""
    if not isinstance(values, Mapping):
        where = f"the {prefix[:-1]} section" if prefix else "a config"
        raise ConfigError(f"{where} must be a mapping of keys, not {values!r}")
    fields, hints = _fields(cls), field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(_unknown(cls, key, value, prefix))
        item, hint, name = fields[key], hints[key], f"{prefix}{key}"
        if dataclasses.is_dataclass(hint):
            section = getattr(base, key) if base is not None else _default(item)
            kwargs[key] = _build(hint, value, f"{name}.", section)
        elif "model_keys" in item.metadata:
            start = getattr(base, key) if base is not None else _default(item)
            kwargs[key] = {**start, **_model_keys(value, name, item.metadata["model_keys"])}
        else:
            value = _coerce_float(value, hint)
            check_value(name, value, hint)
            kwargs[key] = value
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    missing = [key for key, item in fields.items() if key not in kwargs and _required(item)]
    if missing:
        key = f"{prefix}{missing[0]}"
        raise MissingKeyError(
            key, f"{key} is required. Fix: give {key}: in the config file, or {key}=VALUE"
        )
    return cls(**kwargs)


class MissingKeyError(ConfigError):
    """A required key (``train`` of a fine-tune) has no value; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _required(item: dataclasses.Field) -> bool:
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING


def _unknown(cls: type, key: str, value: Any, prefix: str) -> str:
    """The message for an unknown key: the same name in a section, else the closest sibling,
    else the valid keys."""
    known = list(_fields(cls))
    if isinstance(value, Mapping) and not prefix:
        return f"unknown section {key!r}{_suggest(key, known)}"
    hints = field_types(cls)
    nested = [
        f"{name}.{key}"
        for name, hint in hints.items()
        if dataclasses.is_dataclass(hint) and key in _fields(hint)
    ]
    close = f" (did you mean {nested[0]!r}?)" if nested else _suggest(key, known)
    return f"unknown key {prefix}{key}{close}"


def _model_keys(values: Any, name: str, extra: Sequence[str]) -> dict[str, Any]:
    """A ``model`` section: ModelConfig fields (and ``extra`` keys), typed; the vocabulary
    size and padding id come from the tokenizer."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"the {name} section must be a mapping of ModelConfig fields")
    hints = field_types(ModelConfig)
    known = [*extra, *(key for key in hints if key not in TOKENIZER_MODEL_KEYS)]
    checked = {}
    for key, value in values.items():
        if key in TOKENIZER_MODEL_KEYS:
            raise ConfigError(f"{name}.{key} comes from the tokenizer: remove it from the config")
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}{_suggest(key, known)}")
        if key in hints:
            value = _coerce_float(value, hints[key])
            check_value(f"{name}.{key}", value, hints[key])
        checked[key] = value
    return checked


def _coerce_float(value: Any, hint: Any) -> Any:
    """YAML reads ``3e-4`` as a string; read it as a number where the field takes floats."""
    members = _members(hint)
    if isinstance(value, list) and any(typing.get_origin(m) is list for m in members):
        item = next(typing.get_args(m)[0] for m in members if typing.get_origin(m) is list)
        return [_coerce_float(element, item) for element in value]
    if isinstance(value, str) and float in members:
        try:
            return float(value)
        except ValueError:
            return value
    return value


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


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _suggest(key: str, known: list[str]) -> str:
    """`` (did you mean 'lr'?)``, or the list of valid keys when none is close."""
    return _did_you_mean(key, known) or f"; valid keys: {', '.join(known)}"


def _require(ok: bool, name: str, value: Any, condition: str) -> None:
    if not ok:
        raise ConfigError(f"{name} = {value!r} must be {condition}")
