"""Crisis cell benchmark (driven by crisis-bench.sh): activation of a cell whose members are
spread over three servers, until every member's /sync shows the invitation; the alert, until
every member's /sync shows it; then an alert to ALERT_MEMBERS members of one server. Every
member keeps a /sync long-poll open, as a client would."""

import asyncio
import os
import sys
import time

import aiohttp

from bench_http import bounded, call, register

host, host_name, dip, syn = sys.argv[1:5]
N_MEMBERS = int(os.environ.get("N_MEMBERS", "200"))
ALERT_MEMBERS = int(os.environ.get("ALERT_MEMBERS", "1000"))


def percentiles(label, seconds):
    s = sorted(seconds)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]
    print(f"{label}: n={len(s)} p50={pick(0.5) * 1000:.0f} ms p99={pick(0.99) * 1000:.0f} ms max={s[-1] * 1000:.0f} ms")


async def since_token(http, base, token):
    _, data = await call(http, "GET", f"{base}/_matrix/client/v3/sync?timeout=0", token)
    return data["next_batch"]


async def wait_sync(http, base, token, since, seen, deadline=300):
    """Long-polls /sync from `since` until `seen(response)`; answers when (monotonic clock)."""
    limit = time.monotonic() + deadline
    while time.monotonic() < limit:
        _, data = await call(http, "GET", f"{base}/_matrix/client/v3/sync?timeout=30000&since={since}", token)
        if seen(data):
            return time.monotonic()
        since = data["next_batch"]
    raise RuntimeError("never seen")


async def timed(http, members, seen, act):
    """Opens every member's long-poll, then `act()`; answers what it returned and, for each
    member, the seconds from the action until their /sync showed `seen`."""
    sinces = await bounded(members, lambda m: since_token(http, m[0], m[2]))
    waits = [asyncio.create_task(wait_sync(http, m[0], m[2], s, seen)) for m, s in zip(members, sinces)]
    await asyncio.sleep(1)  # every long-poll is open
    started = time.monotonic()
    result = await act()
    answered = time.monotonic() - started
    return result, answered, [t - started for t in await asyncio.gather(*waits)]


def any_invite(d):
    return bool(d.get("rooms", {}).get("invite"))


def alert_in(room):
    def seen(d):
        timeline = d.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
        return any(e["type"] == "fr.diplomatie.crisis.alert" for e in timeline)
    return seen


async def members_on(http, bases, n, prefix):
    """`n` members spread over `bases` (round robin): (base, user id, token)."""
    made = await bounded(range(n), lambda i: register(http, bases[i % len(bases)], f"{prefix}{i}"))
    return [(bases[i % len(bases)], user, token) for i, (user, token) in enumerate(made)]


async def cell_round(http, label, coordinator, members, spread):
    async def activate():
        _, cell = await call(http, "POST", f"{host}/_diplomatie/client/v1/crisis", coordinator,
                             {"name": label, "members": [m[1] for m in members]})
        return cell
    cell, answered, seen = await timed(http, members, any_invite, activate)
    print(f"{label}: activation answered after {answered * 1000:.0f} ms ({cell['invited']} invitations, {spread})")
    percentiles(f"{label}: invitation seen by each member", seen)

    space, situation = cell["cell_id"], cell["rooms"]["situation"]
    via = f"?via={host_name}"
    await bounded(members, lambda m: call(http, "POST", f"{m[0]}/_matrix/client/v3/join/{space}{via}", m[2], {}))
    await bounded(members, lambda m: call(http, "POST", f"{m[0]}/_matrix/client/v3/join/{situation}{via}", m[2], {}))
    # Every server has taken in every join (Synapse works through its backlog of join events
    # room by room), so that what follows measures the alert alone.
    joined = time.monotonic()
    expected = len(members) + 1
    for base in sorted({m[0] for m in members}):
        token = next(m[2] for m in members if m[0] == base)
        while True:
            _, data = await call(http, "GET", f"{base}/_matrix/client/v3/rooms/{situation}/joined_members", token)
            if len(data.get("joined", {})) >= expected:
                break
            if time.monotonic() - joined > 600:
                raise RuntimeError(f"{base} never saw every join")
            await asyncio.sleep(0.5)
    print(f"{label}: every server saw the {len(members)} joins {(time.monotonic() - joined) * 1000:.0f} ms after they were answered")

    async def alert():
        await call(http, "POST", f"{host}/_diplomatie/client/v1/crisis/{space}/alert", coordinator, {"body": "Exercice"})
    _, _, seen = await timed(http, members, alert_in(situation), alert)
    percentiles(f"{label}: alert seen by each member", seen)
    bases = sorted({m[0] for m in members})
    if len(bases) > 1:
        for base in bases:
            percentiles(f"{label}:   members of {base}", [t for m, t in zip(members, seen) if m[0] == base])


async def main():
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900), connector=connector) as http:
        _, coordinator = await register(http, host, "coordinator")
        spread = await members_on(http, [host, dip, syn], N_MEMBERS, "member")
        await cell_round(http, "Three servers", coordinator, spread, f"{N_MEMBERS} members over three servers")
        if ALERT_MEMBERS:
            local = await members_on(http, [host], ALERT_MEMBERS, "agent")
            await cell_round(http, "One server", coordinator, local, f"{ALERT_MEMBERS} members of the host")


asyncio.run(main())
