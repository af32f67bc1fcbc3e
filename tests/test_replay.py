"""`binderhub-guard replay`, end to end: a short replay's directions, its files, and Ctrl-C."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from waiting import DEADLINE

from binderhub_guard.lab.bench.replay import (
    SHARED_REFLECTORS,
    Timeline,
    format_table,
    format_verdicts,
)
from binderhub_guard.lab.bench.replay_load import PROBES_PER_SECOND
from binderhub_guard.lab.bench.replay_plot import DPI, SIZE_INCHES

# the module's replay runs up to 400 s before its first test
pytestmark = [pytest.mark.hub, pytest.mark.timeout(900)]

# as short as still shows every direction: the flood and the fault windows are seconds long;
# half the visitors and a fifth of the flood of the main command still leak on stock, and
# flood both hubs with more stops than the guard lets through
MINUTES = 0.3
USERS = 6
FLOOD = ["--flood-rate", "20", "--flood-final-rate", "60"]


def replay_command(out: Path, users: int = USERS) -> list[str]:
    return [sys.executable, "-m", "binderhub_guard.cli", "replay", "--minutes", str(MINUTES)] + [
        "--users",
        str(users),
        *FLOOD,
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> tuple[Path, str, dict]:
    out = tmp_path_factory.mktemp("replay")
    done = subprocess.run(replay_command(out), capture_output=True, text=True, timeout=400)
    # 1: the replay ran and a guard did not hold (asserted below, figure by figure)
    assert done.returncode in (0, 1), done.stderr[-4000:]
    return out, done, json.loads((out / "replay.json").read_text())


def test_the_timeline_scales_with_minutes_and_keeps_its_order():
    short, long = Timeline.scaled(0.5), Timeline.scaled(10)
    assert long.flood == (short.flood[0] * 20, short.flood[1] * 20)
    for timeline in (short, long):
        assert 0 < timeline.flood[0] < timeline.watch_drops[0] < timeline.flood[1]
        assert timeline.watch_drops[0] < timeline.latency_burst[0] < timeline.latency_burst[1]
        assert timeline.latency_burst[1] < timeline.watch_drops[1] < timeline.leave
        assert timeline.leave < timeline.seconds
    t = short
    assert t.phase_at(0) == "steady load"
    assert t.phase_at(t.flood[0]) == "culler flood"
    assert t.phase_at(t.latency_burst[0]) == "watch drops + apiserver latency"
    assert t.phase_at(t.watch_drops[1]) == "recovery"
    assert t.phase_at(t.leave) == "users leave"
    assert t.faults_at(0) == {"watch_drop_after_seconds": None, "latency_seconds": 0.0}
    assert t.faults_at(t.latency_burst[0])["latency_seconds"] > 0
    assert t.faults_at(t.watch_drops[0])["watch_drop_after_seconds"] is not None
    assert t.phase_end(0) == t.flood[0]
    # without drops (the main command's default) the fault phase is the latency burst alone
    calm = Timeline.scaled(0.5, drops=False)
    assert calm.phase_at(calm.latency_burst[0]) == "apiserver latency"
    assert calm.faults_at(calm.watch_drops[0])["watch_drop_after_seconds"] is None


def test_replay_prints_a_table_and_a_verdict_per_failure_mode(replay):
    _, done, result = replay
    stdout = done.stdout
    rows = ("launch success %", "failed: timeout", "failed: hub error", "failed: spawn error")
    rows += ("s hub down, proxy up", "normal API p99 ms", "hub RSS MiB", "live reflectors")
    for row in rows:
        assert row in stdout
    modes = ["outage", "leak", "flood", "blindness"]
    assert [v["mode"] for v in result["verdicts"]] == modes
    by_mode = {v["mode"]: v for v in result["verdicts"]}
    # each verdict tells the run's own figures
    for name in ("stock", "guarded"):
        flood = result["hubs"][name]["flood"]
        said = f"{flood['answered']}/{flood['sent']} stops answered, {flood['throttled']} throttled"
        assert by_mode["flood"][name].startswith(said), (name, by_mode["flood"])
        assert by_mode["outage"][name].startswith("launch success "), by_mode["outage"]
        # every failed launch of a window is counted under one reason
        for figures in result["summary"][name].values():
            failed = figures["launches"] - figures["launches_ready"]
            assert sum(figures["launches_failed_by"].values()) == failed, figures
    assert by_mode["blindness"]["stock"] == "no view (GET /hub/api/guard: 404)"
    assert format_verdicts(result["verdicts"]) in stdout
    # the exit status says whether a guard did not hold (inconclusive is not a failure)
    failed = any(v["verdict"] == "did not hold" for v in result["verdicts"])
    assert done.returncode == (1 if failed else 0), stdout
    timeline = Timeline(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in result["timeline"].items()})  # fmt: skip
    assert format_table(result["summary"], timeline) in stdout


def test_every_second_is_recorded_for_both_hubs(replay):
    _, _, result = replay
    seconds = int(MINUTES * 60)
    for name in ("stock", "guarded"):
        samples = result["hubs"][name]["samples"]
        assert [s["t"] for s in samples] == list(range(1, seconds + 1))
        for sample in samples:
            assert sample["rss_mib"] > 0
            # the warm-up spawned: kubespawner's shared reflectors exist from the first second
            assert isinstance(sample["reflectors"], int), sample
            assert sample["reflectors"] >= SHARED_REFLECTORS, sample
            assert isinstance(sample["watch_connections"], int), sample
            assert sample["watch_connections"] >= 0, sample
            # probes are sent on a fixed schedule: never more than its rate in a second
            assert 0 <= sample["api_failures"] <= sample["api_calls"] <= PROBES_PER_SECOND
        # every probe call made in the timeline is counted in its second, and only there
        calls = [at for at, _, _ in result["hubs"][name]["api_calls"] if 0 <= at < seconds]
        assert sum(s["api_calls"] for s in samples) == len(calls) > 0


def test_stock_leaks_and_the_guarded_hub_holds(replay):
    _, _, result = replay
    end = {name: result["hubs"][name]["after"] for name in ("stock", "guarded")}
    launches = {name: len(result["hubs"][name]["launches"]) for name in ("stock", "guarded")}

    def left_behind(name: str) -> int:
        return end[name]["reflectors"] - SHARED_REFLECTORS - end[name]["pods"]

    # after the users left: stock still watches for servers long gone, guarded does not
    assert left_behind("stock") >= min(5, launches["stock"] // 2), (end, launches)
    assert left_behind("guarded") <= 0, end
    assert end["guarded"]["reflectors"] < end["stock"]["reflectors"]
    leak = next(v for v in result["verdicts"] if v["mode"] == "leak")
    assert leak["held"], leak


def test_the_flood_reaches_jupyterhub_in_stock_and_is_throttled_when_guarded(replay):
    _, _, result = replay
    stock, guarded = result["hubs"]["stock"]["flood"], result["hubs"]["guarded"]["flood"]
    assert stock["sent"] > 0 and guarded["sent"] > 0
    # stock JupyterHub answered the flood's stops itself: it has nothing that answers 429
    assert stock["throttled"] == 0 and stock["answered"] > 0
    assert guarded["throttled"] > 0
    # every 429 the flood got was the guard's: its own counter holds them all (the culler's
    # repeats may add to it)
    guard = result["hubs"]["guarded"]
    counted = (
        guard["after"]["stop_guard"]["throttle"] - guard["samples"][0]["stop_guard"]["throttle"]
    )
    assert counted >= guarded["throttled"], (counted, guarded)


def test_every_launch_is_recorded_with_its_outcome(replay):
    _, _, result = replay
    for name in ("stock", "guarded"):
        launches = result["hubs"][name]["launches"]
        assert launches, name
        for launch in launches:
            assert launch["user"].startswith(f"{name}-"), launch
            assert launch["started"] <= launch["ended"], launch
            # a failed launch says why; a ready one how long it took
            assert (launch["seconds"] is not None) if launch["ready"] else launch["why"], launch


def test_only_the_guarded_hub_sees_its_leak(replay):
    _, _, result = replay
    assert not result["hubs"]["stock"]["report_available"]
    assert result["summary"]["stock"]["end"]["leak_signals"] is None
    guarded = result["hubs"]["guarded"]
    # during the timeline or, at the latest, once the users have left
    assert any(s["leak_signals"] for s in [*guarded["samples"], guarded["after"]])


def test_the_plot_is_a_png_of_the_expected_size(replay):
    out, _, _ = replay
    data = (out / "replay.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (SIZE_INCHES[0] * DPI, SIZE_INCHES[1] * DPI)


def test_ctrl_c_mid_run_leaves_no_process_or_port_behind(tmp_path):
    replay = subprocess.Popen(
        replay_command(tmp_path / "out", users=2),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        # as a background job of a script (CI's) starts it: Ctrl-C must stop it all the same
        preexec_fn=_ignore_sigint,
    )
    try:
        running = _wait_for_line(replay, "[stock] steady load", timeout=180)
        assert running, "the replay never started its timeline"
        children = psutil.Process(replay.pid).children(recursive=True)
        ports = _listening_ports(children)
        assert len(children) >= 5 and ports  # simulators, hubs, proxies, culler, flood
        os.kill(replay.pid, signal.SIGINT)
        status = replay.wait(timeout=90)
        assert status == 130, replay.stderr.read().decode(errors="replace")[-3000:]
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.wait()
        replay.stderr.close()
    # a bounded wait: fails only if one never ends
    _, alive = psutil.wait_procs(children, timeout=DEADLINE)
    assert not alive, alive
    for address in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)  # nothing listens there any more


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_for_line(process: subprocess.Popen, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], 1)
        if ready:
            line = process.stderr.readline().decode()
            if not line:
                return False
            if text in line:
                return True
    return False


def _listening_ports(processes: list[psutil.Process]) -> set[tuple[str, int]]:
    ports = set()
    for process in processes:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        ports.update(tuple(c.laddr) for c in connections if c.status == psutil.CONN_LISTEN)
    return ports
