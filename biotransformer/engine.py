"""The run engine: one setup, one training loop, for every kind of training run.

A run is a ``Recipe`` (its kind, its model, data, evaluation and what it saves) on this
engine, which owns everything else, in this order (``run``): the accelerator
(``runtime``), the claim of the output directory (``outputs``), resume
(``checkpointing.resolve_resume``), the recipe's plan (data and the model, built once),
the sampler, the memory pre-flight, the values the recipe derives from the data (e.g.
steps from epochs), compile, optimizer and scheduler, ``accelerator.prepare``, the batch
stream, trainer state, checkpoints, the metrics log, the run files (``config.yaml`` as the
run resolved it, ``run.json``), the loop and the end of the process group. Pretraining
(``train``) and fine-tuning (``finetune``) are the two recipes today.

How the loop deals with the known Accelerate pitfalls:

- **Scheduler steps.** A prepared scheduler steps ``num_processes`` times per optimizer step by
  default (Accelerate assumes the schedule was written for one process). The accelerator is
  built with ``step_scheduler_with_optimizer=False`` and the loop calls ``scheduler.step()``
  once per optimizer step (not when a fp16 overflow skipped the step), so ``max_steps`` and
  ``warmup_steps`` mean optimizer steps whatever the number of processes.
- **Uneven batches.** ``TokenBudgetBatchSampler`` makes variable-size batches. Passed through
  ``prepare()``, Accelerate would shard them again and, with ``even_batches=True``, repeat
  batches at the end of an epoch. The sampler shards by rank itself and gives every rank the
  same number of batches, so it stays out of ``prepare()``.
- **Checkpoints.** Accelerate's ``save_state``/``load_state`` pickle the objects registered
  with ``register_for_checkpointing`` (and the optimizer, scheduler and RNG states), and
  unpickling a planted file runs code. ``checkpointing.Checkpointer`` writes safetensors and
  JSON instead and is handed the trainer state, the data position (which restores the
  sampler) and the recipe's own state objects explicitly.

Loss normalisation: one optimizer step takes ``gradient_accumulation_steps`` micro-batches on
every process. They are fetched first, the number of target tokens is summed over them and
all-reduced over processes, and each micro-batch's summed token loss is scaled so that the
gradient is that of ``sum(token losses) / sum(targets)`` over the whole global batch, not a
mean of per-batch means. ``accelerator.accumulate`` skips the gradient all-reduce on all but
the last micro-batch and divides the loss by ``gradient_accumulation_steps``; DDP (and FSDP's
reduce-scatter) averages gradients over processes. The scale ``num_processes *
gradient_accumulation_steps / global_targets`` undoes both.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import torch
import yaml
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from biotransformer.atomic import atomic_write, json_text, write_json
from biotransformer.checkpointing import Checkpointer, Stateful, resolve_resume
from biotransformer.config import TrainingConfig
from biotransformer.constants import IGNORE_INDEX
from biotransformer.data.sampler import TokenBudgetBatchSampler
from biotransformer.environment import versions
from biotransformer.errors import BioTransformerError
from biotransformer.memory import preflight
from biotransformer.outputs import claim_run_directory, holds_files
from biotransformer.runtime import make_accelerator
from biotransformer.sharding import check_rebuildable, is_sharded, replica

MODEL_INPUTS = ("input_ids", "attention_mask", "labels")
Outcome = Literal["finished", "interrupted"]
ResultT = TypeVar("ResultT", covariant=True)


# ---------------------------------------------------------------------------------------------
# A recipe, and the engine that runs it
# ---------------------------------------------------------------------------------------------


def count_targets(batch: Mapping[str, torch.Tensor]) -> int:
    """Number of positions with a label (not -100) in a token-labelled micro-batch."""
    return int((batch["labels"] != IGNORE_INDEX).sum())


@dataclass
class Plan:
    """What a recipe hands the engine to train: its model (built once, on every process the
    same: after ``set_seed``), the training set (with ``lengths``, tokens per item) and
    collator, the sampler's token budget and seed, the option that names the budget in
    messages, and ``count``: the loss targets of a micro-batch (the loss's denominator)."""

    model: nn.Module
    train_set: Dataset
    collator: Callable[[list[Any]], dict[str, torch.Tensor]]
    max_tokens: int
    seed: int
    budget_option: str = "--max-tokens"
    count: Callable[[Mapping[str, torch.Tensor]], int] = count_targets
    num_workers: int = 0


@dataclass
class Run:
    """A run in progress, as the recipe's evaluation and ending see it: the prepared model,
    the resolved training config, the trainer state and the checkpointer."""

    accelerator: Accelerator
    model: nn.Module
    training: TrainingConfig
    output_dir: Path
    state: TrainerState
    checkpointer: Checkpointer

    def network(self) -> nn.Module:
        """The model without Accelerate's (and torch.compile's) wrappers; under FSDP a plain,
        unsharded replica (``sharding.replica``), so every process must call this."""
        if is_sharded(self.accelerator):
            return replica(self.accelerator, self.model)
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)


class Recipe(Protocol[ResultT]):
    """The parts of one kind of training run; the engine (``run``) does the rest.

    ``kind`` names the run (the checkpoint kind a resume is checked against, see
    ``checkpointing.RUN_KINDS``; the command of the output directory's record; the progress
    bar): ``"pretrain"``, ``"finetune"``; ``training`` is its training config as given
    (``resolve`` derives the values that run); ``output_flag`` names ``output_dir`` in
    messages, ``resume_hint`` tells how to continue it."""

    kind: str
    training: TrainingConfig
    output_dir: Path
    output_flag: str
    resume_hint: str

    def inputs(self) -> list[str | os.PathLike[str] | None]:
        """The files and directories the run reads: never inside its output directory."""
        ...

    def plan(self, accelerator: Accelerator) -> Plan:
        """Read the data and build the model (once)."""
        ...

    def resolve(self, steps_per_epoch: int) -> TrainingConfig:
        """The training config as it will run, with the values derived from the data."""
        ...

    def run_files(self, training: TrainingConfig) -> tuple[dict[str, Any], dict[str, Any]]:
        """``config.yaml`` (the resolved config) and what ``run.json`` adds to provenance."""
        ...

    def checkpoint_state(self) -> dict[str, Stateful]:
        """State objects (``state_dict``/``load_state_dict``) of the recipe's own, saved in
        every checkpoint beside the trainer state and the data position."""
        ...

    def evaluator(self, run: Run) -> Callable[[], dict[str, float]] | None:
        """Validation for the loop (log values by name), or None."""
        ...

    def stop_early(self, step: int) -> str | None:
        """After the evaluation at ``step``: why the run should end now, or None."""
        ...

    def finish(self, run: Run, outcome: Outcome) -> ResultT:
        """After the loop (before the process group ends): save, evaluate, the result."""
        ...

    def abandon(self, run: Run) -> None:
        """The loop diverged: remove what this run selected or wrote that is not a result."""
        ...


def run(
    recipe: Recipe[ResultT],
    *,
    resume: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> ResultT:
    """Run ``recipe`` under Accelerate (one or many processes).

    ``recipe.output_dir`` is claimed for the run first (``outputs.claim_run_directory``);
    ``overwrite`` replaces an earlier run there (only the files it recorded as written).
    ``resume`` is None (a new run), ``"latest"`` or a checkpoint folder of a run of the same
    kind."""
    accelerator = make_accelerator(recipe.training, project_dir=recipe.output_dir)
    with claim_run_directory(
        recipe.output_dir,
        command=recipe.kind,
        flag=recipe.output_flag,
        inputs=recipe.inputs(),
        overwrite=overwrite,
        resume=resume is not None,
        resumable=True,
        recognise=holds_files("run.json", "config.yaml"),
        accelerator=accelerator,
    ) as claimed:
        outcome, result = _run(recipe, resume, accelerator)
        claimed.status = outcome
        return result


def _run(
    recipe: Recipe[ResultT], resume: str | os.PathLike[str] | None, accelerator: Accelerator
) -> tuple[Outcome, ResultT]:
    output_dir = Path(recipe.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    resume_from = resolve_resume(
        resume, checkpoint_dir, kind=recipe.kind, num_processes=accelerator.num_processes
    )
    plan = recipe.plan(accelerator)
    # The sampler shards by rank itself and gives every rank the same number of batches; it
    # is not passed through accelerator.prepare(), which would shard its batches a second
    # time and, with even_batches, repeat some at the end of each epoch.
    sampler = TokenBudgetBatchSampler(
        plan.train_set.lengths,
        plan.max_tokens,
        shuffle=True,
        seed=plan.seed,
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
    )
    lengths = plan.train_set.lengths
    preflight(
        plan.model.config,
        min(sampler.max_tokens, int(lengths.sum())),
        int(lengths.max()),
        device=str(accelerator.device),
        budget_option=plan.budget_option,
        shards=accelerator.num_processes if is_sharded(accelerator) else 1,
    )
    training = recipe.resolve(max(len(sampler) // accelerator.gradient_accumulation_steps, 1))
    if is_sharded(accelerator):
        check_rebuildable(plan.model)

    compile_if_asked(plan.model, training)
    optimizer = build_optimizer(plan.model, training)
    scheduler = build_scheduler(optimizer, training)
    model, optimizer, scheduler = accelerator.prepare(plan.model, optimizer, scheduler)
    batches = BatchStream(plan.train_set, sampler, plan.collator, num_workers=plan.num_workers)
    state = TrainerState()
    log = MetricsLog(accelerator, output_dir / "log.jsonl")
    checkpointer = Checkpointer(
        accelerator,
        checkpoint_dir,
        training.keep_last,
        kind=recipe.kind,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        state={"trainer": state, "data": batches, **recipe.checkpoint_state()},
    )
    resolved, run_info = recipe.run_files(training)
    if resume_from is not None:
        restore_checkpoint(checkpointer, resume_from, log)
    else:
        log.clear()
        write_run_files(accelerator, output_dir, resolved, run_info, seed=training.seed)
    accelerator.init_trackers(recipe.kind, config=_flat_scalars(resolved))

    run = Run(accelerator, model, training, output_dir, state, checkpointer)
    context = LoopContext(
        checkpointer=checkpointer,
        log=log,
        evaluate=recipe.evaluator(run),
        stop_early=recipe.stop_early,
        count=plan.count,
        desc=recipe.kind,
        resume_hint=recipe.resume_hint,
    )
    try:  # end_training ends the process group: the recipe's end may gather before it
        try:
            outcome = train_loop(
                accelerator, model, optimizer, scheduler, batches, state, training, context
            )
        except TrainingDiverged:
            recipe.abandon(run)
            raise
        return outcome, recipe.finish(run, outcome)
    finally:
        accelerator.end_training()


# ---------------------------------------------------------------------------------------------
# Trainer state, the batch stream, signals, the log
# ---------------------------------------------------------------------------------------------


# Divergence: a loss window whose mean exceeds both DIVERGENCE_FACTOR x and DIVERGENCE_MARGIN
# above the first step's loss (see ``train_loop``).
DIVERGENCE_FACTOR = 4.0
DIVERGENCE_MARGIN = 5.0


class TrainingDiverged(BioTransformerError):
    """The loss became NaN or infinite, or rose far above where it started; the run stopped
    without saving the bad state."""


@dataclass
class TrainerState:
    """Progress counters saved in every checkpoint, and the loss of the first step (the
    starting weights' loss, which divergence is measured against)."""

    step: int = 0
    samples_seen: int = 0
    targets_seen: int = 0
    first_loss: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.samples_seen = int(state["samples_seen"])
        self.targets_seen = int(state["targets_seen"])
        first = state["first_loss"]
        self.first_loss = None if first is None else float(first)


class BatchStream:
    """Micro-batches of a dataset, epoch after epoch, with a position that resumes exactly.

    The position (epoch, batches consumed in it) counts batches the loop has taken, not those
    a DataLoader's workers have drawn ahead, so it is exact with any ``num_workers``. It is
    saved in every checkpoint and restores the sampler through its ``load_state_dict``.
    The sampler and collator must be deterministic given (seed, epoch): ``set_epoch`` is
    called on both at each epoch start.
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler: Sampler[list[int]],
        collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]],
        *,
        num_workers: int = 0,
    ) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.epoch = 0
        self.batches_done = 0
        self._iterator: Iterator[dict[str, torch.Tensor]] | None = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        while True:
            if self._iterator is None:
                self._iterator = self._start_epoch()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.epoch += 1
                self.batches_done = 0
                continue
            self.batches_done += 1
            return batch

    def _start_epoch(self) -> Iterator[dict[str, torch.Tensor]]:
        state = {**self.sampler.state_dict(), "epoch": self.epoch}
        state["batches_done"] = self.batches_done
        self.sampler.load_state_dict(state)
        for part in (self.dataset, self.collate_fn):
            if hasattr(part, "set_epoch"):
                part.set_epoch(self.epoch)
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            # Its own generator: creating the iterator must not draw from the global RNG,
            # or a resumed run's dropout would differ from an uninterrupted one.
            generator=torch.Generator(),
        )
        return iter(loader)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self._iterator = None


class StopRequest:
    """SIGINT and SIGTERM set a flag; the loop acts on it at the next step boundary."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Catch SIGINT/SIGTERM while the block runs (only possible in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class MetricsLog:
    """``log.jsonl`` (one JSON object per line, flushed) plus the Accelerate trackers."""

    def __init__(self, accelerator: Accelerator, path: Path) -> None:
        self.accelerator = accelerator
        self.path = path

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows a killed run wrote after the checkpoint it resumes from."""
        if not self.accelerator.is_main_process or not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
        with atomic_write(self.path) as handle:
            handle.write("".join(f"{line}\n" for line in kept))

    def clear(self) -> None:
        """A new run: no rows of an earlier one."""
        if self.accelerator.is_main_process and self.path.exists():
            self.path.unlink()

    def write(self, row: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json_text(row, indent=None))
            handle.flush()
        self.accelerator.log(
            {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))},
            step=row["step"],
        )


# ---------------------------------------------------------------------------------------------
# Compile, optimizer, schedule, and one optimizer step
# ---------------------------------------------------------------------------------------------


def compile_if_asked(model: nn.Module, training: TrainingConfig) -> None:
    """``training.compile``: compile the model's forward in place (``nn.Module.compile``), so
    its parameter names, checkpoints and model directory stay those of the eager model and a
    run can resume with or without compiling. (A model compiled by Accelerate instead, with
    ``accelerate launch --dynamo_backend``, is unwrapped before saving.)"""
    if training.compile:
        model.compile()


def build_optimizer(model: nn.Module, training: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only: none on norms, biases, embeddings."""
    exempt = {
        id(param)
        for module in model.modules()
        if isinstance(module, (nn.Embedding, nn.LayerNorm))
        for param in module.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or id(param) in exempt else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": training.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=training.lr, betas=tuple(training.betas), eps=training.eps)


def lr_factor(step: int, training: TrainingConfig) -> float:
    """Multiplier of ``training.lr`` after ``step`` optimizer steps: linear warmup, then decay
    (cosine, linear or constant) down to ``min_lr_ratio`` at ``max_steps``."""
    if step < training.warmup_steps:
        return (step + 1) / (training.warmup_steps + 1)
    if training.schedule == "constant":
        return 1.0
    span = max(training.max_steps - training.warmup_steps, 1)
    progress = min((step - training.warmup_steps) / span, 1.0)
    if training.schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return training.min_lr_ratio + (1.0 - training.min_lr_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, training: TrainingConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup then cosine/linear/constant decay, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, training))


@dataclass
class StepTotals:
    """What one optimizer step saw, summed over its micro-batches and every process."""

    loss_sum: float
    targets: int
    samples: int
    tokens: int
    stop_requested: bool


def accumulate_gradients(
    accelerator: Accelerator,
    model: nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    *,
    count: Callable[[Mapping[str, torch.Tensor]], int] = count_targets,
    stop: StopRequest | None = None,
) -> StepTotals:
    """Backward over one optimizer step's micro-batches with the global-target normalisation.

    Afterwards ``param.grad`` holds the gradient of ``sum(loss_sum) / sum(targets)`` over all
    micro-batches of all processes. Whether ``stop`` caught a signal rides along the same
    all-reduce, so every process learns whether any of them was asked to stop.
    """
    local = torch.tensor([float(sum(count(batch) for batch in micro_batches))], dtype=torch.float64)
    global_targets = accelerator.reduce(local.to(accelerator.device), reduction="sum").item()
    scale = accelerator.num_processes * accelerator.gradient_accumulation_steps
    scale /= max(global_targets, 1.0)
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    samples = tokens = 0
    for batch in micro_batches:
        with accelerator.accumulate(model):
            inputs = {k: batch[k].to(accelerator.device) for k in MODEL_INPUTS if k in batch}
            output = model(**inputs)
            accelerator.backward(output.loss_sum * scale)
        loss_sum += output.loss_sum.detach().double()
        samples += len(batch["input_ids"])
        mask = batch.get("attention_mask")
        tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    if not accelerator.sync_gradients:
        raise RuntimeError(
            "gradient accumulation is out of step: give accumulate_gradients exactly "
            "gradient_accumulation_steps micro-batches"
        )
    stop_requested = stop is not None and stop.signal_name is not None
    totals = torch.tensor(
        [loss_sum.item(), samples, tokens, float(stop_requested)],
        dtype=torch.float64,
        device=accelerator.device,
    )
    totals = accelerator.reduce(totals, reduction="sum").tolist()
    return StepTotals(
        loss_sum=totals[0],
        targets=int(global_targets),
        samples=int(totals[1]),
        tokens=int(totals[2]),
        stop_requested=totals[3] > 0,
    )


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class LoopContext:
    """What the loop needs besides the model, optimizer and data.

    ``count`` gives the number of loss targets of a micro-batch, the denominator of the
    loss: labelled tokens by default (masked-LM, token classification); fine-tuning of
    sequence heads counts sequences. ``desc`` names the run in the progress bar.
    ``stop_early``, asked after each evaluation, ends the run (finished) when it gives a
    reason; it must answer the same on every process.
    """

    checkpointer: Checkpointer
    log: MetricsLog
    evaluate: Callable[[], dict[str, float]] | None = None
    resume_hint: str = "rerun with --resume latest"
    stop: StopRequest = field(default_factory=StopRequest)
    count: Callable[[Mapping[str, torch.Tensor]], int] = count_targets
    desc: str = "pretrain"
    stop_early: Callable[[int], str | None] = lambda step: None


def train_loop(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: BatchStream,
    state: TrainerState,
    training: TrainingConfig,
    context: LoopContext,
) -> Literal["finished", "interrupted"]:
    """Run optimizer steps from ``state.step`` to ``training.max_steps``.

    Saves a checkpoint every ``save_every`` steps and at the end, evaluates every
    ``eval_every`` steps and at the end, logs every ``log_every`` steps; SIGINT/SIGTERM save a
    checkpoint at the next step boundary and return ``"interrupted"``.

    Divergence raises ``TrainingDiverged``, so the bad state is never saved or evaluated: a
    NaN/inf loss before the optimizer applies it, and a loss that rose far above where it
    started: before each log row, evaluation and checkpoint, the mean loss of the steps since
    the last log row must not exceed both ``DIVERGENCE_FACTOR`` (4) times and
    ``DIVERGENCE_MARGIN`` (5) above the loss of step 1 (the starting weights'). The mean over
    a window, not one step, keeps one hard batch from stopping a run; the margin keeps a small
    starting loss (a pretrained model, a regression target) from making the bound tight.
    Masked-LM and classification losses start near ln(classes), scaled regression near 1: a
    run above the bound has lost what it knew at the start.
    """
    model.train()
    progress = tqdm(
        total=training.max_steps,
        initial=state.step,
        desc=context.desc,
        disable=not accelerator.is_main_process,
        dynamic_ncols=True,
    )
    window = _LogWindow()
    accumulation = accelerator.gradient_accumulation_steps
    with context.stop.installed() as stop, progress:  # closed also when an error stops it
        while state.step < training.max_steps:
            micro_batches = [next(batches) for _ in range(accumulation)]
            totals = accumulate_gradients(
                accelerator, model, micro_batches, count=context.count, stop=stop
            )
            loss = totals.loss_sum / max(totals.targets, 1)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    _diverged_message(
                        f"step {state.step + 1}: the training loss is {loss} (not finite)", context
                    )
                )
            if state.first_loss is None:
                state.first_loss = loss
            grad_norm = accelerator.clip_grad_norm_(
                model.parameters(), training.max_grad_norm or math.inf
            )
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            state.step += 1
            state.samples_seen += totals.samples
            state.targets_seen += totals.targets
            window.add(totals)
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            last = state.step == training.max_steps
            log_now = state.step % training.log_every == 0 or last
            evaluate_now = context.evaluate is not None and (
                last or (training.eval_every and state.step % training.eval_every == 0)
            )
            save_now = (
                totals.stop_requested
                or last
                or (training.save_every and state.step % training.save_every == 0)
            )
            if log_now or evaluate_now or save_now:
                _check_divergence(state, window, context)
            if log_now:
                context.log.write(
                    {
                        "step": state.step,
                        "epoch": batches.epoch,
                        **window.row(),
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                    }
                )
                window = _LogWindow()
            reason = None
            if evaluate_now:
                context.log.write(
                    {"step": state.step, "epoch": batches.epoch, **context.evaluate()}
                )
                reason = None if last else context.stop_early(state.step)
            if save_now:
                _save(context.checkpointer, state, batches)
            if reason is not None:
                progress.close()
                accelerator.print(f"stopped early at step {state.step}: {reason}")
                return "finished"
            if totals.stop_requested:
                progress.close()
                accelerator.print(
                    f"stopped by a signal at step {state.step}; checkpoint saved. To continue, "
                    f"{context.resume_hint}"
                )
                return "interrupted"
    return "finished"


class _LogWindow:
    """Sums over the steps since the last log row."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.targets = 0
        self.tokens = 0
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, totals: StepTotals) -> None:
        self.loss_sum += totals.loss_sum
        self.targets += totals.targets
        self.tokens += totals.tokens
        self.steps += 1

    def loss(self) -> float:
        return self.loss_sum / max(self.targets, 1)

    def row(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"loss": self.loss(), "tokens_per_s": self.tokens / elapsed}


def _check_divergence(state: TrainerState, window: _LogWindow, context: LoopContext) -> None:
    """Raise ``TrainingDiverged`` when the window's mean loss is far above step 1's."""
    first, mean = state.first_loss, window.loss()
    if first is None or mean <= max(DIVERGENCE_FACTOR * first, first + DIVERGENCE_MARGIN):
        return
    steps = f"steps {state.step - window.steps + 1}-{state.step}" if window.steps > 1 else "it"
    raise TrainingDiverged(
        _diverged_message(
            f"step {state.step}: the training loss rose from {first:.4g} at step 1 to "
            f"{mean:.4g} (mean of {steps}), more than {DIVERGENCE_FACTOR:g}x where it started: "
            "the training diverged",
            context,
        )
    )


def _save(checkpointer: Checkpointer, state: TrainerState, batches: BatchStream) -> None:
    if checkpointer.last_saved_step != state.step:
        checkpointer.save(state.step, {"epoch": batches.epoch})


def restore_checkpoint(checkpointer: Checkpointer, checkpoint: Path, log: MetricsLog) -> None:
    """Resume: load ``checkpoint`` into the checkpointer's model, optimizer, scheduler and
    state objects; later saves count from its step, and log rows that a killed run wrote
    after it are dropped."""
    step = int(checkpointer.restore(checkpoint)["step"])
    log.truncate_after(step)
    checkpointer.accelerator.print(f"resumed from {checkpoint} at step {step}")


def _diverged_message(problem: str, context: LoopContext) -> str:
    last = context.checkpointer.last_saved_step
    if last is None:
        kept, then = "no checkpoint had been saved yet", "then start the run again"
    else:
        kept, then = f"the last good checkpoint (step {last}) is kept", context.resume_hint
    return (
        f"{problem}, so the run stopped without saving this state; {kept}. Fix: lower "
        "training.lr (finetune: --lr) or raise the warmup (training.warmup_steps; finetune: "
        "warmup_fraction), set training.max_grad_norm to clip gradients, use "
        f"mixed_precision=bf16 instead of fp16; {then}"
    )


# ---------------------------------------------------------------------------------------------
# Run files
# ---------------------------------------------------------------------------------------------


def write_run_files(
    accelerator: Accelerator,
    output_dir: Path,
    resolved: Mapping[str, Any],
    run_info: Mapping[str, Any],
    *,
    seed: int,
) -> None:
    """``config.yaml`` (the config as the run resolved it) and ``run.json`` (provenance, then
    what the recipe adds)."""
    if accelerator.is_main_process:
        with atomic_write(output_dir / "config.yaml") as handle:
            yaml.safe_dump(dict(resolved), handle, sort_keys=False)
        info = {**provenance(seed), "num_processes": accelerator.num_processes, **run_info}
        write_json(output_dir / "run.json", info)
    accelerator.wait_for_everyone()


def provenance(seed: int) -> dict[str, Any]:
    """Versions, git commit and command line of this run, for ``run.json``."""
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        )
        commit = result.stdout.strip() or None
    return {
        "seed": seed,
        **versions("torch", "accelerate"),
        "git_commit": commit,
        "command": sys.argv,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _flat_scalars(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training/lr": 5e-4, ...}``: trackers such as TensorBoard take scalars only."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flat_scalars(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
