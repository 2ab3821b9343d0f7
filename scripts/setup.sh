#!/usr/bin/env bash
# Prepares this machine (Debian 12, as root) to run Paddock and builds it. Idempotent: packages
# already installed are not touched, apt lists younger than a day are not refreshed, and cargo
# only rebuilds what changed.
#
#   bash scripts/setup.sh              host packages + release builds of paddock and envd
#   bash scripts/setup.sh --test-deps  also what the end-to-end tests need (node, npm, chromium)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sandboxes need namespaces, cgroups and mounts)"

test_deps=0
for arg in "$@"; do
  case "$arg" in
    --test-deps) test_deps=1 ;;
    *) die "unknown argument: $arg" ;;
  esac
done

# Host packages: debootstrap builds the base template, runc is the benchmark's baseline, zstd
# unpacks .tar.zst templates, iproute2 and nftables (NAT, egress rules) for networking, e2fsprogs
# (mkfs.ext4) for the per-sandbox disks, python3-venv for the SDK tests.
packages=(debootstrap runc zstd iproute2 nftables e2fsprogs python3-venv ca-certificates curl build-essential pkg-config)
if [ "$test_deps" = 1 ]; then
  command -v node >/dev/null || packages+=(nodejs)
  command -v npm >/dev/null || packages+=(npm)
  # The browser tests (tests/e2e/js/browser: the dashboard, TLS preview URLs) drive Debian's
  # Chromium with playwright-core; no browser is downloaded.
  packages+=(chromium)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -n1)" ]; then
    log "apt-get update"
    apt-get update -q
  fi
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "host packages present: ${packages[*]}"
fi

# Rust: installed per user by rustup, so it may not be on root's PATH yet.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
  log "cargo not found: installing Rust (stable, minimal profile) with rustup"
  if curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    cat >&2 <<'MSG'
setup.sh: could not install Rust with rustup (no access to static.rust-lang.org?). Install a
stable Rust toolchain (1.85 or newer) by other means, put cargo on PATH, and run this again.
MSG
    exit 1
  fi
fi
log "using $(cargo --version)"

log "building paddock (cargo build --release -p paddock-cli)"
cargo build --release -p paddock-cli

# envd runs inside every sandbox, whatever libc its rootfs has: link it statically.
triple="$(uname -m)-unknown-linux-gnu"
log "building the static envd and code interpreter (cargo build --release -p paddock-envd -p paddock-interpreter --target $triple)"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release -p paddock-envd -p paddock-interpreter --target "$triple"

log "ready: target/release/paddock, target/$triple/release/paddock-envd, target/$triple/release/paddock-interpreter"
