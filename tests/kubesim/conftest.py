"""Fixtures: a fresh simulator per test, and Kubernetes clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import Configuration
from kubesim_helpers import NAMESPACE

from binderhub_guard.lab.kubesim import Faults, KubeSim


@pytest.fixture(autouse=True)
def _no_ca_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # Every kubernetes_asyncio ApiClient, including the one each Watch makes, loads OpenSSL's
    # default CA bundle when its kubeconfig names no CA: ~0.15 s of CPU apiece, most of this
    # suite's time.  The simulator speaks plain http unless a test asks for TLS, so point OpenSSL
    # at an empty location instead.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-ca-bundle.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-ca-dir"))


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def sim_options() -> dict:
    """Extra KubeSim arguments; override with @pytest.mark.parametrize("sim_options", ...)."""
    return {}


@pytest.fixture
async def sim(faults: Faults, sim_options: dict) -> AsyncIterator[KubeSim]:
    simulator = KubeSim(faults, **sim_options)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
def kubeconfig(sim: KubeSim, tmp_path) -> str:
    return str(sim.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE))


@pytest.fixture
async def core_api(kubeconfig: str) -> AsyncIterator[client.CoreV1Api]:
    """A CoreV1Api with its own configuration, leaving the process-wide default alone."""
    configuration = Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        yield client.CoreV1Api(api_client)


@pytest.fixture
async def default_kube_config(kubeconfig: str) -> AsyncIterator[str]:
    """Point the process-wide kubernetes_asyncio configuration, which kubespawner's shared
    clients and reflectors use, at this test's simulator; restore it afterwards."""
    saved = Configuration._default
    await config.load_kube_config(config_file=kubeconfig)
    yield kubeconfig
    Configuration._default = saved
