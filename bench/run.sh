#!/usr/bin/env bash
# Runs the Paddock benchmark (bench/bench.py, with bench/load.py, bench/baselines.py and
# bench/templates.py) against fresh `paddock serve` processes.
#   bench/run.sh            n=100, full load rows, writes docs/benchmarks.md
#   bench/run.sh --quick    n=10, short load rows, prints only (add --write to write docs/benchmarks.md,
#                           or --out /tmp/b.md --write to write elsewhere)
#   bench/run.sh --configs default   only the default server (no unhardened/hardened/no-pool comparison)
#   bench/run.sh --parts load        only the load rows (bursts, sustained creates, memory per idle
#                                    sandbox, file throughput) and the baselines, on one server
#   bench/run.sh --parts templates   only the template builds (bench/templates.py; adds the
#                                    code-interpreter recipe without --quick, which downloads packages)
#   bench/run.sh --configs cluster --parts sandboxes
#                                    only the cluster overhead (bench/clusterbench.py): create + first
#                                    command through a one-node cluster (api, node, edge proxy) and on
#                                    a `paddock serve` beside it, interleaved; part of every run
# One run starts the servers one after the other (unhardened, hardened without network, hardened +
# networking without a warm pool, the default, then one with a warm pool of 64 for the bursts of
# 50 only) to report what hardening and the warm pool change; the load rows and the baselines run
# on the default server; last, the cluster beside one more `paddock serve`.
# Uses the Python venv at $PADDOCK_VENV (default /var/cache/paddock/venv), creating it if needed.
# The paddock binary: $PADDOCK_BIN (default target/release/paddock, built if missing); the
# templates: $PADDOCK_TEMPLATES_DIR (default /var/cache/paddock/templates).
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
