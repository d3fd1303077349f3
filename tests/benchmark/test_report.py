from __future__ import annotations

from modeltrace.benchmark.report import calibration_sample


def _row(a: str, b: str, powered: bool = True) -> dict:  # type: ignore[type-arg]
    return {"a": a, "b": b, "evidence": {"m": {"status": "ok", "powered": powered, "p_value": 0.5}}}


def test_one_draw_per_pair_of_training_runs() -> None:
    roots = {"s0": "s0", "s1": "s1", "s1-noise": "s1", "s1-cast": "s1", "s2": "s2"}
    rows = [_row("s0", "s1"), _row("s0", "s1-noise"), _row("s1-cast", "s0"), _row("s0", "s2"),
            _row("s1", "s2", powered=False)]
    keep = lambda r: r["evidence"]["m"]["powered"]
    got = calibration_sample(rows, roots, keep)
    assert [(r["a"], r["b"]) for r in got] == [("s0", "s1"), ("s0", "s2")]
    assert len(calibration_sample(rows, None, keep)) == 4  # without lineage every pair counts
