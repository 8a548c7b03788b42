#!/usr/bin/env bash
# The WiLoR peers side by side on one GPU machine: posed (model stage, and the
# full route through gRPC), PyTorch WiLoR-mini (eager, torch.compile) and
# wilor-mlx, on the same synthetic full-size weights and the same crops (the
# hand parity fixture's two crops). Writes JSON per peer and peers.md.
#
#   benches/peers/run.sh OUT [steps]
#
# steps: any of weights,posed,grpc,torch,mlx,table (default: all, in order).
# Environment:
#   POSED       how to run posed, e.g. "/opt/mlx-cuda/posed-gpu ./posed"
#   PYTHON      a Python with PyTorch (CUDA), numpy, smplx and roma (python3)
#   WILOR_MINI  a checkout of github.com/warmshao/WiLoR-mini (for torch)
#   MLX_PYTHON  a Python that imports mlx (CUDA) and wilor_mlx (for mlx;
#               default: $PYTHON run through the first word of $POSED, which
#               puts the CUDA libmlx on the loader path)
#   FIXTURES    the parity fixtures folder (../shared/fixtures)
#   WARMUP, RUNS  per case (20, 100)
set -euo pipefail

out=${1:?usage: run.sh OUT [weights,posed,grpc,torch,mlx,table]}
steps=${2:-weights,posed,grpc,torch,mlx,table}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
posed=${POSED:-posed}
python=${PYTHON:-python3}
fixtures=${FIXTURES:-$here/../../../shared/fixtures}
warmup=${WARMUP:-20}
runs=${RUNS:-100}
models=$out/models
crops=$models/wilor_io.safetensors
mkdir -p "$out"
has() { [[ ",$steps," == *",$1,"* ]]; }

if has weights; then
  [ -f "$models/wilor_weights.safetensors" ] || $posed weights synth --size full --out "$models"
  # posed's fixture runner reads the model's size from here; ViT-H as published.
  cat > "$models/wilor_config.json" <<'JSON'
{"embed_dim": 1280, "depth": 32, "num_heads": 16, "mlp_ratio": 4, "img_size": [256, 192],
 "patch_size": 16, "patch_padding": 2, "focal_length": 5000, "image_size": 256, "refine_upscale": 3}
JSON
  install -m 644 "$fixtures/hands/wilor_io.safetensors" "$crops"
fi

if has posed; then
  $posed bench --models "$models" --pose-dtypes f32,bf16 --compile off,on --hands 1,2 \
    --warmup "$warmup" --runs "$runs" --json "$out/posed.json" > "$out/posed.md"
  $posed fixture run --model wilor --dir "$models" --out "$out/posed-fixture.safetensors"
fi

if has grpc; then
  port=50177
  $posed serve --listen 127.0.0.1:$port --metrics "" --models-dir "$models" > "$out/serve.log" 2>&1 &
  serve=$!
  trap 'kill $serve 2>/dev/null || true' EXIT
  $posed bench-grpc --addr 127.0.0.1:$port --hands 2,0 --in-flight 1,2 \
    --warmup "$warmup" --runs $((runs * 3)) --json "$out/grpc.json" > "$out/grpc.md"
  kill -INT $serve; wait $serve || true
  trap - EXIT
fi

if has torch; then
  (cd "$here" && $python wilor_torch.py --wilor-mini "${WILOR_MINI:?set WILOR_MINI}" \
    --models "$models" --crops "$crops" --json "$out/torch.json" \
    --warmup "$warmup" --runs "$runs")
fi

if has mlx; then
  mlx_python=${MLX_PYTHON:-"${posed%% *} $python"}
  (cd "$here" && $mlx_python wilor_mlx_peer.py --models "$models" --crops "$crops" \
    --json "$out/mlx.json" --warmup "$warmup" --runs "$runs")
fi

if has table; then
  (cd "$here" && $python table.py --posed "$out/posed.json" --torch "$out/torch.json" \
    --mlx "$out/mlx.json" --posed-outputs "$out/posed-fixture.safetensors" \
    --grpc "$out/grpc.json") > "$out/peers.md"
  cat "$out/peers.md"
fi
