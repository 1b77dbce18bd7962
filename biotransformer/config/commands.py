"""The config tree of each command: ``RunConfig`` (pretrain: ``model``, ``data``,
``training``), ``FinetuneConfig`` (with its ``read`` and ``training`` sections) and
``QuickstartConfig``. Each field states its default, and (``option``) its help text, domain
and choices, once: the command-line flags take them from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from biotransformer.config.fields import (
    check_field_types,
    column,
    fraction,
    non_negative_int,
    option,
    positive_float,
    positive_int,
    probability,
    require,
)
from biotransformer.config.model import ModelConfig
from biotransformer.errors import ConfigError
from biotransformer.io import DUPLICATE_ID_POLICIES
from biotransformer.tasks import FINETUNE_TASKS, TASKS

# ---------------------------------------------------------------------------------------------
# Choices stated once: the flags, the configs and the heads read them from here
# ---------------------------------------------------------------------------------------------

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
            require(getattr(self, name) >= 1, f"data.{name}", getattr(self, name), ">= 1")
        for name in ("stride", "span_length"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"data.{name}", value, ">= 1 (or null)")
        for name in ("num_workers", "seed"):
            require(getattr(self, name) >= 0, f"data.{name}", getattr(self, name), ">= 0")
        require(
            0.0 <= self.valid_fraction < 1.0,
            "data.valid_fraction",
            self.valid_fraction,
            "in [0, 1)",
        )
        require(0.0 < self.mask_rate < 1.0, "data.mask_rate", self.mask_rate, "in (0, 1)")
        require(
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
    lr: float | None = option(
        5e-4,
        help="peak learning rate (finetune's default: 0.002 for a new encoder, 0.0003 warm "
        "started)",
        domain=positive_float,
    )
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
        require(self.weight_decay >= 0, "training.weight_decay", self.weight_decay, ">= 0")
        require(self.eps > 0, "training.eps", self.eps, "> 0")
        require(
            len(self.betas) == 2 and all(0.0 <= beta < 1.0 for beta in self.betas),
            "training.betas",
            self.betas,
            "two numbers in [0, 1)",
        )
        for name in ("max_steps", "gradient_accumulation_steps", "log_every", "keep_last"):
            require(getattr(self, name) >= 1, f"training.{name}", getattr(self, name), ">= 1")
        for name in ("warmup_steps", "save_every", "eval_every"):
            require(getattr(self, name) >= 0, f"training.{name}", getattr(self, name), ">= 0")
        require(
            0.0 <= self.min_lr_ratio <= 1.0, "training.min_lr_ratio", self.min_lr_ratio, "in [0, 1]"
        )
        if self.max_grad_norm is not None:
            require(
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
        if self.training.lr is None:
            raise ConfigError("training.lr is null: pretraining needs a learning rate")
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
    Fields left None (``preset``, ``tokenizer``, ``epochs``, ``warmup_fraction``,
    ``max_tokens``, ``evals_per_epoch``, ``patience``, ``training.lr``) are decided by
    ``finetune_defaults`` from the data and the start; a value given is kept.
    The model is evaluated on validation ``evals_per_epoch`` times per epoch (or per run, when
    the run is shorter than an epoch) and at the end; the best by ``select_metric`` is kept
    (default: MCC, R^2 for regression, AUROC with ``tune_threshold``, whose threshold is tuned
    after selection); ``patience`` evaluations without a better one stop the run early.
    ``classifier`` (classification, multilabel): ``linear`` or ``esm`` (HF's
    dense-tanh-linear head; with ``pooling='cls'`` the model exports to HuggingFace); None
    keeps a warm-started classifier's own head and gives a new one ``linear``.
    ``rc_augment`` (DNA only) serves each training sample reverse-complemented with that
    probability, drawn from (seed, epoch, index) (see ``strands``). ``rc_average`` (DNA,
    sequence-level tasks) scores validation, test and later predictions as the mean over both
    strands; it is stored in ``task.json`` as the model's default.
    ``model_dir`` is a model directory, or a Hub name / ``hf:PATH`` / ``fair-esm:PATH``
    converted into ``output_dir/imported`` (``hub.import_model``). ``lora`` (``r=8,alpha=16``,
    see ``LoraSettings.parse``) trains LoRA adapters and the head only, saves them to
    ``output_dir/adapter`` and merges them into ``output_dir/model``.
    ``resume`` (``latest`` or a checkpoint folder) continues a run from its checkpoints
    (``training.save_every``, ``training.keep_last``); they are removed when the run ends.
    ``overwrite`` replaces an earlier run in ``output_dir`` (only the files it recorded as
    written; see ``outputs``): without it, a finished run there is refused.
    The run resolves these and ``training.max_steps``, ``warmup_steps`` and ``eval_every``
    before it starts, prints them and writes them, as they ran, to ``config.yaml``."""

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
        "hf:ORG/NAME[@REVISION] (a HuggingFace Hub ESM model, through the HF cache; plain "
        "ORG/NAME when no such local path exists), hf:PATH (a local HuggingFace ESM "
        "directory) or fair-esm:PATH (an ESM-2 .pt file), converted into OUT/imported; its "
        "tokenizer is used",
        flag={"metavar": "MODEL"},
    )
    preset: str | None = option(
        None,
        help="architecture of a new model (default: small, 2 layers of width 64)",
    )
    model: dict[str, Any] = option(
        help="ModelConfig fields of a new model", factory=dict, model_keys=()
    )
    tokenizer: str | None = option(
        None,
        help="tokenizer of a new model: dna, dna-kmer:k=6, protein... (default: by the "
        "data: protein; DNA 3-mers from a median 200 bp, overlapping 6-mers for 10000+ "
        "shorter records, else single bases)",
        flag={"metavar": "SPEC"},
    )
    read: ReadOptions = field(default_factory=ReadOptions)
    valid_fraction: float = option(0.1, help="share of train for validation", domain=fraction)
    test_fraction: float = option(0.1, help="share of train for test", domain=fraction)
    epochs: float | None = option(
        None,
        help="passes over train (default: 10 for a new encoder, 3 warm started, within "
        "3000 to 6000 optimizer steps for a new encoder, 1000 to 3000 warm started)",
        domain=positive_float,
    )
    max_steps: int | None = option(
        None, help="optimizer steps (default: from epochs)", domain=positive_int
    )
    warmup_fraction: float | None = option(
        None,
        help="share of the steps that warm the learning rate up (default: 0.1 for a new "
        "encoder, 0.06 warm started)",
        domain=fraction,
    )
    max_tokens: int | None = option(
        None,
        help="padded tokens per batch; batches are filled by length (default: about 32 "
        "records, fewer for a small set)",
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
    evals_per_epoch: int | None = option(
        None,
        help="validation evaluations per epoch (default: about 20 per run, at least one per epoch)",
        domain=positive_int,
    )
    patience: int | None = option(
        None,
        help="stop after this many validation evaluations without a better score (default "
        "5; 0: never stop early)",
        domain=non_negative_int,
    )
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
        default_factory=lambda: TrainingConfig(lr=None, schedule="linear", min_lr_ratio=0.0)
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
        spec = TASKS[self.task]
        if self.classifier is not None and not spec.classes:
            raise ConfigError("classifier applies to classification and multilabel")
        if self.pos_weight is not None and not spec.classes:
            raise ConfigError("pos_weight applies to binary classification and multilabel")
        if self.tune_threshold and not spec.classes:
            raise ConfigError("tune_threshold applies to binary classification and multilabel")
        if self.rc_average and spec.per_token:
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
