# binderhub_guard, 1 of 2: spawn through GuardedKubeSpawner.
#
# GuardedKubeSpawner is KubeSpawner plus a ledger of every reflector, watch, asyncio task,
# API client and progress iterator a spawn creates, released when the server stops (or fails
# to start, times out, is cancelled), when its user or named server is deleted, and at hub
# shutdown. Whatever is still live orphan_grace_seconds after the server stopped is logged
# as an orphan with where it was created, and released (a reflector the spawn started itself
# at once: reflectors never stop on their own). Shared reflectors no longer keep the
# spawner that created them alive. All KubeSpawner settings (c.KubeSpawner.*) keep working.
#
# Settings (help: `binderhub_guard.spawner.LedgerSettings`):
#   c.GuardedKubeSpawner.ledger_enabled = True       # False: behave as KubeSpawner
#   c.GuardedKubeSpawner.release_orphans = True      # False: only report orphans
#   c.GuardedKubeSpawner.orphan_grace_seconds = 5.0
c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "guarded-kubespawner"
