"""Helpers shared by the simulator tests (not fixtures, so they can take arguments)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

NAMESPACE = "kubesim-test"


def pod_manifest(name: str, port: int = 8888, **labels: str) -> dict:
    return {
        "metadata": {"name": name, "labels": {"component": "singleuser-server", **labels}},
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "image": "quay.io/jupyter/base-notebook:latest",
                    "ports": [{"name": "notebook-port", "containerPort": port}],
                }
            ]
        },
    }


async def wait_for(condition: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    """Poll condition() until truthy; fail the test with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.01)
