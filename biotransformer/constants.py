"""Values that several layers must agree on, stated once."""

from __future__ import annotations

# The label of a position (or record) that no loss or metric counts: padding, unmasked tokens.
# PyTorch's ``cross_entropy`` ignores it by default.
IGNORE_INDEX = -100

# What ``--device`` and ``--dtype`` accept (``devices`` resolves them; the CLI lists them
# without importing torch). ``cuda:N`` stands for any GPU index.
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPE_NAMES = ("auto", "fp32", "bf16", "fp16")

# How ``embed`` pools a record's (a window's) token embeddings into one row.
POOLINGS = ("mean", "max")
