"""Addresses the server validates itself (`[email]`), its mail caught by a real SMTP server on
loopback (aiosmtpd): registering with an e-mail address (the `m.login.email.identity` stage),
adding one to an account (`/account/3pid/add`, the token submitted by API), logging in with
it, and the refusals (an address in use, a link not followed, a wrong token, no mail
configured)."""

import email
import email.policy
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import Server, call


def ok(method, url, token=None, body=None):
    status, answer = call(method, url, token, body)
    assert status == 200, (status, answer)
    return answer


def link_in(raw):
    """The validation link of a mail, from its decoded text."""
    message = email.message_from_string(raw, policy=email.policy.default)
    text = message.get_body(preferencelist=("plain",)).get_content()
    return re.search(r"(https?://\S+)", text).group(1)


def at(hs, url):
    """A URL of the server's (its links start with `public_baseurl`, here the listening
    address as configured, port 0) at the address it really listens on."""
    parts = urllib.parse.urlparse(url)
    return urllib.parse.urlunparse(parts._replace(netloc=urllib.parse.urlparse(hs.url).netloc))


def link_of_session(mailbox, to, sid, timeout=20):
    """The link of the mail to `to` for the session `sid`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for rcpt, raw in mailbox.messages:
            if to in rcpt:
                link = link_in(raw)
                if urllib.parse.parse_qs(urllib.parse.urlparse(link).query).get("sid") == [sid]:
                    return link
        time.sleep(0.1)
    raise AssertionError(f"no mail to {to} for session {sid}")


def mail_env(mailbox):
    return {
        "DIPLOMATIE_EMAIL__SMTP_HOST": "127.0.0.1",
        "DIPLOMATIE_EMAIL__SMTP_PORT": str(mailbox.port),
        "DIPLOMATIE_EMAIL__TLS": "none",
        "DIPLOMATIE_EMAIL__NOTIF_FROM": "Diplomatie <noreply@example.org>",
    }


@pytest.fixture(params=["sqlite", "postgres"])
def mailing_server(request, mailbox):
    s = Server(request.param, extra_env=mail_env(mailbox))
    yield s
    s.stop()


def test_registering_adding_and_logging_in_with_an_address(mailing_server, mailbox):
    hs = mailing_server
    register = hs.url + "/_matrix/client/v3/register"
    # The flows offer the e-mail stage alone.
    status, first = call("POST", register, body={"username": "alice", "password": "pw-alice"})
    assert status == 401 and ["m.login.email.identity"] in [f["stages"] for f in first["flows"]], first

    # The link goes to the address (lowercased); asking again with the same attempt sends
    # nothing more and answers the same session.
    request = {"client_secret": "secret-alice", "email": "Alice@Example.org", "send_attempt": 1}
    asked = ok("POST", hs.url + "/_matrix/client/v3/register/email/requestToken", body=request)
    again = ok("POST", hs.url + "/_matrix/client/v3/register/email/requestToken", body=request)
    assert again["sid"] == asked["sid"] and asked["submit_url"].startswith("http"), (asked, again)
    mail = mailbox.wait_for("alice@example.org", "Confirm your e-mail address")
    assert sum(1 for rcpt, _ in mailbox.messages if "alice@example.org" in rcpt) == 1
    link = link_in(mail)

    # Not followed yet: the stage fails, and the account is not made.
    auth = {"type": "m.login.email.identity", "session": first["session"],
            "threepid_creds": {"sid": asked["sid"], "client_secret": "secret-alice"}}
    status, answer = call("POST", register, body={"username": "alice", "password": "pw-alice", "auth": auth})
    assert status == 401 and answer.get("errcode") == "M_THREEPID_AUTH_FAILED", answer

    assert link.startswith("http://127.0.0.1:0/_diplomatie/client/v1/email/submit_token?"), link
    with urllib.request.urlopen(at(hs, link), timeout=20) as page:
        assert page.status == 200 and "confirmed" in page.read().decode()
    registered = ok("POST", register, body={"username": "alice", "password": "pw-alice", "auth": auth})
    alice = registered["access_token"]
    listed = ok("GET", hs.url + "/_matrix/client/v3/account/3pid", alice)["threepids"]
    assert [(t["medium"], t["address"]) for t in listed] == [("email", "alice@example.org")], listed

    # The address logs in, in any case; with a wrong password it does not.
    login = hs.url + "/_matrix/client/v3/login"
    by_address = {"type": "m.login.password", "password": "pw-alice",
                  "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "ALICE@example.org"}}
    assert ok("POST", login, body=by_address)["user_id"] == registered["user_id"]
    status, answer = call("POST", login, body=dict(by_address, password="wrong"))
    assert (status, answer.get("errcode")) == (403, "M_FORBIDDEN"), answer
    status, answer = call("POST", login, body=dict(by_address, identifier={
        "type": "m.id.thirdparty", "medium": "email", "address": "nobody@example.org"}))
    assert (status, answer.get("errcode")) == (403, "M_FORBIDDEN"), answer

    # Now Alice's, the address cannot be asked for again; nor can a non-address.
    status, answer = call("POST", hs.url + "/_matrix/client/v3/register/email/requestToken",
                          body={"client_secret": "other", "email": "alice@example.org", "send_attempt": 1})
    assert (status, answer.get("errcode")) == (400, "M_THREEPID_IN_USE"), answer
    status, answer = call("POST", hs.url + "/_matrix/client/v3/register/email/requestToken",
                          body={"client_secret": "other", "email": "not an address", "send_attempt": 1})
    assert (status, answer.get("errcode")) == (400, "M_INVALID_PARAM"), answer

    # Bob adds an address to his account: the token submitted by API (a wrong one is refused),
    # then `/account/3pid/add` after his password.
    status, first = call("POST", register, body={"username": "bob", "password": "pw-bob"})
    bob = ok("POST", register, body={"username": "bob", "password": "pw-bob",
                                     "auth": {"type": "m.login.dummy", "session": first["session"]}})
    bob_token = bob["access_token"]
    asked = ok("POST", hs.url + "/_matrix/client/v3/account/3pid/email/requestToken", bob_token,
               {"client_secret": "secret-bob", "email": "bob@example.org", "send_attempt": 1})
    token = urllib.parse.parse_qs(urllib.parse.urlparse(link_in(mailbox.wait_for("bob@example.org", "Confirm"))).query)["token"][0]
    status, answer = call("POST", at(hs, asked["submit_url"]), body={"sid": asked["sid"], "client_secret": "secret-bob"})
    assert (status, answer.get("errcode")) == (400, "M_MISSING_PARAM"), answer
    status, answer = call("POST", at(hs, asked["submit_url"]), body={"sid": asked["sid"], "client_secret": "secret-bob", "token": "wrong"})
    assert (status, answer.get("errcode")) == (400, "M_THREEPID_AUTH_FAILED"), answer
    creds = {"sid": asked["sid"], "client_secret": "secret-bob"}
    assert ok("POST", at(hs, asked["submit_url"]), body=dict(creds, token=token)) == {"success": True}
    add = hs.url + "/_matrix/client/v3/account/3pid/add"
    status, challenge = call("POST", add, bob_token, creds)
    assert status == 401, challenge
    ok("POST", add, bob_token, dict(creds, auth={
        "type": "m.login.password", "session": challenge["session"], "password": "pw-bob",
        "identifier": {"type": "m.id.user", "user": "bob"}}))
    listed = ok("GET", hs.url + "/_matrix/client/v3/account/3pid", bob_token)["threepids"]
    assert [t["address"] for t in listed] == ["bob@example.org"], listed
    # Alice cannot take Bob's address with Bob's session.
    status, answer = call("POST", hs.url + "/_matrix/client/v3/account/3pid", alice, {"three_pid_creds": creds})
    assert (status, answer.get("errcode")) == (400, "M_THREEPID_IN_USE"), answer

    # Alice forgot her password: a link to her address, then /account/password without a
    # token; her sessions end, the new password logs in, the old one no longer does.
    reset_token = hs.url + "/_matrix/client/v3/account/password/email/requestToken"
    status, answer = call("POST", reset_token, body={"client_secret": "r", "email": "nobody@example.org", "send_attempt": 1})
    assert (status, answer.get("errcode")) == (400, "M_THREEPID_NOT_FOUND"), answer
    asked = ok("POST", reset_token, body={"client_secret": "reset-alice", "email": "alice@example.org", "send_attempt": 1})
    password = hs.url + "/_matrix/client/v3/account/password"
    status, challenge = call("POST", password, body={"new_password": "pw-new"})
    assert status == 401 and [f["stages"] for f in challenge["flows"]] == [["m.login.email.identity"]], challenge
    with urllib.request.urlopen(at(hs, link_of_session(mailbox, "alice@example.org", asked["sid"])), timeout=20) as page:
        assert page.status == 200
    ok("POST", password, body={"new_password": "pw-new", "auth": {
        "type": "m.login.email.identity", "session": challenge["session"],
        "threepid_creds": {"sid": asked["sid"], "client_secret": "reset-alice"}}})
    status, answer = call("GET", hs.url + "/_matrix/client/v3/account/whoami", alice)
    assert (status, answer.get("errcode")) == (401, "M_UNKNOWN_TOKEN"), answer
    status, answer = call("POST", login, body=by_address)
    assert (status, answer.get("errcode")) == (403, "M_FORBIDDEN"), answer
    assert ok("POST", login, body=dict(by_address, password="pw-new"))["user_id"] == registered["user_id"]


def test_a_server_without_mail_validates_no_address(server):
    status, answer = call("POST", server.url + "/_matrix/client/v3/register/email/requestToken",
                          body={"client_secret": "s", "email": "carol@example.org", "send_attempt": 1})
    assert (status, answer.get("errcode")) == (403, "M_THREEPID_DENIED"), answer
    status, first = call("POST", server.url + "/_matrix/client/v3/register", body={"username": "carol", "password": "pw"})
    assert status == 401 and all("m.login.email.identity" not in f["stages"] for f in first["flows"]), first
    # Without mail, no password is reset without an access token (this once answered 500).
    status, answer = call("POST", server.url + "/_matrix/client/v3/account/password", body={"new_password": "x"})
    assert (status, answer.get("errcode")) == (401, "M_MISSING_TOKEN"), answer


def test_an_address_is_sent_few_mails(mailbox):
    """With rate limits on (the default), an address gets 5 mails at once, whatever the client
    secret, then must wait: nobody floods an inbox through the server."""
    hs = Server("sqlite", extra_env=dict(mail_env(mailbox), DIPLOMATIE_RATE_LIMITS__ENABLED="true"))
    try:
        url = hs.url + "/_matrix/client/v3/register/email/requestToken"
        for attempt in range(1, 6):
            ok("POST", url, body={"client_secret": "flood", "email": "victim@example.org", "send_attempt": attempt})
        for secret, attempt in (("flood", 6), ("other", 1)):
            status, answer = call("POST", url, body={"client_secret": secret, "email": "victim@example.org",
                                                      "send_attempt": attempt})
            assert (status, answer.get("errcode")) == (429, "M_LIMIT_EXCEEDED"), answer
            assert answer.get("retry_after_ms", 0) > 0, answer
        # The same attempt again is no new mail, and answers its session.
        ok("POST", url, body={"client_secret": "flood", "email": "victim@example.org", "send_attempt": 5})
        ok("POST", url, body={"client_secret": "flood", "email": "other@example.org", "send_attempt": 1})
        assert sum(1 for rcpt, _ in mailbox.messages if "victim@example.org" in rcpt) == 5
    finally:
        hs.stop()
