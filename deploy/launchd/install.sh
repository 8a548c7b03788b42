#!/usr/bin/env bash
# Installs posed as a LaunchAgent of the current user and starts it.
#
#   deploy/launchd/install.sh [--bin PATH] [--config PATH]   install and start
#   deploy/launchd/install.sh --uninstall                    stop and remove
#
# Logs go to ~/Library/Logs/posed/posed.log; the config defaults to
# ~/Library/Application Support/posed/posed.toml (copied from config/ once).
set -euo pipefail
label=dev.posed.daemon
here=$(cd "$(dirname "$0")" && pwd)
agents="$HOME/Library/LaunchAgents"
plist="$agents/$label.plist"
domain="gui/$(id -u)"

if [ "${1:-}" = --uninstall ]; then
  launchctl bootout "$domain/$label" 2>/dev/null || true
  rm -f "$plist"
  echo "posed: removed $label (config and logs kept)"
  exit 0
fi

bin=$(command -v posed || true)
config="$HOME/Library/Application Support/posed/posed.toml"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "install.sh: no posed binary (pass --bin PATH)" >&2; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

mkdir -p "$(dirname "$config")" "$HOME/Library/Logs/posed" "$agents"
[ -f "$config" ] || cp "$here/../../config/posed.toml" "$config"
"$bin" doctor >/dev/null || { echo "install.sh: '$bin doctor' failed; fix that first" >&2; exit 1; }

sed -e "s|@POSED_BIN@|$bin|" -e "s|@POSED_CONFIG@|$config|" \
    -e "s|@POSED_LOG_DIR@|$HOME/Library/Logs/posed|g" \
    "$here/$label.plist" > "$plist"
plutil -lint "$plist" >/dev/null
launchctl bootout "$domain/$label" 2>/dev/null || true
launchctl bootstrap "$domain" "$plist"
echo "posed: $label loaded ($bin, config $config, logs ~/Library/Logs/posed/posed.log)"
