#!/usr/bin/env bash
# Measures which of the server's functions run (the load tool's workload, under callgrind)
# and writes them, hottest first, to homeserver/server/layout/hot-functions.txt, the list the
# linker places first (see homeserver/server/build.rs). Run it after upgrading the toolchain or
# dependencies, or after large changes to the code: a stale list costs memory, not correctness.
#   bash clients/load/hot-functions.sh        (needs valgrind: apt-get install valgrind)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# The layout moves functions, not their names: the build in use can be measured.
cargo build --release -p diplomatie -p diplomatie-load
cp target/release/diplomatie "$work/diplomatie"
DIPLOMATIE_DATA_DIR="$work/data" DIPLOMATIE_LISTEN=127.0.0.1:18103 DIPLOMATIE_REGISTRATION__ENABLED=true \
  DIPLOMATIE_RATE_LIMITS__ENABLED=false DIPLOMATIE_LOG=error \
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/callgrind.out" "$work/diplomatie" &
server=$!
for _ in $(seq 1 1500); do curl -sf http://127.0.0.1:18103/_matrix/client/versions >/dev/null && break; sleep 0.2; done
# A small run, then the standard one: which rarer paths run depends on timing, so two runs
# catch more of them.
target/release/diplomatie-load --url http://127.0.0.1:18103 --senders 10 --rooms 5 --messages 20 --syncers 20 --probes 20
target/release/diplomatie-load --url http://127.0.0.1:18103
kill -TERM "$server"
wait "$server" || true
list=homeserver/server/layout/hot-functions.txt
python3 clients/load/hot_functions.py "$work/callgrind.out" "$work/diplomatie" "$list" > "$work/hot.txt"
mv "$work/hot.txt" "$list"
echo "$(wc -l < homeserver/server/layout/hot-functions.txt) functions written to homeserver/server/layout/hot-functions.txt"
# Relink with the new list.
cargo build --release -p diplomatie
