//! The signature circuit (e-parapheur), black box: approvals in the named order (one by a ✅
//! reaction from a standard client), a refusal that returns the draft with its comment, a
//! delegation, a signatory without the role refused; the dispatched record carries the chain,
//! `diplomatie verify` checks it offline, and tampering is detected.

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(a_draft_goes_through_approvals_and_a_signature_before_it_leaves, a_circuit_runs_from_a_standard_client);

const ORG: &str = r#"
users:
  - { localpart: root, password: pw, admin: true }
  - { localpart: alice, password: pw, group: paris }
  - { localpart: bob, password: pw, group: paris }
  - { localpart: carol, password: pw, group: paris }
  - { localpart: frank, password: pw, group: paris }
  - { localpart: dan, password: pw, group: paris }
  - { localpart: gus, password: pw, group: paris }
  - { localpart: erin, password: pw, group: dgm }
groups:
  - { slug: paris, name: "Ambassade à Paris", managers: [alice] }
  - { slug: dgm, name: DGM, managers: [erin] }
"#;

const CIRCUITS: &str = "/_diplomatie/client/v1/circuits";

/// The room id of the Paris embassy's correspondence room, by its alias.
async fn correspondence_room(c: &diplomatie_tests::Client) -> String {
    let path = format!("/_matrix/client/v3/directory/room/{}", urlencode("#g.paris.correspondence:localhost"));
    c.ok(Method::GET, &path, None).await["room_id"].as_str().unwrap().to_owned()
}

/// `diplomatie verify` on an export: its success and what it printed.
async fn verify(server: &TestServer, export: &Value, name: &str) -> (bool, String) {
    let file = server.data_dir.path().join(name);
    std::fs::write(&file, serde_json::to_vec(export).unwrap()).unwrap();
    let out = server.command(&["verify", file.to_str().unwrap()]).await;
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

async fn a_draft_goes_through_approvals_and_a_signature_before_it_leaves(backend: Backend) {
    let server = TestServer::start_with_organisation(backend, ORG, &[]).await;
    let login = |u: &'static str| server.login(u, "pw");
    let (root, alice, bob, carol, frank, dan, gus) = (
        login("root").await,
        login("alice").await,
        login("bob").await,
        login("carol").await,
        login("frank").await,
        login("dan").await,
        login("gus").await,
    );
    let signatories = json!({ "signatories": [{ "user_id": dan.user_id, "title": "Chef de poste" }] });
    assert_error(&alice.put("/_diplomatie/admin/v1/groups/paris/signatories", &signatories).await, 403, "M_FORBIDDEN");
    root.ok(Method::PUT, "/_diplomatie/admin/v1/groups/paris/signatories", Some(&signatories)).await;

    let draft = json!({ "kind": "telegram", "from": "paris", "subject": "Visite ministérielle", "body": "Premier jet.", "action": ["dgm"], "tags": ["Protocole"] });
    let request = |signatory: &str| json!({ "correspondence": draft, "approvers": [bob.user_id, carol.user_id], "signatory": signatory });
    // Only an authorised signatory of the group signs.
    assert_error(&alice.post(CIRCUITS, &request(&gus.user_id)).await, 403, "M_FORBIDDEN");
    let started = alice.ok(Method::POST, CIRCUITS, Some(&request(&dan.user_id))).await;
    let id = started["circuit_id"].as_str().unwrap().to_owned();
    let path = format!("{CIRCUITS}/{id}");
    assert_eq!(
        (started["status"].as_str(), started["awaiting"].as_str()),
        (Some("pending"), Some(bob.user_id.as_str()))
    );

    // In order: carol cannot approve before bob, dan cannot sign yet.
    assert_error(&carol.post(&format!("{path}/approve"), &json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&dan.post(&format!("{path}/sign"), &json!({})).await, 403, "M_FORBIDDEN");
    bob.ok(Method::POST, &format!("{path}/approve"), Some(&json!({ "comment": "Vu" }))).await;
    // Carol refuses: a comment is required; the draft goes back to alice.
    assert_error(&carol.post(&format!("{path}/refuse"), &json!({})).await, 400, "M_MISSING_PARAM");
    let refused =
        carol.ok(Method::POST, &format!("{path}/refuse"), Some(&json!({ "comment": "Préciser la date" }))).await;
    assert_eq!((refused["status"].as_str(), refused["decisions"].as_array().unwrap().len()), (Some("returned"), 2));
    assert_eq!(refused["decisions"][1]["comment"], "Préciser la date");
    assert_error(&bob.post(&format!("{path}/approve"), &json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&bob.put(&format!("{path}/draft"), &draft).await, 403, "M_FORBIDDEN");
    let mut amended = draft.clone();
    amended["body"] = json!("Visite le 12 mars.");
    let again = alice.ok(Method::PUT, &format!("{path}/draft"), Some(&amended)).await;
    assert_eq!(again["awaiting"], bob.user_id, "approvals start over");

    // Bob approves from a standard client: ✅ on the circuit's notice.
    let notice = again["event_id"].as_str().unwrap().to_owned();
    let room = correspondence_room(&bob).await;
    let reaction = json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": notice, "key": "✅" } });
    let (status, _) = bob.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.reaction/r1"), &reaction).await;
    assert_eq!(status, 200);
    alice.until(&path, |v| v["awaiting"] == carol.user_id.as_str()).await;

    // Carol is away: frank acts for her, within the delegation's period.
    assert_error(&frank.post(&format!("{path}/approve"), &json!({})).await, 403, "M_FORBIDDEN");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert_error(
        &carol
            .post("/_diplomatie/client/v1/delegations", &json!({ "delegate": frank.user_id, "until_ts": now - 1 }))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let delegation = carol
        .ok(
            Method::POST,
            "/_diplomatie/client/v1/delegations",
            Some(&json!({ "delegate": frank.user_id, "until_ts": now + 3_600_000 })),
        )
        .await;
    let approved = frank.ok(Method::POST, &format!("{path}/approve"), None).await;
    let last = approved["decisions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["author"].as_str(), last["acting_for"].as_str()),
        (Some(frank.user_id.as_str()), Some(carol.user_id.as_str()))
    );
    assert_eq!(last["delegation"]["id"], delegation["delegation_id"]);

    // Dan signs: the record is sealed and dispatched with the whole chain.
    let signed = dan.ok(Method::POST, &format!("{path}/sign"), None).await;
    assert_eq!(signed["status"], "signed");
    let reference = signed["reference"].as_str().unwrap().to_owned();
    assert_error(&dan.post(&format!("{path}/sign"), &json!({})).await, 403, "M_FORBIDDEN");
    let export = dan.ok(Method::GET, &format!("/_diplomatie/client/v1/correspondence/{reference}"), None).await;
    let record = &export["record"];
    assert_eq!(
        (record["author"].as_str(), record["body"].as_str()),
        (Some(dan.user_id.as_str()), Some("Visite le 12 mars."))
    );
    assert_eq!(record["circuit"]["drafted_by"], alice.user_id);
    assert_eq!(
        record["circuit"]["decisions"].as_array().unwrap().len(),
        5,
        "bob, carol's refusal, bob, frank for carol, dan"
    );
    for who in [&bob, &frank, &dan] {
        assert!(export["public_keys"].get(&who.user_id).is_some(), "{export}");
    }
    let erin = server.login("erin", "pw").await;
    erin.ok(Method::GET, &format!("/_diplomatie/client/v1/correspondence/{reference}"), None).await;

    // Offline: the chain verifies; tampering, or a missing key, does not.
    let (ok, said) = verify(&server, &export, "signed.json").await;
    assert!(ok && said.contains("2 approvals"), "{said}");
    let mut tampered = export.clone();
    tampered["record"]["body"] = json!("Visite le 13 mars.");
    let (ok, said) = verify(&server, &tampered, "tampered.json").await;
    assert!(!ok && said.contains("INVALID"), "{said}");
    let mut keyless = export.clone();
    keyless["public_keys"].as_object_mut().unwrap().remove(&bob.user_id);
    let (ok, said) = verify(&server, &keyless, "keyless.json").await;
    assert!(!ok && said.contains(&bob.user_id), "{said}");

    // Others cannot read the circuit; unknown circuits are unknown.
    let outsider = server.register("outsider").await;
    assert_error(&outsider.get(&path).await, 404, "M_NOT_FOUND");
    assert_error(&alice.get(&format!("{CIRCUITS}/C-nope")).await, 404, "M_NOT_FOUND");
    assert_error(&alice.raw(Method::POST, CIRCUITS, b"{".to_vec()).await, 400, "M_NOT_JSON");
    assert_error(&alice.post(&format!("{path}/stamp"), &json!({})).await, 404, "M_UNRECOGNIZED");
    assert_error(&alice.post(&format!("{path}/approve"), &json!({ "colour": "red" })).await, 400, "M_BAD_JSON");
}

/// The newest message of `room` whose body contains `needle`, once there is one.
async fn message_with(c: &diplomatie_tests::Client, room: &str, needle: &str) -> Value {
    let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50");
    let find = |v: &Value| {
        v["chunk"]
            .as_array()
            .and_then(|c| c.iter().find(|e| e["content"]["body"].as_str().is_some_and(|b| b.contains(needle))).cloned())
    };
    let page = c.until(&path, |v| find(v).is_some()).await;
    find(&page).unwrap()
}

async fn a_circuit_runs_from_a_standard_client(backend: Backend) {
    let server = TestServer::start_with_organisation(backend, ORG, &[]).await;
    let login = |u: &'static str| server.login(u, "pw");
    let (root, alice, bob, dan, erin) =
        (login("root").await, login("alice").await, login("bob").await, login("dan").await, login("erin").await);
    let signatories = json!({ "signatories": [{ "user_id": dan.user_id, "title": "Chef de poste" }] });
    root.ok(Method::PUT, "/_diplomatie/admin/v1/groups/paris/signatories", Some(&signatories)).await;
    let room = correspondence_room(&alice).await;
    let react = |c: &'static str, target: String| {
        let who = match c {
            "bob" => &bob,
            _ => &dan,
        };
        let content = json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": target, "key": "✅" } });
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.reaction/{}", rand::random::<u64>());
        async move { who.ok(Method::PUT, &path, Some(&content)).await }
    };

    // Approvers without a signatory: the service says what is missing, nothing opens.
    alice.send_text(&room, "!telegram\nAction: dgm\nObjet: Sans signataire\nVisas: @bob:localhost\n\nTexte.").await;
    message_with(&alice, &room, "Signataire").await;
    // A draft naming its approver and signatory opens a circuit: its notice shows the text.
    let draft = "!telegram\nAction: dgm\nObjet: Relève de la garde\nVisas: @bob:localhost\nSignataire: @dan:localhost\n\nLa relève a lieu à midi.";
    alice.send_text(&room, draft).await;
    let opened = message_with(&alice, &room, "ouvert par").await;
    let text = opened["content"]["body"].as_str().unwrap();
    assert!(text.contains("La relève a lieu à midi.") && text.contains("Visa attendu de @bob:localhost"), "{text}");
    let id = text.split_whitespace().nth(1).unwrap().to_owned();
    assert!(id.starts_with("C-"), "{text}");
    let path = format!("{CIRCUITS}/{id}");

    // Dan's ✅ before bob's approval is refused (a notice says why); bob's counts, then dan's.
    react("dan", opened["event_id"].as_str().unwrap().to_owned()).await;
    message_with(&alice, &room, "awaits @bob:localhost").await;
    assert_eq!(alice.ok(Method::GET, &path, None).await["awaiting"], bob.user_id);
    react("bob", opened["event_id"].as_str().unwrap().to_owned()).await;
    alice.until(&path, |v| v["awaiting"] == dan.user_id.as_str()).await;
    react("dan", opened["event_id"].as_str().unwrap().to_owned()).await;
    let signed = alice.until(&path, |v| v["status"] == "signed").await;
    let reference = signed["reference"].as_str().unwrap();
    let export = erin.ok(Method::GET, &format!("/_diplomatie/client/v1/correspondence/{reference}"), None).await;
    assert_eq!(export["record"]["circuit"]["decisions"].as_array().unwrap().len(), 2);
    assert_eq!(export["record"]["body"], "La relève a lieu à midi.");
    message_with(&alice, &room, &format!("envoyé : {reference}")).await;
}
