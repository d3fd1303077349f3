"""Model references: local paths and `hf:org/name[@revision]`, resolved offline in the hub cache.

The cache layout is huggingface_hub's (HF_HUB_CACHE, else HF_HOME/hub, else
~/.cache/huggingface/hub): `models--org--name/refs/<revision>` holds a commit sha, and
`models--org--name/snapshots/<sha>/` holds the files (links into `blobs/`). A download through
huggingface_hub happens only when asked for and possible.

Every path is resolved inside a root: a revision cannot climb out of `refs/` (``@../../x``), and a model's
files may link only within `confinement_root` of its folder (the folder itself, or for a hub snapshot
the repository folder whose `blobs/` the snapshot links into). `inside` is the one check.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from modeltrace.errors import ResolveError, UnsafeFileError

_HF = re.compile(r"^hf:(?P<repo>[A-Za-z0-9][\w.\-]*(?:/[\w.\-]+)?)(?:@(?P<rev>[\w.\-/]+))?$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str = "main"


def parse_hub_ref(ref: str) -> HubRef | None:
    """`hf:org/name@rev` as a HubRef; None for anything that is not a hub reference."""
    if not ref.startswith("hf:"):
        return None
    m = _HF.match(ref)
    # a name or revision part that is empty, "." or ".." would walk the cache's folders: refused before
    # any file is looked at, with the same words as any other malformed reference (so the answer says
    # nothing about which files exist)
    parts = m.group("repo").split("/") + (m.group("rev") or "main").split("/") if m else []
    if not m or any(part in ("", ".", "..") for part in parts):
        raise ResolveError(ref, "not a valid hub reference", hint="write hf:org/name or hf:org/name@revision")
    return HubRef(m.group("repo"), m.group("rev") or "main")


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def resolve_in_cache(hub: HubRef, cache: Path | None = None) -> Path | None:
    """The snapshot folder of `hub` in the local cache, or None if it is not cached."""
    cache = cache or hub_cache_dir()
    repo_dir = cache / ("models--" + hub.repo_id.replace("/", "--"))
    if not repo_dir.is_dir():
        return None
    rev = hub.revision
    sha = rev if _SHA.match(rev) else None
    if sha is None:
        ref_file = repo_dir / "refs" / rev
        if not ref_file.is_file():
            return None
        sha = ref_file.read_text(encoding="utf-8").strip()
        if not _SHA.match(sha):
            raise ResolveError(f"hf:{hub.repo_id}@{rev}", f"cache ref file {ref_file} does not hold a commit sha")
    snap = repo_dir / "snapshots" / sha
    if not snap.is_dir() or not snap.resolve().is_relative_to(repo_dir.resolve()):
        return None
    return snap


def confinement_root(folder: Path) -> Path:
    """The resolved folder that the files of a model in `folder` may link into.

    A hub-cache snapshot (``models--org--name/snapshots/<sha>``) links every file into
    ``../../blobs/``: its root is the repository folder. Any other folder is its own root.
    """
    real = Path(folder).resolve()
    repo = real.parent.parent
    if real.parent.name == "snapshots" and repo.name.startswith("models--") and (repo / "blobs").is_dir():
        return repo
    return real


def inside(root: Path, path: Path, *, what: str = "file") -> Path:
    """`path` resolved (links followed), refused with UnsafeFileError unless it lies inside `root`.

    `root` must be resolved already (see `confinement_root`); the error names `path` as given.
    """
    real = Path(path).resolve()
    if not real.is_relative_to(root):
        raise UnsafeFileError(path, f"{what} links outside the model folder; refused, nothing read from it")
    return real


def resolve(ref: str, *, allow_download: bool = False) -> Path:
    """A local path for `ref`; hub references come from the cache, or are downloaded if allowed."""
    hub = parse_hub_ref(ref)
    if hub is None:
        p = Path(ref).expanduser()
        if not p.exists():
            raise ResolveError(ref, "no such file or folder")
        return p
    found = resolve_in_cache(hub)
    if found is not None:
        return found
    if not allow_download:
        raise ResolveError(ref, f"not in the local hub cache ({hub_cache_dir()})",
                           hint="pass --download to fetch it, or set HF_HUB_CACHE")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ResolveError(ref, "downloading needs huggingface_hub", hint="pip install 'modeltrace[hub]'") from exc
    try:
        return Path(snapshot_download(hub.repo_id, revision=hub.revision, cache_dir=str(hub_cache_dir())))
    except Exception as exc:  # network, auth, missing repo: all become one resolve error
        raise ResolveError(ref, f"download failed: {type(exc).__name__}: {exc}") from exc
