"""The Python API: load a model, embed, predict, score variants, fine-tune and pretrain.

Every command that runs a model calls these functions (``cli/`` parses flags into their
arguments), so a notebook and the command line compute the same numbers by one code path.
The model classes' methods ``model.embed``, ``model.predict`` and ``model.score_variants``
are these functions: ``heads`` (core) declares the methods and this module, a workflow,
registers itself as their implementation on import (``heads.register_inference``); importing
``biotransformer.load_model`` or a model class from ``biotransformer`` imports it.

Sequences are given as a file path (FASTA/FASTQ/CSV/TSV, read with the model's alphabet
check), a list of strings (ids ``"0"``, ``"1"``...), ``SequenceRecord``s, or a pandas
DataFrame (its ``sequence_column`` and optional ``id_column``). Training data is a path,
``(sequences, labels)``, records with labels, a mapping of columns, or a DataFrame; data
given in memory is written to a temporary CSV (or FASTA for pretraining) for the run and
removed after it (``config.yaml`` names that file; to resume such a run, pass files).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from biotransformer import hub
from biotransformer.config import FinetuneConfig, ReadOptions, RunConfig
from biotransformer.config.loading import load_config
from biotransformer.errors import ConfigError, InputError
from biotransformer.heads import (
    BioTransformerModel,
    MaskedLM,
    SequenceClassifier,
    SequenceRegressor,
    TokenClassifier,
    register_inference,
)
from biotransformer.inference import Embeddings, Predictions, embed_records, predict_records
from biotransformer.io import SequenceRecord, read_sequences
from biotransformer.tasks import TaskInfo
from biotransformer.tokenizers import Tokenizer
from biotransformer.variants import (
    DEFAULT_METHODS,
    Variant,
    check_variant,
    parse_mutations,
    read_reference,
    read_variants,
    score_head,
    score_masked_lm,
)
from biotransformer.windows import WindowOptions, first_window_size

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "BioTransformerModel",
    "Embeddings",
    "MaskedLM",
    "Predictions",
    "RunResult",
    "SequenceClassifier",
    "SequenceRegressor",
    "TokenClassifier",
    "VariantScores",
    "embed",
    "finetune",
    "load_model",
    "predict",
    "pretrain",
    "read_records",
    "score_variants",
]

PathLike = str | os.PathLike[str]
_LETTERS = re.compile(r"[A-Za-z*\-]+")  # a sequence, not a path
#: What the inference functions read: a file, sequences, records, or a pandas DataFrame.
Sequences = PathLike | Sequence[str] | Sequence[SequenceRecord] | Any
#: What the training functions read: a file, ``(sequences, labels)``, labelled records, a
#: mapping of columns (``{"sequence": [...], "label": [...]}``) or a pandas DataFrame.
LabelledData = PathLike | tuple[Sequence[str], Sequence[Any]] | Sequence[SequenceRecord] | Any


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def load_model(
    source: PathLike, *, require_tokenizer: bool = False, **head_options: Any
) -> BioTransformerModel:
    """The model ``source`` names, in eval mode with ``model.tokenizer`` and ``model.source``
    (its provenance): a model directory, ``hf:ORG/NAME[@REVISION]`` (a HuggingFace Hub
    repository through the HuggingFace cache; plain ``ORG/NAME`` when no such local path
    exists), ``hf:PATH`` (a HuggingFace ESM / ESM C directory) or ``fair-esm:PATH`` (an ESM-2
    ``.pt`` file); ``hub.load_model`` is the one dispatch. ``require_tokenizer`` refuses a
    model that cannot read sequences; ``model_class=`` and head options warm-start another
    head on the saved encoder, as ``heads.load_model``."""
    model: BioTransformerModel = hub.load_model(
        source, require_tokenizer=require_tokenizer, **head_options
    )
    return model


def _tokenizer_of(model: BioTransformerModel) -> Tokenizer:
    if model.tokenizer is None:
        raise ConfigError(
            "the model has no tokenizer, so it cannot read sequences. Fix: load a model "
            "directory holding tokenizer.json, or set model.tokenizer = Tokenizer.from_spec(...)"
        )
    return model.tokenizer


# ---------------------------------------------------------------------------------------------
# Sequences in
# ---------------------------------------------------------------------------------------------


def read_records(
    sequences: Sequences,
    tokenizer: Tokenizer,
    *,
    sequence_column: str | int = "sequence",
    id_column: str | int | None = None,
    duplicate_ids: Literal["error", "warn", "allow"] = "error",
) -> list[SequenceRecord]:
    """Unlabelled records of a file (read with ``tokenizer``'s alphabet check: a file of the
    other alphabet is refused), a list of strings, records, or a DataFrame."""
    if isinstance(sequences, (str, os.PathLike)):
        return _read_file(Path(sequences), tokenizer, sequence_column, id_column, duplicate_ids)
    if hasattr(sequences, "columns"):  # a pandas DataFrame
        frame: Any = sequences
        column = list(frame[sequence_column])
        names = range(len(column)) if id_column is None else frame[id_column]
        ids = [str(name) for name in names]
        return [SequenceRecord(i, str(s)) for i, s in zip(ids, column, strict=True)]
    items = list(sequences)
    if not items:
        raise InputError("no sequences given", fix="pass at least one sequence")
    if all(isinstance(item, SequenceRecord) for item in items):
        return items
    if all(isinstance(item, str) for item in items):
        return [SequenceRecord(str(i), sequence) for i, sequence in enumerate(items)]
    raise InputError(
        "sequences must be a path, a list of strings, SequenceRecords or a pandas DataFrame, "
        f"not a list holding {type(items[0]).__name__}",
        fix="pass a file path or a list of sequence strings",
    )


def _read_file(
    path: Path,
    tokenizer: Tokenizer,
    sequence_column: str | int,
    id_column: str | int | None,
    duplicate_ids: Literal["error", "warn", "allow"],
) -> list[SequenceRecord]:
    return list(iter_file_records(path, tokenizer, sequence_column, id_column, duplicate_ids))


def iter_file_records(
    path: PathLike,
    tokenizer: Tokenizer,
    sequence_column: str | int,
    id_column: str | int | None,
    duplicate_ids: Literal["error", "warn", "allow"],
) -> Iterator[SequenceRecord]:
    """The unlabelled records of a file one at a time (streamed commands), checked against
    ``tokenizer``'s alphabet."""
    try:
        yield from read_sequences(
            path,
            sequence_column=sequence_column,
            id_column=id_column,
            label_column=None,
            alphabet=tokenizer.alphabet,  # type: ignore[arg-type]
            duplicate_ids=duplicate_ids,
        )
    except InputError as error:
        if not error.problem.startswith("this looks like"):
            raise
        other = "DNA" if tokenizer.alphabet == "protein" else "protein"
        raise InputError(
            f"{error.problem}, and the model reads {tokenizer.alphabet}",
            path=error.path,
            record=error.record,
            line=error.line,
            fix=f"use a {other} model, or check the file",
        ) from None


@contextmanager
def naming_input(sequences: Sequences) -> Iterator[None]:
    """Errors about a record (tokenising, windows) name the input file it came from."""
    try:
        yield
    except InputError as error:
        if error.record is None or not isinstance(sequences, (str, os.PathLike)):
            raise
        raise error.with_path(sequences) from None


def window_options(
    model: BioTransformerModel, overlap: int | None = None, aggregate: str = "mean"
) -> WindowOptions:
    """How records longer than the model's ``max_length`` are cut; an overlap that is not
    smaller than the model's window (in letters) is refused before any work."""
    size = first_window_size(_tokenizer_of(model), model.config.max_length)
    if overlap is not None and overlap >= size:
        raise ConfigError(
            f"window overlap {overlap} (--window-overlap, window_overlap=) is not smaller than "
            f"the model's window of {size} letters. Fix: give an overlap below {size} "
            "(default: a quarter of the window)"
        )
    return WindowOptions(overlap=overlap, aggregate=aggregate)


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------


def embed(
    model: BioTransformerModel,
    sequences: Sequences,
    *,
    layers: Sequence[int] | None = None,
    per_token: bool = False,
    pooling: Literal["mean", "max"] = "mean",
    max_tokens: int = 16384,
    window_overlap: int | None = None,
    window_aggregate: Literal["mean", "max"] = "mean",
    sequence_column: str | int = "sequence",
    id_column: str | int | None = None,
    duplicate_ids: Literal["error", "warn", "allow"] = "error",
    accelerator: Accelerator | None = None,
) -> Embeddings:
    """Encoder embeddings, one row per input in input order (``Embeddings.pooled``, (N,
    L*D) float32 over the non-special tokens of the chosen ``layers``, concatenated; 0 is the
    embedding output, -1 the last layer) and with ``per_token`` every token's (``tokens``,
    ``offsets``: record i owns ``tokens[offsets[i]:offsets[i + 1]]``). ``pooling="max"``
    takes the element-wise maximum over tokens instead of the mean (per window, for a record
    cut into windows, whose rows are then combined by ``window_aggregate``). Records longer than the
    model's ``max_length`` are cut into windows overlapping by ``window_overlap`` letters;
    batches are filled up to ``max_tokens`` padded tokens. As ``biotransformer embed``."""
    records = read_records(
        sequences,
        _tokenizer_of(model),
        sequence_column=sequence_column,
        id_column=id_column,
        duplicate_ids=duplicate_ids,
    )
    windows = window_options(model, window_overlap, window_aggregate)
    with naming_input(sequences):
        return embed_records(
            model,
            records,
            layers=layers,
            per_token=per_token,
            pooling=pooling,
            max_tokens=max_tokens,
            accelerator=accelerator,
            windows=windows,
        )


def task_with_threshold(model: BioTransformerModel, threshold: float | None) -> TaskInfo:
    """The model's task, deciding at ``threshold`` when one is given."""
    task = model.task
    if threshold is not None:
        task.threshold = threshold
    return task


def predict(
    model: BioTransformerModel,
    sequences: Sequences,
    *,
    threshold: float | None = None,
    rc_average: bool | None = None,
    max_tokens: int = 16384,
    window_overlap: int | None = None,
    window_aggregate: Literal["mean", "max"] = "mean",
    sequence_column: str | int = "sequence",
    id_column: str | int | None = None,
    duplicate_ids: Literal["error", "warn", "allow"] = "error",
    accelerator: Accelerator | None = None,
) -> Predictions:
    """A fine-tuned head's predictions, one per input in input order: ``predicted`` labels
    (strings) and ``scores`` (probabilities per label, or values for regression; per token
    for token classification), decided with the threshold and strand averaging stored with
    the model (``threshold``, ``rc_average`` override them). The numbers of
    ``biotransformer predict``."""
    task = task_with_threshold(model, threshold)
    records = read_records(
        sequences,
        _tokenizer_of(model),
        sequence_column=sequence_column,
        id_column=id_column,
        duplicate_ids=duplicate_ids,
    )
    windows = window_options(model, window_overlap, window_aggregate)
    with naming_input(sequences):
        return predict_records(
            model,
            records,
            task,
            max_tokens=max_tokens,
            accelerator=accelerator,
            windows=windows,
            rc_average=rc_average,
        )


@dataclass
class VariantScores:
    """``scores`` per method or output (``masked_marginal``, ``delta_<label>``...), one
    value per variant of ``variants``, in order."""

    variants: list[Variant]
    scores: dict[str, np.ndarray]


def score_variants(
    model: BioTransformerModel,
    reference: PathLike | Mapping[str, str],
    variants: PathLike | Sequence[str] | Sequence[Variant],
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    batch_size: int = 16,
    max_tokens: int = 16384,
) -> VariantScores:
    """Substitution effects against ``reference`` (a FASTA path, or ``{id: sequence}``):
    log-odds of a masked LM (``methods``: ``masked_marginal``, ``wt_marginal``,
    ``pll_diff``), or a fine-tuned head's change in prediction. ``variants``: a TSV/VCF path,
    or mutations in protein notation (``"A42G"``, ``"A42G:L45P"``; ``"ID:A42G"``... is read
    as id then mutations only with several reference records: write ``"RECORD/A42G"``).
    The numbers of ``biotransformer score-variants``."""
    tokenizer = _tokenizer_of(model)
    if isinstance(reference, (str, os.PathLike)):
        sequences = read_reference(reference, alphabet=tokenizer.alphabet)  # type: ignore[arg-type]
    else:
        sequences = {name: sequence.upper() for name, sequence in reference.items()}
    if isinstance(variants, (str, os.PathLike)):
        chosen = read_variants(variants, sequences)
    else:
        chosen = [_variant(item, sequences) for item in variants]
    task = model.task
    if task.has_labels:
        scores = score_head(model, task, chosen, sequences, max_tokens=max_tokens)
    else:
        scores = score_masked_lm(model, chosen, sequences, methods=methods, batch_size=batch_size)
    return VariantScores(chosen, scores)


def _variant(item: str | Variant, reference: dict[str, str]) -> Variant:
    """A ``Variant`` from ``"A42G"`` (the only reference record) or ``"RECORD/A42G"``."""
    if isinstance(item, Variant):
        check_variant(item, reference)
        return item
    record, _, mutations = item.rpartition("/")
    if not record:
        if len(reference) != 1:
            raise InputError(
                f"variant {item!r} names no reference record, and the reference holds "
                f"{len(reference)}",
                fix=f"write RECORD/{item}, RECORD one of {list(reference)[:3]}",
            )
        record = next(iter(reference))
    if record not in reference:
        raise InputError(
            f"variant {item!r}: record {record!r} is not in the reference",
            fix=f"use one of {list(reference)[:3]}",
        )
    variant = Variant(item, record, tuple(parse_mutations(mutations)), None)
    check_variant(variant, reference)
    return variant


register_inference("embed", embed)
register_inference("predict", predict)
register_inference("score_variants", score_variants)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """A training run: its ``output_dir``, the ``model_dir`` it saved (the model selected on
    validation, for a fine-tune), ``metrics`` (``metrics.json``'s content), ``step`` (the
    optimizer step of that model) and ``outcome`` (``finished``, or ``interrupted`` by a
    signal: resume it with ``resume="latest"``). ``model`` loads the saved model (once)."""

    output_dir: Path
    model_dir: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    outcome: str = "finished"

    @cached_property
    def model(self) -> BioTransformerModel:
        """The saved model, loaded from ``model_dir``."""
        if self.model_dir is None:
            raise ConfigError(
                f"the run in {self.output_dir} was {self.outcome} before it saved a model. "
                "Fix: resume it (resume='latest')"
            )
        return load_model(self.model_dir)


def finetune(
    config: FinetuneConfig | PathLike | None = None,
    *,
    train: LabelledData | None = None,
    valid: LabelledData | None = None,
    test: LabelledData | None = None,
    task: str | None = None,
    model: PathLike | None = None,
    preset: str | None = None,
    out: PathLike | None = None,
    **keys: Any,
) -> RunResult:
    """Fine-tune a head on labelled data, select on validation, evaluate the test split
    once (``biotransformer finetune``): ``model`` warm-starts from a model directory,
    ``hf:PATH`` or ``fair-esm:PATH``; ``preset`` builds a new encoder. ``keys`` are the keys
    of ``FinetuneConfig`` (``epochs=2``, ``tokenizer="dna-kmer:k=3"``, ``lora="r=8"``,
    ``training={"lr": 1e-3}`` or ``**{"training.lr": 1e-3}``, ``read={"label_from":
    "key:class"}``, ``model_config={"num_layers": 2}`` for the new encoder's ModelConfig
    fields). ``config`` is a ``FinetuneConfig`` or a YAML file the arguments override."""
    values = dict(keys)
    if "model_config" in values:
        values["model"] = values.pop("model_config")
    named = {"task": task, "model_dir": model, "preset": preset, "output_dir": out}
    values.update({key: os.fspath(v) if key != "task" else v for key, v in named.items() if v})
    data = {"train": train, "valid": valid, "test": test}
    in_memory = [split for split, value in data.items() if _in_memory(value)]
    with tempfile.TemporaryDirectory(prefix="biotransformer-data-") as scratch:
        for split, value in data.items():
            if value is not None:
                values[split] = _labelled_file(value, Path(scratch) / f"{split}.csv", values)
        resolved = _config(FinetuneConfig, config, values)
        return run_finetune(resolved, keep_inputs=in_memory)


def run_finetune(config: FinetuneConfig, *, keep_inputs: Sequence[str] = ()) -> RunResult:
    """Run a resolved fine-tuning config (the command line's entry); ``keep_inputs``: the
    splits given in memory, whose temporary files the run keeps in ``OUT/inputs/``."""
    from biotransformer.finetuning import finetune as run

    result = run(config, keep_inputs=keep_inputs)
    model_dir = result.model_dir if result.outcome == "finished" else None
    return RunResult(result.output_dir, model_dir, result.metrics, result.best_step, result.outcome)


def pretrain(
    config: RunConfig | PathLike | None = None,
    *,
    train: PathLike | Sequence[PathLike] | Sequence[str] | None = None,
    out: PathLike | None = None,
    resume: PathLike | None = None,
    overwrite: bool = False,
    **keys: Any,
) -> RunResult:
    """Masked-LM pretraining (``biotransformer pretrain``) from a ``RunConfig``, a YAML file
    or keys: ``model={"preset": "tiny"}``, ``data={"tokenizer": "dna"}``, ``training=
    {"max_steps": 200}`` or dotted ``**{"training.lr": 1e-3}``. ``train`` is a FASTA path, a
    list of them, or a list of sequences (written to a temporary FASTA for the run); ``out``
    is ``training.output_dir``."""
    values = dict(keys)
    if out is not None:
        values["training.output_dir"] = os.fspath(out)
    with tempfile.TemporaryDirectory(prefix="biotransformer-data-") as scratch:
        written = Path(scratch) / "train.fasta"
        if train is not None:
            values["data.train_files"] = _fasta_files(train, written)
        resolved = _config(RunConfig, config, values)
        in_memory = written.exists()
        return run_pretrain(resolved, resume=resume, overwrite=overwrite, keep_inputs=in_memory)


def run_pretrain(
    config: RunConfig,
    *,
    resume: PathLike | None = None,
    overwrite: bool = False,
    keep_inputs: bool = False,
) -> RunResult:
    """Run a resolved pretraining config (the command line's entry); ``keep_inputs``: its
    FASTA was written from sequences in memory, and the run keeps a copy in ``OUT/inputs/``."""
    from biotransformer.train import pretrain as run

    result = run(config, resume=resume, overwrite=overwrite, keep_inputs=keep_inputs)
    metrics = _metrics_file(result.output_dir)
    return RunResult(result.output_dir, result.model_dir, metrics, result.step, result.outcome)


def _metrics_file(directory: Path) -> dict[str, Any]:
    path = directory / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _config(cls: Any, config: Any, values: dict[str, Any]) -> Any:
    """``config`` (a config object, a YAML path or None) with ``values`` applied, validated."""
    if isinstance(config, (FinetuneConfig, RunConfig)):
        return load_config(cls, values={**dataclasses.asdict(config), **values})
    return load_config(cls, config, values=values)


def _in_memory(data: LabelledData | None) -> bool:
    """Whether ``data`` is given in memory rather than as a path."""
    return data is not None and not isinstance(data, (str, os.PathLike))


def _labelled_file(data: LabelledData, path: Path, values: dict[str, Any]) -> str:
    """A path as given; data in memory written to ``path`` as CSV, in the columns the read
    options name (``sequence``, ``label`` by default)."""
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    read = ReadOptions(**{k: v for k, v in values.get("read", {}).items() if k != "group_column"})
    sequence_column, label_column = read.sequence_column, read.label_column
    if not isinstance(sequence_column, str) or not isinstance(label_column, str):
        raise ConfigError(
            "data given in memory is written with named columns: read.sequence_column and "
            "read.label_column must be names (or left as 'sequence' and 'label')"
        )
    sequences, labels = _columns(data, sequence_column, label_column)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([sequence_column, label_column])
        for sequence, label in zip(sequences, labels, strict=True):
            text = ",".join(label) if isinstance(label, tuple) else label
            writer.writerow([sequence, text])
    return str(path)


def _columns(data: Any, sequence_column: str, label_column: str) -> tuple[list[Any], list[Any]]:
    """(sequences, labels) of ``(sequences, labels)``, records, a mapping or a DataFrame."""
    if isinstance(data, tuple) and len(data) == 2:
        sequences, labels = list(data[0]), list(data[1])
    elif isinstance(data, Mapping) or hasattr(data, "columns"):
        sequences, labels = list(data[sequence_column]), list(data[label_column])
    elif isinstance(data, Sequence) and all(isinstance(r, SequenceRecord) for r in data):
        sequences = [record.sequence for record in data]
        labels = [record.label for record in data]
    else:
        raise InputError(
            f"training data of type {type(data).__name__} is not one of a path, "
            "(sequences, labels), labelled SequenceRecords, a mapping of columns or a DataFrame",
            fix="pass e.g. train=(['ACGT...', ...], [1, 0, ...])",
        )
    if len(sequences) != len(labels):
        raise InputError(
            f"{len(sequences)} sequences but {len(labels)} labels",
            fix="give one label per sequence",
        )
    if any(label is None for label in labels):
        raise InputError("a record has no label", fix="give every training sequence a label")
    return sequences, labels


def _fasta_files(train: PathLike | Sequence[Any], path: Path) -> list[str]:
    """FASTA paths as given; sequences in memory (strings of letters only, or records)
    written to ``path``."""
    if isinstance(train, (str, os.PathLike)):
        return [os.fspath(train)]
    items = list(train)
    if not all(isinstance(i, SequenceRecord) or _LETTERS.fullmatch(str(i)) for i in items):
        return [os.fspath(item) for item in items]
    with path.open("w", encoding="utf-8") as handle:
        for index, item in enumerate(items):
            sequence = item.sequence if isinstance(item, SequenceRecord) else str(item)
            handle.write(f">{index}\n{sequence}\n")
    return [str(path)]
