#!/usr/bin/env bash
# The MLS delivery service over HTTP: commit-to-sync latency (p50/p99) in a group of 20 devices
# and key package claims per second, against a fresh Diplomatie on its embedded database
# (release build, or PROFILE=profiling for the quicker build without LTO).
set -euo pipefail
cd "$(dirname "$0")/../.."
. clients/load/servers.sh
profile="${PROFILE:-release}"
cargo build --profile "$profile" -p diplomatie -p diplomatie-client
work=$(mktemp -d)
trap 'kill $diplomatie_pid 2>/dev/null || true; rm -rf "$work"' EXIT
port=18641
DIPLOMATIE_DATA_DIR="$work" DIPLOMATIE_LOG=error target/$profile/diplomatie user create root --password pw --admin >/dev/null
DIPLOMATIE_DATA_DIR="$work" DIPLOMATIE_LISTEN="127.0.0.1:$port" DIPLOMATIE_REGISTRATION__ENABLED=true \
  DIPLOMATIE_RATE_LIMITS__ENABLED=false DIPLOMATIE_LOG=warn target/$profile/diplomatie &
diplomatie_pid=$!
wait_up "http://127.0.0.1:$port"
echo "commit $(git rev-parse --short HEAD), $(date -u +%F), profile $profile"
target/$profile/diplomatie-mls-load --url "http://127.0.0.1:$port" "$@"
