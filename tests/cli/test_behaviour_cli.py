from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
from fakeserver import FaultPlan, fake_openai_server

from modeltrace.cli import cli


def test_probe_run_against_endpoints(tmp_path: Path) -> None:
    r = CliRunner()
    assert r.invoke(cli, ["probe", "make", str(tmp_path / "s"), "--facts", "12"]).exit_code == 0
    with fake_openai_server(FaultPlan(["429", "500"])) as url:
        res = r.invoke(cli, ["probe", "run", str(tmp_path / "s"), f"{url}/v1#m1", f"openai:{url}#m2",
                             "--cache", str(tmp_path / "c.sqlite"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["items"] == 12 and len(out["models"]) == 2 and len(out["pairs"]) == 1
    assert 0 < out["pairs"][0]["p_value"] <= 1


def test_same_model_identical_endpoints(tmp_path: Path) -> None:
    with fake_openai_server(FaultPlan()) as url:
        res = CliRunner().invoke(cli, ["same-model", f"{url}#m", f"{url}#m2", "--prompts", "4", "--samples", "3",
                                       "--cache", str(tmp_path / "c.sqlite"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["verdict"] == "not distinguishable" and out["queries"] == 24


def test_endpoint_without_model_name_is_a_clear_error(tmp_path: Path) -> None:
    import pytest

    from modeltrace.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["probe", "run", str(tmp_path), "http://127.0.0.1:9"])
    assert exc.value.code == 2


def test_compare_with_an_endpoint_runs_only_what_applies(tmp_path: Path) -> None:
    r = CliRunner()
    assert r.invoke(cli, ["probe", "make", str(tmp_path / "s"), "--facts", "12"]).exit_code == 0
    with fake_openai_server(FaultPlan()) as url:
        res = r.invoke(cli, ["compare", f"openai:{url}#m1", f"{url}/v1#m2", "--probes", str(tmp_path / "s"),
                             "--reference", f"{url}#m3", "--reference", f"{url}#m4",
                             "--cache", str(tmp_path / "c.sqlite"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    ev = {e["method"]: e for e in out["evidence"]}
    assert ev["weight-identity"]["status"] == "skipped"
    assert ev["shared-mistakes"]["status"] == "ok" and ev["shared-mistakes"]["details"]["references"] == 2
    assert ev["canary-recall"]["status"] == "ok" and ev["canary-recall"]["details"]["items"] == 12
    assert out["verdict"] != "derived"
