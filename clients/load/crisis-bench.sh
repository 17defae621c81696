#!/usr/bin/env bash
# Crisis cell benchmark over three servers (a Diplomatie host, another Diplomatie and Synapse,
# see three-servers.sh): a cell of N_MEMBERS (200) members spread over the three is activated
# on the host, and the time until each member's /sync shows the invitation is measured; they
# join, and the time until each sees the coordinator's alert is measured. Then ALERT_MEMBERS
# (1,000) members of the host alone get an alert. Percentiles printed; figures go to
# docs/benchmarks.md with the commit and date.
#   bash clients/load/crisis-bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. clients/load/three-servers.sh
python3 clients/load/crisis_bench.py "$host_url" "$host_name" "$dip_url" "$syn_url"
