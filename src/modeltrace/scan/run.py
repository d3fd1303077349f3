"""Run a scan: fingerprints made by local worker processes, written to the index by this process alone.

One writer: workers only read models and return fingerprint bytes (or the error), so the index
sees one model per transaction from one connection, and a worker that dies loses only the model
it was on (recorded as a failure, retried by the next scan). Resumable: models already indexed
under their reference are skipped; failures are recorded in the index's ``scan_failures`` table
with their reason and cleared when the model later indexes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from modeltrace.errors import IndexError_, ModelTraceError
from modeltrace.index.fingerprint import from_bytes
from modeltrace.index.store import IndexStore


@dataclass
class ScanReport:
    """What a scan did, model by model."""

    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"added": len(self.added), "skipped": len(self.skipped), "failed": len(self.failed),
                "failures": self.failed, "seconds": round(self.seconds, 2)}


def fingerprint_job(ref: str, hash_files: bool) -> tuple[str, bytes | None, str | None]:
    """Worker side: (ref, fingerprint bytes, None) or (ref, None, reason). Never raises for a bad model."""
    from modeltrace.index.fingerprint import fingerprint, to_bytes

    try:
        return ref, to_bytes(fingerprint(ref, hash_files=hash_files)), None
    except ModelTraceError as exc:
        return ref, None, f"{type(exc).__name__}: {exc}"
    except MemoryError:
        return ref, None, "out of memory"
    except Exception as exc:  # noqa: BLE001 - a reader bug on one file is that file's failure, not the scan's
        return ref, None, f"internal {type(exc).__name__}: {exc}"


def scan(store: IndexStore, refs: list[str], *, workers: int = 2, hash_files: bool = True,
         progress: Callable[[str, str], None] | None = None, max_in_flight: int | None = None) -> ScanReport:
    """Fingerprint `refs` not yet indexed with `workers` processes; add each as it arrives (see module doc)."""
    t0 = time.perf_counter()
    report = ScanReport()
    todo = []
    for ref in refs:
        if store.has(ref):
            report.skipped.append(ref)
            if progress:
                progress(ref, "skipped")
        else:
            todo.append(ref)
    limit = max_in_flight or 2 * max(1, workers)  # back-pressure: never more than this many queued
    pending: dict[Future[tuple[str, bytes | None, str | None]], str] = {}
    queue = list(reversed(todo))
    pool = ProcessPoolExecutor(max_workers=max(1, workers))
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                ref = queue.pop()
                pending[pool.submit(fingerprint_job, ref, hash_files)] = ref
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                got = pending.pop(fut, None)
                if got is None:
                    continue  # resubmitted after its pool died
                ref = got
                try:
                    _, data, err = fut.result()
                except BrokenProcessPool:
                    data, err = None, "worker process died while fingerprinting this model"
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = ProcessPoolExecutor(max_workers=max(1, workers))
                    for other_fut, other in list(pending.items()):  # resubmit what the dead pool held
                        pending.pop(other_fut)
                        queue.append(other)
                _record(store, report, ref, data, err)
                if progress:
                    progress(ref, "failed" if err else "added")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    report.seconds = time.perf_counter() - t0
    return report


def _record(store: IndexStore, report: ScanReport, ref: str, data: bytes | None, err: str | None) -> None:
    if data is not None:
        try:
            store.add(ref, from_bytes(data, ref), data)
            store.clear_failure(ref)
            report.added.append(ref)
            return
        except IndexError_:
            raise
        except ModelTraceError as exc:
            err = f"{type(exc).__name__}: {exc}"
    report.failed[ref] = err or "unknown error"
    store.record_failure(ref, report.failed[ref])
