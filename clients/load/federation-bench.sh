#!/usr/bin/env bash
# Federation join benchmark: a room of N_MEMBERS (1,000) members and about N_EVENTS (10,000)
# events is built on a Diplomatie host server; then a user of another Diplomatie server and a
# user of Synapse (from PyPI) join it over federation, one after the other, and the time each
# join takes is printed. Every server on loopback, SQLite, HTTPS with self-signed certificates
# (accepted on loopback only). BIN: a binary to use instead of building the release one.
#   bash clients/load/federation-bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. clients/load/three-servers.sh
python3 clients/load/federation_bench.py "$host_url" "$host_name" "$dip_url" "$syn_url"
