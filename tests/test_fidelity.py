"""kubesim's fidelity to a real kube-apiserver: the same request sequences against both.

`binderhub_guard.lab.controlplane.fidelity` holds the sequences, the normaliser and the
comparer; here one simulator is started for the module and the worker's control plane (with its
node agent; the `cluster` fixture, whose apiserver runs with `fidelity.APISERVER_ARGS`) is
used directly, not through its fault proxy. Every sequence runs against both, each in a
namespace of its own, and each test checks one sequence: no difference but those
`fidelity.KNOWN_DIFFERENCES` names with a reason. The counts go to
test-artifacts/fidelity.json. Without the control plane binary these tests skip outside CI and
fail under CI=true, as tests/test_control_plane.py's do.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from artifacts import ARTIFACTS
from backends import READY_TIMEOUT, Cluster
from waiting import read_line

from binderhub_guard.lab.bench import lifeline
from binderhub_guard.lab.bench.devhub import stop_process_group
from binderhub_guard.lab.controlplane import fidelity

# the worker's control plane and one kubesim for the module, compared request by request
pytestmark = [pytest.mark.hub, pytest.mark.backends("sim", "apiserver")]

# kubesim's watch history: long enough for the sequences that run side by side, short enough
# for `Backend.expire_history` to push it out quickly
HISTORY_LIMIT = 300


def _launch(command: list[str], log: Path) -> subprocess.Popen:
    """A child under a lifeline in its own process group."""
    with open(log, "ab") as stderr:
        return lifeline.popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )


def _ready(proc: subprocess.Popen, what: str) -> None:
    line = read_line(proc.stdout, timeout=READY_TIMEOUT, what=f"ready line from {what}")
    assert line.startswith("ready "), line


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop_process_group(proc, timeout=5)
        proc.stdout.close()


@pytest.fixture(scope="module")
def comparison(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[fidelity.Comparison]:
    base = tmp_path_factory.mktemp("fidelity")
    cli = [sys.executable, "-m", "binderhub_guard.cli"]
    sim = _launch(
        [*cli, "kubesim", "--kubeconfig", str(base / "kubesim")]
        + ["--history-limit", str(HISTORY_LIMIT)],
        base / "kubesim.log",
    )
    backends: list[fidelity.Backend] = []
    try:
        _ready(sim, "kubesim")
        kubesim = fidelity.Backend("kubesim", base / "kubesim", history_limit=HISTORY_LIMIT)
        apiserver = fidelity.Backend(
            "apiserver", cluster.kubeconfig, etcd_url=fidelity.etcd_url_from(cluster.workdir)
        )
        backends = [kubesim, apiserver]
        result = fidelity.run_all(kubesim, apiserver)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "fidelity.json").write_text(json.dumps(result.summary(), indent=1))
        yield result
    finally:
        for backend in backends:
            backend.close()
        _stop(sim)


@pytest.mark.parametrize("sequence", list(fidelity.SEQUENCES))
def test_kubesim_answers_as_the_apiserver_does(
    comparison: fidelity.Comparison, sequence: str
) -> None:
    unexpected = [str(d) for d in comparison.unexpected if d.sequence == sequence]
    assert unexpected == []


def test_every_known_difference_still_occurs(comparison: fidelity.Comparison) -> None:
    """A known difference that no longer shows is fixed: take it off the list."""
    seen = {(d.sequence, d.known) for d in comparison.differences if d.known}
    listed = {(sequence, reason) for (sequence, _, _), reason in fidelity.KNOWN_DIFFERENCES.items()}
    assert listed - seen == set()
    assert comparison.sequences == len(fidelity.SEQUENCES)
