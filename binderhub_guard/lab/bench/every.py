"""A benchmark helper that does something every few seconds in a thread, for a `with` block."""

from __future__ import annotations

import threading
from typing import Any

import requests


class Every:
    """Calls `tick()` every `every` seconds in a thread while the `with` block runs. A tick
    that cannot reach the hub or the simulator (or gets no JSON back) is skipped."""

    every = 1.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Every:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.tick()
            except (requests.RequestException, ValueError):
                pass

    def tick(self) -> None:
        raise NotImplementedError
