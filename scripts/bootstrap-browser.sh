#!/usr/bin/env bash
# Installs what the page's browser tests need: Debian's chromium (apt, needs root; about 50 s
# with apt-get update on a fresh image) and playwright-core from npm into .venv/share/browser
# (a few seconds; no browser download: the tests drive /usr/bin/chromium). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
  else
    echo "bootstrap-browser: /usr/bin/chromium is missing and this is not root;" \
      "run: sudo apt-get install chromium (the page's browser tests skip without it)" >&2
  fi
fi

if [ ! -d .venv/share/browser/node_modules/playwright-core ]; then
  npm install --silent --no-audit --no-fund --prefix .venv/share/browser playwright-core@1
fi
