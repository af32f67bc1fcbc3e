"""A new leak signal is one function and one entry in binderhub_guard.report.signals.

`NEW_SIGNAL` is exactly what a developer would append to ``signals.py``: a fresh interpreter
imports ``signals.py`` with these lines at its end (an import hook adds them), and nothing else.
The test then finds the signal everywhere that derives from the registry: the setting (with
its check), the rules, the report, the metrics and the page's list of signals.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

NEW_SIGNAL = '''
def open_fds_high(samples, rules):
    """More open file descriptors than open_fds_max at the latest sample."""
    fds = samples[-1].open_fds
    if fds is None or fds <= rules.open_fds_max:
        return []
    return [raised("open_fds_high", {"open_fds": fds, "threshold": rules.open_fds_max})]


RULES.append(
    LeakRule(
        open_fds_high,
        (SignalKind("open_fds_high", WARNING, "The hub holds more open files than it should."),),
        (Threshold("open_fds_max", 100_000, "Open files above which open_fds_high is raised."),),
    )
)
'''

PROBE = """
import asyncio, importlib.machinery, importlib.util, json, sys


class AppendedToSignals:
    # signals.py as it would be with the new lines at its end
    def find_spec(self, name, path, target=None):
        if name != "binderhub_guard.report.signals":
            return None
        self.origin = importlib.machinery.PathFinder.find_spec(name, path).origin
        return importlib.util.spec_from_file_location(name, self.origin, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        with open(self.origin) as f:
            source = f.read() + "\\n" + sys.argv[1]
        exec(compile(source, self.origin, "exec"), vars(module))


sys.meta_path.insert(0, AppendedToSignals())
from binderhub_guard.report import signals
from prometheus_client import CollectorRegistry, generate_latest
from traitlets import TraitError
from traitlets.config import Config

from binderhub_guard.report import metrics
from binderhub_guard.report.guard_report import GuardReport

out = {"default": GuardReport().open_fds_max}
try:
    GuardReport(config=Config({"GuardReport": {"open_fds_max": 0}}))
except TraitError as e:
    out["refused"] = str(e)
config = Config({"GuardReport": {"open_fds_max": 1, "signal_confirm_samples": 1}})
report = GuardReport(config=config)
out["report"] = asyncio.run(report.build())["leak_signals"]
registry = CollectorRegistry()
registry.register(metrics.GuardCollector(report))
out["metrics"] = [
    line for line in generate_latest(registry).decode().splitlines() if "open_fds_high" in line
]
out["page"] = [(k.name, k.severity, k.description) for k in signals.signal_kinds()]
print(json.dumps(out))
"""


def test_a_new_signal_is_one_function_and_one_entry() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE), NEW_SIGNAL],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["default"] == 100_000
    assert "GuardReport.open_fds_max" in out["refused"]
    [signal] = [s for s in out["report"] if s["name"] == "open_fds_high"]
    assert signal["severity"] == "warning" and signal["evidence"]["threshold"] == 1
    assert 'binderhub_guard_leak_signals_active{signal="open_fds_high"} 1.0' in out["metrics"]
    assert (
        'binderhub_guard_leak_signals_raised_total{signal="open_fds_high"} 1.0' in (out["metrics"])
    )
    assert out["page"][-1][:2] == ["open_fds_high", "warning"]


def test_the_registry_lists_the_signals_the_metrics_always_show() -> None:
    from binderhub_guard.report import signals

    assert signals.signal_names() == (
        "orphans_live",
        "orphans_found",
        "count_rising",
        "rss_per_spawn",
        "watches_exceed_reflectors",
        "relist_storm",
    )
