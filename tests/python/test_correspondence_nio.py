"""Formal correspondence from a real Matrix client library (matrix-nio), end to end: an agent
composes a telegram as a draft in her group's correspondence room, confirms the preview with a
reaction; it reaches, for action, two groups and, for information, a third, and a community
through its tag; every member of those rooms sees it; the journals show it with its status;
three reads make an audience of three; the exported record verifies offline, and fails once a
byte is changed."""

import asyncio
import json
import os
import tempfile
import urllib.request

import pytest
from nio import AsyncClient, LoginResponse, RoomResolveAliasResponse, RoomSendResponse, SyncResponse

ORG = """
users:
  - { localpart: root, password: pw, admin: true }
  - { localpart: alice, password: pw, group: paris }
  - { localpart: bob, password: pw, group: dgm }
  - { localpart: carol, password: pw, group: dgm }
  - { localpart: dave, password: pw, group: dfae }
  - { localpart: erin, password: pw, group: cabinet }
  - { localpart: frank, password: pw }
groups:
  - { slug: paris, name: "Ambassade à Paris", managers: [alice] }
  - { slug: dgm, name: DGM, topic: "Direction générale de la mondialisation", avatar_url: "mxc://localhost/dgm", managers: [bob] }
  - { slug: dfae, name: DFAE, managers: [dave] }
  - { slug: cabinet, name: Cabinet, managers: [erin] }
communities:
  - { slug: sahel, name: Sahel, manager: frank, project: "Stratégie Sahel", tags: [sahel], join: open, members: [frank] }
"""

MSGTYPE = "fr.diplomatie.correspondence"


def http(server, method, path, token, body=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(server.url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def events_of(resp, room_id):
    room = resp.rooms.join.get(room_id)
    return [e.source for e in room.timeline.events] if room else []


class Agent:
    def __init__(self, server, name):
        self.client = AsyncClient(server.url, f"@{name}:localhost")
        self.seen = {}  # room id -> event sources

    async def login(self):
        assert isinstance(await self.client.login("pw", device_name="nio"), LoginResponse)

    async def sync_until(self, predicate, timeout=20):
        deadline = asyncio.get_event_loop().time() + timeout
        while asyncio.get_event_loop().time() < deadline:
            resp = await self.client.sync(timeout=2000, full_state=False)
            assert isinstance(resp, SyncResponse), resp
            for room_id, room in resp.rooms.join.items():
                self.seen.setdefault(room_id, []).extend(e.source for e in room.timeline.events)
            found = predicate(self)
            if found:
                return found
        raise AssertionError("the expected events never came")

    def find(self, room_id, match):
        return next((e for e in self.seen.get(room_id, []) if match(e)), None)

    def find_anywhere(self, match):
        for room_id, events in self.seen.items():
            for e in events:
                if match(e):
                    return room_id, e
        return None

    async def alias(self, alias):
        resp = await self.client.room_resolve_alias(alias)
        assert isinstance(resp, RoomResolveAliasResponse), resp
        return resp.room_id


def is_copy(reference, role=None):
    def match(e):
        c = e.get("content", {})
        return (
            c.get("msgtype") == MSGTYPE
            and c.get(MSGTYPE, {}).get("reference") == reference
            and "m.new_content" not in c
            and (role is None or c.get("fr.diplomatie.delivery", {}).get("as") == role)
        )

    return match


@pytest.mark.asyncio
async def test_a_telegram_composed_in_a_standard_client(server):
    out = server.command("user", "create", "setup", "--password", "pw", "--admin")
    assert out.returncode == 0, out.stderr
    login = json.loads(urllib.request.urlopen(urllib.request.Request(
        server.url + "/_matrix/client/v3/login",
        data=json.dumps({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "setup"},
                         "password": "pw"}).encode(), method="POST"), timeout=30).read())
    admin_token = login["access_token"]
    http(server, "POST", "/_diplomatie/admin/v1/import", admin_token, ORG.encode())

    names = ["alice", "bob", "carol", "dave", "erin", "frank"]
    agents = {n: Agent(server, n) for n in names}
    try:
        for a in agents.values():
            await a.login()
            await a.client.sync(timeout=0)
        alice, bob, carol, dave, erin, frank = (agents[n] for n in names)

        # The functional group is a space that the client shows with its name, topic and avatar.
        space = await bob.alias("#g.dgm:localhost")
        await bob.sync_until(lambda a: space in a.client.rooms and a.client.rooms[space].name == "DGM")
        room = bob.client.rooms[space]
        assert room.topic == "Direction générale de la mondialisation"
        assert room.room_avatar_url == "mxc://localhost/dgm"
        create = await bob.client.room_get_state_event(space, "m.room.create")
        assert create.content.get("type") == "m.space", create
        # Frank follows the tag from his journal (a command; the API creates the journal).
        http(server, "PUT", "/_diplomatie/client/v1/journal/tags/sahel", frank.client.access_token, b"{}")

        paris = await alice.alias("#g.paris.correspondence:localhost")
        draft = ("!telegram\nAction: dgm, dfae\nInformation: cabinet\nTags: sahel\n"
                 "Subject: Situation au Sahel\n\nPoints de situation et demandes d'instructions.")
        sent = await alice.client.room_send(paris, "m.room.message", {"msgtype": "m.text", "body": draft})
        assert isinstance(sent, RoomSendResponse), sent

        def preview(a):
            return a.find(paris, lambda e: e["sender"] == "@diplomatie:localhost"
                          and e["content"].get("body", "").startswith("Aperçu"))

        shown = await alice.sync_until(preview)
        await alice.client.room_send(paris, "m.reaction", {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": shown["event_id"], "key": "✅"}})
        done = await alice.sync_until(lambda a: a.find(
            paris, lambda e: e["content"].get("body", "").startswith("✅ Signé et envoyé")))
        reference = done["content"]["body"].split("envoyé : ")[1].split(" ")[0]
        assert reference.startswith("PARIS-")

        # Every member of the addressee rooms sees it, marked as it was sent to them.
        expected = [
            (bob, "#g.dgm.correspondence:localhost", "action"),
            (carol, "#g.dgm.correspondence:localhost", "action"),
            (dave, "#g.dfae.correspondence:localhost", "action"),
            (erin, "#g.cabinet.correspondence:localhost", "information"),
            (frank, "#c.sahel.general:localhost", "community"),
        ]
        copies = {}
        for agent, alias, role in expected:
            room = await agent.alias(alias)
            copy = await agent.sync_until(lambda a: a.find(room, is_copy(reference, role)))
            assert "Situation au Sahel" in copy["content"]["body"]
            copies[(agent.client.user_id, alias)] = (room, copy["event_id"])

        # Journals: Bob, Carol and Dave must act on it (status new); Frank's interest matched.
        journal_rooms = {}
        for agent in (bob, carol, dave):
            room_id, entry = await agent.sync_until(lambda a: a.find_anywhere(
                lambda e: e["content"].get("fr.diplomatie.journal", {}).get("reference") == reference
                and "m.new_content" not in e["content"]))
            assert "Situation au Sahel" in entry["content"]["body"]
            assert entry["content"]["fr.diplomatie.journal"]["section"] == "action"
            assert entry["content"]["fr.diplomatie.journal"]["status"] == "new"
            journal_rooms[agent.client.user_id] = (room_id, entry["event_id"])
        _, interest = await frank.sync_until(lambda a: a.find_anywhere(
            lambda e: is_copy(reference)(e) and "fr.diplomatie.journal" in e["content"]))
        assert interest["content"]["fr.diplomatie.journal"]["section"] == "interest"

        # Carol takes it from her journal (👀): Bob's entry is edited to show it.
        room_id, entry_id = journal_rooms["@carol:localhost"]
        await carol.client.room_send(room_id, "m.reaction", {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": entry_id, "key": "👀"}})
        bob_journal, bob_entry = journal_rooms["@bob:localhost"]
        edit = await bob.sync_until(lambda a: a.find(bob_journal, lambda e: e["content"].get(
            "m.relates_to", {}).get("event_id") == bob_entry and e["content"]["m.relates_to"].get("rel_type") == "m.replace"))
        assert edit["content"]["m.new_content"]["fr.diplomatie.journal"]["status"] == "assigned"
        assert edit["content"]["m.new_content"]["fr.diplomatie.journal"]["assignee"] == "@carol:localhost"

        # Three agents read it: an audience of three.
        for agent, alias in ((bob, "#g.dgm.correspondence:localhost"), (dave, "#g.dfae.correspondence:localhost"),
                             (erin, "#g.cabinet.correspondence:localhost")):
            room, event_id = copies[(agent.client.user_id, alias)]
            await agent.client.update_receipt_marker(room, event_id)
        audience = http(server, "GET", f"/_diplomatie/client/v1/correspondence/{reference}/audience",
                        alice.client.access_token)
        assert audience["readers"] == 3, audience
        assert audience["by_group"] == {"dgm": 1, "dfae": 1, "cabinet": 1}, audience

        # The exported record verifies offline, and fails once a byte is changed.
        export = http(server, "GET", f"/_diplomatie/client/v1/correspondence/{reference}", bob.client.access_token)
        with tempfile.TemporaryDirectory() as d:
            good = os.path.join(d, "good.json")
            with open(good, "w") as f:
                json.dump(export, f)
            verified = server.command("verify", good)
            assert verified.returncode == 0, verified.stderr
            assert reference in verified.stdout
            text = json.dumps(export)
            i = text.index("instructions")
            tampered = text[:i] + "I" + text[i + 1:]
            bad = os.path.join(d, "bad.json")
            with open(bad, "w") as f:
                f.write(tampered)
            refused = server.command("verify", bad)
            assert refused.returncode == 1, refused.stdout
    finally:
        for a in agents.values():
            await a.client.close()
