"""What the benchmarks share to measure a hub process and to print its figures."""

from __future__ import annotations

from typing import Any

import psutil


def cpu_seconds(process: psutil.Process | int) -> float:
    """CPU time (user + system) used so far by `process`, or by the process with that pid."""
    if not isinstance(process, psutil.Process):
        process = psutil.Process(process)
    times = process.cpu_times()
    return times.user + times.system


def dash(value: Any) -> str:
    """A table cell: the value, or "-" when it was not measured."""
    return "-" if value is None else str(value)


def mib(value: int | None) -> str | None:
    """Bytes in MiB with one decimal; None stays None (not measured)."""
    return None if value is None else f"{value / 2**20:.1f}"
