//! Simplified sliding sync (MSC4186), as Element X and every client on matrix-rust-sdk's
//! `SyncService` speak it: `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`.
//!
//! A client keeps *connections* (`conn_id`: Element X has one for its room list, one for
//! encryption), each a chain of positions (`pos`). A position stands for what the connection
//! was sent: the stream token it reached and the rooms it knows. The server answers what
//! changed since that position for the rooms in the requested windows of each list (rooms
//! ordered by their last "bump" event, newest first) and the rooms subscribed to; a room new
//! to the connection comes whole (`initial`), a known one with what happened since. Positions
//! live in memory: a position the server no longer knows (another process, an expired
//! connection) is answered `M_UNKNOWN_POS`, and the client starts again.
//!
//! A connection belongs to one user's device: its key holds both, so no request of another
//! user or device ever reads it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use diplomatie_storage::streams;
use lru::LruCache;
use ruma::{
    api::{
        client::sync::sync_events::{
            v5::{self, request, response},
            DeviceLists,
        },
        error::ErrorKind,
    },
    directory::RoomTypeFilter,
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    room::RoomType,
    serde::Raw,
    state_res::StateMap,
    JsOption, OwnedEventId, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::Value;

use crate::{
    account_data::AccountData,
    core::Core,
    e2ee::E2ee,
    ephemeral::Ephemeral,
    push::Push,
    rooms::Rooms,
    sync::{self, SyncToken, Syncer},
    Error, Pdu, Result,
};

/// How many positions of a connection are kept: the last answered, and the ones before it
/// (a client retries a request whose answer it lost).
const POSITIONS_KEPT: usize = 4;
/// The longest timeline a room is sent with.
const MAX_TIMELINE: u64 = 100;
/// The longest timeline of a room sent as left.
const LEFT_TIMELINE: usize = 10;

type ConnectionKey = (OwnedUserId, String, String);

/// What a position of a connection stands for.
#[derive(Clone, Debug, Default)]
struct Position {
    /// The stream token the connection reached (`None` before its first answer).
    token: Option<SyncToken>,
    /// The rooms the connection was sent, with the membership it was sent them with and the
    /// largest timeline limit it asked for them.
    rooms: HashMap<OwnedRoomId, (MembershipState, u64)>,
}

#[derive(Default)]
struct Connection {
    next: u64,
    positions: VecDeque<(u64, Arc<Position>)>,
}

/// How a room is to be sent: the widest of the lists and subscriptions that include it.
#[derive(Clone, Debug, Default)]
struct RoomConfig {
    timeline_limit: u64,
    required_state: Vec<(StateEventType, String)>,
}

impl RoomConfig {
    fn widen(&mut self, timeline_limit: UInt, required_state: &[(StateEventType, String)]) {
        self.timeline_limit = self.timeline_limit.max(u64::from(timeline_limit).min(MAX_TIMELINE));
        for entry in required_state {
            if !self.required_state.contains(entry) {
                self.required_state.push(entry.clone());
            }
        }
    }

    /// The ids of the state events of `state` asked for; `lazy` holds the senders of the
    /// timeline sent (for `$LAZY` members). Exact entries are looked up, wildcards scan.
    fn select<'s>(
        &self,
        state: &'s StateMap<OwnedEventId>,
        me: &UserId,
        lazy: &HashSet<&str>,
    ) -> BTreeSet<&'s OwnedEventId> {
        let any_kind = StateEventType::from("*");
        let mut ids = BTreeSet::new();
        for (kind, key) in &self.required_state {
            if *kind == any_kind || key == "*" {
                let matches =
                    |k: &StateEventType, v: &str| (*kind == any_kind || k == kind) && (key == "*" || key == v);
                ids.extend(state.iter().filter(|((k, v), _)| matches(k, v)).map(|(_, id)| id));
                continue;
            }
            let keys: Vec<&str> = match key.as_str() {
                "$ME" => vec![me.as_str()],
                "$LAZY" if *kind == StateEventType::RoomMember => lazy.iter().copied().collect(),
                "$LAZY" => Vec::new(),
                exact => vec![exact],
            };
            for k in keys {
                ids.extend(state.get(&(kind.clone(), k.to_owned())));
            }
        }
        ids
    }
}

/// The rooms `m.direct` names, read at most once an answer.
#[derive(Default)]
struct DirectRooms(tokio::sync::OnceCell<HashSet<OwnedRoomId>>);

/// A room the user is in (or invited to, or knocking on), as the lists sort and filter it.
struct Candidate {
    room_id: OwnedRoomId,
    membership: MembershipState,
    bump: i64,
}

/// Simplified sliding sync, over the rooms, `/sync`'s helpers, end-to-end encryption, push
/// (unread counts), the ephemeral streams and account data.
pub struct SlidingSync {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    syncer: Arc<Syncer>,
    e2ee: Arc<E2ee>,
    push: Arc<Push>,
    ephemeral: Arc<Ephemeral>,
    account_data: Arc<AccountData>,
    connections: Mutex<LruCache<ConnectionKey, Connection>>,
}

crate::core::over_core!(SlidingSync);

/// What one request asks, besides its body: who asks, from which device, how long it waits.
pub struct SlidingRequest<'a> {
    pub user: &'a UserId,
    pub device: &'a str,
    pub body: &'a v5::Request,
}

impl SlidingSync {
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        syncer: Arc<Syncer>,
        e2ee: Arc<E2ee>,
        push: Arc<Push>,
        ephemeral: Arc<Ephemeral>,
        account_data: Arc<AccountData>,
    ) -> SlidingSync {
        SlidingSync {
            core,
            rooms,
            syncer,
            e2ee,
            push,
            ephemeral,
            account_data,
            connections: Mutex::new(crate::lru(10_000)),
        }
    }

    /// Answers a request, waiting up to its timeout when nothing is new for a known position.
    pub async fn sync(&self, req: SlidingRequest<'_>) -> Result<v5::Response> {
        let body = req.body;
        check(body)?;
        let key: ConnectionKey = (req.user.to_owned(), req.device.to_owned(), body.conn_id.clone().unwrap_or_default());
        let since = match &body.pos {
            None => {
                // A new chain: what the connection knew is forgotten.
                self.connections.lock().unwrap().pop(&key);
                Arc::new(Position::default())
            }
            Some(pos) => self.position(&key, pos)?,
        };
        let mut changes = self.notifier.subscribe(req.user);
        let timeout = body.timeout.unwrap_or(Duration::ZERO).min(Duration::from_secs(120));
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let to = self.syncer.current_token();
            let (mut response, reached, news) = self.answer(&req, &since, to).await?;
            let waiting = body.pos.is_some() && !news && tokio::time::Instant::now() < deadline;
            if waiting && tokio::time::timeout_at(deadline, changes.changed()).await.is_ok_and(|r| r.is_ok()) {
                continue;
            }
            response.txn_id = body.txn_id.clone();
            response.pos = self.record(key, reached).to_string();
            return Ok(response);
        }
    }

    /// The position `pos` of a connection, if still known.
    fn position(&self, key: &ConnectionKey, pos: &str) -> Result<Arc<Position>> {
        let unknown = || Error::new(ErrorKind::UnknownPos, "Unknown position: start the connection again");
        let pos: u64 = pos.parse().map_err(|_| unknown())?;
        let mut connections = self.connections.lock().unwrap();
        let connection = connections.get(key).ok_or_else(unknown)?;
        connection.positions.iter().find(|(p, _)| *p == pos).map(|(_, at)| at.clone()).ok_or_else(unknown)
    }

    /// Keeps a new position of a connection; answers its number.
    fn record(&self, key: ConnectionKey, position: Position) -> u64 {
        let mut connections = self.connections.lock().unwrap();
        let connection = connections.get_or_insert_mut(key, Connection::default);
        connection.next += 1;
        let pos = connection.next;
        connection.positions.push_back((pos, Arc::new(position)));
        while connection.positions.len() > POSITIONS_KEPT {
            connection.positions.pop_front();
        }
        pos
    }

    /// The answer from `since` up to `to`, the position it reaches, and whether it holds
    /// anything new.
    async fn answer(
        &self,
        req: &SlidingRequest<'_>,
        since: &Position,
        to: SyncToken,
    ) -> Result<(v5::Response, Position, bool)> {
        let (user, body) = (req.user, req.body);
        let memberships = self.syncer.memberships(user, to).await?;
        let direct = DirectRooms::default();
        let mut candidates = Vec::new();
        for (room, membership) in memberships.iter() {
            let membership = MembershipState::from(membership.as_str());
            if !matches!(membership, MembershipState::Join | MembershipState::Invite | MembershipState::Knock) {
                continue;
            }
            let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else { continue };
            let bump = self.rooms.bump_stamp(&room_id).await?;
            candidates.push(Candidate { room_id, membership, bump });
        }
        // Newest first; the room id settles ties, so that windows are stable.
        candidates.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));

        let mut response = v5::Response::new(String::new());
        let mut wanted: BTreeMap<OwnedRoomId, (RoomConfig, usize)> = BTreeMap::new();
        let mut shown = Shown::default();
        for (name, list) in &body.lists {
            let mut listed = Vec::new();
            for (i, c) in candidates.iter().enumerate() {
                if self.passes(user, list.filters.as_ref(), c, &direct).await? {
                    listed.push(i);
                }
            }
            let mut answer = response::List::default();
            answer.count = UInt::try_from(listed.len()).unwrap_or(UInt::MAX);
            response.lists.insert(name.clone(), answer);
            let in_window = shown.lists.entry(name.clone()).or_default();
            for (start, end) in &list.ranges {
                let (start, end) = (u64::from(*start) as usize, u64::from(*end) as usize);
                for &i in listed.iter().skip(start).take(end.saturating_sub(start).saturating_add(1)) {
                    let entry = wanted.entry(candidates[i].room_id.clone()).or_insert((RoomConfig::default(), i));
                    entry.0.widen(list.room_details.timeline_limit, &list.room_details.required_state);
                    in_window.push(candidates[i].room_id.clone());
                }
            }
        }
        let index: HashMap<&RoomId, usize> = candidates.iter().enumerate().map(|(i, c)| (&*c.room_id, i)).collect();
        for (room_id, sub) in &body.room_subscriptions {
            // Only rooms the user is in, invited to or knocking on.
            let Some(&i) = index.get(&**room_id) else { continue };
            let entry = wanted.entry(room_id.clone()).or_insert((RoomConfig::default(), i));
            entry.0.widen(sub.timeline_limit, &sub.required_state);
            shown.subscribed.push(room_id.clone());
        }

        // Receipts that moved since the position, read once: the user's own ones change the
        // rooms' unread counts, and the receipts extension sends them all.
        let mut moved_receipts: HashMap<String, Vec<streams::Receipt>> = HashMap::new();
        if let Some(from) = since.token.filter(|t| self.marks.receipts_since(t.stream)) {
            for (room, receipt) in streams::all_receipts_between(self.db.pool(), from.stream, to.stream).await? {
                moved_receipts.entry(room).or_default().push(receipt);
            }
        }
        let read_by_user: HashSet<&str> = moved_receipts
            .iter()
            .filter(|(_, receipts)| receipts.iter().any(|r| r.user_id == user.as_str()))
            .map(|(room, _)| room.as_str())
            .collect();

        let mut reached = Position { token: Some(to), rooms: since.rooms.clone() };
        for (room_id, (config, i)) in &wanted {
            let candidate = &candidates[*i];
            let known = since.rooms.get(room_id);
            let initial = known.map(|(m, _)| m) != Some(&candidate.membership);
            // A known room asked with a longer timeline than before (Element X opening a room
            // of its list) comes with its newest events again, as many as now asked.
            let expanded = known.is_some_and(|(_, limit)| config.timeline_limit > *limit);
            let room = match candidate.membership {
                MembershipState::Join => {
                    let known_at = since.token.filter(|_| !initial);
                    let read = read_by_user.contains(room_id.as_str());
                    let asked = Asked { since: known_at.filter(|_| !expanded), known_at, read };
                    self.joined_room(req, room_id, config, asked, to, &direct).await?
                }
                _ if initial => Some(self.invited_room(user, room_id, &direct).await?),
                _ => None,
            };
            let limit = known.map_or(0, |(_, limit)| *limit).max(config.timeline_limit);
            reached.rooms.insert(room_id.clone(), (candidate.membership.clone(), limit));
            if let Some(mut room) = room {
                room.bump_stamp = UInt::try_from(candidate.bump.max(0)).ok();
                if initial {
                    room.initial = Some(true);
                }
                response.rooms.insert(room_id.clone(), room);
            }
        }
        // Rooms the connection was sent that the user has left since (or was kicked or banned
        // from): once more, with the events up to the leave, then forgotten by the connection.
        if since.token.is_some() {
            let now: HashMap<&str, MembershipState> =
                memberships.iter().map(|(r, m)| (r.as_str(), MembershipState::from(m.as_str()))).collect();
            for room_id in since.rooms.keys() {
                let gone =
                    matches!(now.get(room_id.as_str()), Some(MembershipState::Leave | MembershipState::Ban) | None);
                if wanted.contains_key(room_id) || !gone {
                    continue;
                }
                if let Some(room) = self.left_room(req, room_id, since.token.unwrap_or_default()).await? {
                    response.rooms.insert(room_id.clone(), room);
                }
                reached.rooms.remove(room_id);
            }
        }
        let news = self.extensions(req, since.token, to, &shown, moved_receipts, &mut response.extensions).await?;
        let news = news || !response.rooms.is_empty() || since.token.is_none();
        Ok((response, reached, news))
    }

    /// Whether a room passes a list's filters.
    async fn passes(
        &self,
        user: &UserId,
        filters: Option<&request::ListFilters>,
        c: &Candidate,
        direct: &DirectRooms,
    ) -> Result<bool> {
        let Some(f) = filters else { return Ok(true) };
        if let Some(dm) = f.is_dm {
            if dm != self.is_direct(user, direct, &c.room_id).await? {
                return Ok(false);
            }
        }
        if f.is_invite.is_some_and(|invite| invite != (c.membership == MembershipState::Invite)) {
            return Ok(false);
        }
        if f.is_encrypted.is_some() || !f.room_types.is_empty() || !f.not_room_types.is_empty() {
            let state = self.rooms.current_state(&c.room_id).await?;
            if let Some(encrypted) = f.is_encrypted {
                let has = state.contains_key(&(StateEventType::RoomEncryption, String::new()));
                if has != encrypted {
                    return Ok(false);
                }
            }
            let create = self.rooms.state_event_in(&state, &StateEventType::RoomCreate, "").await?;
            let kind = create.and_then(|p| p.content_field("type")).and_then(|v| v.as_str().map(RoomType::from));
            let matches = |filter: &RoomTypeFilter| match (filter, &kind) {
                (RoomTypeFilter::Default, None) => true,
                (RoomTypeFilter::Space, Some(RoomType::Space)) => true,
                (RoomTypeFilter::Default | RoomTypeFilter::Space, _) => false,
                (other, Some(k)) => other.as_str() == Some(k.to_string().as_str()),
                _ => false,
            };
            if !f.room_types.is_empty() && !f.room_types.iter().any(matches) {
                return Ok(false);
            }
            if f.not_room_types.iter().any(matches) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether `m.direct` names the room (read once an answer, when first asked).
    async fn is_direct(&self, user: &UserId, direct: &DirectRooms, room_id: &RoomId) -> Result<bool> {
        let rooms = direct
            .0
            .get_or_try_init(|| async {
                let content = match self.account_data.get(user, None, "m.direct").await {
                    Ok(v) => v,
                    Err(Error::Matrix(ErrorKind::NotFound, _)) => return Ok(HashSet::new()),
                    Err(e) => return Err(e),
                };
                Ok(content
                    .as_object()
                    .into_iter()
                    .flat_map(|users| users.values())
                    .filter_map(Value::as_array)
                    .flatten()
                    .filter_map(|r| r.as_str().and_then(|r| OwnedRoomId::try_from(r).ok()))
                    .collect())
            })
            .await?;
        Ok(rooms.contains(room_id))
    }

    /// A room the user is invited to (or knocking on): its stripped state.
    async fn invited_room(&self, user: &UserId, room_id: &RoomId, direct: &DirectRooms) -> Result<response::Room> {
        let stripped = self.rooms.stripped_state(room_id, user).await?;
        let mut room = response::Room::new();
        for event in &stripped {
            match event.get("type").and_then(Value::as_str) {
                Some("m.room.name") => room.name = text(&event["content"]["name"]),
                Some("m.room.avatar") => {
                    if let Some(url) = text(&event["content"]["url"]) {
                        room.avatar = JsOption::Some(OwnedMxcUri::from(url));
                    }
                }
                _ => {}
            }
        }
        room.invite_state = Some(stripped.iter().map(crate::pdu::raw).collect());
        room.is_dm = Some(self.is_direct(user, direct, room_id).await?);
        Ok(room)
    }

    /// A joined room: whole when `asked.since` is `None` (new to the connection, or asked with
    /// a longer timeline than before), else what changed after it (`None` when nothing did).
    async fn joined_room(
        &self,
        req: &SlidingRequest<'_>,
        room_id: &RoomId,
        config: &RoomConfig,
        asked: Asked,
        to: SyncToken,
        direct: &DirectRooms,
    ) -> Result<Option<response::Room>> {
        let (user, since, read) = (req.user, asked.since, asked.read);
        let from = since.map_or(i64::MIN, |s| s.stream);
        let events_moved = since.is_none() || self.marks.room_since(room_id, from);
        if !events_moved && !read {
            return Ok(None);
        }
        // The timeline: the newest events, or those after the position.
        let limit = config.timeline_limit as usize;
        let ids = match events_moved {
            true => self.rooms.event_ids_between(room_id, from, to.stream, limit + 1).await?,
            false => Vec::new(),
        };
        if since.is_some() && ids.is_empty() && !read {
            return Ok(None);
        }
        let limited = ids.len() > limit;
        let mut timeline: Vec<Arc<Pdu>> = Vec::new();
        for id in ids.iter().take(limit) {
            if let Some(pdu) = self.rooms.get_pdu(id).await? {
                if self.rooms.can_see_event(user, &pdu).await? {
                    timeline.push(pdu);
                }
            }
        }
        timeline.reverse();
        let mut room = response::Room::new();
        room.limited = limited;
        room.prev_batch = timeline.first().map(|p| (p.stream_ordering - 1).to_string());
        if let Some(known_at) = asked.known_at {
            let live = timeline.iter().filter(|p| p.stream_ordering > known_at.stream).count();
            room.num_live = UInt::try_from(live).ok();
        }
        room.timeline = self.rooms.client_raws(&timeline, user, req.device, false).await?;

        // Required state: all of it that is asked when new, the changes asked for after.
        let state = self.rooms.current_state(room_id).await?;
        let senders: HashSet<&str> = timeline.iter().map(|p| p.sender.as_str()).collect();
        let mut required = Vec::new();
        for id in config.select(&state, user, &senders) {
            let Some(pdu) = self.rooms.get_pdu(id).await? else { continue };
            if since.is_some() && pdu.stream_ordering <= from {
                continue;
            }
            required.push(pdu);
        }
        room.required_state = required.iter().map(|p| p.to_raw(false)).collect();

        // Name, avatar and heroes: when new, or when they changed.
        let changed = |kind: TimelineEventType| {
            since.is_none() || timeline.iter().any(|p| p.state_key.is_some() && p.kind == kind)
        };
        if changed(TimelineEventType::RoomName) {
            let name = self.rooms.state_event_in(&state, &StateEventType::RoomName, "").await?;
            room.name = name.and_then(|p| p.content_field("name")).and_then(|v| text(&v));
        }
        if changed(TimelineEventType::RoomAvatar) {
            let avatar = self.rooms.state_event_in(&state, &StateEventType::RoomAvatar, "").await?;
            room.avatar = match avatar.and_then(|p| p.content_field("url")).and_then(|v| text(&v)) {
                Some(url) => JsOption::Some(OwnedMxcUri::from(url)),
                None if since.is_some() => JsOption::Null,
                None => JsOption::Undefined,
            };
        }
        if changed(TimelineEventType::RoomMember) {
            let summary = self.syncer.room_member_summary(room_id, user).await?;
            room.joined_count = summary.joined_member_count;
            room.invited_count = summary.invited_member_count;
            if room.name.is_none() {
                let mut heroes = Vec::new();
                for hero in summary.heroes {
                    let member = self.rooms.state_event_in(&state, &StateEventType::RoomMember, hero.as_str()).await?;
                    let mut h = response::Hero::new(hero);
                    if let Some(m) = member {
                        h.name = m.content_field("displayname").and_then(|v| text(&v));
                        h.avatar = m.content_field("avatar_url").and_then(|v| text(&v)).map(OwnedMxcUri::from);
                    }
                    heroes.push(h);
                }
                room.heroes = Some(heroes);
            }
        }
        let counts = self.push.unread_counts(user, room_id, false).await?;
        room.unread_notifications = sync::notification_counts(counts.notifications, counts.highlights);
        if since.is_none() {
            room.is_dm = Some(self.is_direct(user, direct, room_id).await?);
        }
        Ok(Some(room))
    }

    /// A room the user left after `since`: the events after it that the user could read, up to
    /// the leave.
    async fn left_room(
        &self,
        req: &SlidingRequest<'_>,
        room_id: &RoomId,
        since: SyncToken,
    ) -> Result<Option<response::Room>> {
        let user = req.user;
        let Ok(until) = self.rooms.readable_until(user, room_id).await else { return Ok(None) };
        let ids = self.rooms.event_ids_between(room_id, since.stream, until, LEFT_TIMELINE + 1).await?;
        let mut room = response::Room::new();
        room.limited = ids.len() > LEFT_TIMELINE;
        let mut timeline = Vec::new();
        for id in ids.iter().take(LEFT_TIMELINE) {
            if let Some(pdu) = self.rooms.get_pdu(id).await? {
                if self.rooms.can_see_event(user, &pdu).await? {
                    timeline.push(pdu);
                }
            }
        }
        timeline.reverse();
        room.prev_batch = timeline.first().map(|p| (p.stream_ordering - 1).to_string());
        room.num_live = UInt::try_from(timeline.len()).ok();
        room.timeline = self.rooms.client_raws(&timeline, user, req.device, false).await?;
        // The user's own membership, the leave, as state too: clients read the room's state
        // from it whatever the timeline held.
        if let Some(own) = self.rooms.state_event(room_id, &StateEventType::RoomMember, user.as_str()).await? {
            room.required_state = vec![own.to_raw(false)];
        }
        Ok(Some(room))
    }

    /// The extensions asked for; answers whether they hold anything new.
    async fn extensions(
        &self,
        req: &SlidingRequest<'_>,
        since: Option<SyncToken>,
        to: SyncToken,
        shown: &Shown,
        mut moved_receipts: HashMap<String, Vec<streams::Receipt>>,
        out: &mut response::Extensions,
    ) -> Result<bool> {
        let (user, asked) = (req.user, &req.body.extensions);
        let mut news = false;
        if asked.to_device.enabled == Some(true) {
            let since = match &asked.to_device.since {
                Some(s) => Some(s.parse::<i64>().map_err(|_| Error::invalid_param("Invalid to_device since"))?),
                None => None,
            };
            let events = self.e2ee.to_device_after(user, req.device, since, to.stream).await?;
            news |= !events.is_empty();
            let mut to_device = response::ToDevice::default();
            to_device.next_batch = to.stream.to_string();
            to_device.events = events;
            out.to_device = Some(to_device);
        }
        if asked.e2ee.enabled == Some(true) {
            let keys = self.e2ee.device_keys_news(user, req.device, since.map(|s| s.stream), to.stream).await?;
            news |= !keys.changed.is_empty() || !keys.left.is_empty();
            let mut lists = DeviceLists::new();
            lists.changed = keys.changed;
            lists.left = keys.left;
            out.e2ee.device_lists = lists;
            out.e2ee.device_one_time_keys_count = keys.one_time_keys_count;
            out.e2ee.device_unused_fallback_key_types = Some(keys.unused_fallback_key_types);
        }
        let from = since.map_or(0, |s| s.stream);
        if asked.account_data.enabled == Some(true) && (since.is_none() || self.marks.account_data_since(user, from)) {
            for (room, kind, content) in
                streams::account_data_between(self.db.pool(), user.as_str(), from, to.stream).await?
            {
                let event = sync::account_data_event(&kind, &content)?;
                if room.is_empty() {
                    out.account_data.global.push(Raw::from_json(event));
                } else if let Ok(room_id) = OwnedRoomId::try_from(room) {
                    out.account_data.rooms.entry(room_id).or_default().push(Raw::from_json(event));
                }
                news = true;
            }
        }
        if asked.receipts.enabled == Some(true) && (since.is_none() || self.marks.receipts_since(from)) {
            for room_id in shown.select(asked.receipts.lists.as_deref(), asked.receipts.rooms.as_deref()) {
                let receipts = match since {
                    Some(_) => moved_receipts.remove(room_id.as_str()).unwrap_or_default(),
                    None => streams::receipts_between(self.db.pool(), room_id.as_str(), 0, to.stream).await?,
                };
                if let Some(event) = sync::receipt_event(receipts, user) {
                    out.receipts.rooms.insert(room_id.to_owned(), event);
                    news = true;
                }
            }
        }
        if asked.typing.enabled == Some(true) {
            let typing_since = since.map_or(0, |s| s.typing);
            for room_id in shown.select(asked.typing.lists.as_deref(), asked.typing.rooms.as_deref()) {
                if let Some(users) = self.ephemeral.typing.changed_since(room_id, typing_since) {
                    let event = serde_json::json!({ "type": "m.typing", "content": { "user_ids": users } });
                    out.typing.rooms.insert(room_id.to_owned(), crate::pdu::raw(&event));
                    news = true;
                }
            }
        }
        Ok(news)
    }
}

/// How a joined room is asked for: from which position its changes are sent (`None`: whole),
/// the position the connection last saw it at (what came after is live), and whether the
/// user's own receipt in it moved since.
struct Asked {
    since: Option<SyncToken>,
    known_at: Option<SyncToken>,
    read: bool,
}

/// The rooms an answer shows: by list (those in the list's windows), and by subscription.
#[derive(Default)]
struct Shown {
    lists: BTreeMap<String, Vec<OwnedRoomId>>,
    subscribed: Vec<OwnedRoomId>,
}

impl Shown {
    /// The rooms an extension covers: those of the lists it names (`*`: every list) and of the
    /// subscriptions it names (`*`: every subscription); a selector left out means `*`, as
    /// Synapse reads it.
    fn select(&self, lists: Option<&[String]>, rooms: Option<&[request::ExtensionRoomConfig]>) -> BTreeSet<&RoomId> {
        let mut out = BTreeSet::new();
        let every_list = lists.is_none_or(|l| l.iter().any(|name| name == "*"));
        for (name, in_window) in &self.lists {
            if every_list || lists.is_some_and(|l| l.contains(name)) {
                out.extend(in_window.iter().map(|r| &**r));
            }
        }
        let every_room = rooms.is_none_or(|r| r.contains(&request::ExtensionRoomConfig::AllSubscribed));
        for room_id in &self.subscribed {
            if every_room || rooms.is_some_and(|r| r.contains(&request::ExtensionRoomConfig::Room(room_id.clone()))) {
                out.insert(room_id);
            }
        }
        out
    }
}

/// A request's ranges must be ordered pairs.
fn check(body: &v5::Request) -> Result<()> {
    for (name, list) in &body.lists {
        if list.ranges.iter().any(|(start, end)| start > end) {
            return Err(Error::invalid_param(format!("List {name}: a range ends before it starts")));
        }
    }
    Ok(())
}

/// A non-empty JSON string.
fn text(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}
