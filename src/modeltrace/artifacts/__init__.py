"""Artifacts around the weights (config, tokenizer, chat template, modelling code, tensor names).

Every file is parsed as data with a size cap and never executed: no `trust_remote_code`, no
import of a model's Python files, no SentencePiece or tokenizer runtime.
"""

from __future__ import annotations
