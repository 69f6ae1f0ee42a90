#!/usr/bin/env bash
# Conformance suite of Mozen's public gRPC API, in Python with the stock grpcio client.
# Usage: bash python/conformance/run.sh [BIN_DIR] [pytest args...]
#   BIN_DIR: directory holding mozen-agent (default $MOZEN_BIN_DIR, else target/debug of the
#   repository root). Build it first: cargo build --workspace --bins
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

BIN_DIR="${1:-${MOZEN_BIN_DIR:-target/debug}}"
[ $# -gt 0 ] && shift
case "$BIN_DIR" in
  /*) ;;
  *) BIN_DIR="$REPO/$BIN_DIR" ;;
esac
if [ ! -x "$BIN_DIR/mozen-agent" ]; then
  echo "run.sh: $BIN_DIR/mozen-agent not found: build it first (cargo build --workspace --bins)" >&2
  exit 2
fi
export MOZEN_BIN_DIR="$BIN_DIR"

VENV="$HERE/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# Install only when the requirements changed since the last install.
STAMP="$VENV/.requirements.installed"
if ! cmp -s "$HERE/requirements.txt" "$STAMP" 2>/dev/null; then
  "$PY" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  cp "$HERE/requirements.txt" "$STAMP"
fi

# Python code from the .proto files alone (google's well-known types come with grpcio-tools).
GEN="$HERE/generated"
rm -rf "$GEN"
mkdir -p "$GEN"
"$PY" -m grpc_tools.protoc -I "$REPO/proto/proto" \
  --python_out="$GEN" --grpc_python_out="$GEN" \
  "$REPO"/proto/proto/*.proto
export MOZEN_GEN_DIR="$GEN"

cd "$HERE"
# A time budget for the whole run; pytest's own SIGTERM handler (conftest) kills the agents.
exec timeout --signal=TERM --kill-after=20 "${MOZEN_CONFORMANCE_BUDGET:-400}" \
  "$PY" -m pytest -q "$@"
