"""The one exception tree of modeltrace.

Every error that a user can cause (a bad file, a missing model, a typo in a method name)
is one of these, so the CLI can print it as one line and exit with status 2::

    ModelTraceError
    ├── FormatError            a model file is malformed, truncated or hostile
    │   └── UnsafeFileError    a file tries to run code (pickle payloads) or escape its folder
    ├── ResolveError           a model reference names nothing we can find
    ├── UnknownNameError       a registry lookup failed (format, method, backend, reporter)
    ├── EvidenceError          an evidence method could not run on these inputs
    ├── BackendError           running a model failed (HTTP, local runtime)
    ├── ProbeError             a probe set or commitment is malformed or does not verify
    └── IndexError_            the fingerprint index is unusable
"""

from __future__ import annotations

from pathlib import Path


class ModelTraceError(Exception):
    """Base of every error modeltrace raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class FormatError(ModelTraceError):
    """A model file is malformed: the message names the file and what is wrong."""

    def __init__(self, path: str | Path, message: str, *, tensor: str | None = None, hint: str | None = None):
        self.path = str(path)
        self.tensor = tensor
        where = f"{self.path}" + (f" [tensor {tensor}]" if tensor else "")
        super().__init__(f"{where}: {message}", hint=hint)


class UnsafeFileError(FormatError):
    """A file would run code or reach outside its folder if we trusted it."""


class ResolveError(ModelTraceError):
    """A model reference (path or hf:org/name) could not be resolved."""

    def __init__(self, ref: str, message: str, *, hint: str | None = None):
        self.ref = ref
        super().__init__(f"{ref}: {message}", hint=hint)


class UnknownNameError(ModelTraceError):
    """A registry has no entry by that name; the message lists what exists."""

    def __init__(self, kind: str, name: str, known: list[str], suggestion: str | None):
        self.kind = kind
        self.name = name
        self.known = known
        msg = f"unknown {kind} {name!r}"
        if suggestion:
            msg += f"; did you mean {suggestion!r}?"
        msg += f" (known: {', '.join(sorted(known)) or 'none'})"
        super().__init__(msg)


class EvidenceError(ModelTraceError):
    """An evidence method could not run; compare records it as a finding."""


class BackendError(ModelTraceError):
    """Running a model (locally or over HTTP) failed."""


class ProbeError(ModelTraceError):
    """A probe set or its commitment is malformed or does not verify."""


class IndexError_(ModelTraceError):
    """The fingerprint index is unusable (corrupt database, wrong schema)."""
