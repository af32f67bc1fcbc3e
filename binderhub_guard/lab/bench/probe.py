"""Counts from inside a DevHub's hub process, for soak runs and tests on the simulator.

The guard's report endpoint answers these questions on any guarded hub; a stock hub has no
such endpoint, so a hub that a benchmark starts itself gets this probe in its config: on
SIGUSR2 the hub writes its object counts (after a full collection) to a JSON file.

The counts come from ``gc.get_referrers`` of the counted classes (an instance refers to its
class), not from a ``gc.get_objects()`` list: that list is 8 bytes per object, megabytes that
the C allocator would keep in the very heap a soak measures, sample after sample.
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
            from binderhub_guard.state import GuardState

            def instances(*classes):
                wanted, pending = set(), list(classes)
                while pending:
                    cls = pending.pop()
                    if cls not in wanted:
                        wanted.add(cls)
                        pending.extend(cls.__subclasses__())
                return [o for o in gc.get_referrers(*wanted) if type(o) in wanted]

            def dump():
                gc.collect()
                counts = dict.fromkeys(
                    ("reflectors", "reflectors_watching", "spawners", "api_clients",
                     "client_sessions", "client_sessions_open"), 0)
                for o in instances(ResourceReflector, KubeSpawner, ApiClient,
                                   aiohttp.ClientSession):
                    if isinstance(o, ResourceReflector):
                        counts["reflectors"] += 1
                        task = o.watch_task
                        counts["reflectors_watching"] += task is not None and not task.done()
                    elif isinstance(o, KubeSpawner):
                        counts["spawners"] += 1
                    elif isinstance(o, ApiClient):
                        counts["api_clients"] += 1
                    elif isinstance(o, aiohttp.ClientSession):
                        counts["client_sessions"] += 1
                        counts["client_sessions_open"] += not o.closed
                counts["tasks"] = len(asyncio.all_tasks())
                counts["ledger"] = GuardState.for_process().ledger.snapshot()["counts"]
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
