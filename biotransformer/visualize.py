"""What a model computes, drawn: the workflow side of the plots and reports.

``report`` and ``plots`` draw arrays and log files and never run a model; the functions here
run one (or read what a run predicted) to get those arrays, then call them:

- ``plot_embeddings_of``: PCA of a model's embeddings of labelled records, coloured by label;
- ``attention_weights`` and ``plot_attention_of``: one layer's attention over one sequence;
- ``write_run_report``: a fine-tuning or evaluation run's plots and ``report.html`` from its
  records and predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from biotransformer import plots, report
from biotransformer.errors import InputError
from biotransformer.inference import Predictions, embed_records, label_targets
from biotransformer.io import SequenceRecord
from biotransformer.tasks import TaskInfo


def write_run_report(
    directory: Path,
    task: TaskInfo,
    records: Sequence[SequenceRecord],
    predictions: Predictions | None,
    sections: Mapping[str, Mapping[str, Any]],
    *,
    data: str,
    model: str,
    log_path: Path | None = None,
    verdict: Mapping[str, Any] | None = None,
) -> Path:
    """``report.write_report`` of ``predictions`` on ``records`` (their labels as the truth),
    the curves of ``log_path``, the ``verdict`` and the metrics of every section (e.g. valid,
    test); ``data`` and ``model`` name what was evaluated in the title."""
    if predictions is None or not task.per_sequence:
        return report.write_report(
            directory, task, sections, data=data, model=model, log_path=log_path, verdict=verdict
        )
    return report.write_report(
        directory,
        task,
        sections,
        data=data,
        model=model,
        truth=label_targets(task, records),
        scores=predictions.scores,
        predicted=predictions.predicted,
        log_path=log_path,
        verdict=verdict,
    )


def plot_embeddings_of(
    model: torch.nn.Module,
    records: Sequence[SequenceRecord],
    path: str | Path,
    *,
    layers: Sequence[int] | None = None,
    max_tokens: int = 16384,
) -> Figure:
    """PCA of the model's mean-pooled embeddings of ``records``, coloured by their labels
    (uncoloured when no record has a label)."""
    embeddings = embed_records(model, records, layers=layers, max_tokens=max_tokens)
    labels = [record.label for record in records]
    if all(label is None for label in labels):
        return plots.plot_embeddings(embeddings.pooled, None, path)
    return plots.plot_embeddings(embeddings.pooled, [str(label) for label in labels], path)


@torch.no_grad()
def attention_weights(
    model: torch.nn.Module, sequence: str, *, layer: int = -1
) -> tuple[np.ndarray, list[str]]:
    """Attention weights (H, T, T) of one encoder layer over ``sequence`` and its tokens."""
    tokenizer = model.tokenizer
    ids = tokenizer.encode(sequence, max_length=model.config.max_length)
    if not -model.config.num_layers <= layer < model.config.num_layers:
        raise InputError(
            f"layer {layer} does not exist: the model has {model.config.num_layers} layers",
            fix=f"give --layer (layer= in Python) from 0 to {model.config.num_layers - 1}, "
            f"or from -{model.config.num_layers} counting from the end",
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    output = model.encoder(torch.as_tensor(ids, device=device)[None], output_attentions=True)
    model.train(was_training)
    weights = output.attentions[layer][0].float().cpu().numpy()
    return weights, [tokenizer.tokens[int(i)] for i in ids]


def plot_attention_of(
    model: torch.nn.Module,
    sequence: str,
    path: str | Path,
    *,
    layer: int = -1,
    head: int | None = None,
) -> Figure:
    """Heatmap of one layer's attention over ``sequence`` (one head, or the mean of heads)."""
    weights, tokens = attention_weights(model, sequence, layer=layer)
    if head is not None and not 0 <= head < len(weights):
        raise InputError(
            f"head {head} does not exist: the layer has {len(weights)} heads",
            fix=f"give --head (head= in Python) from 0 to {len(weights) - 1}, or leave it out "
            "for the mean",
        )
    return plots.plot_attention_map(weights, tokens, path, head=head)
