#!/bin/bash
# Builds the `code-interpreter-v1` template on the Paddock server the E2B_* variables point at
# (as `paddock serve` prints them): stages this recipe with the static paddock-interpreter
# (scripts/setup.sh builds it) in a temporary build context and runs `paddock template build`.
# Usage: recipes/code-interpreter-v1/build.sh [extra `paddock template build` flags]
# (PADDOCK_TEMPLATE_NAME builds it under another name.)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
triple="$(uname -m)-unknown-linux-gnu"
bin="${PADDOCK_INTERPRETER_BIN:-$repo/target/$triple/release/paddock-interpreter}"
paddock="${PADDOCK_BIN:-$repo/target/release/paddock}"
[ -x "$bin" ] || { echo "no $bin: run scripts/setup.sh first" >&2; exit 1; }
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$repo/recipes/code-interpreter-v1/Dockerfile" "$ctx/Dockerfile"
cp "$bin" "$ctx/paddock-interpreter"
"$paddock" template build --name "${PADDOCK_TEMPLATE_NAME:-code-interpreter-v1}" -f "$ctx/Dockerfile" "$@" "$ctx"
