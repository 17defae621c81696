#!/usr/bin/env bash
# Simplified sliding sync (MSC4186), Diplomatie and Synapse (from PyPI) side by side on the
# same workload, each on its embedded database, on loopback, with rate limits off: one user in
# 1,000 rooms of 20 events, the first window of a cold connection, delivery of messages to 200
# long-polling connections, and the server's memory with them open.
#   bash clients/load/sliding-bench.sh        (Synapse's set-up takes several minutes)
# ROOMS, EVENTS, WINDOWS, CLIENTS, PROBES change the workload; SKIP_SYNAPSE=1 runs Diplomatie only.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release -p diplomatie -p diplomatie-load
load=target/release/diplomatie-sliding-load
args=(--rooms "${ROOMS:-1000}" --events "${EVENTS:-20}" --windows "${WINDOWS:-20}" --clients "${CLIENTS:-200}" --probes "${PROBES:-50}")
. clients/load/servers.sh

start_diplomatie "$work/dip" 18111
dip=$diplomatie_pid
"$load" --url http://127.0.0.1:18111 --pid "$dip" --label "Diplomatie $(git rev-parse --short HEAD) (SQLite)" "${args[@]}" | tee "$work/dip.out"
kill "$dip"

if [ -z "${SKIP_SYNAPSE:-}" ]; then
  start_synapse "$work/syn" 18112
  "$load" --url http://127.0.0.1:18112 --pid "$synapse_pid" --label "Synapse $synapse_version (SQLite)" "${args[@]}" | tee "$work/syn.out"
  kill "$synapse_pid"
fi

echo
printf '%-40s %16s %16s %10s %10s %12s\n' server "window p50 ms" "window max ms" "p50 ms" "p99 ms" "MiB (RSS)"
for out in "$work/dip.out" "$work/syn.out"; do
  [ -f "$out" ] || continue
  awk '
    /^== / { name = substr($0, 4); sub(/ \(http.*$/, "", name) }
    /^first window:/ { w50 = $4; wmax = $7 }
    /^delivery latency:/ { p50 = $4; p99 = $7 }
    /^server memory:/ { rss = $3 }
    END { printf "%-40s %16s %16s %10s %10s %12s\n", name, w50, wmax, p50, p99, rss }
  ' "$out"
done
