"""Federation with Synapse (from PyPI) on loopback: a room made on our server and one made on
Synapse, each joined by a user of the other server; messages, state, typing and receipts both
ways; matrix-nio clients on each side."""

import asyncio

import pytest
from nio import (
    AsyncClient,
    JoinResponse,
    ReceiptEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomGetStateEventResponse,
    RoomInviteResponse,
    RoomMemberEvent,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    TypingNoticeEvent,
)


async def sync_until(client, predicate, what, timeout=30):
    deadline = asyncio.get_event_loop().time() + timeout
    while asyncio.get_event_loop().time() < deadline:
        resp = await client.sync(timeout=2000)
        assert isinstance(resp, SyncResponse), resp
        if predicate(resp):
            return resp
    raise AssertionError(f"never seen: {what}")


def has_text(room_id, body):
    def check(r):
        room = r.rooms.join.get(room_id)
        return bool(room) and any(isinstance(e, RoomMessageText) and e.body == body for e in room.timeline.events)
    return check


def has_member(room_id, user_id, membership):
    def check(r):
        room = r.rooms.join.get(room_id)
        return bool(room) and any(
            isinstance(e, RoomMemberEvent) and e.state_key == user_id and e.membership == membership
            for e in room.timeline.events
        )
    return check


async def register(url, name):
    client = AsyncClient(url, name)
    resp = await client.register(name, f"{name} secret pw", f"{name} device")
    assert isinstance(resp, RegisterResponse), resp
    await client.sync(timeout=0)
    return client


async def talk(host, guest, room_id):
    """`host` (of the room's server) and `guest` (of the other) exchange messages, a state
    change, typing and receipts."""
    sent = await host.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "from the host"})
    assert isinstance(sent, RoomSendResponse), sent
    await sync_until(guest, has_text(room_id, "from the host"), "host's message at the guest")
    sent = await guest.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "from the guest"})
    assert isinstance(sent, RoomSendResponse), sent
    guest_event = sent.event_id
    await sync_until(host, has_text(room_id, "from the guest"), "guest's message at the host")

    await host.room_put_state(room_id, "m.room.topic", {"topic": "Cellule de crise"})
    deadline = asyncio.get_event_loop().time() + 30
    while True:
        got = await guest.room_get_state_event(room_id, "m.room.topic")
        if isinstance(got, RoomGetStateEventResponse) and got.content.get("topic") == "Cellule de crise":
            break
        assert asyncio.get_event_loop().time() < deadline, "topic never reached the guest"
        await asyncio.sleep(0.3)

    await guest.room_typing(room_id, True, timeout=20000)

    def typing(r):
        room = r.rooms.join.get(room_id)
        return bool(room) and any(
            isinstance(e, TypingNoticeEvent) and guest.user_id in e.users for e in room.ephemeral
        )
    await sync_until(host, typing, "guest typing at the host")

    await host.room_read_markers(room_id, guest_event, guest_event)

    def receipt(r):
        room = r.rooms.join.get(room_id)
        return bool(room) and any(
            isinstance(e, ReceiptEvent) and any(x.user_id == host.user_id and x.event_id == guest_event for x in e.receipts)
            for e in room.ephemeral
        )
    await sync_until(guest, receipt, "host's receipt at the guest")


@pytest.mark.asyncio
@pytest.mark.parametrize("made_on", ["diplomatie", "synapse"])
async def test_a_room_shared_with_synapse(federating_server, synapse, made_on):
    """A room made on one side (`made_on`), joined from the other."""
    alice = await register(federating_server.url, "alice")
    bob = await register(synapse.url, "bob")
    host, guest = (alice, bob) if made_on == "diplomatie" else (bob, alice)
    try:
        created = await host.room_create(name=f"Task force ({made_on})")
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        invited = await host.room_invite(room_id, guest.user_id)
        assert isinstance(invited, RoomInviteResponse), invited
        await sync_until(guest, lambda r: room_id in r.rooms.invite, "invite on the guest's server")
        joined = await guest.join(room_id)
        assert isinstance(joined, JoinResponse), joined
        await sync_until(host, has_member(room_id, guest.user_id, "join"), "the guest's join")
        await talk(host, guest, room_id)
        # The guest leaves: the host sees it.
        await guest.room_leave(room_id)
        await sync_until(host, has_member(room_id, guest.user_id, "leave"), "the guest's leave")
    finally:
        await alice.close()
        await bob.close()


async def http(client, method, path, data=None, content_type=None):
    """A raw authenticated request with the client's session: status, content type, body."""
    import aiohttp

    headers = {"Authorization": f"Bearer {client.access_token}"}
    if content_type:
        headers["Content-Type"] = content_type
    async with aiohttp.ClientSession() as session:
        async with session.request(method, client.homeserver + path, data=data, headers=headers) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()


async def upload(client, data, content_type, filename):
    import json

    status, _, body = await http(client, "POST", f"/_matrix/media/v3/upload?filename={filename}", data, content_type)
    assert status == 200, body
    return json.loads(body)["content_uri"][len("mxc://"):]


@pytest.mark.asyncio
async def test_media_crosses_to_and_from_synapse(federating_server, synapse):
    """Each side downloads what was uploaded to the other: Synapse fetches from our federation
    media endpoint, and we from Synapse's (`multipart/mixed` both ways)."""
    alice = await register(federating_server.url, "alice")
    bob = await register(synapse.url, "bob")
    try:
        ours = "Télégramme diplomatique n° 42".encode()
        theirs = b"Verbalnote der Botschaft"
        on_ours = await upload(alice, ours, "text/plain", "tel.txt")
        on_synapse = await upload(bob, theirs, "text/plain", "note.txt")
        assert on_ours.startswith(federating_server.server_name + "/")
        status, content_type, body = await http(bob, "GET", f"/_matrix/client/v1/media/download/{on_ours}")
        assert (status, body) == (200, ours), body
        assert content_type.startswith("text/plain")
        status, content_type, body = await http(alice, "GET", f"/_matrix/client/v1/media/download/{on_synapse}")
        assert (status, body) == (200, theirs), body
        assert content_type.startswith("text/plain")
        # Unknown media on the other side is unknown here too.
        status, _, _ = await http(alice, "GET", f"/_matrix/client/v1/media/download/{synapse.server_name}/nothing")
        assert status == 404
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_history_of_a_synapse_room_is_backfilled(federating_server, synapse):
    """A room on Synapse with history: after joining, our user reads what was said before
    (our server asks Synapse's `/backfill` and `/state`)."""
    import json
    import urllib.parse

    alice = await register(federating_server.url, "alice")
    bob = await register(synapse.url, "bob")
    try:
        created = await bob.room_create(name="Archives", preset=None)
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        for i in range(12):
            sent = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"avant {i}"})
            assert isinstance(sent, RoomSendResponse), sent
        invited = await bob.room_invite(room_id, alice.user_id)
        assert isinstance(invited, RoomInviteResponse), invited
        await sync_until(alice, lambda r: room_id in r.rooms.invite, "invite from Synapse")
        joined = await alice.join(room_id)
        assert isinstance(joined, JoinResponse), joined

        bodies, frm = [], None
        for _ in range(20):
            path = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/messages?dir=b&limit=5"
            if frm:
                path += "&from=" + urllib.parse.quote(frm)
            status, _, body = await http(alice, "GET", path)
            assert status == 200, body
            page = json.loads(body)
            bodies += [e["content"]["body"] for e in page["chunk"] if e["type"] == "m.room.message"]
            frm = page.get("end")
            if frm is None:
                break
        assert bodies == [f"avant {i}" for i in reversed(range(12))], bodies
    finally:
        await alice.close()
        await bob.close()


async def portal(client, method, path, body=None):
    """The portal's API with the client's session: status and JSON answer."""
    import json

    import aiohttp

    headers = {"Authorization": f"Bearer {client.access_token}"}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, client.homeserver + path, json=body, headers=headers) as r:
            return r.status, json.loads(await r.read() or b"{}")


@pytest.mark.asyncio
async def test_a_crisis_cell_with_a_synapse_member(federating_server, synapse):
    """A cell activated on our server with a focal point on Synapse: the invitation, the alert,
    the sealed log, and the stand-down that Synapse's own auth rules then hold."""
    coord = await register(federating_server.url, "coord")
    bob = await register(synapse.url, "bob")
    try:
        status, cell = await portal(coord, "POST", "/_diplomatie/client/v1/crisis",
                                    {"name": "Exercice Rhin", "focal_points": [bob.user_id]})
        assert status == 200, cell
        space, situation, decisions = cell["cell_id"], cell["rooms"]["situation"], cell["rooms"]["decisions"]
        assert cell["invited"] == 5 and not cell["skipped"], cell
        invited = set()

        def all_invites(r):
            invited.update(r.rooms.invite)
            return {space, situation, decisions} <= invited
        await sync_until(bob, all_invites, "the invitations on Synapse")
        for room in (space, situation, decisions):
            joined = await bob.join(room)
            assert isinstance(joined, JoinResponse), joined

        # Synapse computes Bob's power from the cell's levels: a focal point, at 50.
        got = await bob.room_get_state_event(situation, "m.room.power_levels")
        assert got.content["users"][bob.user_id] == 50, got

        status, sent = await portal(coord, "POST", f"/_diplomatie/client/v1/crisis/{space}/alert", {"body": "Crue"})
        assert status == 200, sent

        def alert(r):
            room = r.rooms.join.get(situation)
            return bool(room) and any(getattr(e, "event_id", None) == sent["event_id"] for e in room.timeline.events)
        await sync_until(bob, alert, "the alert on Synapse")

        said = await bob.room_send(decisions, "m.room.message", {"msgtype": "m.text", "body": "Écluses fermées"})
        assert isinstance(said, RoomSendResponse), said
        deadline = asyncio.get_event_loop().time() + 30
        while True:
            status, log = await portal(coord, "GET", f"/_diplomatie/client/v1/crisis/{space}/log")
            if status == 200 and log.get("entries"):
                break
            assert asyncio.get_event_loop().time() < deadline, log
            await asyncio.sleep(0.3)
        assert log["entries"][0]["said_by"] == bob.user_id and log["entries"][0]["text"] == "Écluses fermées"

        status, done = await portal(coord, "POST", f"/_diplomatie/client/v1/crisis/{space}/stand_down", {})
        assert status == 200, done
        # Once the read-only levels reach Synapse, Synapse itself refuses Bob's messages.
        deadline = asyncio.get_event_loop().time() + 30
        while True:
            refused = await bob.room_send(situation, "m.room.message", {"msgtype": "m.text", "body": "encore"})
            if not isinstance(refused, RoomSendResponse):
                break
            assert asyncio.get_event_loop().time() < deadline, "Synapse still accepts messages"
            await asyncio.sleep(0.5)
    finally:
        await coord.close()
        await bob.close()
