"""The shipped Prometheus rules: promtool validates them and runs their unit tests.

promtool comes from Debian's `prometheus` package
(`apt-get install -y --no-install-recommends prometheus`, about 15 s).
"""

import re
import shutil
import subprocess
from importlib.resources import files

import pytest
from tools import missing_tool_reason

ALERTS = files("binderhub_guard") / "data" / "alerts"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason=missing_tool_reason(
        "promtool", "scripts/bootstrap-test-tools.sh installs Debian's prometheus package"
    ),
)


def promtool(*args):
    return subprocess.run(
        [PROMTOOL, *args], cwd=str(ALERTS), capture_output=True, text=True, timeout=60
    )


@needs_promtool
def test_rules_are_valid():
    result = promtool("check", "rules", "binderhub-guard.rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


@needs_promtool
def test_rules_pass_their_unit_tests():
    result = promtool("test", "rules", "binderhub-guard.rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    rules = (ALERTS / "binderhub-guard.rules.yml").read_text()
    tests = (ALERTS / "binderhub-guard.rules.test.yml").read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if "- alert:" in line]
    assert alerts
    for alert in alerts:
        assert f"alertname: {alert}" in tests, alert


async def test_rules_only_use_metrics_the_hub_exports():
    """Every metric an alert reads is one the guard's collector really exports."""
    from prometheus_client import CollectorRegistry, generate_latest

    from binderhub_guard.report.guard_report import GuardReport
    from binderhub_guard.report.metrics import GuardCollector
    from binderhub_guard.state import GuardState
    from binderhub_guard.stopguard import StopGuard

    report = GuardReport(state=GuardState(stop_guard=StopGuard()))
    report.sampler.tick()
    registry = CollectorRegistry()
    registry.register(GuardCollector(report))
    exported = set(re.findall(r"^(binderhub_guard_\w+)", generate_latest(registry).decode(), re.M))

    rules = (ALERTS / "binderhub-guard.rules.yml").read_text()
    expressions = [line for line in rules.splitlines() if line.strip().startswith("expr:")]
    used = {name for line in expressions for name in re.findall(r"binderhub_guard_\w+", line)}
    assert used and used <= exported, used - exported
