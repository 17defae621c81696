//! Events built by other servers entering a room: the writer's side of federation.
//!
//! The checks (signatures, hashes, authorisation) are made by `federation::inbound` before an
//! event gets here; this places an accepted event in the DAG and the room's state, in the same
//! batch-and-commit discipline as the events this server builds.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    events::{StateEventType, TimelineEventType},
    state_res::StateMap,
    OwnedEventId, RoomId, RoomVersionId, UserId,
};

use diplomatie_storage::events as ev_store;

use super::Rooms;
use super::{find_pdu, state_rows, EventRow, PendingWrite, RoomMeta, RoomWriter, MAX_STATE_CHAIN};
use crate::{Pdu, Result};

/// How a received event changes the room's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On the DAG as it stands: it replaces its `prev_events` among the forward extremities,
    /// and the current state follows (resolved where forks remain).
    Extend,
    /// The room's state becomes the state after this event, its only forward extremity: a join
    /// through another server, or an invite (or its rejection) in a room this server is not in.
    Adopt,
}

impl Rooms {
    /// A batch for events other servers built, in a room this server may not know yet (then
    /// the commit records the room, with `version`).
    pub(crate) async fn received_writer(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        creator: &UserId,
    ) -> Result<RoomWriter<'_>> {
        if self.room_meta(room_id).await?.is_some() {
            return self.room_writer(super::Target::Room(room_id)).await;
        }
        let write = self.begin_write().await;
        let meta =
            RoomMeta { version: version.clone(), extremities: vec![], depth: 0, state_group: 0, chain_length: 0 };
        let mut writer = RoomWriter::new(self, write, (Some(room_id.to_owned()), None), meta, Arc::default());
        writer.writes.push(PendingWrite::Room {
            room_id: room_id.to_string(),
            version: version.to_string(),
            creator: creator.to_string(),
            ts: crate::now_ms(),
        });
        Ok(writer)
    }
}

impl Rooms {
    /// Stores history from another server, older than every event of the room here
    /// (`/backfill`): `events` oldest first (by depth), `state_before` the room state before the
    /// first. The state before each event is the state after its prev_events (those of the
    /// batch, or held here), resolved where they are several (a fork inside the history);
    /// `state_before` where none is known. They take stream positions below all others, so
    /// that they are read by paginating backwards and never by `/sync`, and change nothing
    /// else: not the current state, the forward extremities, notifications or unread counts.
    /// One transaction.
    pub(crate) async fn store_backfilled(
        &self,
        room_id: &RoomId,
        state_before: StateMap<OwnedEventId>,
        events: Vec<Pdu>,
    ) -> Result<Vec<Arc<Pdu>>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let first = {
            let mut low = self.backfill_low.lock().await;
            let current = match *low {
                Some(l) => l,
                None => ev_store::min_stream_ordering(self.db.pool()).await?,
            };
            let first = current - events.len() as i64;
            *low = Some(first);
            first
        };
        let mut writes = Vec::new();
        let mut new_states = Vec::new();
        let mut rows = Vec::new();
        let mut stored = Vec::new();
        let version = self.known_room(room_id).await?.version.clone();
        let state_before = Arc::new(state_before);
        // The batch's events stored so far, for a resolution (their auth events come before
        // them: the batch is in depth order).
        let mut pending: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        let mut after: HashMap<OwnedEventId, Arc<StateMap<OwnedEventId>>> = HashMap::new();
        let mut state = state_before.clone();
        let mut group: Option<(i64, i64)> = None;
        for (i, mut pdu) in events.into_iter().enumerate() {
            let before = self.backfilled_state_before(&pdu, &after, &state_before, &version, &pending).await?;
            if !Arc::ptr_eq(&before, &state) && *before != *state {
                // Not the line the previous event left: the deltas start again from a snapshot.
                group = None;
            }
            state = before;
            let kind = pdu.kind.to_string();
            if let Some(sk) = &pdu.state_key {
                let mut map = (*state).clone();
                map.insert((StateEventType::from(kind.clone()), sk.clone()), pdu.event_id.clone());
                state = Arc::new(map);
            }
            let (id, chain) = match group {
                Some((id, chain)) if pdu.state_key.is_none() => (id, chain),
                Some((prev, chain)) if chain < MAX_STATE_CHAIN => {
                    let id = self.next_state_group().await?;
                    let sk = pdu.state_key.clone().unwrap_or_default();
                    let delta = vec![[kind.clone(), sk, pdu.event_id.to_string()]];
                    writes.push(PendingWrite::StateGroup {
                        id,
                        room_id: room_id.to_string(),
                        prev: Some(prev),
                        chain_length: chain + 1,
                        delta,
                    });
                    (id, chain + 1)
                }
                _ => {
                    let id = self.next_state_group().await?;
                    let delta = state_rows(&state);
                    writes.push(PendingWrite::StateGroup {
                        id,
                        room_id: room_id.to_string(),
                        prev: None,
                        chain_length: 0,
                        delta,
                    });
                    (id, 0)
                }
            };
            if group.is_none_or(|(g, _)| g != id) {
                new_states.push((id, state.clone()));
            }
            group = Some((id, chain));
            let mut value: serde_json::Value = serde_json::from_str(&pdu.json).map_err(crate::internal!())?;
            if let Some(o) = value.as_object_mut() {
                o.remove("unsigned");
            }
            pdu.json = serde_json::to_string(&value).map_err(crate::internal!())?;
            pdu.unsigned.clear();
            after.insert(pdu.event_id.clone(), state.clone());
            pdu.stream_ordering = first + i as i64;
            pdu.state_group = id;
            rows.push(EventRow::of(&pdu, pdu.stream_ordering, id));
            let pdu = Arc::new(pdu);
            pending.insert(pdu.event_id.clone(), pdu.clone());
            stored.push(pdu);
        }
        let mut tx = self.db.begin().await?;
        for w in &writes {
            w.run(&mut tx).await?;
        }
        let new_events: Vec<ev_store::NewEvent<'_>> = rows.iter().map(EventRow::as_new).collect();
        ev_store::insert_events(&mut tx, &new_events).await?;
        diplomatie_storage::commit(tx).await?;
        {
            let mut states = self.states.lock().unwrap();
            for (id, map) in new_states {
                states.put(id, map);
            }
        }
        let mut cache = self.events.lock().unwrap();
        for pdu in &stored {
            cache.put(pdu.event_id.clone(), pdu.clone());
        }
        drop(cache);
        for subscriber in &self.subscribers().others {
            subscriber.backfilled(&stored);
        }
        Ok(stored)
    }
}

impl Rooms {
    /// The state before a backfilled event: after its prev_events (the batch's, or those held
    /// here), resolved when they differ; `fallback` (the state a server gave for the batch's
    /// oldest event) when none of them is known.
    async fn backfilled_state_before(
        &self,
        pdu: &Pdu,
        after: &HashMap<OwnedEventId, Arc<StateMap<OwnedEventId>>>,
        fallback: &Arc<StateMap<OwnedEventId>>,
        version: &RoomVersionId,
        pending: &HashMap<OwnedEventId, Arc<Pdu>>,
    ) -> Result<Arc<StateMap<OwnedEventId>>> {
        let mut states: Vec<Arc<StateMap<OwnedEventId>>> = Vec::new();
        for prev in &pdu.prev_events {
            let known = match after.get(prev) {
                Some(s) => Some(s.clone()),
                None => match self.get_pdu(prev).await? {
                    Some(p) if p.in_timeline() && p.state_group != 0 => Some(self.state_map(p.state_group).await?),
                    _ => None,
                },
            };
            if let Some(s) = known {
                if !states.iter().any(|k| Arc::ptr_eq(k, &s) || **k == *s) {
                    states.push(s);
                }
            }
        }
        match states.len() {
            0 => Ok(fallback.clone()),
            1 => Ok(states.pop().expect("one")),
            _ => {
                let maps = states.iter().map(|s| (**s).clone()).collect();
                Ok(Arc::new(self.resolve_states_with(version, maps, pending).await?))
            }
        }
    }
}

impl RoomWriter<'_> {
    /// Writes a received event into the batch, `state_before` being the room state before it
    /// (after its `prev_events`), already checked against it.
    pub(crate) async fn append_received(
        &mut self,
        mut pdu: Pdu,
        state_before: Arc<StateMap<OwnedEventId>>,
        placement: Placement,
    ) -> Result<Arc<Pdu>> {
        let rooms = self.rooms;
        let room_id = pdu.room_id.clone();
        if self.room_id.as_deref() != Some(&*room_id) {
            self.switch_to(&room_id).await?;
        }
        let event_id = pdu.event_id.clone();
        let kind = pdu.kind.to_string();
        let state_after = match &pdu.state_key {
            Some(sk) => {
                let mut map = (*state_before).clone();
                map.insert((StateEventType::from(kind.clone()), sk.clone()), event_id.clone());
                Arc::new(map)
            }
            None => state_before.clone(),
        };
        let position = self.write.next_position();

        // The event's state group: a delta on the current one when it simply follows the
        // room's only extremity, a snapshot otherwise.
        let linear = placement == Placement::Extend
            && self.meta.state_group != 0
            && self.meta.extremities == pdu.prev_events
            && *state_before == *self.state;
        let (event_group, event_chain) = if linear && pdu.state_key.is_none() {
            (self.meta.state_group, self.meta.chain_length)
        } else if linear && self.meta.chain_length < MAX_STATE_CHAIN {
            let id = rooms.next_state_group().await?;
            let sk = pdu.state_key.clone().unwrap_or_default();
            self.writes.push(PendingWrite::StateGroup {
                id,
                room_id: room_id.to_string(),
                prev: Some(self.meta.state_group),
                chain_length: self.meta.chain_length + 1,
                delta: vec![[kind.clone(), sk, event_id.to_string()]],
            });
            self.new_states.push((id, state_after.clone()));
            (id, self.meta.chain_length + 1)
        } else {
            (self.push_snapshot(&room_id, state_after.clone()).await?, 0)
        };

        // The forward extremities and the current state.
        let extremities: Vec<OwnedEventId> = match placement {
            Placement::Adopt => vec![event_id.clone()],
            Placement::Extend => {
                let mut e: Vec<OwnedEventId> =
                    self.meta.extremities.iter().filter(|x| !pdu.prev_events.contains(x)).cloned().collect();
                e.push(event_id.clone());
                e
            }
        };
        let (current, current_group, current_chain) = if linear {
            if let Some(sk) = &pdu.state_key {
                self.writes.push(PendingWrite::CurrentState {
                    room_id: room_id.to_string(),
                    entry: [kind.clone(), sk.clone(), event_id.to_string()],
                    membership: pdu.membership().map(|m| m.to_string()),
                    position,
                });
            }
            (state_after.clone(), event_group, event_chain)
        } else if extremities.len() == 1 {
            self.resolved_rooms.push(room_id.clone());
            (state_after.clone(), event_group, event_chain)
        } else {
            // Forks remain: the current state is their resolution, kept as a snapshot.
            let mut maps = vec![(*state_after).clone()];
            for id in extremities.iter().filter(|x| **x != event_id) {
                let other = find_pdu(rooms, &self.appended, id)
                    .await?
                    .ok_or_else(crate::internal!("a value present by construction"))?;
                maps.push((*rooms.state_map_in_batch(self, other.state_group).await?).clone());
            }
            let resolved = Arc::new(rooms.resolve_states(&self.meta.version, maps).await?);
            let id = self.push_snapshot(&room_id, resolved.clone()).await?;
            self.resolved_rooms.push(room_id.clone());
            (resolved, id, 0)
        };

        // Stored without what the sender put in `unsigned`
        let mut value: serde_json::Value = serde_json::from_str(&pdu.json).map_err(crate::internal!())?;
        // (but the room state an invite or a knock came with, which the user's client is shown).
        if let Some(o) = value.as_object_mut() {
            let unsigned = o.remove("unsigned");
            for key in ["invite_room_state", "knock_room_state"] {
                if let Some(state) = unsigned.as_ref().and_then(|u| u.get(key)) {
                    o.insert("unsigned".into(), serde_json::json!({ key: state }));
                }
            }
        }
        pdu.json = serde_json::to_string(&value).map_err(crate::internal!())?;
        pdu.unsigned.retain(|k, _| k == "invite_room_state" || k == "knock_room_state");
        self.rows.push(EventRow::of(&pdu, position, event_group));
        if let (Some(target), TimelineEventType::RoomRedaction) = (pdu.redacts.clone(), &pdu.kind) {
            if self.may_redact(&pdu, &target, &current).await? {
                let rules = self.meta.rules();
                if let Some(redacted) = self.apply_redaction(&target, &event_id, &rules).await? {
                    self.redacted.push(redacted);
                }
            }
        }
        pdu.stream_ordering = position;
        pdu.state_group = event_group;
        let pdu = Arc::new(pdu);
        let depth = self.meta.depth.max(u64::from(pdu.depth));
        self.meta = RoomMeta {
            version: self.meta.version.clone(),
            extremities,
            depth,
            state_group: current_group,
            chain_length: current_chain,
        };
        self.state = current;
        self.appended.push(pdu.clone());
        Ok(pdu)
    }

    /// A new state group holding the whole of `map`.
    async fn push_snapshot(&mut self, room_id: &RoomId, map: Arc<StateMap<OwnedEventId>>) -> Result<i64> {
        let id = self.rooms.next_state_group().await?;
        self.writes.push(PendingWrite::StateGroup {
            id,
            room_id: room_id.to_string(),
            prev: None,
            chain_length: 0,
            delta: state_rows(&map),
        });
        self.new_states.push((id, map));
        Ok(id)
    }

    /// Whether a received redaction takes effect: its sender is of the redacted event's
    /// server, or has the room's `redact` power level.
    async fn may_redact(
        &self,
        redaction: &Pdu,
        target: &ruma::EventId,
        state: &StateMap<OwnedEventId>,
    ) -> Result<bool> {
        let Some(target) = find_pdu(self.rooms, &self.appended, target).await? else { return Ok(false) };
        if target.sender.server_name() == redaction.sender.server_name() {
            return Ok(true);
        }
        let rooms = self.rooms;
        let Some(levels) = rooms.state_event_in(state, &StateEventType::RoomPowerLevels, "").await? else {
            return Ok(false);
        };
        let levels = levels.content_value();
        let needed = levels.get("redact").and_then(|v| v.as_i64()).unwrap_or(50);
        let Some(map) = levels.as_object() else { return Ok(false) };
        Ok(rooms.user_power(&redaction.room_id, map, &redaction.sender).await? >= needed)
    }
}

impl Rooms {
    /// A state map of the room, whether the batch made it or the database holds it.
    async fn state_map_in_batch(&self, writer: &RoomWriter<'_>, group: i64) -> Result<Arc<StateMap<OwnedEventId>>> {
        if let Some((_, map)) = writer.new_states.iter().find(|(id, _)| *id == group) {
            return Ok(map.clone());
        }
        self.state_map(group).await
    }
}

#[cfg(test)]
mod tests {
    use ruma::{api::client::room::create_room::v3::Request as CreateRoom, events::StateEventType, OwnedEventId};
    use serde_json::json;

    use crate::{Config, Pdu, Services};

    /// A fork inside backfilled history: branch A sets a topic then renames the room, branch B
    /// (older) renames it too, then a message follows both. Each branch's state is its own, and
    /// the message's is their resolution (same sender and power: the later rename, A's, wins;
    /// the topic only A set is kept) — not whatever was stored last.
    #[tokio::test]
    async fn a_fork_inside_backfilled_history_is_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_owned(), ..Config::default() };
        let s = Services::start(config).await.unwrap();
        let alice = s.accounts.create_account(Some("alice"), Some("pw"), false, None).await.unwrap();
        let room = s.membership.create_room(&alice, CreateRoom::new()).await.unwrap();
        let base = s.rooms.known_room(&room).await.unwrap().extremities[0].clone();
        let state = (*s.rooms.current_state(&room).await.unwrap()).clone();
        let id = |ty: StateEventType, key: &str| state.get(&(ty, key.to_owned())).unwrap().to_string();
        let auth = [id(StateEventType::RoomPowerLevels, ""), id(StateEventType::RoomMember, alice.as_str())];
        let event = |event_id: &str, body: serde_json::Value| {
            let mut e = json!({
                "room_id": room, "sender": alice, "depth": 50,
                "auth_events": auth, "hashes": { "sha256": "x" }, "signatures": {},
            });
            e.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
            Pdu::from_received(OwnedEventId::try_from(event_id).unwrap(), e.to_string(), None).unwrap()
        };
        let set = |id: &str, ty: &str, content: serde_json::Value, prev: &str, ts: i64| {
            event(
                id,
                json!({ "type": ty, "state_key": "", "content": content, "prev_events": [prev], "origin_server_ts": ts }),
            )
        };
        let topic = set("$a-topic", "m.room.topic", json!({ "topic": "T" }), base.as_str(), 2_500);
        let a = set("$a-name", "m.room.name", json!({ "name": "A" }), "$a-topic", 3_000);
        let b = set("$b-name", "m.room.name", json!({ "name": "B" }), base.as_str(), 2_000);
        let message = event(
            "$merge",
            json!({ "type": "m.room.message", "content": { "msgtype": "m.text", "body": "fusion" },
                    "prev_events": ["$a-name", "$b-name"], "origin_server_ts": 4_000, "depth": 52 }),
        );
        let stored = s.rooms.store_backfilled(&room, state.clone(), vec![topic, a, b, message]).await.unwrap();
        let state_of = |i: usize| {
            let s = &s;
            let group = stored[i].state_group;
            async move {
                let map = s.rooms.state_map(group).await.unwrap();
                let mut out = Vec::new();
                for ty in [StateEventType::RoomName, StateEventType::RoomTopic] {
                    let value = match map.get(&(ty.clone(), String::new())) {
                        Some(id) => s.rooms.get_pdu(id).await.unwrap().unwrap().content_value(),
                        None => json!(null),
                    };
                    out.push(value);
                }
                out
            }
        };
        assert_eq!(state_of(1).await, [json!({ "name": "A" }), json!({ "topic": "T" })]);
        assert_eq!(state_of(2).await, [json!({ "name": "B" }), json!(null)], "branch B does not build on branch A");
        assert_eq!(state_of(3).await, [json!({ "name": "A" }), json!({ "topic": "T" })], "resolved where they meet");
    }
}
