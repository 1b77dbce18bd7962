"""Task heads on the encoder, and model directories (save, load, warm start from another task).

Every model holds ``self.encoder`` (an ``Encoder``), ``self.config`` (a ``ModelConfig``) and
``self.head_config``, and its ``forward(input_ids, attention_mask=None, labels=None)`` returns a
``ModelOutput``. The head owns its task: its loss, and in its config the label names, the
decision threshold and whether scores average both DNA strands; ``model.task`` states them as a
``tasks.TaskInfo``. A model directory holds ``config.json`` (the encoder and head configs),
``model.safetensors`` and, when a tokenizer was given, ``tokenizer.json``; directories written
before the head held its decision fields keep them in a ``task.json``, which still loads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from biotransformer import __version__
from biotransformer.atomic import (
    atomic_directory,
    json_text,
    restore_interrupted_directory,
    safetensors_os_errors,
    write_json,
)
from biotransformer.config import CLASSIFIERS, POOLINGS, ModelConfig, check_values
from biotransformer.constants import IGNORE_INDEX
from biotransformer.errors import ConfigError, ModelDirectoryError
from biotransformer.model import Encoder, EncoderOutput, init_weights
from biotransformer.tasks import TaskInfo, read_task_file, threshold_problem

if TYPE_CHECKING:
    from biotransformer.tokenizers import Tokenizer

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TASK_FILE = "task.json"  # the decision fields of directories written before config.json held them
# Everything a model directory holds: an existing one is replaced only if it holds these alone.
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, TASK_FILE)
FORMAT_VERSION = 1
PROBLEM_TYPES = ("single_label", "multi_label")


@dataclass
class ModelOutput:
    """What every model returns.

    ``loss`` is ``loss_sum / num_targets``: for masked-LM and token classification the sum of
    per-token losses and the number of targets that are not ``-100``; for sequence heads the
    sum of per-sequence losses and the batch size. The training loop adds both up over
    micro-batches and ranks before dividing.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    loss_sum: torch.Tensor | None = None
    num_targets: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------
# Head configurations
# ---------------------------------------------------------------------------------------------


class HeadConfig:
    """Shared dict round trip of the head dataclasses; unknown keys are errors."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HeadConfig:
        known = [field.name for field in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown {cls.__name__} option {key!r}; options: {known}")
        check_values(cls, values, "head.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class MaskedLMHeadConfig(HeadConfig):
    """``target_logits_only``: when ``labels`` are given, run the head only at the target
    positions (label not -100): the same loss for less work and memory, and ``logits`` is then
    (num_targets, vocab_size), rows in the order of ``labels != -100``. Without labels the
    logits are always (B, T, vocab_size). ``ModelConfig.tie_embeddings`` ties the decoder."""

    target_logits_only: bool = False


@dataclass
class LabelHeadConfig(HeadConfig):
    """Options of a classifier: ``num_labels`` (or inferred from ``label2id``), the label
    vocabulary, ``pooling`` (sequence heads), and ``class_weights``: per-class weights of the
    cross-entropy for ``single_label``, the ``pos_weight`` of the BCE for ``multi_label``.
    ``classifier``: ``linear`` (dropout -> linear) or ``esm`` (dropout -> dense -> tanh ->
    dropout -> linear, ESM's and RoBERTa's head; sequence heads only).
    How it decides: ``threshold`` on P(positive) of a binary task (one per label, or one for
    all, for ``multi_label``; None: 0.5) and ``rc_average``, scores averaged over both DNA
    strands (sequence heads only)."""

    num_labels: int | None = None
    problem_type: str = "single_label"
    pooling: str = "cls"
    label2id: dict[str, int] | None = None
    class_weights: list[float] | None = None
    classifier: str = "linear"
    threshold: float | list[float] | None = None
    rc_average: bool = False

    def __post_init__(self) -> None:
        if self.num_labels is None:
            if self.label2id is None:
                raise ConfigError("num_labels is required: pass num_labels=N or label2id={...}")
            self.num_labels = len(self.label2id)
        if self.num_labels < 1:
            raise ConfigError(f"num_labels = {self.num_labels} must be >= 1")
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(
                f"problem_type = {self.problem_type!r} is not one of {list(PROBLEM_TYPES)}"
            )
        if self.problem_type == "single_label" and self.num_labels < 2:
            raise ConfigError(
                "num_labels = 1 with problem_type 'single_label': use num_labels=2 for a binary "
                "task, or problem_type='multi_label' for one independent yes/no output"
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling = {self.pooling!r} is not one of {list(POOLINGS)}")
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"classifier = {self.classifier!r} is not one of {list(CLASSIFIERS)}")
        if self.label2id is not None and sorted(self.label2id.values()) != list(
            range(self.num_labels)
        ):
            raise ConfigError(
                f"label2id must map the {self.num_labels} labels onto ids "
                f"0..{self.num_labels - 1}, got {self.label2id}"
            )
        if self.class_weights is not None and len(self.class_weights) != self.num_labels:
            raise ConfigError(
                f"class_weights has {len(self.class_weights)} values for {self.num_labels} labels"
            )
        problem = threshold_problem(
            self.threshold, self.num_labels, self.problem_type == "multi_label"
        )
        if problem is not None:
            raise ConfigError(problem)

    @property
    def labels(self) -> list[str]:
        """The label names by class id (``"0"``, ``"1"``... without a ``label2id``)."""
        label2id = self.label2id or {str(i): i for i in range(self.num_labels)}  # type: ignore[arg-type]
        return sorted(label2id, key=label2id.__getitem__)


@dataclass
class RegressorHeadConfig(HeadConfig):
    """Options of a regressor: how many values it predicts per sequence, the pooling, and
    ``rc_average``: values averaged over both DNA strands."""

    num_outputs: int = 1
    pooling: str = "mean"
    rc_average: bool = False

    def __post_init__(self) -> None:
        if self.num_outputs < 1:
            raise ConfigError(f"num_outputs = {self.num_outputs} must be >= 1")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling = {self.pooling!r} is not one of {list(POOLINGS)}")


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------


class Pooler(nn.Module):
    """(B, T, C) -> (B, C): the first token (``cls``), the mean or max over real tokens, or an
    ``attention``-weighted sum with one learned score per token."""

    def __init__(self, kind: str, hidden_size: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "attention":
            self.score = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "cls":
            return hidden[:, 0]
        keep = None if attention_mask is None else attention_mask.bool()[:, :, None]  # (B, T, 1)
        if self.kind == "mean":
            if keep is None:
                return hidden.mean(dim=1)
            return (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        if self.kind == "max":
            if keep is not None:
                hidden = hidden.masked_fill(~keep, float("-inf"))
            return hidden.max(dim=1).values
        scores = self.score(hidden)  # (B, T, 1)
        if keep is not None:
            scores = scores.masked_fill(~keep, float("-inf"))
        return (scores.softmax(dim=1) * hidden).sum(dim=1)


ModelT = TypeVar("ModelT", bound="BioTransformerModel")

# The model methods that run a model over data (embed, predict, score_variants) are workflows:
# ``biotransformer.api`` registers their implementations here when it is imported, so this
# core module declares them without importing a higher layer.
_INFERENCE: dict[str, Callable[..., Any]] = {}


def register_inference(name: str, function: Callable[..., Any]) -> None:
    """Make ``function(model, ...)`` the implementation of the model method ``name``."""
    _INFERENCE[name] = function


def _inference(name: str) -> Callable[..., Any]:
    if name not in _INFERENCE:
        raise ConfigError(
            f"model.{name} runs the model over data, which biotransformer.api implements and "
            "it is not imported. Fix: import biotransformer.api (importing load_model or a model "
            "class from biotransformer does)"
        )
    return _INFERENCE[name]


def preset_tokenizer(preset: str) -> str:
    """The tokenizer spec a preset comes with: ESM-2's alphabet (``protein``) for the
    ``protein-...`` presets, single nucleotides (``dna``) for the others."""
    return "protein" if preset.startswith("protein") else "dna"


# ---------------------------------------------------------------------------------------------
# The shared base: construction, size, FLOPs, saving
# ---------------------------------------------------------------------------------------------


class BioTransformerModel(nn.Module):
    """An encoder plus a task head; subclasses define the head and the loss."""

    head_config_class: ClassVar[type[HeadConfig]]

    def __init__(
        self, config: ModelConfig, head: HeadConfig | None = None, **head_options: Any
    ) -> None:
        super().__init__()
        if head is not None and head_options:
            raise ConfigError("pass either a head config or head options, not both")
        self.config = config
        if head is None:
            head = self.head_config_class.from_dict(head_options)
        self.head_config = head
        self.encoder = Encoder(config)
        self.tied_weight_keys: tuple[str, ...] = ()
        self.tokenizer: Tokenizer | None = None
        self.loading_info: dict[str, list[str]] | None = None

    @classmethod
    def from_preset(
        cls: type[ModelT], name: str, *, tokenizer: Tokenizer | str | None = None, **options: Any
    ) -> ModelT:
        """A new model of a named architecture with its tokenizer as ``model.tokenizer``:
        ``MaskedLM.from_preset("protein-t6-8M")`` reads ESM-2's alphabet, a ``dna-...``
        preset (and ``tiny``) single nucleotides; ``tokenizer`` (a ``Tokenizer`` or a spec
        such as ``"dna-kmer:k=6"``) chooses another. The vocabulary size and padding id come
        from the tokenizer. Options that name head fields (``num_labels``...) go to the head,
        the others override the preset's ``ModelConfig`` fields; an explicit ``vocab_size``
        without a ``tokenizer`` builds a model without one, as before tokenizers came with
        presets."""
        from biotransformer.tokenizers import Tokenizer

        head_fields = {field.name for field in dataclasses.fields(cls.head_config_class)}
        head_options = {k: v for k, v in options.items() if k in head_fields}
        overrides = {k: v for k, v in options.items() if k not in head_fields}
        if tokenizer is None and "vocab_size" in overrides:
            return cls(ModelConfig.from_preset(name, **overrides), **head_options)
        if not isinstance(tokenizer, Tokenizer):
            tokenizer = Tokenizer.from_spec(tokenizer or preset_tokenizer(name))
        for key, value in (("vocab_size", tokenizer.vocab_size), ("pad_id", tokenizer.pad_id)):
            if overrides.setdefault(key, value) != value:
                raise ConfigError(
                    f"{key}={overrides[key]} differs from the tokenizer's {value} "
                    f"({tokenizer.spec}). Fix: drop {key}=..., the tokenizer decides it"
                )
        model = cls(ModelConfig.from_preset(name, **overrides), **head_options)
        model.tokenizer = tokenizer
        return model

    @classmethod
    def from_pretrained(
        cls: type[ModelT], directory: str | os.PathLike[str], **head_options: Any
    ) -> ModelT:
        """Load a model directory as this class; see ``load_model``."""
        model: ModelT = load_model(directory, model_class=cls, **head_options)
        return model

    # --- inference: implemented by the workflow layer (``biotransformer.api``)

    def embed(self, sequences: Any, **options: Any) -> Any:
        """Encoder embeddings of ``sequences``, one row per input: ``biotransformer.api.embed``
        (its options: ``layers``, ``per_token``, ``pooling``, ``max_tokens``,
        ``window_overlap``...), returning an ``Embeddings``."""
        return _inference("embed")(self, sequences, **options)

    def predict(self, sequences: Any, **options: Any) -> Any:
        """A fine-tuned head's labels and scores, one per input: ``biotransformer.api.predict``
        (its options: ``threshold``, ``rc_average``, ``max_tokens``...), returning a
        ``Predictions``."""
        return _inference("predict")(self, sequences, **options)

    def score_variants(self, reference: Any, variants: Any, **options: Any) -> Any:
        """Substitution effects: ``biotransformer.api.score_variants`` (options ``methods``,
        ``batch_size``, ``max_tokens``), returning a ``VariantScores``."""
        return _inference("score_variants")(self, reference, variants, **options)

    @property
    def task(self) -> TaskInfo:
        """The task this head serves and how it decides (a copy: changing it leaves the
        model as it is)."""
        raise NotImplementedError

    def num_parameters(self, *, trainable_only: bool = False) -> int:
        """Number of parameters, tied weights counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: ``6 * N + 12 * num_layers * seq_len * hidden_size``.

        ``N`` is ``num_parameters()`` (forward 2N, backward 4N for the matrix products); the
        second term is the attention scores and weighted sum (q k^T and A v: 2 * 2 * T * C
        forward per layer, times 3 with the backward pass), as in the PaLM paper's appendix B.
        """
        config = self.config
        return 6 * self.num_parameters() + 12 * config.num_layers * seq_len * config.hidden_size

    def save_pretrained(
        self, directory: str | os.PathLike[str], tokenizer: Tokenizer | None = None
    ) -> Path:
        """Write ``config.json``, ``model.safetensors`` (and ``tokenizer.json`` when a tokenizer
        is given) into ``directory`` atomically, replacing an earlier model directory there
        (one that holds nothing but model files: anything else is refused)."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        document = self._config_document(tokenizer)
        state = {
            key: value.detach().cpu().contiguous()
            for key, value in self.state_dict().items()
            if key not in self.tied_weight_keys
        }
        with atomic_directory(directory, replaces=MODEL_FILES) as staging:
            (staging / CONFIG_FILE).write_text(json_text(document))
            with safetensors_os_errors(staging / WEIGHTS_FILE):
                save_file(state, staging / WEIGHTS_FILE, metadata={"format": "pt"})
            if tokenizer is not None:
                tokenizer.save(staging)
        return Path(directory)

    def save_config(self, directory: str | os.PathLike[str]) -> Path:
        """Rewrite ``config.json`` of the model directory this model was saved to or loaded
        from, e.g. after its decision threshold was tuned; the weights stay. The ``task.json``
        of an older directory is folded in (its values are the head's since loading)."""
        directory = Path(directory)
        write_json(directory / CONFIG_FILE, self._config_document(self.tokenizer))
        (directory / TASK_FILE).unlink(missing_ok=True)
        return directory

    def _config_document(self, tokenizer: Any) -> dict[str, Any]:
        """What ``config.json`` holds: format, model type, encoder and head configs and the
        record of the tokenizer (when there is one)."""
        if tokenizer is not None and tokenizer.vocab_size != self.config.vocab_size:
            raise ConfigError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                f"{self.config.vocab_size}: save the tokenizer the model was built for"
            )
        document = {
            "format_version": FORMAT_VERSION,
            "biotransformer_version": __version__,
            "model_type": type(self).__name__,
            "model": self.config.to_dict(),
            "head": self.head_config.to_dict(),
        }
        if tokenizer is not None:
            document["tokenizer"] = tokenizer_record(tokenizer)
        return document

    def _encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool,
        output_attentions: bool,
    ) -> EncoderOutput:
        return self.encoder(
            input_ids,
            attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )


def _token_loss(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy summed over tokens whose label is not -100: (loss, loss_sum, count)."""
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        weight=weight,
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    num_targets = (labels != IGNORE_INDEX).sum()
    return loss_sum / num_targets.clamp(min=1), loss_sum, num_targets


def _class_weights(head: LabelHeadConfig) -> torch.Tensor | None:
    return None if head.class_weights is None else torch.tensor(head.class_weights)


def set_class_weights(model: nn.Module, weights: list[float] | None) -> None:
    """Set the weights of a label head's loss after construction: ``class_weights`` of its
    head config (saved in ``config.json``, checked as the constructor checks it) and the
    loss's buffer. Weights computed from the data need no second build of the model."""
    model.head_config = dataclasses.replace(model.head_config, class_weights=weights)
    model.class_weights = _class_weights(model.head_config)


# ---------------------------------------------------------------------------------------------
# The four models
# ---------------------------------------------------------------------------------------------


class MaskedLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder (vocab_size) + bias, as in BERT and ESM-2."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(hidden)))) + self.bias  # (B, T, V)


class MaskedLM(BioTransformerModel):
    """Masked-token prediction; ``labels`` (B, T) hold the original ids at masked positions
    and -100 elsewhere. Logits are (B, T, vocab_size), or (num_targets, vocab_size) with
    labels and ``target_logits_only``."""

    head_config_class = MaskedLMHeadConfig
    head_config: MaskedLMHeadConfig

    def __init__(
        self, config: ModelConfig, head: HeadConfig | None = None, **head_options: Any
    ) -> None:
        super().__init__(config, head, **head_options)
        self.lm_head = MaskedLMHead(config)
        init_weights(self.lm_head, config.initializer_range)
        if config.tie_embeddings:
            self.tied_weight_keys = ("lm_head.decoder.weight",)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make the output projection the token embedding (``model.tie_embeddings``). Also
        called by Accelerate's FSDP after it rebuilds parameters from the meta device
        (``fsdp_cpu_ram_efficient_loading``), which would otherwise untie them."""
        if self.tied_weight_keys:
            self.lm_head.decoder.weight = self.encoder.embed_tokens.weight

    @property
    def task(self) -> TaskInfo:
        return TaskInfo("masked-lm")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        encoded = self._encode(input_ids, attention_mask, output_hidden_states, output_attentions)
        hidden = encoded.last_hidden_state  # (B, T, C)
        if labels is not None and self.head_config.target_logits_only:
            targets = labels != IGNORE_INDEX  # (B, T)
            hidden, labels = hidden[targets], labels[targets]  # (N, C), (N,)
        logits = self.lm_head(hidden)  # (B, T, V) or (N, V)
        output = ModelOutput(
            logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )
        if labels is not None:
            output.loss, output.loss_sum, output.num_targets = _token_loss(logits, labels, None)
        return output


class SequenceClassifier(BioTransformerModel):
    """One label per sequence (``single_label``: binary or multi-class, labels (B,) ids), or
    several (``multi_label``: labels (B, num_labels) of 0/1, BCE). Logits (B, num_labels)."""

    head_config_class = LabelHeadConfig
    head_config: LabelHeadConfig

    def __init__(
        self, config: ModelConfig, head: HeadConfig | None = None, **head_options: Any
    ) -> None:
        super().__init__(config, head, **head_options)
        head_config = self.head_config
        self.pooler = Pooler(head_config.pooling, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        if head_config.classifier == "esm":
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)
            init_weights(self.dense, config.initializer_range)
        self.classifier = nn.Linear(config.hidden_size, head_config.num_labels)  # type: ignore[arg-type]
        self.register_buffer("class_weights", _class_weights(head_config), persistent=False)
        init_weights(self.pooler, config.initializer_range)
        init_weights(self.classifier, config.initializer_range)

    @property
    def task(self) -> TaskInfo:
        head = self.head_config
        name = "multilabel" if head.problem_type == "multi_label" else "classification"
        return TaskInfo(name, head.labels, head.threshold, head.rc_average)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        encoded = self._encode(input_ids, attention_mask, output_hidden_states, output_attentions)
        pooled = self.dropout(self.pooler(encoded.last_hidden_state, attention_mask))  # (B, C)
        if self.head_config.classifier == "esm":
            pooled = self.dropout(torch.tanh(self.dense(pooled)))
        logits = self.classifier(pooled)  # (B, num_labels)
        output = ModelOutput(
            logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )
        if labels is not None:
            if self.head_config.problem_type == "multi_label":
                per_label = F.binary_cross_entropy_with_logits(
                    logits, labels.to(logits.dtype), pos_weight=self.class_weights, reduction="none"
                )
                loss_sum = per_label.mean(dim=-1).sum()
            else:
                loss_sum = F.cross_entropy(
                    logits, labels, weight=self.class_weights, reduction="sum"
                )
            output.loss_sum = loss_sum
            output.num_targets = torch.tensor(logits.size(0), device=logits.device)
            output.loss = loss_sum / logits.size(0)
        return output


class SequenceRegressor(BioTransformerModel):
    """Real values per sequence with MSE. Targets are standardised with ``target_mean`` and
    ``target_std`` (buffers saved with the model; set them with ``fit_target_scaling``) and
    the loss is computed on that scale; ``logits`` (B, num_outputs) are in the original units."""

    head_config_class = RegressorHeadConfig
    head_config: RegressorHeadConfig

    def __init__(
        self, config: ModelConfig, head: HeadConfig | None = None, **head_options: Any
    ) -> None:
        super().__init__(config, head, **head_options)
        num_outputs = self.head_config.num_outputs
        self.pooler = Pooler(self.head_config.pooling, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.regressor = nn.Linear(config.hidden_size, num_outputs)
        self.register_buffer("target_mean", torch.zeros(num_outputs))
        self.register_buffer("target_std", torch.ones(num_outputs))
        init_weights(self.pooler, config.initializer_range)
        init_weights(self.regressor, config.initializer_range)

    @property
    def task(self) -> TaskInfo:
        return TaskInfo("regression", rc_average=self.head_config.rc_average)

    @torch.no_grad()
    def fit_target_scaling(self, targets: torch.Tensor) -> None:
        """Store the mean and standard deviation of training targets (N,) or (N, num_outputs)."""
        targets = targets.reshape(targets.size(0), -1).to(self.target_mean)
        self.target_mean.copy_(targets.mean(dim=0))
        self.target_std.copy_(targets.std(dim=0, unbiased=False).clamp(min=1e-8))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        encoded = self._encode(input_ids, attention_mask, output_hidden_states, output_attentions)
        pooled = self.pooler(encoded.last_hidden_state, attention_mask)  # (B, C)
        standardised = self.regressor(self.dropout(pooled))  # (B, num_outputs)
        output = ModelOutput(
            logits=standardised * self.target_std + self.target_mean,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        if labels is not None:
            target = (labels.reshape(standardised.shape) - self.target_mean) / self.target_std
            loss_sum = F.mse_loss(standardised, target, reduction="none").mean(dim=-1).sum()
            output.loss_sum = loss_sum
            output.num_targets = torch.tensor(standardised.size(0), device=standardised.device)
            output.loss = loss_sum / standardised.size(0)
        return output


class TokenClassifier(BioTransformerModel):
    """One label per token (labels (B, T) ids, -100 ignored); logits (B, T, num_labels).
    ``pooling`` and ``problem_type`` do not apply (always single-label per token), nor do
    ``threshold`` (arg-max) and ``rc_average`` (per-token labels are strand-specific)."""

    head_config_class = LabelHeadConfig
    head_config: LabelHeadConfig

    def __init__(
        self, config: ModelConfig, head: HeadConfig | None = None, **head_options: Any
    ) -> None:
        super().__init__(config, head, **head_options)
        head_config = self.head_config
        if head_config.problem_type != "single_label":
            raise ConfigError("TokenClassifier supports problem_type='single_label' only")
        if head_config.classifier != "linear":
            raise ConfigError("TokenClassifier supports classifier='linear' only")
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_size, head_config.num_labels)  # type: ignore[arg-type]
        self.register_buffer("class_weights", _class_weights(head_config), persistent=False)
        init_weights(self.classifier, config.initializer_range)

    @property
    def task(self) -> TaskInfo:
        head = self.head_config
        return TaskInfo("token-classification", head.labels, head.threshold, head.rc_average)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        encoded = self._encode(input_ids, attention_mask, output_hidden_states, output_attentions)
        logits = self.classifier(self.dropout(encoded.last_hidden_state))  # (B, T, num_labels)
        output = ModelOutput(
            logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )
        if labels is not None:
            output.loss, output.loss_sum, output.num_targets = _token_loss(
                logits, labels, self.class_weights
            )
        return output


MODEL_CLASSES: dict[str, type[BioTransformerModel]] = {
    cls.__name__: cls for cls in (MaskedLM, SequenceClassifier, SequenceRegressor, TokenClassifier)
}


# ---------------------------------------------------------------------------------------------
# Loading model directories
# ---------------------------------------------------------------------------------------------


def load_model(
    directory: str | os.PathLike[str],
    model_class: type[BioTransformerModel] | str | None = None,
    *,
    require_tokenizer: bool = False,
    **head_options: Any,
) -> Any:
    """Rebuild the model saved in ``directory`` (in eval mode), with its tokenizer attached as
    ``model.tokenizer`` when ``tokenizer.json`` is there (required with ``require_tokenizer``,
    as by every command that reads sequences).

    With ``model_class`` (or ``head_options``) different from what was saved, the encoder is
    loaded and the head starts fresh: ``model.loading_info`` then lists the ``new`` weights
    (initialised, not loaded) and the ``unused`` ones (in the file, not in the model).
    """
    directory = Path(directory)
    restore_interrupted_directory(directory)
    document = _read_config(directory)
    saved_class = MODEL_CLASSES[document["model_type"]]
    if isinstance(model_class, str):
        if model_class not in MODEL_CLASSES:
            raise ConfigError(f"unknown model class {model_class!r}; known: {list(MODEL_CLASSES)}")
        model_class = MODEL_CLASSES[model_class]
    cls = model_class or saved_class
    exact = cls is saved_class and not head_options
    config_path = directory / CONFIG_FILE
    try:
        config = ModelConfig.from_dict(document["model"])
        saved_head = cls.head_config_class.from_dict(document["head"]) if exact else None
    except (ConfigError, TypeError, AttributeError, ValueError) as error:
        raise ModelDirectoryError(
            f"{config_path}: {error}. Fix: put back the config.json saved with this model, or "
            "re-save the model with biotransformer"
        ) from error
    model = cls(config, saved_head, **({} if exact else head_options))
    model.loading_info = _load_weights(model, directory / WEIGHTS_FILE, exact)
    if exact and (directory / TASK_FILE).is_file():
        _apply_task_file(model, directory / TASK_FILE)
    tokenizer_path = directory / TOKENIZER_FILE
    if tokenizer_path.exists():
        from biotransformer.tokenizers import Tokenizer

        try:
            model.tokenizer = Tokenizer.load(tokenizer_path)
        except (ValueError, KeyError, TypeError) as error:
            raise ModelDirectoryError(
                f"{tokenizer_path}: {error}. Fix: put back the tokenizer.json saved with this model"
            ) from error
        _check_tokenizer_matches(model.tokenizer, document, config, tokenizer_path)
    elif require_tokenizer:
        raise ModelDirectoryError(
            f"{tokenizer_path}: missing, so this model cannot read sequences. Fix: copy in the "
            "tokenizer.json the model was trained with (Python: "
            "save_pretrained(directory, tokenizer=...))"
        )
    return model.eval()


def _apply_task_file(model: BioTransformerModel, path: Path) -> None:
    """Fold the ``task.json`` of a directory written before ``config.json`` held the decision
    fields into the head config."""
    values = read_task_file(path, model.task)
    head = model.head_config
    known = {field.name for field in dataclasses.fields(head)}
    defaults = {"threshold": None, "rc_average": False}
    for name, value in values.items():
        if name not in known and value is not defaults[name]:
            raise ModelDirectoryError(
                f"{path}: {name} = {value!r} does not apply to a {model.task.task} model. Fix: "
                "delete the task.json"
            )
    model.head_config = dataclasses.replace(
        head, **{name: value for name, value in values.items() if name in known}
    )


def tokenizer_record(tokenizer: Tokenizer) -> dict[str, Any]:
    """What ``config.json`` records of the tokenizer a model was saved with (``tokenizer``)."""
    return {
        "spec": tokenizer.spec,
        "vocab_size": tokenizer.vocab_size,
        "sha256": tokenizer.fingerprint(),
    }


def _check_tokenizer_matches(
    tokenizer: Tokenizer, document: dict[str, Any], config: ModelConfig, path: Path
) -> None:
    """Refuse a ``tokenizer.json`` other than the one the model was saved with: against the
    record in ``config.json`` when there is one; directories saved before it existed are
    checked for the vocabulary size only (their ``pad_id``/``mask_id`` are the model's own and
    may differ from the tokenizer's, as a model built without them does)."""
    fix = "Fix: put back the tokenizer.json saved with this model"
    recorded = document.get("tokenizer")
    if recorded is not None:
        ours = tokenizer_record(tokenizer)
        differences = [
            key for key in ("spec", "vocab_size", "sha256") if recorded[key] != ours[key]
        ]
        if differences:
            what = {"sha256": "vocabulary"}.get(differences[0], differences[0])
            detail = (
                f" ({recorded[what]!r} in {CONFIG_FILE}, {ours[what]!r} here)"
                if what != "vocabulary"
                else ""
            )
            raise ModelDirectoryError(
                f"{path}: not the tokenizer this model was saved with: its {what} differs"
                f"{detail}. {fix}"
            )
    if tokenizer.vocab_size != config.vocab_size:
        raise ModelDirectoryError(
            f"{path}: {tokenizer.vocab_size} tokens, but {CONFIG_FILE} says vocab_size = "
            f"{config.vocab_size}. {fix}"
        )


def _read_config(directory: Path) -> dict[str, Any]:
    """``config.json``: a JSON object with a readable ``format_version`` and typed fields."""
    path = directory / CONFIG_FILE
    written_by = "a model directory written by biotransformer (finetune, pretrain or convert)"
    if not directory.is_dir():
        raise ModelDirectoryError(f"{directory}: not a directory. Fix: pass {written_by}")
    if not path.is_file():
        raise ModelDirectoryError(
            f"{path}: not found. Fix: pass {written_by} (it holds {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelDirectoryError(
            f"{path}: not valid JSON ({error}). Fix: restore the file or re-save the model "
            "with biotransformer"
        ) from error
    if not isinstance(document, dict):
        raise ModelDirectoryError(
            f"{path}: a JSON {type(document).__name__}, not an object; this is not a "
            f"biotransformer model config. Fix: pass {written_by}"
        )
    missing = [key for key in ("model_type", "model", "head") if key not in document]
    if missing:
        raise ModelDirectoryError(
            f"{path}: missing keys {missing}; this is not a biotransformer model config. "
            f"Fix: pass {written_by}"
        )
    version = document.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelDirectoryError(
            f"{path}: format_version = {version!r} must be a whole number >= 1. Fix: put back "
            "the config.json saved with this model, or re-save the model with biotransformer"
        )
    if version > FORMAT_VERSION:
        raise ModelDirectoryError(
            f"{path}: format_version {version} is newer than this biotransformer reads "
            f"({FORMAT_VERSION}). Fix: upgrade biotransformer"
        )
    expected = {"model_type": str, "model": dict, "head": dict, "tokenizer": (dict, type(None))}
    for key, kind in expected.items():
        if key in document and not isinstance(document[key], kind):
            raise ModelDirectoryError(
                f"{path}: field {key!r} = {_short(document[key])} has the wrong type. Fix: put "
                "back the config.json saved with this model, or re-save the model with "
                "biotransformer"
            )
    if document["model_type"] not in MODEL_CLASSES:
        raise ModelDirectoryError(
            f"{path}: unknown model_type {document['model_type']!r}; known: "
            f"{list(MODEL_CLASSES)}. Fix: check the file, or upgrade biotransformer"
        )
    recorded = document.get("tokenizer")
    if recorded is not None and (
        not isinstance(recorded.get("spec"), str)
        or not isinstance(recorded.get("vocab_size"), int)
        or not isinstance(recorded.get("sha256"), str)
    ):
        raise ModelDirectoryError(
            f"{path}: field 'tokenizer' must hold spec, vocab_size and sha256. Fix: put back "
            "the config.json saved with this model, or re-save the model with biotransformer"
        )
    return document


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _load_weights(model: BioTransformerModel, path: Path, exact: bool) -> dict[str, list[str]]:
    """Load ``path`` into ``model``: every key for an exact load, else the encoder (required)
    and whatever head weights match by name and shape. Returns ``{"new": [...], "unused":
    [...]}``."""
    if not path.is_file():
        raise ModelDirectoryError(
            f"{path}: not found. Fix: copy the whole model directory, or save the model again"
        )
    try:
        state = load_file(path)
    except Exception as error:
        raise ModelDirectoryError(
            f"{path}: cannot be read ({error}); the file is corrupted or truncated. Fix: copy "
            "it again from its source or save the model again"
        ) from error
    own = {k: v for k, v in model.state_dict().items() if k not in model.tied_weight_keys}
    for key, value in state.items():
        if key in own and value.shape != own[key].shape and (exact or key.startswith("encoder.")):
            raise ModelDirectoryError(
                f"{path}: weight {key!r} has shape {tuple(value.shape)} but {CONFIG_FILE} "
                f"describes {tuple(own[key].shape)}. Fix: the two files come from different "
                "models; put back the pair that was saved together"
            )
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    new = sorted(set(own) - set(loadable))
    unused = sorted(set(state) - set(loadable))
    missing_encoder = [key for key in new if key.startswith("encoder.")]
    if (exact and (new or unused)) or missing_encoder:
        raise ModelDirectoryError(
            f"{path}: does not match {CONFIG_FILE}: missing {missing_encoder if not exact else new}"
            f", unexpected {unused}. Fix: put back the pair of files that was saved together"
        )
    model.load_state_dict(loadable, strict=False)
    if new or unused:
        logger.info("new weights (initialised, not loaded): %s; unused weights: %s", new, unused)
    return {"new": new, "unused": unused}
