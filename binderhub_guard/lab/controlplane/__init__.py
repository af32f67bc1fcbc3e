"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

Built from source with Go and cached by version (`build`), started as child processes under
lifelines (`cluster.ControlPlane`), with a Python node agent in place of kube-scheduler and a
kubelet (`nodeagent.NodeAgent`), so that a real hub can spawn and stop servers on it.
``binderhub-guard control-plane --kubeconfig PATH`` runs all of it (`cli`).
"""
