#!/usr/bin/env bash
# The main job: install what is needed, then re-enact the 2018 outage on a stock and a guarded
# hub (embedded simulator); writes the table, replay-out/replay.json and replay-out/replay.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/binderhub-guard replay --out replay-out "$@"
