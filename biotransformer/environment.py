"""Where a result came from: the machine and the software versions, recorded beside benchmark
figures and in each training run's ``run.json``."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def machine() -> dict[str, Any]:
    """Platform, processor, CPU count and the 1, 5 and 15 minute load averages (how busy the
    machine was: timings taken at a high load are slower)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1_5_15min": list(os.getloadavg()),
    }


def versions(*distributions: str) -> dict[str, str | None]:
    """The versions of Python, biotransformer and each named distribution (as ``pip`` names
    it, e.g. ``fair-esm``); None for one that is not installed."""
    from biotransformer import __version__

    found: dict[str, str | None] = {
        "python": platform.python_version(),
        "biotransformer": __version__,
    }
    for name in distributions:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
