"""The guard report: /hub/api/guard, its sampler, leak signals and Prometheus metrics.

``binderhub_guard.hub`` calls :func:`start` once the hub runs and :func:`stop` at shutdown;
the running report and its collector are kept on the hub's `GuardState`, where the handlers
find them.
"""

from __future__ import annotations

from typing import Any

from ..state import GuardState
from .guard_report import GuardReport

__all__ = ["GuardReport", "start", "stop"]


def start(app: Any, state: GuardState) -> GuardReport:
    """Start sampling in the running hub ``app`` (its config supplies ``c.GuardReport``).

    The report reads ``state`` (its ledger, faults, stop guard, memory trim) at each sample.
    """
    from . import metrics

    if state.report is not None:
        return state.report
    report = GuardReport(parent=app, log=app.log, state=state)
    report.start()
    state.report = report
    state.report_collector = metrics.register(report)
    return report


async def stop(state: GuardState) -> None:
    from . import metrics

    report, state.report = state.report, None
    collector, state.report_collector = state.report_collector, None
    if collector is not None:
        metrics.unregister(collector)
    if report is not None:
        await report.stop()
