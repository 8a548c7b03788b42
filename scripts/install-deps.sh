#!/usr/bin/env bash
# System packages a Linux build needs, installed only when missing.
#   cmake, clang/libclang   mlx-c and bindgen (mlx-sys, v4l2 bindings)
#   libopenblas-dev         the BLAS that MLX's CPU GEMMs bind to (see models/link_mlx.rs)
#   pkg-config              -sys crates
#   llvm                    llvm-ar: with clang, `make lint`'s macOS type-check
#                           (objc2's exception helper is C, built for aarch64-apple-darwin)
set -euo pipefail
[ "$(uname -s)" = Linux ] || exit 0

# The Rust target `make lint` checks the AVFoundation backend against.
if command -v rustup >/dev/null 2>&1; then
  targets=$(rustup target list --installed 2>/dev/null || true)
  if ! grep -qx aarch64-apple-darwin <<<"$targets"; then
    echo "install-deps: adding the aarch64-apple-darwin Rust target"
    rustup target add aarch64-apple-darwin
  fi
fi

packages=(cmake clang llvm libclang-dev libopenblas-dev pkg-config patch)
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
