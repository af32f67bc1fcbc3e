"""The simulator as a process, the way benchmarks and the dev hub run it."""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal
import sys

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import kube_config
from kubespawner.clients import load_config

from binderhub_guard.lab.kubesim import KubeSim
from binderhub_guard.lab.kubesim.cli import add_arguments


async def test_process_serves_until_sigterm(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "binderhub_guard.lab.kubesim",
        "--port",
        "0",
        "--kubeconfig",
        str(kubeconfig),
        "--namespace",
        "hub",
        "--pending-delay",
        "0.1",
        "--error-rate-429",
        "0.25",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert line.startswith("ready http://127.0.0.1:")
        url = line.split()[1]

        configuration = Configuration()
        await config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration
        )
        assert configuration.host == url
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/_sim/faults") as response:
                faults = await response.json()
            assert faults["pending_delay_seconds"] == 0.1
            assert faults["error_rate_429"] == 0.25
            async with session.patch(f"{url}/_sim/faults", json={"error_rate_429": 0}):
                pass

            async with client.ApiClient(configuration) as api_client:
                core_api = client.CoreV1Api(api_client)
                # open for an hour unless the simulator's shutdown ends it
                stream = watch.Watch().stream(
                    core_api.list_namespaced_pod, "hub", timeout_seconds=3600
                )
                await core_api.create_namespaced_config_map("hub", {"metadata": {"name": "x"}})
                async with session.get(f"{url}/_sim/state") as response:
                    state = await response.json()
                assert state["objects"]["configmaps"] == 1
                # this session's and the API client's keep-alive connections
                assert state["connections"] >= 2

                # an open watch must not hold up shutdown
                first = asyncio.ensure_future(stream.__anext__())
                open_watches = 0
                while open_watches != 1:  # bounded by the per-test timeout
                    await asyncio.sleep(0.05)
                    async with session.get(f"{url}/_sim/state") as response:
                        open_watches = (await response.json())["watches"]["open"]
                process.send_signal(signal.SIGTERM)
                # a generous bound, far below the watch's hour: only a shutdown that waits
                # for its open watches fails it
                assert await asyncio.wait_for(process.wait(), 120) == 0
                first.cancel()
                await stream.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_process_with_tls_names_its_ca_in_the_kubeconfig(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "binderhub_guard.lab.kubesim",
        "--kubeconfig",
        str(kubeconfig),
        "--tls",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert line.startswith("ready https://127.0.0.1:")
        cluster = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]
        assert cluster["server"] == line.split()[1]
        ca_pem = base64.b64decode(cluster["certificate-authority-data"])
        assert ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)


async def test_kubespawner_load_config_reads_kubeconfig_env(
    sim: KubeSim, kubeconfig: str, monkeypatch: pytest.MonkeyPatch
):
    """kubespawner's load_config (uncached here) finds the simulator through $KUBECONFIG."""
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    # kubernetes_asyncio reads $KUBECONFIG once, at import: a hub process sets it before that
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
    saved = Configuration._default
    try:
        load_config.__wrapped__()
        assert Configuration.get_default_copy().host == sim.url
    finally:
        Configuration._default = saved


def test_add_arguments_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--kubeconfig", "k", "--pods-fail", "--watch-drop-after-events", "3"])
    assert args.port == 0 and args.namespace == "default"
    assert args.pods_fail and args.watch_drop_after_events == 3
