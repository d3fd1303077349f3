"""Untrusted text and numbers made safe for a terminal, a report or a JSON document.

`escape` turns any string (tensor names, token contents, config values) into one that prints on
any console and encodes to UTF-8: control, bidi and invisible format characters and lone
surrogates become visible escapes, and the length is capped. `dumps` writes canonical JSON in
which a non-finite float (NaN, +-Infinity) is `null`, since JSON has no such numbers and a
consumer must not choke on `NaN`; `allow_nan=False` makes any value that slips past fail loudly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

# C0/C1 controls, line/paragraph separators, bidi embeddings, overrides and isolates, zero-width and
# direction marks, the byte-order mark, interlinear annotation marks, and lone surrogates (which no
# encoder accepts: a tokenizer file may hold one as a JSON "\ud800" escape)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb"
                     "\ud800-\udfff]")


def _escaped(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def escape(text: object, limit: int = 300) -> str:
    """Return `text` with unsafe characters escaped (see the module doc) and its length capped."""
    try:
        s = text if isinstance(text, str) else str(text)
    except Exception:  # noqa: BLE001 - a value whose __str__ fails still gets a printable stand-in
        s = f"<unprintable {type(text).__name__}>"
    if len(s) > 4 * limit + 16:  # escaping can only lengthen: cut first, so a huge string costs O(limit)
        s = s[: 4 * limit + 16]
    s = _UNSAFE.sub(_escaped, s)
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    return s


def finite(obj: Any, _depth: int = 0) -> Any:
    """`obj` as plain JSON data: non-finite floats become None, numpy values plain Python, tuples lists.

    Mappings keep their keys as strings; anything else unknown becomes its string. Depth is capped
    at 100 (a deeper value becomes the string "<nested too deeply>"), so a cyclic or hostile structure
    cannot recurse forever.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if _depth > 100:
        return "<nested too deeply>"
    if isinstance(obj, Mapping):
        return {str(k): finite(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [finite(v, _depth + 1) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return finite(tolist(), _depth + 1)
    return str(obj)


def dumps(obj: Any, **kwargs: Any) -> str:
    """Canonical JSON of `obj` after `finite`: never NaN or Infinity (allow_nan=False enforces it)."""
    kwargs.setdefault("ensure_ascii", True)
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
