"""`binderhub-guard latency`: normal API calls on a stock and a guarded hub under the same load.

Two hubs run side by side, each on its own simulator: stock (plain KubeSpawner, none of the
package's snippets) and guarded (the package's snippets, GuardedKubeSpawner, as installed).
Each gets the same spawn/stop load (`--users` users, each launching a server, holding it a
moment, stopping it, again) and no flood.

A separate process probes both with normal calls, the ones the admin page and the culler make
(``GET /hub/api/users/{name}`` and ``GET /hub/api/``), alternating between the hubs call by
call, in a random order for each pair: whatever the machine does to one arm at a moment, it
does to the other, so a loaded machine makes both slower, not one. Calls go to each hub's own
port (as in-cluster services reach it, so the proxy's latency is not in the figures) on a
kept-alive connection, with a token the hub generated (one hash round; a token from config
takes 16,384, which would be most of what is measured).

Output: p50, p99 and p99.9 per arm with 95 % bootstrap confidence intervals, the guarded/stock
ratio of each with its interval, and a verdict on the p99: "guarded within 10% of stock" when
the ratio's interval lies below 1.10, "guarded slower" when it lies above, and "inconclusive
(noise)" otherwise. The probe is closed-loop (a pair at a time): a stall delays the next
pair, so long stalls are undercounted alike in both arms.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from . import lifeline, stats
from .devhub import DevHub, DevHubError, stop_all
from .figures import cpu_seconds
from .hubclient import HubClient
from .stats import quantile

ARMS = ("stock", "guarded")
PROBE_USER = "admin"
PATHS = (f"/hub/api/users/{PROBE_USER}", "/hub/api/")
QUANTILES = (50, 99, 99.9)
WITHIN = 1.10  # the verdict's bound on guarded p99 / stock p99
HOLD_SECONDS = 1.0
PROBE_SCOPES = ["read:users", "read:hub"]
LOAD_SCOPES = ["admin:servers", "admin:users", "list:users"]
# both arms alike: the dev client may make the probe's token (jupyterhub-generated)
TOKEN_ROLE = """
c.JupyterHub.load_roles.append(
    {"name": "latency-probe-token", "scopes": ["tokens"], "services": ["dev-client"]}
)
"""


# --- the load ---------------------------------------------------------------------------------


class SpawnLoad:
    """Users cycling launch, hold, stop on one hub, each in a thread, until stopped."""

    def __init__(self, hub: DevHub, users: list[str], token: str) -> None:
        self.client = HubClient(hub.url, token)
        self.users = users
        self.launches = 0
        self.failures = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(u,), daemon=True) for u in users]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            if thread.is_alive():
                thread.join(30)
        self.client.close()

    def _run(self, user: str) -> None:
        while not self.stopping.is_set():
            try:
                self.client.start_server(user, timeout=60)
                self.launches += 1
                self.stopping.wait(HOLD_SECONDS)
                self.client.stop_server(user, timeout=60)
            except (RuntimeError, TimeoutError, requests.RequestException):
                self.failures += 1
                self.stopping.wait(1)


# --- the probe, in a process of its own --------------------------------------------------------


@dataclass(frozen=True)
class Target:
    arm: str
    url: str  # the hub's own port
    token: str


def _probe(targets: list[Target], seconds: float, pairs_per_second: float, results: Any) -> None:
    sessions = {}
    for target in targets:
        session = requests.Session()
        session.headers["Authorization"] = f"token {target.token}"
        sessions[target.arm] = session
    samples: dict[str, list[float]] = {target.arm: [] for target in targets}
    failures = dict.fromkeys(samples, 0)
    rng = random.Random()
    started = time.monotonic()
    pair = 0
    while (now := time.monotonic()) - started < seconds:
        path = PATHS[pair % len(PATHS)]
        for target in rng.sample(targets, len(targets)):
            sent = time.perf_counter()
            try:
                ok = sessions[target.arm].get(target.url + path, timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            if ok:
                samples[target.arm].append(time.perf_counter() - sent)
            else:
                failures[target.arm] += 1
        pair += 1
        time.sleep(max(0.0, started + pair / pairs_per_second - time.monotonic()))
    results.send({"samples": samples, "failures": failures, "seconds": now - started})


# --- statistics ---------------------------------------------------------------------------------


def bootstrap(
    stock: list[float], guarded: list[float], resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per quantile: each arm's value and 95 % interval, and the guarded/stock ratio's, from
    `resamples` resamplings of each arm."""

    def quantiles(arms: Mapping[str, list[float]]) -> dict[tuple[str, float], float]:
        values = {}
        for q in QUANTILES:
            qa, qb = quantile(arms["stock"], q), quantile(arms["guarded"], q)
            values["stock", q], values["guarded", q], values["ratio", q] = qa, qb, qb / qa
        return values

    intervals = stats.bootstrap(
        {"stock": stock, "guarded": guarded}, quantiles, resamples=resamples, seed=seed
    )
    figures: dict[str, Any] = {name: {} for name in ("stock", "guarded", "ratio")}
    for (name, q), interval in intervals.items():
        figures[name][q] = interval
    return figures


def verdict(figures: dict[str, Any]) -> str:
    _, low, high = figures["ratio"][99]
    if high <= WITHIN:
        return "guarded within 10% of stock"
    if low > WITHIN:
        return "guarded slower"
    return "inconclusive (noise)"


def format_table(figures: dict[str, Any], counts: dict[str, int]) -> str:
    def ms(value: tuple[float, float, float]) -> str:
        point, low, high = (1000 * v for v in value)
        return f"{point:7.1f} [{low:6.1f}, {high:6.1f}]"

    def ratio(value: tuple[float, float, float]) -> str:
        return "{:5.2f} [{:4.2f}, {:4.2f}]".format(*value)

    lines = [
        f"{'':8} {'samples':>8} " + " ".join(f"{f'p{q:g} ms [95% CI]':>24}" for q in QUANTILES)
    ]
    for arm in ARMS:
        cells = " ".join(f"{ms(figures[arm][q]):>24}" for q in QUANTILES)
        lines.append(f"{arm:8} {counts[arm]:>8} {cells}")
    cells = " ".join(f"{ratio(figures['ratio'][q]):>24}" for q in QUANTILES)
    lines.append(f"{'g/s':8} {'':>8} {cells}")
    return "\n".join(lines)


# --- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=150, help="probing time (default 150)")
    parser.add_argument(
        "--rate", type=float, default=25, help="probe pairs (one call per arm) per second"
    )
    parser.add_argument("--users", type=int, default=4, help="spawn/stop users per hub")
    parser.add_argument("--warm-up", type=float, default=10, help="seconds of load unprobed")
    parser.add_argument("--json", help="also write every figure and sample to this file")


def _start(hub: DevHub, errors: list[DevHubError]) -> None:
    try:
        hub.start()
    except DevHubError as e:  # reported by the main thread
        errors.append(e)


def _generated_token(hub: DevHub, scopes: list[str]) -> str:
    reply = hub.api(
        "POST",
        f"/users/{PROBE_USER}/tokens",
        json={"note": "latency benchmark", "expires_in": 3600, "scopes": scopes},
    )
    reply.raise_for_status()
    return reply.json()["token"]


def main(args: argparse.Namespace) -> int:
    if args.seconds <= 0 or args.rate <= 0 or args.users < 0 or args.warm_up < 0:
        print("latency: --seconds and --rate must be positive", file=sys.stderr)
        return 2
    hubs = {arm: DevHub(stock=arm == "stock", extra_config=TOKEN_ROLE) for arm in ARMS}
    loads: list[SpawnLoad] = []
    interrupted = False
    try:
        print("latency: starting the stock and guarded hubs", file=sys.stderr, flush=True)
        errors: list[DevHubError] = []
        starters = [
            threading.Thread(target=_start, args=(hub, errors), daemon=True)
            for hub in hubs.values()
        ]
        for thread in starters:
            thread.start()
        for thread in starters:
            while thread.is_alive():
                thread.join(0.2)
        if errors:
            raise errors[0]
        users = [f"load-{i:02d}" for i in range(args.users)]
        for hub in hubs.values():
            hub.client.create_users(users)
            # a generated token too: the load's own token checks would be most of its cost
            loads.append(SpawnLoad(hub, users, _generated_token(hub, LOAD_SCOPES)))
        targets = [
            Target(arm, hub.hub_url, _generated_token(hub, PROBE_SCOPES))
            for arm, hub in hubs.items()
        ]
        for load in loads:
            load.start()
        print(
            f"latency: {args.users} spawn/stop users per hub, {args.warm_up:g} s of warm-up,"
            f" then {args.seconds:g} s of probes",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(args.warm_up)
        context = multiprocessing.get_context("spawn")
        results, sender = context.Pipe(duplex=False)
        run, run_args = lifeline.target(_probe, targets, args.seconds, args.rate, sender)
        prober = context.Process(target=run, args=run_args, daemon=True)
        cpu = {arm: cpu_seconds(hub.hub_pid) for arm, hub in hubs.items()}
        lifeline.start(prober)
        while not results.poll(0.5):
            if not prober.is_alive():
                raise DevHubError("the probe process died; its traceback is above")
        probed = results.recv()
        cpu = {arm: cpu_seconds(hub.hub_pid) - cpu[arm] for arm, hub in hubs.items()}
        prober.join(10)
    except KeyboardInterrupt:
        interrupted = True
        print("latency: interrupted, stopping both hubs", file=sys.stderr, flush=True)
        return 130
    except (DevHubError, requests.RequestException) as e:
        print(f"latency: {e}", file=sys.stderr)
        return 1
    finally:
        for load in loads:
            load.stopping.set()
        stop_all(list(hubs.values()), interrupted=interrupted)
        for load in loads:
            load.stop()

    samples = probed["samples"]
    if min(len(values) for values in samples.values()) < 100:
        print(f"latency: too few samples: {probed['failures']} failed", file=sys.stderr)
        return 1
    figures = bootstrap(samples["stock"], samples["guarded"])
    counts = {arm: len(values) for arm, values in samples.items()}
    print(
        f"normal API calls, {probed['seconds']:.0f} s, arms interleaved; hub CPU in the window:"
        + ", ".join(f" {arm} {cpu[arm]:.1f} s" for arm in ARMS)
        + "; launches: "
        + ", ".join(f"{arm} {load.launches}" for arm, load in zip(ARMS, loads, strict=True))
        + "; failed calls: "
        + ", ".join(f"{arm} {probed['failures'][arm]}" for arm in ARMS)
    )
    print(format_table(figures, counts))
    print(f"verdict (p99): {verdict(figures)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "figures": {
                        name: {str(q): value for q, value in by_q.items()}
                        for name, by_q in figures.items()
                    },
                    "verdict": verdict(figures),
                    "cpu_seconds": cpu,
                    "launches": {arm: load.launches for arm, load in zip(ARMS, loads, strict=True)},
                    "samples": samples,
                    "failures": probed["failures"],
                },
                f,
            )
    return 0
