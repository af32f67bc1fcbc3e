"""``binderhub-guard kubesim`` / ``python -m binderhub_guard.lab.kubesim``: a simulator process.

Benchmarks run the hub and the simulator as separate processes (one kubespawner client config
per process), so the simulator announces itself with a single ``ready <url>`` line once its
kubeconfig is written, and stops within a fraction of a second on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from .faults import Faults
from .server import KubeSim

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the simulator's options (the `binderhub-guard kubesim` subcommand)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks one")
    parser.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig")
    parser.add_argument("--namespace", default="default", help="namespace of the context")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS, as a cluster's API does, under a throwaway CA written into the"
        " kubeconfig: each client then loads that one CA certificate, not the system's trust store",
    )
    parser.add_argument(
        "--pod-ip-base", default=None, help="pod IPs count up from here (default: a random one)"
    )
    parser.add_argument("--event-ttl", type=float, default=3600.0, help="Event lifetime, s")
    parser.add_argument("--max-events", type=int, default=10_000, help="cap on stored Events")
    parser.add_argument("--pending-delay", type=float, default=0.0, help="Pending time, s")
    parser.add_argument(
        "--container-exit", type=float, default=0.2, help="container exit time on delete, s"
    )
    parser.add_argument(
        "--watch-drop-after-events", type=int, default=None, help="cut watches after N events"
    )
    parser.add_argument(
        "--watch-drop-after-seconds", type=float, default=None, help="cut watches after S s"
    )
    parser.add_argument("--error-rate-500", type=float, default=0.0, help="share of 500s")
    parser.add_argument("--error-rate-429", type=float, default=0.0, help="share of 429s")
    parser.add_argument("--latency", type=float, default=0.0, help="added per request, s")
    parser.add_argument(
        "--history-limit", type=int, default=1000, help="watch events kept before 410"
    )
    parser.add_argument("--pods-never-ready", action="store_true", help="pods stay Pending")
    parser.add_argument("--pods-fail", action="store_true", help="containers exit 1")
    parser.add_argument(
        "--pods-rejected", action="store_true", help="kubelet admission rejects pods"
    )
    parser.add_argument(
        "--delete-response-invalid",
        action="store_true",
        help="pod deletes answer a body the client cannot validate",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for injected errors")
    parser.add_argument("--log-level", default="INFO")


def faults_from_args(args: argparse.Namespace) -> Faults:
    return Faults(
        watch_drop_after_events=args.watch_drop_after_events,
        watch_drop_after_seconds=args.watch_drop_after_seconds,
        error_rate_500=args.error_rate_500,
        error_rate_429=args.error_rate_429,
        latency_seconds=args.latency,
        history_limit=args.history_limit,
        pods_never_ready=args.pods_never_ready,
        pods_fail=args.pods_fail,
        pods_rejected=args.pods_rejected,
        pending_delay_seconds=args.pending_delay,
        container_exit_seconds=args.container_exit,
        delete_response_invalid=args.delete_response_invalid,
        seed=args.seed,
    )


async def run(
    port: int,
    kubeconfig: str,
    namespace: str,
    faults: Faults,
    *,
    host: str = "127.0.0.1",
    pod_ip_base: str | None = None,
    event_ttl_seconds: float = 3600.0,
    max_events: int = 10_000,
    tls: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM; print one ``ready <url>`` line once the kubeconfig exists."""
    sim = KubeSim(
        faults,
        host=host,
        port=port,
        pod_ip_base=pod_ip_base,
        event_ttl_seconds=event_ttl_seconds,
        max_events=max_events,
        tls=tls,
    )
    url = await sim.start()
    try:
        sim.write_kubeconfig(kubeconfig, namespace=namespace)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        print(f"ready {url}", flush=True)
        await stopping.wait()
    finally:
        await sim.stop()


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="[%(levelname)s %(asctime)s %(name)s] %(message)s"
    )
    try:
        faults = faults_from_args(args)
    except ValueError as error:
        log.error("kubesim: %s", error)
        return 2
    asyncio.run(
        run(
            args.port,
            args.kubeconfig,
            args.namespace,
            faults,
            host=args.host,
            pod_ip_base=args.pod_ip_base,
            event_ttl_seconds=args.event_ttl,
            max_events=args.max_events,
            tls=args.tls,
        )
    )
    return 0
