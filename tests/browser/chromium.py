"""Headless Chromium from Python: runs driver.cjs (playwright-core) and sends it commands.

Used by tests/test_page.py and by the scripts next to this file. `missing()` says what is not
installed (scripts/bootstrap-test-tools.sh installs it).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "driver.cjs"
PLAYWRIGHT_CORE = Path(
    os.environ.get("PLAYWRIGHT_CORE", ROOT / ".venv/share/browser/node_modules/playwright-core")
)
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))


class BrowserError(RuntimeError):
    """The driver could not do what it was asked; the message is its error."""


def missing() -> list[str]:
    checks = [
        (f"chromium at {CHROMIUM}", CHROMIUM.exists()),
        ("node", shutil.which("node") is not None),
        (f"playwright-core at {PLAYWRIGHT_CORE}", PLAYWRIGHT_CORE.is_dir()),
    ]
    return [what for what, there in checks if not there]


class Chromium:
    """One browser; each `context` name is its own profile (cookies), opened on first use.

    The driver records the JSON bodies of GET `report_path` and any dialog a page opens.
    """

    def __init__(self, report_path: str, timeout: float = 60) -> None:
        self.timeout = timeout
        env = {
            **os.environ,
            "PLAYWRIGHT_CORE": str(PLAYWRIGHT_CORE),
            "CHROMIUM": str(CHROMIUM),
            "GUARD_API_PATH": report_path,
        }
        self.proc = subprocess.Popen(
            ["node", str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.ids = 0
        try:
            self.version = self._read("start")["ready"]
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __call__(self, cmd: str, context: str = "admin", **args):
        """Run `cmd` in the driver; a `timeout` argument (ms) goes to the driver (wait_for), and
        the answer is awaited that long plus the browser's own timeout."""
        self.ids += 1
        self.proc.stdin.write(json.dumps({"id": self.ids, "cmd": cmd, "context": context, **args}))
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        answer = self._read(cmd, args.get("timeout", 0) / 1000 + self.timeout)
        if not answer["ok"]:
            raise BrowserError(answer["error"])
        return answer.get("value")

    def _read(self, what: str, timeout: float | None = None) -> dict:
        timeout = timeout or self.timeout
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise BrowserError(f"the browser driver did not answer {what} within {timeout}s")
        return json.loads(line)

    def log_in(self, hub_url: str, name: str, next_path: str) -> None:
        """Log `name` in through the hub's login form (context `name`), landing on next_path."""
        self("goto", name, url=f"{hub_url}/hub/login?next={next_path}")
        self("fill", name, selector="#username_input", value=name)
        self("fill", name, selector="#password_input", value="any")
        self("submit", name, selector="#login_submit")

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc.stdout.close()
