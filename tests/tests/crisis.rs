//! Crisis cells: activation from a template (by the API and by a command from any client),
//! alerts that notify through every mute, the sealed main courante and its offline check, the
//! situation report and its history, stand-down; and a cell across two servers.

use std::time::Duration;

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    a_cell_is_activated_alerts_logs_reports_and_stands_down,
    a_command_activates_a_cell_from_a_room,
    a_cell_spans_two_servers,
);

const CRISIS: &str = "/_diplomatie/client/v1/crisis";

async fn join_all(c: &Client, rooms: &[&str]) {
    for r in rooms {
        let (status, v) = c.join(r).await;
        assert_eq!(status, 200, "{r}: {v}");
    }
}

async fn send(c: &Client, room: &str, content: Value) -> (u16, Value) {
    let txn = format!("t{}", rand::random::<u64>());
    c.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"), &content).await
}

async fn a_cell_is_activated_alerts_logs_reports_and_stands_down(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let coord = server.register("coord").await;
    let fp = server.register("fp").await;
    let member = server.register("member").await;
    let expert = server.register("expert").await;
    let kind = format!("/_diplomatie/admin/v1/users/{}/kind", urlencode(&expert.user_id));
    root.ok(Method::PUT, &kind, Some(&json!({ "kind": "external" }))).await;
    // An agent who never logged in: no device, so alerts also go to them by e-mail.
    let out = server.command(&["user", "create", "absent", "--password", "pw"]).await;
    assert!(out.status.success());
    let absent = format!("@absent:{}", server.server_name);

    // Externals do not activate cells; unknown people are refused before anything is made.
    let body = json!({ "name": "Crue de la Seine", "focal_points": [fp.user_id], "members": [member.user_id, absent], "experts": [expert.user_id] });
    assert_error(&expert.post(CRISIS, &body).await, 403, "M_FORBIDDEN");
    let unknown = json!({ "name": "X", "members": ["@nobody:localhost"] });
    assert_error(&coord.post(CRISIS, &unknown).await, 404, "M_NOT_FOUND");
    assert_error(&coord.post(CRISIS, &json!({ "name": "X", "template": "nope" })).await, 400, "M_INVALID_PARAM");

    let cell = coord.ok(Method::POST, CRISIS, Some(&body)).await;
    let cell_id = cell["cell_id"].as_str().unwrap().to_owned();
    assert_eq!(cell["slug"], "crue-de-la-seine");
    let room = |k: &str| cell["rooms"][k].as_str().unwrap().to_owned();
    let (situation, decisions, logistics, press) =
        (room("situation"), room("decisions"), room("logistique"), room("presse"));
    // fp, member, absent: space and four rooms; the expert: space and the two open rooms.
    assert_eq!(cell["invited"], 3 * 5 + 3, "{cell}");
    let alias = coord
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/directory/room/{}", urlencode("#x.crue-de-la-seine.situation:localhost")),
            None,
        )
        .await;
    assert_eq!(alias["room_id"], situation);
    // Powers: the coordinator 100, the focal point 50.
    let levels =
        coord.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{situation}/state/m.room.power_levels/"), None).await;
    assert_eq!(levels["users"][&coord.user_id], 100);
    assert_eq!(levels["users"][&fp.user_id], 50);
    join_all(&fp, &[&cell_id, &situation, &decisions, &logistics, &press]).await;
    join_all(&member, &[&cell_id, &situation, &decisions, &logistics, &press]).await;
    join_all(&expert, &[&cell_id, &logistics, &press]).await;
    assert_error(&expert.join(&situation).await, 403, "M_FORBIDDEN");
    let info = member.ok(Method::GET, &format!("{CRISIS}/{cell_id}"), None).await;
    assert_eq!((info["status"].as_str(), info["coordinator"].as_str()), (Some("active"), Some(coord.user_id.as_str())));

    // The member mutes everything, then the situation room; the alert rule stays first and
    // cannot be turned off.
    member
        .ok(
            Method::PUT,
            "/_matrix/client/v3/pushrules/global/override/.m.rule.master/enabled",
            Some(&json!({ "enabled": true })),
        )
        .await;
    member
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/pushrules/global/room/{}", urlencode(&situation)),
            Some(&json!({ "actions": [] })),
        )
        .await;
    let rules = member.ok(Method::GET, "/_matrix/client/v3/pushrules/", None).await;
    assert_eq!(rules["global"]["override"][0]["rule_id"], ".fr.diplomatie.crisis.alert");
    let alert_rule = "/_matrix/client/v3/pushrules/global/override/.fr.diplomatie.crisis.alert";
    assert_error(&member.put(&format!("{alert_rule}/enabled"), &json!({ "enabled": false })).await, 403, "M_FORBIDDEN");
    assert_error(&member.delete(alert_rule).await, 403, "M_FORBIDDEN");

    // Only the coordinator alerts.
    let alert = json!({ "body": "Évacuation du quai Branly à 14 h" });
    assert_error(&fp.post(&format!("{CRISIS}/{cell_id}/alert"), &alert).await, 403, "M_FORBIDDEN");
    let sent = coord.ok(Method::POST, &format!("{CRISIS}/{cell_id}/alert"), Some(&alert)).await;
    let alert_id = sent["event_id"].as_str().unwrap().to_owned();
    let event = member
        .ok(Method::GET, &format!("/_matrix/client/v3/rooms/{situation}/event/{}", urlencode(&alert_id)), None)
        .await;
    assert_eq!(event["type"], "fr.diplomatie.crisis.alert");
    assert!(event["content"]["body"].as_str().unwrap().contains("Évacuation du quai Branly"));
    assert_eq!(event["content"]["unreached"], json!([absent]), "{event}");
    // It notified the member through both mutes, as a highlight.
    let notes = member
        .until("/_matrix/client/v3/notifications?only=highlight", |v| {
            v["notifications"].as_array().is_some_and(|n| n.iter().any(|x| x["event"]["event_id"] == alert_id.as_str()))
        })
        .await;
    let note = notes["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["event"]["event_id"] == alert_id.as_str())
        .unwrap();
    assert!(note["actions"].as_array().unwrap().iter().any(|a| a["value"] == "ring"), "{note}");
    // The same type elsewhere is no alert: it notifies nobody.
    let plain = coord.create_room(json!({ "invite": [member.user_id] })).await;
    member.join(&plain).await;
    member
        .ok(
            Method::PUT,
            "/_matrix/client/v3/pushrules/global/override/.m.rule.master/enabled",
            Some(&json!({ "enabled": false })),
        )
        .await;
    let (status, fake) = coord
        .put(
            &format!("/_matrix/client/v3/rooms/{plain}/send/fr.diplomatie.crisis.alert/f1"),
            &json!({ "body": "faux" }),
        )
        .await;
    assert_eq!(status, 200);
    let marker = coord.send_text(&plain, "after").await;
    member
        .until("/_matrix/client/v3/notifications", |v| {
            v["notifications"].as_array().is_some_and(|n| n.iter().any(|x| x["event"]["event_id"] == marker.as_str()))
        })
        .await;
    let all = member.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    assert!(
        !all["notifications"].as_array().unwrap().iter().any(|x| x["event"]["event_id"] == fake["event_id"]),
        "{all}"
    );

    // The main courante: each message a sealed, numbered entry; no edits, no redactions.
    let (status, first) =
        send(&coord, &decisions, json!({ "msgtype": "m.text", "body": "Décision 1 : PC de crise au Quai" })).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) =
        send(&fp, &decisions, json!({ "msgtype": "m.text", "body": "Décision 2 : relève à 20 h" })).await;
    assert_eq!(status, 200, "{second}");
    let edit = json!({ "msgtype": "m.text", "body": "* changé", "m.new_content": { "msgtype": "m.text", "body": "changé" },
                       "m.relates_to": { "rel_type": "m.replace", "event_id": first["event_id"] } });
    assert_error(&send(&coord, &decisions, edit).await, 403, "M_FORBIDDEN");
    let redact =
        format!("/_matrix/client/v3/rooms/{decisions}/redact/{}/r1", urlencode(first["event_id"].as_str().unwrap()));
    assert_error(&coord.put(&redact, &json!({})).await, 403, "M_FORBIDDEN");
    // Elsewhere, edits are as usual.
    let (_, note) = send(&coord, &logistics, json!({ "msgtype": "m.text", "body": "3 véhicules" })).await;
    let edit = json!({ "msgtype": "m.text", "body": "* 4", "m.new_content": { "msgtype": "m.text", "body": "4" },
                       "m.relates_to": { "rel_type": "m.replace", "event_id": note["event_id"] } });
    assert_eq!(send(&coord, &logistics, edit).await.0, 200);
    let log = member
        .until(&format!("{CRISIS}/{cell_id}/log"), |v| v["entries"].as_array().is_some_and(|e| e.len() == 2))
        .await;
    assert_eq!(log["entries"][0]["number"], 1);
    assert_eq!(log["entries"][0]["author"], coord.user_id);
    assert_eq!(log["entries"][1]["text"], "Décision 2 : relève à 20 h");
    assert_eq!(log["entries"][1]["event_id"], second["event_id"]);
    assert_eq!(log["entries"][1]["reference"], "CRUE-DE-LA-SEINE-MC-0002");
    assert_eq!(log["record"]["open"], true);

    // The situation report: focal points update it, every version kept, the last pinned.
    assert_error(&member.put(&format!("{CRISIS}/{cell_id}/sitrep"), &json!({ "body": "x" })).await, 403, "M_FORBIDDEN");
    let v1 = fp.ok(Method::PUT, &format!("{CRISIS}/{cell_id}/sitrep"), Some(&json!({ "body": "Cote 6,10 m" }))).await;
    let v2 = coord
        .ok(Method::PUT, &format!("{CRISIS}/{cell_id}/sitrep"), Some(&json!({ "body": "Cote 6,40 m, en hausse" })))
        .await;
    assert_eq!((v1["version"].as_i64(), v2["version"].as_i64()), (Some(1), Some(2)));
    let reports = member.ok(Method::GET, &format!("{CRISIS}/{cell_id}/sitrep"), None).await;
    assert_eq!(reports["history"].as_array().unwrap().len(), 2);
    assert_eq!(reports["current"]["body"], "Cote 6,40 m, en hausse");
    let state = member
        .ok(Method::GET, &format!("/_matrix/client/v3/rooms/{situation}/state/fr.diplomatie.crisis.sitrep/"), None)
        .await;
    assert_eq!(state["version"], 2);
    let pinned = member
        .ok(Method::GET, &format!("/_matrix/client/v3/rooms/{situation}/state/m.room.pinned_events/"), None)
        .await;
    assert_eq!(pinned["pinned"], json!([v2["event_id"]]));

    // Stand-down: the coordinator's alone; then everything is read-only and the log closed.
    assert_error(&fp.post(&format!("{CRISIS}/{cell_id}/stand_down"), &json!({})).await, 403, "M_FORBIDDEN");
    let done = coord.ok(Method::POST, &format!("{CRISIS}/{cell_id}/stand_down"), Some(&json!({}))).await;
    assert_eq!(done["log_reference"], "CRUE-DE-LA-SEINE-MC");
    assert_error(&coord.post(&format!("{CRISIS}/{cell_id}/stand_down"), &json!({})).await, 403, "M_FORBIDDEN");
    for (who, room) in [(&member, &situation), (&coord, &decisions), (&expert, &press)] {
        assert_error(&send(who, room, json!({ "msgtype": "m.text", "body": "encore" })).await, 403, "M_FORBIDDEN");
    }
    assert_error(&coord.post(&format!("{CRISIS}/{cell_id}/alert"), &alert).await, 403, "M_FORBIDDEN");
    let info = member.ok(Method::GET, &format!("{CRISIS}/{cell_id}"), None).await;
    assert_eq!(
        (info["status"].as_str(), info["archive_status"].as_str(), info["retention"].as_str()),
        (Some("stood_down"), Some("exported"), Some("P10Y"))
    );

    // The whole log, verified offline; a changed entry fails.
    let log = member.ok(Method::GET, &format!("{CRISIS}/{cell_id}/log"), None).await;
    assert_eq!(log["record"]["author"], coord.user_id);
    assert_eq!(log["record"]["entries"].as_array().unwrap().len(), 2);
    let file = server.data_dir.path().join("log.json");
    std::fs::write(&file, serde_json::to_vec(&log).unwrap()).unwrap();
    let out = server.command(&["verify", file.to_str().unwrap()]).await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("CRUE-DE-LA-SEINE-MC") && said.contains("2 entries"),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut forged = log.clone();
    forged["entries"][1]["text"] = json!("Décision 2 : aucune relève");
    std::fs::write(&file, serde_json::to_vec(&forged).unwrap()).unwrap();
    assert!(!server.command(&["verify", file.to_str().unwrap()]).await.status.success());
    let mut dropped = log.clone();
    dropped["entries"].as_array_mut().unwrap().pop();
    std::fs::write(&file, serde_json::to_vec(&dropped).unwrap()).unwrap();
    assert!(!server.command(&["verify", file.to_str().unwrap()]).await.status.success());
}

async fn a_command_activates_a_cell_from_a_room(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let coord = server.register("coord").await;
    let member = server.register("member").await;
    let room = coord.create_room(json!({ "invite": [member.user_id] })).await;
    member.join(&room).await;
    send(&coord, &room, json!({ "msgtype": "m.text", "body": "!crise Séisme Nice" })).await;
    // The cell exists under its alias, and the room's members are invited to it.
    let path = format!("/_matrix/client/v3/directory/room/{}", urlencode("#x.seisme-nice:localhost"));
    let alias = member.until(&path, |_| true).await;
    let space = alias["room_id"].as_str().unwrap();
    // The invitations follow the rooms' creation.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while member.join(space).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never invited to {space}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = member.ok(Method::GET, &format!("{CRISIS}/{space}"), None).await;
    assert_eq!(info["name"], "Séisme Nice");
    // A command the coordinator types in the situation room alerts.
    let situation = info["rooms"]["situation"].as_str().unwrap().to_owned();
    send(&coord, &situation, json!({ "msgtype": "m.text", "body": "!alerte Réplique attendue" })).await;
    assert_eq!(member.join(&situation).await.0, 200);
    let path = format!("/_matrix/client/v3/rooms/{situation}/messages?dir=b&limit=30");
    member
        .until(&path, |v| {
            v["chunk"].as_array().is_some_and(|c| c.iter().any(|e| e["type"] == "fr.diplomatie.crisis.alert"))
        })
        .await;
    // Someone else's `!alerte` is answered with the refusal.
    send(&member, &situation, json!({ "msgtype": "m.text", "body": "!alerte moi aussi" })).await;
    member
        .until(&path, |v| {
            v["chunk"]
                .as_array()
                .is_some_and(|c| c.iter().any(|e| e["content"]["body"].as_str().is_some_and(|b| b.starts_with("⚠"))))
        })
        .await;
}

/// Joins a room of another server once the invitation has arrived.
async fn join_when_invited(c: &Client, room: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = c.join(room).await;
        if status == 200 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{room}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn a_cell_spans_two_servers(backend: Backend) {
    let a = TestServer::start_federating(backend, &[]).await;
    let b = TestServer::start_federating(backend, &[]).await;
    let coord = a.register("coord").await;
    let partner = b.register("partner").await;
    let body = json!({ "name": "Tempête", "focal_points": [partner.user_id] });
    let cell = coord.ok(Method::POST, CRISIS, Some(&body)).await;
    assert_eq!(cell["invited"], 5, "{cell}");
    let cell_id = cell["cell_id"].as_str().unwrap().to_owned();
    let situation = cell["rooms"]["situation"].as_str().unwrap().to_owned();
    let decisions = cell["rooms"]["decisions"].as_str().unwrap().to_owned();
    for room in [&cell_id, &situation, &decisions] {
        join_when_invited(&partner, room).await;
    }
    // The partner, at 50 on another server, mutes everything on theirs.
    partner
        .ok(
            Method::PUT,
            "/_matrix/client/v3/pushrules/global/override/.m.rule.master/enabled",
            Some(&json!({ "enabled": true })),
        )
        .await;
    // Their focal point's power holds across servers: they update the report on A.
    let levels = partner
        .ok(Method::GET, &format!("/_matrix/client/v3/rooms/{situation}/state/m.room.power_levels/"), None)
        .await;
    assert_eq!(levels["users"][&partner.user_id], 50);

    // The alert reaches B, whose own push rules put it through the mute.
    let sent = coord
        .ok(Method::POST, &format!("{CRISIS}/{cell_id}/alert"), Some(&json!({ "body": "Vents à 150 km/h" })))
        .await;
    let alert_id = sent["event_id"].as_str().unwrap().to_owned();
    partner
        .until("/_matrix/client/v3/notifications?only=highlight", |v| {
            v["notifications"].as_array().is_some_and(|n| n.iter().any(|x| x["event"]["event_id"] == alert_id.as_str()))
        })
        .await;

    // B's member writes in the main courante: A seals it with its service account's key,
    // naming who said it.
    let (status, said) =
        send(&partner, &decisions, json!({ "msgtype": "m.text", "body": "Préfecture prévenue" })).await;
    assert_eq!(status, 200, "{said}");
    let log = coord
        .until(&format!("{CRISIS}/{cell_id}/log"), |v| v["entries"].as_array().is_some_and(|e| e.len() == 1))
        .await;
    assert_eq!(log["entries"][0]["said_by"], partner.user_id);
    assert_eq!(log["entries"][0]["author"], format!("@diplomatie:{}", a.server_name));
    // An edit from B is refused by B's server too (it holds the same state).
    let edit = json!({ "msgtype": "m.text", "body": "* x", "m.new_content": { "msgtype": "m.text", "body": "x" },
                       "m.relates_to": { "rel_type": "m.replace", "event_id": said["event_id"] } });
    assert_error(&send(&partner, &decisions, edit).await, 403, "M_FORBIDDEN");

    coord.ok(Method::POST, &format!("{CRISIS}/{cell_id}/stand_down"), Some(&json!({}))).await;
    let log = coord.ok(Method::GET, &format!("{CRISIS}/{cell_id}/log"), None).await;
    let file = a.data_dir.path().join("log.json");
    std::fs::write(&file, serde_json::to_vec(&log).unwrap()).unwrap();
    let out = a.command(&["verify", file.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Read-only on B as well, once the power levels arrive there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = send(&partner, &situation, json!({ "msgtype": "m.text", "body": "encore" })).await;
        if status == 403 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still writable on B");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
