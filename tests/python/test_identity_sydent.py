"""Third-party invites and `/account/3pid` against Sydent, matrix-org's identity server (from
PyPI), with its mail caught by an SMTP server on loopback: an invite by e-mail address waits
in the room until someone binds the address, then becomes their invite; bound addresses are
listed, looked up and unbound."""

import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from conftest import call


def ok(method, url, token=None, body=None):
    status, answer = call(method, url, token, body)
    assert status == 200, f"{method} {url}: {status} {answer}"
    return answer


def q(s):
    return urllib.parse.quote(s, safe="")


def register(server, name):
    body = {"username": name, "password": "pw " + name, "auth": {"type": "m.login.dummy"}}
    answer = ok("POST", server.url + "/_matrix/client/v3/register", body=body)
    return answer["user_id"], answer["access_token"]


def identity_token(server, sydent, user, token):
    """An access token of Sydent's for `user`, from an OpenID token of our server."""
    openid = ok("POST", f"{server.url}/_matrix/client/v3/user/{q(user)}/openid/request_token", token, {})
    return ok("POST", sydent.url + "/_matrix/identity/v2/account/register", body=openid)["token"]


def sync_until(server, token, found, what, timeout=30):
    since = None
    deadline = time.time() + timeout
    while time.time() < deadline:
        url = server.url + "/_matrix/client/v3/sync?timeout=1000" + (f"&since={since}" if since else "")
        answer = ok("GET", url, token)
        if found(answer):
            return answer
        since = answer["next_batch"]
    raise AssertionError(f"never seen: {what}")


def test_an_invite_by_email_reaches_whoever_binds_the_address(identity_server, sydent, mailbox):
    hs = identity_server
    alice, alice_token = register(hs, "alice")
    bob, bob_token = register(hs, "bob")
    alice_is = identity_token(hs, sydent, alice, alice_token)
    bob_is = identity_token(hs, sydent, bob, bob_token)
    room = ok("POST", hs.url + "/_matrix/client/v3/createRoom", alice_token,
              {"preset": "private_chat", "name": "Cellule Sahel"})["room_id"]
    invite = {"id_server": sydent.server_name, "id_access_token": alice_is, "medium": "email",
              "address": "bob@example.org"}

    # Nobody holds the address yet: Sydent stores the invite and mails it; the room holds the
    # promise (m.room.third_party_invite) with Sydent's keys.
    ok("POST", f"{hs.url}/_matrix/client/v3/rooms/{q(room)}/invite", alice_token, invite)
    mail = mailbox.wait_for("bob@example.org", "invite=")
    assert "room=Cellule Sahel" in mail, mail
    state = ok("GET", f"{hs.url}/_matrix/client/v3/rooms/{q(room)}/state", alice_token)
    promises = [e for e in state if e["type"] == "m.room.third_party_invite"]
    assert len(promises) == 1, state
    assert promises[0]["content"]["public_keys"], promises[0]
    assert "@" in promises[0]["content"]["display_name"], promises[0]

    # Bob proves he holds the address (Sydent mails him a token) and binds it through our
    # server: Sydent calls our /3pid/onbind, and Alice's invite becomes Bob's.
    secret = uuid.uuid4().hex
    sid = ok("POST", sydent.url + "/_matrix/identity/v2/validate/email/requestToken", bob_is,
             {"client_secret": secret, "email": "bob@example.org", "send_attempt": 1})["sid"]
    mail = mailbox.wait_for("bob@example.org", "token=")
    token = mail.split("token=", 1)[1].split()[0]
    checked = ok("POST", sydent.url + "/_matrix/identity/v2/validate/email/submitToken", bob_is,
                 {"sid": sid, "client_secret": secret, "token": token})
    assert checked.get("success") is True, checked
    ok("POST", hs.url + "/_matrix/client/v3/account/3pid/bind", bob_token,
       {"client_secret": secret, "id_server": sydent.server_name, "id_access_token": bob_is, "sid": sid})
    invited = sync_until(hs, bob_token, lambda s: room in s.get("rooms", {}).get("invite", {}), "Bob's invite")
    shown = invited["rooms"]["invite"][room]["invite_state"]["events"]
    assert any(e["type"] == "m.room.name" and e["content"]["name"] == "Cellule Sahel" for e in shown), shown
    member = ok("GET", f"{hs.url}/_matrix/client/v3/rooms/{q(room)}/state/m.room.member/{q(bob)}", alice_token)
    assert member["membership"] == "invite", member
    assert member["third_party_invite"]["signed"]["mxid"] == bob, member
    ok("POST", f"{hs.url}/_matrix/client/v3/rooms/{q(room)}/join", bob_token, {})

    # The address is Bob's: listed on his account, and found by the next invite, which goes to
    # Bob directly.
    listed = ok("GET", hs.url + "/_matrix/client/v3/account/3pid", bob_token)["threepids"]
    assert [(t["medium"], t["address"]) for t in listed] == [("email", "bob@example.org")], listed
    other = ok("POST", hs.url + "/_matrix/client/v3/createRoom", alice_token, {"preset": "private_chat"})["room_id"]
    ok("POST", f"{hs.url}/_matrix/client/v3/rooms/{q(other)}/invite", alice_token, invite)
    member = ok("GET", f"{hs.url}/_matrix/client/v3/rooms/{q(other)}/state/m.room.member/{q(bob)}", alice_token)
    assert member["membership"] == "invite" and "third_party_invite" not in member, member
    # So does a room created with the address among its invites (`invite_3pid`).
    created = ok("POST", hs.url + "/_matrix/client/v3/createRoom", alice_token,
                 {"preset": "private_chat", "invite_3pid": [invite]})["room_id"]
    member = ok("GET", f"{hs.url}/_matrix/client/v3/rooms/{q(created)}/state/m.room.member/{q(bob)}", alice_token)
    assert member["membership"] == "invite", member
    # An unknown medium there is refused before any room is made.
    rooms_before = ok("GET", hs.url + "/_matrix/client/v3/joined_rooms", alice_token)["joined_rooms"]
    status, answer = call("POST", hs.url + "/_matrix/client/v3/createRoom", alice_token,
                          {"invite_3pid": [dict(invite, medium="pigeon")]})
    assert (status, answer.get("errcode")) == (400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"), answer
    assert ok("GET", hs.url + "/_matrix/client/v3/joined_rooms", alice_token)["joined_rooms"] == rooms_before

    # Bad requests: an unknown medium, an identity server that is no host name.
    status, answer = call("POST", f"{hs.url}/_matrix/client/v3/rooms/{q(other)}/invite", alice_token,
                          dict(invite, medium="pigeon"))
    assert (status, answer.get("errcode")) == (400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"), answer
    status, answer = call("POST", f"{hs.url}/_matrix/client/v3/rooms/{q(other)}/invite", alice_token,
                          dict(invite, id_server="evil.example/path"))
    assert (status, answer.get("errcode")) == (400, "M_INVALID_PARAM"), answer

    # Bob removes the address: unbound on Sydent (a request our server signs), gone from his
    # account, and Sydent no longer finds it.
    removed = ok("POST", hs.url + "/_matrix/client/v3/account/3pid/delete", bob_token,
                 {"medium": "email", "address": "bob@example.org"})
    assert removed["id_server_unbind_result"] == "success", removed
    assert ok("GET", hs.url + "/_matrix/client/v3/account/3pid", bob_token)["threepids"] == []
    status, answer = call("POST", hs.url + "/_matrix/client/v3/account/3pid/delete", bob_token,
                          {"medium": "email", "address": "bob@example.org"})
    assert (status, answer.get("errcode")) == (404, "M_NOT_FOUND"), answer
    third = ok("POST", hs.url + "/_matrix/client/v3/createRoom", alice_token, {"preset": "private_chat"})["room_id"]
    ok("POST", f"{hs.url}/_matrix/client/v3/rooms/{q(third)}/invite", alice_token, invite)
    state = ok("GET", f"{hs.url}/_matrix/client/v3/rooms/{q(third)}/state", alice_token)
    assert any(e["type"] == "m.room.third_party_invite" for e in state), "an invite waiting again"

    # Bound again through the unstable path older clients use, then the account is closed: the
    # address is unbound on Sydent, and an invite to it waits again.
    mailbox.messages.clear()
    secret = uuid.uuid4().hex
    sid = ok("POST", sydent.url + "/_matrix/identity/v2/validate/email/requestToken", bob_is,
             {"client_secret": secret, "email": "bob@example.org", "send_attempt": 2})["sid"]
    mail = mailbox.wait_for("bob@example.org", "token=")
    token = mail.split("token=", 1)[1].split()[0]
    ok("POST", sydent.url + "/_matrix/identity/v2/validate/email/submitToken", bob_is,
       {"sid": sid, "client_secret": secret, "token": token})
    ok("POST", hs.url + "/_matrix/client/unstable/account/3pid/bind", bob_token,
       {"client_secret": secret, "id_server": sydent.server_name, "id_access_token": bob_is, "sid": sid})
    fourth = ok("POST", hs.url + "/_matrix/client/v3/createRoom", alice_token, {"preset": "private_chat"})["room_id"]
    ok("POST", f"{hs.url}/_matrix/client/v3/rooms/{q(fourth)}/invite", alice_token, invite)
    member = ok("GET", f"{hs.url}/_matrix/client/v3/rooms/{q(fourth)}/state/m.room.member/{q(bob)}", alice_token)
    assert member["membership"] == "invite", member
    auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": bob}, "password": "pw bob"}
    ok("POST", hs.url + "/_matrix/client/v3/account/deactivate", bob_token, {"auth": auth})
    fifth = ok("POST", hs.url + "/_matrix/client/v3/createRoom", alice_token, {"preset": "private_chat"})["room_id"]
    ok("POST", f"{hs.url}/_matrix/client/v3/rooms/{q(fifth)}/invite", alice_token, invite)
    state = ok("GET", f"{hs.url}/_matrix/client/v3/rooms/{q(fifth)}/state", alice_token)
    assert any(e["type"] == "m.room.third_party_invite" for e in state), "the closed account's address is unbound"
