#!/usr/bin/env bash
# Installs what the demo and the tests need into .venv: the package (editable) with its test
# and benchmark extras, and configurable-http-proxy from npm. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
python=${PYTHON:-python3}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[test,bench]"

if [ ! -x "$venv/bin/configurable-http-proxy" ]; then
  npm install --silent --no-audit --no-fund --prefix "$venv/share/chp" configurable-http-proxy@5
  ln -sf "$PWD/$venv/share/chp/node_modules/.bin/configurable-http-proxy" "$venv/bin/"
fi
