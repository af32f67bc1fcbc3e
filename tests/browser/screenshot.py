"""Takes the README's screenshot of /hub/guard: the 2018 leak and a culler's stop flood, live.

A guarded DevHub under /binder/jupyter/ runs the leaky spawner with orphan release off (so the
orphans stay visible); servers are started and stopped one after another while a "culler"
keeps stopping servers that are not running, and tracemalloc is switched on from the page's
button halfway. The page refreshes every second meanwhile; the shot is taken at the end.
With --open-late the page is opened only after the scene, as by an admin answering an alert:
its charts start from the hub's history (docs/guard-history.png).

    .venv/bin/python tests/browser/screenshot.py [--seconds 40] [--out docs/guard-page.png]
    .venv/bin/python tests/browser/screenshot.py --open-late --out docs/guard-history.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chromium import Chromium, missing  # noqa: E402

from binderhub_guard.lab.bench.devhub import DevHub  # noqa: E402

BASE_URL = "/binder/jupyter/"
HUB_CONFIG = """
c.GuardReport.sample_interval = 1
c.GuardedKubeSpawner.orphan_grace_seconds = 1
c.GuardedKubeSpawner.release_orphans = False
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40, help="how long to run the scene")
    parser.add_argument("--out", default="docs/guard-page.png")
    parser.add_argument("--open-late", action="store_true", help="open the page after the scene")
    args = parser.parse_args(argv)
    if missing():
        print(f"screenshot: no {', '.join(missing())}: run scripts/bootstrap-test-tools.sh")
        return 1

    with DevHub(leaky=True, base_url=BASE_URL, extra_config=HUB_CONFIG) as hub:
        with Chromium(report_path=f"{BASE_URL}hub/api/guard") as browser:
            browser.log_in(hub.url, "admin", next_path=f"{BASE_URL}hub/home")
            if not args.open_late:
                browser("goto", url=f"{hub.url}/hub/guard?refresh=1")
            users = [f"binder-{i:02d}" for i in range(100)]
            hub.client.create_users(users)
            started = time.monotonic()
            switched = False
            for user in users:
                elapsed = time.monotonic() - started
                if elapsed > args.seconds:
                    break
                if not args.open_late and not switched and elapsed > args.seconds / 2:
                    browser("click", selector="#guard-tracemalloc-switch")
                    switched = True
                hub.client.start_server(user)
                hub.client.stop_server(user)
                for _ in range(10):  # the culler, asking again for what it stopped
                    hub.api("DELETE", f"/users/{quote(user)}/server")
                time.sleep(1)
            if args.open_late:
                browser("goto", url=f"{hub.url}/hub/guard?refresh=1")
            browser("wait_for", expression="document.getElementById('guard').dataset.refreshes > 3")
            time.sleep(2)
            browser("screenshot", path=str(Path(args.out).resolve()))
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
