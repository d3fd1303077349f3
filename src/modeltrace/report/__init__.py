"""Reports: one Report model read from the canonical JSON; reporters that render it (json, markdown, html).

Reporters are registered like every other extension point (entry-point group
``modeltrace.reporters``): a class with `name`, `suffix` and `write(report, out) -> [paths]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from modeltrace.registry import Registry
from modeltrace.report.model import Report, load


class Reporter(Protocol):
    """Renders a Report into a file (and, for some, files beside it); returns every path written."""

    name: ClassVar[str]
    suffix: ClassVar[str]

    def write(self, report: Report, out: Path) -> list[Path]: ...


REPORTERS: Registry[type[Reporter]] = Registry("reporter", "modeltrace.reporters")
REPORTERS.register("json", "modeltrace.report.jsonout:JSONReporter")
REPORTERS.register("markdown", "modeltrace.report.markdown:MarkdownReporter")
REPORTERS.register("html", "modeltrace.report.html:HTMLReporter")


def write(report: Report, reporter: str, out: str | Path) -> list[Path]:
    """Render `report` with the reporter registered as `reporter` into `out`."""
    path = Path(out)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    return REPORTERS.get(reporter)().write(report, path)


def write_all(canonical: dict[str, Any], outputs: dict[str, Path | None]) -> list[Path]:
    """Render one canonical result with every reporter named in `outputs` (reporter -> file or None).

    Returns the main file of each (pictures a reporter writes beside its file are not listed)."""
    report = Report.from_json(canonical, "<compare>")
    return [write(report, name, path)[0] for name, path in outputs.items() if path is not None]


def from_result(obj: dict[str, Any], source: str = "<compare>") -> Report:
    """A Report from a canonical JSON object (what `CompareResult.to_json` returns, JSON-clean)."""
    return Report.from_json(obj, source)


__all__ = ["REPORTERS", "Report", "Reporter", "from_result", "load", "write", "write_all"]
