"""What the report reads from the rest of the hub: the ledger, the stop guard, and
JupyterHub's own activity gauges. Each reader degrades to ``None`` when its source is absent,
and the report shows that section as ``{"available": false, "reason": ...}``."""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from jupyterhub import metrics as hub_metrics


class StopGuardLike(Protocol):
    def totals(self) -> dict[str, int]: ...

    def top_callers(self, n: int = 10) -> list[tuple[str, dict[str, int]]]: ...


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def ledger_counts(snapshot: dict[str, Any]) -> tuple[dict[str, int], dict[str, int], int]:
    """(live tracked resources by kind, live orphans by kind, orphans found so far)."""
    counts = snapshot.get("counts", {})
    live_orphans = Counter(o["kind"] for o in snapshot.get("orphans", ()) if o.get("live"))
    return dict(counts.get("live", {})), dict(live_orphans), int(counts.get("orphans_found", 0))


def relist_rates(snapshot: dict[str, Any]) -> tuple[dict[str, int] | None, float | None]:
    """(relists in the last minute by reflector, the damping rate) from the ledger's faults."""
    faults = snapshot.get("faults")
    if faults is None:
        return None, None
    rates = {r["reflector"]: r["per_minute"] for r in faults.get("relists", ())}
    return rates, faults.get("relist_limit_per_minute")


def stop_guard_section(stop_guard: StopGuardLike | None, top: int) -> dict[str, Any]:
    if stop_guard is None:
        return unavailable("no stop guard installed in this hub")
    counters = getattr(stop_guard, "counts", {})
    return {
        "available": True,
        "enabled": getattr(stop_guard, "enabled", None),
        "dry_run": getattr(stop_guard, "dry_run", None),
        "totals": stop_guard.totals(),
        "by_reason": [
            {"outcome": outcome, "reason": reason, "count": count}
            for (outcome, reason), count in sorted(counters.items())
        ],
        "tracked_keys": getattr(stop_guard, "tracked_keys", None),
        "tracked_buckets": getattr(stop_guard, "tracked_buckets", None),
        "memory_bytes": getattr(stop_guard, "memory_bytes", None),
        "max_memory": getattr(stop_guard, "max_memory", None),
        "top_callers": [
            {"caller": caller, "requests": counts} for caller, counts in stop_guard.top_callers(top)
        ],
    }


def hub_activity() -> tuple[int, int, int]:
    """(running servers, users, successful spawns so far) from JupyterHub's own metrics,
    which the hub keeps up to date itself: no database query, no app internals."""
    running = _gauge_value(hub_metrics.RUNNING_SERVERS)
    users = _gauge_value(hub_metrics.TOTAL_USERS)
    spawns = 0
    for family in hub_metrics.SERVER_SPAWN_DURATION_SECONDS.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels.get("status") == "success":
                spawns += int(sample.value)
    return running, users, spawns


def _gauge_value(gauge: Any) -> int:
    return int(sum(sample.value for family in gauge.collect() for sample in family.samples))
