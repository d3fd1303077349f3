"""Training text that needs no download: Python standard-library sources, chosen deterministically.

Two disjoint splits: "main" (top-level modules of the standard library) trains every base model and the
tokenizer; "other" (a fixed set of standard-library packages) is the "other data" of fine-tunes.
The text depends on the Python version that runs the build, so the manifest records its sha256.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

OTHER_PACKAGES = ("email", "json", "logging", "http", "urllib", "xml", "concurrent")
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
    if split == "other":
        out: list[Path] = []
        for pkg in OTHER_PACKAGES:
            out.extend(sorted(p for p in (root / pkg).rglob("*.py") if p.is_file()))
        return out
    raise ValueError(f"unknown corpus split {split!r} (known: main, other)")


def load_corpus(split: str, max_chars: int, root: Path | None = None) -> Corpus:
    """Concatenate a split's files in order until `max_chars` characters."""
    root = root or stdlib_dir()
    parts: list[str] = []
    used: list[str] = []
    total = 0
    for path in split_files(split, root):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        used.append(str(path.relative_to(root)))
        total += len(text) + len(SEPARATOR)
        if total >= max_chars:
            break
    if not parts:
        raise FileNotFoundError(f"no Python sources found for split {split!r} under {root}")
    return Corpus(split, SEPARATOR.join(parts)[:max_chars], tuple(used))
