#!/usr/bin/env bash
# System packages a Linux build needs, installed only when missing.
#   cmake, clang/libclang   mlx-c and bindgen (mlx-sys, v4l2 bindings)
#   libopenblas-dev         the BLAS that MLX's CPU GEMMs bind to (see models/link_mlx.rs)
#   pkg-config              -sys crates
set -euo pipefail
[ "$(uname -s)" = Linux ] || exit 0

packages=(cmake clang libclang-dev libopenblas-dev pkg-config patch)
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
