"""synapse-admin, the admin web UI Synapse's operators use, unchanged, against Diplomatie in
headless Chromium (Debian's) driven by Playwright, on both storage backends: an administrator
logs in, lists the users, creates one, erases one, lists the rooms and deletes one. What the UI
shows is checked against what the server holds (its admin API); screenshots of each page are
kept under target/test-output/admin-ui.

The UI is not part of this repository: it is built from its source (Awesome-Technologies'
synapse-admin), outside it, into ~/.cache/diplomatie-tests/synapse-admin/dist (or
DIPLOMATIE_ADMIN_UI). Without that build the test is skipped, unless
DIPLOMATIE_ADMIN_UI_REQUIRED=1 (CI), where it fails."""

import functools
import http.server
import os
import re
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import call

UI = os.environ.get("DIPLOMATIE_ADMIN_UI", os.path.expanduser("~/.cache/diplomatie-tests/synapse-admin/dist"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = os.path.join(os.path.dirname(__file__), "..", "..", "target", "test-output", "admin-ui")
# Chromium as root, without the background connections this machine's closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def ui_available():
    if os.path.isfile(os.path.join(UI, "index.html")):
        return True
    if os.environ.get("DIPLOMATIE_ADMIN_UI_REQUIRED") == "1":
        pytest.fail(f"synapse-admin is not built at {UI} (see this file's docstring)")
    pytest.skip(f"synapse-admin is not built at {UI}")


def api(server, method, path, token=None, body=None):
    """A request to the server; answers (status, JSON)."""
    return call(method, server.url + path, token, body)


def login(server, user, password):
    status, v = api(server, "POST", "/_matrix/client/v3/login",
                    body={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                          "password": password})
    assert status == 200, v
    return v["access_token"]


def register(server, name):
    body = {"username": name, "password": "correct horse"}
    status, first = api(server, "POST", "/_matrix/client/v3/register", body=body)
    assert status == 401, first
    body["auth"] = {"type": "m.login.dummy", "session": first["session"]}
    status, v = api(server, "POST", "/_matrix/client/v3/register", body=body)
    assert status == 200, v
    return v["access_token"], v["user_id"]


def quoted(s):
    return urllib.parse.quote(s, safe="")


@pytest.fixture
def ui_url():
    """The built UI, served over HTTP on loopback (another origin than the server's)."""
    ui_available()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=UI)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_synapse_admin_ui_administers_users_and_rooms(server, ui_url):
    from playwright.sync_api import expect, sync_playwright

    out = server.command("user", "create", "root", "--password", "pw", "--admin")
    assert out.returncode == 0, out.stderr
    root = login(server, "root", "pw")
    alice, alice_id = register(server, "alice")
    _, bob_id = register(server, "bob")
    status, created = api(server, "POST", "/_matrix/client/v3/createRoom", alice,
                          {"name": "Cellule Sahel", "preset": "public_chat"})
    assert status == 200, created
    doomed = created["room_id"]
    status, created = api(server, "POST", "/_matrix/client/v3/createRoom", alice, {"name": "Veille presse"})
    assert status == 200, created
    host = server.server_name
    shots = os.path.join(SHOTS, server.backend)
    os.makedirs(shots, exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900}, locale="en-GB")
        page.set_default_timeout(20_000)
        # A loaded machine (the other suites, a build) may take its time.
        expect.set_options(timeout=20_000)
        try:
            # Log in as the administrator, the server named by its URL.
            page.goto(ui_url)
            page.wait_for_url("**/login")
            page.get_by_label("Username").fill("root")
            page.locator('input[name="password"]').fill("pw")
            page.get_by_label("Homeserver URL").fill(server.url)
            # The server's version, read without logging in (as from Synapse).
            expect(page.get_by_text(re.compile(r"version \d+\.\d+"))).to_be_visible()
            page.screenshot(path=os.path.join(shots, "1-login.png"))
            page.get_by_role("button", name="Sign in", exact=True).click()

            # The users: everyone the server has.
            expect(page.get_by_role("heading", name="Users")).to_be_visible()
            for user in (f"@root:{host}", alice_id, bob_id):
                expect(page.get_by_role("cell", name=user, exact=True)).to_be_visible()
            page.screenshot(path=os.path.join(shots, "2-users.png"))

            # A new user, created in the UI's form.
            page.goto(ui_url + "#/users/create")
            page.locator('input[name="id"]').fill("carol")
            page.locator('input[name="displayname"]').fill("Carol Dupont")
            page.locator('input[name="password"]').fill("carol's secret")
            page.get_by_role("button", name="Save").click()
            expect(page.get_by_text("Element created")).to_be_visible()
            status, carol = api(server, "GET", f"/_synapse/admin/v2/users/{quoted('@carol:' + host)}", root)
            assert status == 200, carol
            assert carol["displayname"] == "Carol Dupont"
            login(server, "carol", "carol's secret")
            page.screenshot(path=os.path.join(shots, "3-user-created.png"))

            # Bob erased: deactivated, his data marked erased.
            page.goto(ui_url + f"#/users/{quoted(bob_id)}")
            expect(page.locator('input[name="displayname"]')).to_be_visible()
            page.get_by_role("button", name="Erase user data").click()
            page.get_by_role("button", name="Confirm").click()
            deadline = time.time() + 20
            while True:
                status, bob = api(server, "GET", f"/_synapse/admin/v2/users/{quoted(bob_id)}", root)
                if bob.get("deactivated") or time.time() > deadline:
                    break
                time.sleep(0.2)
            assert bob["deactivated"] is True and bob["erased"] is True, bob
            page.screenshot(path=os.path.join(shots, "4-user-erased.png"))

            # The rooms: both listed with their names; one deleted from its page.
            page.goto(ui_url + "#/rooms")
            expect(page.get_by_role("heading", name="Rooms")).to_be_visible()
            expect(page.get_by_text("Cellule Sahel")).to_be_visible()
            expect(page.get_by_text("Veille presse")).to_be_visible()
            page.screenshot(path=os.path.join(shots, "5-rooms.png"))
            page.goto(ui_url + f"#/rooms/{quoted(doomed)}/show")
            expect(page.get_by_text(doomed).first).to_be_visible()
            page.get_by_role("button", name="Delete").first.click()
            page.get_by_role("button", name="Confirm").click()
            deadline = time.time() + 30
            while True:
                status, deletions = api(server, "GET", f"/_synapse/admin/v2/rooms/{quoted(doomed)}/delete_status", root)
                if status == 200 and deletions["results"][0]["status"] in ("complete", "failed"):
                    break
                assert time.time() < deadline, deletions
                time.sleep(0.2)
            assert deletions["results"][0]["status"] == "complete", deletions
            assert alice_id in deletions["results"][0]["shutdown_room"]["kicked_users"], deletions
            status, _ = api(server, "GET", f"/_synapse/admin/v1/rooms/{quoted(doomed)}", root)
            assert status == 404
            # A fresh page: the list as the server gives it now (the UI may still hold the one it
            # read before the deletion ended, and the URL may already be the list's).
            page.goto(ui_url + "#/rooms")
            page.reload()
            expect(page.get_by_text("Veille presse")).to_be_visible()
            expect(page.get_by_text("Cellule Sahel")).to_have_count(0)
            page.screenshot(path=os.path.join(shots, "6-room-deleted.png"))
        except Exception:
            page.screenshot(path=os.path.join(shots, "failure.png"))
            raise
        finally:
            browser.close()
