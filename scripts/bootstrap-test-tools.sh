#!/usr/bin/env bash
# Installs the system tools some tests need, from Debian's packages (needs root; about 50 s with
# apt-get update on a fresh image): chromium for the page's browser tests and promtool (package
# prometheus) for the alert rules' tests; and playwright-core from npm into .venv/share/browser
# (no browser download: the tests drive /usr/bin/chromium). Not root: it uses sudo if it may
# without a password. Outside CI, tests that need a missing tool skip and say which; with
# CI=true a tool it cannot install is an error here, and such a test fails. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v promtool > /dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  as_root=()
  if [ "$(id -u)" != 0 ] && sudo -n true 2> /dev/null; then
    as_root=(sudo -n)
  fi
  if [ "$(id -u)" = 0 ] || [ ${#as_root[@]} -gt 0 ]; then
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    case "${CI:-}" in
      1 | true | TRUE | True | yes)
        echo "bootstrap-test-tools: missing ${missing[*]}, not root and no sudo;" \
          "CI needs them: run sudo apt-get install ${missing[*]}" >&2
        exit 1
        ;;
    esac
    echo "bootstrap-test-tools: missing ${missing[*]}, not root and no sudo;" \
      "run: sudo apt-get install ${missing[*]} (the tests that need them skip)" >&2
  fi
fi

if [ ! -d .venv/share/browser/node_modules/playwright-core ]; then
  npm install --silent --no-audit --no-fund --prefix .venv/share/browser playwright-core@1
fi
