"""Find the checkpoints of a collection: a folder tree, a list file, or a Hugging Face hub cache.

A folder is one model when it holds a config.json or weight files at its top (its sub-folders are
then part of it); weight files outside any model folder are models of their own. In a hub cache
(``models--org--name/snapshots/<revision>/``) each snapshot is one model. Links are not followed
out of the root (a hostile collection could point anywhere), and the walk is bounded.
"""

from __future__ import annotations

import os
from pathlib import Path

from modeltrace.errors import ResolveError
from modeltrace.model import WEIGHT_SUFFIXES

MAX_ENTRIES = 1_000_000


def _is_model_dir(d: Path) -> bool:
    try:
        names = os.listdir(d)
    except OSError:
        return False
    return "config.json" in names or any(n.endswith(WEIGHT_SUFFIXES) for n in names)


def walk(root: Path) -> list[str]:
    """Model references under `root` (a folder, a hub cache, or a text file listing one reference per line)."""
    if root.is_file() and root.suffix in (".txt", ".lst", ".list"):
        lines = root.read_text(encoding="utf-8", errors="replace").splitlines()
        return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if root.is_file():
        return [str(root)]
    if not root.is_dir():
        raise ResolveError(str(root), "no such file or folder")
    out: list[str] = []
    seen = 0
    stack = [root]
    real_root = root.resolve()
    while stack:
        d = stack.pop()
        seen += 1
        if seen > MAX_ENTRIES:
            break
        if d.name == "snapshots" and d.parent.name.startswith("models--"):
            out.extend(str(s) for s in sorted(d.iterdir()) if s.is_dir())
            continue
        if d != root and _is_model_dir(d):
            out.append(str(d))
            continue
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        if d == root and _is_model_dir(d) and not any(e.is_dir() and _is_model_dir(e) for e in entries):
            out.append(str(d))
            continue
        for e in entries:
            if e.is_symlink() and not e.resolve().is_relative_to(real_root):
                continue  # never leave the collection through a link
            if e.is_dir():
                if e.name.startswith(".") or e.name in ("blobs", "refs"):
                    continue
                stack.append(e)
            elif e.suffix in WEIGHT_SUFFIXES and d == root or e.suffix in WEIGHT_SUFFIXES and not _is_model_dir(d):
                out.append(str(e))
    return sorted(dict.fromkeys(out))
