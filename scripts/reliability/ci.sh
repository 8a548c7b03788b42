#!/usr/bin/env bash
# The reliability scripts' short versions, for `make test`: faults.py --short
# and a 30-second soak against target/debug/posed (which `cargo test` builds).
# Python packages go into a virtual environment under target/ (git-ignored),
# made once and remade when the pins below change. About 2 minutes.
#
#   PYTHON                     the interpreter for the venv (default python3)
#   POSED_BIN                  the daemon (default target/debug/posed)
#   RELIABILITY_FAULTS_ARGS    extra faults.py flags, e.g. --expect-keepalive-s 10
set -euo pipefail
cd "$(dirname "$0")/../.."

pins=(grpcio==1.85.1 grpcio-tools==1.85.1 protobuf==7.36.2)
venv=target/reliability-venv
python=${PYTHON:-python3}
bin=${POSED_BIN:-target/debug/posed}

if [ ! -x "$bin" ]; then
  echo "reliability: $bin is missing: cargo build --bin posed first" >&2
  exit 1
fi
if [ "$(cat "$venv/pins" 2>/dev/null)" != "${pins[*]}" ]; then
  echo "reliability: making $venv (${pins[*]})"
  rm -rf "$venv"
  "$python" -m venv "$venv" || {
    echo "reliability: '$python -m venv' failed (Debian: apt-get install python3-venv; make setup does)" >&2
    exit 1
  }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]}" >"$venv/pins"
fi

start=$SECONDS
status=0
export POSED_BIN="$bin"
# shellcheck disable=SC2086 # the extra flags are words
"$venv/bin/python" scripts/reliability/faults.py --short ${RELIABILITY_FAULTS_ARGS:-} || status=1
"$venv/bin/python" scripts/reliability/soak.py --minutes 0.5 --out target/reliability-soak.jsonl || status=1
echo "reliability: $((SECONDS - start)) s, $([ $status -eq 0 ] && echo passed || echo FAILED)"
exit $status
