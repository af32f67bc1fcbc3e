"""Counts from inside a DevHub's hub process, for soak runs and tests on the simulator.

The guard's report endpoint answers these questions on any guarded hub; a stock hub has no
such endpoint, so a hub that a benchmark starts itself gets this probe in its config: on
SIGUSR2 the hub writes its object counts (after a full collection) to a JSON file.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

PROBE_FILE = "probe.json"


def probe_config(workdir: Path | str) -> str:
    """Hub config text that installs the probe, writing to `workdir`/probe.json."""
    path = str(Path(workdir) / PROBE_FILE)
    return textwrap.dedent(
        f"""
        def _install_probe():
            import asyncio, gc, json, os, signal
            import aiohttp
            from kubernetes_asyncio.client import ApiClient
            from kubespawner import KubeSpawner
            from kubespawner.reflector import ResourceReflector
            from binderhub_guard.ledger import registry

            def count(cls):
                return sum(1 for o in gc.get_objects() if isinstance(o, cls))

            def live_reflectors():
                return sum(
                    1 for o in gc.get_objects()
                    if isinstance(o, ResourceReflector)
                    and o.watch_task is not None and not o.watch_task.done()
                )

            def dump():
                gc.collect()
                counts = {{
                    "reflectors": count(ResourceReflector),
                    "reflectors_watching": live_reflectors(),
                    "spawners": count(KubeSpawner),
                    "api_clients": count(ApiClient),
                    "client_sessions": count(aiohttp.ClientSession),
                    "client_sessions_open": sum(
                        1 for o in gc.get_objects()
                        if isinstance(o, aiohttp.ClientSession) and not o.closed
                    ),
                    "tasks": len(asyncio.all_tasks()),
                    "ledger": registry.snapshot()["counts"],
                }}
                tmp = {path!r} + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(counts, f)
                os.replace(tmp, {path!r})

            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump)

        _install_probe()
        """
    )


def read_probe(hub_pid: int, workdir: Path | str, timeout: float = 10) -> dict:
    """Ask the hub for its counts and wait for the answer."""
    path = Path(workdir) / PROBE_FILE
    if path.exists():
        path.unlink()
    os.kill(hub_pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.02)
    raise TimeoutError(f"hub {hub_pid} wrote no probe file within {timeout}s")
