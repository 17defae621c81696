#!/usr/bin/env bash
# Import benchmark of the portal's organisation: generates an organisation of 15,000 users,
# 400 functional groups and 250 communities (20 members each), imports it with the release
# binary into a fresh SQLite data directory, then imports it again (nothing left to do), and
# prints both times. Sizes: N_USERS, N_GROUPS, N_COMMUNITIES, N_MEMBERS.
set -euo pipefail
cd "$(dirname "$0")/../.."
N_USERS=${N_USERS:-15000}
N_GROUPS=${N_GROUPS:-400}
N_COMMUNITIES=${N_COMMUNITIES:-250}
N_MEMBERS=${N_MEMBERS:-20}
cargo build --release -p diplomatie
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir/org.yaml" "$N_USERS" "$N_GROUPS" "$N_COMMUNITIES" "$N_MEMBERS" <<'PY'
import random, sys
path, users, groups, communities, members = sys.argv[1], *map(int, sys.argv[2:])
random.seed(7)
with open(path, "w") as f:
    f.write("users:\n")
    for u in range(users):
        clearance = "DR" if u % 5 == 0 else "NP"
        f.write(f"  - {{localpart: agent{u}, name: Agent {u}, clearance: {clearance}, group: g{u % groups}}}\n")
    f.write("groups:\n")
    for g in range(groups):
        f.write(f"  - {{slug: g{g}, name: Groupe {g}, topic: Service {g}, managers: [agent{g}]}}\n")
    f.write("communities:\n")
    for c in range(communities):
        m = ", ".join(f"agent{random.randrange(users)}" for _ in range(members))
        f.write(f"  - {{slug: c{c}, name: Communauté {c}, manager: agent{c}, project: Projet {c}, "
                f"tags: [t{c % 17}], join: request, members: [{m}]}}\n")
PY
run() {
  local started=$(date +%s.%N)
  DIPLOMATIE_DATA_DIR="$dir/data" DIPLOMATIE_LOG=warn ./target/release/diplomatie org import "$dir/org.yaml"
  echo "$1: $(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')") s"
}
echo "== import of $N_USERS users, $N_GROUPS functional groups, $N_COMMUNITIES communities ($N_MEMBERS members each)"
run "first import"
run "second import (no change)"
echo "database: $(du -sh "$dir/data" | cut -f1)"
