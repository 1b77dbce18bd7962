"""Which positions a fine-tuned head looks at: in-silico saturation mutagenesis and
gradient x input.

The explained quantity is the target's score: the log-odds of the target class
(``logit_t - logsumexp(other logits)``; for binary tasks the logit difference) for
classification, the target label's logit for multilabel, the value for regression.

- Saturation mutagenesis (ISM): every position is changed to every other letter (A C G T for
  DNA, the 20 standard amino acids for proteins); each mutant is tokenised on its own (so
  every scheme works) and scored in batches. ``ism[i, a]`` is score(mutant) - score(reference),
  0 at the reference letter.
- Gradient x input: the gradient of the score with respect to the token embeddings, dotted
  with those embeddings, per token; a token spanning several letters shares its value equally
  among them.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biotransformer import plots
from biotransformer.atomic import atomic_write
from biotransformer.errors import ConfigError, InputError
from biotransformer.io import SequenceRecord

DNA_LETTERS = "ACGT"
PROTEIN_LETTERS = "ACDEFGHIKLMNPQRSTVWY"


@dataclass
class Saliency:
    """Saliency of one record: ``ism`` (L, letters), ``gradient_x_input`` (L,), for the
    ``target`` output, whose reference score is ``score``."""

    id: str
    sequence: str
    letters: str
    target: str
    score: float
    ism: np.ndarray
    gradient_x_input: np.ndarray


def target_index(task: Any, target: str | None) -> int:
    """The output explained: ``target`` by label name, else the last class (the positive one
    of a binary task) or the first value of a regression."""
    if not task.has_labels:
        raise ConfigError("saliency explains a fine-tuned head: fine-tune the model first")
    if task.spec.per_token:
        raise ConfigError("saliency explains sequence-level heads, not per-token ones")
    if task.problem == "regression":
        return 0 if target is None else int(target)
    if target is None:
        return len(task.labels) - 1
    if target not in task.labels:
        raise ConfigError(f"target {target!r} is not one of the model's labels {task.labels}")
    return task.labels.index(target)


def target_scores(task: Any, logits: torch.Tensor, index: int) -> torch.Tensor:
    """Score (B,) of output ``index`` from the logits (B, C); see the module docstring."""
    if task.problem in ("binary", "multiclass"):
        others = torch.cat([logits[:, :index], logits[:, index + 1 :]], dim=1)
        return logits[:, index] - torch.logsumexp(others, dim=1)
    return logits[:, index]


def _check_fits(model: torch.nn.Module, record: SequenceRecord) -> None:
    tokens = len(model.tokenizer.encode(record.sequence, max_length=len(record.sequence) + 2))
    if tokens > model.config.max_length:
        raise InputError(
            f"{tokens} tokens, more than the model reads at once ({model.config.max_length})",
            record=record.id,
            line=record.line,
            fix="cut the record to the region of interest",
        )


@torch.no_grad()
def score_sequences(
    model: torch.nn.Module, task: Any, sequences: list[str], index: int, batch_size: int
) -> np.ndarray:
    """Target scores of ``sequences``, tokenised and run in batches."""
    device = next(model.parameters()).device
    out = []
    for first in range(0, len(sequences), batch_size):
        batch = model.tokenizer.encode_batch(sequences[first : first + batch_size])
        ids = torch.from_numpy(batch["input_ids"]).to(device)
        mask = torch.from_numpy(batch["attention_mask"]).to(device)
        out.append(target_scores(task, model(ids, mask).logits.float(), index).cpu().numpy())
    return np.concatenate(out)


def saturation_mutagenesis(
    model: torch.nn.Module, task: Any, sequence: str, index: int, *, batch_size: int = 64
) -> tuple[np.ndarray, float, str]:
    """(ISM effects (L, letters), the reference score, the letters)."""
    letters = PROTEIN_LETTERS if model.tokenizer.alphabet == "protein" else DNA_LETTERS
    sequence = sequence.upper()
    mutants = [
        sequence[:i] + letter + sequence[i + 1 :]
        for i in range(len(sequence))
        for letter in letters
    ]
    scores = score_sequences(model, task, [sequence, *mutants], index, batch_size)
    effects = (scores[1:] - scores[0]).reshape(len(sequence), len(letters))
    return effects, float(scores[0]), letters


def gradient_x_input(model: torch.nn.Module, task: Any, sequence: str, index: int) -> np.ndarray:
    """Per letter: the gradient x input of the token embeddings, shared out over letters."""
    tokenizer = model.tokenizer
    device = next(model.parameters()).device
    batch = tokenizer.encode_batch([sequence], return_offsets=True)
    stored: dict[str, torch.Tensor] = {}

    def keep(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        output.retain_grad()
        stored["embeddings"] = output

    handle = model.encoder.embed_tokens.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            ids = torch.from_numpy(batch["input_ids"]).to(device)
            logits = model(ids, torch.ones_like(ids)).logits.float()
            target_scores(task, logits, index).sum().backward()
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    embeddings = stored["embeddings"]
    per_token = (embeddings.grad * embeddings).sum(-1)[0].detach().float().cpu().numpy()  # (T,)
    per_letter = np.zeros(len(sequence))
    for value, (start, end) in zip(per_token, batch["offsets"][0], strict=True):
        if start >= 0:
            per_letter[start:end] += value / (end - start)
    return per_letter


def explain(
    model: torch.nn.Module,
    task: Any,
    record: SequenceRecord,
    *,
    target: str | None = None,
    batch_size: int = 64,
) -> Saliency:
    """ISM and gradient x input of one record."""
    index = target_index(task, target)
    _check_fits(model, record)
    model.eval()
    ism, score, letters = saturation_mutagenesis(
        model, task, record.sequence, index, batch_size=batch_size
    )
    name = "value" if task.problem == "regression" else task.labels[index]
    return Saliency(
        record.id,
        record.sequence.upper(),
        letters,
        name,
        score,
        ism,
        gradient_x_input(model, task, record.sequence.upper(), index),
    )


MAX_STEM = 120  # bytes: the stem plus ".heatmap.png" stays far below the 255-byte name limit
INDEX_FILE = "index.tsv"


def file_stem(record_id: str, taken: Collection[str] = ()) -> str:
    """A file name stem for ``record_id``: the id itself when it is a safe name (letters,
    digits, ``.``, ``_``, ``-``; no leading dot) of at most ``MAX_STEM`` characters, else its
    safe characters (truncated) plus a hash of the id, so distinct ids get distinct stems;
    ``-2``, ``-3``... when a stem is in ``taken`` (the same id twice)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", record_id).lstrip(".")
    stem = safe
    if safe != record_id or not safe or len(safe) > MAX_STEM:
        digest = hashlib.sha256(record_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        stem = f"{safe[: MAX_STEM - 11] or 'record'}-{digest}"
    unique, n = stem, 1
    while unique in taken:
        n += 1
        unique = f"{stem}-{n}"
    return unique


def write_saliency_index(rows: list[tuple[str, str]], directory: str | os.PathLike[str]) -> Path:
    """``index.tsv``: each explained record's id and the stem of its files."""
    path = Path(directory) / INDEX_FILE
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "files"])
        writer.writerows(rows)
    return path


def write_saliency(
    result: Saliency, directory: str | os.PathLike[str], stem: str | None = None
) -> list[Path]:
    """``STEM.ism.tsv`` (position, reference letter, gradient x input, one column per
    letter), ``STEM.heatmap.png`` and ``STEM.logo.png`` in ``directory``; ``stem`` defaults
    to ``file_stem(result.id)``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = stem or file_stem(result.id)
    table = directory / f"{stem}.ism.tsv"
    with atomic_write(table, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["position", "ref", "gradient_x_input", *result.letters])
        for i, letter in enumerate(result.sequence):
            values = [repr(float(v)) for v in result.ism[i]]
            writer.writerow([i + 1, letter, repr(float(result.gradient_x_input[i])), *values])
    title = f"{result.id}: effect on {result.target} score (reference {result.score:.3g})"
    heatmap = directory / f"{stem}.heatmap.png"
    plots.plot_saliency_heatmap(result.ism, result.letters, result.sequence, heatmap, title=title)
    logo = directory / f"{stem}.logo.png"
    importance = -result.ism.mean(axis=1)  # how much changing the letter lowers the score
    plots.plot_logo(importance, result.sequence, logo, title=f"{result.id}: mean ISM loss")
    return [table, heatmap, logo]
