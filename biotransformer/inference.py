"""Batched inference over sequence records: predictions, embeddings, evaluation against labels.

Records are tokenized once, batched by token budget (``TokenBudgetBatchSampler``, no
shuffling) and run through the model without gradients. Under several processes each rank
runs its share and the per-sample results are gathered with their sample indices and put back
in input order, duplicates (the sampler may repeat a batch to even out ranks) dropped: a
multi-process run returns exactly what a single process does.

Records longer than the model's ``max_length`` tokens are cut into windows (``windows``):
sequence outputs are aggregated over a record's windows, token outputs stitched per base.
``rc_average`` averages the sequence outputs of both DNA strands (``strands``).

What a model predicts and how it decides (task, labels, threshold, strand averaging) is its
head's: ``model.task``, a ``tasks.TaskInfo``; the functions here take that task (a command's
``--threshold`` or ``--rc-average`` changes its copy).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from biotransformer.constants import IGNORE_INDEX, POOLINGS
from biotransformer.data.collator import MaskingCollator, PaddingCollator
from biotransformer.data.sampler import TokenBudgetBatchSampler
from biotransformer.errors import ConfigError, InputError
from biotransformer.io import SequenceRecord
from biotransformer.strands import average_strands, require_dna, reverse_complement_record
from biotransformer.streaming import EmbeddingsStream, TableStream
from biotransformer.tasks import TaskInfo, format_number
from biotransformer.windows import (
    RunningAggregate,
    WindowOptions,
    WindowPlan,
    encode_records,
    plan_windows,
    tokens_to_bases,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

    from biotransformer.tokenizers import Tokenizer

ENCODE_CHUNK = 2048
#: Records run together, written together and resumed from (``record_chunks``); a chunk also
#: ends once it holds ``CHUNK_LETTERS`` letters.
CHUNK_RECORDS = 4096
CHUNK_LETTERS = 1 << 22


# ---------------------------------------------------------------------------------------------
# Tokenized records
# ---------------------------------------------------------------------------------------------


class RecordDataset(Dataset):
    """Records tokenized once; items ``{"index", "input_ids"[, "labels"]}``.

    ``labels`` is a function from (record, token offsets (n, 2)) to the item's labels, or
    None for unlabelled inference.
    """

    def __init__(
        self,
        records: Sequence[SequenceRecord],
        tokenizer: Tokenizer,
        *,
        max_length: int | None = None,
        labels: Callable[[SequenceRecord, np.ndarray], Any] | None = None,
    ) -> None:
        if not records:
            raise InputError("no records to run", fix="check the input file")
        self.records = list(records)
        self.ids: list[np.ndarray] = []
        self.labels: list[Any] | None = None if labels is None else []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for start in range(0, len(self.records), ENCODE_CHUNK):
                chunk = self.records[start : start + ENCODE_CHUNK]
                batch = encode_records(tokenizer, chunk, max_length=max_length, return_offsets=True)
                lengths = batch["attention_mask"].sum(axis=1)
                for row, length, record, offsets in zip(
                    batch["input_ids"], lengths, chunk, batch["offsets"], strict=True
                ):
                    self.ids.append(row[:length].copy())
                    if self.labels is not None:
                        self.labels.append(labels(record, offsets))
        truncated = sum(1 for warning in caught if "truncated" in str(warning.message))
        if truncated:
            warnings.warn(
                f"some sequences are longer than max_length={max_length} tokens and were "
                "cropped to their first tokens",
                stacklevel=2,
            )
        self.lengths = np.array([len(ids) for ids in self.ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"index": index, "input_ids": self.ids[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


# ---------------------------------------------------------------------------------------------
# Running the model
# ---------------------------------------------------------------------------------------------


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def map_batches(
    model: torch.nn.Module,
    dataset: Dataset,
    step: Callable[[torch.nn.Module, dict[str, torch.Tensor]], list[Any]],
    *,
    max_tokens: int,
    collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]] | None = None,
    accelerator: Accelerator | None = None,
) -> list[Any]:
    """``step(model, batch)`` returns one result per sample of the batch; the results of all
    samples come back in dataset order, gathered from every process."""
    num_processes = 1 if accelerator is None else accelerator.num_processes
    rank = 0 if accelerator is None else accelerator.process_index
    lengths = np.asarray(dataset.lengths)
    sampler = TokenBudgetBatchSampler(
        lengths,
        max(max_tokens, int(lengths.max())),
        shuffle=False,
        num_replicas=num_processes,
        rank=rank,
    )
    collate = collate_fn or PaddingCollator(pad_id=_pad_id(model))
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    network = (
        model if accelerator is None else accelerator.unwrap_model(model, keep_torch_compile=False)
    )
    was_training = network.training
    network.eval()
    device = _device_of(network)
    found: list[tuple[int, Any]] = []
    for batch in loader:
        indices = batch.pop("index").tolist()
        batch = {key: value.to(device) for key, value in batch.items()}
        found.extend(zip(indices, step(network, batch), strict=True))
    network.train(was_training)
    if num_processes > 1:
        from accelerate.utils import gather_object

        found = gather_object(found)
    by_index = dict(found)
    return [by_index[index] for index in range(len(dataset))]


def _pad_id(model: torch.nn.Module) -> int:
    pad_id = model.config.pad_id
    return 0 if pad_id is None else int(pad_id)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _logits_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Per-sample logits: (C,) for sequence heads, (T_i, C) for token heads."""
    output = model(batch["input_ids"], batch["attention_mask"])
    logits = _numpy(output.logits)
    if logits.ndim == 2:
        return list(logits)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    return [row[:length] for row, length in zip(logits, lengths, strict=True)]


def predict_logits(
    model: torch.nn.Module,
    dataset: RecordDataset,
    *,
    max_tokens: int = 16384,
    accelerator: Accelerator | None = None,
) -> list[np.ndarray]:
    """The model's raw outputs per record, in record order."""
    return map_batches(model, dataset, _logits_step, max_tokens=max_tokens, accelerator=accelerator)


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Per record: ``scores`` (probabilities, or values for regression; for token tasks one
    (T_i, C) array per record, or (L_i, C) per base for a record cut into windows) and
    ``predicted`` labels as strings; ``windows``: how many windows each record was cut into."""

    ids: list[str]
    task: TaskInfo
    scores: Any
    predicted: list[str]
    windows: np.ndarray | None = None

    def per_base(self, index: int) -> bool:
        """Whether the token scores of record ``index`` are per base (it was cut)."""
        return self.windows is not None and self.windows[index] > 1


def record_chunks(
    records: Iterable[SequenceRecord],
    *,
    max_records: int | None = None,
    max_letters: int = CHUNK_LETTERS,
) -> Iterator[list[SequenceRecord]]:
    """``records`` in consecutive lists of at most ``max_records`` records (default
    ``CHUNK_RECORDS``), or fewer once they reach ``max_letters`` letters: the unit of
    streaming. The cuts depend only on the records from the last cut on, so a run resumed at a
    cut meets the same chunks."""
    max_records = max_records or CHUNK_RECORDS
    chunk: list[SequenceRecord] = []
    letters = 0
    for record in records:
        chunk.append(record)
        letters += len(record.sequence)
        if len(chunk) >= max_records or letters >= max_letters:
            yield chunk
            chunk, letters = [], 0
    if chunk:
        yield chunk


def predict_records(
    model: torch.nn.Module,
    records: Sequence[SequenceRecord],
    task: TaskInfo,
    *,
    max_tokens: int = 16384,
    accelerator: Accelerator | None = None,
    windows: WindowOptions | None = None,
    rc_average: bool | None = None,
) -> Predictions:
    """Predictions for ``records`` in their order; long records are cut into windows, and
    ``rc_average`` averages both strands' scores (DNA, sequence-level tasks; None: the
    task's own ``rc_average``). All in memory: ``iter_predictions`` streams."""
    parts = list(
        iter_predictions(
            model,
            records,
            task,
            max_tokens=max_tokens,
            accelerator=accelerator,
            windows=windows,
            rc_average=rc_average,
        )
    )
    if not parts:
        raise InputError("no records to run", fix="check the input file")
    if len(parts) == 1:
        return parts[0]
    scores: Any = (
        [row for part in parts for row in part.scores]
        if task.spec.per_token
        else np.concatenate([part.scores for part in parts])
    )
    return Predictions(
        [name for part in parts for name in part.ids],
        task,
        scores,
        [label for part in parts for label in part.predicted],
        np.concatenate([part.windows for part in parts]),
    )


def iter_predictions(
    model: torch.nn.Module,
    records: Iterable[SequenceRecord],
    task: TaskInfo,
    *,
    max_tokens: int = 16384,
    accelerator: Accelerator | None = None,
    windows: WindowOptions | None = None,
    rc_average: bool | None = None,
    chunk_records: int | None = None,
) -> Iterator[Predictions]:
    """``Predictions`` of ``records`` chunk by chunk (``record_chunks`` of ``chunk_records``),
    in record order: memory is set by a chunk, not by the number of records."""
    rc_average = task.rc_average if rc_average is None else rc_average
    if not task.has_labels:
        raise ConfigError(
            "a masked-LM model predicts tokens, not labels: fine-tune it first "
            "(biotransformer finetune --model DIR ...), or use 'embed'"
        )
    if rc_average:
        require_dna(model.tokenizer, "reverse-complement averaging")
        if task.spec.per_token:
            raise ConfigError(
                "reverse-complement averaging applies to sequence-level outputs; per-base "
                "labels are strand-specific: drop --rc-average"
            )
    windows = windows or WindowOptions()
    for chunk in record_chunks(records, max_records=chunk_records):
        yield _predict_chunk(model, chunk, task, max_tokens, accelerator, windows, rc_average)


def _predict_chunk(
    model: torch.nn.Module,
    records: list[SequenceRecord],
    task: TaskInfo,
    max_tokens: int,
    accelerator: Accelerator | None,
    windows: WindowOptions,
    rc_average: bool,
) -> Predictions:
    """Predictions for one chunk of records; sequence-level scores are run ``CHUNK_LETTERS``
    letters of windows at a time and averaged (or maxed) over each record's windows as they
    come, so a chromosome costs one group of windows."""
    if rc_average:
        records = records + [reverse_complement_record(record) for record in records]
    plan = plan_windows(records, model.tokenizer, model.config.max_length, windows)
    counts = plan.windows_per_record()
    if task.spec.per_token:
        dataset = RecordDataset(plan.records, model.tokenizer, max_length=model.config.max_length)
        logits = predict_logits(model, dataset, max_tokens=max_tokens, accelerator=accelerator)
        return _token_predictions(model, task, records, plan, dataset, logits, counts)
    running = RunningAggregate(windows.aggregate, len(records))
    for group in plan.groups(CHUNK_LETTERS):
        dataset = RecordDataset(
            plan.window_records(group), model.tokenizer, max_length=model.config.max_length
        )
        logits = predict_logits(model, dataset, max_tokens=max_tokens, accelerator=accelerator)
        running.add(plan.owner[group], task.probabilities(np.stack(logits)))
    scores = running.result()
    if rc_average:
        half = len(records) // 2
        scores = average_strands(scores[:half], scores[half:])
        records, counts = records[:half], np.maximum(counts[:half], counts[half:])
    return Predictions(
        [record.id for record in records], task, scores, task.label_predictions(scores), counts
    )


def _token_predictions(
    model: torch.nn.Module,
    task: TaskInfo,
    records: Sequence[SequenceRecord],
    plan: WindowPlan,
    dataset: RecordDataset,
    logits: list[np.ndarray],
    counts: np.ndarray,
) -> Predictions:
    """Per-token scores and labels; a record cut into windows gets them per base."""
    scores = [task.probabilities(row) for row in logits]
    content = [_content(model, dataset, n) for n in range(len(scores))]
    if plan.cut:
        per_base = [
            tokens_to_bases(row, model.tokenizer.offsets(record.sequence), len(record.sequence))
            for row, record in zip(scores, plan.records, strict=True)
        ]
        stitched = plan.stitch(per_base)
        first = np.searchsorted(plan.owner, np.arange(len(counts)))
        scores = [stitched[i] if counts[i] > 1 else scores[first[i]] for i in range(len(counts))]
        content = [
            np.ones(len(scores[i]), bool) if counts[i] > 1 else content[first[i]]
            for i in range(len(counts))
        ]
    separator = "" if all(len(label) == 1 for label in task.labels) else ","
    predicted = [
        separator.join(task.labels[i] for i in task.decide(np.nan_to_num(row))[keep])
        for row, keep in zip(scores, content, strict=True)
    ]
    return Predictions([record.id for record in records], task, scores, predicted, counts)


def _content(model: torch.nn.Module, dataset: RecordDataset, index: int) -> np.ndarray:
    """Positions of the non-special tokens of one record."""
    return ~np.isin(dataset.ids[index], model.tokenizer.special_ids)


def prediction_header(task: TaskInfo) -> list[str]:
    """Columns of a predictions table: ``id``, ``prediction``, then ``prob_<label>`` per class
    (classification, multilabel) or ``value`` (regression)."""
    return ["id", "prediction", *task.score_columns]


def prediction_rows(predictions: Predictions) -> Iterator[list[str]]:
    """One table row per record of ``predictions``, in their order."""
    columns = predictions.task.score_columns
    for n, (record_id, predicted) in enumerate(
        zip(predictions.ids, predictions.predicted, strict=True)
    ):
        row = [record_id, predicted]
        if columns:
            row += [format_number(value) for value in np.atleast_1d(predictions.scores[n])]
        yield row


def write_predictions_tsv(predictions: Predictions, path: str | os.PathLike[str]) -> Path:
    """``prediction_header`` and ``prediction_rows``, one row per record in input order;
    written aside and renamed (``-``: standard output)."""
    table = TableStream(path, {}, header=prediction_header(predictions.task), overwrite=True)
    table.append(prediction_rows(predictions))
    table.finish()
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Evaluation against labels
# ---------------------------------------------------------------------------------------------


def _numeric_spellings(labels: Sequence[str]) -> dict[float, str]:
    """Number -> the model's spelling of it, when every class label is a number (else {})."""
    spellings = {}
    for label in labels:
        try:
            spellings[float(label)] = label
        except ValueError:
            return {}
    return spellings


def _spelled_as_model(value: str, spellings: Mapping[float, str]) -> str:
    """``value`` in the model's spelling of its numeric class (``1.0`` -> ``1``), else as is."""
    try:
        return spellings.get(float(value), value)
    except ValueError:
        return value


# The name of the progress bar of the bootstrap confidence intervals.
BOOTSTRAP_PROGRESS = "bootstrap (95% CIs)"


def label_targets(task: TaskInfo, records: Sequence[SequenceRecord]) -> np.ndarray:
    """The labels of ``records`` as metric inputs: class ids (N,), a 0/1 matrix (N, C) for
    multilabel, values (N,) for regression. Numeric class labels match by value (``1.0`` is
    the model's class ``1``); an unknown label or a missing one is an error."""
    index = {label: i for i, label in enumerate(task.labels)}
    spellings = _numeric_spellings(task.labels)
    rows = []
    for record in records:
        label = record.label
        if label is None:
            raise InputError(
                "the record has no label",
                record=record.id,
                line=record.line,
                fix="give the label options (--label-column, --label-from, --labels-file)",
            )
        if task.spec.label_type == "numeric":
            rows.append(float(label))
            continue
        values = tuple(
            _spelled_as_model(value, spellings)
            for value in (label if isinstance(label, tuple) else (str(label),))
        )
        unknown = [value for value in values if value not in index]
        if unknown:
            raise InputError(
                f"label {unknown[0]!r} is not one the model knows ({', '.join(task.labels)})",
                record=record.id,
                line=record.line,
                fix="evaluate on data labelled like the training data",
            )
        if task.spec.label_type == "multilabel":
            row = np.zeros(len(task.labels), dtype=np.int64)
            row[[index[value] for value in values]] = 1
            rows.append(row)
        else:
            rows.append(index[values[0]])
    return np.asarray(rows)


def token_targets(task: TaskInfo, record: SequenceRecord, offsets: np.ndarray) -> np.ndarray:
    """Per-token class ids of one record: the label string has one character per residue and
    a token takes the class of its first residue; special tokens get -100."""
    label = str(record.label)
    if len(label) != len(record.sequence):
        raise InputError(
            f"the per-residue label has {len(label)} characters for {len(record.sequence)} "
            "residues",
            record=record.id,
            line=record.line,
            fix="give one label character per residue",
        )
    index = {name: i for i, name in enumerate(task.labels)}
    targets = np.full(len(offsets), IGNORE_INDEX, dtype=np.int64)
    for position, (start, _) in enumerate(offsets.tolist()):
        if start >= 0:
            character = label[start]
            if character not in index:
                raise InputError(
                    f"label {character!r} is not one the model knows ({', '.join(task.labels)})",
                    record=record.id,
                    line=record.line,
                    position=start + 1,
                    fix="evaluate on data labelled like the training data",
                )
            targets[position] = index[character]
    return targets


def evaluate_records(
    model: torch.nn.Module,
    records: Sequence[SequenceRecord],
    task: TaskInfo,
    *,
    max_tokens: int = 16384,
    bootstrap: int = 1000,
    seed: int = 0,
    accelerator: Accelerator | None = None,
    mask_rate: float = 0.15,
    windows: WindowOptions | None = None,
    rc_average: bool | None = None,
) -> tuple[dict[str, Any], Predictions | None]:
    """Metrics of ``model`` on labelled ``records`` (``evaluate_predictions``' dict, with the
    threshold used) and the predictions they were computed from (None for masked-LM). Long
    records are cut into windows; ``rc_average`` averages both DNA strands' scores (None: the
    task's own ``rc_average``)."""
    rc_average = task.rc_average if rc_average is None else rc_average
    if not task.has_labels:
        if rc_average:
            raise ConfigError("reverse-complement averaging does not apply to a masked-LM loss")
        plan = plan_windows(records, model.tokenizer, model.config.max_length, windows)
        return evaluate_masked_lm_records(
            model,
            plan.records,
            max_tokens=max_tokens,
            bootstrap=bootstrap,
            seed=seed,
            accelerator=accelerator,
            mask_rate=mask_rate,
        ), None
    if task.spec.per_token:
        return _evaluate_tokens(
            model, records, task, max_tokens, bootstrap, seed, accelerator, windows
        )
    truth = label_targets(task, records)
    predictions = predict_records(
        model,
        records,
        task,
        max_tokens=max_tokens,
        accelerator=accelerator,
        windows=windows,
        rc_average=rc_average,
    )
    metrics = metrics_from_scores(task, truth, predictions.scores, bootstrap=bootstrap, seed=seed)
    return metrics, predictions


def metrics_from_scores(
    task: TaskInfo, truth: np.ndarray, scores: np.ndarray, *, bootstrap: int, seed: int
) -> dict[str, Any]:
    """``evaluate_predictions`` with the task's threshold (the bootstrap's progress shown on
    a terminal); regression scores are values."""
    from biotransformer.metrics import evaluate_predictions  # scipy, sklearn: ~1.8 s to import

    settings = {"bootstrap": bootstrap, "seed": seed, "progress": BOOTSTRAP_PROGRESS}
    if task.problem == "regression":
        result = evaluate_predictions(task.problem, truth, scores[:, 0], **settings)
    elif task.decision_threshold is None:  # multi-class: the arg-max decides
        result = evaluate_predictions(task.problem, truth, scores, **settings)
    else:
        threshold = task.decision_threshold
        result = evaluate_predictions(task.problem, truth, scores, threshold=threshold, **settings)
        result["threshold"] = threshold
    return result


def _evaluate_tokens(
    model: torch.nn.Module,
    records: Sequence[SequenceRecord],
    task: TaskInfo,
    max_tokens: int,
    bootstrap: int,
    seed: int,
    accelerator: Accelerator,
    windows: WindowOptions | None,
) -> tuple[dict[str, Any], Predictions]:
    """Token metrics; records cut into windows are scored per base."""
    from biotransformer.metrics import evaluate_predictions  # scipy, sklearn: ~1.8 s to import

    predictions = predict_records(
        model, records, task, max_tokens=max_tokens, accelerator=accelerator, windows=windows
    )
    targets = np.concatenate(
        [
            token_targets(task, record, _unit_offsets(len(record.sequence)))
            if predictions.per_base(n)
            else token_targets(task, record, model.tokenizer.offsets(record.sequence))
            for n, record in enumerate(records)
        ]
    )
    scores = np.concatenate(predictions.scores)
    keep = targets != IGNORE_INDEX
    result = evaluate_predictions(
        task.problem,
        targets[keep],
        scores[keep],
        bootstrap=bootstrap,
        seed=seed,
        progress=BOOTSTRAP_PROGRESS,
    )
    result["unit"] = "token"
    return result, predictions


def _unit_offsets(length: int) -> np.ndarray:
    """One ``[i, i + 1)`` span per letter: per-base targets."""
    starts = np.arange(length, dtype=np.int64)
    return np.stack([starts, starts + 1], axis=1)


def evaluate_masked_lm_records(
    model: torch.nn.Module,
    records: Sequence[SequenceRecord],
    *,
    max_tokens: int = 16384,
    bootstrap: int = 1000,
    seed: int = 0,
    accelerator: Accelerator | None = None,
    mask_rate: float = 0.15,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Held-out masked-LM loss (nats per masked token) and perplexity, every selected token
    replaced by the mask token with draws from ``seed``; bootstrap intervals resample
    sequences."""
    tokenizer = model.tokenizer
    dataset = RecordDataset(records, tokenizer, max_length=model.config.max_length)
    collator = MaskingCollator(
        tokenizer, mask_rate=mask_rate, mask_token_rate=1.0, random_token_rate=0.0, seed=seed
    )

    def step(network: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[tuple]:
        logits = network(batch["input_ids"], batch["attention_mask"]).logits
        labels = batch["labels"]
        losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2).float(), labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        sums = losses.sum(dim=1).double().tolist()
        counts = (labels != IGNORE_INDEX).sum(dim=1).tolist()
        return list(zip(sums, counts, strict=True))

    rows = np.asarray(
        map_batches(
            model,
            dataset,
            step,
            max_tokens=max_tokens,
            collate_fn=collator,
            accelerator=accelerator,
        ),
        dtype=np.float64,
    )

    def summary(sample: np.ndarray) -> dict[str, float]:
        loss = sample[:, 0].sum() / max(sample[:, 1].sum(), 1.0)
        return {"loss": float(loss), "perplexity": math.exp(min(loss, 700.0))}

    point = summary(rows)
    rng = np.random.default_rng(seed)
    draws = [summary(rows[rng.integers(0, len(rows), len(rows))]) for _ in range(bootstrap)]
    tail = (1.0 - confidence) / 2.0
    metrics = {}
    for name, value in point.items():
        values = [draw[name] for draw in draws]
        low, high = np.quantile(values, [tail, 1 - tail]) if values else (math.nan, math.nan)
        metrics[name] = {"value": value, "ci_low": float(low), "ci_high": float(high)}
    return {
        "problem": "masked-lm",
        "n": len(rows),
        "n_tokens": int(rows[:, 1].sum()),
        "mask_rate": mask_rate,
        "confidence": confidence,
        "n_resamples": bootstrap,
        "metrics": metrics,
        "notes": [],
    }


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


@dataclass
class Embeddings:
    """Mean-pooled ``pooled`` (N, L*D) float32 over non-special tokens, the chosen encoder
    ``layers`` concatenated; with ``per_token`` also ``tokens`` (sum T_i, L*D) and
    ``offsets`` (N+1,) so that record i owns ``tokens[offsets[i]:offsets[i+1]]`` (one row per
    base for a record cut into ``windows[i] > 1`` windows)."""

    ids: list[str]
    layers: list[int]
    pooled: np.ndarray
    tokens: np.ndarray | None = None
    offsets: np.ndarray | None = None
    windows: np.ndarray | None = None


def resolve_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """Hidden-state indices: 0 is the embedding output, 1..num_layers each block (the last
    after the final norm); negative indices count from the end; default ``[-1]``."""
    chosen = []
    for layer in layers or [-1]:
        index = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= index <= num_layers:
            raise ConfigError(
                f"layer {layer} does not exist: the model has layers 0 (embeddings) to "
                f"{num_layers}. Fix: give --layers (layers= in Python) from 0 to {num_layers}, "
                f"or from -{num_layers + 1} counting from the end"
            )
        chosen.append(index)
    return chosen


def embed_records(
    model: torch.nn.Module,
    records: Sequence[SequenceRecord],
    *,
    layers: Sequence[int] | None = None,
    per_token: bool = False,
    pooling: str = "mean",
    max_tokens: int = 16384,
    accelerator: Accelerator | None = None,
    windows: WindowOptions | None = None,
) -> Embeddings:
    """Embeddings of ``records`` from any model's encoder, in record order. A record cut into
    windows gets the mean (or max) of its windows' pooled embeddings and, per token, one row
    per base stitched from its windows (``windows`` lists the windows per record). All in
    memory: ``iter_embeddings`` streams."""
    parts = list(
        iter_embeddings(
            model,
            records,
            layers=layers,
            per_token=per_token,
            pooling=pooling,
            max_tokens=max_tokens,
            accelerator=accelerator,
            windows=windows,
        )
    )
    if not parts:
        raise InputError("no records to run", fix="check the input file")
    if len(parts) == 1:
        return parts[0]
    embeddings = Embeddings(
        [name for part in parts for name in part.ids],
        parts[0].layers,
        np.concatenate([part.pooled for part in parts]),
        windows=np.concatenate([part.windows for part in parts]),
    )
    if per_token:
        embeddings.tokens = np.concatenate([part.tokens for part in parts])
        counts = np.concatenate([np.diff(part.offsets) for part in parts])
        embeddings.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return embeddings


def iter_embeddings(
    model: torch.nn.Module,
    records: Iterable[SequenceRecord],
    *,
    layers: Sequence[int] | None = None,
    per_token: bool = False,
    pooling: str = "mean",
    max_tokens: int = 16384,
    accelerator: Accelerator | None = None,
    windows: WindowOptions | None = None,
    chunk_records: int | None = None,
) -> Iterator[Embeddings]:
    """``Embeddings`` of ``records`` chunk by chunk (``record_chunks`` of ``chunk_records``),
    in record order: memory is set by a chunk, not by the number of records. ``pooling``
    (``mean`` or ``max``) pools each window over its non-special tokens."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r} is not one of {POOLINGS}")
    chosen = resolve_layers(layers, model.config.num_layers)
    windows = windows or WindowOptions()
    for chunk in record_chunks(records, max_records=chunk_records):
        yield _embed_chunk(
            model, chunk, chosen, per_token, pooling, max_tokens, accelerator, windows
        )


def _embed_chunk(
    model: torch.nn.Module,
    records: list[SequenceRecord],
    chosen: list[int],
    per_token: bool,
    pooling: str,
    max_tokens: int,
    accelerator: Accelerator | None,
    windows: WindowOptions,
) -> Embeddings:
    """Embeddings of one chunk of records, its windows run ``CHUNK_LETTERS`` letters at a
    time (a chromosome's pooled embedding costs one group of windows, not the chromosome)."""
    tokenizer = model.tokenizer
    plan = plan_windows(records, tokenizer, model.config.max_length, windows)
    special = torch.tensor(sorted(tokenizer.special_ids))

    def step(network: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[tuple]:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        encoded = network.encoder(input_ids, attention_mask, output_hidden_states=True)
        hidden = torch.cat([encoded.hidden_states[i] for i in chosen], dim=-1)  # (B, T, L*D)
        hidden = hidden.float()  # pool in fp32 whatever the model's precision
        keep = attention_mask.bool() & ~torch.isin(input_ids, special.to(input_ids.device))
        if pooling == "max":
            pooled = hidden.masked_fill(~keep.unsqueeze(-1), -torch.inf).amax(dim=1)
        else:
            weights = keep.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)  # (B, L*D)
        pooled_rows = _numpy(pooled)
        if not per_token:
            return list(pooled_rows)
        lengths = attention_mask.sum(dim=1).tolist()
        keep_rows = keep.cpu().numpy()
        hidden_rows = _numpy(hidden)
        return [
            (pooled_rows[row], hidden_rows[row][:length], keep_rows[row][:length])
            for row, length in enumerate(lengths)
        ]

    counts = plan.windows_per_record()
    cut = counts[plan.owner] > 1  # per window: whether its record was cut
    pooled = RunningAggregate(windows.aggregate, len(records))
    token_rows: list[np.ndarray] = []  # per window: per token, or per base when it was cut
    for group in plan.groups(CHUNK_LETTERS):
        pieces = plan.window_records(group)
        dataset = RecordDataset(pieces, tokenizer, max_length=model.config.max_length)
        results = map_batches(model, dataset, step, max_tokens=max_tokens, accelerator=accelerator)
        if per_token:
            token_rows += [
                _tokens_on_bases(tokenizer, hidden, piece) if cut[window] else hidden[keep]
                for window, (_, hidden, keep), piece in zip(group, results, pieces, strict=True)
            ]
            results = [row for row, _, _ in results]
        pooled.add(plan.owner[group], np.stack(results))
    pooled_rows = pooled.result().astype(np.float32)
    embeddings = Embeddings([record.id for record in records], chosen, pooled_rows)
    embeddings.windows = counts
    if per_token:
        pieces = [
            (
                plan.stitch_record(owned, token_rows) if len(owned) > 1 else token_rows[owned[0]]
            ).astype(np.float32)
            for owned in plan.window_ranges()
        ]
        embeddings.tokens = np.concatenate(pieces)
        embeddings.offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(
            np.int64
        )
    return embeddings


def _tokens_on_bases(tokenizer: Tokenizer, values: np.ndarray, piece: SequenceRecord) -> np.ndarray:
    """A window's per-token values (special tokens included) put on its bases."""
    return tokens_to_bases(values, tokenizer.offsets(piece.sequence), len(piece.sequence))


def append_embeddings(stream: EmbeddingsStream, embeddings: Embeddings) -> None:
    """Add one chunk's ``embeddings`` to an HDF5 ``stream``."""
    stream.append(
        embeddings.ids,
        embeddings.pooled,
        embeddings.windows,
        embeddings.tokens,
        None if embeddings.offsets is None else np.diff(embeddings.offsets),
    )


def write_embeddings_h5(
    embeddings: Embeddings, path: str | os.PathLike[str], *, attributes: dict[str, Any]
) -> Path:
    """HDF5 with ``embeddings`` (N, D) float32, ``ids`` (variable-length UTF-8 strings),
    ``windows`` and, per token, ``tokens`` and ``offsets``; attribute ``layers``
    (``streaming.EmbeddingsStream``'s layout). Checked to fit (size limit, free space) before
    it is begun, written aside, then renamed."""
    layers = {"layers": np.asarray(embeddings.layers, dtype=np.int64)}
    stream = EmbeddingsStream(path, {}, attributes={**layers, **attributes}, overwrite=True)
    append_embeddings(stream, embeddings)
    return stream.finish()
