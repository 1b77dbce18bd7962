"""Fine-tuning: labelled FASTA/CSV in, a selected model and trustworthy test numbers out.

``finetune(config)`` runs ``FinetuneRecipe`` on the run engine (``engine``): it reads the
splits (carving the missing validation/test splits out of the training file without leakage,
see ``finetune_data`` and ``splits``), encodes labels, builds the head model once (warm
started from any model directory, or a new encoder from a preset; class weights are set on
it afterwards), trains it, keeps the model that scores best on validation, and evaluates the
test split once, at the end, with that model. The output directory::

    model/            the selected model directory (config.json with the head's decision
                      threshold, model.safetensors, tokenizer.json); with LoRA, the
                      adapters merged into the encoder
    adapter/          with LoRA: the selected adapter and head weights (``lora.save_adapter``)
    imported/         with ``--model hf:ORG/NAME``, ``hf:PATH`` or ``fair-esm:PATH``: the
                      converted base model (see ``hub``)
    inputs/           data given in memory to ``api.finetune``, as the CSV files that
                      config.yaml names (``keep_inputs``)
    metrics.json      validation and test metrics with bootstrap CIs, n, threshold, seed
    predictions_valid.tsv, predictions_test.tsv
    config.yaml       the resolved fine-tuning config
    run.json          provenance (versions, git commit, command, seed, split report; the
                      base model's source, with a Hub model's resolved commit)
    log.jsonl         training log (loss, lr; validation metrics at each evaluation)
    checkpoints/      while the run lasts: ``checkpointing.Checkpointer`` folders every
                      ``training.save_every`` steps and at the end, for ``resume``
    *.png, report.html
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from accelerate.utils import set_seed

from biotransformer import engine
from biotransformer.atomic import write_json
from biotransformer.checkpointing import Stateful
from biotransformer.config import FinetuneConfig, ModelConfig, TrainingConfig
from biotransformer.data.collator import PaddingCollator
from biotransformer.engine import Outcome, Plan, Run, count_targets
from biotransformer.errors import ConfigError
from biotransformer.finetune_data import (
    SplitReport,
    label_vocabulary,
    loss_weights,
    prepare_splits,
    read_labelled,
    targets_of,
)
from biotransformer.finetune_defaults import resolve_batch, resolve_length, resolve_setup
from biotransformer.heads import MODEL_CLASSES, load_model, set_class_weights
from biotransformer.hub import import_model
from biotransformer.inference import (
    RecordDataset,
    evaluate_records,
    label_targets,
    metrics_from_scores,
    predict_logits,
    predict_records,
    token_targets,
    write_predictions_tsv,
)
from biotransformer.io import SequenceRecord, guess_alphabet
from biotransformer.lora import (
    LoraSettings,
    apply_lora,
    load_adapter_weights,
    merge_lora,
    save_adapter,
)
from biotransformer.metrics import tune_threshold
from biotransformer.outputs import keep_input_copies
from biotransformer.runtime import broadcast_from_main
from biotransformer.strands import (
    average_strands,
    require_dna,
    reverse_complement_record,
    strand_augmented,
)
from biotransformer.tasks import TASKS, TaskInfo
from biotransformer.tokenizers import Tokenizer
from biotransformer.verdict import has_baseline, verdict
from biotransformer.visualize import write_run_report

if TYPE_CHECKING:
    from accelerate import Accelerator

# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def build_model(
    config: FinetuneConfig,
    alphabet: str,
    labels: list[str],
    longest: int,
) -> torch.nn.Module:
    """The head model: warm started from ``config.model_dir`` (its encoder and tokenizer) or
    a new encoder of ``config.preset`` with ``config.tokenizer`` (both resolved by
    ``finetune_defaults.resolve_setup``)."""
    spec = TASKS[config.task]
    cls = MODEL_CLASSES[spec.model_type]
    head: dict[str, Any] = dict(spec.head_options)
    if not spec.per_token:
        head.update(pooling=config.pooling, rc_average=config.rc_average)
    if spec.label_type == "numeric":
        head["num_outputs"] = 1
    else:
        head["label2id"] = {label: i for i, label in enumerate(labels)}
        if config.classifier is not None:
            head["classifier"] = config.classifier
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
        if config.tokenizer is None or config.preset is None:
            raise ConfigError("a new model needs a resolved tokenizer and preset")
        tokenizer = Tokenizer.from_spec(config.tokenizer)
        preset = config.preset
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


def finetune(config: FinetuneConfig, *, keep_inputs: Collection[str] = ()) -> FinetuneResult:
    """Fine-tune, select on validation, evaluate the test split once; see the module doc.
    ``output_dir`` is claimed for the run first (``outputs.claim_run_directory``).
    ``keep_inputs`` names the splits (``train``, ``valid``, ``test``) whose files are
    temporary (data given in memory to ``api.finetune``): the run copies them into
    ``OUT/inputs/`` and its ``config.yaml`` names the copies, so that it reruns."""
    config.validate()
    recipe = FinetuneRecipe(config, keep_inputs=keep_inputs)
    return engine.run(recipe, resume=config.resume, overwrite=config.overwrite)


def finetune_inputs(config: FinetuneConfig) -> list[str | None]:
    """The files and directories a fine-tune reads: never inside its output directory."""
    base = config.model_dir
    if base is not None:
        base = base.split(":", 1)[1] if base.startswith(("hf:", "fair-esm:")) else base
    return [config.train, config.valid, config.test, config.read.labels_file, base]


class FinetuneRecipe:
    """Fine-tuning as a recipe of the run engine (see ``engine.Recipe``): the labelled
    splits, the head model (warm started or new, built once), selection on validation, and
    the final evaluation of the selected model. ``plan`` sets what the data decided (the
    splits, labels, tokenizer, datasets) for the later steps."""

    kind: Literal["finetune"] = "finetune"
    output_flag = "--out"
    splits: dict[str, list[SequenceRecord]]
    report: SplitReport
    task: TaskInfo
    datasets: dict[str, Any]
    run_info: dict[str, Any]

    def __init__(self, config: FinetuneConfig, *, keep_inputs: Collection[str] = ()) -> None:
        self.config = config
        self.keep_inputs = tuple(keep_inputs)
        self.output_dir = Path(config.output_dir)
        self.training = dataclasses.replace(config.training, output_dir=str(self.output_dir))
        self.resume_hint = f"rerun the same command with --resume latest (--out {self.output_dir})"
        self.model_dir = self.output_dir / "model"
        self.adapter_dir = self.output_dir / "adapter"
        self.selection = Selection()
        self.started = time.perf_counter()

    def inputs(self) -> list[str | None]:
        return finetune_inputs(self.config)

    def plan(self, accelerator: Accelerator) -> Plan:
        seed = self.training.seed
        self.started = time.perf_counter()
        self.accelerator = accelerator
        self.copy_kept_inputs(accelerator)
        first = next(iter(read_labelled(self.config.train, self.config.task, self.config.read)))
        alphabet = guess_alphabet(first.sequence)
        self.splits, self.report = prepare_splits(self.config, alphabet)
        for line in self.report.lines():
            accelerator.print(line)
        self.resolved = resolve_setup(
            self.config, alphabet, [len(record.sequence) for record in self.splits["train"]]
        )
        config = self.config = self.resolved.config
        self.training = dataclasses.replace(config.training, output_dir=str(self.output_dir))
        labels = label_vocabulary(config.task, self.splits["train"])
        self.task = TaskInfo(config.task, labels, rc_average=config.rc_average)

        set_seed(seed)  # the same initial weights on every process
        base, base_source = import_base(config, accelerator)
        longest = max(len(r.sequence) for records in self.splits.values() for r in records) + 2
        model = build_model(base, alphabet, labels, longest)
        self.tokenizer = model.tokenizer
        self.max_length = config.max_length or model.config.max_length
        if config.rc_average:
            require_dna(self.tokenizer, "reverse-complement averaging")
        self.datasets = {name: self.dataset(records) for name, records in self.splits.items()}
        resolve_batch(self.resolved, self.datasets["train"].lengths)
        train_targets = (
            label_targets(self.task, self.splits["train"])
            if config.task != "token-classification"
            else targets_of(config.task, self.datasets["train"])
        )
        weights = loss_weights(config, labels, train_targets)
        if weights is not None:
            set_class_weights(model, weights)
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
            self.datasets["train"] = strand_augmented(
                self.splits["train"], self.dataset, self.tokenizer, config.rc_augment, seed=seed
            )
        self.run_info = {
            "alphabet": alphabet,
            "labels": labels,
            "base_model": base.model_dir,
            "base_model_source": base_source,
            "parameters": parameters,
            "splits": dataclasses.asdict(self.report),
        }
        train_set = self.datasets["train"]
        return Plan(
            model=model,
            train_set=train_set,
            collator=PaddingCollator(
                self.tokenizer.pad_id, token_labels=config.task == "token-classification"
            ),
            max_tokens=max(config.max_tokens, int(train_set.lengths.max())),
            seed=seed,
            count=_target_counter(config.task),
        )

    def dataset(self, records: Sequence[SequenceRecord]) -> RecordDataset:
        """``records`` tokenized, with their labels typed for the task."""
        return RecordDataset(
            records, self.tokenizer, max_length=self.max_length, labels=self.label_fn
        )

    def label_fn(self, record: SequenceRecord, offsets: np.ndarray) -> Any:
        if self.config.task == "token-classification":
            return token_targets(self.task, record, offsets)
        return label_targets(self.task, [record])[0]

    def resolve(self, steps_per_epoch: int) -> TrainingConfig:
        """The run's length, warmup, evaluations and patience (``finetune_defaults``),
        printed with every value resolved at the start."""
        self.training = resolve_length(self.resolved, self.training, steps_per_epoch)
        for line in self.resolved.lines():
            self.accelerator.print(line)
        return self.training

    def copy_kept_inputs(self, accelerator: Accelerator) -> None:
        """Copy the temporary files of ``keep_inputs`` (``train.csv``...) into ``OUT/inputs/``
        and point the config at the copies."""
        sources = [getattr(self.config, split) for split in self.keep_inputs]
        copies = keep_input_copies(accelerator, self.output_dir, sources)
        for split, copy in zip(self.keep_inputs, copies, strict=True):
            setattr(self.config, split, copy)

    def run_files(self, training: TrainingConfig) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.config.to_dict(), {**self.run_info, "settings": self.resolved.reasons}

    def checkpoint_state(self) -> dict[str, Stateful]:
        return {"selection": self.selection}

    def evaluator(self, run: Run) -> Callable[[], dict[str, float]]:
        """Validation metrics; a score above the best so far (``select_metric``) saves the
        model (with LoRA: the adapter, merged at the end) as the selected one."""
        config, task, accelerator = self.config, self.task, run.accelerator
        select = config.select_metric or (
            "auroc" if config.tune_threshold else TASKS[config.task].select_metric
        )
        valid_truth = targets_of(config.task, self.datasets["valid"])
        valid_reverse = (
            RecordDataset(
                [reverse_complement_record(record) for record in self.splits["valid"]],
                self.tokenizer,
                max_length=self.max_length,
            )
            if config.rc_average
            else None
        )

        def evaluate() -> dict[str, float]:
            network = run.network()
            logits = predict_logits(
                network,
                self.datasets["valid"],
                max_tokens=config.max_tokens,
                accelerator=accelerator,
            )
            flat = (
                np.concatenate(logits)
                if config.task == "token-classification"
                else np.stack(logits)
            )
            truth = valid_truth
            if config.task == "token-classification":
                keep = truth >= 0
                flat, truth = flat[keep], truth[keep]
            scores = task.probabilities(flat)
            if valid_reverse is not None:
                reverse = predict_logits(
                    network, valid_reverse, max_tokens=config.max_tokens, accelerator=accelerator
                )
                scores = average_strands(scores, task.probabilities(np.stack(reverse)))
            result = metrics_from_scores(task, truth, scores, bootstrap=0, seed=0)
            values = {f"valid_{name}": entry["value"] for name, entry in result["metrics"].items()}
            values["valid_loss"] = _valid_loss(config.task, truth, flat, network)
            if select not in result["metrics"]:
                raise ConfigError(
                    f"select_metric {select!r} is not one of {sorted(result['metrics'])}"
                )
            score = result["metrics"][select]["value"]
            score = -score if select in ("rmse", "mae") else score
            score = score if math.isfinite(score) else -math.inf
            best = self.selection
            if best.step is None or score > best.score:
                best.score, best.step = score, run.state.step
                if accelerator.is_main_process:
                    if config.lora is None:
                        network.save_pretrained(self.model_dir)
                    else:  # merged into model/ at the end
                        save_adapter(network, self.adapter_dir)
                accelerator.wait_for_everyone()
            return values

        return evaluate

    def stop_early(self, step: int) -> str | None:
        """Stop once ``patience`` evaluations in a row have not beaten the selected model,
        from the second half of the run on (a small set often learns late)."""
        patience, every = self.config.patience, self.training.eval_every
        best = self.selection.step
        if not patience or best is None or 2 * step < self.training.max_steps:
            return None
        if step - best < patience * every:
            return None
        return (
            f"{patience} validation evaluations without a better score than step {best}'s "
            "(patience; 0 never stops early)"
        )

    def finish(self, run: Run, outcome: Outcome) -> FinetuneResult:
        """Merge LoRA adapters, evaluate the selected model (threshold tuning, test split)
        and write ``metrics.json``; a complete run removes its checkpoints."""
        accelerator, best_step = run.accelerator, self.selection.step
        if outcome == "interrupted":
            elapsed = time.perf_counter() - self.started
            return FinetuneResult(self.output_dir, self.model_dir, {}, best_step, elapsed, outcome)
        if accelerator.is_main_process and self.config.lora is not None:
            # the selected adapters, merged: an ordinary model
            network = load_adapter_weights(run.network(), self.adapter_dir)
            merge_lora(network).save_pretrained(self.model_dir)
        accelerator.wait_for_everyone()
        metrics = final_evaluation(
            self.config,
            self.model_dir,
            self.splits,
            accelerator,
            self.report,
            best_step,
            alphabet=self.run_info["alphabet"],
            model_name=describe_start(self.config),
        )
        metrics["steps"] = run.state.step
        if run.state.step < self.training.max_steps:
            metrics["stopped_early_at"] = run.state.step
        elapsed = time.perf_counter() - self.started
        if accelerator.is_main_process:
            metrics["seconds"] = elapsed
            write_json(self.output_dir / "metrics.json", metrics)
            run.checkpointer.remove_all()  # the run is complete
        accelerator.wait_for_everyone()
        return FinetuneResult(self.output_dir, self.model_dir, metrics, best_step, elapsed)

    def abandon(self, run: Run) -> None:
        """A model selected in a run that then diverged, with no checkpoint to resume from,
        is not a result: remove it."""
        fresh = run.checkpointer.last_saved_step is None
        if run.accelerator.is_main_process and fresh and self.selection.step is not None:
            shutil.rmtree(self.model_dir, ignore_errors=True)
            shutil.rmtree(self.adapter_dir, ignore_errors=True)


def import_base(
    config: FinetuneConfig, accelerator: Accelerator
) -> tuple[FinetuneConfig, dict[str, Any] | None]:
    """``config`` with ``model_dir`` a model directory, and the record of its source for
    ``run.json``: a Hub repository, ``hf:PATH`` and ``fair-esm:PATH`` are resolved (see
    ``hub``) and converted into ``OUT/imported`` once, by the main process."""
    if config.model_dir is None:
        return config, None
    resolved = None
    if accelerator.is_main_process:
        directory, source = import_model(config.model_dir, Path(config.output_dir) / "imported")
        resolved = (str(directory), source.record())
    directory, record = broadcast_from_main(resolved)
    return dataclasses.replace(config, model_dir=directory), record


def _target_counter(task: str) -> Any:
    """What the loss of a micro-batch is normalised by: tokens with a label for token
    classification, sequences otherwise."""
    if task == "token-classification":
        return count_targets
    return lambda batch: len(batch["input_ids"])


def describe_start(config: FinetuneConfig) -> str:
    """The model a (resolved) fine-tune starts from, in words, for the report's title."""
    if config.model_dir is None:
        start = f"new {config.preset} encoder"
    else:
        start = f"warm start from {config.model_dir}"
    if config.lora is not None:
        start += " with LoRA adapters"
    elif config.freeze_encoder:
        start += " (encoder frozen)"
    return start


def final_evaluation(
    config: FinetuneConfig,
    model_dir: Path,
    splits: Mapping[str, list[SequenceRecord]],
    accelerator: Accelerator,
    report: SplitReport,
    best_step: int,
    *,
    alphabet: str,
    model_name: str,
) -> dict[str, Any]:
    """Reload the selected model; tune the threshold on validation if asked (stored in the
    head section of its ``config.json``); evaluate validation and, once, test; write the
    prediction TSVs; the verdict against the composition baseline on the last split
    evaluated (``verdict``); the report (titled with ``model_name``), saying what it does as
    it goes."""
    model = load_model(model_dir).to(accelerator.device)
    task = model.task
    if config.tune_threshold and task.problem in ("binary", "multilabel"):
        valid = predict_records(
            model, splits["valid"], task, max_tokens=config.max_tokens, accelerator=accelerator
        )
        truth = label_targets(task, splits["valid"])
        scores = valid.scores[:, 1] if task.problem == "binary" else valid.scores
        tuned = tune_threshold(truth, scores, "mcc")
        threshold = tuned.tolist() if isinstance(tuned, np.ndarray) else float(tuned)
        model.head_config = dataclasses.replace(model.head_config, threshold=threshold)
        task = model.task
        if accelerator.is_main_process:
            model.save_config(model_dir)
    output_dir = Path(config.output_dir)
    metrics: dict[str, Any] = {
        "task": config.task,
        "labels": task.labels,
        "threshold": task.decision_threshold,
        "rc_average": task.rc_average,
        "seed": config.training.seed,
        "bootstrap_seed": 0,
        "best_step": best_step,
        "splits": dataclasses.asdict(report),
    }
    for name in ("valid", "test"):
        if name not in splits:
            continue
        accelerator.print(
            f"evaluating the selected model (step {best_step}) on {name}: "
            f"{len(splits[name])} records, {config.bootstrap} bootstrap resamples for the 95% CIs"
        )
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
    if has_baseline(task) and accelerator.is_main_process:
        accelerator.print(f"fitting the composition baseline on {len(splits['train'])} records")
        metrics["verdict"] = verdict(
            task,
            alphabet,
            splits["train"],
            splits[last_split],
            last_predictions.scores,
            split=last_split,
            bootstrap=config.bootstrap,
        )
    if config.plots and accelerator.is_main_process:
        accelerator.print(f"writing the plots and {output_dir / 'report.html'}")
        sections = {name: metrics[name] for name in ("valid", "test") if name in metrics}
        write_run_report(
            output_dir,
            task,
            splits[last_split],
            last_predictions,
            sections,
            data=Path(config.train).name,
            model=model_name,
            log_path=output_dir / "log.jsonl",
            verdict=metrics.get("verdict"),
        )
    return metrics
