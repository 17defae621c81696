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

wait_up() { for _ in $(seq 1 300); do curl -sf "$1/_matrix/client/versions" >/dev/null && return 0; sleep 0.2; done; echo "$1 did not start" >&2; exit 1; }

# Diplomatie, embedded SQLite.
DIPLOMATIE_DATA_DIR="$work/dip" DIPLOMATIE_LISTEN=127.0.0.1:18101 DIPLOMATIE_REGISTRATION__ENABLED=true \
  DIPLOMATIE_RATE_LIMITS__ENABLED=false DIPLOMATIE_LOG=warn target/release/diplomatie &
dip=$!
wait_up http://127.0.0.1:18101
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
venv="${SYNAPSE_VENV:-$HOME/.cache/diplomatie-bench/synapse-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet matrix-synapse
fi
mkdir -p "$work/syn"
(cd "$work/syn" && "$venv/bin/python" -m synapse.app.homeserver --server-name localhost \
  --config-path homeserver.yaml --generate-config --report-stats=no >/dev/null)
python3 - "$work/syn/homeserver.yaml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read().replace("port: 8008", "port: 18102").replace("bind_addresses: ['::1', '127.0.0.1']", "bind_addresses: ['127.0.0.1']")
unlimited = "{per_second: 100000, burst_count: 100000}"
text += f"""
enable_registration: true
enable_registration_without_verification: true
rc_message: {unlimited}
rc_registration: {unlimited}
rc_joins: {{local: {unlimited}, remote: {unlimited}}}
rc_login: {{address: {unlimited}, account: {unlimited}, failed_attempts: {unlimited}}}
rc_presence: {{per_user: {unlimited}}}
"""
open(path, "w").write(text)
PY
(cd "$work/syn" && exec "$venv/bin/python" -m synapse.app.homeserver --config-path homeserver.yaml >/dev/null 2>&1) &
wait_up http://127.0.0.1:18102
syn=$(pgrep -f "synapse.app.homeserver --config-path homeserver.yaml" | head -n1)
"$load" --url http://127.0.0.1:18102 --pid "$syn" --label "Synapse $("$venv/bin/python" -c 'import synapse; print(synapse.__version__)') (SQLite)" "${args[@]}" | tee "$work/syn.out"
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
