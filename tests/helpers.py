"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations


def reset_accelerate_state() -> None:
    """Drop Accelerate's process-wide singletons, so the next Accelerator is built afresh."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_torchrun(arguments: list[str], *, env: dict[str, str] | None = None, timeout: float = 170):
    """Run ``torchrun --standalone --nproc_per_node 2 ARGUMENTS``: two real gloo ranks on a
    rendezvous port torchrun picks itself. A failure shows the ranks' own output."""
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"torchrun exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
        f"\n--- stderr\n{result.stderr[-6000:]}"
    )
    return result


def save_legacy_model_directory(model, directory, task: dict | None = None):
    """A model directory as written before the head held its decision fields: ``config.json``
    and the weights from ``save_pretrained`` (its head section without ``threshold`` and
    ``rc_average``), plus the ``task.json`` that ``finetune`` wrote beside them. ``task``
    defaults to the model's own task."""
    import json
    from pathlib import Path

    directory = Path(directory)
    model.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    for name in ("threshold", "rc_average"):
        config["head"].pop(name, None)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "task.json").write_text(json.dumps(task or model.task.to_dict()))
    return directory
