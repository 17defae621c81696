"""The e-mail bridge (`diplomatie-email`) between real mail software and the real homeserver,
on both storage backends (the server's and the bridge's own database alike).

Python's smtplib sends into the bridge (with STARTTLS), aiosmtpd is the relay it sends out
through, dnslib serves the senders' SPF, DKIM and DMARC records on loopback, and dkimpy signs
what the senders send and verifies what the bridge sends."""

import base64
import contextlib
import email
import email.policy
import json
import os
import queue
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from email.message import EmailMessage

import dkim
import nacl.signing
import pytest
from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from conftest import PG, Mailbox, Server, free_port

BRIDGE_BIN = os.environ.get(
    "DIPLOMATIE_EMAIL_BIN",
    os.path.join(os.path.dirname(os.environ.get("DIPLOMATIE_BIN", "")) or
                 os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug"), "diplomatie-email"),
)
DOMAIN = "ministere.test"

# The senders' keys and records.
NGO_KEY = nacl.signing.SigningKey.generate()


def ngo_dkim_record():
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(NGO_KEY.verify_key.encode()).decode()


class Zone(BaseResolver):
    """TXT records on loopback; any other name does not exist."""

    def __init__(self, records):
        self.records = records

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if name in self.records:
            if request.q.qtype == QTYPE.TXT:
                for text in self.records[name]:
                    chunks = [text[i:i + 255] for i in range(0, len(text), 255)]
                    reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class Dns:
    def __init__(self):
        self.port = free_port()
        zone = Zone({
            "ngo.example": ["v=spf1 ip4:127.0.0.1 -all"],
            "_dmarc.ngo.example": ["v=DMARC1; p=reject"],
            "sel._domainkey.ngo.example": [ngo_dkim_record()],
            "partner.example": ["v=spf1 ip4:192.0.2.1 -all"],
            "_dmarc.partner.example": ["v=DMARC1; p=reject"],
        })
        self.servers = [DNSServer(zone, port=self.port, address="127.0.0.1", tcp=tcp,
                         logger=DNSLogger(logf=lambda _: None)) for tcp in (False, True)]
        for s in self.servers:
            s.start_thread()

    def stop(self):
        for s in self.servers:
            s.stop()


def api(base, method, path, token=None, body=None, data=None, content_type=None):
    """One client-server call: (status, JSON answer)."""
    headers = {}
    if token:
        headers["Authorization"] = "Bearer " + token
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    elif content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if r.headers.get_content_type() == "application/json" and raw else raw)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else {}


def register(base, name):
    path = "/_matrix/client/v3/register"
    status, answer = api(base, "POST", path, body={"username": name, "password": "secret-" + name})
    if status == 401:
        status, answer = api(base, "POST", path, body={
            "username": name, "password": "secret-" + name,
            "auth": {"type": "m.login.dummy", "session": answer.get("session")},
        })
    assert status == 200, answer
    return answer["access_token"]


def q(s):
    return urllib.parse.quote(s, safe="")


def messages(base, token, room):
    status, answer = api(base, "GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=200", token)
    assert status == 200, answer
    return list(reversed(answer["chunk"]))


def wait_event(base, token, room, match, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for e in messages(base, token, room):
            if match(e):
                return e
        time.sleep(0.2)
    raise AssertionError(f"no such event in {room}: {json.dumps(messages(base, token, room), indent=1)[-3000:]}")


class Bridge:
    """`diplomatie-email` beside a server: its registration is written into the server's data
    directory before the server starts (the zero set-up path), then it runs."""

    def __init__(self, backend, dns, relay):
        self.dir = tempfile.mkdtemp(prefix="diplomatie-email-")
        self.pg_db = None
        self.as_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIPLOMATIE_")}
        env.update({
            "DIPLOMATIE_EMAIL_DATA_DIR": self.dir,
            "DIPLOMATIE_EMAIL_LISTEN": f"127.0.0.1:{self.as_port}",
            "DIPLOMATIE_EMAIL_SMTP_LISTEN": "127.0.0.1:0",
            "DIPLOMATIE_EMAIL_MAIL_DOMAIN": DOMAIN,
            "DIPLOMATIE_EMAIL_RELAY__HOST": "127.0.0.1",
            "DIPLOMATIE_EMAIL_RELAY__PORT": str(relay.port),
            "DIPLOMATIE_EMAIL_AUTH__NAMESERVERS": f'["127.0.0.1:{dns.port}"]',
            "DIPLOMATIE_EMAIL_LOG": "info,diplomatie_email=debug",
            "NO_COLOR": "1",
        })
        if backend == "postgres":
            self.pg_db = "dip_email_" + uuid.uuid4().hex[:12]
            subprocess.run(PG + [f"CREATE DATABASE {self.pg_db}"], check=True)
            env["DIPLOMATIE_EMAIL_DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{self.pg_db}"
        self.env = env
        self.proc = None
        self.log = []

    def prepare(self, server_dir):
        self.env["DIPLOMATIE_EMAIL_REGISTRATION"] = os.path.join(server_dir, "appservices", "email.yaml")
        out = subprocess.run([BRIDGE_BIN, "register"], env=self.env, capture_output=True, text=True, check=True)
        assert out.stdout.strip().endswith("email.yaml")

    def start(self, server):
        self.env["DIPLOMATIE_EMAIL_HOMESERVER_URL"] = server.url
        self.proc = subprocess.Popen([BRIDGE_BIN], env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        listening = queue.Queue()

        def read_log():
            for line in self.proc.stdout:
                self.log.append(line)
                if "bridge is listening" in line:
                    listening.put(next(w[len("smtp="):] for w in line.split() if w.startswith("smtp=")))
                elif "WARN" in line or "ERROR" in line:
                    sys.stdout.write(line)
            listening.put(None)

        threading.Thread(target=read_log, daemon=True).start()
        addr = listening.get(timeout=60)
        assert addr, "the bridge did not start:\n" + "".join(self.log)
        self.smtp_port = int(addr.rsplit(":", 1)[1])

    def running(self):
        return self.proc.poll() is None

    def dkim_record(self):
        out = subprocess.run([BRIDGE_BIN, "dkim-record"], env=self.env, capture_output=True, text=True, check=True)
        return out.stdout.split('"')[1]

    def smtp(self):
        client = smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=60)
        client.ehlo("mx.ngo.example")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.starttls(context=context)
        client.ehlo("mx.ngo.example")
        return client

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.pg_db:
            subprocess.run(PG + [f"DROP DATABASE IF EXISTS {self.pg_db} WITH (FORCE)"], check=False)


@contextlib.contextmanager
def bridged_server(backend, server_env=None):
    """A server and its bridge, the senders' DNS and the relay; all stopped afterwards."""
    dns = Dns()
    relay = Mailbox()
    bridge = Bridge(backend, dns, relay)
    server = Server(backend, prepare=bridge.prepare, extra_env=server_env)
    try:
        bridge.start(server)
        yield server, bridge, relay
    finally:
        bridge.stop()
        server.stop()
        bridge.remove()
        relay.stop()
        dns.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def setup(request):
    with bridged_server(request.param) as s:
        yield s


def bridged_room(server, token, alias, invite_level=0):
    """A room named by `alias`, with the bridge's bot invited; waits for its welcome."""
    status, room = api(server.url, "POST", "/_matrix/client/v3/createRoom", token, {
        "room_alias_name": alias, "preset": "private_chat", "name": alias,
        "power_level_content_override": {"invite": invite_level},
    })
    assert status == 200, room
    room = room["room_id"]
    status, answer = api(server.url, "POST", f"/_matrix/client/v3/rooms/{q(room)}/invite", token,
                         {"user_id": "@email:localhost"})
    assert status == 200, answer
    wait_event(server.url, token, room, lambda e: "now lands in this room" in e["content"].get("body", ""))
    return room


def ngo_mail(subject, body, message_id, reply_to=None, attachment=None, sign=True, sender="ana@ngo.example",
             name="Ana Costa"):
    m = EmailMessage()
    m["From"] = f"{name} <{sender}>"
    m["To"] = f"paris@{DOMAIN}"
    m["Subject"] = subject
    m["Message-ID"] = f"<{message_id}>"
    if reply_to:
        m["In-Reply-To"] = f"<{reply_to}>"
        m["References"] = f"<{reply_to}>"
    m.set_content(body)
    m.add_alternative(f"<p>{body}</p><script>alert(1)</script>", subtype="html")
    if attachment:
        m.add_attachment(attachment[1], maintype="application", subtype="pdf", filename=attachment[0])
    raw = m.as_bytes(policy=email.policy.SMTP)
    if sign:
        seed = base64.b64encode(NGO_KEY.encode())
        signature = dkim.sign(raw, b"sel", b"ngo.example", seed, signature_algorithm=b"ed25519-sha256",
                              include_headers=[b"from", b"to", b"subject", b"message-id"])
        raw = signature + raw
    return raw


def test_mail_threads_both_ways_and_survive_a_restart(setup):
    server, bridge, relay = setup
    alice = register(server.url, "alice")
    room = bridged_room(server, alice, "paris")

    # In: a signed mail with an HTML body and an attachment, over STARTTLS.
    pdf = b"%PDF-1.4 test attachment " + os.urandom(2048)
    with bridge.smtp() as smtp:
        refused = smtp.sendmail("ana@ngo.example", [f"paris@{DOMAIN}"],
                                ngo_mail("Visa request", "Hello Paris, see attached.", "m1@ngo.example",
                                         attachment=("dossier.pdf", pdf)))
        assert refused == {}
    puppet = "@email_ana=40ngo.example:localhost"
    root = wait_event(server.url, alice, room, lambda e: e["sender"] == puppet and e["content"].get("msgtype") == "m.text")
    content = root["content"]
    assert content["body"].startswith("Visa request\n\nHello Paris, see attached.")
    assert "SPF pass · DKIM pass · DMARC pass" in content["body"]
    assert content["fr.diplomatie.email"]["auth"] == {"spf": "pass", "dkim": "pass", "dmarc": "pass", "pass": True}
    assert "<script>" not in content["formatted_body"] and "<p>Hello Paris, see attached.</p>" in content["formatted_body"]
    status, profile = api(server.url, "GET", f"/_matrix/client/v3/profile/{q(puppet)}/displayname", alice)
    assert profile["displayname"] == "Ana Costa"
    file_event = wait_event(server.url, alice, room, lambda e: e["content"].get("msgtype") == "m.file")
    assert file_event["sender"] == puppet and file_event["content"]["body"] == "dossier.pdf"
    assert file_event["content"]["m.relates_to"]["event_id"] == root["event_id"]
    mxc = file_event["content"]["url"][len("mxc://"):]
    status, downloaded = api(server.url, "GET", f"/_matrix/client/v1/media/download/{mxc}", alice)
    assert status == 200 and downloaded == pdf

    # Out: Alice answers in the thread; the mail continues Ana's thread and is DKIM-signed.
    status, sent = api(server.url, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/t1", alice, {
        "msgtype": "m.text", "body": "Dear Ana, we received it.",
        "m.relates_to": {"rel_type": "m.thread", "event_id": root["event_id"], "is_falling_back": True,
                         "m.in_reply_to": {"event_id": root["event_id"]}},
    })
    assert status == 200, sent
    text = relay.wait_for("ana@ngo.example", "we received it")
    out = email.message_from_string(text, policy=email.policy.default)
    assert out["In-Reply-To"] == "<m1@ngo.example>"
    assert "<m1@ngo.example>" in out["References"]
    assert out["Message-ID"] == f"<{sent['event_id'][1:]}@{DOMAIN}>"
    assert out["Subject"] == "Re: Visa request"
    assert out["From"].addresses[0].addr_spec == f"paris@{DOMAIN}"
    record = bridge.dkim_record().encode()
    assert dkim.verify(text.encode(), dnsfunc=lambda name, timeout=5: record), "the bridge's DKIM signature"

    # The bridge restarts; Ana's answer to Alice's mail still lands in the same thread.
    bridge.stop()
    bridge.start(server)
    with bridge.smtp() as smtp:
        smtp.sendmail("ana@ngo.example", [f"paris@{DOMAIN}"],
                      ngo_mail("Re: Visa request", "Thank you!", "m2@ngo.example", reply_to=out["Message-ID"][1:-1]))
    answer = wait_event(server.url, alice, room, lambda e: "Thank you!" in e["content"].get("body", ""))
    assert answer["sender"] == puppet
    assert answer["content"]["m.relates_to"]["rel_type"] == "m.thread"
    assert answer["content"]["m.relates_to"]["event_id"] == root["event_id"]
    assert answer["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == sent["event_id"]

    # An edit does not leave again.
    api(server.url, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/t1e", alice, {
        "msgtype": "m.text", "body": "* Dear Ana, we received it (edited).",
        "m.new_content": {"msgtype": "m.text", "body": "Dear Ana, we received it (edited)."},
        "m.relates_to": {"rel_type": "m.replace", "event_id": sent["event_id"]},
    })
    # A puppet removed from the room comes back with its sender's next mail.
    status, answer = api(server.url, "POST", f"/_matrix/client/v3/rooms/{q(room)}/kick", alice, {"user_id": puppet})
    assert status == 200, answer
    with bridge.smtp() as smtp:
        smtp.sendmail("ana@ngo.example", [f"paris@{DOMAIN}"], ngo_mail("Again", "Me again.", "m3@ngo.example"))
    again = wait_event(server.url, alice, room, lambda e: "Me again." in e["content"].get("body", ""))
    assert again["sender"] == puppet
    assert not any("(edited)" in text for _, text in relay.messages) and len(relay.messages) == 1


def test_bad_mail_gets_the_right_answer_and_nothing_half_posted(setup):
    server, bridge, relay = setup
    alice = register(server.url, "alice")
    room = bridged_room(server, alice, "paris")
    before = len(messages(server.url, alice, room))

    with bridge.smtp() as smtp:
        # An unknown recipient: 550 at RCPT.
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            smtp.sendmail("ana@ngo.example", [f"nobody@{DOMAIN}"], ngo_mail("x", "x", "u1@ngo.example"))
        assert e.value.recipients[f"nobody@{DOMAIN}"][0] == 550
        # A spoofed sender: partner.example allows only 192.0.2.1 and rejects what fails DMARC.
        with pytest.raises(smtplib.SMTPDataError) as e:
            smtp.sendmail("boss@partner.example", [f"paris@{DOMAIN}"],
                          ngo_mail("Wire the funds", "now", "s1@partner.example", sender="boss@partner.example",
                                   sign=False))
        assert e.value.smtp_code == 550 and b"DMARC fail" in e.value.smtp_error
        # Malformed: no From: at all.
        with pytest.raises(smtplib.SMTPDataError) as e:
            smtp.sendmail("ana@ngo.example", [f"paris@{DOMAIN}"], b"this is not a mail\r\n\r\njust text\r\n")
        assert e.value.smtp_code == 550
        # A loop: one of the bridge's own mails coming back.
        looped = ngo_mail("loop", "loop", "l1@ngo.example").replace(
            b"Subject:", f"X-Diplomatie-Loop: {DOMAIN}\r\nSubject:".encode(), 1)
        with pytest.raises(smtplib.SMTPDataError) as e:
            smtp.sendmail("ana@ngo.example", [f"paris@{DOMAIN}"], looped)
        assert e.value.smtp_code == 554
        # 60 MB: refused at MAIL FROM from its declared size (the limit is 25 MB).
        big = ngo_mail("big", "big", "b1@ngo.example", attachment=("big.pdf", b"\0" * (60 * 1024 * 1024)), sign=False)
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            smtp.sendmail("ana@ngo.example", [f"paris@{DOMAIN}"], big)
        assert e.value.smtp_code == 552

    # 60 MB again, from a client that does not declare it: read to its end, then refused.
    raw = smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=120)
    raw.helo("mx.ngo.example")
    assert raw.mail("ana@ngo.example")[0] == 250
    assert raw.rcpt(f"paris@{DOMAIN}")[0] == 250
    code, _ = raw.data(big)
    assert code == 552
    # A header injection: a display name hiding a line break and a Bcc.
    encoded = base64.b64encode(b"Eve\r\nBcc: victim@evil.example").decode()
    injected = (f"From: =?utf-8?b?{encoded}?= <ana@ngo.example>\r\nTo: paris@{DOMAIN}\r\nSubject: Hi\r\n"
                "Message-ID: <h1@ngo.example>\r\n\r\nhello\r\n").encode()
    assert raw.sendmail("ana@ngo.example", [f"paris@{DOMAIN}"], injected) == {}
    raw.quit()

    event = wait_event(server.url, alice, room, lambda e: "hello" in e["content"].get("body", ""))
    # Only the injected mail was posted (its text and nothing else), and the bridge still runs.
    after = [e for e in messages(server.url, alice, room)[before:] if e["type"] == "m.room.message"]
    assert [e["event_id"] for e in after] == [event["event_id"]], after
    assert bridge.running()
    status, profile = api(server.url, "GET",
                          f"/_matrix/client/v3/profile/{q(event['sender'])}/displayname", alice)
    assert "\n" not in profile["displayname"] and "\r" not in profile["displayname"]
    # The answer goes to the sender only, with no header made of the name.
    api(server.url, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/t2", alice, {
        "msgtype": "m.text", "body": "Who are you?",
        "m.relates_to": {"rel_type": "m.thread", "event_id": event["event_id"]},
    })
    text = relay.wait_for("ana@ngo.example", "Who are you?")
    out = email.message_from_string(text, policy=email.policy.default)
    assert out["Bcc"] is None and "victim@evil.example" not in text
    assert all("victim@evil.example" not in rcpt for rcpt, _ in relay.messages)


def test_auto_replies_are_notices_and_never_answered(setup):
    server, bridge, relay = setup
    alice = register(server.url, "alice")
    room = bridged_room(server, alice, "paris")
    m = EmailMessage()
    m["From"] = "Ana Costa <ana@ngo.example>"
    m["To"] = f"paris@{DOMAIN}"
    m["Subject"] = "Out of office"
    m["Message-ID"] = "<ooo@ngo.example>"
    m["Auto-Submitted"] = "auto-replied"
    m.set_content("I am away until Monday.")
    with bridge.smtp() as smtp:
        smtp.sendmail("ana@ngo.example", [f"paris@{DOMAIN}"], m.as_bytes(policy=email.policy.SMTP))
    notice = wait_event(server.url, alice, room, lambda e: "away until Monday" in e["content"].get("body", ""))
    assert notice["sender"] == "@email:localhost" and notice["content"]["msgtype"] == "m.notice"
    assert "Ana Costa <ana@ngo.example>" in notice["content"]["body"]
    # A bounce (empty reverse path) likewise.
    with bridge.smtp() as smtp:
        m.replace_header("Message-ID", "<bounce@ngo.example>")
        del m["Auto-Submitted"]
        m.replace_header("Subject", "Undelivered Mail Returned to Sender")
        m.replace_header("From", "Mail Delivery System <MAILER-DAEMON@mailer.example>")
        smtp.sendmail("", [f"paris@{DOMAIN}"], m.as_bytes(policy=email.policy.SMTP))
    bounce = wait_event(server.url, alice, room, lambda e: "Undelivered" in e["content"].get("body", ""))
    assert bounce["content"]["msgtype"] == "m.notice"
    # Answering them in their threads sends nothing: they have no human to answer.
    for i, notice_event in enumerate([notice, bounce]):
        status, sent = api(server.url, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/n{i}", alice, {
            "msgtype": "m.text", "body": f"Noted {i}",
            "m.relates_to": {"rel_type": "m.thread", "event_id": notice_event["event_id"],
                             "m.in_reply_to": {"event_id": notice_event["event_id"]}},
        })
        assert status == 200, sent
    # A message after them, to a recipient of the room, shows the bridge has handled both.
    api(server.url, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/cfg", alice,
        {"msgtype": "m.text", "body": "!email to desk@partner.example"})
    wait_event(server.url, alice, room, lambda e: "also go to desk@partner.example" in e["content"].get("body", ""))
    api(server.url, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/last", alice,
        {"msgtype": "m.text", "body": "Last one"})
    relay.wait_for("desk@partner.example", "Last one")
    assert [rcpt for rcpt, _ in relay.messages] == [["desk@partner.example"]], relay.messages


def test_room_commands_and_recipients(setup):
    server, bridge, relay = setup
    alice = register(server.url, "alice")
    bob = register(server.url, "bob")
    # A room whose bot may not invite: mail is posted by the bot, naming its sender.
    room = bridged_room(server, alice, "consulat", invite_level=100)

    def say(token, txn, body):
        status, sent = api(server.url, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}",
                           token, {"msgtype": "m.text", "body": body})
        assert status == 200, sent
        return sent["event_id"]

    status, _ = api(server.url, "POST", f"/_matrix/client/v3/rooms/{q(room)}/invite", alice, {"user_id": "@bob:localhost"})
    status, _ = api(server.url, "POST", f"/_matrix/client/v3/join/{q(room)}", bob, {})
    assert status == 200
    # Only managers change the bridging.
    say(bob, "b1", "!email to bob@elsewhere.example")
    wait_event(server.url, alice, room, lambda e: "Only the room's managers" in e["content"].get("body", ""))
    say(alice, "a1", "!email address consulat-lyon")
    wait_event(server.url, alice, room, lambda e: f"consulat-lyon@{DOMAIN} now lands" in e["content"].get("body", ""))
    say(alice, "a2", "!email to desk@partner.example, office@ngo.example")
    wait_event(server.url, alice, room, lambda e: "also go to desk@partner.example" in e["content"].get("body", ""))

    # A new message goes to both; a file too, as an attachment.
    say(bob, "b2", "Meeting moved to Thursday")
    text = relay.wait_for("desk@partner.example", "Meeting moved to Thursday")
    assert "office@ngo.example" in email.message_from_string(text, policy=email.policy.default)["To"]
    status, upload = api(server.url, "POST", "/_matrix/media/v3/upload?filename=agenda.txt", bob,
                         data=b"agenda: 1. visas", content_type="text/plain")
    assert status == 200
    api(server.url, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/b3", bob,
        {"msgtype": "m.file", "body": "agenda.txt", "url": upload["content_uri"]})
    text = relay.wait_for("office@ngo.example", "agenda.txt")
    out = email.message_from_string(text, policy=email.policy.default)
    attached = [p for p in out.iter_attachments() if p.get_filename() == "agenda.txt"]
    assert attached and attached[0].get_content().strip() == "agenda: 1. visas"

    # A recipient the relay refuses for good: the room is told, and what follows still leaves.
    say(alice, "a3", "!email to refused@partner.example")
    wait_event(server.url, alice, room, lambda e: "also go to refused@partner.example" in e["content"].get("body", ""))
    say(bob, "b4", "Anyone there?")
    wait_event(server.url, alice, room,
               lambda e: "Not sent by e-mail to refused@partner.example: 550" in e["content"].get("body", ""))
    say(alice, "a4", "!email to desk@partner.example")
    wait_event(server.url, alice, room, lambda e: "also go to desk@partner.example." in e["content"].get("body", ""))
    say(bob, "b5", "Still on for Thursday")
    relay.wait_for("desk@partner.example", "Still on for Thursday")

    # Mail to the new address lands, posted by the bot (it may not invite here).
    with bridge.smtp() as smtp:
        raw = ngo_mail("Agenda", "Noted.", "c1@ngo.example").replace(
            f"paris@{DOMAIN}".encode(), f"consulat-lyon@{DOMAIN}".encode())
        smtp.sendmail("ana@ngo.example", [f"consulat-lyon@{DOMAIN}"], raw)
    posted = wait_event(server.url, alice, room, lambda e: "Noted." in e["content"].get("body", ""))
    assert posted["sender"] == "@email:localhost"
    assert posted["content"]["body"].startswith("Ana Costa <ana@ngo.example>\n")


ORG = """
users:
  - { localpart: alice, password: pw, group: paris, clearance: DR }
groups:
  - { slug: paris, name: "Ambassade à Paris", managers: [alice] }
"""


def login(server, user):
    status, answer = api(server.url, "POST", "/_matrix/client/v3/login", body={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": "pw"})
    assert status == 200, answer
    return answer["access_token"]


def import_organisation(server, yaml):
    """Imports an organisation (YAML) as an administrator made with the command line."""
    out = server.command("user", "create", "setup", "--password", "pw", "--admin")
    assert out.returncode == 0, out.stderr
    status, answer = api(server.url, "POST", "/_diplomatie/admin/v1/import", login(server, "setup"),
                         data=yaml.encode(), content_type="application/yaml")
    assert status == 200, answer


def test_a_formal_letter_to_an_external_address_and_dr_never_bridged(setup):
    server, bridge, relay = setup
    import_organisation(server, ORG)
    alice = login(server, "alice")

    letter = {"kind": "formal_letter", "from": "paris", "subject": "Invitation au colloque",
              "body": "Madame la Directrice,\nnous avons l'honneur de vous inviter.", "tags": ["colloque"],
              "external": ["directrice@ngo.example"]}
    # Without the bridge in the group's correspondence room, nothing could leave: refused.
    status, answer = api(server.url, "POST", "/_diplomatie/client/v1/correspondence", alice, letter)
    assert status == 403 and "No e-mail bridge" in answer["error"], answer

    # The group's correspondence room, bridged by its manager, takes the group's address.
    status, resolved = api(server.url, "GET", f"/_matrix/client/v3/directory/room/{q('#g.paris.correspondence:localhost')}")
    room = resolved["room_id"]
    status, answer = api(server.url, "POST", f"/_matrix/client/v3/rooms/{q(room)}/invite", alice,
                         {"user_id": "@email:localhost"})
    assert status == 200, answer
    wait_event(server.url, alice, room,
               lambda e: f"paris.correspondence@{DOMAIN} now lands" in e["content"].get("body", ""))

    # DR never leaves by e-mail.
    status, answer = api(server.url, "POST", "/_diplomatie/client/v1/correspondence", alice,
                         dict(letter, classification="DR"))
    assert status == 403 and answer["errcode"] == "M_FORBIDDEN", answer
    status, answer = api(server.url, "POST", "/_diplomatie/client/v1/correspondence", alice,
                         dict(letter, external=["not an address"]))
    assert status == 400 and answer["errcode"] == "M_INVALID_PARAM", answer

    # NP: it goes out as a formal letter, its signed record attached.
    status, sent = api(server.url, "POST", "/_diplomatie/client/v1/correspondence", alice, letter)
    assert status == 200, sent
    reference = sent["reference"]
    text = relay.wait_for("directrice@ngo.example", "nous avons l'honneur")
    out = email.message_from_string(text, policy=email.policy.default)
    assert reference in out["Subject"] and "Invitation au colloque" in out["Subject"]
    assert out["From"].addresses[0].addr_spec == f"paris.correspondence@{DOMAIN}"
    assert "diplomatie verify record.json" in out.get_body(("plain",)).get_content()
    attached = [p for p in out.iter_attachments() if p.get_filename() == "record.json"]
    record = json.loads(attached[0].get_content())
    status, export = api(server.url, "GET", f"/_diplomatie/client/v1/correspondence/{q(reference)}", alice)
    assert status == 200 and record == export["record"] and record["external"] == ["directrice@ngo.example"]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump({"record": record, "public_keys": export["public_keys"]}, f)
        f.flush()
        assert server.command("verify", f.name).returncode == 0

    # The answer comes back into the correspondence room, in the letter's thread.
    with bridge.smtp() as smtp:
        answer_mail = ngo_mail("Re: Invitation", "Avec plaisir.", "r1@ngo.example",
                               reply_to=out["Message-ID"][1:-1], sender="directrice@ngo.example", name="La Directrice")
        smtp.sendmail("directrice@ngo.example", [f"paris.correspondence@{DOMAIN}"],
                      answer_mail.replace(f"paris@{DOMAIN}".encode(), f"paris.correspondence@{DOMAIN}".encode()))
    reply = wait_event(server.url, alice, room, lambda e: "Avec plaisir." in e["content"].get("body", ""))
    origin = wait_event(server.url, alice, room,
                        lambda e: e["content"].get("fr.diplomatie.correspondence", {}).get("reference") == reference)
    assert reply["content"]["m.relates_to"]["event_id"] == origin["event_id"]

    # A DR room: the bot may not even be invited; a bridged room raised to DR is left at once.
    status, dr_room = api(server.url, "POST", "/_matrix/client/v3/createRoom", alice, {
        "preset": "private_chat", "initial_state": [
            {"type": "fr.diplomatie.classification", "state_key": "", "content": {"level": "DR"}}]})
    assert status == 200, dr_room
    status, answer = api(server.url, "POST", f"/_matrix/client/v3/rooms/{q(dr_room['room_id'])}/invite", alice,
                         {"user_id": "@email:localhost"})
    assert status == 403, answer
    np_room = bridged_room(server, alice, "bientot-dr")
    status, answer = api(server.url, "PUT", f"/_matrix/client/v3/rooms/{q(np_room)}/state/m.room.encryption/",
                         alice, {"algorithm": "m.megolm.v1.aes-sha2"})
    assert status == 200, answer
    # A bridged room cannot be raised to DR while the bridge is in it (the portal's rule).
    dr = {"level": "DR"}
    path = f"/_matrix/client/v3/rooms/{q(np_room)}/state/fr.diplomatie.classification/"
    status, answer = api(server.url, "PUT", path, alice, dr)
    assert status == 403 and "@email:localhost" in answer["error"], answer
    # Once its managers remove the bridge, its address leads nowhere, and it may become DR.
    status, answer = api(server.url, "POST", f"/_matrix/client/v3/rooms/{q(np_room)}/kick", alice,
                         {"user_id": "@email:localhost"})
    assert status == 200, answer
    deadline = time.time() + 20
    while time.time() < deadline:
        with bridge.smtp() as smtp:
            try:
                smtp.sendmail("ana@ngo.example", [f"bientot-dr@{DOMAIN}"], ngo_mail("x", "x", "dr1@ngo.example"))
            except smtplib.SMTPRecipientsRefused:
                break
            except smtplib.SMTPDataError as e:
                # Before the bridge has heard of its removal, the post fails: try again later.
                assert e.smtp_code == 451, e
        time.sleep(0.3)
    else:
        raise AssertionError("a room the bridge was removed from is still bridged")
    status, answer = api(server.url, "PUT", path, alice, dr)
    assert status == 200, answer


def test_the_application_service_api_answers_only_the_homeserver(setup):
    server, bridge, relay = setup
    alice = register(server.url, "alice")
    base = f"http://127.0.0.1:{bridge.as_port}"
    status, answer = api(base, "PUT", "/_matrix/app/v1/transactions/1", body={"events": []})
    assert status == 401 and answer["errcode"] == "M_UNAUTHORIZED"
    status, answer = api(base, "PUT", "/_matrix/app/v1/transactions/1", "wrong", {"events": []})
    assert status == 403 and answer["errcode"] == "M_FORBIDDEN"
    # Bad input gets the spec's errors.
    with open(os.path.join(server.dir, "appservices", "email.yaml")) as f:
        hs_token = next(line.split(":", 1)[1].strip() for line in f if line.startswith("hs_token:"))
    status, answer = api(base, "PUT", "/_matrix/app/v1/transactions/2", hs_token, {"events": "none"})
    assert status == 400 and answer["errcode"] == "M_BAD_JSON", answer
    status, answer = api(base, "PUT", "/_matrix/app/v1/transactions/3", hs_token, data=b"{", content_type="application/json")
    assert status == 400 and answer["errcode"] in ("M_NOT_JSON", "M_BAD_JSON"), answer
    status, answer = api(base, "GET", "/_matrix/app/v1/transactions/2", hs_token)
    assert status == 405 and answer["errcode"] == "M_UNRECOGNIZED", answer
    status, answer = api(base, "GET", "/_matrix/app/v1/nothing", hs_token)
    assert status == 404 and answer["errcode"] == "M_UNRECOGNIZED", answer
    # Through the homeserver: the protocol, and the puppet standing for an address.
    status, protocols = api(server.url, "GET", "/_matrix/client/v3/thirdparty/protocols", alice)
    assert status == 200 and "email" in protocols, protocols
    status, users = api(server.url, "GET", "/_matrix/client/v3/thirdparty/user/email?address=Ana%40NGO.example", alice)
    assert status == 200 and users[0]["userid"] == "@email_ana=40ngo.example:localhost", users
    # And the server's ping reaches it, asked with the bridge's own token.
    with open(os.path.join(server.dir, "appservices", "email.yaml")) as f:
        as_token = next(line.split(":", 1)[1].strip() for line in f if line.startswith("as_token:"))
    status, answer = api(server.url, "POST", "/_matrix/client/v1/appservice/email/ping", as_token, {})
    assert status == 200 and "duration_ms" in answer, answer


def test_unauthenticated_mail_marked_when_so_configured(setup):
    server, bridge, relay = setup
    alice = register(server.url, "alice")
    room = bridged_room(server, alice, "paris")
    bridge.stop()
    bridge.env["DIPLOMATIE_EMAIL_AUTH__ON_FAIL"] = "mark"
    bridge.start(server)
    with bridge.smtp() as smtp:
        smtp.sendmail("boss@partner.example", [f"paris@{DOMAIN}"],
                      ngo_mail("Wire the funds", "now please", "s2@partner.example", sender="boss@partner.example",
                               sign=False))
    posted = wait_event(server.url, alice, room, lambda e: "now please" in e["content"].get("body", ""))
    assert posted["content"]["body"].startswith("⚠ Unauthenticated sender\nWire the funds")
    assert posted["content"]["fr.diplomatie.email"]["auth"] == {"spf": "fail", "dkim": "none", "dmarc": "fail",
                                                                "pass": False}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_attachment_the_server_refuses_refuses_the_whole_mail(backend):
    with bridged_server(backend, {"DIPLOMATIE_MEDIA__MAX_UPLOAD_BYTES": "100000"}) as (server, bridge, relay):
        alice = register(server.url, "alice")
        room = bridged_room(server, alice, "paris")
        before = len(messages(server.url, alice, room))
        big = ngo_mail("Scan", "The scan, attached.", "big1@ngo.example", attachment=("scan.pdf", os.urandom(200_000)))
        with bridge.smtp() as smtp:
            with pytest.raises(smtplib.SMTPDataError) as e:
                smtp.sendmail("ana@ngo.example", [f"paris@{DOMAIN}"], big)
            assert e.value.smtp_code == 552
            # Nothing of it was posted; a smaller one is.
            assert smtp.sendmail("ana@ngo.example", [f"paris@{DOMAIN}"],
                                 ngo_mail("Scan", "Smaller.", "small1@ngo.example",
                                          attachment=("scan.pdf", os.urandom(20_000)))) == {}
        wait_event(server.url, alice, room, lambda e: e["content"].get("msgtype") == "m.file")
        posted = [e for e in messages(server.url, alice, room)[before:] if e["type"] == "m.room.message"]
        assert [e["content"]["body"].split("\n\n")[1] for e in posted if e["content"]["msgtype"] == "m.text"] == \
            ["Smaller."], posted


CRISIS_ORG = """
users:
  - {localpart: coord, password: pw}
  - {localpart: absent, password: pw, email: absent@agents.example}
  - {localpart: present, password: pw, email: present@agents.example}
"""


def test_a_crisis_alert_is_mailed_to_the_members_not_seen_lately(setup):
    server, bridge, relay = setup
    import_organisation(server, CRISIS_ORG)
    coord = login(server, "coord")
    login(server, "present")  # a device, seen now

    status, cell = api(server.url, "POST", "/_diplomatie/client/v1/crisis", coord,
                       {"name": "Inondations", "members": ["@absent:localhost", "@present:localhost"]})
    assert status == 200, cell
    situation = cell["rooms"]["situation"]
    # The bridge's bot was invited into the situation room, and joined it.
    wait_event(server.url, coord, situation, lambda e: e["sender"] == "@email:localhost")

    status, sent = api(server.url, "POST", f"/_diplomatie/client/v1/crisis/{q(cell['cell_id'])}/alert", coord,
                       {"body": "Évacuation de la rive gauche"})
    assert status == 200, sent
    status, event = api(server.url, "GET", f"/_matrix/client/v3/rooms/{q(situation)}/event/{q(sent['event_id'])}", coord)
    assert event["content"]["unreached"] == ["@absent:localhost"], event

    text = relay.wait_for("absent@agents.example", "rive gauche")
    mail = email.message_from_string(text, policy=email.policy.default)
    assert mail["Subject"] == "[ALERTE] Inondations"
    assert mail["From"].addresses[0].addr_spec == f"alerte@{DOMAIN}"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert "DKIM-Signature" in mail
    # Only the unreached: the member seen now gets no mail, and the alert is mailed once.
    time.sleep(1)
    assert not [m for m in relay.messages if "present@agents.example" in m[0]]
    assert len([m for m in relay.messages if "absent@agents.example" in m[0]]) == 1
    # Nobody but the bridge (or an administrator) reads the addresses.
    status, answer = api(server.url, "GET", f"/_diplomatie/client/v1/crisis/{q(cell['cell_id'])}/alerts/"
                         f"{q(sent['event_id'])}/recipients", coord)
    assert status == 403 and answer["errcode"] == "M_FORBIDDEN", answer
