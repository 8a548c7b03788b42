#!/usr/bin/env bash
# The demo: `posed serve` on the bundled replay (assets/replay, looped at its
# recorded pace) and `posed subscribe` printing events and the daemon's
# latency table for a few seconds; then a clean SIGTERM.
#
#   scripts/demo.sh MODELS_DIR [SECONDS]
#
# MODELS_DIR holds detector_weights.safetensors, wilor_weights.safetensors,
# mano.npz and their configs (the parity fixtures' hands/ folder works: its
# weights are random, so the poses are meaningless; it shows the machinery).
set -euo pipefail
models=${1:?usage: demo.sh MODELS_DIR [SECONDS]}
seconds=${2:-5}
bin=${POSED_BIN:-target/release/posed}
addr=127.0.0.1:${POSED_DEMO_PORT:-50199}

echo "demo: posed serve on $addr, replaying assets/replay, models from $models"
POSED_REPLAY_DIR=assets/replay POSED_REPLAY_REPEAT=true POSED_LOG_TELEMETRY_INTERVAL_S=0 \
  "$bin" serve --models-dir "$models" --listen "$addr" --metrics "" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break
  kill -0 $daemon 2>/dev/null || { echo "demo: posed serve exited" >&2; exit 1; }
  sleep 0.1
done
"$bin" subscribe --addr "$addr" --seconds "$seconds" --max-rate 10
kill -TERM $daemon
wait $daemon
trap - EXIT
echo "demo: daemon stopped cleanly"
