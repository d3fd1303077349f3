"""What names a model's own files go by (modules, repository names), to spot B pointing at A."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modeltrace.model import Model

_GENERIC_MODULES = frozenset({"__init__", "setup", "utils", "util", "test", "tests", "train", "main"})


def a_module_names(model: Model) -> set[str]:
    """Module names the model ships (stems of its .py files) or names in its own auto_maps."""
    from modeltrace.artifacts.config import auto_map_modules
    from modeltrace.artifacts.files import read_json_object
    from modeltrace.errors import FormatError

    names = {p.stem for p in model.code_files if p.stem not in _GENERIC_MODULES}
    try:
        cfg = model.config
    except FormatError:  # a broken config is config-match's finding, not a reason to lose these names
        cfg = None
    if cfg and isinstance(cfg.get("auto_map"), dict):
        names.update(auto_map_modules(cfg["auto_map"]))
    tc = model.file("tokenizer_config.json")
    if tc is not None:
        try:
            am = read_json_object(tc).get("auto_map")
        except FormatError:
            am = None
        if isinstance(am, dict):
            names.update(auto_map_modules(am))
    return names


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def names_of(model: Model, declared: str | None) -> set[str]:
    """Normalized names A goes by: its folder or file name, its reference, its declared _name_or_path."""
    out = {_norm(model.name), _norm(model.ref.rsplit("/", 1)[-1].split("@")[0])}
    if declared:
        out.add(_norm(declared.rstrip("/").rsplit("/", 1)[-1]))
    return {n for n in out if len(n) >= 4}


def points_at(value: str, names: set[str]) -> bool:
    """Whether a name_or_path value names one of `names` (its last path part, normalized)."""
    return _norm(value.rstrip("/").rsplit("/", 1)[-1]) in names
