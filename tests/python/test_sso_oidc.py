"""Single sign-on (m.login.sso) against a real OpenID Connect provider on loopback (panva's
oidc-provider, from the npm registry, tests/oidc), in headless Chromium, on both backends: the
spec's redirect flow with PKCE and discovery, accounts made from the claims (localpart, display
name, the portal's kind of account) and linked to the identity, a second provider, the
allow-list of clients, and what must fail: a wrong state, a session from another browser, an
expired code, a provider that is down. Screenshots under target/test-output/sso."""

import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import http.cookiejar
import http.server
import re

import pytest

from conftest import Server, free_port
from test_admin_ui import CHROMIUM, CHROMIUM_ARGS, api, login

HERE = os.path.dirname(__file__)
PROVIDER = os.path.join(HERE, "..", "oidc", "provider.mjs")
SHOTS = os.path.join(HERE, "..", "..", "target", "test-output", "sso")
CODE_TTL = 4


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def raw_get(url, headers=None):
    """A GET that does not follow redirects: (status, headers, body)."""
    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(req, timeout=15) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class Provider:
    def __init__(self, port, redirect_uri):
        self.issuer = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            ["node", PROVIDER, str(port), "diplomatie", "secret-for-tests", redirect_uri, str(CODE_TTL)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"the OpenID provider did not start: {line!r}")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class App:
    """The client's landing page: any path answers 200."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(b"<!doctype html><title>client</title><p>back in the client</p>")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(params=["sqlite", "postgres"])
def sso(request):
    if subprocess.run(["node", "-e", "require.resolve('oidc-provider')"], cwd=os.path.dirname(PROVIDER),
                      capture_output=True).returncode != 0:
        pytest.fail("oidc-provider is not installed: run tests/run (npm ci in tests/oidc)")
    server_port, provider_port, dead_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{server_port}"
    app = App()
    conf_dir = tempfile.mkdtemp(prefix="diplomatie-sso-")
    config = os.path.join(conf_dir, "diplomatie.toml")
    with open(config, "w") as f:
        f.write(f"""
[sso]
client_allowlist = ["http://127.0.0.1:{app.port}/"]

[[sso.oidc_providers]]
id = "annuaire"
name = "Annuaire du ministère"
issuer = "http://127.0.0.1:{provider_port}"
client_id = "diplomatie"
client_secret = "secret-for-tests"
kind_claim = "diplomatie_kind"

[[sso.oidc_providers]]
id = "down"
name = "A provider that is down"
issuer = "http://127.0.0.1:{dead_port}"
client_id = "diplomatie"
""")
    server = Server(request.param, extra_env={
        "DIPLOMATIE_CONFIG": config,
        "DIPLOMATIE_LISTEN": f"127.0.0.1:{server_port}",
        "DIPLOMATIE_PUBLIC_BASEURL": base,
    })
    provider = Provider(provider_port, f"{base}/_synapse/client/oidc/callback")
    shots = os.path.join(SHOTS, request.param)
    os.makedirs(shots, exist_ok=True)
    yield server, app, shots
    provider.stop()
    server.stop()
    app.stop()


def sign_in_at_provider(page, account, shots, name):
    """The provider's own pages: its login form (any password), then its consent."""
    page.wait_for_selector('input[name="login"]')
    page.screenshot(path=os.path.join(shots, f"{name}-provider-login.png"))
    page.fill('input[name="login"]', account)
    page.fill('input[name="password"]', "any password")
    page.click('button[type="submit"]')
    page.wait_for_selector('button[type="submit"]')
    page.screenshot(path=os.path.join(shots, f"{name}-provider-consent.png"))
    page.click('button[type="submit"]')


def walk_to_callback(start, account):
    """The provider's pages walked without a browser (its forms posted), up to where it sends
    the browser back: answers the request function (carrying the cookies) and that URL."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect)

    def step(url, form=None):
        data = urllib.parse.urlencode(form).encode() if form else None
        try:
            with opener.open(urllib.request.Request(url, data=data), timeout=15) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    status, headers, _ = step(start)
    url = headers["Location"]
    for _ in range(20):
        status, headers, body = step(url)
        if status in (302, 303):
            url = urllib.parse.urljoin(url, headers["Location"])
            if "/_synapse/client/oidc/callback" in url:
                return step, url
            continue
        page = body.decode()
        action = urllib.parse.urljoin(url, re.search(r'action="([^"]+)"', page).group(1))
        form = ({"prompt": "login", "login": account, "password": "x"} if 'name="login"' in page
                else {"prompt": "consent"})
        status, headers, _ = step(action, form)
        url = urllib.parse.urljoin(url, headers["Location"])
        if "/_synapse/client/oidc/callback" in url:
            return step, url
    raise AssertionError("the provider never sent the browser back")


def token_login(server, token):
    status, v = api(server, "POST", "/_matrix/client/v3/login", body={"type": "m.login.token", "token": token})
    return status, v


def sso_session(server, page, start, landing, account, shots, name):
    """Signs in at the provider from `start` until back at `landing`; answers the session the
    login token opened, and that token."""
    page.goto(start)
    sign_in_at_provider(page, account, shots, name)
    page.wait_for_url(landing + "?loginToken=*")
    token = login_token_of(page.url)
    status, session = token_login(server, token)
    assert status == 200, session
    return session, token


def login_token_of(url):
    return urllib.parse.parse_qs(urllib.parse.urlparse(url).query)["loginToken"][0]


def test_sso_logs_in_through_a_real_openid_provider(sso):
    from playwright.sync_api import sync_playwright

    server, app, shots = sso
    host = server.server_name
    # The login flows name both providers.
    status, flows = api(server, "GET", "/_matrix/client/v3/login")
    assert status == 200
    sso_flow = next(f for f in flows["flows"] if f["type"] == "m.login.sso")
    assert [p["id"] for p in sso_flow["identity_providers"]] == ["oidc-annuaire", "oidc-down"], sso_flow
    landing = f"http://127.0.0.1:{app.port}/done"
    start = (f"{server.url}/_matrix/client/v3/login/sso/redirect/oidc-annuaire?"
             + urllib.parse.urlencode({"redirectUrl": landing}))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # An agent: the account is made from the claims at the first login.
            page = browser.new_page()
            page.set_default_timeout(20_000)
            session, token = sso_session(server, page, start, landing, "jdupont", shots, "1-agent")
            page.screenshot(path=os.path.join(shots, "1-agent-back-in-client.png"))
            assert session["user_id"] == f"@jdupont:{host}"
            # Single use.
            status, again = token_login(server, token)
            assert status == 403 and again["errcode"] == "M_FORBIDDEN", again
            out = server.command("user", "create", "root", "--password", "pw", "--admin")
            assert out.returncode == 0, out.stderr
            root = login(server, "root", "pw")
            status, user = api(server, "GET", f"/_synapse/admin/v2/users/@jdupont:{host}", root)
            assert user["displayname"] == "Agent JDUPONT", user
            assert user["account_kind"] == "agent"
            assert user["external_ids"] == [{"auth_provider": "oidc-annuaire", "external_id": "jdupont"}], user
            page.close()

            # The same identity again, in a new browser: the same account.
            context = browser.new_context()
            page = context.new_page()
            session, _ = sso_session(server, page, start, landing, "jdupont", shots, "2-again")
            assert session["user_id"] == f"@jdupont:{host}", session
            # The account has no password: deleting a device asks for single sign-on, done in
            # its fallback page through the provider the account is linked to.
            path = f"/_matrix/client/v3/devices/{session['device_id']}"
            status, uia = api(server, "DELETE", path, session["access_token"], body={})
            assert status == 401 and [f["stages"] for f in uia["flows"]] == [["m.login.sso"]], uia
            page.goto(f"{server.url}/_matrix/client/v3/auth/m.login.sso/fallback/web?"
                      + urllib.parse.urlencode({"session": uia["session"]}))
            # (the provider asks for consent again, or remembers it)
            if page.wait_for_selector("#done, #refused, button[type=submit]").get_attribute("id") is None:
                page.click("button[type=submit]")
            page.wait_for_selector("#done")
            page.screenshot(path=os.path.join(shots, "2-fallback-done.png"))
            status, body = api(server, "DELETE", path, session["access_token"],
                               body={"auth": {"session": uia["session"]}})
            assert status == 200, body
            context.close()

            # An outside partner: the claim makes the account external.
            page = browser.new_page()
            session, _ = sso_session(server, page, start, landing, "ext-ong", shots, "3-external")
            assert session["user_id"] == f"@ext-ong:{host}", session
            status, user = api(server, "GET", f"/_synapse/admin/v2/users/@ext-ong:{host}", root)
            assert user["account_kind"] == "external", user
            page.close()

            # A client not on the allow-list: a page asks to confirm before going back.
            elsewhere = f"http://localhost:{app.port}/elsewhere"
            page = browser.new_page()
            page.goto(f"{server.url}/_matrix/client/v3/login/sso/redirect/oidc-annuaire?"
                      + urllib.parse.urlencode({"redirectUrl": elsewhere}))
            sign_in_at_provider(page, "mleroy", shots, "4-confirm")
            page.wait_for_selector("#continue")
            assert f"@mleroy:{host}" in page.content()
            page.screenshot(path=os.path.join(shots, "4-confirm-page.png"))
            page.click("#continue")
            page.wait_for_url(elsewhere + "?loginToken=*")
            status, session = token_login(server, login_token_of(page.url))
            assert session["user_id"] == f"@mleroy:{host}", session
            page.close()

            # The dashboards sign in through the same provider (their address is always
            # allowed): back on the page, signed in as the linked account.
            context = browser.new_context(locale="fr-FR")
            page = context.new_page()
            page.goto(server.url + "/_diplomatie/dashboard")
            page.click("#sso-link")
            sign_in_at_provider(page, "jdupont", shots, "6-dashboard")
            page.wait_for_selector("#whoami:text('@jdupont')")
            assert page.inner_text("#whoami") == f"@jdupont:{host}"
            page.wait_for_selector("text=Vous ne gérez aucun groupe")
            page.screenshot(path=os.path.join(shots, "6-dashboard-signed-in.png"))
            context.close()

            # An expired code: the provider's answer held back past the code's lifetime.
            step, callback = walk_to_callback(start, "tardif")
            time.sleep(CODE_TTL + 1)
            status, _, body = step(callback)
            assert status == 403, (status, body)
            error = json.loads(body)
            assert error["errcode"] == "M_FORBIDDEN" and "code was refused" in error["error"], error
            status, _ = api(server, "GET", f"/_synapse/admin/v2/users/@tardif:{host}", root)
            assert status == 404, "no account for a failed sign-on"
        finally:
            browser.close()


def test_sso_refuses_what_it_must(sso):
    server, app, _ = sso
    landing = f"http://127.0.0.1:{app.port}/done"
    query = urllib.parse.urlencode({"redirectUrl": landing})
    # A wrong state.
    status, _, body = raw_get(f"{server.url}/_synapse/client/oidc/callback?state=forged&code=abc")
    assert status == 403 and json.loads(body)["errcode"] == "M_FORBIDDEN", body
    # A real state from another browser (without the session cookie): refused, and used up.
    status, headers, _ = raw_get(f"{server.url}/_matrix/client/v3/login/sso/redirect/oidc-annuaire?{query}")
    assert status == 302, status
    assert "diplomatie_oidc_session=" in headers["Set-Cookie"]
    location = urllib.parse.urlparse(headers["Location"])
    params = urllib.parse.parse_qs(location.query)
    assert params["code_challenge_method"] == ["S256"] and params["nonce"] and params["state"], params
    state = params["state"][0]
    status, _, body = raw_get(f"{server.url}/_synapse/client/oidc/callback?state={state}&code=abc")
    assert status == 403 and "another browser" in json.loads(body)["error"], body
    cookie = headers["Set-Cookie"].split(";")[0]
    status, _, body = raw_get(f"{server.url}/_synapse/client/oidc/callback?state={state}&code=abc",
                              {"Cookie": cookie})
    assert status == 403, "a state is used once"
    # The provider refused (the person declined).
    status, headers, _ = raw_get(f"{server.url}/_matrix/client/v3/login/sso/redirect/oidc-annuaire?{query}")
    state = urllib.parse.parse_qs(urllib.parse.urlparse(headers["Location"]).query)["state"][0]
    cookie = headers["Set-Cookie"].split(";")[0]
    status, _, body = raw_get(f"{server.url}/_synapse/client/oidc/callback?state={state}&error=access_denied",
                              {"Cookie": cookie})
    assert status == 403 and "access_denied" in json.loads(body)["error"], body
    # A provider that is down: 502, said plainly.
    status, _, body = raw_get(f"{server.url}/_matrix/client/v3/login/sso/redirect/oidc-down?{query}")
    assert status == 502 and json.loads(body)["errcode"] == "M_UNKNOWN", (status, body)
    # An unknown provider, a missing or bad redirectUrl.
    status, _, body = raw_get(f"{server.url}/_matrix/client/v3/login/sso/redirect/oidc-nowhere?{query}")
    assert status == 404 and json.loads(body)["errcode"] == "M_NOT_FOUND", body
    status, _, body = raw_get(f"{server.url}/_matrix/client/v3/login/sso/redirect/oidc-annuaire")
    assert status == 400 and json.loads(body)["errcode"] == "M_MISSING_PARAM", body
    status, _, body = raw_get(f"{server.url}/_matrix/client/v3/login/sso/redirect/oidc-annuaire?redirectUrl=javascript:alert(1)")
    assert status == 400 and json.loads(body)["errcode"] == "M_INVALID_PARAM", body


def test_without_providers_sso_is_not_offered(server):
    status, flows = api(server, "GET", "/_matrix/client/v3/login")
    assert "m.login.sso" not in [f["type"] for f in flows["flows"]]
    status, _, body = raw_get(f"{server.url}/_matrix/client/v3/login/sso/redirect?redirectUrl=http://127.0.0.1/")
    assert status == 404 and json.loads(body)["errcode"] == "M_UNRECOGNIZED", (status, body)
