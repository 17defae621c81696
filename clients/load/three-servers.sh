# Sourced by the federation benchmarks: three servers on loopback, federating over HTTPS with
# self-signed certificates (accepted on loopback only), on their embedded SQLite: a Diplomatie
# host ($host_url, named $host_name), another Diplomatie ($dip_url, $dip_name) and Synapse from
# PyPI ($syn_url, $syn_name). BIN: a binary to use instead of building the release one. They
# stop with the calling script.
# The drivers speak HTTP with aiohttp.
python3 -c 'import aiohttp' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check aiohttp
bin=${BIN:-./target/release/diplomatie}
[ -n "${BIN:-}" ] || cargo build --release -p diplomatie
venv="${SYNAPSE_VENV:-$HOME/.cache/diplomatie-tests/synapse-venv}"
if ! "$venv/bin/python" -c "import synapse" >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet matrix-synapse
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# LOG_DIR: where the servers' logs go (nowhere by default); BENCH_LOG: the Diplomatie servers'
# log filter (warn).
log_of() { if [ -n "${LOG_DIR:-}" ]; then mkdir -p "$LOG_DIR"; echo "$LOG_DIR/$1.log"; else echo /dev/null; fi; }
wait_up() { for _ in $(seq 1 600); do curl -sf "$1/_matrix/client/versions" >/dev/null && return 0; sleep 0.2; done; echo "$1 did not start" >&2; exit 1; }

start_diplomatie() { # data dir name, client port, HTTPS port (the server's name)
  DIPLOMATIE_DATA_DIR="$work/$1" DIPLOMATIE_LISTEN="127.0.0.1:$2" DIPLOMATIE_SERVER_NAME="127.0.0.1:$3" \
    DIPLOMATIE_REGISTRATION__ENABLED=true DIPLOMATIE_RATE_LIMITS__ENABLED=false DIPLOMATIE_LOG="${BENCH_LOG:-warn}" \
    DIPLOMATIE_FEDERATION__ENABLED=true DIPLOMATIE_FEDERATION__TLS_LISTEN="127.0.0.1:$3" \
    DIPLOMATIE_FEDERATION__INSECURE_LOOPBACK_TLS=true DIPLOMATIE_FEDERATION__IP_RANGE_ALLOWLIST='["127.0.0.0/8"]' \
    "$bin" >"$(log_of "$1")" 2>&1 &
}
host_port=$(free); host_tls=$(free); dip_port=$(free); dip_tls=$(free)
start_diplomatie host "$host_port" "$host_tls"
start_diplomatie joiner "$dip_port" "$dip_tls"
host_url="http://127.0.0.1:$host_port"; host_name="127.0.0.1:$host_tls"
dip_url="http://127.0.0.1:$dip_port"; dip_name="127.0.0.1:$dip_tls"

# Synapse: the same settings as the federation tests (tests/python/conftest.py).
syn_tls=$(free); syn_port=$(free); s="$work/synapse"; mkdir -p "$s"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$s/tls.key" -out "$s/tls.crt" 2>/dev/null
limits="{per_second: 100000, burst_count: 100000}"
cat > "$s/homeserver.yaml" <<YAML
server_name: "127.0.0.1:$syn_tls"
pid_file: $s/homeserver.pid
report_stats: false
listeners:
  - {port: $syn_tls, bind_addresses: ['127.0.0.1'], type: http, tls: true, resources: [{names: [federation, client]}]}
  - {port: $syn_port, bind_addresses: ['127.0.0.1'], type: http, tls: false, resources: [{names: [client]}]}
tls_certificate_path: $s/tls.crt
tls_private_key_path: $s/tls.key
federation_verify_certificates: false
federation_ip_range_blacklist: []
ip_range_blacklist: []
ip_range_whitelist: ['127.0.0.1']
trusted_key_servers: []
suppress_key_server_warning: true
database: {name: sqlite3, args: {database: $s/homeserver.db}}
media_store_path: $s/media
signing_key_path: $s/signing.key
macaroon_secret_key: "$RANDOM$RANDOM$RANDOM"
form_secret: "$RANDOM$RANDOM$RANDOM"
enable_registration: true
enable_registration_without_verification: true
rc_message: $limits
rc_registration: $limits
rc_joins: {local: $limits, remote: $limits}
rc_joins_per_room: $limits
rc_invites: {per_room: $limits, per_user: $limits, per_issuer: $limits}
rc_login: {address: $limits, account: $limits, failed_attempts: $limits}
YAML
(cd "$s" && "$venv/bin/python" -m synapse.app.homeserver --config-path homeserver.yaml --generate-keys >/dev/null 2>&1)
(cd "$s" && exec "$venv/bin/python" -m synapse.app.homeserver --config-path homeserver.yaml >"$(log_of synapse)" 2>&1) &
syn_url="http://127.0.0.1:$syn_port"; syn_name="127.0.0.1:$syn_tls"
for url in "$host_url" "$dip_url" "$syn_url"; do wait_up "$url"; done
echo "host $host_url ($host_name), Diplomatie $dip_url ($dip_name), Synapse $syn_url ($syn_name)"
echo "Synapse $("$venv/bin/python" -c 'import synapse; print(synapse.__version__)'), Diplomatie $(git rev-parse --short HEAD)"
