"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations


def reset_accelerate_state() -> None:
    """Drop Accelerate's process-wide singletons, so the next Accelerator is built afresh."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
