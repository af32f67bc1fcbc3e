"""The stop guard's hook on the other supported major: jupyterhub 5.x, in the matrix venv.

scripts/bootstrap.sh makes `.venv-jh5` (VENV=.venv-jh5 PINS="jupyterhub>=5,<6 ..."); the dev hub
runs under that venv's python, so the hub is jupyterhub 5 with this source tree's guard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tools import missing_tool_reason

pytestmark = pytest.mark.hub

JH5_PYTHON = Path(__file__).resolve().parent.parent / ".venv-jh5" / "bin" / "python"

SCRIPT = textwrap.dedent(
    """
    import json, time
    import jupyterhub
    from binderhub_guard.lab.bench.devhub import DevHub

    with DevHub(extra_config="c.JupyterHub.allow_named_servers = True\\n") as hub:
        client = hub.client
        client.create_users(["jh5-a"])
        not_running = [hub.api("DELETE", "/users/jh5-a/server").status_code for _ in range(3)]
        named = [hub.api("DELETE", "/users/jh5-a/servers/nb").status_code for _ in range(2)]
        client.start_server("jh5-a")
        real_stop = hub.api("DELETE", "/users/jh5-a/server").status_code
        client.wait_for("jh5-a", "", ready=False, timeout=30)
        pods = len(hub.sim_state()["pods"])
        log = hub.log_path.read_text()
    print(json.dumps({
        "version": jupyterhub.__version__,
        "not_running": not_running,
        "named": named,
        "real_stop": real_stop,
        "pods": pods,
        "hooked": "stop guard active in front of" in log,
        "logged_429": "429 DELETE" in log,
    }))
    """
)


@pytest.mark.skipif(
    not JH5_PYTHON.exists(),
    reason=missing_tool_reason(".venv-jh5", "scripts/test.sh makes it with scripts/bootstrap.sh"),
)
def test_guard_hooks_jupyterhub_5():
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(JH5_PYTHON.parent), os.path.dirname(sys.executable)]) + (
        os.pathsep + env.get("PATH", "")
    )
    done = subprocess.run(
        [str(JH5_PYTHON), "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"].startswith("5.")
    assert result == {
        "version": result["version"],
        "not_running": [204, 429, 429],
        "named": [404, 404],
        "real_stop": result["real_stop"],
        "pods": 0,
        "hooked": True,
        "logged_429": False,
    }
    assert result["real_stop"] in (202, 204)
