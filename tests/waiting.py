"""Bounded waits: poll a condition until it holds, fail only if it never does.

The deadlines are generous on purpose: on a loaded machine things take longer, and how long
they take is the benchmarks' business (lab/bench/), not the tests'. A test asserts that something
happens (or has happened), never how fast.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from collections.abc import Awaitable, Callable
from typing import IO, TypeVar

import pytest

T = TypeVar("T")
# what the failure message says was awaited; a callable is asked at failure time
What = str | Callable[[], str]

DEADLINE = 60.0


def eventually(
    check: Callable[[], T], timeout: float = DEADLINE, what: What = "", interval: float = 0.1
) -> T:
    """check()'s first truthy value; fails the test if there is none within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"never happened within {timeout}s: {_said(what) or check}")
        time.sleep(interval)


async def until(
    check: Callable[[], T], timeout: float = DEADLINE, what: What = "", interval: float = 0.01
) -> T:
    """eventually() for a test on the event loop: polls without blocking the loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"never happened within {timeout}s: {_said(what) or check}")
        await asyncio.sleep(interval)


def _said(what: What) -> str:
    return what() if callable(what) else what


def read_line(stream: IO, timeout: float = DEADLINE, what: str = "a line") -> str:
    """The child's next line on `stream` (a pipe), or a test failure after `timeout`: a child
    that hangs before printing it must not hang the test. Reads the pipe's file descriptor
    directly: use it for every read of that stream."""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            pytest.fail(f"no {what} within {timeout}s (got {line!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            break  # the child closed its end: what came is all there is
        line += chunk
    return line.decode(errors="replace")


async def within(step: Awaitable[T], what: str, timeout: float = DEADLINE) -> T:
    """`step`'s result; a test failure naming `what` if it has none within `timeout` (so that a
    hang says where it is, before the per-test timeout ends the whole test)."""
    try:
        return await asyncio.wait_for(step, timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"{what} did not return within {timeout}s")
