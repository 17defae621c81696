//! The organisation as spaces, black box: functional groups joined by request and approved by
//! a manager from a standard client, communities of interest, and the import of an organisation.

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    a_functional_group_is_joined_by_request_that_a_manager_approves,
    communities_follow_their_join_rule,
    an_organisation_is_imported_once,
    the_command_line_imports_while_the_server_is_stopped,
    the_organisations_aliases_are_its_own,
);

async fn joined_rooms(c: &Client) -> Vec<String> {
    let v = c.ok(Method::GET, "/_matrix/client/v3/joined_rooms", None).await;
    let mut rooms: Vec<String> =
        v["joined_rooms"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
    rooms.sort();
    rooms
}

async fn state(c: &Client, room: &str, kind: &str, key: &str) -> Value {
    c.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/state/{kind}/{}", urlencode(key)), None).await
}

async fn membership(c: &Client, room: &str, user: &str) -> Value {
    state(c, room, "m.room.member", user).await["membership"].clone()
}

fn ids(v: &Value) -> (String, Vec<String>) {
    let space = v["space_id"].as_str().unwrap().to_owned();
    let mut rooms: Vec<String> =
        v["rooms"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
    rooms.sort();
    (space, rooms)
}

async fn a_functional_group_is_joined_by_request_that_a_manager_approves(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;

    let spec = json!({
        "slug": "dgm", "name": "DGM", "topic": "Direction générale de la mondialisation",
        "avatar_url": "mxc://localhost/logo", "managers": ["alice"],
    });
    assert_error(&alice.post("/_diplomatie/admin/v1/groups", &spec).await, 403, "M_FORBIDDEN");
    let mut bad = spec.clone();
    bad["slug"] = json!("Pas un slug");
    assert_error(&root.post("/_diplomatie/admin/v1/groups", &bad).await, 400, "M_INVALID_PARAM");
    let mut unknown = spec.clone();
    unknown["managers"] = json!(["nobody"]);
    assert_error(&root.post("/_diplomatie/admin/v1/groups", &unknown).await, 404, "M_NOT_FOUND");

    let created = root.ok(Method::POST, "/_diplomatie/admin/v1/groups", Some(&spec)).await;
    assert_eq!(created["created"], true);
    let (space, rooms) = ids(&created);
    assert_eq!(rooms.len(), 2, "a general and a correspondence room");
    // What standard clients show: a space with name, topic, avatar; its rooms as children.
    assert_eq!(state(&alice, &space, "m.room.name", "").await["name"], "DGM");
    assert_eq!(state(&alice, &space, "m.room.topic", "").await["topic"], "Direction générale de la mondialisation");
    assert_eq!(state(&alice, &space, "m.room.avatar", "").await["url"], "mxc://localhost/logo");
    assert_eq!(state(&alice, &space, "m.room.create", "").await["type"], "m.space");
    assert_eq!(state(&alice, &space, "fr.diplomatie.group", "").await["kind"], "functional_group");
    let hierarchy = alice.ok(Method::GET, &format!("/_matrix/client/v1/rooms/{space}/hierarchy"), None).await;
    let names: Vec<&str> = hierarchy["rooms"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, vec!["DGM", "DGM — Général", "DGM — Correspondance"]);
    // The manager is in, with power 100 everywhere.
    let mut all = rooms.clone();
    all.push(space.clone());
    all.sort();
    assert_eq!(joined_rooms(&alice).await, all);
    for r in &all {
        assert_eq!(state(&alice, r, "m.room.power_levels", "").await["users"][&alice.user_id], 100);
    }
    // The same group again: nothing new.
    let again = root.ok(Method::POST, "/_diplomatie/admin/v1/groups", Some(&spec)).await;
    assert_eq!(again["created"], false);
    assert_eq!(ids(&again), (space.clone(), rooms.clone()));

    // Bob cannot walk in: he asks, Alice approves (an invite, from any client), the server
    // joins him to the space and its rooms, which becomes his primary group.
    assert_error(&bob.join(&space).await, 403, "M_FORBIDDEN");
    bob.ok(Method::POST, &format!("/_matrix/client/v3/knock/{space}"), Some(&json!({ "reason": "Nouvel agent" })))
        .await;
    assert_eq!(membership(&alice, &space, &bob.user_id).await, "knock");
    assert_eq!(alice.invite(&space, &bob.user_id).await.0, 200);
    assert_eq!(joined_rooms(&bob).await, all);
    let report =
        root.ok(Method::GET, &format!("/_diplomatie/admin/v1/users/{}/clearance", urlencode(&bob.user_id)), None).await;
    assert_eq!(report["primary_group"], space.as_str());

    // Carol asks too; Alice refuses (she kicks the request): Carol is in nothing.
    carol.ok(Method::POST, &format!("/_matrix/client/v3/knock/{space}"), Some(&json!({}))).await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{space}/kick"),
            Some(&json!({ "user_id": carol.user_id, "reason": "Pas dans ce service" })),
        )
        .await;
    assert_eq!(membership(&alice, &space, &carol.user_id).await, "leave");
    assert!(joined_rooms(&carol).await.is_empty());
    // And a member who is no manager cannot approve.
    carol.ok(Method::POST, &format!("/_matrix/client/v3/knock/{space}"), Some(&json!({}))).await;
    assert_error(&bob.invite(&space, &carol.user_id).await, 403, "M_FORBIDDEN");

    // The administrator hands the group to Bob: he approves, Alice no longer can.
    let managers = "/_diplomatie/admin/v1/groups/dgm/managers";
    assert_error(&root.put(managers, &json!({ "managers": [] })).await, 400, "M_INVALID_PARAM");
    assert_error(
        &root.put("/_diplomatie/admin/v1/groups/nope/managers", &json!({ "managers": ["bob"] })).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(&alice.put(managers, &json!({ "managers": ["alice"] })).await, 403, "M_FORBIDDEN");
    let set = root.ok(Method::PUT, managers, Some(&json!({ "managers": ["bob"] }))).await;
    assert_eq!(set["managers"], json!([bob.user_id]));
    for r in &all {
        let users = &state(&bob, r, "m.room.power_levels", "").await["users"];
        assert_eq!(users[&bob.user_id], 100);
        assert!(users.get(&alice.user_id).is_none());
    }
    assert_eq!(bob.invite(&space, &carol.user_id).await.0, 200);
    assert_eq!(joined_rooms(&carol).await, all);
    let dave = server.register("dave").await;
    dave.ok(Method::POST, &format!("/_matrix/client/v3/knock/{space}"), Some(&json!({}))).await;
    assert_error(&alice.invite(&space, &dave.user_id).await, 403, "M_FORBIDDEN");
}

async fn communities_follow_their_join_rule(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let ngo = server.register("ngo").await;
    root.ok(
        Method::PUT,
        &format!("/_diplomatie/admin/v1/users/{}/kind", urlencode(&ngo.user_id)),
        Some(&json!({ "kind": "external" })),
    )
    .await;

    // Any agent creates one, with a manager and a project; an external cannot.
    let open = json!({
        "slug": "ebola", "name": "Crise Ebola", "manager": "bob", "project": "Task force Ebola",
        "tags": ["santé", "afrique"], "join": "open", "externals": true,
    });
    let created = bob.ok(Method::POST, "/_diplomatie/client/v1/communities", Some(&open)).await;
    let (space, rooms) = ids(&created);
    let marker = state(&bob, &space, "fr.diplomatie.group", "").await;
    assert_eq!(marker["kind"], "community");
    assert_eq!(marker["project"], "Task force Ebola");
    assert_eq!(marker["tags"], json!(["santé", "afrique"]));
    assert_eq!(marker["manager"], bob.user_id.as_str());
    let mut by_ngo = open.clone();
    by_ngo["slug"] = json!("ong");
    assert_error(&ngo.post("/_diplomatie/client/v1/communities", &by_ngo).await, 403, "M_FORBIDDEN");
    let mut no_project = open.clone();
    no_project.as_object_mut().unwrap().remove("project");
    no_project["slug"] = json!("sans-projet");
    assert_error(&bob.post("/_diplomatie/client/v1/communities", &no_project).await, 400, "M_MISSING_PARAM");

    // Open: anyone joins the space, then its rooms (restricted to the space's members); the
    // external too, since it is opened to them.
    assert_eq!(carol.join(&space).await.0, 200);
    assert_eq!(carol.join(&rooms[0]).await.0, 200);
    assert_eq!(ngo.join(&space).await.0, 200);
    assert_eq!(ngo.join(&rooms[0]).await.0, 200);

    // On request: a knock that the manager approves.
    let request = json!({ "slug": "sahel", "name": "Sahel", "manager": "bob", "project": "Stratégie Sahel", "join": "request", "members": ["carol"] });
    let created = bob.ok(Method::POST, "/_diplomatie/client/v1/communities", Some(&request)).await;
    let (space, rooms) = ids(&created);
    assert!(joined_rooms(&carol).await.contains(&rooms[0]), "listed members are added");
    assert_error(&dave.join(&space).await, 403, "M_FORBIDDEN");
    dave.ok(Method::POST, &format!("/_matrix/client/v3/knock/{space}"), Some(&json!({}))).await;
    assert_eq!(bob.invite(&space, &dave.user_id).await.0, 200);
    assert!(joined_rooms(&dave).await.contains(&rooms[0]));
    // Not open to externals: the external may not even ask.
    assert_error(&ngo.post(&format!("/_matrix/client/v3/knock/{space}"), &json!({})).await, 403, "M_FORBIDDEN");
}

const ORGANISATION: &str = r#"
# Un extrait de l'organisation du ministère.
users:
  - localpart: amb.berlin
    name: Ambassadeur à Berlin
    password: secret-1
    clearance: DR
    group: ambassade-berlin
  - localpart: redacteur
    name: Rédacteur
    group: ambassade-berlin
  - localpart: analyste
    name: Analyste DGM
    password: secret-2
    group: dgm
  - localpart: ong.medecins
    name: Médecins du monde
    kind: external
groups:
  - slug: ambassade-berlin
    name: Ambassade de France à Berlin
    topic: Chancellerie
    managers: [amb.berlin]
  - slug: dgm
    name: Direction générale de la mondialisation
    classification: NP
    managers: [analyste]
communities:
  - slug: franco-allemand
    name: Coopération franco-allemande
    manager: amb.berlin
    project: Messagerie franco-allemande
    tags: [allemagne, europe]
    join: request
    members: [analyste]
"#;

async fn an_organisation_is_imported_once(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let import = |body: &'static str, csv: bool| {
        let root = root.clone();
        async move {
            let mut req = root.http.post(format!("{}/_diplomatie/admin/v1/import", root.base)).body(body);
            req = req.bearer_auth(root.token.clone().unwrap());
            req = req.header("content-type", if csv { "text/csv" } else { "application/yaml" });
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, report) = import(ORGANISATION, false).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report,
        // Managers are in their spaces from the start: Redacteur in his embassy, the analyst in
        // the community.
        json!({ "users_created": 4, "users_updated": 2, "groups_created": 2, "communities_created": 1, "memberships_added": 2 })
    );
    let amb = server.login("amb.berlin", "secret-1").await;
    let rooms = joined_rooms(&amb).await;
    assert_eq!(rooms.len(), 3 + 2, "his embassy (space and 2 rooms) and the community (space and room)");
    let clearance =
        root.ok(Method::GET, &format!("/_diplomatie/admin/v1/users/{}/clearance", urlencode(&amb.user_id)), None).await;
    assert_eq!(clearance["clearance"], "DR");
    let ngo = root.ok(Method::GET, "/_diplomatie/admin/v1/users/%40ong.medecins%3Alocalhost/clearance", None).await;
    assert_eq!(ngo["kind"], "external");
    let berlin = clearance["primary_group"].as_str().unwrap().to_owned();
    assert_eq!(state(&amb, &berlin, "m.room.name", "").await["name"], "Ambassade de France à Berlin");
    assert_eq!(membership(&amb, &berlin, "@redacteur:localhost").await, "join");

    // The same file again changes nothing: no account, no space, no event.
    let since = amb.sync(None, "timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let (status, report) = import(ORGANISATION, false).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report,
        json!({ "users_created": 0, "users_updated": 0, "groups_created": 0, "communities_created": 0, "memberships_added": 0 })
    );
    let after = amb.sync(Some(&since), "timeout=0").await;
    assert!(after["rooms"]["join"].as_object().is_none_or(|r| r.is_empty()), "{after}");

    // CSV of users, also idempotent.
    let csv = "localpart,name,clearance,kind,group,admin\nstagiaire,Stagiaire,NP,agent,dgm,\n";
    let (status, report) = import(csv, true).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["users_created"], 1);
    assert_eq!(report["memberships_added"], 1);
    assert_eq!(import(csv, true).await.1["memberships_added"], 0);

    // Bad files are refused before anything changes.
    assert_error(&import("users: [ {localpart: x", false).await, 400, "M_BAD_JSON");
    assert_error(&import("users:\n  - localpart: y\n    colour: blue\n", false).await, 400, "M_BAD_JSON");
    assert_error(&import("users:\n  - localpart: z\n    clearance: TS\n", false).await, 400, "M_INVALID_PARAM");
    assert_error(&import("users:\n  - localpart: w\n    group: nowhere\n", false).await, 404, "M_NOT_FOUND");
    // A manager or member nobody knows, named after accounts and a group the file would
    // create: refused, and none of them made (nor any clearance set).
    let unknown_manager = "users:\n  - localpart: v\n    clearance: DR\n    group: g-refusee\n\
        groups:\n  - slug: g-refusee\n    name: Refusée\n    managers: [v]\n\
        communities:\n  - slug: c-refusee\n    name: Refusée\n    project: P\n    manager: personne\n";
    assert_error(&import(unknown_manager, false).await, 404, "M_NOT_FOUND");
    let unknown_member = "users:\n  - localpart: u\n    group: g-refusee\n\
        groups:\n  - slug: g-refusee\n    name: Refusée\n    managers: [fantome]\n";
    assert_error(&import(unknown_member, false).await, 404, "M_NOT_FOUND");
    let unknown_in_community = "users:\n  - localpart: t\n\
        communities:\n  - slug: c-refusee\n    name: Refusée\n    project: P\n    manager: t\n    members: [t, absent]\n";
    assert_error(&import(unknown_in_community, false).await, 404, "M_NOT_FOUND");
    let no_project = "users:\n  - localpart: s\n\
        communities:\n  - slug: c-refusee\n    name: Refusée\n    project: ' '\n    manager: s\n";
    assert_error(&import(no_project, false).await, 400, "M_INVALID_PARAM");
    for refused in ["z", "w", "v", "u", "t", "s"] {
        let (status, _) = root.get(&format!("/_diplomatie/admin/v1/users/%40{refused}%3Alocalhost/clearance")).await;
        assert_eq!(status, 404, "the refused file created nobody");
    }
    for alias in ["%23g.g-refusee%3Alocalhost", "%23c.c-refusee%3Alocalhost"] {
        let (status, _) = root.get(&format!("/_matrix/client/v3/directory/room/{alias}")).await;
        assert_eq!(status, 404, "the refused file made no space ({alias})");
    }
}

async fn the_command_line_imports_while_the_server_is_stopped(backend: Backend) {
    let mut server = TestServer::start(backend, &[]).await;
    let file = server.data_dir.path().join("organisation.yaml");
    std::fs::write(&file, ORGANISATION).unwrap();
    let file = file.to_str().unwrap();
    // Beside a running server it refuses: both would write the rooms.
    let out = server.command(&["org", "import", file]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin API"), "{}", String::from_utf8_lossy(&out.stderr));
    server.kill().await;
    let out = server.command(&["org", "import", file]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["groups_created"], 2);
    let out = server.command(&["org", "import", file]).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["groups_created"], 0);
    assert_eq!(report["memberships_added"], 0);
    // The other subcommands: clearance, device flag, kind, group, community.
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let report: Value =
        serde_json::from_str(&ok(server.command(&["org", "clearance", "redacteur", "DR"]).await)).unwrap();
    assert_eq!(report["clearance"], "DR");
    assert_eq!(report["set_by"], "@diplomatie:localhost");
    let out = server.command(&["org", "clearance", "redacteur", "secret"]).await;
    assert!(!out.status.success());
    let report: Value =
        serde_json::from_str(&ok(server.command(&["org", "kind", "ong.medecins", "agent"]).await)).unwrap();
    assert_eq!(report["kind"], "agent");
    let created: Value = serde_json::from_str(&ok(server
        .command(&["org", "group-create", "consulat", "--name", "Consulat", "--manager", "analyste"])
        .await))
    .unwrap();
    assert_eq!(created["created"], true);
    let created: Value = serde_json::from_str(&ok(server
        .command(&[
            "org",
            "community-create",
            "climat",
            "--name",
            "Climat",
            "--manager",
            "analyste",
            "--project",
            "COP",
            "--tag",
            "climat",
        ])
        .await))
    .unwrap();
    assert_eq!(created["rooms"].as_array().unwrap().len(), 1);
    let set: Value = serde_json::from_str(&ok(server
        .command(&["org", "managers", "groups", "consulat", "--manager", "redacteur", "--manager", "analyste"])
        .await))
    .unwrap();
    assert_eq!(set["managers"], json!(["@redacteur:localhost", "@analyste:localhost"]));
    server.launch().await;
    let amb = server.login("amb.berlin", "secret-1").await;
    assert_eq!(joined_rooms(&amb).await.len(), 5);
    let analyste = server.login("analyste", "secret-2").await;
    let marker = state(&analyste, created["space_id"].as_str().unwrap(), "fr.diplomatie.group", "").await;
    assert_eq!(marker["project"], "COP");
    // A device approved from the command line.
    let out = server.command(&["org", "device-clearance", "amb.berlin", &amb.device_id, "on"]).await;
    assert!(!out.status.success(), "the server runs: refused");
    server.kill().await;
    let device: Value = serde_json::from_str(&ok(server
        .command(&["org", "device-clearance", "amb.berlin", &amb.device_id, "on"])
        .await))
    .unwrap();
    assert_eq!(device["dr"], true);
}

/// Nobody but the organisation takes an alias of its namespaces (`#g.*`, `#c.*`): not a group
/// or community that does not exist yet, nor a room of one that does.
async fn the_organisations_aliases_are_its_own(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let mallory = server.register("mallory").await;
    for name in ["g.dgm", "c.energie.general", "g.paris.dr"] {
        let body = json!({ "room_alias_name": name });
        assert_error(&mallory.post("/_matrix/client/v3/createRoom", &body).await, 400, "M_EXCLUSIVE");
        assert_error(&root.post("/_matrix/client/v3/createRoom", &body).await, 400, "M_EXCLUSIVE");
    }
    let room = mallory.create_room(json!({ "room_alias_name": "gdm-ordinaire" })).await;
    for alias in ["#g.dgm.correspondence:localhost", "#c.sport:localhost"] {
        let path = format!("/_matrix/client/v3/directory/room/{}", urlencode(alias));
        assert_error(&mallory.put(&path, &json!({ "room_id": room })).await, 400, "M_EXCLUSIVE");
    }
    // The organisation's own still come to be.
    let v = root
        .ok(
            Method::POST,
            "/_diplomatie/admin/v1/groups",
            Some(&json!({ "slug": "dgm", "name": "DGM", "managers": ["mallory"] })),
        )
        .await;
    assert!(v["space_id"].is_string(), "{v}");
}
