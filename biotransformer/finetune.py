"""Fine-tuning: labelled FASTA/CSV in, a selected model and trustworthy test numbers out.

``finetune(config)`` reads the splits (carving the missing validation/test splits out of the
training file without leakage, see ``splits``), encodes labels, builds the head model (warm
started from any model directory, or a new encoder from a preset), trains it with the one
training loop of ``biotransformer.train``, keeps the model that scores best on validation,
and evaluates the test split once, at the end, with that model. The output directory::

    model/            the selected model directory (config.json, model.safetensors,
                      tokenizer.json, task.json with the decision threshold); with LoRA,
                      the adapters merged into the encoder
    adapter/          with LoRA: the selected adapter and head weights (``lora.save_adapter``)
    imported/         with ``--model hf:PATH`` or ``fair-esm:PATH``: the converted base model
    metrics.json      validation and test metrics with bootstrap CIs, n, threshold, seed
    predictions_valid.tsv, predictions_test.tsv
    config.yaml       the resolved fine-tuning config
    run.json          provenance (versions, git commit, command, seed, split report)
    log.jsonl         training log (loss, lr; validation metrics at each evaluation)
    checkpoints/      while the run lasts: ``checkpointing.Checkpointer`` folders every
                      ``training.save_every`` steps and at the end, for ``resume``
    *.png, report.html
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from accelerate.utils import broadcast_object_list, set_seed

from biotransformer.atomic import atomic_directory, atomic_write, json_text, write_json
from biotransformer.checkpointing import Checkpointer, resolve_resume
from biotransformer.config import (
    ModelConfig,
    TrainingConfig,
    _coerce_float,
    _suggest,
    check_field_types,
    check_model_overrides,
    parse_override_value,
)
from biotransformer.data.collator import PaddingCollator
from biotransformer.data.sampler import TokenBudgetBatchSampler
from biotransformer.errors import ConfigError, InputError
from biotransformer.heads import CLASSIFIERS, MODEL_CLASSES, MODEL_FILES, load_model
from biotransformer.inference import (
    TASK_FILE,
    RecordDataset,
    TaskInfo,
    evaluate_records,
    label_targets,
    load_task,
    metrics_from_scores,
    predict_logits,
    predict_records,
    probabilities,
    token_targets,
    write_predictions_tsv,
)
from biotransformer.interop import model_directory
from biotransformer.io import SequenceRecord, guess_alphabet, read_sequences
from biotransformer.lora import (
    LoraSettings,
    apply_lora,
    load_adapter_weights,
    merge_lora,
    save_adapter,
)
from biotransformer.memory import preflight
from biotransformer.metrics import tune_threshold
from biotransformer.outputs import claim_run_directory, holds_files
from biotransformer.splits import deduplicate, leakage_report, split_records
from biotransformer.strands import (
    average_strands,
    require_dna,
    reverse_complement_record,
    strand_augmented,
)
from biotransformer.tokenizers import Tokenizer
from biotransformer.train import (
    BatchStream,
    LoopContext,
    MetricsLog,
    TrainerState,
    TrainingDiverged,
    build_optimizer,
    build_scheduler,
    compile_if_asked,
    count_targets,
    make_accelerator,
    provenance,
    restore_checkpoint,
    train_loop,
)
from biotransformer.visualize import write_run_report

TASKS = ("classification", "multilabel", "regression", "token-classification")
CLASS_TASKS = ("classification", "multilabel")  # the tasks whose labels are classes
LABEL_TYPES = {
    "classification": "class",
    "multilabel": "multilabel",
    "regression": "numeric",
    "token-classification": "class",
}
HEAD_CLASSES = {
    "classification": "SequenceClassifier",
    "multilabel": "SequenceClassifier",
    "regression": "SequenceRegressor",
    "token-classification": "TokenClassifier",
}
DEFAULT_PRESETS = {"dna": "dna-t6-8M", "protein": "protein-t6-8M"}
SELECT_METRICS = {
    "classification": "mcc",
    "multilabel": "mcc",
    "regression": "r2",
    "token-classification": "mcc",
}


@dataclass
class ReadOptions:
    """How to read records and labels; the options of ``io.read_sequences``, plus
    ``group_column``: a column (CSV/TSV) or a ``label_from`` spec (FASTA) whose value keeps
    related records in one split."""

    sequence_column: str | int = "sequence"
    label_column: str | int | None = "label"
    id_column: str | int | None = None
    label_from: str | None = None
    labels_file: str | None = None
    group_column: str | int | None = None
    duplicate_ids: str = "error"


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
    written; see ``outputs``): without it, a finished run there is refused."""

    train: str
    output_dir: str
    task: str = "classification"
    valid: str | None = None
    test: str | None = None
    model_dir: str | None = None
    preset: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    read: ReadOptions = field(default_factory=ReadOptions)
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    epochs: float = 3.0
    max_steps: int | None = None
    warmup_fraction: float = 0.06
    max_tokens: int = 8192
    max_length: int | None = None
    pooling: str = "mean"
    classifier: str | None = None
    freeze_encoder: bool = False
    lora: str | None = None
    class_weights: str | None = None
    pos_weight: float | str | None = None
    tune_threshold: bool = False
    select_metric: str | None = None
    evals_per_epoch: int = 1
    rc_augment: float = 0.0
    rc_average: bool = False
    bootstrap: int = 1000
    plots: bool = True
    resume: str | None = None
    overwrite: bool = False
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(lr=3e-4, schedule="linear", min_lr_ratio=0.0)
    )

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad value."""
        check_field_types(self, "")
        check_model_overrides(self.model)
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r} is not one of {list(TASKS)}")
        if self.model_dir is not None and (self.preset is not None or self.model):
            raise ConfigError(
                "give --model DIR (warm start) or --preset/model.* overrides, not both"
            )
        if self.epochs <= 0 and self.max_steps is None:
            raise ConfigError(f"epochs = {self.epochs} must be > 0 (--epochs)")
        for name, flag in (("max_tokens", "--max-tokens"), ("max_length", "--max-length")):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} = {value} must be >= 1 ({flag})")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps = {self.max_steps} must be >= 1 (or null: from epochs)")
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap = {self.bootstrap} must be >= 0 (--bootstrap)")
        if not isinstance(self.pos_weight, (str, type(None))) and self.pos_weight <= 0:
            raise ConfigError(f"pos_weight = {self.pos_weight} must be > 0 (--pos-weight)")
        if self.class_weights not in (None, "balanced"):
            raise ConfigError(f"class_weights {self.class_weights!r}: only 'balanced' is known")
        if isinstance(self.pos_weight, str) and self.pos_weight != "balanced":
            raise ConfigError(f"pos_weight {self.pos_weight!r}: give a number or 'balanced'")
        if self.classifier is not None:
            if self.classifier not in CLASSIFIERS:
                raise ConfigError(
                    f"classifier {self.classifier!r} is not one of {list(CLASSIFIERS)}"
                )
            if self.task not in CLASS_TASKS:
                raise ConfigError("classifier applies to classification and multilabel")
        if self.pos_weight is not None and self.task not in CLASS_TASKS:
            raise ConfigError("pos_weight applies to binary classification and multilabel")
        if self.tune_threshold and self.task not in CLASS_TASKS:
            raise ConfigError("tune_threshold applies to binary classification and multilabel")
        for name in ("valid_fraction", "test_fraction", "warmup_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} = {getattr(self, name)} must be in [0, 1)")
        if not 0.0 <= self.rc_augment <= 1.0:
            raise ConfigError(f"rc_augment = {self.rc_augment} must be in [0, 1]")
        if self.rc_average and self.task == "token-classification":
            raise ConfigError(
                "rc_average applies to sequence-level tasks; per-base labels are "
                "strand-specific: drop --rc-average"
            )
        if self.evals_per_epoch < 1:
            raise ConfigError(f"evals_per_epoch = {self.evals_per_epoch} must be >= 1")
        if self.lora is not None:
            if self.freeze_encoder:
                raise ConfigError("give --lora or --freeze-encoder, not both")
            LoraSettings.parse(self.lora)
        self.training.validate()

    def to_dict(self) -> dict[str, Any]:
        """A YAML-ready dict of every value."""
        return dataclasses.asdict(self)


def apply_overrides(config: FinetuneConfig, overrides: Sequence[str]) -> FinetuneConfig:
    """Apply ``key=value`` overrides (values parsed as YAML): ``training.KEY`` and
    ``read.KEY`` set those sections, ``model.KEY`` a ModelConfig field of a new model, a bare
    ``KEY`` a FinetuneConfig field. Unknown keys are errors naming the closest one."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} is not of the form key=value")
        value = parse_override_value(override, raw)
        section, _, name = key.strip().rpartition(".")
        if section == "model":
            known = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"]
            if name not in known:
                raise ConfigError(f"unknown key model.{name}{_suggest(name, known)}")
            config.model[name] = _coerce_float(value, ModelConfig, name)
            continue
        target = {"": config, "training": config.training, "read": config.read}.get(section)
        if target is None:
            raise ConfigError(
                f"override {override!r}: unknown section {section!r}; use training.KEY, "
                "read.KEY, model.KEY or a fine-tuning key"
            )
        known = [f.name for f in dataclasses.fields(target) if f.name not in ("training", "read")]
        if name not in known:
            where = f"{section}.{name}" if section else name
            raise ConfigError(f"unknown key {where}{_suggest(name, known)}")
        annotation = str(next(f.type for f in dataclasses.fields(target) if f.name == name))
        if "float" in annotation and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        setattr(target, name, value)
    return config


# ---------------------------------------------------------------------------------------------
# Data: reading, splitting, label encoding
# ---------------------------------------------------------------------------------------------


def read_labelled(
    path: str | Path,
    task: str,
    read: ReadOptions,
    *,
    labelled: bool = True,
    alphabet: Literal["dna", "protein"] | None = None,
) -> list[SequenceRecord]:
    """All records of a file with labels typed for ``task``; with ``alphabet``, records that
    look like the other alphabet are refused (see ``io.read_sequences``)."""
    records = list(
        read_sequences(
            path,
            sequence_column=read.sequence_column,
            label_column=read.label_column,
            id_column=read.id_column,
            label_from=read.label_from,
            labels_file=read.labels_file,
            label_type=LABEL_TYPES[task] if labelled else None,
            alphabet=alphabet,
            duplicate_ids=read.duplicate_ids,
        )
    )
    if not records:
        raise InputError("the file holds no records", path=path, fix="check the file")
    if labelled:
        for record in records:
            if record.label is None:
                raise InputError(
                    "the record has no label",
                    path=path,
                    record=record.id,
                    line=record.line,
                    fix="name the label with --label-column, --label-from or --labels-file",
                )
        if task == "classification":
            _check_one_spelling_per_class(path, records)
    return records


def _check_one_spelling_per_class(path: str | Path, records: Sequence[SequenceRecord]) -> None:
    """Class labels that are all numbers write each number one way: ``1`` and ``1.0`` would
    silently become two classes."""
    try:
        numbers = [float(str(record.label)) for record in records]
    except ValueError:
        return
    spellings: dict[float, str] = {}
    for record, number in zip(records, numbers, strict=True):
        first = spellings.setdefault(number, str(record.label))
        if first != str(record.label):
            raise InputError(
                f"class labels {first!r} and {record.label!r} are the same number written two "
                "ways (they would be two classes)",
                path=path,
                record=record.id,
                line=record.line,
                fix="write each class label one way",
            )


def read_groups(path: str | Path, read: ReadOptions) -> list[str]:
    """The group value of each record of ``path``, in record order."""
    group = read.group_column
    is_table = Path(str(path).removesuffix(".gz")).suffix.lower() in (".csv", ".tsv", ".tab")
    records = read_sequences(
        path,
        sequence_column=read.sequence_column,
        id_column=read.id_column,
        label_column=group if is_table else None,
        label_from=None if is_table else str(group),
        label_type="class",
    )
    return [str(record.label) for record in records]


def _natural_key(label: str) -> tuple:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def label_vocabulary(task: str, records: Sequence[SequenceRecord]) -> list[str]:
    """Sorted label names (numerically when they are numbers): classes, multilabel names, or
    the per-residue characters of token classification; empty for regression."""
    if task == "regression":
        return []
    names: set[str] = set()
    for record in records:
        label = record.label
        if task == "multilabel":
            names.update(label)  # type: ignore[arg-type]
        elif task == "token-classification":
            names.update(str(label))
        else:
            names.add(str(label))
    labels = sorted(names, key=_natural_key)
    if task == "classification" and len(labels) < 2:
        raise InputError(
            f"the training data has a single class {labels}",
            fix="classification needs at least two classes",
        )
    return labels


@dataclass
class SplitReport:
    """What happened to the data before training, for run.json and the log."""

    sizes: dict[str, int]
    removed_duplicates: int = 0
    conflicting_labels: int = 0
    cross_split_duplicates: int = 0
    cross_split_conflicting: int = 0
    examples: list[list[str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        sizes = ", ".join(f"{name} {n}" for name, n in self.sizes.items())
        return [
            f"splits: {sizes}",
            f"duplicates removed before splitting: {self.removed_duplicates} "
            f"({self.conflicting_labels} duplicated sequences with conflicting labels)",
            f"sequences shared between splits: {self.cross_split_duplicates} "
            f"({self.cross_split_conflicting} with conflicting labels)",
        ]


def prepare_splits(
    config: FinetuneConfig, alphabet: str
) -> tuple[dict[str, list[SequenceRecord]], SplitReport]:
    """Train/valid/test records: the given files, the missing splits carved out of train
    (deduplicated, stratified or by group), and a report of duplicates and leakage."""
    train = read_labelled(config.train, config.task, config.read)
    given = {
        name: read_labelled(path, config.task, config.read)
        for name, path in (("valid", config.valid), ("test", config.test))
        if path is not None
    }
    missing = {
        name: fraction
        for name, fraction in (("valid", config.valid_fraction), ("test", config.test_fraction))
        if name not in given and fraction > 0
    }
    removed = conflicting = 0
    if missing:
        groups = (
            None if config.read.group_column is None else read_groups(config.train, config.read)
        )
        try:
            result = split_records(
                train,
                fractions=missing,
                alphabet=alphabet,
                seed=config.training.seed,
                groups=groups,
            )
        except InputError as error:  # too few records to split: name the training file
            raise error.with_path(config.train) from None
        splits = {**result.splits, **given}
        removed = result.deduplicated.n_removed
        conflicting = result.deduplicated.n_conflicting
    else:
        splits = {"train": train, **given}
        within = deduplicate(train, alphabet)
        conflicting = within.n_conflicting
    if "valid" not in splits:
        raise ConfigError(
            "no validation split: give --valid FILE or a valid_fraction above 0 (the model is "
            "selected on validation)"
        )
    leaks = leakage_report(splits, alphabet)
    report = SplitReport(
        sizes={name: len(records) for name, records in splits.items()},
        removed_duplicates=removed,
        conflicting_labels=conflicting,
        cross_split_duplicates=len(leaks.groups),
        cross_split_conflicting=len(leaks.conflicting),
        examples=[list(group.ids[:4]) for group in leaks.groups[:5]],
    )
    return {name: splits[name] for name in ("train", "valid", "test") if name in splits}, report


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def loss_weights(
    config: FinetuneConfig, labels: list[str], targets: np.ndarray
) -> list[float] | None:
    """Class weights of the cross-entropy (single-label) or ``pos_weight`` of the BCE
    (multilabel) from ``--class-weights balanced`` / ``--pos-weight``."""
    if config.task == "multilabel":
        if config.pos_weight is None and config.class_weights is None:
            return None
        if config.pos_weight not in (None, "balanced"):
            return [float(config.pos_weight)] * len(labels)
        positives = targets.sum(axis=0)
        return [float((len(targets) - p) / max(p, 1)) for p in positives]
    if config.task not in ("classification", "token-classification"):
        return None
    counts = np.bincount(targets[targets >= 0], minlength=len(labels)).astype(float)
    if config.class_weights == "balanced":
        weights = counts.sum() / (len(labels) * np.maximum(counts, 1.0))
    else:
        weights = np.ones(len(labels))
    if config.pos_weight is not None:
        if len(labels) != 2:
            raise ConfigError("pos_weight needs a binary task; use --class-weights for more")
        weights[1] *= (
            counts[0] / max(counts[1], 1.0)
            if config.pos_weight == "balanced"
            else float(config.pos_weight)
        )
    if config.class_weights is None and config.pos_weight is None:
        return None
    return [float(w) for w in weights]


def build_model(
    config: FinetuneConfig,
    alphabet: str,
    labels: list[str],
    weights: list[float] | None,
    longest: int,
) -> torch.nn.Module:
    """The head model: warm started from ``config.model_dir`` (its encoder and tokenizer) or
    a new encoder of ``config.preset`` (default by alphabet) with ``config.tokenizer``."""
    cls = MODEL_CLASSES[HEAD_CLASSES[config.task]]
    head: dict[str, Any] = (
        {"pooling": config.pooling} if config.task != "token-classification" else {}
    )
    if config.task == "regression":
        head["num_outputs"] = 1
    else:
        head["label2id"] = {label: i for i, label in enumerate(labels)}
        head["class_weights"] = weights
        if config.classifier is not None:
            head["classifier"] = config.classifier
        if config.task == "multilabel":
            head["problem_type"] = "multi_label"
    if config.model_dir is not None:
        model = load_model(config.model_dir, model_class=cls, **head)
        if model.tokenizer is None:
            raise ConfigError(
                f"{config.model_dir} has no tokenizer.json: fine-tuning needs the tokenizer the "
                "model was trained with"
            )
        tokenizer = model.tokenizer
        if config.tokenizer is not None and config.tokenizer != tokenizer.spec:
            raise ConfigError(
                f"--tokenizer {config.tokenizer!r} differs from the model's {tokenizer.spec!r}: "
                "a warm-started model keeps its tokenizer; drop --tokenizer"
            )
    else:
        spec = config.tokenizer or ("protein" if alphabet == "protein" else "dna")
        tokenizer = Tokenizer.from_spec(spec)
        preset = config.preset or DEFAULT_PRESETS[alphabet]
        overrides = dict(config.model)
        overrides.setdefault(
            "max_length", max(ModelConfig.from_preset(preset, vocab_size=8).max_length, longest)
        )
        model = cls(
            ModelConfig.from_preset(
                preset, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, **overrides
            ),
            **head,
        )
        model.tokenizer = tokenizer
    if tokenizer.alphabet != alphabet:
        raise ConfigError(
            f"{config.train}: the data look like {alphabet}, but the tokenizer "
            f"{tokenizer.spec!r} reads {tokenizer.alphabet}. Fix: pick a {alphabet} model or "
            "tokenizer"
        )
    if model.config.position in ("rotary", "alibi") and model.config.max_length < longest:
        model.config.max_length = longest  # relative positions: no table limits the length
    if config.freeze_encoder:
        for parameter in model.encoder.parameters():
            parameter.requires_grad_(False)
    return model


def save_model_directory(model: torch.nn.Module, directory: Path, task: Mapping[str, Any]) -> None:
    """The model directory plus ``task.json``, replaced as a whole."""
    with atomic_directory(directory, replaces=MODEL_FILES) as staging:
        model.save_pretrained(staging / "model")
        for item in (staging / "model").iterdir():
            item.rename(staging / item.name)
        (staging / "model").rmdir()
        (staging / TASK_FILE).write_text(json_text(dict(task)))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    """Where the run wrote its outputs and the final metrics (none when a signal stopped
    the run: it then left a checkpoint to resume from)."""

    output_dir: Path
    model_dir: Path
    metrics: dict[str, Any]
    best_step: int | None
    seconds: float
    outcome: Literal["finished", "interrupted"] = "finished"


@dataclass
class Selection:
    """The best validation score so far and its step; saved in every checkpoint, so a
    resumed run keeps selecting against it. (A score of -inf is saved as null: strict JSON.)"""

    score: float = -math.inf
    step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"score": self.score if math.isfinite(self.score) else None, "step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.score = -math.inf if state["score"] is None else float(state["score"])
        self.step = None if state["step"] is None else int(state["step"])


def _targets(task: str, dataset: Any) -> np.ndarray:
    if task == "token-classification":
        return np.concatenate(dataset.labels)
    return np.stack(dataset.labels)


def _valid_loss(task: str, truth: np.ndarray, logits: np.ndarray, model: Any) -> float:
    """The unweighted training loss of the head on validation predictions."""
    if task == "regression":
        std = float(model.target_std[0])
        return float(np.mean(((logits[:, 0] - truth) / std) ** 2))
    if task == "multilabel":
        log_p = -np.logaddexp(0.0, -logits)
        log_not_p = -np.logaddexp(0.0, logits)
        return float(-np.mean(truth * log_p + (1 - truth) * log_not_p))
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(truth)), truth]))


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Fine-tune, select on validation, evaluate the test split once; see the module doc.
    ``output_dir`` is claimed for the run first (``outputs.claim_run_directory``)."""
    config.validate()
    accelerator = make_accelerator(config.training, project_dir=config.output_dir)
    with claim_run_directory(
        config.output_dir,
        command="finetune",
        inputs=finetune_inputs(config),
        overwrite=config.overwrite,
        resume=config.resume is not None,
        resumable=True,
        recognise=holds_files("run.json", "config.yaml"),
        accelerator=accelerator,
    ) as run:
        result = _finetune(config, accelerator)
        run.status = result.outcome
        return result


def finetune_inputs(config: FinetuneConfig) -> list[str | None]:
    """The files and directories a fine-tune reads: never inside its output directory."""
    base = config.model_dir
    if base is not None:
        base = base.split(":", 1)[1] if base.startswith(("hf:", "fair-esm:")) else base
    return [config.train, config.valid, config.test, config.read.labels_file, base]


def _finetune(config: FinetuneConfig, accelerator: Any) -> FinetuneResult:
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    training = dataclasses.replace(config.training, output_dir=str(output_dir))
    checkpoint_dir = output_dir / "checkpoints"
    resume_from = resolve_resume(
        config.resume, checkpoint_dir, kind="finetune", num_processes=accelerator.num_processes
    )

    first = next(iter(read_labelled(config.train, config.task, config.read)))
    alphabet = guess_alphabet(first.sequence)
    splits, report = prepare_splits(config, alphabet)
    for line in report.lines():
        accelerator.print(line)
    labels = label_vocabulary(config.task, splits["train"])
    task = TaskInfo(config.task, labels, rc_average=config.rc_average)

    def label_fn(record: SequenceRecord, offsets: np.ndarray) -> Any:
        if config.task == "token-classification":
            return token_targets(task, record, offsets)
        return label_targets(task, [record])[0]

    set_seed(training.seed)
    longest = max(len(r.sequence) for records in splits.values() for r in records) + 2
    train_targets = (
        label_targets(task, splits["train"]) if config.task != "token-classification" else None
    )
    base = import_base(config, accelerator)
    provisional = build_model(base, alphabet, labels, None, longest)
    tokenizer = provisional.tokenizer
    max_length = config.max_length or provisional.config.max_length
    if config.rc_average:
        require_dna(tokenizer, "reverse-complement averaging")
    datasets = {
        name: RecordDataset(records, tokenizer, max_length=max_length, labels=label_fn)
        for name, records in splits.items()
    }
    if train_targets is None:
        train_targets = _targets(config.task, datasets["train"])
    weights = loss_weights(config, labels, train_targets)
    set_seed(training.seed)
    model = build_model(base, alphabet, labels, weights, longest) if weights else provisional
    if config.task == "regression":
        model.fit_target_scaling(torch.as_tensor(train_targets, dtype=torch.float32))
    if config.lora is not None:
        apply_lora(model, LoraSettings.parse(config.lora))
    parameters = {
        "trainable": model.num_parameters(trainable_only=True),
        "total": model.num_parameters(),
    }
    accelerator.print(
        f"parameters: {parameters['trainable']:,} of {parameters['total']:,} trainable "
        f"({100 * parameters['trainable'] / parameters['total']:.2f}%)"
    )
    if config.rc_augment > 0:
        datasets["train"] = strand_augmented(
            splits["train"],
            lambda records: RecordDataset(
                records, tokenizer, max_length=max_length, labels=label_fn
            ),
            tokenizer,
            config.rc_augment,
            seed=training.seed,
        )

    sampler = TokenBudgetBatchSampler(
        datasets["train"].lengths,
        max(config.max_tokens, int(datasets["train"].lengths.max())),
        shuffle=True,
        seed=training.seed,
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
    )
    lengths = datasets["train"].lengths
    preflight(
        model.config,
        min(sampler.max_tokens, int(lengths.sum())),
        int(lengths.max()),
        device=str(accelerator.device),
    )
    steps_per_epoch = max(len(sampler) // training.gradient_accumulation_steps, 1)
    max_steps = config.max_steps or max(math.ceil(config.epochs * steps_per_epoch), 1)
    training.max_steps = max_steps
    training.warmup_steps = round(config.warmup_fraction * max_steps)
    training.eval_every = max(min(steps_per_epoch, max_steps) // config.evals_per_epoch, 1)
    training.log_every = min(training.log_every, max(training.eval_every, 1))

    compile_if_asked(model, training)
    optimizer = build_optimizer(model, training)
    scheduler = build_scheduler(optimizer, training)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    collator = PaddingCollator(tokenizer.pad_id, token_labels=config.task == "token-classification")
    batches = BatchStream(datasets["train"], sampler, collator)
    state = TrainerState()
    best = Selection()
    log = MetricsLog(accelerator, output_dir / "log.jsonl")
    checkpointer = Checkpointer(
        accelerator,
        checkpoint_dir,
        training.keep_last,
        kind="finetune",
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        state={"trainer": state, "data": batches, "selection": best},
    )
    if resume_from is not None:
        restore_checkpoint(checkpointer, resume_from, log)
    elif log.path.exists() and accelerator.is_main_process:
        log.path.unlink()
    model_dir = output_dir / "model"
    adapter_dir = output_dir / "adapter"
    select = config.select_metric or (
        "auroc" if config.tune_threshold else SELECT_METRICS[config.task]
    )
    valid_truth = _targets(config.task, datasets["valid"])
    valid_reverse = (
        RecordDataset(
            [reverse_complement_record(record) for record in splits["valid"]],
            tokenizer,
            max_length=max_length,
        )
        if config.rc_average
        else None
    )

    def evaluate() -> dict[str, float]:
        network = accelerator.unwrap_model(model, keep_torch_compile=False)
        logits = predict_logits(
            network, datasets["valid"], max_tokens=config.max_tokens, accelerator=accelerator
        )
        flat = np.concatenate(logits) if config.task == "token-classification" else np.stack(logits)
        truth = valid_truth
        if config.task == "token-classification":
            keep = truth >= 0
            flat, truth = flat[keep], truth[keep]
        token_task = (
            TaskInfo("classification", labels) if config.task == "token-classification" else task
        )
        scores = probabilities(token_task, flat)
        if valid_reverse is not None:
            reverse = predict_logits(
                network, valid_reverse, max_tokens=config.max_tokens, accelerator=accelerator
            )
            scores = average_strands(scores, probabilities(token_task, np.stack(reverse)))
        result = metrics_from_scores(token_task, truth, scores, bootstrap=0, seed=0)
        values = {f"valid_{name}": entry["value"] for name, entry in result["metrics"].items()}
        values["valid_loss"] = _valid_loss(config.task, truth, flat, network)
        if select not in result["metrics"]:
            raise ConfigError(f"select_metric {select!r} is not one of {sorted(result['metrics'])}")
        score = result["metrics"][select]["value"]
        score = -score if select in ("rmse", "mae") else score
        score = score if math.isfinite(score) else -math.inf
        if best.step is None or score > best.score:
            best.score, best.step = score, state.step
            if accelerator.is_main_process:
                if config.lora is None:
                    save_model_directory(network, model_dir, task.to_dict())
                else:  # merged into model/ at the end
                    save_adapter(network, adapter_dir)
            accelerator.wait_for_everyone()
        return values

    if accelerator.is_main_process and resume_from is None:
        resolved = {**config.to_dict(), "training": dataclasses.asdict(training)}
        with atomic_write(output_dir / "config.yaml") as handle:
            yaml.safe_dump(resolved, handle, sort_keys=False)
        run_info = {
            **provenance(training.seed),
            "num_processes": accelerator.num_processes,
            "alphabet": alphabet,
            "labels": labels,
            "base_model": base.model_dir,
            "parameters": parameters,
            "splits": dataclasses.asdict(report),
        }
        write_json(output_dir / "run.json", run_info)
    context = LoopContext(
        checkpointer=checkpointer,
        log=log,
        evaluate=evaluate,
        count=_target_counter(config.task),
        desc="finetune",
        resume_hint=f"rerun the same command with --resume latest (--out {output_dir})",
    )
    try:  # end_training ends the process group: the final evaluation gathers before it
        try:
            outcome = train_loop(
                accelerator, model, optimizer, scheduler, batches, state, training, context
            )
        except TrainingDiverged:
            fresh = checkpointer.last_saved_step is None  # nothing to resume from
            if accelerator.is_main_process and fresh and best.step is not None:
                # selected in this run, which diverged: not a result
                shutil.rmtree(model_dir, ignore_errors=True)
                shutil.rmtree(adapter_dir, ignore_errors=True)
            raise
        if outcome == "interrupted":
            elapsed = time.perf_counter() - started
            return FinetuneResult(output_dir, model_dir, {}, best.step, elapsed, outcome)
        if accelerator.is_main_process and config.lora is not None:
            # the selected adapters, merged: an ordinary model
            network = load_adapter_weights(
                accelerator.unwrap_model(model, keep_torch_compile=False), adapter_dir
            )
            save_model_directory(merge_lora(network), model_dir, task.to_dict())
        accelerator.wait_for_everyone()

        metrics = final_evaluation(config, model_dir, splits, accelerator, report, best.step)
        elapsed = time.perf_counter() - started
        if accelerator.is_main_process:
            metrics["seconds"] = elapsed
            write_json(output_dir / "metrics.json", metrics)
            checkpointer.remove_all()  # the run is complete
        accelerator.wait_for_everyone()
    finally:
        accelerator.end_training()
    return FinetuneResult(output_dir, model_dir, metrics, best.step, elapsed)


def import_base(config: FinetuneConfig, accelerator: Any) -> FinetuneConfig:
    """``config`` with ``model_dir`` a model directory: ``hf:PATH`` and ``fair-esm:PATH``
    are converted into ``OUT/imported`` once, by the main process."""
    if config.model_dir is None:
        return config
    resolved: list[str | None] = [None]
    if accelerator.is_main_process:
        imported = Path(config.output_dir) / "imported"
        resolved = [str(model_directory(config.model_dir, imported))]
    broadcast_object_list(resolved)
    return dataclasses.replace(config, model_dir=resolved[0])


def _target_counter(task: str) -> Any:
    """What the loss of a micro-batch is normalised by: tokens with a label for token
    classification, sequences otherwise."""
    if task == "token-classification":
        return count_targets
    return lambda batch: len(batch["input_ids"])


def final_evaluation(
    config: FinetuneConfig,
    model_dir: Path,
    splits: Mapping[str, list[SequenceRecord]],
    accelerator: Any,
    report: SplitReport,
    best_step: int,
) -> dict[str, Any]:
    """Reload the selected model; tune the threshold on validation if asked (stored in
    ``task.json``); evaluate validation and, once, test; write the prediction TSVs."""
    model = load_model(model_dir).to(accelerator.device)
    task = load_task(model, model_dir)
    if config.tune_threshold and task.problem in ("binary", "multilabel"):
        valid = predict_records(
            model, splits["valid"], task, max_tokens=config.max_tokens, accelerator=accelerator
        )
        truth = label_targets(task, splits["valid"])
        scores = valid.scores[:, 1] if task.problem == "binary" else valid.scores
        tuned = tune_threshold(truth, scores, "mcc")
        task.threshold = tuned.tolist() if isinstance(tuned, np.ndarray) else float(tuned)
        if accelerator.is_main_process:
            write_json(model_dir / TASK_FILE, task.to_dict())
    output_dir = Path(config.output_dir)
    metrics: dict[str, Any] = {
        "task": config.task,
        "labels": task.labels,
        "threshold": task.threshold,
        "rc_average": task.rc_average,
        "seed": config.training.seed,
        "bootstrap_seed": 0,
        "best_step": best_step,
        "splits": dataclasses.asdict(report),
    }
    for name in ("valid", "test"):
        if name not in splits:
            continue
        result, predictions = evaluate_records(
            model,
            splits[name],
            task,
            max_tokens=config.max_tokens,
            bootstrap=config.bootstrap,
            seed=0,
            accelerator=accelerator,
        )
        metrics[name] = result
        if predictions is not None and accelerator.is_main_process:
            write_predictions_tsv(predictions, output_dir / f"predictions_{name}.tsv")
        last_split, last_predictions = name, predictions
    if config.plots and accelerator.is_main_process:
        sections = {name: metrics[name] for name in ("valid", "test") if name in metrics}
        write_run_report(
            output_dir,
            task,
            splits[last_split],
            last_predictions,
            sections,
            log_path=output_dir / "log.jsonl",
        )
    return metrics
