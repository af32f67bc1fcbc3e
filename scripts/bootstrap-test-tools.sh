#!/usr/bin/env bash
# Installs the system tools some tests need, from Debian's packages (needs root; about 50 s with
# apt-get update on a fresh image): chromium for the page's browser tests and promtool (package
# prometheus) for the alert rules' tests; and playwright-core from npm into .venv/share/browser
# (no browser download: the tests drive /usr/bin/chromium). Tests that need a missing tool skip
# and say which. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v promtool > /dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "bootstrap-test-tools: missing ${missing[*]} and this is not root;" \
      "run: sudo apt-get install ${missing[*]} (the tests that need them skip)" >&2
  fi
fi

if [ ! -d .venv/share/browser/node_modules/playwright-core ]; then
  npm install --silent --no-audit --no-fund --prefix .venv/share/browser playwright-core@1
fi
