"""The pretraining recipe: masked-token prediction on a corpus of HDF5 shards.

``pretrain(config)`` runs ``PretrainRecipe`` on the run engine (``engine``): FASTA inputs are
prepared into shards first (once), the model is a ``MaskedLM`` of ``config.model``, the
held-out split gives the validation loss and perplexity, and a finished run saves the model
directory ``model/`` and the run report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader

from biotransformer import engine
from biotransformer.checkpointing import Stateful, latest_checkpoint
from biotransformer.config import DataConfig, RunConfig, TrainingConfig
from biotransformer.data.collator import MaskingCollator
from biotransformer.data.sampler import TokenBudgetBatchSampler
from biotransformer.data.shards import ShardDataset, prepare_corpus
from biotransformer.engine import MODEL_INPUTS, Outcome, Plan, Run
from biotransformer.errors import ConfigError
from biotransformer.heads import MaskedLM
from biotransformer.outputs import keep_input_copies
from biotransformer.tokenizers import Tokenizer, canonical_spec, parse_spec


@dataclass
class PretrainResult:
    """Where a pretraining run left its outputs, whether it reached ``max_steps``, and this
    process's copy of the trained model."""

    output_dir: Path
    step: int
    outcome: Literal["finished", "interrupted"]
    model_dir: Path | None
    last_checkpoint: Path | None
    model: nn.Module


def pretrain(
    config: RunConfig,
    *,
    resume: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    keep_inputs: bool = False,
) -> PretrainResult:
    """Masked-LM pretraining of ``config`` under Accelerate (one or many processes).

    FASTA inputs are prepared into ``<output_dir>/data`` first (once). ``resume`` is None
    (a new run), ``"latest"`` or a checkpoint folder. Writes ``config.yaml``, ``run.json``,
    ``log.jsonl``, ``checkpoints/step-XXXXXXXX/`` and, at the end, the model directory
    ``model/`` and the run report (``metrics.json``, curves as PNG, ``report.html``).
    ``training.output_dir`` is claimed for the run first (``outputs.claim_run_directory``);
    ``overwrite`` replaces an earlier run there (only the files it recorded as written).
    ``keep_inputs``: ``data.train_files`` are temporary (sequences given in memory to
    ``api.pretrain``); the run copies them into ``<output_dir>/inputs/`` and its
    ``config.yaml`` names the copies, so that it reruns.
    """
    recipe = PretrainRecipe(config, keep_inputs=keep_inputs)
    return engine.run(recipe, resume=resume, overwrite=overwrite)


class PretrainRecipe:
    """Masked-LM pretraining as a recipe of the run engine (see ``engine.Recipe``)."""

    kind: Literal["pretrain"] = "pretrain"
    output_flag = "training.output_dir"

    def __init__(self, config: RunConfig, *, keep_inputs: bool = False) -> None:
        self.config = config
        self.keep_inputs = keep_inputs
        self.training: TrainingConfig = config.training
        self.output_dir = Path(config.training.output_dir)
        self.resume_hint = (
            f"rerun the same command with --resume latest (output_dir {self.output_dir})"
        )

    def inputs(self) -> list[str | os.PathLike[str] | None]:
        return [*(self.config.data.train_files or []), self.config.data.shard_dir]

    def plan(self, accelerator: Accelerator) -> Plan:
        data = self.config.data
        if self.keep_inputs:
            data.train_files = keep_input_copies(accelerator, self.output_dir, data.train_files)
        shard_dir = _prepared_shards(accelerator, data, self.output_dir)
        train_set = ShardDataset(shard_dir, "train", max_length=data.max_length, seed=data.seed)
        self.valid_set = ShardDataset(
            shard_dir, "valid", max_length=data.max_length, seed=data.seed
        )
        self.tokenizer = tokenizer = train_set.tokenizer
        if data.tokenizer is not None and tokenizer.spec != canonical_spec(
            *parse_spec(data.tokenizer)
        ):
            raise ConfigError(
                f"{shard_dir} was prepared with tokenizer {tokenizer.spec!r}, the config asks "
                f"for {data.tokenizer!r}. Fix: set data.tokenizer to {tokenizer.spec!r} (or null)"
            )
        if len(self.valid_set) == 0 and self.training.eval_every:
            raise ConfigError(
                f"{shard_dir} has no validation sequences. Fix: raise data.valid_fraction, or "
                "set training.eval_every=0"
            )
        set_seed(self.training.seed)  # the same initial weights on every process
        # The LM head runs only at masked positions: the loss is the same, the head's work ~15%.
        model = MaskedLM(
            self.config.model_config(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id),
            target_logits_only=True,
        )
        return Plan(
            model=model,
            train_set=train_set,
            collator=MaskingCollator(tokenizer, **self.masking()),
            max_tokens=data.max_tokens,
            seed=data.seed,
            budget_option="data.max_tokens",
            num_workers=data.num_workers,
        )

    def masking(self) -> dict[str, Any]:
        """The collator's masking options, from ``config.data``."""
        data = self.config.data
        return {
            "mask_rate": data.mask_rate,
            "mask_token_rate": data.mask_token_rate,
            "random_token_rate": data.random_token_rate,
            "span_length": data.span_length,
            "seed": data.seed,
        }

    def resolve(self, steps_per_epoch: int) -> TrainingConfig:
        return self.training  # pretraining counts steps, not epochs: nothing to derive

    def run_files(self, training: TrainingConfig) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.config.to_dict(), {}

    def checkpoint_state(self) -> dict[str, Stateful]:
        return {}

    def evaluator(self, run: Run) -> Callable[[], dict[str, float]] | None:
        if not len(self.valid_set):
            return None
        batches = _ValidBatches(
            self.valid_set, self.tokenizer, self.masking(), self.config.data, run.accelerator
        )
        return lambda: evaluate_masked_lm(run.accelerator, run.network(), batches)

    def finish(self, run: Run, outcome: Outcome) -> PretrainResult:
        model_dir = None
        network = run.network()  # under FSDP every process gathers the weights
        if outcome == "finished":
            model_dir = self.output_dir / "model"
            if run.accelerator.is_main_process:
                network.save_pretrained(model_dir, tokenizer=self.tokenizer)
                from biotransformer.report import write_pretrain_report  # matplotlib: lazily

                write_pretrain_report(
                    self.output_dir, data=self.describe_data(), model=self.describe_model(network)
                )
            run.accelerator.wait_for_everyone()
        return PretrainResult(
            output_dir=self.output_dir,
            step=run.state.step,
            outcome=outcome,
            model_dir=model_dir,
            last_checkpoint=latest_checkpoint(self.output_dir / "checkpoints"),
            model=network,
        )

    def describe_data(self) -> str:
        """The corpus in words, for the report's title: its FASTA names or its shard folder."""
        files = [Path(name).name for name in self.config.data.train_files]
        if not files:
            return str(self.config.data.shard_dir)
        shown = ", ".join(files[:3])
        return shown if len(files) <= 3 else f"{shown} and {len(files) - 3} more files"

    def describe_model(self, network: MaskedLM) -> str:
        """The model in words, for the report's title: preset, size, tokens."""
        config = network.config
        size = f"{config.num_layers} layers of width {config.hidden_size}"
        preset = self.config.model.get("preset")
        name = size if preset is None else f"{preset} ({size})"
        tokens = self.config.data.tokenizer or self.tokenizer.spec  # as the user wrote it
        return f"{name}, {network.num_parameters() / 1e6:.2f}M parameters, {tokens}"

    def stop_early(self, step: int) -> str | None:
        """Pretraining runs its ``max_steps``."""
        return None

    def abandon(self, run: Run) -> None:
        """Nothing to remove: a pretraining run writes its model only when it finishes."""


@torch.no_grad()
def evaluate_masked_lm(
    accelerator: Accelerator, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]
) -> dict[str, float]:
    """Held-out masked-LM loss (summed token losses / targets over all processes) and its
    perplexity. Runs the unwrapped model, so ranks with different batch counts never wait on
    a DDP collective."""
    network = accelerator.unwrap_model(model, keep_torch_compile=False)
    was_training = network.training
    network.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    with accelerator.autocast():
        for batch in batches:
            inputs = {k: batch[k].to(accelerator.device) for k in MODEL_INPUTS}
            output = network(**inputs)
            totals[0] += output.loss_sum.double()
            totals[1] += output.num_targets.double()
    network.train(was_training)
    loss_sum, targets = accelerator.reduce(totals, reduction="sum").tolist()
    loss = loss_sum / max(targets, 1.0)
    return {"valid_loss": loss, "valid_perplexity": math.exp(min(loss, 700.0))}


def _prepared_shards(accelerator: Accelerator, data: DataConfig, output_dir: Path) -> Path:
    """The shard directory: ``data.shard_dir``, or FASTA inputs prepared (once) by the main
    process into ``<output_dir>/data`` while the others wait."""
    if data.shard_dir is not None:
        return Path(data.shard_dir)
    shard_dir = output_dir / "data"
    with accelerator.main_process_first():
        if accelerator.is_main_process:
            tokenizer = Tokenizer.from_spec(
                data.tokenizer,
                train_files=data.train_files if data.tokenizer.startswith("dna-bpe") else None,
            )
            summary = prepare_corpus(
                data.train_files,
                tokenizer,
                shard_dir,
                window_tokens=data.window_tokens,
                stride=data.stride,
                valid_fraction=data.valid_fraction,
                seed=data.seed,
                progress=False,
            )
            if not summary.skipped:
                accelerator.print(
                    f"prepared {summary.tokens.get('train', 0)} train and "
                    f"{summary.tokens.get('valid', 0)} valid tokens into {shard_dir}"
                )
    return shard_dir


class _ValidBatches:
    """The held-out split, each process its share, masked the same way at every evaluation."""

    def __init__(
        self,
        dataset: ShardDataset,
        tokenizer: Tokenizer,
        masking: dict[str, Any],
        data: DataConfig,
        accelerator: Accelerator,
    ) -> None:
        self.dataset = dataset
        # Every selected position becomes the mask token: the held-out loss then measures
        # prediction of unseen residues, comparable with n-gram baselines.
        self.collator = MaskingCollator(
            tokenizer, **{**masking, "mask_token_rate": 1.0, "random_token_rate": 0.0}
        )
        self.sampler = (
            TokenBudgetBatchSampler(
                dataset.lengths,
                data.max_tokens,
                shuffle=False,
                seed=data.seed,
                num_replicas=accelerator.num_processes,
                rank=accelerator.process_index,
            )
            if len(dataset)
            else None
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.sampler is None:
            return iter(())
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=self.collator,
            generator=torch.Generator(),
        )
        return iter(loader)
