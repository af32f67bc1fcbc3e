"""Spawn/stop cycles of one user's server, and the spawner variants the soaks compare: what
`soak` and `faultsoak` share (here so that neither imports the other for it)."""

from __future__ import annotations

import requests

from .hubclient import HubClient

# a hub that stops answering (the leak's end state) fails cycles; it does not end the run
CYCLE_ERRORS = (RuntimeError, TimeoutError, requests.RequestException)


def cycle_server(client: HubClient, name: str, count: int, timeout: float) -> tuple[int, int]:
    """(failed starts, failed stops) of `count` start/stop cycles of one user's server."""
    failed_starts = failed_stops = 0
    for _ in range(count):
        try:
            client.start_server(name, timeout=timeout)
        except CYCLE_ERRORS:
            failed_starts += 1
        try:
            client.stop_server(name, timeout=timeout)
        except CYCLE_ERRORS:
            failed_stops += 1
    return failed_starts, failed_stops


# spawner class of each variant; the rest of the hub (the guard's snippets, the report) is the
# same in all four, so the figures differ by the spawner alone
VARIANTS = {
    "stock": "kubespawner.KubeSpawner",
    "guarded": "binderhub_guard.spawner.GuardedKubeSpawner",
    "leaky-stock": "binderhub_guard.lab.leaky.LeakyKubeSpawner",
    "leaky-guarded": "binderhub_guard.lab.leaky.LeakyGuardedKubeSpawner",
}
