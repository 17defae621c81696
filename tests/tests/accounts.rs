//! Accounts: registration (UIA, tokens, shared secret), login, tokens, devices, password,
//! deactivation, profile (client-server spec, "Client Authentication" and following).

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, TestServer};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    registration_follows_user_interactive_auth,
    registration_rejects_bad_and_taken_usernames,
    registration_tokens_gate_registration,
    registration_disabled_is_forbidden,
    login_logout_and_whoami,
    refresh_tokens_rotate,
    devices_list_rename_and_delete_with_uia,
    password_change_logs_out_other_devices,
    deactivated_accounts_cannot_log_in,
    erased_accounts_messages_are_redacted_for_newcomers,
    profile_changes_propagate_to_member_events,
    shared_secret_registration_checks_the_hmac,
    cli_creates_users,
    guests_are_off_by_default_and_limited_when_on,
);

async fn registration_follows_user_interactive_auth(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let c = server.client();
    let (status, v) = c.get("/_matrix/client/v3/register/available?username=alice").await;
    assert_eq!((status, v["available"].clone()), (200, json!(true)));
    // The first request gets the flows and a session.
    let (status, flows) =
        c.post("/_matrix/client/v3/register", &json!({ "username": "alice", "password": "pw" })).await;
    assert_eq!(status, 401);
    assert_eq!(flows["flows"][0]["stages"], json!(["m.login.dummy"]));
    let session = flows["session"].as_str().unwrap();
    // An unknown stage is refused with the flows again.
    let (status, v) = c.post("/_matrix/client/v3/register", &json!({ "username": "alice", "password": "pw", "auth": { "type": "org.example.unknown", "session": session } })).await;
    assert_eq!(status, 401, "{v}");
    let (status, reg) = c
        .post(
            "/_matrix/client/v3/register",
            &json!({ "username": "alice", "password": "pw", "auth": { "type": "m.login.dummy", "session": session } }),
        )
        .await;
    assert_eq!(status, 200, "{reg}");
    assert_eq!(reg["user_id"], "@alice:localhost");
    assert!(reg["access_token"].is_string() && reg["device_id"].is_string());
    let (status, v) = c.get("/_matrix/client/v3/register/available?username=alice").await;
    assert_error(&(status, v), 400, "M_USER_IN_USE");
    // inhibit_login gives no token.
    let alice = server.register("bob").await;
    assert!(alice.token.is_some());
    let (_, f) = c
        .post("/_matrix/client/v3/register", &json!({ "username": "carol", "password": "pw", "inhibit_login": true }))
        .await;
    let (status, reg) = c
        .post("/_matrix/client/v3/register", &json!({ "username": "carol", "password": "pw", "inhibit_login": true, "auth": { "type": "m.login.dummy", "session": f["session"] } }))
        .await;
    assert_eq!(status, 200);
    assert!(reg.get("access_token").is_none() && reg.get("device_id").is_none(), "{reg}");
    // A later step may send its `auth` alone: the session keeps the first request's parameters.
    let (_, f) = c
        .post("/_matrix/client/v3/register", &json!({ "username": "dora", "password": "pw", "device_id": "XYZZY" }))
        .await;
    let auth = json!({ "auth": { "type": "m.login.dummy", "session": f["session"] } });
    let (status, reg) = c.post("/_matrix/client/v3/register", &auth).await;
    assert_eq!(status, 200, "{reg}");
    assert_eq!((reg["user_id"].as_str(), reg["device_id"].as_str()), (Some("@dora:localhost"), Some("XYZZY")));
    // Asked again once done, the session answers with the same account (a new session on it).
    let (status, again) = c.post("/_matrix/client/v3/register", &auth).await;
    assert_eq!((status, &again["user_id"]), (200, &reg["user_id"]), "{again}");
    assert_ne!(again["access_token"], reg["access_token"]);
    server.login("dora", "pw").await;
}

async fn registration_rejects_bad_and_taken_usernames(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let c = server.client();
    assert_error(
        &c.get("/_matrix/client/v3/register/available?username=b%C3%A9b%C3%A9").await,
        400,
        "M_INVALID_USERNAME",
    );
    assert_error(
        &c.post("/_matrix/client/v3/register", &json!({ "username": "has space", "password": "pw" })).await,
        400,
        "M_INVALID_USERNAME",
    );
    server.register("dave").await;
    assert_error(
        &c.post("/_matrix/client/v3/register", &json!({ "username": "dave", "password": "pw" })).await,
        400,
        "M_USER_IN_USE",
    );
    // Guests are not admitted.
    assert_error(&c.post("/_matrix/client/v3/register?kind=guest", &json!({})).await, 403, "M_FORBIDDEN");
}

async fn registration_tokens_gate_registration(backend: Backend) {
    let server = TestServer::start(backend, &[("REGISTRATION__REQUIRE_TOKEN", "true")]).await;
    let out = server.command(&["registration-token", "create", "--token", "ministere", "--uses", "1"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = server.client();
    let (_, v) = c.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=ministere").await;
    assert_eq!(v["valid"], true);
    let (_, v) = c.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=nope").await;
    assert_eq!(v["valid"], false);
    let (status, flows) = c.post("/_matrix/client/v3/register", &json!({ "username": "eve", "password": "pw" })).await;
    assert_eq!(status, 401);
    assert_eq!(flows["flows"][0]["stages"], json!(["m.login.registration_token"]));
    let session = flows["session"].clone();
    // A wrong token keeps the session open and says why.
    let (status, v) = c.post("/_matrix/client/v3/register", &json!({ "username": "eve", "password": "pw", "auth": { "type": "m.login.registration_token", "token": "nope", "session": session } })).await;
    assert_eq!(status, 401);
    assert_eq!(v["errcode"], "M_UNAUTHORIZED", "{v}");
    let (status, v) = c.post("/_matrix/client/v3/register", &json!({ "username": "eve", "password": "pw", "auth": { "type": "m.login.registration_token", "token": "ministere", "session": session } })).await;
    assert_eq!(status, 200, "{v}");
    // The token allowed one use: it is now spent.
    let (_, v) = c.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=ministere").await;
    assert_eq!(v["valid"], false);
    // Dummy auth is not enough here.
    let (_, flows) = c.post("/_matrix/client/v3/register", &json!({ "username": "frank", "password": "pw" })).await;
    let (status, _) = c.post("/_matrix/client/v3/register", &json!({ "username": "frank", "password": "pw", "auth": { "type": "m.login.dummy", "session": flows["session"] } })).await;
    assert_eq!(status, 401);
}

async fn registration_disabled_is_forbidden(backend: Backend) {
    let server = TestServer::start(backend, &[("REGISTRATION__ENABLED", "false")]).await;
    let c = server.client();
    assert_error(
        &c.post("/_matrix/client/v3/register", &json!({ "username": "x", "password": "pw" })).await,
        403,
        "M_FORBIDDEN",
    );
    // The administrator still creates accounts from the command line.
    let out = server.command(&["user", "create", "agent", "--password", "secret"]).await;
    assert!(out.status.success());
    let (status, v) = c.post("/_matrix/client/v3/login", &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "agent" }, "password": "secret" })).await;
    assert_eq!(status, 200, "{v}");
}

async fn login_logout_and_whoami(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let c = server.client();
    let (_, types) = c.get("/_matrix/client/v3/login").await;
    assert_eq!(types["flows"][0]["type"], "m.login.password");
    assert_error(
        &c.post("/_matrix/client/v3/login", &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "wrong" })).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &c.post("/_matrix/client/v3/login", &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "nobody" }, "password": "wrong" })).await,
        403,
        "M_FORBIDDEN",
    );
    // Login by full user id, with a chosen device id.
    let (status, login) = c
        .post("/_matrix/client/v3/login", &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "@alice:localhost" }, "password": "correct horse", "device_id": "PHONE" }))
        .await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["device_id"], "PHONE");
    let mut phone = alice.clone();
    phone.token = Some(login["access_token"].as_str().unwrap().to_owned());
    let me = phone.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(me["user_id"], "@alice:localhost");
    assert_eq!(me["device_id"], "PHONE");
    // Sign in with another device: a login token, asked for with the password again, logs a
    // new device in once.
    assert_eq!(types["flows"][1], json!({ "type": "m.login.token", "get_login_token": true }));
    let caps = phone.ok(Method::GET, "/_matrix/client/v3/capabilities", None).await;
    assert_eq!(caps["capabilities"]["m.get_login_token"]["enabled"], true);
    let (status, uia) = phone.post("/_matrix/client/v1/login/get_token", &json!({})).await;
    assert_eq!(status, 401, "{uia}");
    let password = |session: &Value, password: &str| json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": password, "session": session } });
    let (status, v) = phone.post("/_matrix/client/v1/login/get_token", &password(&uia["session"], "wrong")).await;
    assert_eq!(status, 401, "a wrong password gives no token: {v}");
    let token = phone
        .ok(Method::POST, "/_matrix/client/v1/login/get_token", Some(&password(&uia["session"], "correct horse")))
        .await;
    assert_eq!(token["expires_in_ms"], 120_000);
    let with_token = json!({ "type": "m.login.token", "token": token["login_token"], "device_id": "TABLET" });
    let (status, tablet) = c.post("/_matrix/client/v3/login", &with_token).await;
    assert_eq!(status, 200, "{tablet}");
    assert_eq!((tablet["user_id"].as_str(), tablet["device_id"].as_str()), (Some("@alice:localhost"), Some("TABLET")));
    assert_error(&c.post("/_matrix/client/v3/login", &with_token).await, 403, "M_FORBIDDEN");
    let forged = json!({ "type": "m.login.token", "token": "forged" });
    assert_error(&c.post("/_matrix/client/v3/login", &forged).await, 403, "M_FORBIDDEN");
    // whois: where and when each device was last seen, for the user and administrators.
    let whois = format!("/_matrix/client/v3/admin/whois/{}", urlencode("@alice:localhost"));
    let v = phone.ok(Method::GET, &whois, None).await;
    assert_eq!(v["user_id"], "@alice:localhost");
    let seen = &v["devices"]["PHONE"]["sessions"][0]["connections"][0];
    assert_eq!(seen["ip"], "127.0.0.1", "{v}");
    assert!(seen["last_seen"].as_i64().unwrap() > 0, "{v}");
    assert!(v["devices"]["TABLET"].is_object(), "{v}");
    let devices = phone.ok(Method::GET, "/_matrix/client/v3/devices/PHONE", None).await;
    assert_eq!(devices["last_seen_ip"], "127.0.0.1");
    let bob = server.register("bob").await;
    assert_error(&bob.get(&whois).await, 403, "M_FORBIDDEN");
    let root = server.admin().await;
    let v = root.ok(Method::GET, &whois, None).await;
    assert!(v["devices"]["PHONE"].is_object(), "{v}");
    // Logging out kills that token only.
    phone.ok(Method::POST, "/_matrix/client/v3/logout", Some(&json!({}))).await;
    assert_error(&phone.get("/_matrix/client/v3/account/whoami").await, 401, "M_UNKNOWN_TOKEN");
    alice.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    // logout/all kills every token.
    alice.ok(Method::POST, "/_matrix/client/v3/logout/all", Some(&json!({}))).await;
    assert_error(&alice.get("/_matrix/client/v3/account/whoami").await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&c.get("/_matrix/client/v3/account/whoami").await, 401, "M_MISSING_TOKEN");
}

async fn refresh_tokens_rotate(backend: Backend) {
    let server = TestServer::start(backend, &[("ACCESS_TOKEN_LIFETIME_MS", "1500")]).await;
    server.register("alice").await;
    let c = server.client();
    let (status, login) = c
        .post("/_matrix/client/v3/login", &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse", "refresh_token": true }))
        .await;
    assert_eq!(status, 200);
    let refresh = login["refresh_token"].as_str().expect("refresh token").to_owned();
    assert_eq!(login["expires_in_ms"], 1500);
    let mut me = c.clone();
    me.token = Some(login["access_token"].as_str().unwrap().to_owned());
    me.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    // Once expired, the token is refused with soft_logout, and the refresh token renews it.
    tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
    let expired = me.get("/_matrix/client/v3/account/whoami").await;
    assert_error(&expired, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(expired.1["soft_logout"], true);
    let (status, renewed) = c.post("/_matrix/client/v3/refresh", &json!({ "refresh_token": refresh })).await;
    assert_eq!(status, 200, "{renewed}");
    me.token = Some(renewed["access_token"].as_str().unwrap().to_owned());
    me.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    // A refresh token works once.
    assert_error(
        &c.post("/_matrix/client/v3/refresh", &json!({ "refresh_token": refresh })).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
}

async fn devices_list_rename_and_delete_with_uia(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let c = server.client();
    let (_, second) = c
        .post("/_matrix/client/v3/login", &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse", "device_id": "LAPTOP" }))
        .await;
    assert!(second["access_token"].is_string());
    let devices = alice.ok(Method::GET, "/_matrix/client/v3/devices", None).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2);
    alice
        .ok(Method::PUT, "/_matrix/client/v3/devices/LAPTOP", Some(&json!({ "display_name": "Poste du cabinet" })))
        .await;
    let d = alice.ok(Method::GET, "/_matrix/client/v3/devices/LAPTOP", None).await;
    assert_eq!(d["display_name"], "Poste du cabinet");
    assert_error(&alice.get("/_matrix/client/v3/devices/NOPE").await, 404, "M_NOT_FOUND");
    // Deleting needs the password (UIA).
    let (status, uia) = alice.delete("/_matrix/client/v3/devices/LAPTOP").await;
    assert_eq!(status, 401);
    assert_eq!(uia["flows"][0]["stages"], json!(["m.login.password"]));
    // `params` is always there (the spec's UIA response lists it), and empty: no stage has any.
    assert_eq!(uia["params"], json!({}), "{uia}");
    assert_eq!(uia["completed"], json!([]), "{uia}");
    let wrong = json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "bad", "session": uia["session"] } });
    let (status, v) = alice.request(Method::DELETE, "/_matrix/client/v3/devices/LAPTOP", Some(&wrong)).await;
    assert_eq!((status, v["errcode"].clone()), (401, json!("M_FORBIDDEN")), "{v}");
    let right = json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse", "session": uia["session"] } });
    // A session opened to delete one device cannot delete another.
    let mine = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    let (status, v) = alice.request(Method::DELETE, &mine, Some(&right)).await;
    assert_eq!((status, v["errcode"].clone()), (403, json!("M_FORBIDDEN")), "{v}");
    alice.ok(Method::GET, &mine, None).await;
    alice.ok(Method::DELETE, "/_matrix/client/v3/devices/LAPTOP", Some(&right)).await;
    let devices = alice.ok(Method::GET, "/_matrix/client/v3/devices", None).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1);
    let mut laptop = c.clone();
    laptop.token = Some(second["access_token"].as_str().unwrap().to_owned());
    assert_error(&laptop.get("/_matrix/client/v3/account/whoami").await, 401, "M_UNKNOWN_TOKEN");
}

async fn password_change_logs_out_other_devices(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let c = server.client();
    let (_, other) = c.post("/_matrix/client/v3/login", &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse" })).await;
    let mut other_client = c.clone();
    other_client.token = Some(other["access_token"].as_str().unwrap().to_owned());
    // A pusher of the other device, which goes with it.
    let pusher = json!({ "app_id": "fr.diplomatie", "pushkey": "k1", "kind": "http", "app_display_name": "D", "device_display_name": "d", "lang": "fr", "data": { "url": "https://push.example/_matrix/push/v1/notify" } });
    other_client.ok(Method::POST, "/_matrix/client/v3/pushers/set", Some(&pusher)).await;
    assert_eq!(alice.ok(Method::GET, "/_matrix/client/v3/pushers", None).await["pushers"].as_array().unwrap().len(), 1);
    let (status, uia) =
        alice.post("/_matrix/client/v3/account/password", &json!({ "new_password": "new secret" })).await;
    assert_eq!(status, 401);
    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse", "session": uia["session"] });
    alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/account/password",
            Some(&json!({ "new_password": "new secret", "auth": auth })),
        )
        .await;
    alice.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_error(&other_client.get("/_matrix/client/v3/account/whoami").await, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(alice.ok(Method::GET, "/_matrix/client/v3/pushers", None).await["pushers"], json!([]));
    let (status, _) = c.post("/_matrix/client/v3/login", &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "new secret" })).await;
    assert_eq!(status, 200);
}

async fn deactivated_accounts_cannot_log_in(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "Salle" })).await;
    let (_, uia) = alice.post("/_matrix/client/v3/account/deactivate", &json!({})).await;
    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse", "session": uia["session"] });
    alice.ok(Method::POST, "/_matrix/client/v3/account/deactivate", Some(&json!({ "auth": auth }))).await;
    assert_error(&alice.get("/_matrix/client/v3/account/whoami").await, 401, "M_UNKNOWN_TOKEN");
    let c = server.client();
    let r = c.post("/_matrix/client/v3/login", &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse" })).await;
    assert_eq!(r.0, 403);
    // The account left its rooms, and its id stays taken.
    let bob = server.register("bob").await;
    bob.create_room(json!({})).await;
    let _ = room;
    assert_error(&c.get("/_matrix/client/v3/register/available?username=alice").await, 400, "M_USER_IN_USE");
}

/// Deactivation with `erase: true`: the account's messages stay whole for those who were in
/// the room when they were sent, and are redacted for anyone else; also after a restart.
async fn erased_accounts_messages_are_redacted_for_newcomers(backend: Backend) {
    let mut server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let sent = alice.send_text(&room, "à effacer").await;
    carol.join(&room).await;
    let event = format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(&sent));
    assert_eq!(carol.ok(Method::GET, &event, None).await["content"]["body"], "à effacer");
    let (_, uia) = alice.post("/_matrix/client/v3/account/deactivate", &json!({ "erase": true })).await;
    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse", "session": uia["session"] });
    alice
        .ok(Method::POST, "/_matrix/client/v3/account/deactivate", Some(&json!({ "auth": auth, "erase": true })))
        .await;
    for _ in 0..2 {
        // Fresh sessions each round: the server restarts in between.
        let bob = server.login("bob", "correct horse").await;
        let carol = server.login("carol", "correct horse").await;
        assert_eq!(bob.ok(Method::GET, &event, None).await["content"]["body"], "à effacer");
        let seen = carol.ok(Method::GET, &event, None).await;
        assert_eq!((seen["type"].as_str(), &seen["content"]), (Some("m.room.message"), &json!({})), "{seen}");
        let page = carol.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), None).await;
        let mine = page["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == sent.as_str()).cloned();
        assert_eq!(mine.map(|e| e["content"].clone()), Some(json!({})), "{page}");
        server.kill().await;
        server.launch().await;
    }
}

async fn profile_changes_propagate_to_member_events(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    alice
        .ok(
            Method::PUT,
            "/_matrix/client/v3/profile/@alice:localhost/displayname",
            Some(&json!({ "displayname": "Alice Martin" })),
        )
        .await;
    alice
        .ok(
            Method::PUT,
            "/_matrix/client/v3/profile/@alice:localhost/avatar_url",
            Some(&json!({ "avatar_url": "mxc://localhost/abc" })),
        )
        .await;
    let p = bob.ok(Method::GET, "/_matrix/client/v3/profile/@alice:localhost", None).await;
    assert_eq!(p, json!({ "displayname": "Alice Martin", "avatar_url": "mxc://localhost/abc" }));
    let d = bob.ok(Method::GET, "/_matrix/client/v3/profile/@alice:localhost/displayname", None).await;
    assert_eq!(d["displayname"], "Alice Martin");
    let member = bob
        .ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@alice:localhost"), None)
        .await;
    assert_eq!(member["displayname"], "Alice Martin");
    assert_eq!(member["avatar_url"], "mxc://localhost/abc");
    assert_error(
        &bob.put("/_matrix/client/v3/profile/@alice:localhost/displayname", &json!({ "displayname": "x" })).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(&bob.get("/_matrix/client/v3/profile/@nobody:localhost").await, 404, "M_NOT_FOUND");
}

fn mac(secret: &str, nonce: &str, user: &str, password: &str, admin: bool) -> String {
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(format!("{nonce}\0{user}\0{password}\0{}", if admin { "admin" } else { "notadmin" }).as_bytes());
    hex::encode(m.finalize().into_bytes())
}

async fn shared_secret_registration_checks_the_hmac(backend: Backend) {
    let server =
        TestServer::start(backend, &[("REGISTRATION__SHARED_SECRET", "s3cret"), ("REGISTRATION__ENABLED", "false")])
            .await;
    let c = server.client();
    let (_, n) = c.get("/_synapse/admin/v1/register").await;
    let nonce = n["nonce"].as_str().unwrap().to_owned();
    let bad = json!({ "nonce": nonce, "username": "admin", "password": "pw", "admin": true, "mac": mac("wrong", &nonce, "admin", "pw", true) });
    assert_error(&c.post("/_synapse/admin/v1/register", &bad).await, 403, "M_FORBIDDEN");
    let good = json!({ "nonce": nonce, "username": "admin", "password": "pw", "admin": true, "mac": mac("s3cret", &nonce, "admin", "pw", true) });
    let (status, v) = c.post("/_synapse/admin/v1/register", &good).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["user_id"], "@admin:localhost");
    // A nonce is good once.
    let again = json!({ "nonce": nonce, "username": "admin2", "password": "pw", "admin": false, "mac": mac("s3cret", &nonce, "admin2", "pw", false) });
    assert_eq!(c.post("/_synapse/admin/v1/register", &again).await.0, 400);
    assert_error(&c.post("/_synapse/admin/v1/register", &json!({ "nonce": "x" })).await, 400, "M_MISSING_PARAM");
}

async fn cli_creates_users(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let out = server
        .command(&["user", "create", "Consul", "--password", "pw", "--displayname", "Consul général", "--admin"])
        .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "@consul:localhost");
    let again = server.command(&["user", "create", "consul", "--password", "pw"]).await;
    assert!(!again.status.success());
    let c = server.client();
    let (status, _) = c.post("/_matrix/client/v3/login", &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "consul" }, "password": "pw" })).await;
    assert_eq!(status, 200);
    let p = c.get("/_matrix/client/v3/profile/@consul:localhost/displayname").await;
    assert_eq!(p.1["displayname"], "Consul général");
}

async fn guests_are_off_by_default_and_limited_when_on(backend: Backend) {
    let closed = TestServer::start(backend, &[]).await;
    let (status, v) = closed.client().post("/_matrix/client/v3/register?kind=guest", &json!({})).await;
    assert_eq!((status, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{v}");
    drop(closed);

    let server = TestServer::start(backend, &[("REGISTRATION__ALLOW_GUESTS", "true")]).await;
    let alice = server.register("alice").await;
    let mut guest = server.register_guest().await;
    let localpart = guest.user_id[1..].split(':').next().unwrap().to_owned();
    assert!(localpart.chars().all(|c| c.is_ascii_digit()), "{}", guest.user_id);
    assert_eq!(guest.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await["user_id"], guest.user_id);
    // Outside the guest endpoints: refused.
    assert_error(&guest.post("/_matrix/client/v3/createRoom", &json!({})).await, 403, "M_GUEST_ACCESS_FORBIDDEN");

    // A public room is closed to guests until its guest_access says can_join.
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = format!("/_matrix/client/v3/rooms/{room}/join");
    assert_error(&guest.post(&join, &json!({})).await, 403, "M_GUEST_ACCESS_FORBIDDEN");
    let access = format!("/_matrix/client/v3/rooms/{room}/state/m.room.guest_access/");
    alice.ok(Method::PUT, &access, Some(&json!({ "guest_access": "can_join" }))).await;
    guest.ok(Method::POST, &join, Some(&json!({}))).await;
    // Guests send messages, and nothing else.
    guest.send_text(&room, "bonjour").await;
    let (status, v) = guest.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.reaction/r1"), &json!({})).await;
    assert_eq!((status, v["errcode"].as_str()), (403, Some("M_GUEST_ACCESS_FORBIDDEN")), "{v}");
    // Closing the room to guests makes them leave.
    alice.ok(Method::PUT, &access, Some(&json!({ "guest_access": "forbidden" }))).await;
    let member = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", guest.user_id);
    assert_eq!(alice.ok(Method::GET, &member, None).await["membership"], "leave");

    // A guest upgrades its own account only, keeping its user id.
    let other = json!({ "username": "alice2", "password": "pw", "guest_access_token": guest.token, "auth": { "type": "m.login.dummy" } });
    assert_error(&server.client().post("/_matrix/client/v3/register", &other).await, 403, "M_FORBIDDEN");
    let own = json!({ "username": localpart, "password": "pw", "guest_access_token": guest.token, "auth": { "type": "m.login.dummy" } });
    let (status, v) = server.client().post("/_matrix/client/v3/register", &own).await;
    assert_eq!((status, v["user_id"].as_str()), (200, Some(guest.user_id.as_str())), "{v}");
    guest.token = Some(v["access_token"].as_str().unwrap().to_owned());
    guest.create_room(json!({})).await;
    let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": localpart }, "password": "pw" });
    assert_eq!(server.client().post("/_matrix/client/v3/login", &login).await.0, 200);
}
