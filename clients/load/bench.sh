#!/usr/bin/env bash
# Runs the load tool against Diplomatie, Tuwunel (when TUWUNEL_BIN names a build of it) and
# Synapse (from PyPI), on their embedded databases, on loopback, with rate limits off, and
# prints each set of figures, then the three side by side.
#   bash clients/load/bench.sh                     (a few minutes; installs Synapse in a venv)
#   TUWUNEL_BIN=/path/to/tuwunel bash clients/load/bench.sh
# Tuwunel is not built by this script: docs/benchmarks.md says how it was built here.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release -p diplomatie -p diplomatie-load
load=target/release/diplomatie-load
args=(--senders "${SENDERS:-100}" --rooms "${ROOMS:-10}" --messages "${MESSAGES:-20}" --syncers "${SYNCERS:-200}" --probes "${PROBES:-100}")

. clients/load/servers.sh

# Diplomatie, embedded SQLite.
start_diplomatie "$work/dip" 18101
dip=$diplomatie_pid
"$load" --url http://127.0.0.1:18101 --pid "$dip" --label "Diplomatie $(git rev-parse --short HEAD) (SQLite)" "${args[@]}" | tee "$work/dip.out"
kill "$dip"

# Tuwunel, embedded RocksDB, the same workload (federation and presence off, open registration).
if [ -n "${TUWUNEL_BIN:-}" ]; then
  mkdir -p "$work/tuw"
  TUWUNEL_SERVER_NAME=localhost TUWUNEL_DATABASE_PATH="$work/tuw" TUWUNEL_ADDRESS='["127.0.0.1"]' TUWUNEL_PORT=18103 \
    TUWUNEL_ALLOW_REGISTRATION=true TUWUNEL_YES_I_AM_VERY_VERY_SURE_I_WANT_AN_OPEN_REGISTRATION_SERVER_PRONE_TO_ABUSE=true \
    TUWUNEL_ALLOW_FEDERATION=false TUWUNEL_ALLOW_LOCAL_PRESENCE=false TUWUNEL_ALLOW_INCOMING_PRESENCE=false \
    TUWUNEL_ALLOW_OUTGOING_PRESENCE=false TUWUNEL_TRUSTED_SERVERS='[]' TUWUNEL_LOG=warn "$TUWUNEL_BIN" >"$work/tuw.log" 2>&1 &
  tuw=$!
  wait_up http://127.0.0.1:18103
  "$load" --url http://127.0.0.1:18103 --pid "$tuw" --label "Tuwunel $("$TUWUNEL_BIN" --version 2>/dev/null | head -n1 | awk '{print $NF}') (RocksDB)" "${args[@]}" | tee "$work/tuw.out"
  kill "$tuw"
fi

# Synapse, SQLite, the same workload.
start_synapse "$work/syn" 18102
syn=$synapse_pid
"$load" --url http://127.0.0.1:18102 --pid "$syn" --label "Synapse $synapse_version (SQLite)" "${args[@]}" | tee "$work/syn.out"
kill "$syn"

# Side by side.
echo
printf '%-44s %12s %10s %10s %12s\n' server events/s "p50 ms" "p99 ms" "MiB (RSS)"
for out in "$work/dip.out" "$work/tuw.out" "$work/syn.out"; do
  [ -f "$out" ] || continue
  awk '
    /^== / { name = substr($0, 4); sub(/ \(http.*$/, "", name) }
    /^send throughput:/ { rate = $3 }
    /^delivery latency:/ { p50 = $4; p99 = $7 }
    /^server memory:/ { rss = $3 }
    END { printf "%-44s %12s %10s %10s %12s\n", name, rate, p50, p99, rss }
  ' "$out"
done
