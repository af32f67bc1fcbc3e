"""The 2018 culler's stop flood, sent open-loop: the one sender `flood` and the replay share.

Open-loop as the buggy culler's requests were: they leave on schedule whatever the hub does, so
a hub that slows down gets more requests in flight, not fewer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: how long the requests still in flight when the flood ends get to be answered
DRAIN_SECONDS = 5.0


async def stop_once(session: Any, url: str, headers: dict[str, str]) -> str:
    """One DELETE of a server (an aiohttp `session`): the answer's HTTP status, or the name
    of the client error that came instead of one."""
    import aiohttp

    try:
        async with session.delete(url, headers=headers) as reply:
            await reply.read()
            return str(reply.status)
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return type(e).__name__


async def open_loop(
    rate: float,
    send: Callable[[int], Awaitable[None]],
    sending: Callable[[], bool],
    first: int = 0,
) -> int:
    """``send(i)`` for i = first, first + 1, ... at `rate` a second from now, while
    ``sending()`` holds; then the requests in flight get `DRAIN_SECONDS` to end and the rest are
    cancelled. Returns the index after the last one sent."""
    in_flight: set[asyncio.Task] = set()
    began, i = time.time(), first
    while sending():
        due = first + int((time.time() - began) * rate) + 1
        while i < due:
            task = asyncio.ensure_future(send(i))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            i += 1
        await asyncio.sleep(1 / rate)
    if in_flight:
        await asyncio.wait(in_flight, timeout=DRAIN_SECONDS)
        for task in in_flight:
            task.cancel()
    return i
