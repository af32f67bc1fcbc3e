#!/usr/bin/env bash
# The test suite: install what is needed, lint, then run every test against real parts.
# The full suite runs on the newest supported jupyterhub and kubespawner (.venv); the install
# test also runs the built wheel on the oldest supported pair (.venv-jh5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/bootstrap-test-tools.sh
VENV=.venv-jh5 PINS="jupyterhub>=5,<6 jupyterhub-kubespawner>=7.0,<7.1" bash scripts/bootstrap.sh
.venv/bin/ruff check binderhub_guard tests
exec .venv/bin/python -m pytest "$@"
