#!/usr/bin/env bash
# JupyterHub's own API tests (test_api.py and test_named_servers.py of the installed release,
# run from the installed package, unchanged) with the guard installed into every hub they make:
# with the suite's auth_header reusing one token per user (guard-reuse, the run CI makes: its
# stops repeat, and it takes every stop path the as-shipped run takes), or as shipped (guard).
# Each run must match tests/peer/expected.py: the differences named there and no other.
#   bash scripts/peer-jupyterhub-tests.sh                         # guard-reuse (CI)
#   PEER_RUNS="plain plain-reuse guard guard-reuse" bash scripts/peer-jupyterhub-tests.sh
# plain and plain-reuse are the same runs without the guard: the baselines the differences are
# measured against. Each run takes its two files on two workers (PEER_WORKERS=0: one process);
# other arguments go to pytest (e.g. -k test_user_options).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
site=$("$venv/bin/python" -c 'import jupyterhub, pathlib; print(pathlib.Path(jupyterhub.__file__).parents[1])')
# configurable-http-proxy from bootstrap.sh; the plugin and its expected differences
export PATH="$PWD/$venv/bin:$PATH" PYTHONPATH="$PWD/tests/peer${PYTHONPATH:+:$PYTHONPATH}"
export JUPYTERHUB_PEER_PROXY_PIDS
JUPYTERHUB_PEER_PROXY_PIDS=$(mktemp)
trap 'rm -f "$JUPYTERHUB_PEER_PROXY_PIDS"' EXIT

status=0
for run in ${PEER_RUNS:-guard-reuse}; do
  flags=()
  case $run in
    plain) ;;
    plain-reuse) flags=(--reuse-tokens) ;;
    guard) flags=(--guard) ;;
    guard-reuse) flags=(--guard --reuse-tokens) ;;
    *) echo "unknown run $run (plain, plain-reuse, guard, guard-reuse)" >&2; exit 2 ;;
  esac
  echo "== jupyterhub's own tests, run $run"
  start=$SECONDS
  "$venv/bin/python" -m pytest -c tests/peer/pytest.ini --rootdir "$site" -p jupyterhub_peer \
    "${flags[@]}" -n "${PEER_WORKERS:-2}" --dist loadfile -q -rfExXR \
    --pyargs jupyterhub.tests.test_api jupyterhub.tests.test_named_servers "$@" || status=1
  echo "== run $run: $((SECONDS - start)) s"
done

# JupyterHub's suite stops the proxies it starts; one left over keeps its ports and its node
left=$(xargs -r ps -o pid=,args= -p < "$JUPYTERHUB_PEER_PROXY_PIDS" | grep configurable-http-proxy || true)
if [ -n "$left" ]; then
  echo "configurable-http-proxy left running by the peer runs:" >&2
  echo "$left" >&2
  status=1
fi
exit $status
