"""The benchmark zoo: tiny Llama, GPT-2 and BERT models trained on Python's own sources, their derivations,
a tiny multimodal family, and a manifest (schema modeltrace.zoo/1) with the ground truth of every pair."""

from __future__ import annotations

from modeltrace.benchmark.zoo.build import SCHEMA, ZooEvent, build_zoo, console_progress, default_cache
from modeltrace.benchmark.zoo.settings import FULL, QUICK, SETTINGS, TINY, ZooSettings

__all__ = ["FULL", "QUICK", "SCHEMA", "SETTINGS", "TINY", "ZooEvent", "ZooSettings", "build_zoo",
           "console_progress", "default_cache"]
