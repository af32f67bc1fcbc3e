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
    final_rate: float | None = None,
    ramp_seconds: float = 0.0,
) -> int:
    """``send(i)`` for i = first, first + 1, ... at `rate` a second from now, while
    ``sending()`` holds; with `final_rate`, the rate grows linearly to it over `ramp_seconds`
    and stays there. Then the requests in flight get `DRAIN_SECONDS` to end and the rest are
    cancelled. Returns the index after the last one sent."""
    ramp = ramp_seconds if final_rate is not None and ramp_seconds > 0 else 0.0
    final = final_rate if ramp else rate

    def rate_at(elapsed: float) -> float:
        return final if elapsed >= ramp else rate + (final - rate) * elapsed / ramp

    def sent_by(elapsed: float) -> float:
        # the area under rate_at: the ramp's trapezoid, then the final rate
        ramped = min(elapsed, ramp)
        return (rate + rate_at(ramped)) / 2 * ramped + final * (elapsed - ramped)

    in_flight: set[asyncio.Task] = set()
    began, i = time.time(), first
    while sending():
        elapsed = time.time() - began
        due = first + int(sent_by(elapsed)) + 1
        while i < due:
            task = asyncio.ensure_future(send(i))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            i += 1
        await asyncio.sleep(1 / rate_at(elapsed))
    if in_flight:
        await asyncio.wait(in_flight, timeout=DRAIN_SECONDS)
        for task in in_flight:
            task.cancel()
    return i
