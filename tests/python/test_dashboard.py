"""The portal's dashboards (/_diplomatie/dashboard) in headless Chromium, on both backends: for
a seeded organisation, the figures the page shows are those of the stats API
(/_diplomatie/admin/v1/stats/...), which are checked against what was seeded; an administrator
sees every group and community and the server's health, a manager only theirs, an agent who
manages nothing is told so; the page works from the keyboard, its text contrast passes WCAG AA,
and it speaks French and English. Screenshots under target/test-output/dashboard."""

import json
import os
import urllib.parse


from test_admin_ui import CHROMIUM, CHROMIUM_ARGS, api, login

SHOTS = os.path.join(os.path.dirname(__file__), "..", "..", "target", "test-output", "dashboard")

ORG = """
users:
  - { localpart: root, password: pw, admin: true }
  - { localpart: alice, password: pw, group: paris }
  - { localpart: bob, password: pw, group: dgm }
  - { localpart: carol, password: pw, group: dgm }
  - { localpart: frank, password: pw }
groups:
  - { slug: paris, name: "Ambassade à Paris", managers: [alice] }
  - { slug: dgm, name: DGM, managers: [bob] }
communities:
  - { slug: sahel, name: Sahel, manager: frank, project: "Stratégie Sahel", tags: [sahel], join: open, members: [frank] }
"""


def post_raw(server, path, token, body, content_type):
    import urllib.request
    req = urllib.request.Request(server.url + path, data=body, method="POST")
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def room_of(server, token, alias):
    status, v = api(server, "GET", f"/_matrix/client/v3/directory/room/{urllib.parse.quote(alias, safe='')}", token)
    assert status == 200, (alias, v)
    return v["room_id"]


def say(server, token, room, text, n):
    status, v = api(server, "PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/d{n}",
                    token, {"msgtype": "m.text", "body": text})
    assert status == 200, v


CONTRAST = """() => {
  const lum = (c) => {
    const [r, g, b] = c.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number).map((v) => {
      v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const bg = (el) => {
    for (; el; el = el.parentElement) {
      const c = getComputedStyle(el).backgroundColor;
      if (c && !c.startsWith("rgba(0, 0, 0, 0)") && c !== "transparent") return c;
    }
    return "rgb(255, 255, 255)";
  };
  const worst = [];
  for (const el of document.querySelectorAll("h1, h2, th, td, label, button, p, option")) {
    if (!el.offsetParent && el.tagName !== "OPTION") continue;
    const a = lum(getComputedStyle(el).color), b = lum(bg(el));
    worst.push([(Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05), el.tagName + ":" + el.textContent.slice(0, 20)]);
  }
  worst.sort((x, y) => x[0] - y[0]);
  return worst[0];
}"""


def shown_figures(page):
    """What the page shows: {slug: {figure: text}}."""
    return page.evaluate("""() => {
      const out = {};
      for (const td of document.querySelectorAll("td[data-unit]")) {
        (out[td.dataset.unit] ||= {})[td.dataset.figure] = td.textContent;
      }
      return out;
    }""")


def settled(page, expected):
    """Waits until the page shows the expected figures of every group (the server's apart);
    answers all it shows."""
    import time
    deadline = time.time() + 15
    while True:
        shown = shown_figures(page)
        groups = {k: v for k, v in shown.items() if k != "server"}
        if groups == expected:
            return shown
        assert time.time() < deadline, (groups, expected)
        page.wait_for_timeout(200)


def expected_figures(units):
    out = {}
    for u in units:
        f = {"members": str(u["members"]), "managers": ", ".join(u["managers"]) or "—", "messages": str(u["messages"])}
        if u["kind"] == "functional_group":
            c, j = u["correspondence"], u["journal"]
            f.update({"sent": str(c["sent"]), "received": str(c["received"]), "readers": str(c["readers"]),
                      "new": str(j["new"]), "assigned": str(j["assigned"]), "done": str(j["done"])})
        out[u["slug"]] = f
    return out


def test_dashboards_show_the_apis_figures_to_whom_they_belong(server):
    from playwright.sync_api import expect, sync_playwright

    out = server.command("user", "create", "root", "--password", "pw", "--admin")
    assert out.returncode == 0, out.stderr
    root = login(server, "root", "pw")
    post_raw(server, "/_diplomatie/admin/v1/import", root, ORG.encode(), "application/yaml")
    alice, bob, carol = (login(server, u, "pw") for u in ("alice", "bob", "carol"))
    dgm_room = room_of(server, bob, "#g.dgm.general:" + server.server_name)
    paris_room = room_of(server, alice, "#g.paris.general:" + server.server_name)
    say(server, carol, dgm_room, "premier", 1)
    say(server, carol, dgm_room, "second", 2)
    say(server, bob, dgm_room, "troisième", 3)
    say(server, alice, paris_room, "bonjour", 4)
    status, sent = api(server, "POST", "/_diplomatie/client/v1/correspondence", alice,
                       {"kind": "telegram", "from": "paris", "subject": "Point de situation", "body": "Texte",
                        "action": ["dgm"], "information": []})
    assert status == 200, sent

    # The API: what was seeded.
    status, report = api(server, "GET", "/_diplomatie/admin/v1/stats/units?days=7", root)
    assert status == 200, report
    units = {u["slug"]: u for u in report["units"]}
    assert set(units) == {"paris", "dgm", "sahel"}, report
    assert units["dgm"]["members"] == 2 and units["dgm"]["managers"] == [f"@bob:{server.server_name}"]
    assert units["dgm"]["messages"] == 3 and units["paris"]["messages"] == 1, report
    assert sum(d["active_members"] for d in units["dgm"]["activity"]) == 2
    assert len(units["dgm"]["activity"]) == 7
    assert units["paris"]["correspondence"]["sent"] == 1
    assert units["dgm"]["correspondence"]["received"] == 1
    assert units["dgm"]["journal"] == {"new": 1, "assigned": 0, "done": 0}
    assert units["sahel"]["kind"] == "community"
    status, mine = api(server, "GET", "/_diplomatie/admin/v1/stats/units", bob)
    assert [u["slug"] for u in mine["units"]] == ["dgm"], mine
    status, none = api(server, "GET", "/_diplomatie/admin/v1/stats/units", carol)
    assert status == 403 and none["errcode"] == "M_FORBIDDEN", none
    status, health = api(server, "GET", "/_diplomatie/admin/v1/stats/server", root)
    assert status == 200 and health["users"] >= 5 and health["database"] == server.backend.replace("postgres", "postgresql")
    status, refused = api(server, "GET", "/_diplomatie/admin/v1/stats/server", bob)
    assert status == 403, refused
    status, bad = api(server, "GET", "/_diplomatie/admin/v1/stats/units?days=0", root)
    assert status == 400 and bad["errcode"] == "M_INVALID_PARAM", bad

    shots = os.path.join(SHOTS, server.backend)
    os.makedirs(shots, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        expect.set_options(timeout=20_000)
        try:
            def signed_in(user, lang="fr-FR"):
                context = browser.new_context(locale=lang, viewport={"width": 1200, "height": 900})
                page = context.new_page()
                page.goto(server.url + "/_diplomatie/dashboard")
                # From the keyboard: the user field has the focus; Tab, then Enter.
                expect(page.locator("#user")).to_be_focused()
                page.keyboard.type(user)
                page.keyboard.press("Tab")
                page.keyboard.type("pw")
                page.keyboard.press("Enter")
                return context, page

            # The administrator: every group and community, as the API counts them.
            context, page = signed_in("root")
            page.select_option("#period", "7")
            expect(page.locator("section.unit")).to_have_count(3)
            expect(page.locator('td[data-unit="server"][data-figure="database"]')).to_have_text(health["database"])
            shown = settled(page, expected_figures(report["units"]))
            assert shown["server"]["server_name"] == server.server_name, shown
            expect(page.get_by_role("heading", name="Santé du serveur")).to_be_visible()
            ratio, where = page.evaluate(CONTRAST)
            assert ratio >= 4.5, (ratio, where)
            page.screenshot(path=os.path.join(shots, "1-admin-fr.png"), full_page=True)
            # In English.
            page.get_by_role("button", name="English").click()
            expect(page.get_by_role("heading", name="Dashboards")).to_be_visible()
            expect(page.get_by_role("heading", name="Server health")).to_be_visible()
            expect(page.get_by_role("rowheader", name="Correspondence sent").first).to_be_visible()
            assert page.evaluate("document.documentElement.lang") == "en"
            page.screenshot(path=os.path.join(shots, "2-admin-en.png"), full_page=True)
            context.close()

            # A manager: their group only, no server health.
            context, page = signed_in("bob", "en-GB")
            expect(page.locator("section.unit")).to_have_count(1)
            expect(page.locator('section.unit[data-slug="dgm"]')).to_be_visible()
            expect(page.locator("section.health")).to_have_count(0)
            settled(page, expected_figures(mine["units"]))
            expect(page.get_by_role("img", name="Messages per day — DGM", exact=False)).to_be_visible()
            page.screenshot(path=os.path.join(shots, "3-manager-en.png"), full_page=True)
            context.close()

            # Someone who manages nothing is told so.
            context, page = signed_in("carol")
            expect(page.get_by_role("alert").filter(has_text="Vous ne gérez aucun groupe")).to_be_visible()
            expect(page.locator("section.unit")).to_have_count(0)
            page.screenshot(path=os.path.join(shots, "4-agent-fr.png"))
            context.close()

            # A wrong password.
            context = browser.new_context(locale="fr-FR")
            page = context.new_page()
            page.goto(server.url + "/_diplomatie/dashboard")
            page.fill("#user", "root")
            page.fill("#password", "wrong")
            page.click("button[type=submit]")
            expect(page.get_by_role("alert").filter(has_text="refusé")).to_be_visible()
            context.close()
        finally:
            browser.close()
