"""An embedded Kubernetes API simulator for running an unmodified KubeSpawner.

See `server.KubeSim` for the in-process API and `server.add_arguments` / `server.main` for the
``binderhub-guard kubesim`` command.

What it does, besides core/v1 REST and watches with resourceVersions, 410 after compaction and
Event expiry: a kubelet that runs pods on 127.x.y.z responders, and kube-controller-manager's
garbage collection of ``ownerReferences`` (background; ``propagationPolicy=Orphan``).

What it does not do, known so far (a real control plane does):
- ``Foreground`` propagation: accepted, carried out as ``Background``; no finalizers at all
  (PVC protection, namespace finalization: deletes are immediate);
- exec, attach and port-forward into pods; a responder answers 200 on every path, where a
  single-user server answers ``GET /`` with 302;
- authentication and authorization: any bearer token is accepted, there is no RBAC;
- admission: no ServiceAccount admission (a pod needs no ``default`` ServiceAccount), no quota;
- object validation beyond pods' containers; JSON patch and server-side apply (strategic merge
  patch is treated as a merge patch); list pagination (``limit``/``continue``);
- resources other than namespaces, pods, services, PVCs, secrets, service accounts, events and
  config maps.
"""

from .faults import Faults
from .server import KubeSim

__all__ = ["Faults", "KubeSim"]
