"""`modeltrace same-model A B`: is the same model behind both (e.g. an API and a local folder)?"""

from __future__ import annotations

import json
from pathlib import Path

import click

from modeltrace.backends.base import Request
from modeltrace.backends.resolve import cached, open_backend
from modeltrace.probes.prompts import generic_prompts
from modeltrace.stats.mmd import mmd_test


@click.command("same-model")
@click.argument("a")
@click.argument("b")
@click.option("--prompts", default=20, show_default=True)
@click.option("--samples", default=10, show_default=True, help="Sampled completions per prompt and model.")
@click.option("--max-tokens", default=16, show_default=True)
@click.option("--temperature", default=1.0, show_default=True)
@click.option("--alpha", default=0.05, show_default=True, help="Level at which 'different' is declared.")
@click.option("--seed", default=0, show_default=True)
@click.option("--cache", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def same_model(a: str, b: str, prompts: int, samples: int, max_tokens: int, temperature: float, alpha: float,
               seed: int, cache: Path | None, as_json: bool) -> None:
    """Two-sample test (MMD, after Gao, Liang & Guestrin 2025) on sampled completions of A and B."""
    texts = generic_prompts(prompts, seed=seed)
    reqs = [Request(prompt=t, max_tokens=max_tokens, temperature=temperature, seed=seed * 100003 + s)
            for t in texts for s in range(samples)]
    out = {}
    for side, ref in (("a", a), ("b", b)):
        be = cached(open_backend(ref), cache)
        res = [r.text for r in be.generate(reqs)]
        out[side] = [res[i * samples:(i + 1) * samples] for i in range(prompts)]
        be.close()
    r = mmd_test(out["a"], out["b"], length=4 * max_tokens, seed=seed)
    verdict = "different" if r.p_value < alpha else "not distinguishable"
    if as_json:
        click.echo(json.dumps({"schema": "modeltrace.same-model/1", "a": a, "b": b, "verdict": verdict,
                               "p_value": r.p_value, "statistic": r.statistic, "prompts": prompts,
                               "samples": samples, "queries": 2 * len(reqs),
                               "null_hypothesis": "A and B sample completions from the same distribution"}, indent=2))
    else:
        click.echo(f"{verdict}: MMD^2 = {r.statistic:.4g}, p = {r.p_value:.3g} "
                   f"({prompts} prompts x {samples} samples each, {2 * len(reqs)} queries)")
