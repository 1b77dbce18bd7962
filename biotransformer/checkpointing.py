"""Training checkpoints in safetensors and JSON only: written atomically, read strictly.

A checkpoint is ``<output_dir>/checkpoints/step-XXXXXXXX/``, written and read by this module:

- ``model.safetensors``: the unwrapped model's weights (tied weights stored once);
- ``optimizer.safetensors`` + ``optimizer.json``: each parameter's tensors as
  ``state.<parameter index>.<name>``, its other values and the ``param_groups`` in JSON;
- ``scheduler.json``: the learning-rate scheduler's ``state_dict``; ``scaler.json``: the
  gradient scaler's, when fp16 mixed precision uses one;
- ``rng-rank<N>.safetensors`` + ``rng-rank<N>.json``: the random states of process N (torch
  CPU and CUDA generators as tensors, Python's and NumPy's as JSON), one pair per process;
- ``state.json``: the ``state_dict()`` of each named state object (trainer counters, data
  position, model selection): plain numbers;
- ``checkpoint.json``, written last: format, kind of run (pretrain/finetune), step, number of
  processes and the list of files above.

Nothing is pickled, nothing is unpickled. Loading is strict: a file the list does not name, a
missing one, a wrong key or shape is an error naming the file, and a ``.pkl``/``.bin``/``.pt``
file (what older, Accelerate ``save_state`` based versions wrote, or what someone planted) is
refused before anything is read. FSDP (version 2) runs gather their sharded model and
optimizer to the main process on save and scatter them back on resume (``sharding``), so their
checkpoints are these same files; DeepSpeed and Megatron-LM runs are refused (their state is
not one model and one optimizer here). The main process writes the model, optimizer, scheduler
and state; every process writes its own random states. The folder is written under a hidden
``.step-XXXXXXXX.partial`` name and renamed by the main process once every process has
finished, so a run killed mid-save never leaves a folder that looks complete. Which checkpoint
is newest is read from ``checkpoint.json``, never parsed from folder names.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from biotransformer.atomic import safetensors_os_errors, write_json
from biotransformer.errors import ConfigError, ModelDirectoryError
from biotransformer.sharding import (
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_full_model_state,
    load_full_optimizer_state,
)

CHECKPOINT_FILE = "checkpoint.json"
FORMAT = "biotransformer-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth")
UNSUPPORTED = (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)
# What reading a wrong or tampered file can raise (beyond our own checks).
LOAD_ERRORS = (
    OSError,
    SafetensorError,
    LookupError,
    ValueError,
    TypeError,
    AttributeError,
    RuntimeError,
)
RUN_KINDS = {"pretrain": "a pretraining run", "finetune": "a fine-tuning run"}


class Stateful(Protocol):
    """An object whose progress is saved in ``state.json``: plain numbers in, plain out."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def read_checkpoint_info(path: Path) -> dict[str, Any] | None:
    """The ``checkpoint.json`` of a complete checkpoint folder, or None."""
    try:
        info = json.loads((path / CHECKPOINT_FILE).read_text())
        int(info["step"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return info


def complete_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint in ``directory``, oldest first (also those
    of older formats, so that resuming one is refused with a clear message)."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        if path.name.startswith(".") or not path.is_dir():
            continue
        info = read_checkpoint_info(path)
        if info is not None:
            found.append((int(info["step"]), path))
    return sorted(found)


def latest_checkpoint(directory: Path) -> Path | None:
    """The complete checkpoint with the highest saved step, or None."""
    found = complete_checkpoints(directory)
    return found[-1][1] if found else None


def resolve_resume(
    resume: str | os.PathLike[str] | None, directory: Path, *, kind: str, num_processes: int
) -> Path | None:
    """Turn ``--resume`` (None, ``latest`` or a path) into a checked checkpoint folder.

    Without ``--resume``, a run directory that already holds checkpoints is an error rather
    than silently overwritten. ``kind`` (pretrain/finetune) and ``num_processes`` must match
    the checkpoint's (see ``verify_checkpoint``).
    """
    if resume is None:
        existing = latest_checkpoint(directory)
        if existing is not None:
            other = read_checkpoint_info(existing).get("kind", kind)
            if other != kind:
                raise _wrong_kind(existing, other, kind)
            raise ConfigError(
                f"{directory} already holds checkpoints (newest: {existing.name}). Fix: pass "
                "--resume latest to continue that run, or choose a new output directory "
                "(pretrain: training.output_dir, finetune: --out)"
            )
        return None
    if str(resume) == "latest":
        found = latest_checkpoint(directory)
        if found is None:
            raise ConfigError(
                f"--resume latest: no complete checkpoint in {directory}. Fix: start the run "
                "without --resume, or pass the path of a checkpoint folder"
            )
    else:
        found = Path(resume)
    verify_checkpoint(found, kind=kind, num_processes=num_processes)
    return found


def verify_checkpoint(folder: Path, *, kind: str, num_processes: int) -> dict[str, Any]:
    """``checkpoint.json`` of ``folder`` once its files are exactly those it lists, none a
    pickle, and it was written by a run of this ``kind`` with ``num_processes`` processes."""
    info = read_checkpoint_info(folder)
    if info is None:
        raise ConfigError(
            f"--resume {folder}: not a complete checkpoint folder (no readable {CHECKPOINT_FILE})"
        )
    present = {path.name for path in folder.iterdir()} - {CHECKPOINT_FILE}
    pickles = sorted(name for name in present if name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ModelDirectoryError(
            f"{folder / pickles[0]}: a pickle file in a checkpoint folder, refused unread "
            "(unpickling can run any code). The folder was written by an older, pickle-based "
            "version of biotransformer, or modified since. Fix: start a new run (without "
            f"--resume, or in a new output directory), or remove {', '.join(pickles)} if the "
            "rest of the folder is a checkpoint of this version"
        )
    files, processes = info.get("files"), info.get("num_processes")
    ours = (info.get("format"), info.get("format_version")) == (FORMAT, FORMAT_VERSION)
    if not (ours and isinstance(files, list) and isinstance(processes, int)) or not all(
        isinstance(name, str) for name in files
    ):
        raise ModelDirectoryError(
            f"{folder / CHECKPOINT_FILE}: not a checkpoint of this version of biotransformer "
            f"(format {FORMAT!r} version {FORMAT_VERSION}), or modified since. Fix: start a "
            "new run (without --resume, or in a new output directory)"
        )
    if info.get("kind") != kind:
        raise _wrong_kind(folder, info.get("kind"), kind)
    listed = set(info["files"])
    extra, missing = sorted(present - listed), sorted(listed - present)
    if extra:
        raise ModelDirectoryError(
            f"{folder / extra[0]}: not a file of this checkpoint (its {CHECKPOINT_FILE} lists "
            f"{', '.join(sorted(listed))}). Fix: remove it if you put it there; otherwise the "
            "folder was modified: resume from another checkpoint or start a new run"
        )
    if missing:
        raise ModelDirectoryError(
            f"{folder / missing[0]}: missing from the checkpoint (listed in its "
            f"{CHECKPOINT_FILE}). Fix: resume from another checkpoint folder, or start a new run"
        )
    if info["num_processes"] != num_processes:
        raise ConfigError(
            f"{folder} was written by a run with {info['num_processes']} process(es), this run "
            f"has {num_processes}: each process resumes its own share of the data and random "
            f"state. Fix: resume with {info['num_processes']} process(es) (torchrun "
            f"--nproc_per_node {info['num_processes']} / accelerate launch --num_processes "
            f"{info['num_processes']}), or start a new run"
        )
    return info


def _wrong_kind(folder: Path, found: Any, kind: str) -> ConfigError:
    output_dir = folder.parent.parent
    holds = RUN_KINDS.get(found, "a run of an unknown kind")
    if kind == "finetune":
        fix = (
            f"to fine-tune the pretrained model, pass --model {output_dir / 'model'} (written "
            f"when pretraining finishes) with a new --out; to continue the pretraining, run "
            f"biotransformer pretrain ... --output-dir {output_dir} --resume latest"
        )
    else:
        fix = (
            f"continue it with biotransformer finetune ... --out {output_dir} --resume latest, "
            "or choose another training.output_dir (--output-dir) for pretraining"
        )
    return ConfigError(
        f"{folder} holds a checkpoint of {holds}, and {kind} continues only {RUN_KINDS[kind]}. "
        f"Fix: {fix}"
    )


# ---------------------------------------------------------------------------------------------
# Pieces: (JSON document, tensors) pairs, one pair of files each
# ---------------------------------------------------------------------------------------------


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")


def _mismatch(path: Path, problem: str) -> ModelDirectoryError:
    return ModelDirectoryError(
        f"{path}: {problem}; the file is damaged or from a run with another model or settings. "
        "Fix: resume with the model and training settings of the run that wrote it, resume "
        "from another checkpoint folder, or start a new run"
    )


@contextlib.contextmanager
def _loading(path: Path) -> Iterator[None]:
    """Turn what a damaged, tampered or foreign file makes loading raise into
    ``_mismatch(path)``."""
    try:
        yield
    except LOAD_ERRORS as error:
        message = " ".join(str(error).split())[:400]
        raise _mismatch(path, f"{type(error).__name__}: {message}") from None


def _optimizer_pieces(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An optimizer ``state_dict`` as JSON (param_groups, non-tensor values) and tensors."""
    tensors, values = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                values.setdefault(str(index), {})[name] = value
    return {"param_groups": state["param_groups"], "values": values}, tensors


def _optimizer_state(
    document: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    path: Path,
) -> dict[str, Any]:
    """The inverse of ``_optimizer_pieces``, checked against ``optimizer``'s parameters."""
    params = [param for group in optimizer.param_groups for param in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        prefix, index, name = (*key.split(".", 2), "", "")[:3]
        if prefix != "state" or not index.isdigit() or int(index) >= len(params) or not name:
            raise _mismatch(path, f"unknown tensor {key!r}")
        if tensor.ndim and tensor.shape != params[int(index)].shape:
            raise _mismatch(
                path,
                f"{key} has shape {list(tensor.shape)}, its parameter "
                f"{list(params[int(index)].shape)}",
            )
        state.setdefault(int(index), {})[name] = tensor
    for index, entries in document["values"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = document["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise _mismatch(
            path, f"{len(groups)} parameter groups, the optimizer has {len(optimizer.param_groups)}"
        )
    for saved, current in zip(groups, optimizer.param_groups, strict=True):
        if set(saved) != set(current):
            raise _mismatch(
                path, f"parameter group keys {sorted(saved)}, expected {sorted(current)}"
            )
        for key, value in saved.items():  # JSON has lists where the optimizer has tuples
            if isinstance(current.get(key), tuple):
                saved[key] = tuple(value)
    return {"state": state, "param_groups": groups}


def _rng_pieces() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """This process's random states: Python's and NumPy's as JSON, torch's as tensors."""
    version, internal, gauss = random.getstate()
    _, keys, position, has_gauss, cached = np.random.get_state()
    document = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "keys": keys.tolist(),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for device, cuda in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{device}"] = cuda
    return document, tensors


def _restore_rng(document: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    python, numpy = document["python"], document["numpy"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    np.random.set_state(
        (
            "MT19937",
            np.asarray(numpy["keys"], dtype=np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        for device in range(torch.cuda.device_count()):
            if f"cuda.{device}" in tensors:
                torch.cuda.set_rng_state(tensors[f"cuda.{device}"], device)


# ---------------------------------------------------------------------------------------------
# The checkpointer
# ---------------------------------------------------------------------------------------------


class Checkpointer:
    """Save checkpoints of one run atomically into one folder, keep the newest ``keep_last``,
    and restore one.

    ``kind`` is ``"pretrain"`` or ``"finetune"``; ``model``, ``optimizer`` and ``scheduler``
    are the prepared objects; ``state`` names the objects saved in ``state.json``.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        directory: Path,
        keep_last: int,
        *,
        kind: str,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        state: Mapping[str, Stateful],
    ) -> None:
        if accelerator.distributed_type in UNSUPPORTED:
            raise ConfigError(
                f"checkpoints of {accelerator.distributed_type.value} runs (sharded model or "
                "optimizer state) are not supported. Fix: train with FSDP "
                "(recipes/accelerate/fsdp.yaml), DDP (recipes/accelerate/ddp.yaml) or on one "
                "process"
            )
        self.accelerator = accelerator
        self.directory = directory
        self.keep_last = keep_last
        self.kind = kind
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.state = dict(state)
        self.last_saved_step: int | None = None

    @property
    def _scaler(self) -> Any:
        return self.accelerator.scaler

    def files(self) -> list[str]:
        """The files a checkpoint of this run holds, besides ``checkpoint.json``."""
        names = [MODEL_FILE, "optimizer.safetensors", "optimizer.json", "scheduler.json"]
        names += ["state.json"] + (["scaler.json"] if self._scaler is not None else [])
        for rank in range(self.accelerator.num_processes):
            names += [f"rng-rank{rank}.safetensors", f"rng-rank{rank}.json"]
        return names

    def _network(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def save(self, step: int, info: dict[str, Any]) -> Path:
        """Every process calls this at the same step; returns the checkpoint folder."""
        final = self.directory / f"step-{step:08d}"
        staging = self.directory / f".step-{step:08d}.partial"
        accelerator = self.accelerator
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        sharded = is_sharded(accelerator)
        if sharded:  # every process takes part in gathering; the main process gets the state
            weights = full_model_state(self.model)
            optimizer_state = full_optimizer_state(self.model, self.optimizer)
        with safetensors_os_errors(staging):  # a full disk is an OSError naming the folder
            document, tensors = _rng_pieces()
            rank = f"rng-rank{accelerator.process_index}"
            save_file(tensors, staging / f"{rank}.safetensors")
            _write_json(staging / f"{rank}.json", document)
            if accelerator.is_main_process:
                if sharded:
                    tied = set(self._network().tied_weight_keys)
                    kept = {name: value for name, value in weights.items() if name not in tied}
                    save_file(kept, staging / MODEL_FILE)
                else:
                    save_model(self._network(), str(staging / MODEL_FILE))
                    optimizer_state = self.optimizer.state_dict()
                document, tensors = _optimizer_pieces(optimizer_state)
                save_file(tensors, staging / "optimizer.safetensors")
                _write_json(staging / "optimizer.json", document)
                _write_json(staging / "scheduler.json", self.scheduler.state_dict())
                if self._scaler is not None:
                    _write_json(staging / "scaler.json", self._scaler.state_dict())
                states = {name: dict(obj.state_dict()) for name, obj in self.state.items()}
                _write_json(staging / "state.json", states)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            record = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "step": step,
                **info,
                "num_processes": accelerator.num_processes,
                "distributed_type": accelerator.distributed_type.value,
                "files": self.files(),
                "saved_at": time.time(),
            }
            write_json(staging / CHECKPOINT_FILE, record)
            self._replace(staging, final)
            self._prune()
        accelerator.wait_for_everyone()
        self.last_saved_step = step
        return final

    def restore(self, folder: Path) -> dict[str, Any]:
        """Load ``folder`` (checked by ``verify_checkpoint``) into the model, optimizer,
        scheduler, scaler, state objects and this process's random states; returns its
        ``checkpoint.json``. Later saves count from its step."""
        accelerator = self.accelerator
        info = verify_checkpoint(folder, kind=self.kind, num_processes=accelerator.num_processes)
        saved = "scaler.json" in info["files"]
        if saved != (self._scaler is not None):
            raise ConfigError(
                f"{folder}: the run that wrote it {'used' if saved else 'did not use'} fp16 "
                f"mixed precision (a gradient scaler), this run {'does not' if saved else 'does'}. "
                "Fix: resume with the same training.mixed_precision as the run that wrote it"
            )
        sharded = is_sharded(accelerator)
        with _loading(folder / MODEL_FILE):
            if sharded:  # every process reads the full weights and keeps its shard
                missing = load_full_model_state(self.model, load_file(folder / MODEL_FILE))
                missing = sorted(set(missing) - set(self._network().tied_weight_keys))
                unexpected: list[str] = []
            else:
                missing, unexpected = load_model(self._network(), folder / MODEL_FILE, strict=False)
            if missing or unexpected:
                raise ValueError(f"missing {sorted(missing)[:3]}, unknown {sorted(unexpected)[:3]}")
        path = folder / "optimizer.safetensors"
        with _loading(path):
            document = json.loads((folder / "optimizer.json").read_text())
            state = _optimizer_state(document, load_file(path), self.optimizer, path)
            if sharded:
                load_full_optimizer_state(self.model, self.optimizer, state)
        documents = {}
        for name in ["scheduler.json", "state.json"] + (["scaler.json"] if self._scaler else []):
            with _loading(folder / name):
                documents[name] = json.loads((folder / name).read_text())
        pieces = [] if sharded else [("optimizer.safetensors", self.optimizer, state)]
        pieces.append(("scheduler.json", self.scheduler, documents["scheduler.json"]))
        if self._scaler is not None:
            pieces.append(("scaler.json", self._scaler, documents["scaler.json"]))
        states = documents["state.json"]
        with _loading(folder / "state.json"):
            if set(states) != set(self.state):
                raise ValueError(f"it holds {sorted(states)}, this run {sorted(self.state)}")
        pieces += [("state.json", obj, states[name]) for name, obj in self.state.items()]
        for name, target, saved in pieces:
            with _loading(folder / name):
                expected = sorted(target.state_dict())
                if sorted(saved) != expected:
                    raise ValueError(f"keys {sorted(saved)}, expected {expected}")
                target.load_state_dict(saved)
        rank = folder / f"rng-rank{accelerator.process_index}"
        with _loading(rank.with_suffix(".json")):
            document = json.loads(rank.with_suffix(".json").read_text())
            _restore_rng(document, load_file(rank.with_suffix(".safetensors")))
        self.last_saved_step = int(info["step"])
        return info

    def _replace(self, staging: Path, final: Path) -> None:
        retired = None
        if final.exists():
            retired = final.with_name(f".{final.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(final, retired)
        os.replace(staging, final)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)

    def _prune(self, keep: int | None = None) -> None:
        """Remove all but the newest ``keep`` (default ``keep_last``) checkpoints this format
        wrote, and leftover staging folders."""
        ours = [
            path
            for _, path in complete_checkpoints(self.directory)
            if read_checkpoint_info(path).get("format") == FORMAT
        ]
        keep = self.keep_last if keep is None else keep
        for path in ours[: len(ours) - keep]:
            shutil.rmtree(path, ignore_errors=True)
        for leftover in self.directory.glob(".step-*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)

    def remove_all(self) -> None:
        """The run is complete: remove its checkpoints, and the folder once it is empty
        (anything else in it is not ours to remove). The main process calls this."""
        self._prune(keep=0)
        with contextlib.suppress(OSError):
            self.directory.rmdir()
