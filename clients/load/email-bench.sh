#!/usr/bin/env bash
# Benchmark of the e-mail bridge: inbound mails per second accepted and posted, the p99 from a
# mail handed to SMTP (and from its 250) to the message in a client's /sync, outbound latency
# from a send to the relay's receipt, and the bridge's memory. Builds the server and the bridge
# with the `profiling` profile (release speed without the long link) unless SERVER_BIN and
# BRIDGE_BIN are given; everything runs on loopback, SQLite, and stops by itself.
# Knobs: N_MAILS (2000), CONCURRENCY (16 SMTP connections), N_SENDERS (50), N_OUT (100).
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
if [ -z "${SERVER_BIN:-}" ] || [ -z "${BRIDGE_BIN:-}" ]; then
  cargo build --profile profiling -p diplomatie -p diplomatie-email
  target="${CARGO_TARGET_DIR:-$PWD/target}"
  export SERVER_BIN="$target/profiling/diplomatie" BRIDGE_BIN="$target/profiling/diplomatie-email"
fi
python3 clients/load/email_bench.py
