"""The runtime layer: the one place an Accelerator is built, and the distributed helpers.

Training runs (``engine``) build theirs with ``make_accelerator``; inference commands take
``launched_accelerator``, which is None for a single process. Scheduler steps and gradient
accumulation are set here once, so that every command behaves the same under ``torchrun``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from biotransformer.config import TrainingConfig, check_mixed_precision_device
from biotransformer.sharding import enable_fsdp_on_cpu, fsdp_plugin, fsdp_requested

T = TypeVar("T")


def make_accelerator(
    training: TrainingConfig, *, project_dir: str | Path | None = None
) -> Accelerator:
    """An Accelerator for a run of ``training``; TensorBoard is the tracker when installed.

    ``step_scheduler_with_optimizer=False``: the engine steps the scheduler once per
    optimizer step itself, so schedules count optimizer steps whatever the process count.
    Processes launched on CPUs with Accelerate's FSDP settings (``ACCELERATE_USE_FSDP=true``)
    shard the model with FSDP over gloo (``sharding.enable_fsdp_on_cpu``)."""
    check_mixed_precision_device(training.mixed_precision)
    log_with = "tensorboard" if importlib.util.find_spec("tensorboard") else None
    # Under torchrun on a machine without GPUs, Accelerate sets up gloo only when told cpu=True.
    launched_on_cpu = launched() and not torch.cuda.is_available()
    plugin = fsdp_plugin() if launched_on_cpu and fsdp_requested() else None
    accelerator = Accelerator(
        cpu=launched_on_cpu,
        mixed_precision=training.mixed_precision,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,
        log_with=log_with,
        project_dir=None if project_dir is None else str(project_dir),
        fsdp_plugin=plugin,
    )
    if plugin is not None:
        enable_fsdp_on_cpu(accelerator, plugin)
    return accelerator


def launched() -> bool:
    """Whether this process is one of several (``torchrun``, ``accelerate launch``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_accelerator() -> Accelerator | None:
    """The Accelerator of a multi-process launch (each rank runs its share and results are
    gathered), or None for a single process."""
    return make_accelerator(TrainingConfig()) if launched() else None


def is_main(accelerator: Accelerator | None) -> bool:
    """Whether this process writes the outputs."""
    return accelerator is None or accelerator.is_main_process


def broadcast_from_main(value: T) -> T:
    """The main process's ``value`` on every process (what the others pass is ignored)."""
    box: list[Any] = [value]
    broadcast_object_list(box)
    return box[0]


def leave_process_group() -> None:
    """Under torchrun, leave the process group before exiting: a process that exits still
    holding a gloo group can abort ("terminate called without an active exception")."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()
