#!/usr/bin/env bash
# Installs posed as a LaunchAgent of the current user and starts it.
#
#   deploy/launchd/install.sh [--bin PATH] [--mlx-lib DIR|none] [--config PATH]
#   deploy/launchd/install.sh --uninstall
#
# The agent runs its own copy of posed: a runtime folder with the binary and
# the MLX it loads (lib/libmlx.dylib and lib/mlx.metallib, found through the
# binary's @executable_path/lib rpath), so moving or deleting the checkout
# does not break the service:
#
#   ~/Library/Application Support/posed/runtime/posed
#   ~/Library/Application Support/posed/runtime/lib/{libmlx.dylib,mlx.metallib}
#
# --bin defaults to target/release/posed of this checkout (else `posed` on
# PATH); --mlx-lib to the checkout's .mlx/wheel/mlx/lib (`none` for a binary
# with MLX built in, POSED_MLX_FROM_SOURCE=1). Logs go to
# ~/Library/Logs/posed/posed.log; the config defaults to
# ~/Library/Application Support/posed/posed.toml (copied from config/ once).
# Re-running it replaces the runtime and restarts the agent; the config is
# kept.
set -euo pipefail
label=dev.posed.daemon
here=$(cd "$(dirname "$0")" && pwd)
checkout=$(cd "$here/../.." && pwd)
support="$HOME/Library/Application Support/posed"
runtime="$support/runtime"
agents="$HOME/Library/LaunchAgents"
plist="$agents/$label.plist"
domain="gui/$(id -u)"
say() { printf 'install.sh: %s\n' "$*"; }
fail() { say "$*" >&2; exit 1; }

if [ "${1:-}" = --uninstall ]; then
  launchctl bootout "$domain/$label" 2>/dev/null || true
  rm -f "$plist"
  rm -rf "$runtime"
  echo "posed: removed $label and its runtime (config and logs kept)"
  exit 0
fi

bin=$checkout/target/release/posed
[ -x "$bin" ] || bin=$(command -v posed || true)
mlx_lib=$checkout/.mlx/wheel/mlx/lib
config="$support/posed.toml"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --mlx-lib) mlx_lib=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    *) say "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$bin" ] && [ -x "$bin" ] || fail "no posed binary (build it with 'make release', or pass --bin PATH)"
if [ "$mlx_lib" != none ]; then
  for f in libmlx.dylib mlx.metallib; do
    [ -f "$mlx_lib/$f" ] || fail "no $f in $mlx_lib (run 'make setup', pass --mlx-lib DIR, or --mlx-lib none for a binary with MLX built in)"
  done
fi

# Stop the running agent before its files are replaced.
launchctl bootout "$domain/$label" 2>/dev/null || true

# The new runtime is assembled beside the old one and swapped in whole.
staging="$runtime.new"
rm -rf "$staging"
mkdir -p "$staging/lib"
cp "$bin" "$staging/posed"
if [ "$mlx_lib" != none ]; then
  cp "$mlx_lib/libmlx.dylib" "$mlx_lib/mlx.metallib" "$staging/lib/"
fi
rm -rf "$runtime"
mv "$staging" "$runtime"

mkdir -p "$(dirname "$config")" "$HOME/Library/Logs/posed" "$agents"
[ -f "$config" ] || cp "$checkout/config/posed.toml" "$config"
# The installed copy must run on its own: this loads MLX from the runtime
# folder and checks that it computes.
"$runtime/posed" doctor >/dev/null || fail "'$runtime/posed doctor' failed; run it to see why"

sed -e "s|@POSED_BIN@|$runtime/posed|" -e "s|@POSED_CONFIG@|$config|" \
    -e "s|@POSED_LOG_DIR@|$HOME/Library/Logs/posed|g" \
    "$here/$label.plist" > "$plist"
plutil -lint "$plist" >/dev/null
launchctl bootstrap "$domain" "$plist"
echo "posed: $label loaded ($runtime/posed, config $config, logs ~/Library/Logs/posed/posed.log)"
