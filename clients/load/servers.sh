# Sourced by the benchmark scripts: starts the servers on their embedded databases, on
# loopback, with open registration and rate limits off.
#   start_diplomatie WORKDIR PORT  the release build; sets $diplomatie_pid
#   start_synapse WORKDIR PORT     from PyPI, in a virtual environment kept in ~/.cache; sets
#                                  $synapse_pid and $synapse_version

start_diplomatie() {
  DIPLOMATIE_DATA_DIR="$1" DIPLOMATIE_LISTEN="127.0.0.1:$2" DIPLOMATIE_REGISTRATION__ENABLED=true \
    DIPLOMATIE_RATE_LIMITS__ENABLED=false DIPLOMATIE_LOG=warn target/release/diplomatie &
  diplomatie_pid=$!
  wait_up "http://127.0.0.1:$2"
}

start_synapse() {
  local dir="$1" port="$2"
  local venv="${SYNAPSE_VENV:-$HOME/.cache/diplomatie-bench/synapse-venv}"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet matrix-synapse
  fi
  mkdir -p "$dir"
  (cd "$dir" && "$venv/bin/python" -m synapse.app.homeserver --server-name localhost \
    --config-path homeserver.yaml --generate-config --report-stats=no >/dev/null)
  python3 - "$dir/homeserver.yaml" "$port" <<'PY'
import sys
path, port = sys.argv[1], sys.argv[2]
text = open(path).read().replace("port: 8008", f"port: {port}").replace("bind_addresses: ['::1', '127.0.0.1']", "bind_addresses: ['127.0.0.1']")
unlimited = "{per_second: 100000, burst_count: 100000}"
text += f"""
enable_registration: true
enable_registration_without_verification: true
rc_message: {unlimited}
rc_registration: {unlimited}
rc_joins: {{local: {unlimited}, remote: {unlimited}}}
rc_login: {{address: {unlimited}, account: {unlimited}, failed_attempts: {unlimited}}}
rc_presence: {{per_user: {unlimited}}}
rc_room_creation: {unlimited}
rc_invites: {{per_room: {unlimited}, per_user: {unlimited}, per_issuer: {unlimited}}}
"""
open(path, "w").write(text)
PY
  (cd "$dir" && exec "$venv/bin/python" -m synapse.app.homeserver --config-path homeserver.yaml >/dev/null 2>&1) &
  wait_up "http://127.0.0.1:$port"
  synapse_pid=$(pgrep -f "synapse.app.homeserver --config-path homeserver.yaml" | head -n1)
  synapse_version=$("$venv/bin/python" -c 'import synapse; print(synapse.__version__)')
}

wait_up() { for _ in $(seq 1 300); do curl -sf "$1/_matrix/client/versions" >/dev/null && return 0; sleep 0.2; done; echo "$1 did not start" >&2; exit 1; }
