//! `GET /sync`: what changed for a user between two stream positions.
//!
//! A sync token is `s{stream}_{typing}`: the position in the shared stream (events, receipts,
//! account data, presence) and the typing serial. A request with nothing new waits on the
//! [`Notifier`](crate::notifier::Notifier) until something for this user happens or the timeout
//! passes; it never polls the database.
//!
//! Beside ruma's response, an answer holds the rooms the device peeks into (`rooms.peek`, see
//! [`Peeks`]), each built as a joined room's section.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use diplomatie_storage::{events as ev_store, rooms as room_store, state as state_store, streams};
use ruma::{
    api::client::sync::sync_events::{
        v3::{self, InviteState, KnockState},
        UnreadNotificationsCount,
    },
    events::{presence::PresenceEvent, room::member::MembershipState, StateEventType},
    serde::Raw,
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Map, Value};

use crate::{
    core::Core,
    e2ee::E2ee,
    ephemeral::Ephemeral,
    pdu::{self, Pdu},
    peeks::Peeks,
    push::Push,
    rooms::{timeline::EventFilter, Rooms},
    Error, Result,
};

/// The parts of a sync filter the server applies.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct SyncFilter {
    pub room: RoomFilter,
    pub presence: EventFilter,
    pub account_data: EventFilter,
    /// `client` (the default) or `federation`: events as other servers see them (the PDU,
    /// with its id).
    pub event_format: Option<String>,
}

impl SyncFilter {
    fn federation_format(&self) -> bool {
        self.event_format.as_deref() == Some("federation")
    }
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
    /// The users the syncing user ignores: their events and invites are not shown.
    ignored: Arc<HashSet<String>>,
    account_data: std::collections::HashMap<String, Vec<Box<RawValue>>>,
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

/// A `/sync` answer: ruma's response, and the rooms the device peeks into (MSC2753's
/// `rooms.peek`, which ruma's response has no field for), each as a joined room.
#[derive(Debug)]
pub struct SyncAnswer {
    pub body: v3::Response,
    pub peek: BTreeMap<OwnedRoomId, v3::JoinedRoom>,
}

pub struct SyncRequest<'a> {
    pub user: &'a UserId,
    pub device: &'a str,
    pub since: Option<SyncToken>,
    pub filter: SyncFilter,
    pub full_state: bool,
    pub timeout: Duration,
}

/// The most events a `/sync` reads in a room to fill a filtered timeline.
const MAX_FILTER_SCAN: usize = 1000;

/// A user's ignored users, and the stream position they were read at.
type IgnoredAt = (i64, Arc<HashSet<String>>);

/// A user's device.
type DeviceKey = (OwnedUserId, String);

/// Users whose presence an incremental `/sync` adds because the user has just come to share a
/// room with them, at most.
const NEWCOMERS_PRESENCE: usize = 200;

/// `/sync`, over the rooms, end-to-end encryption (to-device messages, device lists, key
/// counts), push (unread counts, default rules) and the ephemeral streams (typing).
pub struct Syncer {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    e2ee: Arc<E2ee>,
    push: Arc<Push>,
    ephemeral: Arc<Ephemeral>,
    peeks: Arc<Peeks>,
    /// Rooms a device's last incremental sync brought a join of (a join after an invite or a
    /// leave, one a client may be waiting on), with that sync's token: its next sync (from
    /// that token) names them once more, with nothing new in them. A client
    /// may handle its `/join` response after the sync that brought the join, and matrix-rust-sdk
    /// (0.18) then waits for a sync that names the room again before it takes the room as
    /// synced; without this echo it would wait until something happens in the room.
    join_echoes: Mutex<lru::LruCache<DeviceKey, (SyncToken, Vec<OwnedRoomId>)>>,
    /// Each user's `m.ignored_user_list`, with the stream position it was read at.
    ignored: Mutex<lru::LruCache<OwnedUserId, IgnoredAt>>,
    /// With lazy-loaded members: the member events each device was sent in each room, so an
    /// incremental sync sends a speaker's member event once (as Synapse's cache of the same,
    /// it lives in memory: after a restart, or once forgotten, they are sent again).
    lazy_members: Mutex<lru::LruCache<(DeviceKey, OwnedRoomId), HashSet<OwnedEventId>>>,
}

/// The member events remembered as sent to one device in one room, at most (then forgotten
/// and sent again).
const LAZY_MEMBERS_REMEMBERED: usize = 1000;

crate::core::over_core!(Syncer);

impl Syncer {
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        e2ee: Arc<E2ee>,
        push: Arc<Push>,
        ephemeral: Arc<Ephemeral>,
        peeks: Arc<Peeks>,
    ) -> Syncer {
        Syncer {
            core,
            rooms,
            e2ee,
            push,
            ephemeral,
            peeks,
            join_echoes: Mutex::new(crate::lru(4096)),
            ignored: Mutex::new(crate::lru(4096)),
            lazy_members: Mutex::new(crate::lru(16_384)),
        }
    }

    /// The users `user` ignores (`m.ignored_user_list`), read again only when their account
    /// data moved.
    async fn ignored_users(&self, user: &UserId) -> Result<Arc<HashSet<String>>> {
        if let Some((at, set)) = self.ignored.lock().unwrap().get(user).cloned() {
            if !self.marks.account_data_since(user, at) {
                return Ok(set);
            }
        }
        let at = self.stream_position();
        let stored = streams::get_account_data(self.db.pool(), user.as_str(), "", "m.ignored_user_list").await?;
        let set: HashSet<String> = stored
            .and_then(|json| serde_json::from_str::<Value>(&json).ok())
            .and_then(|v| v.get("ignored_users")?.as_object().map(|m| m.keys().cloned().collect()))
            .unwrap_or_default();
        let set = Arc::new(set);
        self.ignored.lock().unwrap().put(user.to_owned(), (at, set.clone()));
        Ok(set)
    }

    /// Whether a timeline event is shown to `user`: not an ignored user's, kept by the filter,
    /// and let through by the history visibility.
    async fn shown(&self, user: &UserId, ignored: &HashSet<String>, filter: &EventFilter, p: &Pdu) -> Result<bool> {
        if ignored.contains(p.sender.as_str()) || !filter.allows(p) {
            return Ok(false);
        }
        if self.rooms.can_see_event(user, p).await? {
            return Ok(true);
        }
        // A joined room's timeline always shows the events of its current state, even those
        // sent while the history was hidden from the user (as Synapse: clients read the state
        // from the timeline too).
        let Some(key) = &p.state_key else { return Ok(false) };
        let current = self.rooms.current_state(&p.room_id).await?;
        Ok(current.get(&(StateEventType::from(p.kind.to_string()), key.clone())) == Some(&p.event_id))
    }

    pub fn current_token(&self) -> SyncToken {
        SyncToken { stream: self.stream_position(), typing: self.ephemeral.typing.serial() }
    }

    /// Answers a sync request, waiting up to its timeout when nothing is new.
    pub async fn sync(&self, req: SyncRequest<'_>) -> Result<SyncAnswer> {
        let mut changes = self.notifier.subscribe(req.user);
        let deadline = tokio::time::Instant::now() + req.timeout.min(Duration::from_secs(120));
        let key = (req.user.to_owned(), req.device.to_owned());
        let echo = match req.since {
            Some(since) => self.join_echoes.lock().unwrap().pop(&key).filter(|(at, _)| *at == since).map(|(_, r)| r),
            None => None,
        };
        let echo = echo.unwrap_or_default();
        loop {
            let to = self.current_token();
            let (mut body, empty, mut joined) = self.sync_between(&req, to).await?;
            let waiting = empty && echo.is_empty() && req.since.is_some() && !req.full_state;
            if waiting && tokio::time::Instant::now() < deadline {
                // Counted while it waits (the guard also uncounts a request dropped meanwhile).
                let _waiting = Waiting::new(&self.metrics.sync_waiting);
                match tokio::time::timeout_at(deadline, changes.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => (body, _, joined) = self.sync_between(&req, self.current_token()).await?,
                }
            }
            return self.echo_joins(&req, key, echo, (body, joined)).await;
        }
    }

    /// Names once more the rooms whose join the previous sync brought (see `join_echoes`), and
    /// remembers those whose join this one brings.
    async fn echo_joins(
        &self,
        req: &SyncRequest<'_>,
        key: DeviceKey,
        echo: Vec<OwnedRoomId>,
        (mut answer, joined): (SyncAnswer, Vec<OwnedRoomId>),
    ) -> Result<SyncAnswer> {
        let body = &mut answer.body;
        for room_id in echo {
            if !body.rooms.join.contains_key(&room_id) && self.rooms.is_joined(&room_id, req.user).await? {
                body.rooms.join.insert(room_id, v3::JoinedRoom::new());
            }
        }
        if !joined.is_empty() {
            let token = SyncToken::parse(&body.next_batch)?;
            self.join_echoes.lock().unwrap().put(key, (token, joined));
        }
        Ok(answer)
    }

    /// The answer from the request's token up to `to`, whether it holds nothing new, and the
    /// rooms it brings a join of (an incremental sync only).
    async fn sync_between(&self, req: &SyncRequest<'_>, to: SyncToken) -> Result<(SyncAnswer, bool, Vec<OwnedRoomId>)> {
        let user = req.user;
        let since = req.since.unwrap_or_default();
        let initial = req.since.is_none();
        let pool = self.db.pool();
        let marks = &self.marks;
        // The database is asked only about the streams that moved since the token.
        let memberships = self.memberships(user, to).await?;
        // Rooms joined after another membership (an invite, a leave): their join is echoed
        // (see `join_echoes`); a room the user created is not (nothing waits on it, and an
        // unchanged room is not named again).
        let mut joined_after: HashSet<String> = HashSet::new();
        let changed_rooms: HashSet<String> = if initial || marks.memberships_since(user, since.stream) {
            let changed = ev_store::membership_events_between(pool, user.as_str(), since.stream, to.stream).await?;
            // A new display name or avatar (a join after a join) changes no membership: the
            // room is not new to the client.
            let mut rooms = HashSet::new();
            for stored in changed {
                let room = stored.room_id.clone();
                let pdu = Pdu::from_stored(stored)?;
                let before = pdu.unsigned.get("prev_content").and_then(|c| c.get("membership")).and_then(Value::as_str);
                let joined = pdu.membership() == Some(MembershipState::Join);
                let profile_only = joined && before == Some("join");
                if joined && before.is_some() && !profile_only {
                    joined_after.insert(room.clone());
                }
                if initial || !profile_only {
                    rooms.insert(room);
                }
            }
            rooms
        } else {
            HashSet::new()
        };

        // What changed beside the timelines, read once for every room (not once a room).
        let mut changes = Changes { ignored: self.ignored_users(user).await?, ..Changes::default() };
        let mut global_kinds = HashSet::new();
        if initial || marks.account_data_since(user, since.stream) {
            let data_changes = streams::account_data_between(pool, user.as_str(), since.stream, to.stream).await?;
            for (room, kind, content) in data_changes {
                let filter = if room.is_empty() { &req.filter.account_data } else { &req.filter.room.account_data };
                if !filter.allows_type(&kind) {
                    continue;
                }
                let event = account_data_event(&kind, &content)?;
                if room.is_empty() {
                    global_kinds.insert(kind);
                }
                changes.account_data.entry(room).or_default().push(event);
            }
        }
        if !initial && marks.receipts_since(since.stream) {
            for (room, receipt) in streams::all_receipts_between(pool, since.stream, to.stream).await? {
                changes.receipts.entry(room).or_default().push(receipt);
            }
        }

        let mut response = v3::Response::new(to.to_string());
        let mut forgotten: Option<HashSet<String>> = None;
        let mut joined_rooms = Vec::new();
        let mut joined_now = Vec::new();
        // Who joined the user's rooms in the timelines given (their presence comes with them).
        let mut newcomers: Vec<OwnedUserId> = Vec::new();
        for (room, membership) in memberships.iter() {
            let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else {
                continue;
            };
            if !req.filter.room.allows(&room_id) {
                continue;
            }
            let newly = changed_rooms.contains(room);
            match MembershipState::from(membership.as_str()) {
                MembershipState::Join => {
                    let active = initial || newly || marks.room_since(&room_id, since.stream);
                    let (section, joiners) =
                        self.sync_joined_room(req, &changes, &room_id, since, to, initial || newly, active).await?;
                    newcomers.extend(joiners);
                    if let Some(section) = section {
                        response.rooms.join.insert(room_id.clone(), section);
                    }
                    if newly && !initial && joined_after.contains(room) {
                        joined_now.push(room_id.clone());
                    }
                    joined_rooms.push(room_id);
                }
                MembershipState::Invite if initial || newly => {
                    let stripped = self.rooms.stripped_state(&room_id, user).await?;
                    let inviter =
                        stripped.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == user.as_str());
                    if inviter.and_then(|i| i["sender"].as_str()).is_some_and(|i| changes.ignored.contains(i)) {
                        continue;
                    }
                    let state = InviteState::from(raws(&stripped));
                    response.rooms.invite.insert(room_id, state.into());
                }
                MembershipState::Knock if initial || newly => {
                    let mut state = KnockState::new();
                    state.events = raws(&self.rooms.stripped_state(&room_id, user).await?);
                    response.rooms.knock.insert(room_id, state.into());
                }
                MembershipState::Leave | MembershipState::Ban
                    if (newly && !initial) || (initial && req.filter.room.include_leave) =>
                {
                    let forgotten = match &mut forgotten {
                        Some(f) => f,
                        None => forgotten
                            .insert(room_store::forgotten_rooms(pool, user.as_str()).await?.into_iter().collect()),
                    };
                    if forgotten.contains(room) {
                        continue;
                    }
                    // A rejected invite or a withdrawn knock shows as a leave with no history.
                    let section = self.sync_left_room(req, &room_id, since).await?;
                    response.rooms.leave.insert(room_id, section);
                }
                _ => {}
            }
        }

        // The rooms the device peeks into, as joined rooms: whole on the first sync after the
        // peek, then what is new. A peek ends when the user joined the room, or when it is no
        // longer world readable.
        let mut peek = BTreeMap::new();
        let mut peeked = Vec::new();
        for (room_id, peeked_at) in self.peeks.of_device(user, req.device) {
            if memberships.iter().any(|(r, m)| r == room_id.as_str() && m == "join")
                || !self.rooms.is_world_readable(&room_id).await?
            {
                self.peeks.end(user, None, &room_id).await?;
                continue;
            }
            if !req.filter.room.allows(&room_id) {
                continue;
            }
            let newly = initial || peeked_at > since.stream;
            let active = newly || marks.room_since(&room_id, since.stream);
            let (section, _) = self.sync_joined_room(req, &changes, &room_id, since, to, newly, active).await?;
            if let Some(section) = section {
                peek.insert(room_id.clone(), section);
            }
            peeked.push(room_id);
        }

        // Global account data; an initial sync always shows the push rules, defaults included.
        let mut account_data = changes.account_data.remove("").unwrap_or_default();
        if initial && !global_kinds.contains("m.push_rules") && req.filter.account_data.allows_type("m.push_rules") {
            let rules = self.push.default_push_rules_event(user).await?;
            account_data.push(serde_json::value::to_raw_value(&rules).map_err(crate::internal!())?);
        }
        response.account_data.events = account_data.into_iter().map(Raw::from_json).collect();

        // Presence of the users the user shares a room with, or who are in a room the device
        // peeks into.
        let updates = match marks.presence_between(since.stream, to.stream) {
            Some(updates) => updates,
            None => streams::presence_between(pool, since.stream, to.stream).await?.into_iter().map(Arc::new).collect(),
        };
        let mut told: HashSet<String> = HashSet::new();
        if !updates.is_empty() {
            let mut shared = Vec::with_capacity(joined_rooms.len() + peeked.len());
            for room in joined_rooms.iter().chain(&peeked) {
                shared.push(self.rooms.joined_members(room).await?);
            }
            let now = crate::now_ms();
            for p in updates {
                let Ok(sender) = <&UserId>::try_from(p.user_id.as_str()) else { continue };
                if sender != user && !shared.iter().any(|members| members.contains(sender)) {
                    continue;
                }
                told.insert(p.user_id.clone());
                response.presence.events.push(presence_event(&p, now)?);
            }
        }
        // Users the user has just come to share a room with: their presence as it stands, once
        // (the members of a room the user joined, and those who joined the user's rooms).
        if !initial {
            for room in &joined_now {
                newcomers.extend(self.rooms.joined_members(room).await?.iter().cloned());
            }
            // Bounded: in a large room joined, the others' presence comes as it changes.
            let now = crate::now_ms();
            for newcomer in newcomers.into_iter().take(NEWCOMERS_PRESENCE) {
                if newcomer == user || !told.insert(newcomer.to_string()) {
                    continue;
                }
                // Never seen: offline, as Synapse says of such a user.
                let p = streams::get_presence(pool, newcomer.as_str()).await?.unwrap_or_else(|| streams::Presence {
                    user_id: newcomer.to_string(),
                    state: "offline".into(),
                    status_msg: None,
                    last_active_ts: 0,
                });
                response.presence.events.push(presence_event(&p, now)?);
            }
        }

        let e2ee = self.e2ee.sync_e2ee(user, req.device, req.since.map(|s| s.stream), to.stream).await?;
        let e2ee_news = !e2ee.to_device.is_empty() || !e2ee.changed.is_empty() || !e2ee.left.is_empty();
        response.to_device.events = e2ee.to_device;
        response.device_lists.changed = e2ee.changed;
        response.device_lists.left = e2ee.left;
        response.device_one_time_keys_count = e2ee.one_time_keys_count;
        response.device_unused_fallback_key_types = Some(e2ee.unused_fallback_key_types);
        let empty = !e2ee_news
            && peek.is_empty()
            && response.rooms.is_empty()
            && response.account_data.events.is_empty()
            && response.presence.events.is_empty();
        Ok((SyncAnswer { body: response, peek }, empty, joined_now))
    }

    /// A user's memberships (room, membership), read from the database only when one changed.
    pub(crate) async fn memberships(&self, user: &UserId, to: SyncToken) -> Result<crate::marks::Memberships> {
        if let Some(list) = self.marks.listed(user) {
            return Ok(list);
        }
        let list = Arc::new(state_store::rooms_for_user(self.db.pool(), user.as_str()).await?);
        self.marks.list(user, to.stream, list.clone());
        Ok(list)
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
    ) -> Result<(Option<v3::JoinedRoom>, Vec<OwnedUserId>)> {
        let user = req.user;
        let pool = self.db.pool();
        // A room new to the client (first sync, or joined since) starts its timeline with the
        // room's newest events, those before the join included where the history visibility
        // shows them, as on a first sync; otherwise the timeline starts at the since token
        // (`full_state` only widens the state).
        let from = if full { 0 } else { since.stream };
        let joined_since = full && since.stream > 0;
        let full = full || req.full_state;
        let mut timeline = Vec::new();
        let mut limited = false;
        let mut prev_batch = None;
        // A timeline filter picks among the events first: its `limit` counts the events it lets
        // through (as Synapse), read backwards a page at a time, up to `MAX_FILTER_SCAN` events.
        let mut filtered: Vec<Arc<Pdu>> = Vec::new();
        if active || full {
            // A limit of 0 shows no event, only whether some came (`limited`).
            let limit = req.filter.room.timeline.limit.unwrap_or(10).clamp(0, 100) as usize;
            let filter = &req.filter.room.timeline;
            // Without a filter, the newest `limit` events; when the history visibility hid some
            // of them and older ones exist, the scan below fills the timeline with those shown.
            let mut scan = filter.selects_events();
            if !scan {
                let ids = self.rooms.event_ids_between(room_id, from, to.stream, limit + 1).await?;
                limited = ids.len() > limit;
                for id in ids.iter().take(limit) {
                    if let Some(pdu) = self.rooms.get_pdu(id).await? {
                        timeline.push(pdu);
                    }
                }
                timeline.reverse();
                for p in &timeline {
                    if self.shown(user, &changes.ignored, filter, p).await? {
                        filtered.push(p.clone());
                    }
                }
                if limited && filtered.len() < timeline.len() {
                    (scan, limited) = (true, false);
                    timeline.clear();
                    filtered.clear();
                }
            }
            if scan {
                let page = 100;
                let (mut upper, mut scanned) = (to.stream, 0);
                'scan: loop {
                    let ids = self.rooms.event_ids_between(room_id, from, upper, page).await?;
                    let read = ids.len();
                    for id in ids {
                        let Some(pdu) = self.rooms.get_pdu(&id).await? else { continue };
                        upper = pdu.stream_ordering - 1;
                        scanned += 1;
                        if self.shown(user, &changes.ignored, filter, &pdu).await? {
                            if filtered.len() == limit {
                                limited = true;
                                break 'scan;
                            }
                            filtered.push(pdu.clone());
                        }
                        timeline.push(pdu);
                    }
                    if read < page || scanned >= MAX_FILTER_SCAN {
                        limited |= read == page;
                        break;
                    }
                }
                // The timeline spans from the oldest event let through. In a room joined since
                // the last sync, events left before it make the timeline limited (as Synapse:
                // the client pages back for the history it has not seen).
                let oldest = filtered.last().map_or(i64::MAX, |p| p.stream_ordering);
                limited |= joined_since && timeline.iter().any(|p| p.stream_ordering < oldest);
                timeline.retain(|p| p.stream_ordering >= oldest);
                timeline.reverse();
                filtered.reverse();
            }
            prev_batch = match timeline.first() {
                // A room new to the client whose whole history fits in the timeline: as Synapse,
                // the token is the sync's own position, so paging back from it returns the
                // timeline again and ends (Sytest and clients written against Synapse expect
                // events there, with an `end` token).
                Some(_) if from == 0 && !limited => Some(to.stream.to_string()),
                Some(first) => Some((first.stream_ordering - 1).to_string()),
                // Nothing shown (a limit of 0, or nothing new on a `full_state` sync): the
                // client pages back from the end (Synapse always gives the token).
                None => Some(to.stream.to_string()),
            };
        }

        // State: the room's state where the timeline starts, whole on a full sync, what changed
        // since the last sync when the timeline skipped events (a gap). With lazy-loaded members
        // (Synapse's behaviour, which clients and Sytest expect), a full sync keeps the members
        // of the timeline's senders and the user's own; an incremental one sends, besides a
        // gap's state changes, the members of the timeline's senders the device was not sent
        // yet (`lazy_members`), again each time with `include_redundant_members`.
        let mut state: Vec<Arc<Pdu>> = Vec::new();
        let lazy = req.filter.room.state.lazy_load_members;
        let redundant = req.filter.room.state.include_redundant_members;
        let senders: HashSet<&str> = filtered.iter().map(|p| p.sender.as_str()).collect();
        // The member events the device already has, when members are lazy-loaded.
        let lazy_key = ((user.to_owned(), req.device.to_owned()), room_id.to_owned());
        let known = |id: &OwnedEventId| {
            !redundant && self.lazy_members.lock().unwrap().get(&lazy_key).is_some_and(|sent| sent.contains(id))
        };
        if full || limited {
            let start = match timeline.first() {
                Some(first) => self.rooms.state_at_position(room_id, first.stream_ordering - 1).await?,
                None => self.rooms.state_at_position(room_id, to.stream).await?,
            };
            for ((kind, key), id) in start.iter() {
                let member = *kind == StateEventType::RoomMember;
                if full && lazy && member && !senders.contains(key.as_str()) && key != user.as_str() {
                    continue;
                }
                let Some(pdu) = self.rooms.get_pdu(id).await? else {
                    continue;
                };
                if !full && pdu.stream_ordering <= from {
                    continue;
                }
                if req.filter.room.state.allows(&pdu) {
                    state.push(pdu);
                }
            }
            // A gap: its state changes, and the members of the timeline's speakers the device
            // was not sent yet.
            if !full && lazy {
                for key in senders.iter().filter(|s| **s != user.as_str()) {
                    let Some(id) = start.get(&(StateEventType::RoomMember, (*key).to_owned())) else { continue };
                    if state.iter().any(|p| p.event_id == *id) || known(id) {
                        continue;
                    }
                    if let Some(pdu) = self.rooms.get_pdu(id).await? {
                        state.push(pdu);
                    }
                }
            }
        } else if lazy {
            // Members of the timeline's speakers the device was not sent yet, so clients can
            // show their names (from the cached current state: those the timeline itself
            // changed are in it already).
            let current = self.rooms.current_state(room_id).await?;
            for key in senders.iter().filter(|s| **s != user.as_str()) {
                let Some(id) = current.get(&(StateEventType::RoomMember, (*key).to_owned())) else { continue };
                if timeline.iter().any(|t| t.event_id == *id) || known(id) {
                    continue;
                }
                if let Some(pdu) = self.rooms.get_pdu(id).await? {
                    state.push(pdu);
                }
            }
        }
        if lazy {
            let mut cache = self.lazy_members.lock().unwrap();
            let sent = state.iter().chain(&filtered).filter(|p| p.kind == ruma::events::TimelineEventType::RoomMember);
            let ids: Vec<OwnedEventId> = sent.map(|p| p.event_id.clone()).collect();
            if full {
                cache.put(lazy_key.clone(), ids.into_iter().collect());
            } else if !ids.is_empty() {
                let remembered = cache.get_or_insert_mut(lazy_key.clone(), HashSet::new);
                if remembered.len() + ids.len() > LAZY_MEMBERS_REMEMBERED {
                    remembered.clear();
                }
                remembered.extend(ids);
            }
        }

        // Ephemeral: typing and receipts.
        let mut ephemeral = Vec::new();
        let typing_since = if full { 0 } else { since.typing };
        let wanted = |kind: &str| req.filter.room.ephemeral.allows_type(kind);
        if let Some(users) = self.ephemeral.typing.changed_since(room_id, typing_since).filter(|_| wanted("m.typing")) {
            ephemeral.push(pdu::raw(&json!({ "type": "m.typing", "content": { "user_ids": users } })));
        }
        let receipts = match req.since {
            Some(_) => changes.receipts.get(room_id.as_str()).cloned().unwrap_or_default(),
            None => streams::receipts_between(pool, room_id.as_str(), from, to.stream).await?,
        };
        if let Some(event) = receipt_event(receipts, user).filter(|_| wanted("m.receipt")) {
            ephemeral.push(event);
        }

        // Room account data.
        let account_data = changes.account_data.get(room_id.as_str()).cloned().unwrap_or_default();

        // A room the filters leave nothing of is not shown (as Synapse: what the client would
        // see decides, not what happened).
        if filtered.is_empty() && state.is_empty() && ephemeral.is_empty() && account_data.is_empty() && !full {
            return Ok((None, Vec::new()));
        }
        let mut room = v3::JoinedRoom::new();
        room.timeline.events = if req.filter.federation_format() {
            filtered.iter().map(|p| in_federation_format(p)).collect::<Result<_>>()?
        } else {
            self.rooms.client_raws(&filtered, user, req.device, false).await?
        };
        room.timeline.limited = limited;
        room.timeline.prev_batch = prev_batch;
        // The summary when the room is new to the client or its members changed.
        let members_changed =
            full || timeline.iter().chain(&state).any(|p| p.kind == ruma::events::TimelineEventType::RoomMember);
        let state: Vec<_> = if req.filter.federation_format() {
            state.iter().map(|p| in_federation_format(p)).collect::<Result<_>>()?
        } else {
            state.iter().map(|p| p.to_raw(false)).collect()
        };
        room.state = v3::State::Before(state.into());
        room.ephemeral.events = ephemeral;
        room.account_data.events = account_data.into_iter().map(Raw::from_json).collect();
        if members_changed {
            room.summary = self.room_member_summary(room_id, user).await?;
        }
        let by_thread = req.filter.room.timeline.unread_thread_notifications;
        let counts = self.push.unread_counts(user, room_id, by_thread).await?;
        room.unread_notifications = notification_counts(counts.notifications, counts.highlights);
        if by_thread {
            for (thread, (n, h)) in counts.threads {
                let Ok(thread) = OwnedEventId::try_from(thread) else { continue };
                room.unread_thread_notifications.insert(thread, notification_counts(n, h));
            }
        }
        // Those who joined in the timeline shown (not a new name of someone already in).
        let joiners = filtered
            .iter()
            .filter(|p| p.membership() == Some(MembershipState::Join))
            .filter(|p| {
                p.unsigned.get("prev_content").and_then(|c| c.get("membership")).and_then(Value::as_str) != Some("join")
            })
            .filter_map(|p| p.state_key.as_deref().and_then(|k| OwnedUserId::try_from(k).ok()))
            .collect();
        Ok((Some(room), joiners))
    }

    /// A room the user left (or was kicked or banned from) since the last sync.
    async fn sync_left_room(&self, req: &SyncRequest<'_>, room_id: &RoomId, since: SyncToken) -> Result<v3::LeftRoom> {
        let user = req.user;
        let until = self.rooms.readable_until(user, room_id).await.unwrap_or(since.stream);
        let limit = req.filter.room.timeline.limit.unwrap_or(10).clamp(0, 100) as i64;
        let rows =
            ev_store::room_events(self.db.pool(), room_id.as_str(), since.stream, until, true, limit + 1).await?;
        let mut left = v3::LeftRoom::new();
        left.timeline.limited = rows.len() as i64 > limit;
        let mut first = None;
        for stored in rows.into_iter().take(limit as usize) {
            first = Some(stored.stream_ordering);
            let pdu = Pdu::from_stored(stored)?;
            if req.filter.room.timeline.allows(&pdu) && self.rooms.can_see_event(user, &pdu).await? {
                left.timeline.events.push(self.rooms.client_raw(&pdu, user, req.device, false).await?);
            }
        }
        left.timeline.events.reverse();
        left.timeline.prev_batch = first.map(|f| (f - 1).to_string());
        // The state where the timeline starts: what changed since the last sync when the user
        // was in the room then, all of it (as the filter lets through) when they came and went
        // in between, or on a first sync.
        let start = self.rooms.state_at_position(room_id, first.map_or(until, |f| f - 1)).await?;
        let member_key = (StateEventType::RoomMember, user.to_string());
        let was_joined = since.stream > 0
            && match self.rooms.state_at_position(room_id, since.stream).await?.get(&member_key) {
                Some(id) => self.rooms.get_pdu(id).await?.and_then(|p| p.membership()) == Some(MembershipState::Join),
                None => false,
            };
        let mut state = Vec::new();
        for (_, id) in start.iter() {
            let Some(pdu) = self.rooms.get_pdu(id).await? else { continue };
            if (was_joined && pdu.stream_ordering <= since.stream) || !req.filter.room.state.allows(&pdu) {
                continue;
            }
            state.push(pdu.to_raw(false));
        }
        left.state = v3::State::Before(state.into());
        Ok(left)
    }

    /// `summary`: member counts and heroes.
    pub(crate) async fn room_member_summary(&self, room_id: &RoomId, user: &UserId) -> Result<v3::RoomSummary> {
        let members = state_store::room_members(self.db.pool(), room_id.as_str()).await?;
        let members: Vec<(&str, MembershipState)> =
            members.iter().map(|(u, m, _)| (u.as_str(), MembershipState::from(m.as_str()))).collect();
        let count = |m: MembershipState| UInt::try_from(members.iter().filter(|(_, state)| *state == m).count()).ok();
        let mut heroes: Vec<OwnedUserId> = members
            .iter()
            .filter(|(u, m)| *u != user.as_str() && matches!(m, MembershipState::Join | MembershipState::Invite))
            .filter_map(|(u, _)| OwnedUserId::try_from(*u).ok())
            .collect();
        heroes.sort();
        heroes.truncate(5);
        // Heroes name a room that has no name nor alias: a named room has none (as Synapse).
        let named = |p: Option<Arc<crate::Pdu>>, field: &str| {
            p.and_then(|p| p.content_field(field)).is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()))
        };
        if named(self.rooms.state_event(room_id, &StateEventType::RoomName, "").await?, "name")
            || named(self.rooms.state_event(room_id, &StateEventType::RoomCanonicalAlias, "").await?, "alias")
        {
            heroes.clear();
        }
        let mut summary = v3::RoomSummary::new();
        summary.heroes = heroes;
        summary.joined_member_count = count(MembershipState::Join);
        summary.invited_member_count = count(MembershipState::Invite);
        Ok(summary)
    }
}

/// Unread counts as the response gives them.
pub(crate) fn notification_counts(notifications: u64, highlights: u64) -> UnreadNotificationsCount {
    let mut counts = UnreadNotificationsCount::new();
    counts.notification_count = UInt::try_from(notifications).ok();
    counts.highlight_count = UInt::try_from(highlights).ok();
    counts
}

/// An account data event, its content kept as stored.
pub(crate) fn account_data_event(kind: &str, content: &str) -> Result<Box<RawValue>> {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        content: &'a RawValue,
    }
    let content: &RawValue = serde_json::from_str(content).map_err(crate::internal!())?;
    serde_json::value::to_raw_value(&Event { kind, content }).map_err(crate::internal!())
}

/// A room's read receipts as one `m.receipt` event (others' private receipts left out), or
/// `None` when none is left.
pub(crate) fn receipt_event<T>(receipts: Vec<streams::Receipt>, user: &UserId) -> Option<Raw<T>> {
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
        if let Some(by_type) = entry.as_object_mut() {
            by_type.entry(r.receipt_type).or_insert_with(|| json!({}))[r.user_id] = receipt;
        }
    }
    (!content.is_empty()).then(|| pdu::raw(&json!({ "type": "m.receipt", "content": content })))
}

/// An event as other servers see it (a filter's `event_format: federation`), with its id.
fn in_federation_format<T>(p: &Pdu) -> Result<Raw<T>> {
    let mut value: Value = serde_json::from_str(pdu::federation_json(p)?.get()).map_err(crate::internal!())?;
    if let Some(object) = value.as_object_mut() {
        object.insert("event_id".into(), json!(p.event_id));
        object.entry("room_id").or_insert_with(|| json!(p.room_id));
    }
    Ok(pdu::raw(&value))
}

/// A presence event, as `/sync` shows it.
fn presence_event(p: &streams::Presence, now: i64) -> Result<Raw<PresenceEvent>> {
    #[derive(serde::Serialize)]
    struct Content<'a> {
        presence: &'a str,
        /// Left out for a user never seen active.
        #[serde(skip_serializing_if = "Option::is_none")]
        last_active_ago: Option<i64>,
        currently_active: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        status_msg: Option<&'a str>,
    }
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        sender: &'a str,
        content: Content<'a>,
    }
    let content = Content {
        presence: &p.state,
        last_active_ago: (p.last_active_ts > 0).then(|| (now - p.last_active_ts).max(0)),
        currently_active: p.state == "online",
        status_msg: p.status_msg.as_deref(),
    };
    let event = Event { kind: "m.presence", sender: &p.user_id, content };
    Ok(Raw::from_json(serde_json::value::to_raw_value(&event).map_err(crate::internal!())?))
}

/// JSON values as typed raw values of the response.
fn raws<T>(values: &[Value]) -> Vec<Raw<T>> {
    values.iter().map(pdu::raw).collect()
}

/// A `/sync` waiting for news, counted in the metrics for as long as it lives.
struct Waiting<'a>(&'a prometheus::IntGauge);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
