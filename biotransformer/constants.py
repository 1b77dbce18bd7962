"""Values that several layers must agree on, stated once."""

from __future__ import annotations

# The label of a position (or record) that no loss or metric counts: padding, unmasked tokens.
# PyTorch's ``cross_entropy`` ignores it by default.
IGNORE_INDEX = -100
