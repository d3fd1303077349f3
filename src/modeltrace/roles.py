"""Canonical roles of tensors: "layer 3 attention query weight of the language model".

Different naming schemes (Hugging Face Llama/GPT-2/GPT-NeoX/BERT/ViT/CLIP, llama.cpp GGUF,
ONNX exports once their weights are named) call the same parameter by different names. The
maps from names to roles are data, in ``formats/data/scheme-*.json`` (one file per scheme) and
``formats/data/components.json`` (prefixes that place a tensor in the language model, vision
tower or projector). Pattern syntax: ``.`` is a literal dot, ``{L}`` a layer number, ``{E}`` an
expert number, ``{N}`` any number, ``(a|b)`` an alternative; a pattern ending in ``$`` names a
parameter with no ``.weight``/``.bias`` suffix. Names no scheme knows get no role and stay as they are.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

MAX_NAME_CHARS = 1024  # longer tensor names get no role (the longest in released checkpoints is under 200)
COMPONENTS = ("language_model", "vision_tower", "projector", "other")
KINDS = ("token_embed", "pos_embed", "type_embed", "attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv",
         "mlp_gate", "mlp_up", "mlp_gate_up", "mlp_down", "attn_norm", "mlp_norm", "final_norm",
         "embed_norm", "lm_head", "other")


@dataclass(frozen=True)
class Role:
    """Where a tensor sits in a model, independent of the naming scheme.

    `expert` numbers the expert of a mixture-of-experts layer; `sub` tells apart roles that share a
    kind (kind "other" with sub "q_norm" or "router"; "mlp_up" with sub "shared_expert").
    `transposed` (not part of equality) says the weight is stored (in, out), the transpose of
    torch.nn.Linear's (out, in), as GPT-2's Conv1D layers are.
    """

    component: str
    layer: int | None
    kind: str
    param: str
    expert: int | None = None
    sub: str = ""
    transposed: bool = field(default=False, compare=False)

    @property
    def key(self) -> str:
        """A scheme-independent name, e.g. ``language_model.3.attn_q.weight``."""
        parts = [self.component]
        if self.layer is not None:
            parts.append(str(self.layer))
        if self.expert is not None:
            parts.append(f"expert{self.expert}")
        parts.append(self.kind + (f"[{self.sub}]" if self.sub else ""))
        parts.append(self.param)
        return ".".join(parts)


@dataclass(frozen=True)
class _Rule:
    pattern: str  # anchored regular expression of the whole name
    kind: str
    sub: str
    whole: bool  # the pattern names the parameter itself


@dataclass(frozen=True)
class Scheme:
    """One naming scheme as loaded from its data file."""

    name: str
    describes: str
    component: str
    priority: int
    rules: tuple[_Rule, ...]
    requires: tuple[re.Pattern[str], ...]
    transposed_kinds: frozenset[str]
    # rule numbers by the name's first dotted segment (rules starting with an alternative are in every
    # list), so a name is tried only against rules that can match it; "" holds those for other segments
    index: dict[str, tuple[int, ...]] = field(compare=False, hash=False)
    notes: dict[str, str] = field(compare=False, hash=False)
    fused: dict[str, str] = field(compare=False, hash=False)


@dataclass(frozen=True)
class _Prefix:
    regex: re.Pattern[str]
    component: str
    catch_all: bool


def _pattern(text: str) -> str:
    """Our small pattern language as a regular expression (see the module docstring)."""
    out = text.replace(".", r"\.")
    out = out.replace("{L}", r"(?P<layer>\d+)").replace("{E}", r"(?P<expert>\d+)").replace("{N}", r"\d+")
    return out


def _load(name: str) -> Any:
    return json.loads(resources.files("modeltrace.formats").joinpath("data", name).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _prefixes() -> tuple[tuple[re.Pattern[str], ...], tuple[_Prefix, ...]]:
    data = _load("components.json")
    # no "^": the patterns are applied with Pattern.match(name, pos), which anchors at pos
    wrappers = tuple(re.compile(_pattern(w)) for w in data["wrappers"])
    comps = tuple(_Prefix(re.compile(_pattern(c["prefix"])), c["component"], bool(c.get("catch_all")))
                  for c in data["components"])
    return wrappers, comps


@lru_cache(maxsize=1)
def schemes() -> tuple[Scheme, ...]:
    """Every naming scheme in the data folder, most specific (lowest priority number) first."""
    raw: dict[str, dict[str, Any]] = {}
    folder = resources.files("modeltrace.formats").joinpath("data")
    for entry in folder.iterdir():
        if entry.name.startswith("scheme-") and entry.name.endswith(".json"):
            d = json.loads(entry.read_text(encoding="utf-8"))
            raw[d["scheme"]] = d
    out: list[Scheme] = []
    for d in raw.values():
        rules: dict[str, str] = dict(d["rules"])
        if "extends" in d:  # own rules first, then the parent's not overridden
            for pat, target in raw[d["extends"]]["rules"].items():
                rules.setdefault(pat, target)
        compiled = []
        firsts: list[str | None] = []
        for pat, target in rules.items():
            kind, _, sub = target.partition("/")
            if kind not in KINDS:
                raise ValueError(f"scheme {d['scheme']}: unknown kind {kind!r} for {pat!r}")
            whole = pat.endswith("$")
            body = _pattern(pat.rstrip("$"))
            rx = body + ("$" if whole else r"\.(?P<param>[A-Za-z_]\w*)$")
            compiled.append(_Rule("^" + rx, kind, sub, whole))
            first = pat.rstrip("$").split(".", 1)[0]
            firsts.append(None if any(c in first for c in "({") else first)
        out.append(Scheme(
            name=d["scheme"], describes=d.get("describes", ""), component=d["component"],
            priority=int(d.get("priority", 50)), rules=tuple(compiled),
            requires=tuple(re.compile("^" + _pattern(r) + r"\.") for r in d.get("requires", [])),
            transposed_kinds=frozenset(d.get("transposed_kinds", [])),
            index=_index(firsts),
            notes=dict(d.get("notes", {})), fused=dict(d.get("fused", {}))))
    return tuple(sorted(out, key=lambda s: (s.priority, s.name)))


def _index(firsts: list[str | None]) -> dict[str, tuple[int, ...]]:
    wild = [k for k, f in enumerate(firsts) if f is None]
    out: dict[str, tuple[int, ...]] = {"": tuple(wild)}
    for f in {f for f in firsts if f is not None}:
        out[f] = tuple(sorted(wild + [k for k, g in enumerate(firsts) if g == f]))
    return out


def scheme(name: str) -> Scheme:
    """The scheme called `name` (its notes say how fused and transposed weights are laid out)."""
    for s in schemes():
        if s.name == name:
            return s
    raise KeyError(name)


def _split(name: str) -> tuple[str | None, bool, str]:
    """(component from a prefix or None, catch-all?, the name with wrapper and component prefixes removed).

    Under a catch-all prefix the prefix stays in the body, so that two modules with the same
    inner names (``2_Dense/linear``, ``3_Dense/linear``) keep different roles. Prefixes are
    stripped by moving a position, never by copying the rest of the name, so the cost is linear
    in the name's length; a name over MAX_NAME_CHARS is returned as it is (no component, no role).
    """
    if len(name) > MAX_NAME_CHARS:
        return None, False, name
    wrappers, comps = _prefixes()
    component: str | None = None
    catch_all = False
    pos = 0
    end = len(name)
    changed = True
    while changed:
        changed = False
        for w in wrappers:
            m = w.match(name, pos)
            if m and pos < m.end() < end:
                pos = m.end()
                changed = True
        for c in comps:
            m = c.regex.match(name, pos)
            if m and pos < m.end() < end:
                if component is None:
                    component, catch_all = c.component, c.catch_all
                    if catch_all:
                        break
                pos = m.end()
                changed = True
                break
        if catch_all:
            break
    return component, catch_all, name[pos:]


def _match(s: Scheme, body: str, component: str | None) -> Role | None:
    first = body.split(".", 1)[0]
    for k in s.index.get(first, s.index[""]):
        rule = s.rules[k]
        m = re.match(rule.pattern, body)  # compiled on first use and cached by the re module
        if m is None:
            continue
        groups = m.groupdict()
        layer, expert = groups.get("layer"), groups.get("expert")
        param = "weight" if rule.whole else groups["param"]
        return Role(component=component or s.component, layer=int(layer) if layer is not None else None,
                    kind=rule.kind, param=param, expert=int(expert) if expert is not None else None,
                    sub=rule.sub, transposed=rule.kind in s.transposed_kinds and param == "weight")
    return None


def _catch_all(component: str, body: str) -> Role:
    module, dot, param = body.rpartition(".")
    if not dot:
        module, param = body, "weight"
    return Role(component=component, layer=None, kind="other", param=param, sub=module)


def canonical(name: str) -> Role | None:
    """The role of one tensor name, or None when no scheme knows it.

    Without the other names of the model, the most common meaning of a name is taken (for
    example `post_attention_layernorm` as the norm before the MLP); `assign_roles` uses context.
    A name longer than MAX_NAME_CHARS gets no role (it counts among the tensors without one).
    """
    if len(name) > MAX_NAME_CHARS or fixed_buffer(name):
        return None
    component, catch_all, body = _split(name)
    for s in schemes():
        if s.requires:
            continue  # schemes that need context are only used by assign_roles
        role = _match(s, body, component)
        if role is not None:
            return role
    if catch_all and component is not None:
        return _catch_all(component, body)
    return None


def _scores(bodies: list[tuple[str | None, bool, str]]) -> Counter[str]:
    scores: Counter[str] = Counter()
    for s in schemes():
        if s.requires and not any(r.match(b) for _, _, b in bodies for r in s.requires):
            continue
        for component, _, body in bodies:
            if _match(s, body, component) is not None:
                scores[s.name] += 1
    return scores


@lru_cache(maxsize=8)
def _analyse(names: tuple[str, ...]) -> tuple[dict[str, Role], str | None]:
    split = {n: _split(n) for n in names if len(n) <= MAX_NAME_CHARS and not fixed_buffer(n)}
    scores = _scores(list(split.values()))
    order = {s.name: i for i, s in enumerate(schemes())}
    ranked = [s for s in sorted(schemes(), key=lambda s: (-scores.get(s.name, 0), order[s.name]))
              if scores.get(s.name, 0) > 0]
    out: dict[str, Role] = {}
    for n, (component, catch_all, body) in split.items():
        role = None
        for s in ranked:
            role = _match(s, body, component)
            if role is not None:
                break
        if role is None and catch_all and component is not None:
            role = _catch_all(component, body)
        if role is not None:
            out[n] = role
    seen: Counter[Role] = Counter(out.values())
    return {n: r for n, r in out.items() if seen[r] == 1}, (ranked[0].name if ranked else None)


def scheme_of(names: Iterable[str]) -> str | None:
    """The naming scheme that knows most of `names` (ties go to the more specific scheme)."""
    return _analyse(tuple(names))[1]


def assign_roles(names: Iterable[str]) -> dict[str, Role]:
    """Roles for the names some scheme knows, using the whole set of names as context.

    Schemes are tried in order of how many of the names they know, so a name whose meaning
    depends on the scheme (Gemma 2's sandwich norms) gets the meaning of the model's scheme.
    Names that would share a role with another name (duplicated tensors) get none, so a role
    always points at exactly one tensor.
    """
    return dict(_analyse(tuple(names))[0])


def component_of(name: str, role: Role | None, default: str = "other") -> str:
    """The component a tensor counts toward: its role's, else its name prefix's, else `default`."""
    if role is not None:
        return role.component
    component, _, _ = _split(name)
    return component or default


@lru_cache(maxsize=1)
def _buffer_patterns() -> re.Pattern[str]:
    pats = _load("fixed_buffers.json")["patterns"]
    return re.compile("|".join(f"(?:{p})" for p in pats))


def fixed_buffer(name: str) -> bool:
    """True for tensors that are not trained (position ids, rotary frequencies, causal masks, counters).

    Such buffers are identical in unrelated models of one architecture, so they are never
    evidence. BatchNorm running statistics are *not* fixed: they are statistics of the training
    data and differ between independently trained models.
    """
    return len(name) <= MAX_NAME_CHARS and _buffer_patterns().search(name) is not None


__all__ = ["COMPONENTS", "KINDS", "Role", "Scheme", "assign_roles", "canonical", "component_of", "fixed_buffer",
           "scheme", "scheme_of", "schemes"]
