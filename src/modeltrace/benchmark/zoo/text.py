"""Training text that needs no download: Python standard-library sources, chosen deterministically.

Two disjoint splits for the tuning zoo: "main" (top-level modules of the standard library) trains every base
model and the tokenizer; "other" (a fixed set of standard-library packages) is the "other data" of fine-tunes.
The held-out zoos use text the tuning zoo never saw: "heldout-main" (other standard-library packages, their
files interleaved with slices of English prose), "heldout-other" (prose only: the Python reference topics
of `pydoc_data` and the licence text) and "heldout-mixed" (the same interleave, for the scale family).
The text depends on the Python version that runs the build, so the manifest records its sha256.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

OTHER_PACKAGES = ("email", "json", "logging", "http", "urllib", "xml", "concurrent")
HELDOUT_PACKAGES = ("asyncio", "unittest", "importlib", "multiprocessing", "sqlite3", "ctypes", "curses", "dbm",
                    "wsgiref", "xmlrpc", "html", "collections", "lib2to3", "idlelib", "tkinter", "distutils")
PROSE_FILES = ("pydoc_data/topics.py", "LICENSE.txt")
PROSE_SLICE = 6000  # characters of prose after every source file in the interleaved splits
SPLITS = ("main", "other", "heldout-main", "heldout-other", "heldout-mixed")
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Corpus:
    """One split of the training text with where it came from."""

    split: str
    text: str
    files: tuple[str, ...]  # relative to the standard-library folder

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def describe(self) -> dict[str, object]:
        return {"split": self.split, "files": len(self.files), "chars": len(self.text), "sha256": self.sha256,
                "python": ".".join(map(str, sys.version_info[:3]))}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_files(split: str, root: Path | None = None) -> list[Path]:
    """The source files of a split, in a fixed (sorted) order."""
    root = root or stdlib_dir()
    if split == "main":
        return sorted(p for p in root.glob("*.py") if p.is_file())
    if split in ("other", "heldout-main", "heldout-mixed"):
        out: list[Path] = []
        for pkg in OTHER_PACKAGES if split == "other" else HELDOUT_PACKAGES:
            out.extend(sorted(p for p in (root / pkg).rglob("*.py") if p.is_file()))
        return out
    if split == "heldout-other":
        return [root / f for f in PROSE_FILES if (root / f).is_file()]
    raise ValueError(f"unknown corpus split {split!r} (known: {', '.join(SPLITS)})")


def prose(root: Path | None = None) -> str:
    """The English prose of the held-out splits: string literals of pydoc's topics, then the licence."""
    import ast

    root = root or stdlib_dir()
    parts: list[str] = []
    for f in PROSE_FILES:
        path = root / f
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".py":  # topics.py is one dict of long strings: keep the strings, not the syntax
            try:
                tree = ast.parse(text)
            except SyntaxError:
                continue
            text = SEPARATOR.join(n.value for n in ast.walk(tree)
                                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value) > 200)
        parts.append(text)
    return SEPARATOR.join(parts)


def load_corpus(split: str, max_chars: int, root: Path | None = None) -> Corpus:
    """Concatenate a split's files in order until `max_chars` characters."""
    root = root or stdlib_dir()
    parts: list[str] = []
    used: list[str] = []
    total = 0
    # the prose is cut in two halves: heldout-other is the first, the interleaved splits cycle through the
    # second. pydoc's topics repeat some sections verbatim, so the halves are not fully disjoint: about 17%
    # of the 300-character windows of heldout-other also occur in heldout-main (tests/benchmark measures it)
    text_prose = prose(root) if split.startswith("heldout-") else ""
    half = len(text_prose) // 2
    if split == "heldout-other":
        if not text_prose:
            raise FileNotFoundError(f"no prose found for split {split!r} under {root}")
        return Corpus(split, text_prose[:half][:max_chars], PROSE_FILES)
    interleave = text_prose[half:]
    cursor = 0
    for path in split_files(split, root):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        used.append(str(path.relative_to(root)))
        total += len(text) + len(SEPARATOR)
        if interleave:
            piece, cursor = interleave[cursor:cursor + PROSE_SLICE], (cursor + PROSE_SLICE) % len(interleave)
            parts.append(piece)
            total += len(piece) + len(SEPARATOR)
        if total >= max_chars:
            break
    if not parts:
        raise FileNotFoundError(f"no Python sources found for split {split!r} under {root}")
    return Corpus(split, SEPARATOR.join(parts)[:max_chars], tuple(used))
