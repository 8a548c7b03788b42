#!/usr/bin/env bash
# The demo: `posed serve` on the bundled replay (assets/replay, looped at its
# recorded pace) and `posed subscribe` printing events, the daemon's status
# and its latency table; then a clean SIGTERM.
#
#   scripts/demo.sh [MODELS] [SECONDS] [EVENTS]
#
# MODELS is a models folder (detector_weights.safetensors,
# wilor_weights.safetensors, mano.npz, optional configs), or `auto` (the
# default): the published weights when they are in the Hugging Face cache
# (`posed weights fetch`), else synthetic full-size weights made once by
# `posed weights synth` into posed's cache. Synthetic weights give
# meaningless poses, and every status line and event says so.
set -euo pipefail
models=${1:-auto}
seconds=${2:-10}
events=${3:-0}
bin=${POSED_BIN:-target/release/posed}
addr=127.0.0.1:${POSED_DEMO_PORT:-50199}

serve_args=(--listen "$addr" --metrics "")
if [[ $models == auto ]]; then
  if HF_HUB_OFFLINE=1 "$bin" weights list | grep -q "^hands  pose       f32   cached"; then
    echo "demo: the published hand weights are in the Hugging Face cache"
  else
    cache=${POSED_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/posed}
    models=$cache/synthetic-hands-full
    if [[ ! -f $models/wilor_weights.safetensors ]]; then
      echo "demo: no published weights cached; making synthetic full-size weights in $models"
      "$bin" weights synth --route hands --size full --out "$models.partial"
      rm -rf "$models" && mv "$models.partial" "$models"
    fi
  fi
fi
[[ $models != auto ]] && serve_args+=(--models-dir "$models")

echo "demo: posed serve on $addr, replaying assets/replay, models: $models"
POSED_REPLAY_DIR=assets/replay POSED_REPLAY_REPEAT=true POSED_LOG_TELEMETRY_INTERVAL_S=0 \
  HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} "$bin" serve "${serve_args[@]}" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break
  kill -0 $daemon 2>/dev/null || { echo "demo: posed serve exited" >&2; exit 1; }
  sleep 0.1
done
"$bin" subscribe --addr "$addr" --seconds "$seconds" --count "$events" --max-rate 10
kill -TERM $daemon
wait $daemon
trap - EXIT
echo "demo: daemon stopped cleanly"
