#!/usr/bin/env bash
# The main job: install what is needed, then run it on the embedded simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/binderhub-guard demo "$@"
