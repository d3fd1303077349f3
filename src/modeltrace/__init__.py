"""modeltrace: is model B derived from model A? Evidence a third party can check."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
