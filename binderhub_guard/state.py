"""GuardState: the one object that owns the guard's process-wide state.

What the guard keeps for the life of the hub process lives here and nowhere else: the ledger,
the fault counts (with the relist damper), the stop guard, the memory trim, the running
report with its metrics collector and the pacer of the report's requests, and the parent of
kubespawner's shared reflectors.

Who makes it, and how the others find it:

- In a hub, the installer (`binderhub_guard.hub.install`) makes it once, at start-up, when
  JupyterHub builds its route table: it fills in the stop guard, the memory trim and the pacer,
  sets the ledger and the damper from the spawner's configuration, and puts the state in the
  hub's tornado settings under `SETTINGS_KEY`. The report's handlers read it from there
  (``self.settings``), GuardedKubeSpawner from its user's (``self.user.settings``: JupyterHub
  hands every User the same dict), the report is handed it when the installer starts it.
- Without `install(c)` (kubespawner used alone, the in-process tests, the lab's overhead
  benchmark), a GuardedKubeSpawner finds no state in its settings and takes
  `GuardState.for_process()`; with no installer to set the ledger and the damper once, each
  such spawner sets them from its own settings when it is made, as the installer would.

There is one per process (`for_process`), whoever makes it first: the constructors the ledger
is fed by (kubespawner's reflectors, kubernetes_asyncio's watches and clients) are wrapped once
per process, and kubespawner's shared reflectors are per process too. A report or a test can
still make a state of its own from the parts it has (``GuardState(ledger=..., stop_guard=...)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .faultcounts import FaultCounts
from .ledger import Ledger

if TYPE_CHECKING:
    from prometheus_client.registry import Collector
    from traitlets.config import LoggingConfigurable

    from .memtrim import MemoryTrim
    from .report.guard_report import GuardReport
    from .report.handlers import RequestPacer
    from .stopguard import StopGuard

#: Where the installer puts the state in the hub's tornado settings.
SETTINGS_KEY = "binderhub_guard"


class GuardState:
    """The guard's process-wide state (see the module docstring)."""

    _process: ClassVar[GuardState | None] = None

    def __init__(
        self,
        *,
        ledger: Ledger | None = None,
        faults: FaultCounts | None = None,
        stop_guard: StopGuard | None = None,
        memory_trim: MemoryTrim | None = None,
    ) -> None:
        self.ledger = ledger if ledger is not None else Ledger()
        #: faults the spawners met, fed by the kubespawner door; the damper holds relists
        self.faults = faults if faults is not None else FaultCounts()
        self.stop_guard = stop_guard
        self.memory_trim = memory_trim
        #: the running report and its collector on prometheus's registry, while it runs
        self.report: GuardReport | None = None
        self.report_collector: Collector | None = None
        #: paces the report's requests (one at a time, half of the event loop at most)
        self.report_pacer: RequestPacer | None = None
        #: the long-lived parent of kubespawner's shared reflectors, made by the first spawner
        #: that starts one (so that none of them pins that spawner)
        self.reflector_parent: LoggingConfigurable | None = None

    @classmethod
    def for_process(cls) -> GuardState:
        """This process's state, made at the first call: by the installer in a hub, by the
        first GuardedKubeSpawner where kubespawner runs without `install(c)`."""
        if cls._process is None:
            cls._process = cls()
        return cls._process

    @staticmethod
    def in_settings(settings: Mapping[str, Any] | None) -> GuardState | None:
        """The state the installer put in a hub's tornado `settings`, if any."""
        return settings.get(SETTINGS_KEY) if settings is not None else None

    def ledger_snapshot(self) -> dict[str, Any]:
        """The ledger's snapshot with the faults under ``"faults"``: the report's ledger
        section (see ``ledger.py`` and ``faultcounts.py`` for their shapes)."""
        return {**self.ledger.snapshot(), "faults": self.faults.snapshot()}
