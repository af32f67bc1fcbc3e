"""An embedded Kubernetes API simulator for running an unmodified KubeSpawner.

See `server.KubeSim` for the in-process API and `server.add_arguments` / `server.main` for the
``binderhub-guard kubesim`` command.

What it does, besides core/v1 REST and watches with resourceVersions, 410 after compaction and
Event expiry: a kubelet that runs pods on 127.x.y.z responders (answering like a single-user
server: ``GET /`` and the server's prefix redirect with 302 to its ``lab``), the status
subresource of pods, services, PVCs and namespaces, and kube-controller-manager's garbage
collection of ``ownerReferences`` (background; ``propagationPolicy=Orphan``).

Its answers are compared with a real kube-apiserver's by tests/test_fidelity.py
(`lab.controlplane.fidelity`: the same request sequences against both). What it does not do,
by name (a real control plane does):

- **finalizers**: none at all, so deletes are immediate where the apiserver marks the object
  and waits: PVC protection (``kubernetes.io/pvc-protection``), the ``orphan`` finalizer
  (Orphan is carried out within the delete), ``foregroundDeletion`` (``Foreground`` is
  carried out as ``Background``), namespace finalization (no ``Terminating`` phase);
- **list pagination**: ``limit`` and ``continue`` are ignored, every item comes in one list;
- **JSON patch** (RFC 6902, answered 415) and **server-side apply**; a strategic merge patch
  is treated as a merge patch; ``stringData`` of a Secret is merged into ``data`` on create
  only;
- **defaulting and admission** that the apiserver applies on create, listed with reasons in
  `lab.controlplane.fidelity.SERVER_DEFAULTS`: a pod's ServiceAccount token volume and mounts,
  tolerations, priority, scheduler name, DNS policy and container defaults; a Service's
  ClusterIP allocation and its defaults; a PVC's volumeMode; ``managedFields``; no
  ServiceAccount admission (a pod needs no ``default`` ServiceAccount), no quota;
- **the watch cache's timing**: a watch resumes from the last `Faults.history_limit` changes
  (kube-apiserver: a time window of its watch cache, then etcd until compaction), and a
  watch with ``allowWatchBookmarks`` gets a BOOKMARK every 5 s while idle and 2 s before its
  timeout (kube-apiserver: about once a minute, and 2 s before the timeout);
- **selector syntax errors** are worded as the apiserver words them only for an unclosed set
  (``a in (b``) and unsupported field labels; other malformed selectors are 400 with other
  words;
- exec, attach and port-forward into pods;
- authentication and authorization: any bearer token is accepted, there is no RBAC;
- object validation beyond names and pods' containers;
- resources other than namespaces, pods, services, PVCs, secrets, service accounts, events and
  config maps.
"""

from .faults import Faults
from .server import KubeSim

__all__ = ["Faults", "KubeSim"]
