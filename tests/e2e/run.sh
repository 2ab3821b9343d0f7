#!/usr/bin/env bash
# End-to-end suites: the official E2B SDKs (Python `e2b` 2.63.0, JS `e2b` 2.51.0) against a real
# `paddock serve` that each suite starts itself (needs root: namespaces, cgroups, overlayfs).
#   tests/e2e/run.sh            both suites
#   tests/e2e/run.sh python [pytest args...]
#   tests/e2e/run.sh js
# Environment: PADDOCK_BIN (default target/release/paddock), PADDOCK_TEMPLATES_DIR
# (default /var/cache/paddock/templates; the base template is built there on first use),
# PADDOCK_VENV (default /var/cache/paddock/venv).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PADDOCK_VENV:-/var/cache/paddock/venv}"
which="${1:-all}"
[[ $# -gt 0 ]] && shift

run_python() {
  if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import e2b, pytest, requests' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "e2b==2.63.0" pytest requests
  fi
  (cd "$here/python" && "$venv/bin/python" -m pytest "$@")
}

run_js() {
  (cd "$here/js" && { [[ -d node_modules/e2b ]] || npm install --no-audit --no-fund; } && npm test)
}

case "$which" in
  python) run_python "$@" ;;
  js) run_js ;;
  all) run_python "$@"; run_js ;;
  *) echo "usage: $0 [all|python|js] [pytest args...]" >&2; exit 2 ;;
esac
