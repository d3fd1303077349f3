"""`report verify`: re-run a saved comparison on the same bytes and say whether it reproduces.

First every input file the result recorded is hashed again (streaming sha256); a missing file or a
different hash refuses the run (FormatError naming the file: exit 2), since a result about other
bytes proves nothing about these. Then compare runs with the recorded settings (models, methods,
seed, threshold, options) and the verdict, each method's status, statistic and p-value are compared
with the saved ones (equal up to a relative 1e-9, for float round-off across machines).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeltrace.errors import FormatError
from modeltrace.report.model import Report

REL_TOL = 1e-9


@dataclass(frozen=True)
class Check:
    """One compared quantity: what, the saved value, the re-run value, and whether they agree."""

    what: str
    saved: str
    rerun: str
    same: bool


@dataclass(frozen=True)
class Verification:
    reproduced: bool
    checks: tuple[Check, ...]
    files_checked: int
    rerun: dict[str, Any]


def check_inputs(report: Report, progress: Callable[[str], None] | None = None) -> int:
    """Hash every recorded input again; a missing or changed file raises FormatError. Returns the count."""
    from modeltrace.compare import sha256_file

    inputs = report.provenance.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise FormatError(report.source, "records no inputs, so there is nothing to verify against")
    n = 0
    for side, info in inputs.items():
        sums = info.get("sha256") if isinstance(info, dict) else None
        if not isinstance(sums, dict):
            if isinstance(info, dict) and not info.get("files") and not info.get("weight_files"):
                continue  # an endpoint: no files to hash
            raise FormatError(report.source, f"records no sha256 for the files of {side}, so it cannot be verified",
                              hint="run compare again with --hash (the default when it writes a report)")
        for path, digest in sums.items():
            p = Path(path)
            if not p.is_file():
                raise FormatError(p, "recorded as an input of the result, but missing")
            if progress:
                progress(path)
            now = sha256_file(p)
            if now != digest:
                raise FormatError(p, f"sha256 is {now}, the result recorded {digest}: the input changed, so the "
                                     "result cannot be verified on it")
            n += 1
    return n


def rerun(report: Report) -> dict[str, Any]:
    """Run compare again with the settings the result recorded; returns the new canonical JSON."""
    from modeltrace.backends.resolve import is_endpoint
    from modeltrace.compare import compare
    from modeltrace.model import Model

    st = report.provenance.get("settings")
    if not isinstance(st, dict) or not isinstance(st.get("a"), str) or not isinstance(st.get("b"), str):
        raise FormatError(report.source, "records no compare settings (provenance.settings), so it cannot be re-run",
                          hint="results written by an older modeltrace cannot be verified; run compare again")
    options = dict(st.get("options") or {})
    models = [Model.remote(ref) if is_endpoint(ref) else Model.open(ref) for ref in (st["a"], st["b"])]
    try:
        for m in models:
            if m.weight_files:
                m.source.infos()
        result = compare(models[0], models[1], methods=list(st.get("methods") or []) or None,
                         threshold=float(st.get("threshold", report.threshold)), seed=int(st.get("seed", 0)),
                         options=options, hash_files=False, controls=bool(st.get("controls", True)))
    finally:
        for m in models:
            m.close()
    obj: dict[str, Any] = json.loads(json.dumps(result.to_json(), default=_plain))
    return obj


def _plain(obj: object) -> object:
    tolist = getattr(obj, "tolist", None)
    return tolist() if callable(tolist) else str(obj)


def _same(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return x == y or math.isclose(x, y, rel_tol=REL_TOL, abs_tol=0.0)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def compare_results(saved: Report, new: Report) -> tuple[Check, ...]:
    """The checks: verdict, combined p, and per method status, statistic and p-value."""
    checks = [Check("verdict", saved.verdict, new.verdict, saved.verdict == new.verdict),
              Check("combined p-value", _f(saved.p_value), _f(new.p_value), _same(saved.p_value, new.p_value))]
    for e in saved.evidence:
        n = new.method(e.method)
        if n is None:
            checks.append(Check(e.method, e.status, "missing", False))
            continue
        ok = e.status == n.status and _same(e.p_value, n.p_value) and _same(e.statistic, n.statistic)
        checks.append(Check(e.method, f"{e.status} p={_f(e.p_value)} stat={_f(e.statistic)}",
                            f"{n.status} p={_f(n.p_value)} stat={_f(n.statistic)}", ok))
    for n in new.evidence:
        if saved.method(n.method) is None:
            checks.append(Check(n.method, "missing", n.status, False))
    return tuple(checks)


def verify(report: Report, progress: Callable[[str], None] | None = None) -> Verification:
    """Check the inputs, re-run, compare. Raises FormatError when an input changed or is missing."""
    n = check_inputs(report, progress)
    obj = rerun(report)
    checks = compare_results(report, Report.from_json(obj, "<re-run>"))
    return Verification(all(c.same for c in checks), checks, n, obj)
