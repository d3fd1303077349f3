"""What the fuzz tests share: the example budget and a cap on the address space while they run."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("MODELTRACE_FUZZ_EXAMPLES", "0"))  # 0: the short deterministic pass
MEMORY_HEADROOM = 2 << 30  # bytes of address space one example may add to the process


def fuzz_settings(default: int) -> settings:
    """`default` examples, derandomized, in `make test`; MODELTRACE_FUZZ_EXAMPLES random ones in `make fuzz`."""
    return settings(max_examples=EXAMPLES or default, derandomize=not EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@contextmanager
def capped_address_space(headroom: int = MEMORY_HEADROOM) -> Iterator[None]:
    """Cap the address space: a parser that tries to allocate GBs fails with MemoryError, not the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as fh:
        size = int(fh.read().split()[0]) * resource.getpagesize()
    cap = size + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
