"""The guard report: /hub/api/guard, its sampler, leak signals and Prometheus metrics.

``binderhub_guard.hub`` calls :func:`start` once the hub runs and :func:`stop` at shutdown;
the handlers find the running report in the hub's shared guard state, or here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .guard_report import GuardReport, shared_source

__all__ = ["GuardReport", "current", "start", "stop"]

_running: dict[str, Any] = {}


def start(app: Any, shared: Mapping[str, Any] | None = None) -> GuardReport:
    """Start sampling in the running hub ``app`` (its config supplies ``c.GuardReport``).

    ``shared`` is the hub's guard state (``stop_guard``, ``ledger``), read at each sample.
    """
    from . import metrics

    if "report" in _running:
        return _running["report"]
    report = GuardReport(parent=app, log=app.log, get_source=shared_source(shared))
    report.start()
    _running["report"] = report
    _running["collector"] = metrics.register(report)
    return report


async def stop() -> None:
    from . import metrics

    report = _running.pop("report", None)
    collector = _running.pop("collector", None)
    if collector is not None:
        metrics.unregister(collector)
    if report is not None:
        await report.stop()


def current() -> GuardReport | None:
    return _running.get("report")
