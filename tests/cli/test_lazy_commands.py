from __future__ import annotations

from click.testing import CliRunner

from modeltrace import cli as cli_module


def test_a_command_whose_module_fails_to_import_says_why(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(cli_module.COMMANDS, "broken", "modeltrace.no_such_module:cmd")
    res = CliRunner().invoke(cli_module.cli, ["broken"])
    assert res.exit_code != 0
    assert "command 'broken' is unavailable: No module named 'modeltrace.no_such_module'" in str(res.exception)
