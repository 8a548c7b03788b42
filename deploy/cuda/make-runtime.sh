#!/usr/bin/env bash
# Assembles a folder that makes the same `posed` binary run on an NVIDIA GPU:
# libmlx.so from the mlx-cuda-13 wheel (ABI-compatible with the CPU wheel the
# binary was linked against), the libraries bundled with it, and its include/
# tree, which MLX's NVRTC kernel JIT reads at run time.
#
#   deploy/cuda/make-runtime.sh OUT [--nvidia DIR]
#
# The CUDA math libraries come from the host: cublas/cublasLt 13, cudnn 9,
# cufft 12, nvrtc 13, cudart 13, nccl 2, and the driver's libcuda.so.1. Pass
# --nvidia with a `site-packages/nvidia` folder of the nvidia-* wheels (e.g.
# the one a PyTorch cu13 install has) to link it into OUT, or put those
# libraries on the loader path yourself. Then:
#
#   OUT/posed-gpu posed doctor     # runs any command with OUT's libmlx first
set -euo pipefail

MLX_VERSION=0.32.2
WHEEL_SHA256=335094ccd1c0c6dc3e09c8caba207c8180602bacc0c38ba20c1d81e9456ab394

out=${1:?usage: make-runtime.sh OUT [--nvidia DIR]}
shift
nvidia=
while [ $# -gt 0 ]; do
  case "$1" in
    --nvidia) nvidia=${2:?--nvidia needs a folder}; shift 2 ;;
    *) echo "make-runtime: unknown argument $1" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}

if [ ! -f "$out/.complete-$MLX_VERSION" ]; then
  dl=$(mktemp -d)
  trap 'rm -rf "$dl"' EXIT
  echo "make-runtime: downloading mlx-cuda-13==$MLX_VERSION (about 90 MB)"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_35_x86_64 --python-version 3.11 \
    -d "$dl" "mlx-cuda-13==$MLX_VERSION"
  whl=$(ls "$dl"/mlx_cuda_13-*.whl)
  echo "$WHEEL_SHA256  $whl" | sha256sum --check --quiet
  "$python" -m zipfile -e "$whl" "$dl/x"
  rm -rf "$out"
  mkdir -p "$out"
  # Keep the wheel's relative layout: libmlx.so's RPATH is $ORIGIN/../../nvidia/*
  # and $ORIGIN/../../mlx_cuda_13.libs, and NVRTC finds headers at lib/../include.
  mv "$dl/x/mlx" "$out/mlx"
  mv "$dl/x/mlx_cuda_13.libs" "$out/mlx_cuda_13.libs"
  rm -rf "$out/mlx/share"
  touch "$out/.complete-$MLX_VERSION"
fi

if [ -n "$nvidia" ]; then
  [ -d "$nvidia" ] || { echo "make-runtime: $nvidia is not a folder" >&2; exit 1; }
  ln -sfn "$(cd "$nvidia" && pwd)" "$out/nvidia"
fi

cat > "$out/posed-gpu" <<'SH'
#!/usr/bin/env bash
# Runs a command with this folder's CUDA libmlx ahead of the binary's RUNPATH.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
path=$here/mlx/lib:$here/mlx_cuda_13.libs
for d in cu13 cublas cuda_nvrtc cudnn cufft nccl cuda_runtime; do
  [ -d "$here/nvidia/$d/lib" ] && path=$path:$here/nvidia/$d/lib
done
export LD_LIBRARY_PATH=$path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# MLX's CUDA graphs cost time at our sizes: on an H100 the eager WiLoR
# forward takes 14 ms without them and 26 ms with (docs/PERFORMANCE.md).
export MLX_USE_CUDA_GRAPHS=${MLX_USE_CUDA_GRAPHS:-0}
exec "$@"
SH
chmod +x "$out/posed-gpu"
echo "make-runtime: ready in $out (run: $out/posed-gpu posed doctor)"
