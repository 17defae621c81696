"""What the Python benchmarks share: requests, registration, bounded concurrency."""

import asyncio
import os

CONCURRENCY = int(os.environ.get("CONCURRENCY", "16"))


async def call(http, method, url, token=None, body=None, ok=(200,)):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, headers=headers, json=body) as r:
        data = await r.json(content_type=None)
        if r.status not in ok:
            raise RuntimeError(f"{method} {url}: {r.status} {data}")
        return r.status, data


async def register(http, base, name):
    """Registers `name` (UIA with m.login.dummy); answers (user id, access token)."""
    url = f"{base}/_matrix/client/v3/register"
    body = {"username": name, "password": "bench password"}
    _, first = await call(http, "POST", url, body=body, ok=(401,))
    body["auth"] = {"type": "m.login.dummy", "session": first["session"]}
    _, data = await call(http, "POST", url, body=body)
    return data["user_id"], data["access_token"]


async def bounded(items, work):
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i):
        async with sem:
            return await work(i)

    return await asyncio.gather(*(one(i) for i in items))
