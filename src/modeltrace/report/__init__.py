"""Reports: one Report model read from the canonical JSON; reporters that render it (json, markdown, html).

Reporters are registered like every other extension point (entry-point group
``modeltrace.reporters``): a class with `name`, `suffix` and `write(report, out) -> [paths]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from modeltrace.errors import ModelTraceError
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
    cls = REPORTERS.get(reporter)
    if path.parent.exists() and not path.parent.is_dir():
        raise ModelTraceError(f"{path}: cannot write the {reporter} report: {path.parent} is not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls().write(report, path)
    except OSError as exc:  # a report that cannot be written is a user's problem: one line, exit 2
        raise ModelTraceError(f"{path}: cannot write the {reporter} report: {exc.strerror or exc}") from exc


def write_all(canonical: dict[str, Any], outputs: dict[str, Path | None]) -> list[Path]:
    """Render one canonical result with every reporter named in `outputs` (reporter -> file or None).

    Returns the main file of each (pictures a reporter writes beside its file are not listed)."""
    report = Report.from_json(canonical, "<compare>")
    return [write(report, name, path)[0] for name, path in outputs.items() if path is not None]


__all__ = ["REPORTERS", "Report", "Reporter", "load", "write", "write_all"]
