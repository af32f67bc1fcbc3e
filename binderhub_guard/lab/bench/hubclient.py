"""A small client of JupyterHub's REST API, for benchmarks and tests.

Works against any hub given its URL and a token with the culler's scopes (admin:users,
admin:servers, list:users): a DevHub on the simulator, or a staging hub on a real cluster.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import requests


class HubClient:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=64)
        self.session.mount("http://", adapter)

    @property
    def api_url(self) -> str:
        return self.url + "/hub/api"

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.api_url + path, **kwargs)

    @staticmethod
    def server_path(user: str, server: str = "") -> str:
        path = f"/users/{quote(user, safe='')}/server"
        if server:
            path += f"s/{quote(server, safe='')}"
        return path

    def create_users(self, names: list[str]) -> None:
        existing = {u["name"] for u in self.api("GET", "/users").json()}
        new = [n for n in names if n not in existing]
        if new:
            self.api("POST", "/users", json={"usernames": new}).raise_for_status()

    def server_model(self, user: str, server: str = "", timeout: float = 30) -> dict | None:
        reply = self.api("GET", f"/users/{quote(user, safe='')}", timeout=timeout)
        reply.raise_for_status()
        return reply.json().get("servers", {}).get(server)

    def start_server(self, user: str, server: str = "", timeout: float = 90) -> float:
        """Start a server and wait until the hub says it is ready; returns seconds to ready."""
        started = time.monotonic()
        reply = self.api("POST", self.server_path(user, server))
        if reply.status_code not in (201, 202):
            raise RuntimeError(f"start {user}/{server}: {reply.status_code} {reply.text}")
        self.wait_for(user, server, ready=True, timeout=timeout)
        return time.monotonic() - started

    def stop_server(self, user: str, server: str = "", timeout: float = 90) -> float:
        """Stop a server and wait until the hub no longer lists it; returns seconds taken."""
        started = time.monotonic()
        reply = self.api("DELETE", self.server_path(user, server))
        if reply.status_code not in (202, 204):
            raise RuntimeError(f"stop {user}/{server}: {reply.status_code} {reply.text}")
        self.wait_for(user, server, ready=False, timeout=timeout)
        return time.monotonic() - started

    def wait_for(self, user: str, server: str, *, ready: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.server_model(user, server)
            if ready and model and model.get("ready"):
                return
            if ready and model is None:
                raise RuntimeError(f"{user}/{server} failed to start (no longer listed)")
            if not ready and (model is None or (not model.get("ready") and not model["pending"])):
                return
            time.sleep(0.1)
        state = "ready" if ready else "stopped"
        raise TimeoutError(f"{user}/{server} not {state} within {timeout}s")

    def close(self) -> None:
        self.session.close()
