#!/usr/bin/env bash
# TURN relay benchmark: the release server with its built-in relay on loopback (allowing
# loopback peers), measured by diplomatie-turn-load (round trips through the relay and
# directly, then a stream of packets). Figures go to docs/benchmarks.md with commit and date.
#   bash clients/load/turn-bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release -p diplomatie -p diplomatie-load
wait_up() { for _ in $(seq 1 600); do curl -sf "$1/_matrix/client/versions" >/dev/null && return 0; sleep 0.2; done; echo "$1 did not start" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
turn=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DIPLOMATIE_DATA_DIR="$work" DIPLOMATIE_LISTEN="127.0.0.1:$port" DIPLOMATIE_REGISTRATION__ENABLED=true \
  DIPLOMATIE_RATE_LIMITS__ENABLED=false DIPLOMATIE_LOG=warn DIPLOMATIE_VOIP__TURN__ENABLED=true \
  DIPLOMATIE_VOIP__TURN__LISTEN="127.0.0.1:$turn" DIPLOMATIE_VOIP__TURN__ALLOWED_PEERS='["127.0.0.0/8"]' \
  target/release/diplomatie &
wait_up "http://127.0.0.1:$port"
echo "Diplomatie $(git rev-parse --short HEAD), $(date -u +%F)"
target/release/diplomatie-turn-load --url "http://127.0.0.1:$port" "$@"
