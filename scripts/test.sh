#!/usr/bin/env bash
# The test suite: install what is needed, lint, then run every test against real parts, then
# JupyterHub's own API tests with the guard installed (scripts/peer-jupyterhub-tests.sh).
# The control plane's binary is built once (about 10 min cold, cached outside the work tree).
# The full suite runs on the newest supported jupyterhub and kubespawner (.venv); the install
# test also runs the built wheel on the oldest supported pair (.venv-jh5).
set -euo pipefail
cd "$(dirname "$0")/.."
# The suite starts a hundred-odd Python processes (hubs, simulators, tools), each importing
# jupyterhub and kubernetes_asyncio: with PYTHONDONTWRITEBYTECODE set (as on this project's
# machines) each would compile them from source, twice the CPU of importing their bytecode,
# which the first process now writes for the rest (only what is imported, unlike compiling
# the whole venv at install)
unset PYTHONDONTWRITEBYTECODE
# the oldest supported pair's venv is made beside the newest's (each mostly waits on its
# installer); the other tools need .venv
VENV=.venv-jh5 PINS="jupyterhub>=5,<6 jupyterhub-kubespawner>=7.0,<7.1" bash scripts/bootstrap.sh &
oldest=$!
trap 'kill "$oldest" 2>/dev/null' EXIT
bash scripts/bootstrap.sh
bash scripts/bootstrap-test-tools.sh
bash scripts/bootstrap-control-plane.sh
# the bytecode of what every test process imports, written once here rather than by the
# workers and the peer run at the same moment
.venv/bin/python -c 'import jupyterhub.app, kubespawner, pytest, xdist'
wait "$oldest"
trap - EXIT
.venv/bin/ruff check binderhub_guard tests
status=0
# JupyterHub's own API tests with the guard in their hubs (PEER_RUNS= (empty) skips them), beside
# ours: each run leaves the other CPU while it waits (on its timers, on a hub starting). Not at a
# lower priority: starved, JupyterHub's test_start_stop_race lost its race (its spawn reached
# Spawner.start after the test had mocked it). In a process group of their own, stopped with it
# on Ctrl-C or failure; their output after ours.
peer=
if [ "${PEER_RUNS-unset}" != "" ]; then
  peer_log=$(mktemp)
  setsid bash scripts/peer-jupyterhub-tests.sh > "$peer_log" 2>&1 &
  peer=$!
  trap 'kill -TERM -- "-$peer" 2>/dev/null; rm -f "$peer_log"' EXIT
  trap 'exit 130' INT TERM
fi
.venv/bin/python -m pytest "$@" || status=$?
if [ -n "$peer" ]; then
  wait "$peer" || status=1
  # its group has ended: nothing left to stop (its number may be another's by now)
  trap 'rm -f "$peer_log"' EXIT
  cat "$peer_log"
fi
exit $status
