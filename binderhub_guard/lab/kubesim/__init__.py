"""An embedded Kubernetes API simulator for running an unmodified KubeSpawner.

See `server.KubeSim` for the in-process API and `server.add_arguments` / `server.main` for the
``binderhub-guard kubesim`` command.
"""

from .faults import Faults
from .server import KubeSim

__all__ = ["Faults", "KubeSim"]
