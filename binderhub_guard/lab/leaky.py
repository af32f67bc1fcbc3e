"""The 2018 mybinder leak, replayed: a per-spawn events reflector that is never stopped.

kubespawner PR #150 started ``EventReflector(parent=self, fields={'involvedObject.name':
pod_name})`` in every ``start()`` to show a spawn's events on its progress page, and nothing
ever stopped it (reverted in #166; analysis in issue #165).  Each one kept a watch connection,
a task and a growing cache, and through ``parent`` the spawner, its user and ORM objects,
until the hub stopped answering.

``LeakyKubeSpawner`` is that bug on today's KubeSpawner; ``LeakyGuardedKubeSpawner`` is the
same code under GuardedKubeSpawner, whose spawn context wraps it, so the ledger sees the
leaked reflectors, reports them as orphans and releases them.
"""

from kubespawner import KubeSpawner
from kubespawner.spawner import EventReflector

from ..spawner import GuardedKubeSpawner


class LeakyMixin:
    """Starts a fresh, never-stopped EventReflector for the pod in every start()."""

    async def _start(self):
        leaked = EventReflector(
            parent=self,
            namespace=self.namespace,
            fields={"involvedObject.name": self.pod_name},
        )
        await leaked.start()
        return await super()._start()


class LeakyKubeSpawner(LeakyMixin, KubeSpawner):
    """KubeSpawner with the 2018 leak: grows one watch, task and pinned spawner per spawn."""


class LeakyGuardedKubeSpawner(LeakyMixin, GuardedKubeSpawner):
    """The same leak under GuardedKubeSpawner: the ledger reports and releases it."""
