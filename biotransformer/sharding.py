"""FSDP (version 2): what changes when the model is sharded across processes.

Under FSDP each process holds a slice of every parameter, gradient and optimizer moment
(``DTensor``s). Everything that needs the whole model goes through this module:

- ``full_model_state`` / ``full_optimizer_state`` gather the full, unsharded state dicts to
  the main process (CPU memory), so a checkpoint is the same safetensors + JSON files as an
  unsharded run's; ``load_full_model_state`` / ``load_full_optimizer_state`` scatter them back;
- ``replica`` builds a plain, unsharded copy of the model on every process, for evaluation and
  for saving the ordinary model directory: evaluation runs each process's share of the batches
  without the per-layer all-gathers of the sharded model, whose ranks would otherwise have to
  take exactly as many batches each.

Gathering to one process needs that process to hold the whole model and optimizer in CPU
memory (12 bytes per parameter with AdamW: 7.8 GB for 650M parameters); this is the price of a
checkpoint that any process count and any tool can read.

Accelerate builds FSDP only for accelerators (GPUs); ``enable_fsdp_on_cpu`` makes a run
launched on CPUs with Accelerate's FSDP settings (``ACCELERATE_USE_FSDP=true`` and the
``FSDP_*`` variables that ``accelerate launch --config_file recipes/accelerate/fsdp.yaml``
sets) shard with gloo, through the same Accelerate code that prepares the model on GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn

from biotransformer.errors import ConfigError

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import StateDictOptions


def fsdp_requested() -> bool:
    """Whether the launch asks for FSDP (``accelerate launch`` sets this from its config)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """Accelerate's FSDP settings, read from the ``FSDP_*`` environment variables."""
    return FullyShardedDataParallelPlugin()


def enable_fsdp_on_cpu(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    """Make a CPU (gloo) accelerator of several processes shard the model with ``plugin``.

    Accelerate sets the FSDP distributed type only for accelerators; gloo has every
    collective FSDP2 uses, so the state is switched after the process group is up and
    ``prepare`` then shards the model as it does on GPUs."""
    if plugin.fsdp_version != 2:
        raise ConfigError(
            f"FSDP version {plugin.fsdp_version} on CPU processes: only FSDP version 2 runs "
            "here. Fix: set fsdp_version: 2 (recipes/accelerate/fsdp.yaml) or FSDP_VERSION=2"
        )
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether the model of this run is sharded by FSDP."""
    return accelerator.distributed_type == DistributedType.FSDP


def _options(*, gather: bool = False, scatter: bool = False) -> StateDictOptions:
    """Full state dicts: gathered to the main process in CPU memory (``gather``), or loaded
    from a full state on every process, tied weights not required (``scatter``).

    ``torch.distributed.checkpoint`` (and ``torch.distributed.fsdp``) are imported where a
    sharded model needs them, not with this module: they take over a second to import, and
    every command that runs a model imports this module."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=gather, strict=not scatter)


def plain_class(module: nn.Module) -> type[nn.Module]:
    """The model's own class (FSDP2 makes a sharded module an instance of a subclass)."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(module).__mro__ if not issubclass(cls, FSDPModule))


def check_rebuildable(model: nn.Module) -> None:
    """Refuse, before training starts, a model that ``replica`` could not rebuild from its
    config (e.g. one with LoRA adapters): its evaluation and model directory need a replica."""
    with torch.device("meta"):
        fresh = plain_class(model)(model.config, model.head_config)
    extra = sorted(set(model.state_dict()) - set(fresh.state_dict()))
    if extra:
        raise ConfigError(
            f"FSDP: the model holds weights its configuration does not build ({extra[0]}, "
            f"{len(extra)} in all; LoRA adapters?), so it cannot be gathered into an ordinary "
            "model for evaluation. Fix: train it with DDP (recipes/accelerate/ddp.yaml, or "
            "torchrun without ACCELERATE_USE_FSDP): LoRA's trainable weights are small"
        )


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every process calls this; the main process gets the full weights (CPU), others {}."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(gather=True))


def load_full_model_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Load full weights (the same on every process) into the sharded model; returns the
    names of the model's weights the state does not hold (tied ones are not saved twice).
    Every process calls this."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    result = set_model_state_dict(model, dict(state), options=_options(scatter=True))
    if result.unexpected_keys:
        raise ValueError(f"unknown weights {sorted(result.unexpected_keys)[:3]}")
    # Measured (torch 2.13, 2 gloo ranks): without one state_dict() call after loading (its
    # pre-hook returns FSDP2's parameters to their sharded state, as a checkpoint save does in
    # an uninterrupted run), a resumed run drifted from the uninterrupted one by ~1e-9 within
    # 10 steps; with it the two end bit-identical. It reads local shards: no communication.
    model.state_dict()
    return list(result.missing_keys)


def parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each of the optimizer's parameters, in the order of its parameter groups
    (the order of an ordinary optimizer ``state_dict``'s parameter indices)."""
    names = {id(param): name for name, param in model.named_parameters()}
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state as an ordinary ``state_dict`` (parameters by index) on the
    main process, {} on the others. Every process calls this."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    gathered = get_optimizer_state_dict(model, _unwrapped(optimizer), options=_options(gather=True))
    if not gathered:
        return {}
    index = {name: i for i, name in enumerate(parameter_names(model, optimizer))}
    groups = [
        {**group, "params": [index[name] for name in group["params"]]}
        for group in gathered["param_groups"]
    ]
    state = {index[name]: values for name, values in gathered["state"].items()}
    return {"state": state, "param_groups": groups}


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
) -> None:
    """The inverse of ``full_optimizer_state``: every process passes the same full state."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = parameter_names(model, optimizer)
    groups = [
        {**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]
    ]
    by_name = {names[int(i)]: values for i, values in state["state"].items()}
    set_optimizer_state_dict(
        model,
        _unwrapped(optimizer),
        {"state": by_name, "param_groups": groups},
        options=_options(),
    )


def replica(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """A plain, unsharded copy of the sharded ``model`` on every process (same weights, same
    mode, its tokenizer attached), on the accelerator's device. Every process calls this."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options())
    with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the stream
        copy = plain_class(model)(model.config, model.head_config)
    missing, unexpected = copy.load_state_dict(state, strict=False)
    if unexpected or set(missing) - set(copy.tied_weight_keys):
        raise RuntimeError(f"replica: missing {missing[:3]}, unknown {unexpected[:3]}")
    copy.tokenizer = getattr(model, "tokenizer", None)
    return copy.to(accelerator.device).train(model.training)


def _unwrapped(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
