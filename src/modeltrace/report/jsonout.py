"""The JSON reporter: the canonical result itself (schema modeltrace.compare/1), which the others derive from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from modeltrace.report.model import Report


class JSONReporter:
    """`json`: the canonical object, indented."""

    name: ClassVar[str] = "json"
    suffix: ClassVar[str] = ".json"

    def render(self, report: Report) -> str:
        return json.dumps(report.raw, indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    def write(self, report: Report, out: Path) -> list[Path]:
        out.write_text(self.render(report), encoding="utf-8")
        return [out]
