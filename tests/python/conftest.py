"""Starts the real `diplomatie` binary for the real-client tests, on both storage backends."""

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

BIN = os.environ.get("DIPLOMATIE_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug", "diplomatie"))
PG = ["psql", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1", "-q", "-c"]


def call(method, url, token=None, body=None):
    """(status, JSON answer) of an HTTP request."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url, proc, what, timeout):
    """Polls `url` until it answers; fails when `proc` exits or after `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(what + " did not start")
            time.sleep(0.2)


def stop_process(proc, directory, keep):
    """Stops `proc` (terminate, then kill) and removes its directory unless `keep`."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)


class Server:
    def __init__(self, backend, federating=False, extra_env=None, prepare=None):
        self.backend = backend
        self.dir = tempfile.mkdtemp(prefix="diplomatie-nio-")
        if prepare:
            # Files the server must find in its data directory when it starts.
            prepare(self.dir)
        self.pg_db = None
        self.server_name = "localhost"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIPLOMATIE_")}
        if federating:
            # Named after its built-in HTTPS listener (self-signed certificate); certificates
            # of others are not checked on loopback addresses only.
            tls_port = free_port()
            self.server_name = f"127.0.0.1:{tls_port}"
            env.update({
                "DIPLOMATIE_FEDERATION__ENABLED": "true",
                "DIPLOMATIE_FEDERATION__TLS_LISTEN": self.server_name,
                "DIPLOMATIE_FEDERATION__INSECURE_LOOPBACK_TLS": "true",
                # Loopback, which federation never reaches by default.
                "DIPLOMATIE_FEDERATION__IP_RANGE_ALLOWLIST": '["127.0.0.0/8"]',
                "DIPLOMATIE_FEDERATION__MAX_BACKOFF_MS": "2000",
            })
        env.update({
            "DIPLOMATIE_SERVER_NAME": self.server_name,
            # A port the system chooses, read from the server's log (a port chosen here
            # beforehand could be taken by another server in between).
            "DIPLOMATIE_LISTEN": "127.0.0.1:0",
            "DIPLOMATIE_DATA_DIR": self.dir,
            "DIPLOMATIE_REGISTRATION__ENABLED": "true",
            "DIPLOMATIE_RATE_LIMITS__ENABLED": "false",
            "DIPLOMATIE_LOG": os.environ.get("DIPLOMATIE_TEST_LOG", "warn") + ",diplomatie::listening=info",
            "NO_COLOR": "1",
        })
        env.update(extra_env or {})
        if backend == "postgres":
            self.pg_db = "dip_nio_" + uuid.uuid4().hex[:12]
            subprocess.run(PG + [f"CREATE DATABASE {self.pg_db}"], check=True)
            env["DIPLOMATIE_DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{self.pg_db}"
        self.env = env
        self.proc = subprocess.Popen([BIN], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        listening = queue.Queue()

        def read_log():
            for line in self.proc.stdout:
                if "Diplomatie is listening" in line:
                    addr = next((w[len("addr="):] for w in line.split() if w.startswith("addr=")), None)
                    listening.put(addr)
                else:
                    sys.stdout.write(line)
            listening.put(None)

        threading.Thread(target=read_log, daemon=True).start()
        addr = listening.get(timeout=30)
        if addr is None:
            raise RuntimeError("diplomatie did not start")
        self.port = int(addr.rsplit(":", 1)[1])
        self.url = f"http://{addr}"
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/_matrix/client/versions", timeout=1)
                break
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("diplomatie did not start")
                time.sleep(0.05)

    def command(self, *args, stdin=None):
        """Runs `diplomatie <args>` on this server's data directory and database."""
        return subprocess.run([BIN, *args], env=self.env, input=stdin, capture_output=True, text=True)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.pg_db:
            subprocess.run(PG + [f"DROP DATABASE IF EXISTS {self.pg_db} WITH (FORCE)"], check=False)


@pytest.fixture(params=["sqlite", "postgres"])
def server(request):
    s = Server(request.param)
    yield s
    s.stop()


SYNAPSE_PYTHON = os.environ.get(
    "SYNAPSE_PYTHON", os.path.expanduser("~/.cache/diplomatie-tests/synapse-venv/bin/python")
)


class Synapse:
    """A Synapse homeserver (from PyPI, `tests/run` installs it) on loopback, SQLite, named
    `127.0.0.1:<port>` after its HTTPS listener; it accepts any certificate (loopback only)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="synapse-")
        tls_port, self.port = free_port(), free_port()
        self.server_name = f"127.0.0.1:{tls_port}"
        self.url = f"http://127.0.0.1:{self.port}"
        d = self.dir
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", f"{d}/tls.key", "-out", f"{d}/tls.crt"],
            check=True, capture_output=True,
        )
        with open(f"{d}/log.yaml", "w") as f:
            f.write("version: 1\nformatters: {p: {format: '%(asctime)s %(name)s %(levelname)s %(message)s'}}\n"
                    "handlers: {f: {class: logging.FileHandler, filename: " + d + "/synapse.log, formatter: p}}\n"
                    "root: {level: INFO, handlers: [f]}\ndisable_existing_loggers: false\n")
        limits = "{per_second: 1000, burst_count: 1000}"
        with open(f"{d}/homeserver.yaml", "w") as f:
            f.write(f"""server_name: "{self.server_name}"
pid_file: {d}/homeserver.pid
report_stats: false
listeners:
  - {{port: {tls_port}, bind_addresses: ['127.0.0.1'], type: http, tls: true, resources: [{{names: [federation, client]}}]}}
  - {{port: {self.port}, bind_addresses: ['127.0.0.1'], type: http, tls: false, resources: [{{names: [client]}}]}}
tls_certificate_path: {d}/tls.crt
tls_private_key_path: {d}/tls.key
federation_verify_certificates: false
federation_ip_range_blacklist: []
ip_range_blacklist: []
ip_range_whitelist: ['127.0.0.1']
trusted_key_servers: []
suppress_key_server_warning: true
database: {{name: sqlite3, args: {{database: {d}/homeserver.db}}}}
log_config: {d}/log.yaml
media_store_path: {d}/media
signing_key_path: {d}/signing.key
macaroon_secret_key: "{uuid.uuid4().hex}"
form_secret: "{uuid.uuid4().hex}"
registration_shared_secret: "{uuid.uuid4().hex}"
enable_registration: true
enable_registration_without_verification: true
rc_message: {limits}
rc_registration: {limits}
rc_login: {{address: {limits}, account: {limits}, failed_attempts: {limits}}}
rc_joins: {{local: {limits}, remote: {limits}}}
rc_invites: {{per_room: {limits}, per_user: {limits}, per_sender: {limits}}}
rc_federation: {{window_size: 1000, sleep_limit: 1000, sleep_delay: 1, reject_limit: 1000, concurrent: 100}}
""")
        base = [SYNAPSE_PYTHON, "-m", "synapse.app.homeserver", "--config-path", f"{d}/homeserver.yaml"]
        subprocess.run(base + ["--generate-keys"], check=True, capture_output=True, cwd=d)
        self.proc = subprocess.Popen(base, cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until_up(self.url + "/_matrix/client/versions", self.proc, f"synapse (see {d}/synapse.log)", 90)

    def stop(self):
        stop_process(self.proc, self.dir, os.environ.get("KEEP_SYNAPSE"))


@pytest.fixture(params=["sqlite", "postgres"])
def federating_server(request):
    s = Server(request.param, federating=True)
    yield s
    s.stop()


@pytest.fixture
def synapse():
    s = Synapse()
    yield s
    s.stop()


SYDENT_PYTHON = os.environ.get(
    "SYDENT_PYTHON", os.path.expanduser("~/.cache/diplomatie-tests/sydent-venv/bin/python")
)


class Mailbox:
    """An SMTP server on loopback (aiosmtpd) that keeps every message it receives."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        self.messages = []
        box = self

        class Keep:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                # A mailbox that does not exist, for the senders' handling of refusals.
                if address.startswith("refused@"):
                    return "550 5.1.1 No such mailbox"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):
                box.messages.append((envelope.rcpt_tos, envelope.content.decode("utf-8", "replace")))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Keep(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def wait_for(self, to, containing, timeout=20):
        """The first message to `to` whose text holds `containing`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for rcpt, text in self.messages:
                if to in rcpt and containing in text:
                    return text
            time.sleep(0.1)
        raise AssertionError(f"no mail to {to} with {containing!r}; got {self.messages}")

    def stop(self):
        self.controller.stop()


class Sydent:
    """matrix-org's identity server (from PyPI, `tests/run` installs it) on loopback, plain
    HTTP, sending its mail to `mailbox`. Its e-mail templates are the test's own (the package
    ships none): a line `token=...` or `invite=...` the test reads back."""

    def __init__(self, mailbox):
        self.dir = tempfile.mkdtemp(prefix="sydent-")
        d = self.dir
        self.port = free_port()
        self.server_name = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.server_name}"
        os.makedirs(f"{d}/templates/matrix-org")
        with open(f"{d}/templates/matrix-org/verification_template.eml", "w") as f:
            f.write("From: %(from)s\nTo: %(to)s\nSubject: Validation\n\ntoken=%(token)s\n")
        with open(f"{d}/templates/matrix-org/invite_template.eml", "w") as f:
            f.write("From: %(from)s\nTo: %(to)s\nSubject: Invitation\n\ninvite=%(token)s room=%(room_name)s\n")
        with open(f"{d}/sydent.conf", "w") as f:
            f.write(f"""[general]
server.name = {self.server_name}
pidfile.path = {d}/sydent.pid
templates.path = {d}/templates
ip.whitelist = 127.0.0.0/8
[db]
db.file = {d}/sydent.db
[http]
clientapi.http.bind_address = 127.0.0.1
clientapi.http.port = {self.port}
federation.verifycerts = False
# Where invites' key_validity_url points (relative without it).
client_http_base = {self.url}
[email]
email.smtphost = 127.0.0.1
email.smtpport = {mailbox.port}
email.from = Sydent <sydent@example.org>
email.hostname = localhost
""")
        env = dict(os.environ, SYDENT_CONF=f"{d}/sydent.conf")
        self.log = open(f"{d}/sydent.log", "w")
        self.proc = subprocess.Popen([SYDENT_PYTHON, "-m", "sydent.sydent"], cwd=d, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until_up(self.url + "/_matrix/identity/v2", self.proc, f"sydent (see {d}/sydent.log)", 60)

    def stop(self):
        stop_process(self.proc, self.dir, os.environ.get("KEEP_SYDENT"))
        self.log.close()


@pytest.fixture
def mailbox():
    m = Mailbox()
    yield m
    m.stop()


@pytest.fixture
def sydent(mailbox):
    s = Sydent(mailbox)
    yield s
    s.stop()


IDENTITY_ENV = {
    # The test's Sydent is on loopback, over plain HTTP.
    "DIPLOMATIE_IDENTITY__IP_RANGE_ALLOWLIST": '["127.0.0.0/8"]',
    "DIPLOMATIE_IDENTITY__PLAIN_HTTP_LOOPBACK": "true",
}


@pytest.fixture(params=["sqlite", "postgres"])
def identity_server(request):
    """A federating server (Sydent calls its `/3pid/onbind`) that may reach a Sydent on loopback."""
    s = Server(request.param, federating=True, extra_env=IDENTITY_ENV)
    yield s
    s.stop()
