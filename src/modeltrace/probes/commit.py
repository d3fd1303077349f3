"""Commitments to a probe set: a salted Merkle root that can be published without the items.

Leaf i = SHA-256(0x00 || salt_i || canonical(item_i)), with salt_i = HMAC-SHA256(secret, "leaf:" || i)
so a published root reveals nothing about the items (the salts hide low-entropy answers), while
single items can later be opened with their salt and Merkle path without opening the rest.
Inner node = SHA-256(0x01 || left || right); an odd node is promoted unchanged (domain-separated
prefixes prevent a leaf from posing as a node). Construction after RFC 6962's Merkle tree hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modeltrace import __version__
from modeltrace.errors import ProbeError
from modeltrace.probes.probeset import ProbeSet

SCHEMA = "modeltrace.commitment/1"
OPENING_SCHEMA = "modeltrace.opening/1"
SECRET_FILE = "commitment.secret"


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf_salt(secret: bytes, index: int) -> bytes:
    return hmac.new(secret, f"leaf:{index}".encode(), hashlib.sha256).digest()


def leaf_hash(salt: bytes, canonical_item: bytes) -> bytes:
    return _h(b"\x00" + salt + canonical_item)


def node_hash(left: bytes, right: bytes) -> bytes:
    return _h(b"\x01" + left + right)


def merkle_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """All levels of the tree, leaves first, root last."""
    if not leaves:
        raise ProbeError("cannot commit to an empty probe set")
    levels = [leaves]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [node_hash(cur[i], cur[i + 1]) if i + 1 < len(cur) else cur[i] for i in range(0, len(cur), 2)]
        levels.append(nxt)
    return levels


def load_or_create_secret(root: Path) -> bytes:
    """The set's commitment secret (kept beside the items, never published)."""
    p = root / SECRET_FILE
    if p.is_file():
        raw = bytes.fromhex(p.read_text(encoding="ascii").strip())
        if len(raw) != 32:
            raise ProbeError(f"{p}: a commitment secret is 32 bytes of hex")
        return raw
    secret = secrets.token_bytes(32)
    p.write_text(secret.hex() + "\n", encoding="ascii")
    p.chmod(0o600)
    return secret


def _leaves(ps: ProbeSet, secret: bytes) -> list[bytes]:
    return [leaf_hash(leaf_salt(secret, i), ps.canonical(it)) for i, it in enumerate(ps.items)]


def commit(ps: ProbeSet, *, secret: bytes | None = None, date: str | None = None) -> dict[str, Any]:
    """The publishable commitment of a probe set."""
    secret = secret if secret is not None else load_or_create_secret(ps.root)
    root = merkle_levels(_leaves(ps, secret))[-1][0]
    return {
        "schema": SCHEMA,
        "root": root.hex(),
        "n_items": len(ps.items),
        "date": date or datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": f"modeltrace {__version__}",
        "construction": "leaf=sha256(0x00||hmac_sha256(secret,'leaf:'||i)||canonical_item); "
                        "node=sha256(0x01||left||right); odd node promoted",
    }


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    message: str


def verify(ps: ProbeSet, commitment: dict[str, Any], *, secret: bytes | None = None) -> VerifyResult:
    """Does this probe set (with its secret) hash to the committed root?"""
    if commitment.get("schema") != SCHEMA:
        raise ProbeError(f"not a modeltrace commitment (schema {commitment.get('schema')!r})")
    if secret is None:
        p = ps.root / SECRET_FILE
        if not p.is_file():
            raise ProbeError(f"{p}: the set's secret is missing; it is needed to recompute the root")
        secret = load_or_create_secret(ps.root)
    if len(ps.items) != commitment.get("n_items"):
        return VerifyResult(False, f"the set has {len(ps.items)} items, the commitment {commitment.get('n_items')}")
    root = merkle_levels(_leaves(ps, secret))[-1][0].hex()
    if not hmac.compare_digest(root, str(commitment.get("root"))):
        return VerifyResult(False, f"root mismatch: the set hashes to {root}, the commitment says "
                                   f"{commitment.get('root')}; the set was changed after the commitment")
    return VerifyResult(True, f"the set matches the commitment of {commitment.get('date')} ({len(ps.items)} items)")


def open_item(ps: ProbeSet, index: int, *, secret: bytes | None = None) -> dict[str, Any]:
    """An opening of item `index`: the item, its salt and its Merkle path, and nothing else."""
    if not 0 <= index < len(ps.items):
        raise ProbeError(f"item index {index} out of range (the set has {len(ps.items)} items)")
    secret = secret if secret is not None else load_or_create_secret(ps.root)
    levels = merkle_levels(_leaves(ps, secret))
    path: list[list[str]] = []
    i = index
    for level in levels[:-1]:
        sib = i ^ 1
        if sib < len(level):
            path.append(["L" if sib < i else "R", level[sib].hex()])
        i //= 2
    return {
        "schema": OPENING_SCHEMA, "index": index, "n_items": len(ps.items),
        "item": json.loads(ps.canonical(ps.items[index])), "salt": leaf_salt(secret, index).hex(), "path": path,
    }


def verify_opening(opening: dict[str, Any], commitment: dict[str, Any]) -> VerifyResult:
    """Check one opened item against a published root, without the rest of the set."""
    if opening.get("schema") != OPENING_SCHEMA:
        raise ProbeError(f"not a modeltrace opening (schema {opening.get('schema')!r})")
    canonical = json.dumps(opening["item"], sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    h = leaf_hash(bytes.fromhex(opening["salt"]), canonical)
    for side, sib_hex in opening["path"]:
        sib = bytes.fromhex(sib_hex)
        h = node_hash(sib, h) if side == "L" else node_hash(h, sib)
    if not hmac.compare_digest(h.hex(), str(commitment.get("root"))):
        return VerifyResult(False, f"item {opening.get('index')} does not open the committed root")
    return VerifyResult(True, f"item {opening.get('index')} is item {opening.get('index')} of the committed set")


def read_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ProbeError(f"{p}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise ProbeError(f"{p}: invalid JSON ({exc.msg})") from exc
    if not isinstance(d, dict):
        raise ProbeError(f"{p}: expected a JSON object")
    return d
