"""binderhub_guard: keeps a JupyterHub on Kubernetes up through spawner leaks and stop floods."""

from ._version import __version__

__all__ = ["__version__"]
