//! Forks meet through state resolution v2 (v2.1 since room version 12): when a room has several
//! forward extremities, the next event builds on all of them and the room's state is their
//! resolution. Federation brings such forks; this test makes them with the writer directly.

use diplomatie_service::{
    now_ms,
    rooms::{PduBuilder, Target},
    Config, Services,
};
use ruma::{api::client::room::create_room::v3::Request as CreateRoom, events::StateEventType, RoomVersionId};
use serde_json::json;

fn at(mut builder: PduBuilder, ts: i64) -> PduBuilder {
    builder.timestamp = Some(ts);
    builder
}

#[tokio::test]
async fn forks_meet_through_state_resolution() {
    for version in ["6", "10", "11", "12"] {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_owned(), ..Config::default() };
        let s = Services::start(config.clone()).await.unwrap();
        let alice = s.accounts.create_account(Some("alice"), Some("pw"), false, None).await.unwrap();
        let mut req = CreateRoom::new();
        req.room_version = Some(RoomVersionId::try_from(version).unwrap());
        let room = s.membership.create_room(&alice, req).await.unwrap();
        let base = s.rooms.known_room(&room).await.unwrap().extremities.clone();
        let t = now_ms();

        // Branch A renames the room, talks, and sets a topic; branch B, later, sets another
        // topic and renames it again. (Branch A's message lies between two conflicted events
        // along prev_events, not along auth_events: it stays out of v12's conflicted state
        // subgraph, which holds state events only.)
        let mut w = s.rooms.room_writer(Target::Room(&room)).await.unwrap();
        w.append(&alice, at(PduBuilder::state("m.room.name", "", json!({ "name": "A" })), t), None).await.unwrap();
        let talk = PduBuilder::message("m.room.message", json!({ "msgtype": "m.text", "body": "entre" }));
        w.append(&alice, at(talk, t), None).await.unwrap();
        let a2 = w
            .append(&alice, at(PduBuilder::state("m.room.topic", "", json!({ "topic": "T" })), t + 1), None)
            .await
            .unwrap();
        w.commit().await.unwrap();
        let mut w = s.rooms.room_writer(Target::Room(&room)).await.unwrap();
        w.set_extremities(base.clone());
        w.append(&alice, at(PduBuilder::state("m.room.topic", "", json!({ "topic": "U" })), t + 4), None)
            .await
            .unwrap();
        let b = w
            .append(&alice, at(PduBuilder::state("m.room.name", "", json!({ "name": "B" })), t + 5), None)
            .await
            .unwrap();
        w.commit().await.unwrap();
        assert_eq!(b.prev_events.len(), 1);
        assert_eq!(
            s.rooms.get_pdu(&b.prev_events[0]).await.unwrap().unwrap().prev_events,
            base,
            "v{version}: branch B forks from the base"
        );
        let mut w = s.rooms.room_writer(Target::Room(&room)).await.unwrap();
        w.set_extremities(vec![a2.event_id.clone(), b.event_id.clone()]);
        let merge_msg = PduBuilder::message("m.room.message", json!({ "body": "merge" }));
        let merge = w.append(&alice, at(merge_msg, t + 10), None).await.unwrap();
        w.commit().await.unwrap();

        let mut prev = merge.prev_events.clone();
        prev.sort();
        let mut expected = vec![a2.event_id.clone(), b.event_id.clone()];
        expected.sort();
        assert_eq!(prev, expected, "v{version}: the merge builds on both branches");
        // Conflicted name and topic: same sender and power, so the later events (B's) win.
        let name = s.rooms.state_event(&room, &StateEventType::RoomName, "").await.unwrap().unwrap();
        assert_eq!(name.content_value()["name"], "B", "v{version}");
        let topic = s.rooms.state_event(&room, &StateEventType::RoomTopic, "").await.unwrap().unwrap();
        assert_eq!(topic.content_value()["topic"], "U", "v{version}");
        assert_eq!(
            s.rooms.state_map(merge.state_group).await.unwrap().get(&(StateEventType::RoomName, String::new())),
            Some(&b.event_id)
        );

        // The resolved state is what the database holds too.
        drop(s);
        let s = Services::start(config).await.unwrap();
        let name = s.rooms.state_event(&room, &StateEventType::RoomName, "").await.unwrap().unwrap();
        assert_eq!(name.content_value()["name"], "B", "v{version} after restart");
        assert!(s.rooms.is_joined(&room, &alice).await.unwrap());
        assert_eq!(s.rooms.known_room(&room).await.unwrap().extremities, vec![merge.event_id.clone()]);
    }
}
