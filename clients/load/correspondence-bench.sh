#!/usr/bin/env bash
# Dispatch benchmark of formal correspondence: imports an organisation of N_USERS agents in
# N_GROUPS functional groups (and 250 communities tagged t0..t16), starts the release server on
# it, then sends N_CORR correspondences at once (CONCURRENCY requests in flight), each to
# N_ADDRESSEES groups of which N_ACTION for action, rotating so that every group, hence every
# agent's journal, gets entries. Prints the time until every dispatch is committed, the time
# until sampled agents (N_WATCHERS, long-polling /sync) see their last journal entry, and the
# growth of the database and of the search index. Journals are created as dispatches need
# them (the first correspondence an agent must act on creates it), inside the measured burst.
# BIN: a binary to use instead of building the release one; BENCH_DIR: keep the data there.
set -euo pipefail
cd "$(dirname "$0")/../.."
export N_USERS=${N_USERS:-15000} N_GROUPS=${N_GROUPS:-400} N_CORR=${N_CORR:-1000}
export N_ADDRESSEES=${N_ADDRESSEES:-50} N_ACTION=${N_ACTION:-10} N_AUTHORS=${N_AUTHORS:-20}
export N_WATCHERS=${N_WATCHERS:-20} CONCURRENCY=${CONCURRENCY:-32}
bin=${BIN:-./target/release/diplomatie}
[ -n "${BIN:-}" ] || cargo build --release -p diplomatie
dir=${BENCH_DIR:-$(mktemp -d)}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; [ -z "${BENCH_DIR:-}" ] && rm -rf "$dir"' EXIT
export DIPLOMATIE_DATA_DIR="$dir/data" DIPLOMATIE_LOG=${DIPLOMATIE_LOG:-warn}
if [ ! -e "$dir/data/diplomatie.db" ]; then
  python3 - "$dir/org.yaml" <<'PY'
import os, random, sys
users, groups = int(os.environ["N_USERS"]), int(os.environ["N_GROUPS"])
authors, watchers = int(os.environ["N_AUTHORS"]), int(os.environ["N_WATCHERS"])
random.seed(7)
# Watchers: one agent in each of the groups N_AUTHORS..N_AUTHORS+N_WATCHERS (not authors).
watching = {groups + authors + w for w in range(watchers)}
with open(sys.argv[1], "w") as f:
    f.write("users:\n")
    for u in range(users):
        pw = ", password: pw" if u < authors or u in watching else ""
        f.write(f"  - {{localpart: agent{u}, name: Agent {u}, group: g{u % groups}{pw}}}\n")
    f.write("groups:\n")
    for g in range(groups):
        f.write(f"  - {{slug: g{g}, name: Groupe {g}, managers: [agent{g}]}}\n")
    f.write("communities:\n")
    for c in range(250):
        m = ", ".join(f"agent{random.randrange(users)}" for _ in range(20))
        f.write(f"  - {{slug: c{c}, name: Communauté {c}, manager: agent{c}, project: Projet {c}, "
                f"tags: [t{c % 17}], join: request, members: [{m}]}}\n")
PY
  started=$(date +%s.%N)
  "$bin" org import "$dir/org.yaml" >/dev/null
  echo "organisation imported in $(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')") s"
fi
DIPLOMATIE_LISTEN="127.0.0.1:$port" DIPLOMATIE_RATE_LIMITS__ENABLED=false "$bin" &
server=$!
until curl -sf "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null; do sleep 0.2; done
python3 clients/load/correspondence_bench.py "http://127.0.0.1:$port" "$dir/data"
