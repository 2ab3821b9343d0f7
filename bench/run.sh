#!/usr/bin/env bash
# Runs the Paddock benchmark (bench/bench.py) against fresh `paddock serve` processes.
#   bench/run.sh            n=100, writes docs/benchmarks.md
#   bench/run.sh --quick    n=10, prints only (add --write to write docs/benchmarks.md)
#   bench/run.sh --configs default   only the default server (no unhardened/hardened comparison)
#   bench/run.sh --parts templates   only the template builds (bench/templates.py; adds the
#                                    code-interpreter recipe without --quick, which downloads packages)
# One run starts three servers one after the other (unhardened, hardened without network,
# hardened + networking = default) to report what hardening costs the create path.
# Uses the Python venv at $PADDOCK_VENV (default /var/cache/paddock/venv), creating it if needed.
# The paddock binary: $PADDOCK_BIN (default target/release/paddock, built if missing).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PADDOCK_VENV:-/var/cache/paddock/venv}"

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import e2b, requests' 2>/dev/null; then
  echo "setting up $venv ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "e2b==2.63.0" pytest requests
fi

if [[ -z "${PADDOCK_BIN:-}" && ! -x "$repo/target/release/paddock" ]]; then
  echo "building paddock (release) ..." >&2
  (cd "$repo" && cargo build --release -p paddock-cli)
fi

exec "$venv/bin/python" "$repo/bench/bench.py" "$@"
