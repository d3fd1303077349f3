"""A summary a journalist could quote: a few sentences built from the evidence, never stronger than it.

Only findings the result records are stated, each with its number. Descriptive findings (config,
tokenizer, tensor names) are labelled as such: models built from the same code share them, so they
carry no p-value. When the verdict is not `derived` the summary says what was tested, what was not,
and what would have been detected (the positive controls, when the result has them).
"""

from __future__ import annotations

from typing import Any

from modeltrace.report.model import EvidenceRow, Report

COMPONENT_WORDS = {"other": "remaining weights", "language_model": "language model", "vision_tower": "vision tower", "projector": "projector",
                   "audio_tower": "audio tower", "backbone": "backbone"}


def fmt_p(p: float | None) -> str:
    """A p-value as people read it; the 1e-300 floor reads as 'below 1e-300'."""
    if p is None:
        return "-"
    if p <= 1e-300:
        return "< 1e-300"
    if p >= 1e-3:
        return f"{p:.3g}"
    return f"{p:.1e}"


def p_is(p: float | None) -> str:
    """'p = 0.03' or 'p < 1e-300'."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _chance(p: float) -> str:
    return "below 1e-300" if p <= 1e-300 else f"of about {fmt_p(p)}"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def headline(report: Report) -> str:
    """One sentence: the verdict with its number."""
    if report.verdict == "derived":
        return (f"B is derived from A: if B had been trained independently of A, evidence this strong would turn up "
                f"with a probability {_chance(report.p_value)} (combined over the tests that ran; threshold "
                f"{report.threshold:g}).")
    if report.verdict == "independent":
        return (f"No sign that B is derived from A: the tests able to detect shared weights found nothing "
                f"(combined {p_is(report.p_value)}, threshold {report.threshold:g}). This is absence of "
                f"evidence at the limits stated below, not proof that B was trained independently.")
    return (f"Inconclusive: the tests that could run on these files were not strong enough to decide "
            f"(combined {p_is(report.p_value)}, threshold {report.threshold:g}).")


def _weights_sentence(report: Report) -> str | None:
    comp = report.transform("component")
    parts = [COMPONENT_WORDS.get(c, str(c).replace("_", " ")) for c in (comp or {}).get("shared") or []]
    who = f"B's {_join(parts)}" if parts else "B's weights"
    verb = "are" if parts and len(parts) > 1 or not parts else "is"
    noise, ft, ident = report.transform("noise"), report.transform("finetune"), report.transform("identical")
    if ident is not None:
        return f"{who} {verb} A's weights unchanged ({ident.get('summary', 'identical')})."
    if noise is not None and isinstance(noise.get("sigma_rel"), int | float) and noise["sigma_rel"] > 0:
        s = float(noise["sigma_rel"])
        of = f" ({noise['tensors']} of {noise['of']} tensors tested fit this)" if noise.get("of") else ""
        return (f"{who} {verb} A's weights with Gaussian noise of about 1/{1 / s:.0f} of each tensor's spread "
                f"added{of}.")
    if ft is not None:
        return f"{who} {verb} A's weights changed by training: {ft.get('summary', 'a fine-tune')}."
    for kind in ("cast", "quantize", "merge", "upcycle", "lora"):
        t = report.transform(kind)
        if t is not None:
            return f"{who} {verb} A's weights, transformed: {t.get('summary', kind)}."
    if parts:
        return f"{who} {verb} taken from A."
    return None


def _tokenizer_sentence(e: EvidenceRow | None) -> str | None:
    if e is None or e.status != "ok":
        return None
    rows = [r for r in e.details.get("added_tokens_side_by_side") or [] if isinstance(r, dict)]
    same = [r for r in rows if r.get("custom") and r.get("id_a") is not None and r.get("id_a") == r.get("id_b")]
    if same:
        ids = sorted(int(r["id_a"]) for r in same)
        span = f"id {ids[0]}" if len(ids) == 1 else f"ids {ids[0]}-{ids[-1]}"
        return (f"The tokenizer adds A's {len(same)} custom token(s) at the same {span} (descriptive: no p-value, "
                f"see the tokenizer section).")
    if e.details.get("identical_vocab"):
        return "The tokenizers have identical vocabularies (common among models of one family; not evidence alone)."
    return None


def _code_sentence(e: EvidenceRow | None) -> str | None:
    if e is None or e.status != "ok" or e.p_value is None or not e.details.get("pairs"):
        return None
    renames = e.details.get("rename_map") or {}
    pair = e.details["pairs"][0]
    tail = f" with {len(renames)} identifier(s) renamed" if renames else ""
    sim = pair.get("similarity")
    share = f"{float(sim):.0%} of " if isinstance(sim, int | float) else ""
    return (f"The modelling code {pair.get('b')} shares {share}its normalized code with A's {pair.get('a')}{tail} "
            f"({p_is(e.p_value)} against independently written files).")


def _names_sentence(report: Report) -> str | None:
    t = report.transform("rename")
    pm = (t or {}).get("prefix_map") or {}
    if not pm:
        return None
    words = [f"adds the prefix '{b}' to A's tensor names" if not a else f"renames A's prefix '{a}' to '{b}'"
             for a, b in list(pm.items())[:4]]
    return "B " + _join(words) + "."


def summary(report: Report) -> list[str]:
    """The sentences of the summary, the headline first."""
    out = [headline(report)]
    if report.verdict == "derived":
        strongest = min((e for e in report.evidence if e.tested), key=lambda e: e.p_value or 1.0, default=None)
        if strongest is not None:
            out.append(f"Strongest test: {strongest.method} ({p_is(strongest.p_value)}): {strongest.statement}.")
        for s in (_weights_sentence(report), _names_sentence(report), _tokenizer_sentence(report.method("tokenizer-match")),
                  _code_sentence(report.method("code-clone"))):
            if s:
                out.append(s)
        return out
    out.extend(not_derived_notes(report))
    return out


def shared_not_decisive(report: Report) -> str | None:
    """For a verdict other than derived: what A and B share that independent models also share."""
    shared = []
    cfg = report.method("config-match")
    if cfg is not None and cfg.status == "ok" and cfg.statistic is not None and cfg.statistic >= 0.999:
        shared.append("their architecture (config-match: every normalized hyperparameter equal)")
    tok = report.method("tokenizer-match")
    if tok is not None and tok.status == "ok":
        j = tok.details.get("jaccard")
        if isinstance(j, int | float) and j >= 0.5:
            shared.append(f"most of their tokenizer vocabulary (Jaccard overlap {float(j):.3f})")
    code = report.method("code-clone")
    if code is not None and code.status == "ok" and code.details.get("pairs"):
        p = "" if code.p_value is None else f", {p_is(code.p_value)}, not below the threshold {report.threshold:g}"
        shared.append(f"modelling code (code-clone{p})")
    if not shared:
        return None
    return ("A and B share " + _join(shared) + ". Models trained separately from the same open-source code and "
            "tokenizer share these too, so on their own they are not evidence that B's weights come from A.")


def not_derived_notes(report: Report) -> list[str]:
    """What was tested, what was not, and what would have been detected."""
    tested = [e for e in report.evidence if e.tested]
    out = []
    shared = shared_not_decisive(report)
    if shared:
        out.append(shared)
    if tested:
        out.append("Tested: " + "; ".join(
            f"{e.method} ({p_is(e.p_value)}{'' if e.powered else ', low power'})" for e in tested) + ".")
    else:
        out.append("No test with a p-value could run on these files.")
    described = [e.method for e in report.evidence if e.status == "ok" and e.p_value is None]
    if described:
        out.append("Described without a p-value (shared by models built from the same code or family, so not "
                   "evidence of derivation on their own): " + ", ".join(described) + ".")
    skipped = [e for e in report.evidence if e.status != "ok"]
    if skipped:
        reasons: dict[str, list[str]] = {}
        for e in skipped:
            reasons.setdefault(e.statement or e.status, []).append(e.method)
        out.append("Not tested: " + "; ".join(f"{', '.join(ms)} ({why})" for why, ms in reasons.items()) + ".")
    out.append(detection_sentence(report))
    return out


def detection_sentence(report: Report) -> str:
    """What these tests would have caught, from the positive controls when present."""
    if report.controls:
        hit = [c for c in report.controls if c.detected]
        missed = [c for c in report.controls if not c.detected]
        parts = []
        if hit:
            parts.append("would have detected " + _join([_control_words(c) for c in hit]))
        if missed:
            parts.append("did not detect " + _join([_control_words(c) for c in missed]))
        s = "Positive controls (known transforms of A tested the same way): the tests " + "; ".join(parts) + "."
        return s + (f" {report.detection_limit}" if report.detection_limit else "")
    if report.detection_limit:
        return report.detection_limit
    return ("This result carries no positive controls, so what these tests would have detected on these "
            "particular models was not measured.")


def _control_words(c: Any) -> str:
    strength = "" if c.strength is None else f" at strength {c.strength:g}"
    return f"{c.kind}{strength} ({c.method}, {p_is(c.p_value)})"
