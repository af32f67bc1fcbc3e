"""GuardedKubeSpawner: KubeSpawner that accounts for what each spawn creates.

This module is the one door to kubespawner's internals.
"""

from kubespawner import KubeSpawner


class GuardedKubeSpawner(KubeSpawner):
    """A KubeSpawner whose per-spawn resources are tracked by the guard's ledger."""
