"""The lab: what proves the hub extension, and what an operator's hub never imports.

``kubesim/`` is the Kubernetes API simulator, ``bench/`` the dev hub, benchmarks and replay
(each a ``binderhub-guard`` subcommand), ``leaky.py`` the 2018 leak replayed. The extension in
``binderhub_guard/`` imports nothing from here, so that ``binderhub-guard check`` and the
spawner entry point load none of it.
"""
