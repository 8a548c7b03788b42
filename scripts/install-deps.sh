#!/usr/bin/env bash
# System packages the build needs, installed only when missing (Linux).
#   cmake, clang/libclang   mlx-c and bindgen (mlx-sys, v4l2 bindings)
#   libopenblas-dev         the BLAS that MLX's CPU GEMMs bind to (see models/link_mlx.rs)
#   pkg-config              -sys crates
#   llvm                    llvm-ar: with clang, `make lint`'s macOS type-check
#                           (objc2's exception helper is C, built for aarch64-apple-darwin)
#
# macOS needs only Apple's command-line tools (clang, libclang for bindgen,
# python3); cmake, if absent, comes from PyPI in scripts/setup-mlx.sh. No
# Homebrew, no sudo, no Xcode.
set -euo pipefail

if [ "$(uname -s)" = Darwin ]; then
  if ! xcode-select -p >/dev/null 2>&1; then
    echo "install-deps: Apple's command-line tools are missing: run xcode-select --install, then make again" >&2
    exit 78 # EX_CONFIG
  fi
  command -v python3 >/dev/null 2>&1 || {
    echo "install-deps: no python3 (it comes with the command-line tools: xcode-select --install)" >&2
    exit 78
  }
  exit 0
fi
[ "$(uname -s)" = Linux ] || exit 0

# The Rust target `make lint` checks the AVFoundation backend against.
if command -v rustup >/dev/null 2>&1; then
  targets=$(rustup target list --installed 2>/dev/null || true)
  if ! grep -qx aarch64-apple-darwin <<<"$targets"; then
    echo "install-deps: adding the aarch64-apple-darwin Rust target"
    rustup target add aarch64-apple-darwin
  fi
fi

packages=(cmake clang llvm libclang-dev libopenblas-dev pkg-config patch python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
