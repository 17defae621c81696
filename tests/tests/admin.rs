//! Synapse's admin API, black box, as its tools call it: accounts listed (filters, order,
//! pages), read, created and changed (password, display name, administrator, addresses),
//! deactivated, their passwords reset and devices deleted; rooms listed, read, their members
//! and state; every endpoint refused to non-administrators and its bad parameters answered
//! with the spec's errors; every change in the audit log.

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    accounts_are_administered_as_synapse_does,
    rooms_are_listed_and_read,
    registration_tokens_are_administered,
    only_administrators_get_in,
    rooms_are_deleted_and_purged,
    media_is_listed_quarantined_and_deleted,
    users_get_rate_limits_of_their_own,
    shadow_banned_users_reach_nobody,
    the_portals_administration_is_audited,
);

fn user_path(user: &str) -> String {
    format!("/_synapse/admin/v2/users/{}", urlencode(user))
}

fn names(page: &Value) -> Vec<String> {
    page["users"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_owned()).collect()
}

async fn accounts_are_administered_as_synapse_does(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let host = root.user_id.split_once(':').unwrap().1.to_owned();
    let alice = server.register("alice").await;
    server.register("bob").await;

    let version = root.ok(Method::GET, "/_synapse/admin/v1/server_version", None).await;
    assert!(version["server_version"].as_str().is_some_and(|v| !v.is_empty()), "{version}");

    // The list: everyone, by name; a name filter; pages with next_token and total.
    let all = root.ok(Method::GET, "/_synapse/admin/v2/users", None).await;
    assert_eq!(names(&all), [format!("@alice:{host}"), format!("@bob:{host}"), format!("@root:{host}")], "{all}");
    assert_eq!(all["total"], 3);
    assert_eq!(all["users"][2]["admin"], true);
    assert_eq!(all["users"][0]["admin"], false);
    assert!(all["users"][0]["creation_ts"].as_i64().unwrap() > 1_600_000_000, "seconds, as Synapse counts");
    let page = root.ok(Method::GET, "/_synapse/admin/v2/users?limit=2", None).await;
    assert_eq!(names(&page).len(), 2);
    assert_eq!(page["next_token"], "2", "{page}");
    let rest = root.ok(Method::GET, "/_synapse/admin/v2/users?limit=2&from=2", None).await;
    assert_eq!(names(&rest), [format!("@root:{host}")]);
    assert!(rest.get("next_token").is_none(), "{rest}");
    let found = root.ok(Method::GET, "/_synapse/admin/v2/users?name=ALI", None).await;
    assert_eq!(names(&found), [format!("@alice:{host}")]);
    let admins = root.ok(Method::GET, "/_synapse/admin/v2/users?admins=true", None).await;
    assert_eq!(names(&admins), [format!("@root:{host}")]);
    let backwards = root.ok(Method::GET, "/_synapse/admin/v2/users?dir=b", None).await;
    assert_eq!(names(&backwards)[0], format!("@root:{host}"));

    // Creation: 201, then the new account logs in with its password.
    let carol_id = format!("@carol:{host}");
    let body = json!({ "password": "carol's secret", "displayname": "Carol", "admin": false,
                       "threepids": [{ "medium": "email", "address": "Carol@Example.org" }] });
    let (status, created) = root.put(&user_path(&carol_id), &body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], carol_id.as_str());
    assert_eq!(created["displayname"], "Carol");
    assert_eq!(created["threepids"][0]["address"], "carol@example.org", "{created}");
    let carol = server.login("carol", "carol's secret").await;
    let profile = carol.ok(Method::GET, &format!("/_matrix/client/v3/profile/{}", urlencode(&carol_id)), None).await;
    assert_eq!(profile["displayname"], "Carol");

    // A change: 200; a new password logs the devices out unless told otherwise.
    let (status, changed) = root.put(&user_path(&carol_id), &json!({ "password": "new secret", "admin": true })).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["admin"], true);
    let (status, _) = carol.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 401, "the old session ends with the new password");
    server.login("carol", "new secret").await;
    let read = root.ok(Method::GET, &user_path(&carol_id), None).await;
    assert_eq!(read["admin"], true);
    assert_eq!(read["deactivated"], false);

    // Devices: listed, one deleted; joined rooms; whois.
    let alice2 = server.login("alice", "correct horse").await;
    let devices_path = format!("{}/devices", user_path(&alice.user_id));
    let devices = root.ok(Method::GET, &devices_path, None).await;
    assert_eq!(devices["total"], 2, "{devices}");
    let one = root.ok(Method::GET, &format!("{devices_path}/{}", alice2.device_id), None).await;
    assert_eq!(one["device_id"], alice2.device_id.as_str());
    root.ok(Method::DELETE, &format!("{devices_path}/{}", alice2.device_id), None).await;
    let (status, _) = alice2.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 401, "the deleted device's session ended");
    let devices = root.ok(Method::GET, &devices_path, None).await;
    assert_eq!(devices["total"], 1);
    let room = alice.create_room(json!({ "name": "Alice's" })).await;
    let joined = root
        .ok(Method::GET, &format!("/_synapse/admin/v1/users/{}/joined_rooms", urlencode(&alice.user_id)), None)
        .await;
    assert_eq!(joined["joined_rooms"], json!([room]), "{joined}");
    let whois = root.ok(Method::GET, &format!("/_synapse/admin/v1/whois/{}", urlencode(&alice.user_id)), None).await;
    assert!(whois["devices"][alice.device_id.as_str()].is_object(), "{whois}");

    // Reset password: the old one fails, the new one works.
    let reset = format!("/_synapse/admin/v1/reset_password/{}", urlencode(&alice.user_id));
    root.ok(Method::POST, &reset, Some(&json!({ "new_password": "reset!", "logout_devices": false }))).await;
    let (status, _) = alice.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 200, "logout_devices: false keeps the sessions");
    server.login("alice", "reset!").await;

    // Deactivation: the account leaves its rooms and cannot log in; the list hides it unless asked.
    let deactivate = format!("/_synapse/admin/v1/deactivate/{}", urlencode(&alice.user_id));
    let done = root.ok(Method::POST, &deactivate, Some(&json!({ "erase": false }))).await;
    assert_eq!(done["id_server_unbind_result"], "success");
    let mut c = server.client();
    let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "reset!" });
    let refused = c.post("/_matrix/client/v3/login", &login).await;
    assert_error(&refused, 403, "M_USER_DEACTIVATED");
    c.token = None;
    let listed = root.ok(Method::GET, "/_synapse/admin/v2/users", None).await;
    assert!(!names(&listed).contains(&alice.user_id), "{listed}");
    let listed = root.ok(Method::GET, "/_synapse/admin/v2/users?deactivated=true", None).await;
    assert!(names(&listed).contains(&alice.user_id));
    let members = root.ok(Method::GET, &format!("/_synapse/admin/v1/rooms/{}/members", urlencode(&room)), None).await;
    assert_eq!(members["total"], 0, "{members}");
    // Reactivated with a password, never without.
    let refused = root.put(&user_path(&alice.user_id), &json!({ "deactivated": false })).await;
    assert_error(&refused, 400, "M_INVALID_PARAM");
    assert_eq!(root.ok(Method::GET, &user_path(&alice.user_id), None).await["deactivated"], true);
    let (status, back) =
        root.put(&user_path(&alice.user_id), &json!({ "deactivated": false, "password": "again" })).await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["deactivated"], false);
    server.login("alice", "again").await;

    // Bad input: the spec's errors, nothing changed.
    assert_error(&root.get("/_synapse/admin/v2/users?limit=-1").await, 400, "M_INVALID_PARAM");
    assert_error(&root.get("/_synapse/admin/v2/users?order_by=shoe_size").await, 400, "M_INVALID_PARAM");
    assert_error(&root.get("/_synapse/admin/v2/users?dir=sideways").await, 400, "M_INVALID_PARAM");
    assert_error(&root.get("/_synapse/admin/v2/users?guests=maybe").await, 400, "M_INVALID_PARAM");
    assert_error(&root.get(&user_path(&format!("@nobody:{host}"))).await, 404, "M_NOT_FOUND");
    assert_error(&root.get(&user_path("not a user id")).await, 400, "M_INVALID_PARAM");
    assert_error(
        &root.put(&user_path("@someone:elsewhere.example"), &json!({ "password": "x" })).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&root.put(&user_path(&carol_id), &json!({ "admin": "yes" })).await, 400, "M_BAD_JSON");
    assert_error(
        &root.put(&user_path(&carol_id), &json!({ "threepids": [{ "medium": "pigeon", "address": "x" }] })).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&root.post(&reset, &json!({})).await, 400, "M_MISSING_PARAM");
    assert_eq!(root.ok(Method::GET, &user_path(&carol_id), None).await["admin"], true, "nothing changed");

    // The audit log names who did what, newest first, never a password.
    let audit = root.ok(Method::GET, "/_diplomatie/admin/v1/audit", None).await;
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("user.modify", alice.user_id.as_str()),
            ("user.deactivate", alice.user_id.as_str()),
            ("user.reset_password", alice.user_id.as_str()),
            ("user.delete_devices", alice.user_id.as_str()),
            ("user.modify", carol_id.as_str()),
            ("user.create", carol_id.as_str()),
        ],
        "{audit}"
    );
    assert!(audit["entries"].as_array().unwrap().iter().all(|e| e["admin"] == root.user_id.as_str()));
    assert!(!audit.to_string().contains("secret"), "no password in the log: {audit}");
    let older = root.ok(Method::GET, "/_diplomatie/admin/v1/audit?limit=2", None).await;
    let next = older["next_token"].as_str().unwrap().to_owned();
    let after = root.ok(Method::GET, &format!("/_diplomatie/admin/v1/audit?limit=2&from={next}"), None).await;
    assert_eq!(after["entries"][0]["action"], "user.reset_password", "{after}");
    // Fields it does not know are ignored, as by Synapse (the admin UI sends the whole account).
    let (status, same) = root.put(&user_path(&carol_id), &json!({ "shoe_size": 44, "name": "ignored" })).await;
    assert_eq!((status, &same["name"]), (200, &json!(carol_id)), "{same}");
}

async fn rooms_are_listed_and_read(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let big = alice.create_room(json!({ "name": "Zebra crossing", "preset": "public_chat" })).await;
    bob.join(&big).await;
    let small = alice.create_room(json!({ "name": "Aardvark den" })).await;

    let list = root.ok(Method::GET, "/_synapse/admin/v1/rooms", None).await;
    let ids: Vec<&str> = list["rooms"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [small.as_str(), big.as_str()], "by name: {list}");
    assert_eq!(list["total_rooms"], 2);
    assert_eq!(list["offset"], 0);
    let zebra = &list["rooms"][1];
    assert_eq!(zebra["joined_members"], 2);
    assert_eq!(zebra["joined_local_members"], 2);
    assert_eq!(zebra["join_rules"], "public");
    assert_eq!(zebra["creator"], alice.user_id.as_str());
    assert!(zebra["state_events"].as_u64().unwrap() >= 5, "{zebra}");

    let by_size = root.ok(Method::GET, "/_synapse/admin/v1/rooms?order_by=joined_members", None).await;
    assert_eq!(by_size["rooms"][0]["room_id"], big.as_str(), "the largest first");
    let page = root.ok(Method::GET, "/_synapse/admin/v1/rooms?limit=1", None).await;
    assert_eq!(page["next_batch"], 1, "{page}");
    let found = root.ok(Method::GET, "/_synapse/admin/v1/rooms?search_term=zebra", None).await;
    assert_eq!(found["total_rooms"], 1);
    assert_eq!(found["rooms"][0]["name"], "Zebra crossing");

    let room = root.ok(Method::GET, &format!("/_synapse/admin/v1/rooms/{}", urlencode(&big)), None).await;
    assert_eq!(room["name"], "Zebra crossing");
    let members = root.ok(Method::GET, &format!("/_synapse/admin/v1/rooms/{}/members", urlencode(&big)), None).await;
    let mut expected = vec![alice.user_id.clone(), bob.user_id.clone()];
    expected.sort();
    assert_eq!(members["members"], json!(expected));
    let state = root.ok(Method::GET, &format!("/_synapse/admin/v1/rooms/{}/state", urlencode(&big)), None).await;
    let names: Vec<&Value> = state["state"].as_array().unwrap().iter().filter(|e| e["type"] == "m.room.name").collect();
    assert_eq!(names.len(), 1, "{state}");
    assert_eq!(names[0]["content"]["name"], "Zebra crossing");

    // Its messages, to an administrator who is not in the room: newest first, in pages,
    // filtered.
    for text in ["un", "deux", "trois"] {
        alice.send_text(&big, text).await;
    }
    let messages = format!("/_synapse/admin/v1/rooms/{}/messages", urlencode(&big));
    let filter = urlencode(r#"{"types":["m.room.message"]}"#);
    let page = root.ok(Method::GET, &format!("{messages}?dir=b&limit=2&filter={filter}"), None).await;
    let texts = |page: &Value| -> Vec<String> {
        page["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(texts(&page), ["trois", "deux"], "{page}");
    let end = page["end"].as_str().unwrap();
    let next = root.ok(Method::GET, &format!("{messages}?dir=b&limit=2&filter={filter}&from={end}"), None).await;
    assert_eq!(texts(&next), ["un"], "{next}");
    let all = root.ok(Method::GET, &format!("{messages}?dir=f&limit=100"), None).await;
    assert_eq!(all["chunk"][0]["type"], "m.room.create", "forwards from the start");
    assert_error(&root.get(&format!("{messages}?filter=notjson")).await, 400, "M_INVALID_PARAM");
    assert_error(&root.get("/_synapse/admin/v1/rooms/!nowhere:elsewhere.example/messages").await, 404, "M_NOT_FOUND");
    assert_error(&alice.get(&messages).await, 403, "M_FORBIDDEN");

    // A blocked room: no local user joins or is invited; unblocked, they are again.
    let block = format!("/_synapse/admin/v1/rooms/{}/block", urlencode(&small));
    let blocked = root.ok(Method::PUT, &block, Some(&json!({ "block": true }))).await;
    assert_eq!(blocked, json!({ "block": true, "user_id": root.user_id }));
    assert_error(&alice.invite(&small, &bob.user_id).await, 403, "M_FORBIDDEN");
    let carol = server.register("carol").await;
    let block_big = format!("/_synapse/admin/v1/rooms/{}/block", urlencode(&big));
    root.ok(Method::PUT, &block_big, Some(&json!({ "block": true }))).await;
    assert_error(&carol.join(&big).await, 403, "M_FORBIDDEN");
    root.ok(Method::PUT, &block_big, Some(&json!({ "block": false }))).await;
    let (status, v) = carol.join(&big).await;
    assert_eq!(status, 200, "a public room, unblocked: {v}");
    assert_eq!(root.ok(Method::GET, &block, None).await["block"], true);
    let unblocked = root.ok(Method::PUT, &block, Some(&json!({ "block": false }))).await;
    assert_eq!(unblocked, json!({ "block": false }));
    let (status, v) = alice.invite(&small, &bob.user_id).await;
    assert_eq!(status, 200, "{v}");
    // A room not known here may be blocked ahead.
    let ahead = root
        .ok(Method::PUT, "/_synapse/admin/v1/rooms/!later:elsewhere.example/block", Some(&json!({ "block": true })))
        .await;
    assert_eq!(ahead["block"], true);
    assert_error(&root.put(&block, &json!({})).await, 400, "M_MISSING_PARAM");
    assert_error(&root.put(&block, &json!({ "block": "yes" })).await, 400, "M_BAD_JSON");

    assert_error(&root.get("/_synapse/admin/v1/rooms?order_by=colour").await, 400, "M_INVALID_PARAM");
    assert_error(&root.get("/_synapse/admin/v1/rooms/!nowhere:elsewhere.example").await, 404, "M_NOT_FOUND");
    assert_error(&root.get("/_synapse/admin/v1/rooms/not-a-room").await, 400, "M_INVALID_PARAM");
}

async fn only_administrators_get_in(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let user = urlencode(&root.user_id);
    let room = urlencode(&room);
    // The version is public, as Synapse's is (the admin UI shows it on its login page).
    let (status, version) = server.client().get("/_synapse/admin/v1/server_version").await;
    assert_eq!(status, 200, "{version}");
    let gets = [
        "/_synapse/admin/v2/users".to_owned(),
        format!("/_synapse/admin/v2/users/{user}"),
        format!("/_synapse/admin/v2/users/{user}/devices"),
        format!("/_synapse/admin/v1/users/{user}/joined_rooms"),
        format!("/_synapse/admin/v1/whois/{user}"),
        "/_synapse/admin/v1/rooms".to_owned(),
        format!("/_synapse/admin/v1/rooms/{room}"),
        format!("/_synapse/admin/v1/rooms/{room}/members"),
        format!("/_synapse/admin/v1/rooms/{room}/state"),
        "/_diplomatie/admin/v1/audit".to_owned(),
        "/_synapse/admin/v1/registration_tokens".to_owned(),
        format!("/_synapse/admin/v2/rooms/{room}/delete_status"),
        "/_synapse/admin/v2/rooms/delete_status/abc".to_owned(),
    ];
    for path in &gets {
        assert_error(&alice.get(path).await, 403, "M_FORBIDDEN");
        assert_error(&server.client().get(path).await, 401, "M_MISSING_TOKEN");
    }
    let writes = [
        (Method::PUT, format!("/_synapse/admin/v2/users/{user}"), json!({ "admin": false })),
        (Method::POST, format!("/_synapse/admin/v1/deactivate/{user}"), json!({})),
        (Method::POST, format!("/_synapse/admin/v1/reset_password/{user}"), json!({ "new_password": "x" })),
        (Method::POST, format!("/_synapse/admin/v2/users/{user}/delete_devices"), json!({ "devices": [] })),
        (Method::POST, "/_synapse/admin/v1/registration_tokens/new".to_owned(), json!({})),
        (Method::DELETE, format!("/_synapse/admin/v2/rooms/{room}"), json!({})),
        (Method::DELETE, format!("/_synapse/admin/v1/rooms/{room}"), json!({})),
    ];
    for (method, path, body) in &writes {
        let refused = alice.request(method.clone(), path, Some(body)).await;
        assert_error(&refused, 403, "M_FORBIDDEN");
    }
    // Nothing changed: root is still an administrator and can log in with its password; the
    // room is still there.
    root.ok(Method::GET, &format!("/_synapse/admin/v1/rooms/{room}"), None).await;
    let me = root.ok(Method::GET, &format!("/_synapse/admin/v2/users/{user}"), None).await;
    assert_eq!(me["admin"], true);
    server.login("root", "pw").await;
    let audit = root.ok(Method::GET, "/_diplomatie/admin/v1/audit", None).await;
    assert_eq!(audit["entries"], json!([]), "refusals change nothing: {audit}");
}

async fn registration_tokens_are_administered(backend: Backend) {
    let server = TestServer::start(backend, &[("REGISTRATION__REQUIRE_TOKEN", "true")]).await;
    let root = server.admin().await;
    const TOKENS: &str = "/_synapse/admin/v1/registration_tokens";

    let made =
        root.ok(Method::POST, &format!("{TOKENS}/new"), Some(&json!({ "token": "abc", "uses_allowed": 1 }))).await;
    assert_eq!(made, json!({ "token": "abc", "uses_allowed": 1, "pending": 0, "completed": 0, "expiry_time": null }));
    let random = root.ok(Method::POST, &format!("{TOKENS}/new"), Some(&json!({ "length": 20 }))).await;
    let random = random["token"].as_str().unwrap().to_owned();
    assert_eq!(random.len(), 20);

    // Used once by a registration, the first is no longer valid.
    let c = server.client();
    let body = json!({ "username": "dave", "password": "dave's password" });
    let (status, first) = c.post("/_matrix/client/v3/register", &body).await;
    assert_eq!(status, 401, "{first}");
    let mut body = body;
    body["auth"] = json!({ "type": "m.login.registration_token", "token": "abc", "session": first["session"] });
    let (status, reg) = c.post("/_matrix/client/v3/register", &body).await;
    assert_eq!(status, 200, "{reg}");
    let valid = root.ok(Method::GET, &format!("{TOKENS}?valid=true"), None).await;
    let valid: Vec<&str> =
        valid["registration_tokens"].as_array().unwrap().iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(valid, [random.as_str()]);
    let abc = root.ok(Method::GET, &format!("{TOKENS}/abc"), None).await;
    assert_eq!(abc["completed"], 1, "{abc}");

    // More uses, then deleted.
    let changed = root.ok(Method::PUT, &format!("{TOKENS}/abc"), Some(&json!({ "uses_allowed": null }))).await;
    assert_eq!(changed["uses_allowed"], Value::Null);
    let all = root.ok(Method::GET, TOKENS, None).await;
    assert_eq!(all["registration_tokens"].as_array().unwrap().len(), 2);
    root.ok(Method::DELETE, &format!("{TOKENS}/abc"), None).await;
    assert_error(&root.get(&format!("{TOKENS}/abc")).await, 404, "M_NOT_FOUND");

    // Bad input: the spec's errors.
    assert_error(&root.post(&format!("{TOKENS}/new"), &json!({ "token": random })).await, 400, "M_INVALID_PARAM");
    assert_error(&root.post(&format!("{TOKENS}/new"), &json!({ "token": "a b" })).await, 400, "M_INVALID_PARAM");
    assert_error(&root.post(&format!("{TOKENS}/new"), &json!({ "length": 65 })).await, 400, "M_INVALID_PARAM");
    assert_error(&root.post(&format!("{TOKENS}/new"), &json!({ "uses_allowed": -1 })).await, 400, "M_INVALID_PARAM");
    assert_error(&root.post(&format!("{TOKENS}/new"), &json!({ "expiry_time": 1000 })).await, 400, "M_INVALID_PARAM");
    assert_error(&root.put(&format!("{TOKENS}/nothing"), &json!({})).await, 404, "M_NOT_FOUND");
    assert_error(&root.get(&format!("{TOKENS}?valid=perhaps")).await, 400, "M_INVALID_PARAM");
    assert_eq!(root.ok(Method::GET, TOKENS, None).await["registration_tokens"].as_array().unwrap().len(), 1);

    // The health check answers without a token.
    let health = reqwest::get(format!("http://{}/health", server.addr())).await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "OK");
}

/// Waits for a room deletion to end; answers its status.
async fn deletion_end(root: &diplomatie_tests::Client, delete_id: &str) -> Value {
    let path = format!("/_synapse/admin/v2/rooms/delete_status/{delete_id}");
    for _ in 0..200 {
        let status = root.ok(Method::GET, &path, None).await;
        if status["status"] == "complete" || status["status"] == "failed" {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the deletion {delete_id} did not end");
}

async fn found_by(c: &diplomatie_tests::Client, term: &str) -> usize {
    let body = json!({ "search_categories": { "room_events": { "search_term": term } } });
    let v = c.ok(Method::POST, "/_matrix/client/v3/search", Some(&body)).await;
    v["search_categories"]["room_events"]["results"].as_array().unwrap().len()
}

async fn rooms_are_deleted_and_purged(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let host = root.user_id.split_once(':').unwrap().1.to_owned();
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let doomed = alice
        .create_room(json!({ "name": "Doomed", "preset": "public_chat",
                                           "room_alias_name": "doomed", "visibility": "public" }))
        .await;
    bob.join(&doomed).await;
    alice.invite(&doomed, &carol.user_id).await;
    alice.send_text(&doomed, "the quartermaster's ledger").await;
    let kept = alice.create_room(json!({ "name": "Kept" })).await;
    alice.send_text(&kept, "the quartermaster's diary").await;
    let search_until = |c, n| async move {
        for _ in 0..100 {
            if found_by(c, "quartermaster").await == n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the search never found {n} results");
    };
    search_until(&alice, 2).await;
    let path = format!("/_synapse/admin/v2/rooms/{}", urlencode(&doomed));

    // Bad requests change nothing.
    assert_error(&root.request(Method::DELETE, &path, Some(&json!({ "block": "yes" }))).await, 400, "M_BAD_JSON");
    let moved = json!({ "new_room_user_id": root.user_id });
    assert_error(&root.request(Method::DELETE, &path, Some(&moved)).await, 400, "M_INVALID_PARAM");
    assert_error(&root.delete("/_synapse/admin/v2/rooms/!nowhere:elsewhere.example").await, 404, "M_NOT_FOUND");
    assert_error(&root.delete("/_synapse/admin/v2/rooms/not-a-room").await, 400, "M_INVALID_PARAM");
    assert_error(&root.get("/_synapse/admin/v2/rooms/delete_status/nothing").await, 404, "M_NOT_FOUND");
    assert_error(&root.get(&format!("{path}/delete_status")).await, 404, "M_NOT_FOUND");
    // A room a legal hold keeps is not purged.
    let hold = json!({ "scope": "room", "target": doomed, "reason": "Enquête" });
    let hold = root.ok(Method::POST, "/_diplomatie/admin/v1/holds", Some(&hold)).await;
    assert_error(&root.request(Method::DELETE, &path, Some(&json!({}))).await, 403, "M_FORBIDDEN");
    let hold_id = hold["hold_id"].as_str().unwrap();
    let release = format!("/_diplomatie/admin/v1/holds/{hold_id}/release");
    root.ok(Method::POST, &release, Some(&json!({ "reason": "Classée" }))).await;
    let room = root.ok(Method::GET, &format!("/_synapse/admin/v1/rooms/{}", urlencode(&doomed)), None).await;
    assert_eq!(room["joined_local_members"], 2, "nothing was lost: {room}");

    // The deletion: members leave (the invite is refused), the alias goes, the room is
    // blocked and purged.
    let started = root.ok(Method::DELETE, &path, Some(&json!({ "block": true }))).await;
    let delete_id = started["delete_id"].as_str().unwrap().to_owned();
    let done = deletion_end(&root, &delete_id).await;
    assert_eq!(done["status"], "complete", "{done}");
    let mut kicked: Vec<String> =
        done["shutdown_room"]["kicked_users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().into()).collect();
    kicked.sort();
    assert_eq!(kicked, [alice.user_id.clone(), bob.user_id.clone(), carol.user_id.clone()], "{done}");
    assert_eq!(done["shutdown_room"]["failed_to_kick_users"], json!([]));
    assert_eq!(done["shutdown_room"]["local_aliases"], json!([format!("#doomed:{host}")]));
    let listed = root.ok(Method::GET, &format!("{path}/delete_status"), None).await;
    assert_eq!(listed["results"][0]["delete_id"], delete_id.as_str(), "{listed}");
    assert_eq!(listed["results"][0]["status"], "complete");

    assert_error(&root.get(&format!("/_synapse/admin/v1/rooms/{}", urlencode(&doomed))).await, 404, "M_NOT_FOUND");
    let rooms = root.ok(Method::GET, "/_synapse/admin/v1/rooms", None).await;
    assert_eq!(rooms["total_rooms"], 1, "{rooms}");
    let joined = bob.ok(Method::GET, "/_matrix/client/v3/joined_rooms", None).await;
    assert_eq!(joined["joined_rooms"], json!([]));
    let alias = format!("/_matrix/client/v3/directory/room/{}", urlencode(&format!("#doomed:{host}")));
    assert_error(&bob.get(&alias).await, 404, "M_NOT_FOUND");
    let public = bob.ok(Method::GET, "/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(public["chunk"], json!([]), "{public}");
    assert_error(&bob.join(&doomed).await, 403, "M_FORBIDDEN");
    assert_eq!(found_by(&alice, "quartermaster").await, 1, "only the kept room's message is found");
    // A sync after the purge answers (the room is gone from it), and the other room lives on.
    let (status, _) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(status, 200);
    alice.send_text(&kept, "still here").await;
    // The same room cannot be deleted twice (it is unknown now) unless only blocked.
    assert_error(&root.request(Method::DELETE, &path, Some(&json!({}))).await, 404, "M_NOT_FOUND");

    // Without purge: the members leave, the room stays (empty) and is not blocked.
    let quiet = alice.create_room(json!({ "name": "Quiet" })).await;
    let v1 = format!("/_synapse/admin/v1/rooms/{}", urlencode(&quiet));
    let shutdown = root.ok(Method::DELETE, &v1, Some(&json!({ "purge": false }))).await;
    assert_eq!(shutdown["kicked_users"], json!([alice.user_id]), "{shutdown}");
    assert_eq!(shutdown["new_room_id"], Value::Null);
    let room = root.ok(Method::GET, &v1, None).await;
    assert_eq!(room["joined_members"], 0, "{room}");
    let block = root.ok(Method::GET, &format!("{v1}/block"), None).await;
    assert_eq!(block["block"], false);

    let audit = root.ok(Method::GET, "/_diplomatie/admin/v1/audit", None).await;
    let deleted: Vec<&Value> =
        audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "room.delete").collect();
    assert_eq!(deleted.len(), 2, "{audit}");
}

/// Uploads a file; answers its `server/media_id`.
async fn upload(c: &diplomatie_tests::Client, name: &str, bytes: &[u8]) -> String {
    let resp = c
        .http
        .post(format!("{}/_matrix/media/v3/upload?filename={name}", c.base))
        .bearer_auth(c.token.as_deref().unwrap())
        .header("content-type", "text/plain")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    v["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned()
}

/// The status of a download of `server/media_id`.
async fn download(c: &diplomatie_tests::Client, media: &str) -> u16 {
    let url = format!("{}/_matrix/client/v1/media/download/{media}", c.base);
    c.http.get(url).bearer_auth(c.token.as_deref().unwrap()).send().await.unwrap().status().as_u16()
}

async fn media_is_listed_quarantined_and_deleted(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let shown = upload(&alice, "shown.txt", b"shown in the room").await;
    let kept = upload(&alice, "kept.txt", b"kept aside, longer").await;
    let (host, shown_id) = shown.split_once('/').unwrap();
    let kept_id = kept.split_once('/').unwrap().1;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let content = json!({ "msgtype": "m.file", "body": "shown.txt", "url": format!("mxc://{shown}") });
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/f1", urlencode(&room)),
            Some(&content),
        )
        .await;
    let alice_media = format!("/_synapse/admin/v1/users/{}/media", urlencode(&alice.user_id));

    let listed = root.ok(Method::GET, &format!("{alice_media}?order_by=media_length&dir=b"), None).await;
    assert_eq!(listed["total"], 2, "{listed}");
    assert_eq!(listed["media"][0]["media_id"], kept_id, "the larger first");
    assert_eq!(listed["media"][0]["upload_name"], "kept.txt");
    assert_eq!(listed["media"][0]["media_length"], 18);
    assert_eq!(listed["media"][1]["quarantined_by"], Value::Null);
    let page = root.ok(Method::GET, &format!("{alice_media}?limit=1"), None).await;
    assert_eq!(page["next_token"], 1, "{page}");
    assert_error(&root.get(&format!("{alice_media}?order_by=colour")).await, 400, "M_INVALID_PARAM");

    let room_media = root.ok(Method::GET, &format!("/_synapse/admin/v1/room/{}/media", urlencode(&room)), None).await;
    assert_eq!(room_media, json!({ "local": [format!("mxc://{shown}")], "remote": [] }));

    // A quarantine: the room's media is served no more, to anyone; released, it is again.
    assert_eq!(download(&bob, &shown).await, 200);
    let quarantine = format!("/_synapse/admin/v1/room/{}/media/quarantine", urlencode(&room));
    let done = root.ok(Method::POST, &quarantine, Some(&json!({}))).await;
    assert_eq!(done["num_quarantined"], 1);
    assert_eq!(download(&bob, &shown).await, 404);
    assert_eq!(download(&alice, &shown).await, 404);
    assert_eq!(download(&bob, &kept).await, 200);
    let listed = root.ok(Method::GET, &format!("{alice_media}?order_by=media_id"), None).await;
    let item = listed["media"].as_array().unwrap().iter().find(|m| m["media_id"] == shown_id).unwrap().clone();
    assert_eq!(item["quarantined_by"], root.user_id.as_str(), "{listed}");
    root.ok(Method::POST, &format!("/_synapse/admin/v1/media/unquarantine/{shown}"), Some(&json!({}))).await;
    assert_eq!(download(&bob, &shown).await, 200);

    // A protected media item is not quarantined.
    root.ok(Method::POST, &format!("/_synapse/admin/v1/media/protect/{kept_id}"), Some(&json!({}))).await;
    let user_quarantine = format!("/_synapse/admin/v1/user/{}/media/quarantine", urlencode(&alice.user_id));
    let done = root.ok(Method::POST, &user_quarantine, Some(&json!({}))).await;
    assert_eq!(done["num_quarantined"], 1, "only the unprotected one");
    assert_eq!(download(&bob, &kept).await, 200);
    assert_eq!(download(&bob, &shown).await, 404);
    root.ok(Method::POST, &format!("/_synapse/admin/v1/media/unquarantine/{shown}"), Some(&json!({}))).await;

    // Deletion: the file goes; twice is not found; another server's media is not deleted.
    let one = format!("/_synapse/admin/v1/media/{shown}");
    let deleted = root.ok(Method::DELETE, &one, None).await;
    assert_eq!(deleted, json!({ "deleted_media": [shown_id], "total": 1 }));
    assert_eq!(download(&bob, &shown).await, 404);
    assert_error(&root.delete(&one).await, 404, "M_NOT_FOUND");
    assert_error(&root.delete("/_synapse/admin/v1/media/elsewhere.example/abc").await, 400, "M_INVALID_PARAM");
    assert_error(
        &root.post(&format!("/_synapse/admin/v1/media/{host}/delete"), &json!({})).await,
        400,
        "M_MISSING_PARAM",
    );
    // By date: the protected one stays.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 60_000;
    let by_date = root
        .ok(Method::POST, &format!("/_synapse/admin/v1/media/{host}/delete?before_ts={now}"), Some(&json!({})))
        .await;
    assert_eq!(by_date["total"], 0, "{by_date}");
    root.ok(Method::POST, &format!("/_synapse/admin/v1/media/unprotect/{kept_id}"), Some(&json!({}))).await;
    let all = root.ok(Method::DELETE, &alice_media, None).await;
    assert_eq!(all, json!({ "deleted_media": [kept_id], "total": 1 }));
    assert_eq!(root.ok(Method::GET, &alice_media, None).await["total"], 0);
    assert_eq!(download(&bob, &kept).await, 404);

    for path in [alice_media.clone(), format!("/_synapse/admin/v1/room/{}/media", urlencode(&room))] {
        assert_error(&bob.get(&path).await, 403, "M_FORBIDDEN");
    }
    assert_error(&bob.post(&quarantine, &json!({})).await, 403, "M_FORBIDDEN");
    let audit = root.ok(Method::GET, "/_diplomatie/admin/v1/audit", None).await;
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"media.quarantine") && actions.contains(&"media.delete"), "{actions:?}");
}

async fn users_get_rate_limits_of_their_own(backend: Backend) {
    let limits = [("RATE_LIMITS__ENABLED", "true"), ("RATE_LIMITS__PER_SECOND", "0.01"), ("RATE_LIMITS__BURST", "3")];
    let mut server = TestServer::start(backend, &limits).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let room = root.create_room(json!({ "preset": "public_chat" })).await;
    alice.join(&room).await;
    let send = |alice: &diplomatie_tests::Client, i: usize| {
        let alice = alice.clone();
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}", urlencode(&room));
        async move { alice.put(&path, &json!({ "msgtype": "m.text", "body": "x" })).await.0 }
    };
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(send(&alice, i).await);
    }
    assert_eq!(statuses.last(), Some(&429), "the server's limit holds: {statuses:?}");

    let path = format!("/_synapse/admin/v1/users/{}/override_ratelimit", urlencode(&alice.user_id));
    assert_eq!(root.ok(Method::GET, &path, None).await, json!({}));
    let none = json!({ "messages_per_second": 0, "burst_count": 0 });
    assert_eq!(root.ok(Method::POST, &path, Some(&none)).await, none);
    for i in 10..30 {
        assert_eq!(send(&alice, i).await, 200, "no limit for alice now");
    }
    // Kept across a restart.
    server.kill().await;
    server.launch().await;
    let root = server.login("root", "pw").await;
    let alice = server.login("alice", "correct horse").await;
    for i in 30..40 {
        assert_eq!(send(&alice, i).await, 200, "still no limit for alice after a restart");
    }
    assert_eq!(root.ok(Method::GET, &path, None).await, none);
    root.ok(Method::DELETE, &path, None).await;
    assert_eq!(root.ok(Method::GET, &path, None).await, json!({}));
    let mut statuses = Vec::new();
    for i in 40..44 {
        statuses.push(send(&alice, i).await);
    }
    assert_eq!(statuses.last(), Some(&429), "the server's limit again: {statuses:?}");

    assert_error(&root.post(&path, &json!({ "messages_per_second": -1 })).await, 400, "M_INVALID_PARAM");
    assert_error(&root.post(&path, &json!({ "burst_count": "many" })).await, 400, "M_BAD_JSON");
    let nobody = "/_synapse/admin/v1/users/%40nobody%3Alocalhost/override_ratelimit";
    assert_error(&root.get(nobody).await, 404, "M_NOT_FOUND");
    assert_error(&alice.get(&path).await, 403, "M_FORBIDDEN");
}

/// The bodies of a room's last messages, as `reader` sees them.
async fn bodies(reader: &diplomatie_tests::Client, room: &str) -> Vec<String> {
    let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", urlencode(room));
    let page = reader.ok(Method::GET, &path, None).await;
    page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect()
}

async fn shadow_banned_users_reach_nobody(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = bob.create_room(json!({ "preset": "public_chat", "name": "Before" })).await;
    alice.join(&room).await;
    let ban = format!("/_synapse/admin/v1/users/{}/shadow_ban", urlencode(&alice.user_id));
    root.ok(Method::POST, &ban, Some(&json!({}))).await;
    let view = root.ok(Method::GET, &user_path(&alice.user_id), None).await;
    assert_eq!(view["shadow_banned"], true);

    // Everything seems to succeed, and nothing reaches anyone.
    let send = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/s1", urlencode(&room));
    let first = alice.ok(Method::PUT, &send, Some(&json!({ "msgtype": "m.text", "body": "spam" }))).await;
    let again = alice.ok(Method::PUT, &send, Some(&json!({ "msgtype": "m.text", "body": "spam" }))).await;
    assert!(first["event_id"].as_str().unwrap().starts_with('$'));
    assert_eq!(first, again, "a retry is answered the same id");
    let topic = format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", urlencode(&room));
    alice.ok(Method::PUT, &topic, Some(&json!({ "name": "Defaced" }))).await;
    let (status, _) = alice.invite(&room, &carol.user_id).await;
    assert_eq!(status, 200);
    assert!(!bodies(&bob, &room).await.contains(&"spam".to_owned()));
    let event = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        urlencode(&room),
        urlencode(first["event_id"].as_str().unwrap())
    );
    assert_error(&bob.get(&event).await, 404, "M_NOT_FOUND");
    let name = bob.ok(Method::GET, &topic, None).await;
    assert_eq!(name["name"], "Before");
    let carol_sync = carol.ok(Method::GET, "/_matrix/client/v3/sync?timeout=0", None).await;
    assert!(carol_sync["rooms"]["invite"].get(room.as_str()).is_none(), "{carol_sync}");

    // Lifted: what alice sends arrives again.
    root.ok(Method::DELETE, &ban, None).await;
    assert_eq!(root.ok(Method::GET, &user_path(&alice.user_id), None).await["shadow_banned"], false);
    alice.send_text(&room, "hello again").await;
    assert!(bodies(&bob, &room).await.contains(&"hello again".to_owned()));
    assert_error(&bob.post(&ban, &json!({})).await, 403, "M_FORBIDDEN");
    assert_error(
        &root.post("/_synapse/admin/v1/users/%40x%3Aelsewhere.example/shadow_ban", &json!({})).await,
        400,
        "M_INVALID_PARAM",
    );
}

async fn the_portals_administration_is_audited(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let path = format!("/_diplomatie/admin/v1/users/{}/clearance", urlencode(&alice.user_id));
    root.ok(Method::PUT, &path, Some(&json!({ "clearance": "DR" }))).await;
    // Refused or bad requests change nothing and are not written.
    assert_error(&alice.put(&path, &json!({ "clearance": "DR" })).await, 403, "M_FORBIDDEN");
    assert_error(&root.put(&path, &json!({ "clearance": "TS" })).await, 400, "M_INVALID_PARAM");
    // Reading is not a change.
    root.ok(Method::GET, &path, None).await;
    let audit = root.ok(Method::GET, "/_diplomatie/admin/v1/audit", None).await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["admin"], root.user_id.as_str());
    assert_eq!(entries[0]["action"], "PUT /_diplomatie/admin/v1/users/{user_id}/clearance");
    assert_eq!(entries[0]["target"], alice.user_id.as_str());
}
