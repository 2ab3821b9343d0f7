#!/usr/bin/env bash
# Sets the machine up (scripts/setup.sh) and runs `paddock serve`; arguments go to `serve`,
# e.g. `bash scripts/serve.sh --listen 0.0.0.0:3000`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec target/release/paddock serve "$@"
