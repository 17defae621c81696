"""Single sign-on through a real CAS server on loopback (django-cas-server, from PyPI,
tests/cas/server.py), in headless Chromium, on both backends: the login flows that name it,
the CAS login page and the ticket checked at the CAS server, accounts made from the CAS user
(Synapse's mapping) with the display name from an attribute, the same identity again, a local
account of the same name not taken over, a forged ticket refused, and the m.login.sso stage of
user-interactive authentication through its fallback page (a device deleted by an account
without a password; another user's identity refused). Screenshots under
target/test-output/sso-cas."""

import os
import subprocess
import sys
import tempfile
import threading
import urllib.parse

import pytest

from conftest import Server, free_port, wait_until_up
from test_admin_ui import CHROMIUM, CHROMIUM_ARGS, api, login, register
from test_sso_oidc import App, login_token_of, raw_get, token_login

HERE = os.path.dirname(__file__)
CAS_SERVER = os.path.join(HERE, "..", "cas", "server.py")
CAS_PYTHON = os.environ.get(
    "CAS_PYTHON", os.path.expanduser("~/.cache/diplomatie-tests/cas-venv/bin/python"))
SHOTS = os.path.join(HERE, "..", "..", "target", "test-output", "sso-cas")
USERS = ["jdupont:cas-password:Jean Dupont", "alice:cas-password:Alice of CAS"]


class CasServer:
    def __init__(self, port, service_pattern):
        self.url = f"http://127.0.0.1:{port}/cas"
        self.proc = subprocess.Popen([CAS_PYTHON, CAS_SERVER, str(port), service_pattern, *USERS],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"the CAS server did not start: {line!r}{self.proc.stdout.read()}")
        threading.Thread(target=lambda: [sys.stdout.write(l) for l in self.proc.stdout], daemon=True).start()
        wait_until_up(self.url + "/login", self.proc, "the CAS server", 30)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(params=["sqlite", "postgres"])
def cas(request):
    if subprocess.run([CAS_PYTHON, "-c", "import cas_server"], capture_output=True).returncode != 0:
        pytest.fail(f"django-cas-server is not installed for {CAS_PYTHON}: run tests/run")
    server_port, cas_port = free_port(), free_port()
    base = f"http://127.0.0.1:{server_port}"
    app = App()
    conf_dir = tempfile.mkdtemp(prefix="diplomatie-cas-")
    config = os.path.join(conf_dir, "diplomatie.toml")
    with open(config, "w") as f:
        f.write(f"""
[sso]
client_allowlist = ["http://127.0.0.1:{app.port}/"]

[cas]
enabled = true
server_url = "http://127.0.0.1:{cas_port}/cas"
display_name = "CAS du ministère"
displayname_attribute = "displayName"
""")
    cas_server = CasServer(cas_port, "^" + base.replace(".", r"\.") + "/.*")
    server = Server(request.param, extra_env={
        "DIPLOMATIE_CONFIG": config,
        "DIPLOMATIE_LISTEN": f"127.0.0.1:{server_port}",
        "DIPLOMATIE_PUBLIC_BASEURL": base,
    })
    shots = os.path.join(SHOTS, request.param)
    os.makedirs(shots, exist_ok=True)
    yield server, app, cas_server, shots
    server.stop()
    cas_server.stop()
    app.stop()


def sign_in_at_cas(page, user, shots, name):
    """CAS's own login page: its form, filled and sent."""
    page.wait_for_selector('input[name="username"]')
    page.screenshot(path=os.path.join(shots, f"{name}-cas-login.png"))
    page.fill('input[name="username"]', user)
    page.fill('input[name="password"]', "cas-password")
    page.click('button[type="submit"]')


def cas_login(server, page, start, landing, user, shots, name, form=True):
    """From `start` through CAS (its form when `form`; else its single sign-on cookie) back to
    `landing`: answers the session the login token opens."""
    page.goto(start)
    if form:
        sign_in_at_cas(page, user, shots, name)
    page.wait_for_url(landing + "?loginToken=*")
    page.screenshot(path=os.path.join(shots, f"{name}-back-in-client.png"))
    status, session = token_login(server, login_token_of(page.url))
    assert status == 200, session
    return session


def test_cas_logs_in_and_authenticates_again(cas):
    from playwright.sync_api import sync_playwright

    server, app, cas_server, shots = cas
    host = server.server_name
    landing = f"http://127.0.0.1:{app.port}/"

    # The login flows name CAS twice: the older m.login.cas, and a provider of m.login.sso.
    status, flows = api(server, "GET", "/_matrix/client/v3/login")
    assert status == 200
    types = [f["type"] for f in flows["flows"]]
    assert "m.login.cas" in types and "m.login.sso" in types, types
    sso = next(f for f in flows["flows"] if f["type"] == "m.login.sso")
    assert [(i["id"], i["name"]) for i in sso["identity_providers"]] == [("cas", "CAS du ministère")], sso

    # A local account with the name a CAS user has: CAS does not take it over (by default).
    register(server, "alice")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        start = (f"{server.url}/_matrix/client/v3/login/sso/redirect/cas?"
                 + urllib.parse.urlencode({"redirectUrl": landing}))
        first = cas_login(server, page, start, landing, "jdupont", shots, "first")
        assert first["user_id"] == f"@jdupont:{host}", first
        status, profile = api(server, "GET", f"/_matrix/client/v3/profile/@jdupont:{host}")
        assert profile.get("displayname") == "Jean Dupont", profile

        # The same identity again (CAS's own session: no form): the same account, another device.
        again = cas_login(server, page, start, landing, "jdupont", shots, "again", form=False)
        assert again["user_id"] == first["user_id"] and again["device_id"] != first["device_id"]

        # The account has no password: deleting a device asks for single sign-on only.
        path = f"/_matrix/client/v3/devices/{again['device_id']}"
        status, uia = api(server, "DELETE", path, token=first["access_token"], body={})
        assert status == 401, uia
        assert [f["stages"] for f in uia["flows"]] == [["m.login.sso"]], uia
        # Its fallback page goes through CAS and ends on a page that tells the client.
        page.goto(f"{server.url}/_matrix/client/v3/auth/m.login.sso/fallback/web?"
                  + urllib.parse.urlencode({"session": uia["session"]}))
        page.wait_for_selector("#done")
        page.screenshot(path=os.path.join(shots, "fallback-done.png"))
        status, body = api(server, "DELETE", path, token=first["access_token"],
                           body={"auth": {"session": uia["session"]}})
        assert status == 200, body
        status, _ = api(server, "GET", path, token=first["access_token"])
        assert status == 404

        # CAS's alice is not the local alice: a new account, with a free name.
        page.context.clear_cookies()
        other = cas_login(server, page, start, landing, "alice", shots, "alice")
        assert other["user_id"] == f"@alice1:{host}", other

        # The local alice's session authenticated by CAS's alice (now @alice1): refused.
        token = login(server, "alice", "correct horse")
        status, whoami = api(server, "GET", "/_matrix/client/v3/account/whoami", token=token)
        path = f"/_matrix/client/v3/devices/{whoami['device_id']}"
        status, uia = api(server, "DELETE", path, token=token, body={})
        assert status == 401
        assert [f["stages"] for f in uia["flows"]] == [["m.login.password"], ["m.login.sso"]], uia
        page.goto(f"{server.url}/_matrix/client/v3/auth/m.login.sso/fallback/web?"
                  + urllib.parse.urlencode({"session": uia["session"]}))
        page.wait_for_selector("#refused")
        page.screenshot(path=os.path.join(shots, "fallback-refused.png"))
        status, body = api(server, "DELETE", path, token=token, body={"auth": {"session": uia["session"]}})
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
        status, _ = api(server, "GET", path, token=token)
        assert status == 200
        browser.close()


def test_cas_refuses_what_it_did_not_vouch_for(cas):
    server, app, cas_server, _ = cas
    landing = f"http://127.0.0.1:{app.port}/"
    ticket = f"{server.url}/_matrix/client/r0/login/cas/ticket?"
    # A ticket the CAS server never issued.
    status, _, body = raw_get(ticket + urllib.parse.urlencode({"redirectUrl": landing, "ticket": "ST-forged"}))
    assert status == 403 and b"M_FORBIDDEN" in body, body
    # What a journey needs, missing.
    status, _, body = raw_get(ticket + urllib.parse.urlencode({"redirectUrl": landing}))
    assert status == 400 and b"M_MISSING_PARAM" in body, body
    status, _, body = raw_get(ticket + urllib.parse.urlencode({"redirectUrl": "not a url", "ticket": "ST-1"}))
    assert status == 400 and b"M_INVALID_PARAM" in body, body
    # The redirect sends the browser to CAS with this server's ticket URL as the service.
    status, headers, _ = raw_get(f"{server.url}/_matrix/client/v3/login/cas/redirect?"
                                 + urllib.parse.urlencode({"redirectUrl": landing}))
    assert status == 302
    location = urllib.parse.urlparse(headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == cas_server.url + "/login"
    service = urllib.parse.parse_qs(location.query)["service"][0]
    assert service == ticket + urllib.parse.urlencode({"redirectUrl": landing}, quote_via=urllib.parse.quote,
                                                      safe="")
    # A fallback page for a session that does not exist, or a stage without one.
    status, _, body = raw_get(f"{server.url}/_matrix/client/v3/auth/m.login.sso/fallback/web?session=nope")
    assert status == 404 and b"M_NOT_FOUND" in body, body
    status, _, body = raw_get(f"{server.url}/_matrix/client/v3/auth/m.login.recaptcha/fallback/web?session=x")
    assert status in (400, 404) and b"M_UNRECOGNIZED" in body, body
