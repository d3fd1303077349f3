"""With CI=true, skipping a test that needs the real models, llama.cpp's server or a browser is a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
TESTS = '''
import pytest

@pytest.mark.llama
def test_needs_llama():
    pytest.skip("llama.cpp server not installed")

@pytest.mark.browser
def test_needs_browser():
    pytest.skip("no browser")

def test_needs_real_models(realmodels):
    pass

def test_optional_extra():
    pytest.skip("optional and not required in CI")

@pytest.mark.llama
def test_runs():
    assert True
'''


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=TESTS)
    monkeypatch.setenv("MODELTRACE_REALMODELS", str(pytester.path / "absent"))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest("-p", "no:cacheprovider", "-rA")


def test_required_skips_fail_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, monkeypatch, "true")
    result.assert_outcomes(passed=1, skipped=1, failed=2, errors=1)  # the fixture skip fails in setup: an error
    out = result.stdout.str()
    assert "skipped under CI=true, but CI must run every test that needs llama.cpp's server" in out
    assert "real models absent" in out and "no browser" in out


def test_the_same_skips_are_skips_outside_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(pytester, monkeypatch, None).assert_outcomes(passed=1, skipped=4)
