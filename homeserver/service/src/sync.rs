//! `GET /sync`: what changed for a user between two stream positions.
//!
//! A sync token is `s{stream}_{typing}`: the position in the shared stream (events, receipts,
//! account data, presence) and the typing serial. A request with nothing new waits on the
//! [`Notifier`](crate::notifier::Notifier) until something for this user happens or the timeout
//! passes; it never polls the database.

use std::{collections::HashSet, sync::Arc, time::Duration};

use diplomatie_storage::{events as ev_store, rooms as room_store, state as state_store, streams};
use ruma::{events::StateEventType, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::{pdu::Pdu, rooms::timeline::EventFilter, Error, Result, Services};

/// The parts of a sync filter the server applies.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct SyncFilter {
    pub room: RoomFilter,
    pub presence: EventFilter,
    pub account_data: EventFilter,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RoomFilter {
    pub timeline: EventFilter,
    pub state: EventFilter,
    pub ephemeral: EventFilter,
    pub account_data: EventFilter,
    pub include_leave: bool,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
}

impl RoomFilter {
    fn allows(&self, room_id: &RoomId) -> bool {
        if let Some(rooms) = &self.rooms {
            if !rooms.iter().any(|r| r == room_id.as_str()) {
                return false;
            }
        }
        !self.not_rooms.iter().any(|r| r == room_id.as_str())
    }
}

/// The changes beside the timelines, by room ("" for global account data).
#[derive(Default)]
struct Changes {
    account_data: std::collections::HashMap<String, Vec<Value>>,
    receipts: std::collections::HashMap<String, Vec<streams::Receipt>>,
}

/// A position in all streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncToken {
    pub stream: i64,
    pub typing: u64,
}

impl SyncToken {
    pub fn parse(s: &str) -> Result<SyncToken> {
        let bad = || Error::invalid_param("Invalid since token");
        let rest = s.strip_prefix('s').ok_or_else(bad)?;
        let (stream, typing) = rest.split_once('_').ok_or_else(bad)?;
        Ok(SyncToken { stream: stream.parse().map_err(|_| bad())?, typing: typing.parse().map_err(|_| bad())? })
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}_{}", self.stream, self.typing)
    }
}

pub struct SyncRequest<'a> {
    pub user: &'a UserId,
    pub device: &'a str,
    pub since: Option<SyncToken>,
    pub filter: SyncFilter,
    pub full_state: bool,
    pub timeout: Duration,
}

/// The state events shown of a room to someone not in it (invites, knocks, over federation).
pub(crate) const STRIPPED_STATE: [StateEventType; 7] = [
    StateEventType::RoomCreate,
    StateEventType::RoomJoinRules,
    StateEventType::RoomName,
    StateEventType::RoomAvatar,
    StateEventType::RoomCanonicalAlias,
    StateEventType::RoomTopic,
    StateEventType::RoomEncryption,
];

impl Services {
    pub fn current_token(&self) -> SyncToken {
        SyncToken { stream: self.stream_position(), typing: self.typing.serial() }
    }

    /// Answers a sync request, waiting up to its timeout when nothing is new.
    pub async fn sync(&self, req: SyncRequest<'_>) -> Result<Value> {
        let mut changes = self.notifier.subscribe(req.user);
        let deadline = tokio::time::Instant::now() + req.timeout.min(Duration::from_secs(120));
        loop {
            let to = self.current_token();
            let (body, empty) = self.sync_between(&req, to).await?;
            if !empty || req.since.is_none() || req.full_state || tokio::time::Instant::now() >= deadline {
                return Ok(body);
            }
            if req.since == Some(to) || empty {
                match tokio::time::timeout_at(deadline, changes.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => {
                        let (body, _) = self.sync_between(&req, self.current_token()).await?;
                        return Ok(body);
                    }
                }
            }
        }
    }

    async fn sync_between(&self, req: &SyncRequest<'_>, to: SyncToken) -> Result<(Value, bool)> {
        let user = req.user;
        let since = req.since.unwrap_or_default();
        let initial = req.since.is_none();
        let pool = self.db.pool();
        let forgotten: HashSet<String> = room_store::forgotten_rooms(pool, user.as_str()).await?.into_iter().collect();
        let memberships = state_store::rooms_for_user(pool, user.as_str()).await?;
        let changed: Vec<_> = ev_store::membership_events_between(pool, user.as_str(), since.stream, to.stream).await?;
        let changed_rooms: HashSet<String> = changed.iter().map(|e| e.room_id.clone()).collect();
        let active_rooms: HashSet<String> = if initial {
            HashSet::new()
        } else {
            ev_store::rooms_with_events_between(pool, since.stream, to.stream).await?.into_iter().collect()
        };

        // What changed beside the timelines, read once for every room (not once a room).
        let data_changes = streams::account_data_between(pool, user.as_str(), since.stream, to.stream).await?;
        let mut changes = Changes::default();
        for (room, kind, content) in &data_changes {
            let event =
                json!({ "type": kind, "content": serde_json::from_str::<Value>(content).unwrap_or(Value::Null) });
            changes.account_data.entry(room.clone()).or_default().push(event);
        }
        if !initial {
            for (room, receipt) in streams::all_receipts_between(pool, since.stream, to.stream).await? {
                changes.receipts.entry(room).or_default().push(receipt);
            }
        }

        let mut join = Map::new();
        let mut invite = Map::new();
        let mut leave = Map::new();
        let mut knock = Map::new();
        let mut shared_users: HashSet<OwnedUserId> = HashSet::new();
        for (room, membership) in memberships {
            let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else {
                continue;
            };
            if !req.filter.room.allows(&room_id) {
                continue;
            }
            let newly = changed_rooms.contains(&room);
            match membership.as_str() {
                "join" => {
                    shared_users.extend(self.joined_members(&room_id).await?.iter().cloned());
                    if let Some(v) = self
                        .sync_joined_room(
                            req,
                            &changes,
                            &room_id,
                            since,
                            to,
                            initial || newly,
                            active_rooms.contains(&room) || initial || newly,
                        )
                        .await?
                    {
                        join.insert(room.clone(), v);
                    }
                }
                "invite" if initial || newly => {
                    invite.insert(
                        room.clone(),
                        json!({ "invite_state": { "events": self.stripped_state(&room_id, user).await? } }),
                    );
                }
                "knock" if initial || newly => {
                    knock.insert(
                        room.clone(),
                        json!({ "knock_state": { "events": self.stripped_state(&room_id, user).await? } }),
                    );
                }
                "leave" | "ban" if (newly && !initial) || (initial && req.filter.room.include_leave) => {
                    if forgotten.contains(&room) {
                        continue;
                    }
                    // A rejected invite or a withdrawn knock shows as a leave with no history.
                    leave.insert(room.clone(), self.sync_left_room(req, &room_id, since, to).await?);
                }
                _ => {}
            }
        }

        // Global account data; an initial sync always shows the push rules, defaults included.
        let mut account_data = changes.account_data.remove("").unwrap_or_default();
        if initial && !account_data.iter().any(|e| e["type"] == "m.push_rules") {
            account_data.push(self.default_push_rules_event(user).await?);
        }

        // Presence of the users the user shares a room with.
        shared_users.insert(user.to_owned());
        let now = crate::now_ms();
        let presence: Vec<Value> = streams::presence_between(pool, since.stream, to.stream)
            .await?
            .into_iter()
            .filter(|p| shared_users.iter().any(|u| u.as_str() == p.user_id))
            .map(|p| {
                let mut content = json!({ "presence": p.state, "last_active_ago": (now - p.last_active_ts).max(0), "currently_active": p.state == "online" });
                if let Some(m) = p.status_msg {
                    content["status_msg"] = json!(m);
                }
                json!({ "type": "m.presence", "sender": p.user_id, "content": content })
            })
            .collect();

        let e2ee = self.sync_e2ee(user, req.device, req.since.map(|s| s.stream), to.stream).await?;
        let e2ee_news = e2ee["to_device"]["events"].as_array().is_some_and(|a| !a.is_empty())
            || e2ee["device_lists"]["changed"].as_array().is_some_and(|a| !a.is_empty())
            || e2ee["device_lists"]["left"].as_array().is_some_and(|a| !a.is_empty());
        let empty = !e2ee_news
            && join.is_empty()
            && invite.is_empty()
            && leave.is_empty()
            && knock.is_empty()
            && account_data.is_empty()
            && presence.is_empty();
        let body = json!({
            "next_batch": to.to_string(),
            "rooms": { "join": join, "invite": invite, "leave": leave, "knock": knock },
            "account_data": { "events": account_data },
            "presence": { "events": presence },
            "to_device": e2ee["to_device"],
            "device_lists": e2ee["device_lists"],
            "device_one_time_keys_count": e2ee["device_one_time_keys_count"],
            "device_unused_fallback_key_types": e2ee["device_unused_fallback_key_types"],
        });
        Ok((body, empty))
    }

    /// A joined room's section, or `None` when nothing changed in it.
    #[allow(clippy::too_many_arguments)]
    async fn sync_joined_room(
        &self,
        req: &SyncRequest<'_>,
        changes: &Changes,
        room_id: &RoomId,
        since: SyncToken,
        to: SyncToken,
        full: bool,
        active: bool,
    ) -> Result<Option<Value>> {
        let user = req.user;
        let pool = self.db.pool();
        let full = full || req.full_state;
        let mut timeline = Vec::new();
        let mut limited = false;
        let mut prev_batch = None;
        // The timeline always starts at the since token; a full sync only widens the state.
        let from = since.stream;
        if active || full {
            let limit = req.filter.room.timeline.limit.unwrap_or(10).clamp(1, 100) as usize;
            let rows =
                ev_store::room_events(pool, room_id.as_str(), since.stream, to.stream, true, limit as i64 + 1).await?;
            limited = rows.len() > limit;
            for stored in rows.into_iter().take(limit) {
                let pdu = match self
                    .get_pdu(<&ruma::EventId>::try_from(stored.event_id.as_str()).map_err(crate::internal!())?)
                    .await?
                {
                    Some(p) => p,
                    None => continue,
                };
                timeline.push(pdu);
            }
            timeline.reverse();
            if let Some(first) = timeline.first() {
                prev_batch = Some((first.stream_ordering - 1).to_string());
            }
        }
        let filtered: Vec<Arc<Pdu>> = {
            let mut out = Vec::new();
            for p in &timeline {
                if req.filter.room.timeline.allows(p) && self.can_see_event(user, p).await? {
                    out.push(p.clone());
                }
            }
            out
        };

        // State: everything for a full sync, what changed before the timeline when limited.
        let mut state = Vec::new();
        if full || limited {
            let group = match timeline.last() {
                Some(last) => last.state_group,
                None => self.known_room(room_id).await?.state_group,
            };
            let map = self.state_map(group).await?;
            let in_timeline: HashSet<&ruma::EventId> = timeline.iter().map(|p| &*p.event_id).collect();
            let lazy = req.filter.room.state.lazy_load_members;
            let senders: HashSet<&str> =
                filtered.iter().map(|p| p.sender.as_str()).chain(std::iter::once(user.as_str())).collect();
            let first_so = timeline.first().map_or(i64::MAX, |p| p.stream_ordering);
            for ((kind, key), id) in map.iter() {
                if in_timeline.contains(&**id) {
                    continue;
                }
                if lazy && *kind == StateEventType::RoomMember && !senders.contains(key.as_str()) {
                    continue;
                }
                let Some(pdu) = self.get_pdu(id).await? else {
                    continue;
                };
                if !full && (pdu.stream_ordering <= from || pdu.stream_ordering >= first_so) {
                    continue;
                }
                if req.filter.room.state.allows(&pdu) {
                    state.push(pdu.to_client(false));
                }
            }
        } else if req.filter.room.state.lazy_load_members {
            // Members of the timeline's senders, so clients can show their names.
            for p in self.member_events_for(room_id, &filtered, user).await? {
                if !timeline.iter().any(|t| t.event_id == p.event_id) && p.stream_ordering > since.stream {
                    state.push(p.to_client(false));
                }
            }
        }

        // Ephemeral: typing and receipts.
        let mut ephemeral = Vec::new();
        let typing_since = if full { 0 } else { since.typing };
        if let Some(users) = self.typing.changed_since(room_id, typing_since) {
            ephemeral.push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
        }
        let receipts = match req.since {
            Some(_) => changes.receipts.get(room_id.as_str()).cloned().unwrap_or_default(),
            None => streams::receipts_between(pool, room_id.as_str(), from, to.stream).await?,
        };
        if !receipts.is_empty() {
            let mut content = Map::new();
            for r in receipts {
                if r.receipt_type == "m.read.private" && r.user_id != user.as_str() {
                    continue;
                }
                let mut receipt = json!({ "ts": r.ts });
                if !r.thread_id.is_empty() {
                    receipt["thread_id"] = json!(r.thread_id);
                }
                let entry = content.entry(r.event_id).or_insert_with(|| json!({}));
                entry.as_object_mut().expect("object").entry(r.receipt_type).or_insert_with(|| json!({}))[r.user_id] =
                    receipt;
            }
            if !content.is_empty() {
                ephemeral.push(json!({ "type": "m.receipt", "content": content }));
            }
        }

        // Room account data.
        let account_data = changes.account_data.get(room_id.as_str()).cloned().unwrap_or_default();

        if timeline.is_empty() && state.is_empty() && ephemeral.is_empty() && account_data.is_empty() && !full {
            return Ok(None);
        }
        let events: Vec<Value> = filtered.iter().map(|p| self.client_event(p, user, req.device, false)).collect();
        let mut timeline_json = json!({ "events": events, "limited": limited });
        if let Some(pb) = prev_batch {
            timeline_json["prev_batch"] = json!(pb);
        }
        let by_thread = req.filter.room.timeline.unread_thread_notifications;
        let counts = self.unread_counts(user, room_id, by_thread).await?;
        let mut room = json!({
            "timeline": timeline_json,
            "state": { "events": state },
            "ephemeral": { "events": ephemeral },
            "account_data": { "events": account_data },
            "summary": self.room_member_summary(room_id, user).await?,
            "unread_notifications": { "notification_count": counts.notifications, "highlight_count": counts.highlights },
        });
        if by_thread {
            let threads: Map<String, Value> = counts
                .threads
                .into_iter()
                .map(|(t, (n, h))| (t, json!({ "notification_count": n, "highlight_count": h })))
                .collect();
            room["unread_thread_notifications"] = Value::Object(threads);
        }
        Ok(Some(room))
    }

    /// A room the user left (or was kicked or banned from) since the last sync.
    async fn sync_left_room(
        &self,
        req: &SyncRequest<'_>,
        room_id: &RoomId,
        since: SyncToken,
        _to: SyncToken,
    ) -> Result<Value> {
        let user = req.user;
        let until = self.readable_until(user, room_id).await.unwrap_or(since.stream);
        let limit = req.filter.room.timeline.limit.unwrap_or(10).clamp(1, 100) as i64;
        let rows =
            ev_store::room_events(self.db.pool(), room_id.as_str(), since.stream, until, true, limit + 1).await?;
        let limited = rows.len() as i64 > limit;
        let mut events = Vec::new();
        let mut first = None;
        for stored in rows.into_iter().take(limit as usize) {
            first = Some(stored.stream_ordering);
            let pdu = Pdu::from_stored(stored)?;
            if self.can_see_event(user, &pdu).await? {
                events.push(self.client_event(&pdu, user, req.device, false));
            }
        }
        events.reverse();
        let mut timeline = json!({ "events": events, "limited": limited });
        if let Some(f) = first {
            timeline["prev_batch"] = json!((f - 1).to_string());
        }
        Ok(json!({ "timeline": timeline, "state": { "events": [] }, "account_data": { "events": [] } }))
    }

    /// Stripped state for invites and knocks: what a client shows before joining (the room's
    /// [`STRIPPED_STATE`] events and the user's membership).
    pub async fn stripped_state(&self, room_id: &RoomId, user: &UserId) -> Result<Vec<Value>> {
        let state = self.current_state(room_id).await?;
        // An invite or a knock to a room this server is not in: what the other server showed.
        if let Some(p) = self.state_event_in(&state, &StateEventType::RoomMember, user.as_str()).await? {
            let shown = p.unsigned.get("invite_room_state").or_else(|| p.unsigned.get("knock_room_state"));
            if let Some(Value::Array(shown)) = shown {
                let mut out = shown.clone();
                out.push(p.to_stripped());
                return Ok(out);
            }
        }
        let mut out = Vec::new();
        for kind in STRIPPED_STATE {
            if let Some(p) = self.state_event_in(&state, &kind, "").await? {
                out.push(p.to_stripped());
            }
        }
        if let Some(p) = self.state_event_in(&state, &StateEventType::RoomMember, user.as_str()).await? {
            out.push(p.to_stripped());
            if let Ok(sender) = OwnedUserId::try_from(p.sender.as_str()) {
                if let Some(s) = self.state_event_in(&state, &StateEventType::RoomMember, sender.as_str()).await? {
                    if s.sender != p.sender || s.event_id != p.event_id {
                        out.push(s.to_stripped());
                    }
                }
            }
        }
        Ok(out)
    }

    /// `summary`: member counts and heroes.
    async fn room_member_summary(&self, room_id: &RoomId, user: &UserId) -> Result<Value> {
        let members = state_store::room_members(self.db.pool(), room_id.as_str()).await?;
        let joined = members.iter().filter(|(_, m, _)| m == "join").count();
        let invited = members.iter().filter(|(_, m, _)| m == "invite").count();
        let mut heroes: Vec<&str> = members
            .iter()
            .filter(|(u, m, _)| u != user.as_str() && (m == "join" || m == "invite"))
            .map(|(u, _, _)| u.as_str())
            .collect();
        heroes.sort();
        heroes.truncate(5);
        Ok(json!({ "m.heroes": heroes, "m.joined_member_count": joined, "m.invited_member_count": invited }))
    }
}
