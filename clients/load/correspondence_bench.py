"""The burst of clients/load/correspondence-bench.sh (see there), against a running server whose
organisation it imported: python3 correspondence_bench.py URL DATA_DIR."""

import json
import os
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

URL, DATA = sys.argv[1], sys.argv[2]
N_GROUPS, N_CORR = int(os.environ["N_GROUPS"]), int(os.environ["N_CORR"])
N_ADDRESSEES, N_ACTION = int(os.environ["N_ADDRESSEES"]), int(os.environ["N_ACTION"])
N_AUTHORS, N_WATCHERS = int(os.environ["N_AUTHORS"]), int(os.environ["N_WATCHERS"])
CONCURRENCY = int(os.environ["CONCURRENCY"])


def call(method, path, token=None, body=None, timeout=600):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def login(user):
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": "pw"}
    return call("POST", "/_matrix/client/v3/login", body=body)["access_token"]


def size(path):
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def plan(i):
    """Correspondence i: from author i's group, to N_ADDRESSEES groups (N_ACTION for action)."""
    sender = i % N_AUTHORS
    groups, k = [], i * N_ACTION
    while len(groups) < N_ADDRESSEES:
        g = k % N_GROUPS
        k += 1
        if g != sender and g not in groups:
            groups.append(g)
    return sender, {
        "kind": ["telegram", "diplomatic_note", "formal_letter"][i % 3],
        "from": f"g{sender}",
        "subject": f"Correspondance de charge numéro {i}",
        "body": "Texte de la correspondance. " * 20,
        "action": [f"g{g}" for g in groups[:N_ACTION]],
        "information": [f"g{g}" for g in groups[N_ACTION:]],
        "tags": [f"t{i % 17}"],
    }


plans = [plan(i) for i in range(N_CORR)]
authors = [login(f"agent{a}") for a in range(N_AUTHORS)]
watchers = []
for w in range(N_WATCHERS):
    u = N_GROUPS + N_AUTHORS + w
    group = f"g{u % N_GROUPS}"
    expected = sum(1 for _, p in plans if group in p["action"])
    watchers.append({"user": f"agent{u}", "token": login(f"agent{u}"), "expected": expected, "seen": 0, "at": None})

db_before, index_before = size(os.path.join(DATA)) - size(os.path.join(DATA, "search")), size(os.path.join(DATA, "search"))
stop = threading.Event()
start = None


def watch(w):
    """Long-polls /sync, counting the action entries of the watcher's journal."""
    filt = json.dumps({"room": {"timeline": {"limit": 1000, "types": ["m.room.message"]}, "state": {"lazy_load_members": True}}})
    since = call("GET", "/_matrix/client/v3/sync?timeout=0&filter=" + urllib.request.quote(filt), w["token"])["next_batch"]
    ready.wait()
    while not stop.is_set() and w["seen"] < w["expected"]:
        r = call("GET", f"/_matrix/client/v3/sync?timeout=5000&since={since}&filter=" + urllib.request.quote(filt), w["token"])
        since = r["next_batch"]
        for room in r.get("rooms", {}).get("join", {}).values():
            if room["timeline"].get("limited"):
                print(f"warning: {w['user']}: a limited timeline, entries may be missed", file=sys.stderr)
            for e in room["timeline"]["events"]:
                j = e.get("content", {}).get("fr.diplomatie.journal")
                if j and j.get("section") == "action" and "m.new_content" not in e["content"]:
                    w["seen"] += 1
        if w["seen"] >= w["expected"]:
            w["at"] = time.monotonic()


ready = threading.Event()
threads = [threading.Thread(target=watch, args=(w,), daemon=True) for w in watchers]
for t in threads:
    t.start()
time.sleep(1)
answered = []
errors = []


def send(item):
    sender, body = item
    t0 = time.monotonic()
    try:
        r = call("POST", "/_diplomatie/client/v1/correspondence", authors[sender], body)
        answered.append((time.monotonic(), time.monotonic() - t0, len(r["deliveries"]), r["journal_entries"]))
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(str(e))


start = time.monotonic()
ready.set()
with ThreadPoolExecutor(CONCURRENCY) as pool:
    list(pool.map(send, plans))
last_answer = max(a[0] for a in answered) - start if answered else float("nan")
for t in threads:
    t.join(timeout=120)
stop.set()
seen_all = all(w["at"] for w in watchers)
last_seen = max(w["at"] for w in watchers if w["at"]) - start if any(w["at"] for w in watchers) else float("nan")
time.sleep(3)  # a checkpoint folds the write-ahead log into the database
db_after, index_after = size(DATA) - size(os.path.join(DATA, "search")), size(os.path.join(DATA, "search"))
latencies = sorted(a[1] for a in answered)
copies = sum(a[2] for a in answered)
entries = sum(a[3] for a in answered)

print(f"== {N_CORR} correspondences, {N_ADDRESSEES} groups each ({N_ACTION} for action), {CONCURRENCY} in flight")
print(f"dispatched: {len(answered)}, refused or failed: {len(errors)} {errors[:3]}")
print(f"events written: {copies} ({entries} journal entries, {copies - entries} copies in group/community rooms)")
print(f"all dispatches committed (every journal entry written) after {last_answer:.1f} s "
      f"({len(answered) / last_answer:.1f} correspondences/s, {copies / last_answer:.0f} events/s)")
print(f"request latency p50 {latencies[len(latencies) // 2]:.2f} s, p99 {latencies[int(len(latencies) * 0.99) - 1]:.2f} s")
print(f"{N_WATCHERS} sampled agents saw their last journal entry after {last_seen:.1f} s "
      f"({'all' if seen_all else 'NOT all'} expected entries seen: "
      f"{sum(w['seen'] for w in watchers)}/{sum(w['expected'] for w in watchers)})")
mib = 1024 * 1024
print(f"database growth: {(db_after - db_before) / mib:.1f} MiB ({db_before / mib:.1f} -> {db_after / mib:.1f} MiB), "
      f"{(db_after - db_before) / max(copies, 1):.0f} bytes per event; "
      f"search index growth: {(index_after - index_before) / mib:.1f} MiB")
