"""biotransformer: Transformer encoders for DNA and protein sequences.

Public names are imported lazily, so ``import biotransformer`` (and the command line's
``--help``) stays fast and does not load torch until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC_NAMES: dict[str, str] = {
    "BioTransformerError": "biotransformer.errors",
    "InputError": "biotransformer.errors",
    "ConfigError": "biotransformer.errors",
    "Tokenizer": "biotransformer.tokenizers",
    "reverse_complement": "biotransformer.tokenizers",
    "read_sequences": "biotransformer.io",
    "SequenceRecord": "biotransformer.io",
    "ModelConfig": "biotransformer.config",
    "Encoder": "biotransformer.model",
    "MaskedLM": "biotransformer.heads",
    "SequenceClassifier": "biotransformer.heads",
    "SequenceRegressor": "biotransformer.heads",
    "TokenClassifier": "biotransformer.heads",
    "load_model": "biotransformer.hub",
}

__all__ = ["__version__", *_PUBLIC_NAMES]


def __getattr__(name: str) -> Any:
    module_name = _PUBLIC_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'biotransformer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
