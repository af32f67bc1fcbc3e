"""The lab's free ports: outside the kernel's ephemeral range, and never given to two pickers."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from waiting import read_line

from binderhub_guard.lab import ports


def test_picks_are_different_listenable_ports_outside_the_ephemeral_range() -> None:
    first, last = (int(n) for n in ports.EPHEMERAL_RANGE_FILE.read_text().split())
    picked = ports.free_ports(50)
    assert len(set(picked)) == 50
    for port in picked:
        assert not first <= port <= last
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_a_port_another_process_picked_is_not_picked_until_that_process_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys; from binderhub_guard.lab.ports import free_port;"
         " print(free_port(), flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        taken = int(read_line(other.stdout, what="the other process's port"))
        monkeypatch.setattr(ports, "_candidate_ranges", lambda: [(taken, taken)])
        with pytest.raises(OSError, match="no 1 free ports"):
            ports.free_port()
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    assert ports.free_port() == taken


def test_a_port_something_listens_on_is_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))  # no pick reserves it: only the listener stands in the way
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setattr(ports, "_candidate_ranges", lambda: [(port, port)])
        with pytest.raises(OSError, match="no 1 free ports"):
            ports.free_port()
