"""A real Matrix client library (matrix-nio) against the real server: two users register,
create a room, invite, join, exchange messages and see each other's receipts and typing."""

import asyncio

import pytest
from nio import (
    AsyncClient,
    InviteMemberEvent,
    JoinResponse,
    ReceiptEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    TypingNoticeEvent,
)


async def sync_until(client, predicate, timeout=15):
    """Long-polls /sync until `predicate(response)` holds."""
    deadline = asyncio.get_event_loop().time() + timeout
    while asyncio.get_event_loop().time() < deadline:
        resp = await client.sync(timeout=3000)
        assert isinstance(resp, SyncResponse), resp
        if predicate(resp):
            return resp
    raise AssertionError("the expected sync never came")


@pytest.mark.asyncio
async def test_two_users_talk_through_nio(server):
    alice = AsyncClient(server.url, "alice")
    bob = AsyncClient(server.url, "bob")
    try:
        assert isinstance(await alice.register("alice", "wonderland pw", "alice laptop"), RegisterResponse)
        assert isinstance(await bob.register("bob", "builder pw", "bob phone"), RegisterResponse)
        await alice.sync(timeout=0)
        await bob.sync(timeout=0)

        created = await alice.room_create(name="Cellule Sahel", invite=["@bob:localhost"])
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id

        # Bob sees the invite, with the room's name and who invited him.
        resp = await sync_until(bob, lambda r: room_id in r.rooms.invite)
        invite_events = resp.rooms.invite[room_id].invite_state
        assert any(isinstance(e, InviteMemberEvent) and e.sender == "@alice:localhost" for e in invite_events)
        assert isinstance(await bob.join(room_id), JoinResponse)

        # Alice writes; Bob receives the message.
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "Bonjour Bob"})
        assert isinstance(sent, RoomSendResponse), sent

        def has_message(r):
            room = r.rooms.join.get(room_id)
            return room and any(isinstance(e, RoomMessageText) and e.body == "Bonjour Bob" for e in room.timeline.events)

        await sync_until(bob, has_message)
        assert bob.rooms[room_id].display_name == "Cellule Sahel"

        # Bob reads it and types; Alice sees his read receipt and his typing.
        await bob.room_read_markers(room_id, fully_read_event=sent.event_id, read_event=sent.event_id)
        await bob.room_typing(room_id, typing_state=True, timeout=10000)

        seen = {"receipt": False, "typing": False}

        def receipt_and_typing(r):
            room = r.rooms.join.get(room_id)
            if room:
                for e in room.ephemeral:
                    if isinstance(e, ReceiptEvent) and any(
                        rc.event_id == sent.event_id and rc.user_id == "@bob:localhost" for rc in e.receipts
                    ):
                        seen["receipt"] = True
                    if isinstance(e, TypingNoticeEvent) and "@bob:localhost" in e.users:
                        seen["typing"] = True
            return seen["receipt"] and seen["typing"]

        await sync_until(alice, receipt_and_typing)

        # And the other way round: Bob answers, Alice receives it.
        await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "Bien reçu"})

        def has_answer(r):
            room = r.rooms.join.get(room_id)
            return room and any(isinstance(e, RoomMessageText) and e.body == "Bien reçu" for e in room.timeline.events)

        await sync_until(alice, has_answer)
    finally:
        await alice.close()
        await bob.close()
