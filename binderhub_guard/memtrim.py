"""Hands the memory the hub has freed back to the operating system, at intervals.

glibc's malloc keeps what Python's larger objects, OpenSSL and aiohttp free, in holes it can
reuse but not return: the hub's resident memory then creeps up with no object alive to show
for it, in a stock hub as much as a guarded one (2.5-3 KiB per spawn in the soak benchmark
over TLS, all of it malloc's free-but-kept bytes, bytes in use flat).  On a cluster that creep
is what the container's memory limit, and the OOM killer, see.  ``malloc_trim(0)`` returns
every whole free page to the system, so resident memory follows the memory in use.

glibc only: where the C library has no ``malloc_trim`` (musl, macOS) this says so once and
does nothing.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

import psutil
from tornado.ioloop import PeriodicCallback
from traitlets import Float, validate
from traitlets.config import LoggingConfigurable

from .traitchecks import in_range


def _load_malloc_trim() -> Any:
    # the symbols already loaded into this process (libc among them): no library search,
    # which would run ldconfig at hub start-up
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return malloc_trim


class MemoryTrim(LoggingConfigurable):
    """Calls glibc's ``malloc_trim(0)`` every `interval` seconds on the hub's event loop."""

    interval = Float(
        10.0,
        help="""
        Seconds between returns of the C heap's free pages to the operating system (glibc
        malloc_trim); 0 turns it off. Each one blocks the event loop for about a millisecond
        when there is little to return, about 11 ms to return 62 MiB (the report's
        memory_trim section has the longest), and keeps the hub's resident memory at what it
        uses, rather than at the high-water mark of what it once freed. Must be a finite
        number >= 0.
        """,
    ).tag(config=True)

    @validate("interval")
    def _check_interval(self, proposal: dict) -> float:
        return in_range(proposal, 0)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._malloc_trim = _load_malloc_trim()
        self._process = psutil.Process()
        self._callback: PeriodicCallback | None = None
        self.trims = 0
        self.released_bytes_total = 0
        self.last_seconds: float | None = None
        self.longest_seconds = 0.0

    @property
    def available(self) -> bool:
        return self._malloc_trim is not None

    def start(self) -> None:
        if not self.interval:
            return
        if not self.available:
            self.log.info("binderhub-guard: no malloc_trim in this C library, memory not trimmed")
            return
        self._callback = PeriodicCallback(self.trim, self.interval * 1000)
        self._callback.start()
        self.log.info("binderhub-guard: C heap's free pages returned every %gs", self.interval)

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    def trim(self) -> int:
        """Return the free pages now; the resident bytes that released (0 if none)."""
        rss_before = self._process.memory_info().rss
        started = time.perf_counter()
        self._malloc_trim(0)
        self.last_seconds = time.perf_counter() - started
        released = max(0, rss_before - self._process.memory_info().rss)
        self.trims += 1
        self.released_bytes_total += released
        self.longest_seconds = max(self.longest_seconds, self.last_seconds)
        return released

    def status(self) -> dict[str, Any]:
        return {
            "interval_seconds": self.interval,
            "available": self.available,
            "trims": self.trims,
            "released_bytes_total": self.released_bytes_total,
            "last_seconds": self.last_seconds,
            "longest_seconds": self.longest_seconds,
        }
