"""``binderhub-guard control-plane``: a real control plane and a node agent, until stopped.

Builds the binary if it is missing (once: it is cached by version outside the work tree),
starts etcd, kube-apiserver and kube-controller-manager (`cluster.ControlPlane`) and the node
agent (`nodeagent.NodeAgent`), writes a kubeconfig for the admin user, and prints one
``ready <url>`` line, as ``binderhub-guard kubesim`` does. On SIGTERM or Ctrl-C it stops the
agent (closing the responders), then the apiserver and the controller-manager, then etcd.

With ``--fault-proxy`` the kubeconfig names a fault-injecting proxy in front of the apiserver
(`faultproxy.FaultProxy`, with the simulator's ``/_sim/faults`` endpoint) instead of the
apiserver itself, and the ready line is ``ready <proxy url> apiserver=<apiserver url>``; the
node agent shares the proxy's fault knobs, and talks to the apiserver directly.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
import threading
import time

from binderhub_guard.lab.kubesim.faults import Faults

from . import build
from .cluster import ControlPlane, ControlPlaneError
from .faultproxy import FaultProxy

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig")
    parser.add_argument("--namespace", default="default", help="namespace of the context")
    parser.add_argument(
        "--workdir", default=None, help="certificates, etcd data, logs (default: a temporary one)"
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="fail instead of building the binary when it is missing",
    )
    parser.add_argument(
        "--pod-ip-base", default=None, help="pod IPs count up from here (default: a random one)"
    )
    parser.add_argument(
        "--container-exit", type=float, default=0.2, help="container exit time on delete, s"
    )
    parser.add_argument(
        "--apiserver-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="one more kube-apiserver flag, e.g. --apiserver-arg=--etcd-compaction-interval=10s",
    )
    parser.add_argument(
        "--no-node-agent", action="store_true", help="start no node agent: pods stay Pending"
    )
    parser.add_argument(
        "--fault-proxy",
        action="store_true",
        help="put a fault-injecting proxy (PATCH /_sim/faults) between the kubeconfig and "
        "the apiserver",
    )
    parser.add_argument("--log-level", default="INFO")


async def serve(plane: ControlPlane, args: argparse.Namespace, began: float) -> None:
    """Run the node agent, print ``ready <url>``, wait for SIGINT/SIGTERM."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    agent = None
    proxy = None
    faults = Faults(container_exit_seconds=args.container_exit)
    try:
        if not args.no_node_agent:
            from .nodeagent import NodeAgent

            agent = NodeAgent(
                str(plane.workdir / "admin.kubeconfig"),
                pod_ip_base=args.pod_ip_base,
                faults=faults,
            )
            await agent.start()
        ready = f"ready {plane.url}"
        if args.fault_proxy:
            proxy = FaultProxy(plane.url, plane.ca_path.read_bytes(), plane.token, faults)
            await proxy.start()
            plane.write_kubeconfig(args.kubeconfig, server=proxy.url, ca_pem=proxy.ca_pem)
            ready = f"ready {proxy.url} apiserver={plane.url}"
        else:
            plane.write_kubeconfig(args.kubeconfig)
        log.info(
            "control plane ready in %.1f s (%s), logs in %s",
            time.monotonic() - began,
            ", ".join(f"{k} {v:.1f} s" for k, v in plane.timings.items()),
            plane.workdir,
        )
        print(ready, flush=True)
        await stopping.wait()
    finally:
        if proxy is not None:
            await proxy.stop()
        if agent is not None:
            await agent.stop()


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="[%(levelname)s %(asctime)s %(name)s] %(message)s"
    )
    # one line per request to a responder: the hub's probes are the apiserver's business here
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    began = time.monotonic()
    plane = ControlPlane(
        workdir=args.workdir,
        namespace=args.namespace,
        build_if_missing=not args.no_build,
        apiserver_args=args.apiserver_arg,
    )
    if not args.no_build and build.cached_binary() is None:
        log.info("building the control plane (Kubernetes %s) once ...", build.KUBERNETES_VERSION)
    # kubernetes_asyncio takes seconds to import (more on a busy machine): import the node
    # agent while the apiserver starts, not after
    importer = threading.Thread(
        target=importlib.import_module, args=(f"{__package__}.nodeagent",), daemon=True
    )
    importer.start()
    try:
        plane.start()
        importer.join()
        asyncio.run(serve(plane, args, began))
    except ControlPlaneError as error:
        print(f"control-plane: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        plane.stop()
    return 0
