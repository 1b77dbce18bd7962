"""Training checkpoints: atomic ``save_state`` folders, the newest complete one, the last K kept.

A checkpoint is ``<output_dir>/checkpoints/step-XXXXXXXX/``: what ``accelerator.save_state``
writes (model, optimizer, scheduler, gradient scaler, RNG states of every process, registered
objects such as the trainer state and the data position) plus ``checkpoint.json``. It is
written under a hidden ``.step-XXXXXXXX.partial`` name and renamed by the main process once
every process has finished, so a run killed mid-save never leaves a folder that looks complete.
Which checkpoint is newest is read from ``checkpoint.json``, never parsed from folder names.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from biotransformer.atomic import atomic_write
from biotransformer.errors import ConfigError

CHECKPOINT_FILE = "checkpoint.json"


def read_checkpoint_info(path: Path) -> dict[str, Any] | None:
    """The ``checkpoint.json`` of a complete checkpoint folder, or None."""
    try:
        return json.loads((path / CHECKPOINT_FILE).read_text())
    except (OSError, ValueError):
        return None


def complete_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint in ``directory``, oldest first."""
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


def resolve_resume(resume: str | os.PathLike[str] | None, directory: Path) -> Path | None:
    """Turn ``--resume`` (None, ``latest`` or a path) into a checkpoint folder.

    Without ``--resume``, a run directory that already holds checkpoints is an error rather
    than silently overwritten.
    """
    if resume is None:
        existing = latest_checkpoint(directory)
        if existing is not None:
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
        return found
    path = Path(resume)
    if read_checkpoint_info(path) is None:
        raise ConfigError(
            f"--resume {path}: not a complete checkpoint folder (no readable {CHECKPOINT_FILE})"
        )
    return path


class Checkpointer:
    """Save checkpoints atomically into one folder and keep the newest ``keep_last``."""

    def __init__(self, accelerator: Accelerator, directory: Path, keep_last: int) -> None:
        self.accelerator = accelerator
        self.directory = directory
        self.keep_last = keep_last
        self.last_saved_step: int | None = None

    def save(self, step: int, info: dict[str, Any]) -> Path:
        """Every process calls this at the same step; returns the checkpoint folder."""
        final = self.directory / f"step-{step:08d}"
        staging = self.directory / f".step-{step:08d}.partial"
        accelerator = self.accelerator
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with atomic_write(staging / CHECKPOINT_FILE) as handle:
                json.dump({"step": step, **info, "saved_at": time.time()}, handle, indent=2)
            self._replace(staging, final)
            self._prune()
        accelerator.wait_for_everyone()
        self.last_saved_step = step
        return final

    def _replace(self, staging: Path, final: Path) -> None:
        retired = None
        if final.exists():
            retired = final.with_name(f".{final.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(final, retired)
        os.replace(staging, final)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)

    def _prune(self) -> None:
        for _, path in complete_checkpoints(self.directory)[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)
        for leftover in self.directory.glob(".step-*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
