//! Spaces (client-server spec, "Spaces"): the hierarchy endpoint, its ordering, depth,
//! suggested-only filter and pagination, what each user may see of it, and restricted joins
//! granted by membership of a space.

use diplomatie_tests::{assert_error, backend_tests, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(the_hierarchy_walks_children_in_order_and_hides_what_users_cannot_see);

async fn add_child(c: &Client, space: &str, child: &str, content: Value) {
    c.ok(Method::PUT, &format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{child}"), Some(&content)).await;
}

fn ids(page: &Value) -> Vec<String> {
    page["rooms"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap().to_owned()).collect()
}

async fn the_hierarchy_walks_children_in_order_and_hides_what_users_cannot_see(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;

    let space = alice
        .create_room(json!({ "name": "Direction", "topic": "DGM", "creation_content": { "type": "m.space" } }))
        .await;
    let public = alice.create_room(json!({ "name": "Agora", "preset": "public_chat" })).await;
    let restricted = alice
        .create_room(json!({
            "name": "Réservé",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": space }] } }],
        }))
        .await;
    let private = alice.create_room(json!({ "name": "Cabinet" })).await;
    let subspace = alice
        .create_room(
            json!({ "name": "Sous-direction", "preset": "public_chat", "creation_content": { "type": "m.space" } }),
        )
        .await;
    let deep = alice.create_room(json!({ "name": "Bureau", "preset": "public_chat" })).await;
    let unlisted = alice.create_room(json!({ "name": "Sans via", "preset": "public_chat" })).await;

    add_child(&alice, &space, &public, json!({ "via": ["localhost"], "order": "b" })).await;
    add_child(&alice, &space, &restricted, json!({ "via": ["localhost"], "order": "a", "suggested": true })).await;
    add_child(&alice, &space, &private, json!({ "via": ["localhost"] })).await;
    add_child(&alice, &space, &subspace, json!({ "via": ["localhost"] })).await;
    add_child(&alice, &space, &unlisted, json!({ "order": "0" })).await;
    add_child(&alice, &subspace, &deep, json!({ "via": ["localhost"] })).await;
    // A loop back to the top is walked once.
    add_child(&alice, &deep, &space, json!({ "via": ["localhost"] })).await;

    alice.invite(&space, &bob.user_id).await;
    assert_eq!(bob.join(&space).await.0, 200);
    let path = |q: &str| format!("/_matrix/client/v1/rooms/{space}/hierarchy?{q}");

    // Bob sees the space, its ordered children first, then the others; not the private room
    // he was never invited to, not the child without `via`.
    let all = bob.ok(Method::GET, &path(""), None).await;
    assert_eq!(ids(&all), vec![space.clone(), restricted.clone(), public.clone(), subspace.clone(), deep.clone()]);
    assert!(all.get("next_batch").is_none());
    let root = &all["rooms"][0];
    assert_eq!(root["name"], "Direction");
    assert_eq!(root["topic"], "DGM");
    assert_eq!(root["room_type"], "m.space");
    assert_eq!(root["num_joined_members"], 2);
    assert_eq!(root["children_state"].as_array().unwrap().len(), 4, "children with via only");
    assert!(root["children_state"][0]["origin_server_ts"].is_u64());
    assert_eq!(all["rooms"][1]["join_rule"], "restricted");
    assert_eq!(all["rooms"][1]["allowed_room_ids"], json!([space]));

    let shallow = bob.ok(Method::GET, &path("max_depth=1"), None).await;
    assert_eq!(ids(&shallow), vec![space.clone(), restricted.clone(), public.clone(), subspace.clone()]);
    let suggested = bob.ok(Method::GET, &path("suggested_only=true"), None).await;
    assert_eq!(ids(&suggested), vec![space.clone(), restricted.clone()]);

    // Pages of two.
    let first = bob.ok(Method::GET, &path("limit=2"), None).await;
    assert_eq!(ids(&first), vec![space.clone(), restricted.clone()]);
    let next = first["next_batch"].as_str().unwrap().to_owned();
    let second = bob.ok(Method::GET, &path(&format!("limit=2&from={next}")), None).await;
    assert_eq!(ids(&second), vec![public.clone(), subspace.clone()]);
    let last =
        bob.ok(Method::GET, &path(&format!("limit=2&from={}", second["next_batch"].as_str().unwrap())), None).await;
    assert_eq!(ids(&last), vec![deep.clone()]);
    assert!(last.get("next_batch").is_none());
    assert_error(&bob.get(&path(&format!("limit=2&from={next}&suggested_only=true"))).await, 400, "M_INVALID_PARAM");
    assert_error(&bob.get(&path("from=garbage")).await, 400, "M_INVALID_PARAM");

    // Carol is in nothing: the invite-only space is hidden from her; the public subspace is not.
    assert_error(&carol.get(&path("")).await, 403, "M_FORBIDDEN");
    let sub = carol.ok(Method::GET, &format!("/_matrix/client/v1/rooms/{subspace}/hierarchy"), None).await;
    assert_eq!(ids(&sub), vec![subspace.clone(), deep.clone()]);
    assert_error(&carol.get("/_matrix/client/v1/rooms/!nowhere:localhost/hierarchy").await, 403, "M_FORBIDDEN");

    // The restricted room: members of the space join it, others are refused.
    assert_eq!(bob.join(&restricted).await.0, 200);
    assert_error(&carol.join(&restricted).await, 403, "M_FORBIDDEN");
}
