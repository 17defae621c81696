"""Benchmark of the e-mail bridge (see clients/load/email-bench.sh): starts the server and the
bridge given as SERVER_BIN and BRIDGE_BIN on loopback (SQLite), a relay (aiosmtpd) and the
senders' DNS (dnslib: SPF passes), then measures

1. inbound: N_MAILS mails sent by CONCURRENCY SMTP connections at once (as a relay delivering
   a peak would), mails per second accepted and posted (each 250 comes after its post), and the
   time from a mail handed to SMTP to the message seen by a client long-polling /sync (p50/p99),
   and from its 250 (DATA accepted) to that client seeing it;
2. outbound: N_OUT messages sent one at a time in a room that mails its recipients, the time
   from the send request to the relay receiving the mail (p50/p99);
3. the bridge's resident memory (current and peak).

python3 email_bench.py (environment: SERVER_BIN, BRIDGE_BIN, N_MAILS, CONCURRENCY, N_SENDERS,
N_OUT)."""

import json
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from aiosmtpd.controller import Controller
from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer

SERVER_BIN, BRIDGE_BIN = os.environ["SERVER_BIN"], os.environ["BRIDGE_BIN"]
N_MAILS = int(os.environ.get("N_MAILS", "2000"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "16"))
N_SENDERS = int(os.environ.get("N_SENDERS", "50"))
N_OUT = int(os.environ.get("N_OUT", "100"))
DOMAIN = "ministere.test"
# Every event of the burst in the timeline, however many arrive between two syncs.
FILTER = urllib.parse.quote(json.dumps({"room": {"timeline": {"limit": 5000}}}))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, method, path, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def rss_kib(pid):
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


class Zone(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if name == "ngo.example" and request.q.qtype == QTYPE.TXT:
            reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT("v=spf1 ip4:127.0.0.1 -all"), ttl=3600))
        elif name != "ngo.example":
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


received = {}


class Relay:
    async def handle_DATA(self, server, session, envelope):
        text = envelope.content.decode("utf-8", "replace")
        for line in text.splitlines():
            if line.startswith("Subject: out-"):
                received[line[len("Subject: "):].strip()] = time.monotonic()
        return "250 OK"


def main():
    work = tempfile.mkdtemp(prefix="email-bench-")
    procs = []
    try:
        dns_port, relay_port, as_port = free_port(), free_port(), free_port()
        dns = [DNSServer(Zone(), port=dns_port, address="127.0.0.1", tcp=tcp,
                         logger=DNSLogger(logf=lambda _: None)) for tcp in (False, True)]
        for d in dns:
            d.start_thread()
        relay = Controller(Relay(), hostname="127.0.0.1", port=relay_port)
        relay.start()
        benv = {k: v for k, v in os.environ.items() if not k.startswith("DIPLOMATIE_")}
        benv.update({
            "DIPLOMATIE_EMAIL_DATA_DIR": f"{work}/bridge", "DIPLOMATIE_EMAIL_LISTEN": f"127.0.0.1:{as_port}",
            "DIPLOMATIE_EMAIL_SMTP_LISTEN": "127.0.0.1:0", "DIPLOMATIE_EMAIL_MAIL_DOMAIN": DOMAIN,
            "DIPLOMATIE_EMAIL_RELAY__PORT": str(relay_port),
            "DIPLOMATIE_EMAIL_AUTH__NAMESERVERS": f'["127.0.0.1:{dns_port}"]',
            "DIPLOMATIE_EMAIL_REGISTRATION": f"{work}/server/appservices/email.yaml",
            "DIPLOMATIE_EMAIL_LOG": "warn,diplomatie_email::listening=info", "NO_COLOR": "1",
        })
        subprocess.run([BRIDGE_BIN, "register"], env=benv, check=True, capture_output=True)
        port = free_port()
        senv = {k: v for k, v in os.environ.items() if not k.startswith("DIPLOMATIE_")}
        senv.update({"DIPLOMATIE_DATA_DIR": f"{work}/server", "DIPLOMATIE_LISTEN": f"127.0.0.1:{port}",
                     "DIPLOMATIE_SERVER_NAME": "localhost", "DIPLOMATIE_REGISTRATION__ENABLED": "true",
                     "DIPLOMATIE_RATE_LIMITS__ENABLED": "false", "DIPLOMATIE_LOG": "warn"})
        server = subprocess.Popen([SERVER_BIN], env=senv, stdin=subprocess.DEVNULL)
        procs.append(server)
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/_matrix/client/versions", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        benv["DIPLOMATIE_EMAIL_HOMESERVER_URL"] = url
        bridge = subprocess.Popen([BRIDGE_BIN], env=benv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        procs.append(bridge)
        smtp_port = None
        for line in bridge.stdout:
            if "bridge is listening" in line:
                smtp_port = int(next(w for w in line.split() if w.startswith("smtp=")).rsplit(":", 1)[1])
                break
        assert smtp_port, "the bridge did not start"
        threading.Thread(target=lambda: [None for _ in bridge.stdout], daemon=True).start()

        # A room with the bridge.
        reg = {"username": "alice", "password": "secret", "auth": {"type": "m.login.dummy"}}
        try:
            token = call(url, "POST", "/_matrix/client/v3/register", body=reg)["access_token"]
        except urllib.error.HTTPError:
            session = json.loads(urllib.request.urlopen(urllib.request.Request(
                url + "/_matrix/client/v3/register", data=b"{}", method="POST")).read())["session"]
            reg["auth"]["session"] = session
            token = call(url, "POST", "/_matrix/client/v3/register", body=reg)["access_token"]
        room = call(url, "POST", "/_matrix/client/v3/createRoom", token,
                    {"room_alias_name": "paris", "preset": "private_chat"})["room_id"]
        q = urllib.parse.quote(room, safe="")
        call(url, "POST", f"/_matrix/client/v3/rooms/{q}/invite", token, {"user_id": "@email:localhost"})
        since = call(url, "GET", "/_matrix/client/v3/sync?timeout=0", token)["next_batch"]
        deadline = time.time() + 30
        while time.time() < deadline:
            sync = call(url, "GET", f"/_matrix/client/v3/sync?timeout=5000&since={since}", token)
            since = sync["next_batch"]
            events = sync.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
            if any("now lands" in e["content"].get("body", "") for e in events):
                break

        def mail(sender, n):
            return (f"From: Sender {sender} <s{sender}@ngo.example>\r\nTo: paris@{DOMAIN}\r\n"
                    f"Subject: load {n}\r\nMessage-ID: <load-{n}@ngo.example>\r\n"
                    f"Content-Type: text/plain; charset=utf-8\r\n\r\n" + "Corps du message de charge.\r\n" * 20)

        # Warm-up: each sender's puppet is made (registered, invited, joined) by its first mail.
        with smtplib.SMTP("127.0.0.1", smtp_port) as s:
            for sender in range(N_SENDERS):
                s.sendmail(f"s{sender}@ngo.example", [f"paris@{DOMAIN}"], mail(sender, f"warm-{sender}"))
        since = call(url, "GET", "/_matrix/client/v3/sync?timeout=0", token)["next_batch"]

        # 1. Inbound burst, watched by a /sync client.
        handed, accepted, seen = {}, {}, {}
        done = threading.Event()

        def watch():
            nonlocal since
            while not done.is_set():
                sync = call(url, "GET", f"/_matrix/client/v3/sync?timeout=10000&since={since}&filter={FILTER}", token)
                now = time.monotonic()
                since = sync["next_batch"]
                timeline = sync.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {})
                for e in timeline.get("events", []):
                    mid = e["content"].get("fr.diplomatie.email", {}).get("message_id", "")
                    if mid.startswith("load-"):
                        seen.setdefault(mid, now)
                if len(seen) >= N_MAILS:
                    done.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(0.5)

        def connection(worker):
            with smtplib.SMTP("127.0.0.1", smtp_port) as s:
                for n in range(worker, N_MAILS, CONCURRENCY):
                    body = mail(n % N_SENDERS, n)
                    handed[f"load-{n}@ngo.example"] = time.monotonic()
                    s.sendmail(f"s{n % N_SENDERS}@ngo.example", [f"paris@{DOMAIN}"], body)
                    accepted[f"load-{n}@ngo.example"] = time.monotonic()

        start = time.monotonic()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(connection, range(CONCURRENCY)))
        elapsed = time.monotonic() - start
        done.wait(60)
        done.set()
        to_sync = [seen[m] - handed[m] for m in handed if m in seen]
        after_250 = [max(0.0, seen[m] - accepted[m]) for m in accepted if m in seen]
        print(f"inbound: {N_MAILS} mails from {N_SENDERS} senders over {CONCURRENCY} connections in {elapsed:.2f} s: "
              f"{N_MAILS / elapsed:.0f} mails/s accepted and posted; seen in /sync: {len(seen)}")
        print(f"  handed to SMTP -> seen in /sync: p50 {percentile(to_sync, 50) * 1000:.1f} ms, "
              f"p99 {percentile(to_sync, 99) * 1000:.1f} ms")
        print(f"  DATA accepted (250) -> seen in /sync: p50 {percentile(after_250, 50) * 1000:.1f} ms, "
              f"p99 {percentile(after_250, 99) * 1000:.1f} ms")

        # 2. Outbound latency.
        out_room = call(url, "POST", "/_matrix/client/v3/createRoom", token,
                        {"room_alias_name": "sortant", "preset": "private_chat"})["room_id"]
        oq = urllib.parse.quote(out_room, safe="")
        call(url, "POST", f"/_matrix/client/v3/rooms/{oq}/invite", token, {"user_id": "@email:localhost"})
        time.sleep(1)
        call(url, "PUT", f"/_matrix/client/v3/rooms/{oq}/send/m.room.message/cfg", token,
             {"msgtype": "m.text", "body": "!email to desk@partner.example"})
        time.sleep(1)
        latencies = []
        for n in range(N_OUT):
            subject = f"out-{n}"
            sent = time.monotonic()
            call(url, "PUT", f"/_matrix/client/v3/rooms/{oq}/send/m.room.message/o{n}", token,
                 {"msgtype": "m.text", "body": subject})
            while subject not in received and time.monotonic() - sent < 30:
                time.sleep(0.0005)
            if subject in received:
                latencies.append(received[subject] - sent)
        print(f"outbound: {len(latencies)}/{N_OUT} mails at the relay; send -> relay: "
              f"p50 {percentile(latencies, 50) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f} ms")
        rss, peak = rss_kib(bridge.pid)
        print(f"bridge resident memory: {rss / 1024:.1f} MiB now, {peak / 1024:.1f} MiB peak")
        relay.stop()
        for d in dns:
            d.stop()
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
