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
