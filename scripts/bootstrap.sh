#!/usr/bin/env bash
# Installs what the demo and the tests need: the package (editable) with its test and benchmark
# extras into $VENV (default .venv), and configurable-http-proxy from npm. Safe to run again.
#   VENV=.venv-jh5 PINS="jupyterhub>=5,<6 ..." bash scripts/bootstrap.sh   # another matrix cell
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
python=${PYTHON:-python3}
read -r -a pins <<< "${PINS:-}"

# without ensurepip's 5 s: uv comes from the outer pip, and installs pip with the rest
[ -x "$venv/bin/python" ] || "$python" -m venv --without-pip "$venv"
stamp="$venv/.bootstrap-$(cat pyproject.toml | sha1sum | cut -c1-12)-$(echo "${pins[*]:-}" | sha1sum | cut -c1-8)"
if [ ! -e "$stamp" ]; then
  # uv installs the hundred-odd packages from its cache in seconds, where pip takes a minute
  # per venv (the test command makes two); same resolution, same versions
  "$python" -m pip --python "$venv/bin/python" install --quiet uv
  UV_FIND_LINKS=${UV_FIND_LINKS:-${PIP_FIND_LINKS:-}} "$venv/bin/uv" pip install --quiet \
    --native-tls --python "$venv/bin/python" -e ".[test,lab]" pip "${pins[@]}"
  touch "$stamp"
fi

if [ ! -x "$venv/bin/configurable-http-proxy" ]; then
  npm install --silent --no-audit --no-fund --prefix "$venv/share/chp" configurable-http-proxy@5
  ln -sf "$PWD/$venv/share/chp/node_modules/.bin/configurable-http-proxy" "$venv/bin/"
fi
