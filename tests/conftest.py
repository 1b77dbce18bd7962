"""Shared fixtures: the real data in ../shared/data, and small generated inputs."""

from __future__ import annotations

import os
from pathlib import Path

# pytest-xdist runs one test file per core (pyproject's addopts): each worker, and every process
# it starts, computes on one thread, so parallel files do not oversubscribe the cores. Set before
# anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import pytest
from helpers import reset_accelerate_state
from hypothesis import settings

# Under CI, property tests draw the same examples every run: a red CI is then a reproducible
# defect, never a lucky draw. Locally they explore new examples each run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    os.environ.get("BIOTRANSFORMER_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")
)


def require_shared_data() -> Path:
    """Return ``../shared/data``; skip with a reason when absent, but fail under ``CI``."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    message = (
        f"real data folder {SHARED_DATA} is absent: clone the project next to its shared/ "
        "folder or set BIOTRANSFORMER_SHARED_DATA"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so a missing data folder is an error)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real sequence data used by tests (see ../shared/data/README.md)."""
    return require_shared_data()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; a module whose tests build their own
    Accelerator (finetune, pretrain, train_loop) uses this so no state leaks between tests."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()
