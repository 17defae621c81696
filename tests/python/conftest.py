"""Starts the real `diplomatie` binary for the real-client tests, on both storage backends."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid

import pytest

BIN = os.environ.get("DIPLOMATIE_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug", "diplomatie"))
PG = ["psql", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1", "-q", "-c"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, backend):
        self.backend = backend
        self.dir = tempfile.mkdtemp(prefix="diplomatie-nio-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pg_db = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIPLOMATIE_")}
        env.update({
            "DIPLOMATIE_SERVER_NAME": "localhost",
            "DIPLOMATIE_LISTEN": f"127.0.0.1:{self.port}",
            "DIPLOMATIE_DATA_DIR": self.dir,
            "DIPLOMATIE_REGISTRATION__ENABLED": "true",
            "DIPLOMATIE_RATE_LIMITS__ENABLED": "false",
            "DIPLOMATIE_LOG": "warn",
        })
        if backend == "postgres":
            self.pg_db = "dip_nio_" + uuid.uuid4().hex[:12]
            subprocess.run(PG + [f"CREATE DATABASE {self.pg_db}"], check=True)
            env["DIPLOMATIE_DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{self.pg_db}"
        self.env = env
        self.proc = subprocess.Popen([BIN], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
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
