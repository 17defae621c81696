"""Federation join benchmark (driven by federation-bench.sh): on the host server, N_MEMBERS
users join a public room and N_EVENTS messages are sent in it; then one user of Diplomatie and
one of Synapse join it over federation, and the time each join takes is printed (the request,
then until the joiner's server answers the room's member list with every member)."""

import asyncio
import json
import os
import sys
import time

import aiohttp

from bench_http import bounded, call, register

host, host_name, dip, syn = sys.argv[1:5]
N_MEMBERS = int(os.environ.get("N_MEMBERS", "1000"))
N_EVENTS = int(os.environ.get("N_EVENTS", "10000"))


async def timed_join(http, base, label, room, members):
    _, token = await register(http, base, "joiner")
    started = time.monotonic()
    await call(http, "POST", f"{base}/_matrix/client/v3/join/{room}?via={host_name}", token, {})
    joined = time.monotonic() - started
    while True:
        status, data = await call(http, "GET", f"{base}/_matrix/client/v3/rooms/{room}/joined_members", token, ok=(200, 403, 404))
        if status == 200 and len(data.get("joined", {})) >= members:
            break
        await asyncio.sleep(0.05)
    complete = time.monotonic() - started
    print(f"{label}: join answered after {joined:.2f} s; all {members} members listed after {complete:.2f} s")
    return joined, complete


async def main():
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        started = time.monotonic()
        tokens = [t for _, t in await bounded(range(N_MEMBERS), lambda i: register(http, host, f"member{i}"))]
        _, created = await call(http, "POST", f"{host}/_matrix/client/v3/createRoom", tokens[0],
                                {"preset": "public_chat", "name": "Cellule interministérielle"})
        room = created["room_id"]
        await bounded(range(1, N_MEMBERS), lambda i: call(http, "POST", f"{host}/_matrix/client/v3/join/{room}", tokens[i], {}))

        async def send(i):
            body = {"msgtype": "m.text", "body": f"message {i}"}
            return await call(http, "PUT", f"{host}/_matrix/client/v3/rooms/{room}/send/m.room.message/b{i}",
                              tokens[i % N_MEMBERS], body)
        await bounded(range(N_EVENTS - 2 * N_MEMBERS - 5), send)
        print(f"host room: {N_MEMBERS} members, about {N_EVENTS} events, built in {time.monotonic() - started:.1f} s")
        results = {}
        for label, base in (("Diplomatie", dip), ("Synapse", syn)):
            results[label] = await timed_join(http, base, label, room, N_MEMBERS + 1)
        print(json.dumps(results))


asyncio.run(main())
