# binderhub_guard, 1 of 2: spawn through GuardedKubeSpawner.
#
# GuardedKubeSpawner is KubeSpawner plus a ledger of every reflector, watch, task and
# API client a spawn creates, released when the server stops or its user is deleted.
# All KubeSpawner settings (c.KubeSpawner.*) keep working; they apply to the subclass.
c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "guarded-kubespawner"
