"""biotransformer: Transformer encoders for DNA and protein sequences.

Public names are imported lazily, so ``import biotransformer`` (and the command line's
``--help``) stays fast and does not load torch until a model is needed::

    import biotransformer as bt

    model = bt.load_model("runs/finetune/model")   # or "hf:DIR", "fair-esm:FILE.pt"
    embeddings = model.embed(["ACGTACGT", "TTGACA"])
    predictions = model.predict("sequences.fasta")

``docs/api.md`` describes every public name.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC_NAMES: dict[str, str] = {
    "BioTransformerError": "biotransformer.errors",
    "InputError": "biotransformer.errors",
    "ConfigError": "biotransformer.errors",
    "ModelDirectoryError": "biotransformer.errors",
    "Tokenizer": "biotransformer.tokenizers",
    "reverse_complement": "biotransformer.tokenizers",
    "read_sequences": "biotransformer.io",
    "SequenceRecord": "biotransformer.io",
    "ModelConfig": "biotransformer.config",
    "Encoder": "biotransformer.model",
    # The model classes come through the API module, which implements their embed, predict
    # and score_variants methods (see biotransformer/api.py).
    "BioTransformerModel": "biotransformer.api",
    "MaskedLM": "biotransformer.api",
    "SequenceClassifier": "biotransformer.api",
    "SequenceRegressor": "biotransformer.api",
    "TokenClassifier": "biotransformer.api",
    "load_model": "biotransformer.api",
    "embed": "biotransformer.api",
    "predict": "biotransformer.api",
    "score_variants": "biotransformer.api",
    "finetune": "biotransformer.api",
    "pretrain": "biotransformer.api",
    "read_records": "biotransformer.api",
    "Embeddings": "biotransformer.api",
    "Predictions": "biotransformer.api",
    "VariantScores": "biotransformer.api",
    "RunResult": "biotransformer.api",
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
