"""Escaping of untrusted text (tensor names, config values) before it reaches a terminal or report."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape(text: object, limit: int = 300) -> str:
    """Return `text` with control and bidi characters escaped and length capped."""
    s = str(text)
    s = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", s)
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    return s
