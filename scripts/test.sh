#!/usr/bin/env bash
# The test suite: install what is needed, lint, then run every test against real parts, then
# JupyterHub's own API tests with the guard installed (scripts/peer-jupyterhub-tests.sh).
# The control plane's binary is built once (about 10 min cold, cached outside the work tree).
# The full suite runs on the newest supported jupyterhub and kubespawner (.venv); the install
# test also runs the built wheel on the oldest supported pair (.venv-jh5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/bootstrap-test-tools.sh
bash scripts/bootstrap-control-plane.sh
VENV=.venv-jh5 PINS="jupyterhub>=5,<6 jupyterhub-kubespawner>=7.0,<7.1" bash scripts/bootstrap.sh
.venv/bin/ruff check binderhub_guard tests
status=0
.venv/bin/python -m pytest "$@" || status=$?
# JupyterHub's own API tests with the guard in their hubs; PEER_RUNS= (empty) skips them
[ "${PEER_RUNS-unset}" = "" ] || bash scripts/peer-jupyterhub-tests.sh || status=1
exit $status
