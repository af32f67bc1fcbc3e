"""Free TCP ports on 127.0.0.1 for the processes the lab starts: hub, proxy, etcd, apiserver.

A port is picked here and listened on a few seconds later by another process. Two things can
take it in between, and both did in loaded CI runs:

- the kernel, which hands out ports of its ephemeral range to every bind to port 0 (the
  simulator of another test) and every outgoing connection (a readiness probe);
- another test worker, picking at the same moment.

So ports are picked outside the ephemeral range, where the kernel never hands them out, and
each pick is reserved for `RESERVED_SECONDS` (10 min) under an advisory lock that other
processes' picks respect. A process's reservations end with it.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import threading
import time
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# where the ephemeral range starts where the kernel does not say: IANA's, as on macOS
IANA_EPHEMERAL_RANGE = (49152, 65535)
# below this are well-known and registered services' ports
LOWEST_PORT = 10000
# long enough for a loaded machine to start what listens there (etcd, then the apiserver, each
# allowed 60 s), and for a test to restart a hub on its port; there are 27,000 ports to spare
RESERVED_SECONDS = 600
MAX_ATTEMPTS = 1000

_random = random.SystemRandom()
# (when reserved, locked file descriptor), oldest first
_reservations: list[tuple[float, int]] = []
# a replay starts its hubs in threads side by side
_reservations_lock = threading.Lock()


def free_ports(count: int) -> list[int]:
    """`count` different TCP ports on 127.0.0.1 that nothing listens on and that no other
    pick of this or another process will return for `RESERVED_SECONDS`."""
    with _reservations_lock:
        _end_old_reservations()
        candidates = _candidate_ranges()
        picked: list[int] = []
        attempts = 0
        while len(picked) < count:
            if attempts == MAX_ATTEMPTS:
                raise OSError(f"no {count} free ports on 127.0.0.1 in {MAX_ATTEMPTS} attempts")
            attempts += 1
            port = _draw(candidates)
            # locked before the listen check: a port is picked once, here or elsewhere
            lock = _reserve(port)
            if lock is None:
                continue
            try:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            except OSError:
                os.close(lock)
                continue
            _reservations.append((time.monotonic(), lock))
            picked.append(port)
        return picked


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, reserved as `free_ports` does."""
    return free_ports(1)[0]


def _candidate_ranges() -> list[tuple[int, int]]:
    """The ranges of ports outside the ephemeral range, as (first, last), none empty."""
    try:
        first, last = (int(n) for n in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        first, last = IANA_EPHEMERAL_RANGE
    ranges = [(LOWEST_PORT, first - 1), (last + 1, 65535)]
    ranges = [(low, high) for low, high in ranges if high >= low]
    if not ranges:
        raise OSError(f"the ephemeral port range {first}-{last} leaves no port to pick")
    return ranges


def _draw(ranges: list[tuple[int, int]]) -> int:
    """A port drawn uniformly from all of `ranges`."""
    n = _random.randrange(sum(high - low + 1 for low, high in ranges))
    for low, high in ranges[:-1]:
        if n <= high - low:
            return low + n
        n -= high - low + 1
    return ranges[-1][0] + n


def _reserve(port: int) -> int | None:
    """A locked file descriptor that reserves `port`, or None if another pick holds it."""
    lock_dir = Path(tempfile.gettempdir()) / f"binderhub-guard-ports-{os.getuid()}"
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    if lock_dir.stat().st_uid != os.getuid():
        raise OSError(f"{lock_dir} belongs to another user, who could block every pick")
    lock = os.open(lock_dir / str(port), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return None
    return lock


def _end_old_reservations() -> None:
    while _reservations and time.monotonic() - _reservations[0][0] > RESERVED_SECONDS:
        os.close(_reservations.pop(0)[1])
