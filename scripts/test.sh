#!/usr/bin/env bash
# The test suite: install what is needed, lint, then run every test against real parts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check binderhub_guard tests
exec .venv/bin/python -m pytest "$@"
