"""A probe set on disk: `items.jsonl` (one item a line) with images beside it in `images/`.

An item has an id, a prompt, the right answer, and optionally the choices (multiple choice),
plausible confusions, and an image file. Images are referenced by relative path and hashed
into the item's canonical form, so a commitment covers their bytes too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modeltrace.errors import ProbeError

ITEMS_FILE = "items.jsonl"
MAX_ITEMS_BYTES = 256 * 1024 * 1024
MAX_IMAGE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ProbeItem:
    """One question with a known answer."""

    id: str
    prompt: str
    answer: str
    choices: tuple[str, ...] = ()
    confusions: tuple[str, ...] = ()  # wrong answers a reader could plausibly give
    image: str | None = None  # path relative to the set folder
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["choices"] = list(self.choices)
        d["confusions"] = list(self.confusions)
        return {k: v for k, v in d.items() if v not in (None, [], {})}


@dataclass
class ProbeSet:
    """Items of a probe set and the folder they live in."""

    root: Path
    items: list[ProbeItem]

    def image_bytes(self, item: ProbeItem) -> bytes | None:
        if item.image is None:
            return None
        p = (self.root / item.image).resolve()
        if not p.is_relative_to(self.root.resolve()):
            raise ProbeError(f"{self.root / ITEMS_FILE}: item {item.id!r} image path {item.image!r} "
                             "points outside the set folder")
        if not p.is_file():
            raise ProbeError(f"{self.root / ITEMS_FILE}: item {item.id!r} image {item.image!r} is missing")
        if p.stat().st_size > MAX_IMAGE_BYTES:
            raise ProbeError(f"{p}: image over {MAX_IMAGE_BYTES} bytes")
        return p.read_bytes()

    def canonical(self, item: ProbeItem) -> bytes:
        """The bytes a commitment hashes: sorted-key compact JSON, with the image's sha256 in place of its path."""
        d = item.to_json()
        img = self.image_bytes(item)
        if img is not None:
            d["image"] = {"sha256": hashlib.sha256(img).hexdigest()}
        return json.dumps(d, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def load_probe_set(path: str | Path) -> ProbeSet:
    """Read a probe set folder (or its items.jsonl directly)."""
    p = Path(path)
    items_path = p / ITEMS_FILE if p.is_dir() else p
    if not items_path.is_file():
        raise ProbeError(f"{items_path}: no such probe set (expected a folder with {ITEMS_FILE})")
    if items_path.stat().st_size > MAX_ITEMS_BYTES:
        raise ProbeError(f"{items_path}: over the {MAX_ITEMS_BYTES}-byte cap")
    items: list[ProbeItem] = []
    seen: set[str] = set()
    for lineno, line in enumerate(items_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeError(f"{items_path}:{lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in ("id", "prompt", "answer")):
            raise ProbeError(f"{items_path}:{lineno}: an item needs string fields id, prompt and answer")
        if d["id"] in seen:
            raise ProbeError(f"{items_path}:{lineno}: duplicate item id {d['id']!r}")
        seen.add(d["id"])
        items.append(ProbeItem(
            id=d["id"], prompt=d["prompt"], answer=d["answer"],
            choices=tuple(str(c) for c in d.get("choices", [])),
            confusions=tuple(str(c) for c in d.get("confusions", [])),
            image=d.get("image"), meta=d.get("meta", {}) if isinstance(d.get("meta"), dict) else {},
        ))
    if not items:
        raise ProbeError(f"{items_path}: the probe set has no items")
    return ProbeSet(items_path.parent, items)


def save_probe_set(root: str | Path, items: list[ProbeItem]) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = root / ITEMS_FILE
    with open(out, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(it.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for it in items)
    return out
