//! The room DAG: building, authorising and persisting events; room state.
//!
//! Every event this server creates goes through [`Rooms::append_event`]: it takes the room's
//! forward extremities as `prev_events`, selects `auth_events` from the current state, hashes and
//! signs the event (ruma-signatures), runs the authorisation rules of the room version
//! (ruma-state-res), and persists event, state and extremities in one transaction before anyone
//! may see it. Caches are updated only after the commit.

pub(crate) mod commit;
pub mod create;
pub mod directory;
pub mod event_core;
pub mod members;
pub mod membership;
mod purge;
pub mod received;
mod recent;
pub mod resolve;
pub mod spaces;
pub mod third_party;
pub mod timeline;
pub mod upgrade;
pub mod visibility;

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::AtomicI64, Arc, Mutex, Weak},
};

use diplomatie_storage::{correspondence as cstore, events as ev_store, rooms as room_store, state as state_store};
use lru::LruCache;
use ruma::events::room::member::MembershipState;
use ruma::{
    api::error::ErrorKind,
    events::{StateEventType, TimelineEventType},
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    state_res::StateMap,
    DeviceId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomId, RoomVersionId,
    TransactionId, UserId,
};
use serde_json::{json, Value};

use crate::{core::Core, now_ms, Error, Pdu, Result};

/// A room's position in its DAG, kept in memory and changed only by the writer.
#[derive(Clone, Debug)]
pub struct RoomMeta {
    pub version: RoomVersionId,
    pub extremities: Vec<OwnedEventId>,
    pub depth: u64,
    /// The state group of the current state.
    pub state_group: i64,
    /// How many deltas separate `state_group` from a full snapshot.
    pub chain_length: i64,
}

impl RoomMeta {
    pub fn rules(&self) -> RoomVersionRules {
        self.version.rules().expect("only known room versions are stored")
    }
}

/// The rooms' DAG and state: the one writer of events, and the in-memory views of the rooms
/// (only the writer changes them, after its commit). It calls no other service: what must
/// happen around a commit is told to the subscribers it was given ([`commit`]), and the
/// portal's rules reach the writer as the [`EventPolicy`] it was given.
pub struct Rooms {
    core: Arc<Core>,
    /// This very value, for the task that drains the send queue.
    me: Weak<Rooms>,
    /// Set once at start-up, when the services that subscribe exist.
    subscribers: std::sync::OnceLock<commit::CommitSubscribers>,
    policy: Arc<dyn EventPolicy>,
    meta: Mutex<HashMap<OwnedRoomId, Arc<RoomMeta>>>,
    states: Mutex<LruCache<i64, Arc<StateMap<OwnedEventId>>>>,
    events: Mutex<LruCache<OwnedEventId, Arc<Pdu>>>,
    /// Users whose membership is `join`, per room.
    joined: Mutex<HashMap<OwnedRoomId, Arc<HashSet<OwnedUserId>>>>,
    /// The newest events of the rooms written to since start-up (`recent.rs`).
    recent: Mutex<LruCache<OwnedRoomId, recent::RecentEvents>>,
    /// Each room's last event of the kinds that move it up a client's list ([`BUMP_KINDS`]).
    bumps: Mutex<LruCache<OwnedRoomId, i64>>,
    /// Whether each room holds a thread reply: thread roots are looked up only in those.
    threaded: Mutex<LruCache<OwnedRoomId, bool>>,
    next_state_group: AtomicI64,
    /// Events waiting for the group commit.
    queue: Mutex<Vec<SendJob>>,
    /// Transaction ids of recent sends, so that a retry racing its original is recognised.
    recent_txns: Mutex<LruCache<TxnKey, OwnedEventId>>,
    /// The reverse, for the events' `unsigned.transaction_id`: event → (device, transaction id),
    /// for recent sends (as Synapse keeps them for a day).
    txn_of: Mutex<LruCache<OwnedEventId, (String, String)>>,
    last_create_ts: AtomicI64,
    /// The lowest stream position given out (history from other servers goes below it);
    /// read from the database at first use.
    backfill_low: tokio::sync::Mutex<Option<i64>>,
    /// Accounts deactivated with `erase: true` (few): read from the database at first use.
    erased: tokio::sync::RwLock<Option<HashSet<OwnedUserId>>>,
    /// Accounts an administrator shadow-banned (few): read from the database at first use.
    shadow_banned: tokio::sync::RwLock<Option<HashSet<OwnedUserId>>>,
}

crate::core::over_core!(Rooms);

impl Rooms {
    /// The current time in milliseconds, strictly greater than any value it returned before.
    pub fn unique_timestamp(&self) -> i64 {
        use std::sync::atomic::Ordering;
        let now = now_ms();
        let previous =
            self.last_create_ts.fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(now.max(last + 1)));
        let previous = previous.unwrap_or(now);
        now.max(previous + 1)
    }
}

impl Rooms {
    /// Registers the subscribers of every batch (once, at start-up, before anything is written).
    pub(crate) fn subscribe(&self, subscribers: commit::CommitSubscribers) {
        if self.subscribers.set(subscribers).is_err() {
            tracing::error!("the room writer's subscribers were registered twice");
        }
    }

    /// The subscribers of every batch (none before [`Rooms::subscribe`]).
    fn subscribers(&self) -> &commit::CommitSubscribers {
        static NONE: commit::CommitSubscribers = commit::CommitSubscribers { rows: Vec::new(), others: Vec::new() };
        self.subscribers.get().unwrap_or(&NONE)
    }

    pub(crate) fn new(core: Arc<Core>, policy: Arc<dyn EventPolicy>) -> Arc<Rooms> {
        Arc::new_cyclic(|me| Rooms {
            core,
            me: me.clone(),
            subscribers: std::sync::OnceLock::new(),
            policy,
            meta: Mutex::default(),
            states: Mutex::new(crate::lru(20_000)),
            events: Mutex::new(crate::lru(100_000)),
            joined: Mutex::default(),
            recent: Mutex::new(crate::lru(10_000)),
            bumps: Mutex::new(crate::lru(100_000)),
            threaded: Mutex::new(crate::lru(100_000)),
            next_state_group: AtomicI64::new(-1),
            queue: Mutex::default(),
            recent_txns: Mutex::new(crate::lru(10_000)),
            txn_of: Mutex::new(crate::lru(10_000)),
            last_create_ts: AtomicI64::new(0),
            backfill_low: tokio::sync::Mutex::default(),
            erased: tokio::sync::RwLock::default(),
            shadow_banned: tokio::sync::RwLock::default(),
        })
    }
}

/// The event types that move a room up a client's list (sliding sync's `bump_stamp`), as
/// Synapse counts them.
pub const BUMP_KINDS: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// Whether an event of this type moves its room up a client's list ([`BUMP_KINDS`]).
fn is_bump(kind: &TimelineEventType) -> bool {
    static KINDS: std::sync::LazyLock<Vec<TimelineEventType>> =
        std::sync::LazyLock::new(|| BUMP_KINDS.iter().map(|k| TimelineEventType::from(*k)).collect());
    KINDS.contains(kind)
}

/// What [`EventPolicy::check`] answers.
pub(crate) type Checking<'a> = futures::future::BoxFuture<'a, Result<()>>;

/// Rules beyond the room version's that every event this server builds must pass (the
/// portal's: clearances, classification, external persons), checked by the writer after the
/// authorisation rules and before anything is written.
pub(crate) trait EventPolicy: Send + Sync {
    /// May `pdu` be appended on top of `state` (`appended`: the batch's events so far)? The
    /// writer hands its rooms, to read events and state through.
    fn check<'a>(
        &'a self,
        rooms: &'a Rooms,
        state: &'a StateMap<OwnedEventId>,
        appended: &'a [Arc<Pdu>],
        pdu: &'a Pdu,
        rules: &'a RoomVersionRules,
    ) -> Checking<'a>;
}

/// An event waiting for the group commit.
struct SendJob {
    room_id: OwnedRoomId,
    sender: OwnedUserId,
    builder: PduBuilder,
    txn: Option<(OwnedDeviceId, OwnedTransactionId)>,
    reply: Reply,
}

type TxnKey = (OwnedUserId, OwnedDeviceId, OwnedTransactionId);
type Reply = tokio::sync::oneshot::Sender<Result<Arc<Pdu>>>;

fn fail_all(replies: impl Iterator<Item = Reply>, e: Error) {
    tracing::error!(error = %e, "a batch of events failed; none was kept");
    for reply in replies {
        let _ = reply.send(Err(Error::Internal));
    }
}

/// Longest chain of state deltas before a full snapshot is written.
const MAX_STATE_CHAIN: i64 = 64;

/// What a service asks the writer to build.
#[derive(Clone, Debug)]
pub struct PduBuilder {
    pub kind: TimelineEventType,
    pub content: Value,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
    pub timestamp: Option<i64>,
}

impl PduBuilder {
    pub fn state(kind: impl Into<TimelineEventType>, state_key: impl Into<String>, content: Value) -> Self {
        PduBuilder { kind: kind.into(), content, state_key: Some(state_key.into()), redacts: None, timestamp: None }
    }
    pub fn message(kind: impl Into<TimelineEventType>, content: Value) -> Self {
        PduBuilder { kind: kind.into(), content, state_key: None, redacts: None, timestamp: None }
    }
}

/// The room an event goes into: an existing room, or a new one (for its create event).
pub enum Target<'a> {
    Room(&'a RoomId),
    New { room_id: Option<OwnedRoomId>, version: RoomVersionId },
}

impl Rooms {
    /// The DAG position of a room, or `None` if this server does not know the room.
    pub async fn room_meta(&self, room_id: &RoomId) -> Result<Option<Arc<RoomMeta>>> {
        if let Some(m) = self.meta.lock().unwrap().get(room_id) {
            return Ok(Some(m.clone()));
        }
        let pool = self.db.pool();
        let Some(room) = room_store::get_room(pool, room_id.as_str()).await? else {
            return Ok(None);
        };
        let version = RoomVersionId::try_from(room.room_version.as_str()).map_err(crate::internal!())?;
        let ids = ev_store::forward_extremities(pool, room_id.as_str()).await?;
        let mut extremities = Vec::new();
        let mut depth = 0;
        let mut state_group = 0;
        for id in ids {
            let id = OwnedEventId::try_from(id).map_err(crate::internal!())?;
            if let Some(pdu) = self.get_pdu(&id).await? {
                depth = depth.max(u64::from(pdu.depth));
                state_group = state_group.max(pdu.state_group);
            }
            extremities.push(id);
        }
        let chain_length = state_store::chain_length(pool, state_group).await?;
        let meta = Arc::new(RoomMeta { version, extremities, depth, state_group, chain_length });
        self.meta.lock().unwrap().insert(room_id.to_owned(), meta.clone());
        Ok(Some(meta))
    }

    /// The room's meta, or `M_NOT_FOUND`.
    pub async fn known_room(&self, room_id: &RoomId) -> Result<Arc<RoomMeta>> {
        self.room_meta(room_id).await?.ok_or_else(|| Error::not_found("Unknown room"))
    }

    /// The event in the client-server format for `user` on `device`, serialised once from the
    /// PDU: with `unsigned.transaction_id` when that device sent it (recently), so that clients
    /// match it with their local echo, and `unsigned.membership`, the reader's membership at
    /// the event.
    pub async fn client_raw<T>(
        &self,
        pdu: &Pdu,
        user: &UserId,
        device: &str,
        with_room_id: bool,
    ) -> Result<ruma::serde::Raw<T>> {
        let thread = self.thread_summaries(&[pdu], user, device).await?.remove(&pdu.event_id);
        self.client_raw_with(pdu, user, device, with_room_id, thread).await
    }

    /// Whether the account was deactivated with `erase: true`.
    pub async fn is_erased(&self, user: &UserId) -> Result<bool> {
        if let Some(erased) = self.erased.read().await.as_ref() {
            return Ok(erased.contains(user));
        }
        let mut slot = self.erased.write().await;
        if slot.is_none() {
            let users = diplomatie_storage::accounts::erased_users(self.db.pool()).await?;
            *slot = Some(users.into_iter().filter_map(|u| OwnedUserId::try_from(u).ok()).collect());
        }
        Ok(slot.as_ref().is_some_and(|erased| erased.contains(user)))
    }

    /// Erases an account: its events are shown redacted from now on to whoever was not in
    /// the room when they were sent, and to other servers.
    pub async fn erase(&self, user: &UserId) -> Result<()> {
        diplomatie_storage::accounts::set_erased(self.db.pool(), user.as_str()).await?;
        self.is_erased(user).await?;
        if let Some(erased) = self.erased.write().await.as_mut() {
            erased.insert(user.to_owned());
        }
        Ok(())
    }

    /// Whether an administrator shadow-banned the account: what it sends reaches nobody.
    pub async fn is_shadow_banned(&self, user: &UserId) -> Result<bool> {
        if let Some(banned) = self.shadow_banned.read().await.as_ref() {
            return Ok(banned.contains(user));
        }
        let mut slot = self.shadow_banned.write().await;
        if slot.is_none() {
            let users = diplomatie_storage::admin::shadow_banned(self.db.pool()).await?;
            *slot = Some(users.into_iter().filter_map(|u| OwnedUserId::try_from(u).ok()).collect());
        }
        Ok(slot.as_ref().is_some_and(|banned| banned.contains(user)))
    }

    /// Shadow-bans an account (`by`: the administrator), or lifts its ban (`None`).
    pub(crate) async fn set_shadow_banned(&self, user: &UserId, by: Option<&UserId>) -> Result<()> {
        let by = by.map(|admin| (admin.as_str(), now_ms()));
        diplomatie_storage::admin::set_shadow_banned(self.db.pool(), user.as_str(), by).await?;
        self.is_shadow_banned(user).await?;
        if let Some(banned) = self.shadow_banned.write().await.as_mut() {
            if by.is_some() {
                banned.insert(user.to_owned());
            } else {
                banned.remove(user);
            }
        }
        Ok(())
    }

    /// The id a shadow-banned sender is answered instead of its event's: shaped as an event
    /// id, the same for a retry of the same transaction.
    pub(crate) fn shadow_event_id(&self, sender: &UserId, salt: &str) -> OwnedEventId {
        use base64::Engine as _;
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(format!("{sender}\u{0}{salt}").as_bytes());
        let id = format!("${}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest));
        OwnedEventId::try_from(id).expect("a well-formed event id")
    }

    /// After a purge emptied an event in the database: the emptied form is what readers get.
    pub(crate) fn replace_cached(&self, pdu: Pdu) {
        self.events.lock().unwrap().put(pdu.event_id.clone(), Arc::new(pdu));
    }

    /// The event as its redaction leaves it (its stored form unchanged).
    pub async fn redacted_copy(&self, pdu: &Pdu) -> Result<Pdu> {
        if pdu.redacted_by.is_some() {
            return Ok(pdu.clone());
        }
        redacted_form(pdu, &self.known_room(&pdu.room_id).await?.rules())
    }

    /// The event as other servers get it: redacted when its sender was erased.
    pub async fn for_federation(&self, pdu: Arc<Pdu>) -> Result<Arc<Pdu>> {
        if self.is_erased(&pdu.sender).await? {
            Ok(Arc::new(self.redacted_copy(&pdu).await?))
        } else {
            Ok(pdu)
        }
    }

    /// [`Self::client_raw`] with the event's thread, if it is a thread root, already read.
    async fn client_raw_with<T>(
        &self,
        pdu: &Pdu,
        user: &UserId,
        device: &str,
        with_room_id: bool,
        thread: Option<ThreadSummary>,
    ) -> Result<ruma::serde::Raw<T>> {
        let txn = if pdu.sender == user {
            self.txn_of.lock().unwrap().get(&pdu.event_id).filter(|(sent_by, _)| sent_by == device).cloned()
        } else {
            None
        };
        let membership = self.membership_at(user, pdu).await?;
        // An erased user's event: whole to those in the room when it was sent, redacted to
        // anyone else.
        let erased_view;
        let pdu = if membership != Some(MembershipState::Join) && self.is_erased(&pdu.sender).await? {
            erased_view = self.redacted_copy(pdu).await?;
            &erased_view
        } else {
            pdu
        };
        let membership = membership.as_ref().map_or("leave", MembershipState::as_str);
        let redaction = match pdu.redacted_by.as_deref().and_then(|id| ruma::OwnedEventId::try_from(id).ok()) {
            Some(id) => self.get_pdu(&id).await?.map(|r| (id, r.client_view(with_room_id, None).to_raw::<()>())),
            None => None,
        };
        let view = pdu.client_view(with_room_id, txn.as_ref().map(|(_, id)| id.as_str()));
        let redaction = redaction.as_ref().map(|(id, r)| (id.as_str(), r.json()));
        let relations = thread.map(|t| {
            json!({ "m.thread": {
                "latest_event": t.latest_event, "count": t.count, "current_user_participated": t.participated,
            }})
        });
        Ok(view.with_membership(membership).with_redaction(redaction).with_relations(relations.as_ref()).to_raw())
    }

    /// [`Self::client_raw`] for several events.
    pub async fn client_raws<T>(
        &self,
        pdus: &[Arc<Pdu>],
        user: &UserId,
        device: &str,
        with_room_id: bool,
    ) -> Result<Vec<ruma::serde::Raw<T>>> {
        let refs: Vec<&Pdu> = pdus.iter().map(|p| &**p).collect();
        let mut threads = self.thread_summaries(&refs, user, device).await?;
        let mut out = Vec::with_capacity(pdus.len());
        for pdu in pdus {
            let thread = threads.remove(&pdu.event_id);
            out.push(self.client_raw_with(pdu, user, device, with_room_id, thread).await?);
        }
        Ok(out)
    }

    /// The threads of those of `pdus` that are thread roots (the spec's bundled aggregation
    /// `m.thread`), read only in rooms that hold a thread reply.
    pub async fn thread_summaries(
        &self,
        pdus: &[&Pdu],
        user: &UserId,
        device: &str,
    ) -> Result<HashMap<OwnedEventId, ThreadSummary>> {
        let mut roots = Vec::new();
        for pdu in pdus {
            if self.is_threaded(&pdu.room_id).await? {
                roots.push(pdu.event_id.as_str());
            }
        }
        let mut out = HashMap::new();
        if roots.is_empty() {
            return Ok(out);
        }
        for (root, count, latest, participated) in
            ev_store::thread_summaries(self.db.pool(), &roots, user.as_str()).await?
        {
            let Ok(root) = OwnedEventId::try_from(root) else { continue };
            let Some(latest) = ev_store::event_by_stream(self.db.pool(), latest).await? else { continue };
            let latest = Pdu::from_stored(latest)?;
            let root_sender = pdus.iter().find(|p| p.event_id == root).map(|p| p.sender.clone());
            let latest_event = Box::pin(self.client_raw_with::<()>(&latest, user, device, true, None)).await?;
            out.insert(
                root,
                ThreadSummary {
                    latest_event: latest_event.into_json(),
                    count,
                    participated: participated != 0 || root_sender.as_deref() == Some(user),
                },
            );
        }
        Ok(out)
    }

    /// Whether a room holds a thread reply (cached; a commit of one sets it).
    async fn is_threaded(&self, room_id: &RoomId) -> Result<bool> {
        if let Some(known) = self.threaded.lock().unwrap().get(room_id) {
            return Ok(*known);
        }
        let read = ev_store::room_has_threads(self.db.pool(), room_id.as_str()).await?;
        // A commit since the read may have set it already.
        let mut threaded = self.threaded.lock().unwrap();
        let known = threaded.get_or_insert_mut(room_id.to_owned(), || read);
        *known |= read;
        Ok(*known)
    }

    /// The position of a room's last event of the kinds that move it up a client's list
    /// (sliding sync's `bump_stamp`), 0 for none.
    pub(crate) async fn bump_stamp(&self, room_id: &RoomId) -> Result<i64> {
        if let Some(last) = self.bumps.lock().unwrap().get(room_id) {
            return Ok(*last);
        }
        let read = ev_store::last_event_of_kinds(self.db.pool(), room_id.as_str(), BUMP_KINDS).await?.unwrap_or(0);
        // A commit between the read and now may have raised it already.
        let mut bumps = self.bumps.lock().unwrap();
        let last = bumps.get_or_insert_mut(room_id.to_owned(), || read);
        *last = (*last).max(read);
        Ok(*last)
    }

    /// The ids of a room's events with `from < stream position <= to`, newest first, `limit`
    /// at most: from memory when the room's newest events cover the range.
    pub(crate) async fn event_ids_between(
        &self,
        room_id: &RoomId,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<Vec<OwnedEventId>> {
        if let Some(ids) = self.recent.lock().unwrap().peek(room_id).and_then(|r| r.between(from, to, limit)) {
            return Ok(ids);
        }
        let ids = ev_store::room_event_ids(self.db.pool(), room_id.as_str(), from, to, limit as i64).await?;
        ids.into_iter().map(|id| OwnedEventId::try_from(id).map_err(crate::internal!())).collect()
    }

    pub async fn get_pdu(&self, event_id: &ruma::EventId) -> Result<Option<Arc<Pdu>>> {
        if let Some(p) = self.events.lock().unwrap().get(event_id) {
            return Ok(Some(p.clone()));
        }
        let pdu = match ev_store::get_event(self.db.pool(), event_id.as_str()).await? {
            Some(stored) => Pdu::from_stored(stored)?,
            // Known outside the timeline (state a join brought, auth events fetched).
            None => match diplomatie_storage::federation::get_outlier(self.db.pool(), event_id.as_str()).await? {
                Some((room, json)) => Pdu::from_json(event_id.to_owned(), json, room.try_into().ok())?,
                None => return Ok(None),
            },
        };
        let pdu = Arc::new(pdu);
        self.events.lock().unwrap().put(event_id.to_owned(), pdu.clone());
        Ok(Some(pdu))
    }

    /// The full state map of a state group.
    pub async fn state_map(&self, group: i64) -> Result<Arc<StateMap<OwnedEventId>>> {
        if group == 0 {
            return Ok(Arc::default());
        }
        if let Some(s) = self.states.lock().unwrap().get(&group) {
            return Ok(s.clone());
        }
        // The delta chain from its snapshot, in one query; only the group asked for is cached
        // (caching every link would fill the cache with maps nobody asks for).
        let chain = state_store::get_state_chain(self.db.pool(), group).await?;
        if chain.last().map(|(g, _)| *g) != Some(group) {
            tracing::error!(group, "missing state group");
            return Err(Error::Internal);
        }
        let mut map = StateMap::new();
        for (_, entries) in chain {
            for (ty, key, id) in entries {
                let id = OwnedEventId::try_from(id).map_err(crate::internal!())?;
                map.insert((StateEventType::from(ty), key), id);
            }
        }
        let result = Arc::new(map);
        self.states.lock().unwrap().put(group, result.clone());
        Ok(result)
    }

    /// The current state of a room.
    pub async fn current_state(&self, room_id: &RoomId) -> Result<Arc<StateMap<OwnedEventId>>> {
        let meta = self.known_room(room_id).await?;
        self.state_map(meta.state_group).await
    }

    /// One event of a state map.
    pub async fn state_event_in(
        &self,
        state: &StateMap<OwnedEventId>,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Arc<Pdu>>> {
        match state.get(&(kind.clone(), state_key.to_owned())) {
            Some(id) => self.get_pdu(id).await,
            None => Ok(None),
        }
    }

    /// One event of the current state of a room.
    pub async fn state_event(
        &self,
        room_id: &RoomId,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Arc<Pdu>>> {
        let state = self.current_state(room_id).await?;
        self.state_event_in(&state, kind, state_key).await
    }

    /// A user's current membership in a room (`None` if never a member).
    pub async fn membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<MembershipState>> {
        if self.room_meta(room_id).await?.is_none() {
            return Ok(None);
        }
        Ok(self.state_event(room_id, &StateEventType::RoomMember, user_id.as_str()).await?.and_then(|p| p.membership()))
    }

    /// A user's power level, counting v12 creators as above every level.
    pub async fn user_power(
        &self,
        room_id: &RoomId,
        levels: &serde_json::Map<String, Value>,
        user: &UserId,
    ) -> Result<i64> {
        let meta = self.known_room(room_id).await?;
        let create = self.state_event(room_id, &StateEventType::RoomCreate, "").await?;
        let creators = meta.rules().authorization.explicitly_privilege_room_creators;
        Ok(power_of(create.as_deref(), (!levels.is_empty()).then_some(levels), user, creators))
    }

    pub async fn is_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self.joined_members(room_id).await?.contains(user_id))
    }

    /// Wakes the `/sync` of whoever follows a room: its joined members, and the devices that
    /// peek into it (the notifier's watchers).
    pub async fn wake(&self, room_id: &RoomId) -> Result<()> {
        let members = self.joined_members(room_id).await?;
        self.notifier.notify(members.iter().map(|u| &**u));
        self.notifier.notify_watchers(room_id);
        Ok(())
    }

    /// Users whose membership in the room is `join`.
    pub async fn joined_members(&self, room_id: &RoomId) -> Result<Arc<HashSet<OwnedUserId>>> {
        if let Some(j) = self.joined.lock().unwrap().get(room_id) {
            return Ok(j.clone());
        }
        let members = state_store::room_members(self.db.pool(), room_id.as_str()).await?;
        let joined: HashSet<OwnedUserId> = members
            .into_iter()
            .filter(|(_, m, _)| MembershipState::from(m.as_str()) == MembershipState::Join)
            .filter_map(|(u, _, _)| OwnedUserId::try_from(u).ok())
            .collect();
        let joined = Arc::new(joined);
        self.joined.lock().unwrap().insert(room_id.to_owned(), joined.clone());
        Ok(joined)
    }

    /// Builds, authorises and persists one event sent by a local user. Returns the event once
    /// it is durable. `txn` records the client's transaction id for idempotent sends.
    ///
    /// Events for existing rooms are queued and written by a spawned task: whoever holds the
    /// writer lock takes every queued event into one transaction (group commit), and a client
    /// that disconnects cannot interrupt a write between its commit and the cache update.
    pub async fn append_event(
        &self,
        target: Target<'_>,
        sender: &UserId,
        builder: PduBuilder,
        txn: Option<(&DeviceId, &TransactionId)>,
    ) -> Result<Arc<Pdu>> {
        let room_id = match target {
            Target::Room(room_id) => room_id.to_owned(),
            Target::New { .. } => {
                let mut writer = self.room_writer(target).await?;
                let pdu = writer.append(sender, builder, txn).await?;
                writer.commit().await?;
                return Ok(pdu);
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let txn = txn.map(|(d, t)| (d.to_owned(), t.to_owned()));
        self.queue.lock().unwrap().push(SendJob { room_id, sender: sender.to_owned(), builder, txn, reply });
        let me = self.me.upgrade().ok_or_else(crate::internal!("a value present by construction"))?;
        tokio::spawn(async move { me.drain_queue().await });
        answer.await.map_err(crate::internal!())?
    }

    /// Writes every queued event in one transaction, under the writer lock.
    async fn drain_queue(&self) {
        let write = self.begin_write().await;
        let jobs = std::mem::take(&mut *self.queue.lock().unwrap());
        if jobs.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let count = jobs.len();
        let mut writer = self.batch_writer(write);
        let mut answers: Vec<(Reply, Result<Arc<Pdu>>)> = Vec::new();
        let mut by_txn: HashMap<TxnKey, Arc<Pdu>> = HashMap::new();
        let mut jobs = jobs.into_iter();
        while let Some(job) = jobs.next() {
            // The same transaction id twice: the second gets the first's event.
            if let Some((device, txn_id)) = &job.txn {
                let key = (job.sender.clone(), device.clone(), txn_id.clone());
                let earlier = match by_txn.get(&key) {
                    Some(p) => Some(p.clone()),
                    None => {
                        let recent = self.recent_txns.lock().unwrap().get(&key).cloned();
                        match recent {
                            Some(id) => self.get_pdu(&id).await.ok().flatten(),
                            None => None,
                        }
                    }
                };
                if let Some(p) = earlier {
                    answers.push((job.reply, Ok(p)));
                    continue;
                }
            }
            let result = async {
                writer.switch_to(&job.room_id).await?;
                let txn = job.txn.as_ref().map(|(d, t)| (&**d, &**t));
                writer.append(&job.sender, job.builder, txn).await
            }
            .await;
            match result {
                // A failure inside the server spoils the transaction: nobody's event is kept.
                Err(Error::Internal) => {
                    let replies = answers
                        .into_iter()
                        .map(|(r, _)| r)
                        .chain(std::iter::once(job.reply))
                        .chain(jobs.map(|j| j.reply));
                    return fail_all(replies, Error::Internal);
                }
                Ok(pdu) => {
                    if let Some((device, txn_id)) = job.txn {
                        by_txn.insert((job.sender, device, txn_id), pdu.clone());
                    }
                    answers.push((job.reply, Ok(pdu)));
                }
                Err(e) => answers.push((job.reply, Err(e))),
            }
        }
        let appended = started.elapsed();
        let committed = writer.commit().await;
        tracing::debug!(jobs = count, ?appended, total = ?started.elapsed(), "send queue drained");
        match committed {
            Ok(()) => {
                for (reply, result) in answers {
                    let _ = reply.send(result);
                }
            }
            Err(e) => fail_all(answers.into_iter().map(|(r, _)| r), e),
        }
    }

    /// Opens a batch of events for one room: all of them land in one transaction, or none.
    pub async fn room_writer(&self, target: Target<'_>) -> Result<RoomWriter<'_>> {
        let write = self.begin_write().await;
        let (room_id, meta, state, version) = match target {
            Target::Room(room_id) => {
                let meta = self.known_room(room_id).await?;
                let state = self.state_map(meta.state_group).await?;
                (Some(room_id.to_owned()), (*meta).clone(), state, None)
            }
            Target::New { room_id, version } => {
                let meta = RoomMeta {
                    version: version.clone(),
                    extremities: vec![],
                    depth: 0,
                    state_group: 0,
                    chain_length: 0,
                };
                (room_id, meta, Arc::default(), Some(version))
            }
        };
        Ok(RoomWriter::new(self, write, (room_id, version), meta, state))
    }

    /// Opens a batch spanning several rooms, for the group commit of queued sends.
    pub(crate) fn batch_writer<'a>(&'a self, write: crate::core::StreamWrite<'a>) -> RoomWriter<'a> {
        // No current room yet: `switch_to` picks each job's room.
        let meta =
            RoomMeta { version: RoomVersionId::V12, extremities: vec![], depth: 0, state_group: 0, chain_length: 0 };
        RoomWriter::new(self, write, (None, None), meta, Arc::default())
    }

    async fn next_state_group(&self) -> Result<i64> {
        use std::sync::atomic::Ordering;
        if self.next_state_group.load(Ordering::Acquire) < 0 {
            let max = state_store::max_state_group(self.db.pool()).await?;
            let _ = self.next_state_group.compare_exchange(-1, max + 1, Ordering::AcqRel, Ordering::Acquire);
        }
        Ok(self.next_state_group.fetch_add(1, Ordering::AcqRel))
    }
}

/// A batch of events being appended to one room, under the writer lock. Every row is kept in
/// memory and written at [`RoomWriter::commit`], in one transaction; dropping the writer
/// discards them. The batch holds no database connection (and no SQLite write lock) while it
/// builds and authorises events, so the reads it makes through the pool can never wait for a
/// connection that waits for it.
pub struct RoomWriter<'a> {
    rooms: &'a Rooms,
    write: crate::core::StreamWrite<'a>,
    /// `None` until the create event of a v12 room gives the room its id.
    room_id: Option<OwnedRoomId>,
    /// The version, while the room is being created by this batch.
    new_room: Option<RoomVersionId>,
    meta: RoomMeta,
    state: Arc<StateMap<OwnedEventId>>,
    appended: Vec<Arc<Pdu>>,
    new_states: Vec<(i64, Arc<StateMap<OwnedEventId>>)>,
    redacted: Vec<Pdu>,
    /// The other rooms of a batch that spans several (group commit of sends).
    others: HashMap<OwnedRoomId, (RoomMeta, Arc<StateMap<OwnedEventId>>)>,
    /// Event rows and transaction ids, written together at commit.
    rows: Vec<EventRow>,
    txns: Vec<[String; 4]>,
    /// Rooms whose forks this batch merged: their whole current state is rewritten.
    resolved_rooms: Vec<OwnedRoomId>,
    /// Other rows, written in this order before the events.
    writes: Vec<PendingWrite>,
    /// Time spent checking the portal's rules (reported with the batch, to measure their cost).
    portal_time: std::time::Duration,
}

/// A row the batch writes at commit.
enum PendingWrite {
    Room {
        room_id: String,
        version: String,
        creator: String,
        ts: i64,
    },
    StateGroup {
        id: i64,
        room_id: String,
        prev: Option<i64>,
        chain_length: i64,
        delta: Vec<[String; 3]>,
    },
    CurrentState {
        room_id: String,
        entry: [String; 3],
        membership: Option<String>,
        position: i64,
    },
    Redaction {
        target: String,
        by: String,
        json: String,
    },
    Public {
        room_id: String,
    },
    Alias {
        alias: String,
        room_id: String,
        creator: String,
    },
    /// A formal correspondence with its deliveries and action items (dispatched atomically).
    Correspondence(Box<(cstore::Stored, Vec<cstore::Delivery>, Vec<cstore::Action>)>),
}

impl PendingWrite {
    async fn run(&self, tx: &mut diplomatie_storage::Connection) -> Result<()> {
        match self {
            PendingWrite::Room { room_id, version, creator, ts } => {
                room_store::insert_room(tx, room_id, version, creator, false, *ts).await?
            }
            PendingWrite::StateGroup { id, room_id, prev, chain_length, delta } => {
                let delta: Vec<(&str, &str, &str)> =
                    delta.iter().map(|[t, k, e]| (t.as_str(), k.as_str(), e.as_str())).collect();
                state_store::insert_state_group(tx, *id, room_id, *prev, *chain_length, &delta).await?
            }
            PendingWrite::CurrentState { room_id, entry: [t, k, e], membership, position } => {
                let entry = (t.as_str(), k.as_str(), e.as_str());
                state_store::set_current_state(tx, room_id, entry, membership.as_deref(), *position).await?
            }
            PendingWrite::Redaction { target, by, json } => {
                // Under a legal hold, the original stays for the archive.
                diplomatie_storage::retention::keep_original_if_held(tx, target, by).await?;
                ev_store::redact_event(tx, target, by, json).await?
            }
            PendingWrite::Public { room_id } => room_store::set_public(&mut *tx, room_id, true).await?,
            PendingWrite::Correspondence(c) => {
                let (stored, deliveries, actions) = &**c;
                cstore::insert(&mut *tx, stored).await.map_err(|e| {
                    if e.is_unique_violation() {
                        Error::forbidden(format!("Reference {} was already dispatched (replay)", stored.reference))
                    } else {
                        e.into()
                    }
                })?;
                cstore::insert_deliveries(tx, deliveries).await?;
                cstore::insert_actions(tx, actions).await?;
            }
            PendingWrite::Alias { alias, room_id, creator } => {
                room_store::insert_alias(&mut *tx, alias, room_id, creator).await.map_err(|e| {
                    if e.is_unique_violation() {
                        Error::new(ErrorKind::RoomInUse, "Room alias already taken")
                    } else {
                        e.into()
                    }
                })?
            }
        }
        Ok(())
    }
}

/// An event row waiting for the batch's commit.
struct EventRow {
    stream_ordering: i64,
    event_id: String,
    room_id: String,
    sender: String,
    event_type: String,
    state_key: Option<String>,
    depth: i64,
    origin_server_ts: i64,
    state_group: i64,
    relation: Option<(String, String)>,
    json: String,
}

impl EventRow {
    /// The row of `pdu` at `stream_ordering`, the room state after it being `state_group`.
    fn of(pdu: &Pdu, stream_ordering: i64, state_group: i64) -> EventRow {
        EventRow {
            stream_ordering,
            event_id: pdu.event_id.to_string(),
            room_id: pdu.room_id.to_string(),
            sender: pdu.sender.to_string(),
            event_type: pdu.kind.to_string(),
            state_key: pdu.state_key.clone(),
            depth: i64::try_from(u64::from(pdu.depth)).unwrap_or(i64::MAX),
            origin_server_ts: i64::from(pdu.origin_server_ts.get()),
            state_group,
            relation: relation_of(pdu),
            json: pdu.json.clone(),
        }
    }

    fn as_new(&self) -> ev_store::NewEvent<'_> {
        ev_store::NewEvent {
            stream_ordering: self.stream_ordering,
            event_id: &self.event_id,
            room_id: &self.room_id,
            sender: &self.sender,
            event_type: &self.event_type,
            state_key: self.state_key.as_deref(),
            depth: self.depth,
            origin_server_ts: self.origin_server_ts,
            state_group: self.state_group,
            rel_type: self.relation.as_ref().map(|x| x.0.as_str()),
            relates_to: self.relation.as_ref().map(|x| x.1.as_str()),
            json: &self.json,
        }
    }
}

impl<'a> RoomWriter<'a> {
    fn new(
        rooms: &'a Rooms,
        write: crate::core::StreamWrite<'a>,
        (room_id, new_room): (Option<OwnedRoomId>, Option<RoomVersionId>),
        meta: RoomMeta,
        state: Arc<StateMap<OwnedEventId>>,
    ) -> Self {
        RoomWriter {
            rooms,
            write,
            room_id,
            new_room,
            meta,
            state,
            appended: vec![],
            new_states: vec![],
            redacted: vec![],
            others: HashMap::new(),
            rows: vec![],
            txns: vec![],
            resolved_rooms: vec![],
            writes: vec![],
            portal_time: std::time::Duration::ZERO,
        }
    }

    /// Sets the forward extremities the next event builds on. Federation brings forks; tests
    /// make them with this.
    #[doc(hidden)]
    pub fn set_extremities(&mut self, extremities: Vec<OwnedEventId>) {
        self.meta.extremities = extremities;
    }

    /// Makes `room_id` the room the next appends go to, keeping what the batch did elsewhere.
    pub async fn switch_to(&mut self, room_id: &RoomId) -> Result<()> {
        if self.room_id.as_deref() == Some(room_id) {
            return Ok(());
        }
        if self.new_room.is_some() {
            return Err(crate::internal!("a batch that creates a room stays in it")());
        }
        let (meta, state) = match self.others.remove(room_id) {
            Some(entry) => entry,
            None => {
                let meta = self.rooms.known_room(room_id).await?;
                let state = self.rooms.state_map(meta.state_group).await?;
                ((*meta).clone(), state)
            }
        };
        let previous_meta = std::mem::replace(&mut self.meta, meta);
        let previous_state = std::mem::replace(&mut self.state, state);
        if let Some(previous) = self.room_id.replace(room_id.to_owned()) {
            self.others.insert(previous, (previous_meta, previous_state));
        }
        Ok(())
    }

    /// The room id (known once the create event is appended).
    pub fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }

    /// The room state after the events appended so far.
    pub fn state(&self) -> &StateMap<OwnedEventId> {
        &self.state
    }

    /// Lists the room being created in the public directory, with its events.
    pub fn publish_room(&mut self, room_id: &RoomId) {
        self.writes.push(PendingWrite::Public { room_id: room_id.to_string() });
    }

    /// Writes a correspondence's rows with the batch that delivers it.
    pub(crate) fn add_correspondence(
        &mut self,
        stored: cstore::Stored,
        deliveries: Vec<cstore::Delivery>,
        actions: Vec<cstore::Action>,
    ) {
        self.writes.push(PendingWrite::Correspondence(Box::new((stored, deliveries, actions))));
    }

    /// Records an alias of the room being created, with its events. Taken already: the commit
    /// fails with `M_ROOM_IN_USE`.
    pub fn add_alias(&mut self, alias: &ruma::RoomAliasId, room_id: &RoomId, creator: &UserId) {
        self.writes.push(PendingWrite::Alias {
            alias: alias.to_string(),
            room_id: room_id.to_string(),
            creator: creator.to_string(),
        });
    }

    /// Builds, hashes, signs and authorises one event against the batch's current state, and
    /// writes it into the batch's transaction.
    pub async fn append(
        &mut self,
        sender: &UserId,
        builder: PduBuilder,
        txn: Option<(&DeviceId, &TransactionId)>,
    ) -> Result<Arc<Pdu>> {
        let rooms = self.rooms;
        // Forks (several forward extremities) meet here: the state is their resolution.
        let forked = self.meta.extremities.len() > 1;
        if forked {
            let resolved = rooms.resolve_extremities(&self.meta.version, &self.meta.extremities).await?;
            self.state = Arc::new(resolved);
            self.resolved_rooms
                .push(self.room_id.clone().ok_or_else(crate::internal!("a value present by construction"))?);
        }
        let state = self.state.clone();
        let rules = self.meta.rules();
        let content_raw =
            serde_json::value::to_raw_value(&builder.content).map_err(|_| Error::bad_json("Invalid content"))?;

        // Load what the auth rules may read: the auth events the state gives, and the create event.
        let auth_events = event_core::auth_events_for(
            &rules,
            &builder.kind,
            sender,
            builder.state_key.as_deref(),
            &content_raw,
            &state,
        )?;
        let mut loaded: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        let create = state.get(&(StateEventType::RoomCreate, String::new()));
        for id in auth_events.iter().chain(create) {
            if let Some(p) = find_pdu(self.rooms, &self.appended, id).await? {
                loaded.insert(id.clone(), p);
            }
        }
        // Room versions 1 and 2 cite events with their reference hashes, and carry their own id.
        let v1 = rules.event_id_format == EventIdFormatVersion::V1;
        let prev_events = references(self.rooms, &self.appended, &self.meta.extremities, &rules).await?;
        let auth_refs = references(self.rooms, &self.appended, &auth_events, &rules).await?;
        // What the event replaces, for clients (`unsigned`).
        let mut unsigned = std::collections::BTreeMap::new();
        if let Some(sk) = &builder.state_key {
            let key = (StateEventType::from(builder.kind.to_string()), sk.clone());
            if let Some(prev_id) = state.get(&key) {
                if let Some(prev) = find_pdu(self.rooms, &self.appended, prev_id).await? {
                    unsigned.insert("replaces_state".to_owned(), json!(prev_id));
                    unsigned.insert("prev_content".to_owned(), prev.content_value());
                    unsigned.insert("prev_sender".to_owned(), json!(prev.sender));
                }
            }
        }

        let ts = builder.timestamp.unwrap_or_else(now_ms);
        let draft = event_core::Draft {
            room_id: self.room_id.as_deref(),
            sender,
            kind: &builder.kind,
            state_key: builder.state_key.as_deref(),
            content: &builder.content,
            content_raw: &content_raw,
            redacts: builder.redacts.as_deref(),
            origin_server_ts: ruma::MilliSecondsSinceUnixEpoch(
                ruma::UInt::try_from(ts.max(0)).map_err(crate::internal!())?,
            ),
            depth: ruma::UInt::try_from(self.meta.depth + 1).map_err(crate::internal!())?,
            prev_events: &prev_events,
            auth_events: &auth_refs,
            event_id: v1
                .then(|| format!("${}:{}", crate::random_string(18), rooms.server_name()).try_into())
                .transpose()
                .map_err(crate::internal!())?,
            unsigned,
        };
        let mut pdu = event_core::build(draft, &rules, rooms.server_name(), &rooms.keys.keypair)?;
        let event_id = pdu.event_id.clone();
        let room_id = pdu.room_id.clone();

        // Authorise it against the room's current state, then by the portal's rules.
        event_core::authorise(&rules, &pdu, &state, &loaded)?;
        if pdu.kind != TimelineEventType::RoomCreate {
            // The portal's rules (clearance, classification, externals).
            let checking = std::time::Instant::now();
            let checked = rooms.policy.check(rooms, &state, &self.appended, &pdu, &rules).await;
            self.portal_time += checking.elapsed();
            checked?;
        } else if self.new_room.is_none() || self.room_id.is_some() && !self.appended.is_empty() {
            return Err(Error::forbidden("A room has one create event"));
        }

        // Write event, state, extremities and transaction id into the batch.
        let position = self.write.next_position();
        if let (Some(version), TimelineEventType::RoomCreate) = (&self.new_room, &pdu.kind) {
            self.writes.push(PendingWrite::Room {
                room_id: room_id.to_string(),
                version: version.to_string(),
                creator: sender.to_string(),
                ts,
            });
        }
        let mut state_group = self.meta.state_group;
        let mut chain_length = self.meta.chain_length;
        if let Some(sk) = &pdu.state_key {
            let mut map = (*state).clone();
            let kind = pdu.kind.to_string();
            map.insert((StateEventType::from(kind.clone()), sk.clone()), event_id.clone());
            let id = rooms.next_state_group().await?;
            let snapshot = forked || self.meta.state_group == 0 || self.meta.chain_length >= MAX_STATE_CHAIN;
            let (prev, delta) = if snapshot {
                chain_length = 0;
                (None, state_rows(&map))
            } else {
                chain_length = self.meta.chain_length + 1;
                (Some(self.meta.state_group), vec![[kind.clone(), sk.clone(), event_id.to_string()]])
            };
            let room = room_id.to_string();
            self.writes.push(PendingWrite::StateGroup { id, room_id: room.clone(), prev, chain_length, delta });
            self.writes.push(PendingWrite::CurrentState {
                room_id: room,
                entry: [kind, sk.clone(), event_id.to_string()],
                membership: pdu.membership().map(|m| m.to_string()),
                position,
            });
            state_group = id;
            let map = Arc::new(map);
            self.new_states.push((id, map.clone()));
            self.state = map;
        } else if forked {
            // A message on top of forks: its state is the resolved one, kept as a snapshot.
            let id = rooms.next_state_group().await?;
            let delta = state_rows(&state);
            self.writes.push(PendingWrite::StateGroup {
                id,
                room_id: room_id.to_string(),
                prev: None,
                chain_length: 0,
                delta,
            });
            state_group = id;
            chain_length = 0;
            self.new_states.push((id, state.clone()));
        }
        self.rows.push(EventRow::of(&pdu, position, state_group));
        if let Some((device, txn_id)) = txn {
            self.txns.push([sender.to_string(), device.to_string(), txn_id.to_string(), event_id.to_string()]);
        }
        if let (Some(target_id), TimelineEventType::RoomRedaction) = (&pdu.redacts, &pdu.kind) {
            if let Some(redacted) = self.apply_redaction(target_id, &event_id, &rules).await? {
                self.redacted.push(redacted);
            }
        }

        pdu.stream_ordering = position;
        pdu.state_group = state_group;
        let pdu = Arc::new(pdu);
        let version = self.meta.version.clone();
        let depth = u64::from(pdu.depth);
        self.meta = RoomMeta { version, extremities: vec![event_id], depth, state_group, chain_length };
        self.room_id = Some(room_id);
        self.appended.push(pdu.clone());
        Ok(pdu)
    }

    /// Replaces the redacted event's stored JSON by its redacted form, in the batch.
    async fn apply_redaction(
        &mut self,
        target_id: &ruma::EventId,
        redaction_id: &ruma::EventId,
        rules: &RoomVersionRules,
    ) -> Result<Option<Pdu>> {
        let Some(target) = find_pdu(self.rooms, &self.appended, target_id).await? else { return Ok(None) };
        let mut pdu = redacted_form(&target, rules)?;
        match self.rows.iter_mut().find(|r| r.event_id == target_id.as_str()) {
            // The target is in this very batch: its row is not written yet.
            Some(row) => row.json = pdu.json.clone(),
            None => self.writes.push(PendingWrite::Redaction {
                target: target_id.to_string(),
                by: redaction_id.to_string(),
                json: pdu.json.clone(),
            }),
        }
        pdu.redacted_by = Some(redaction_id.to_string());
        Ok(Some(pdu))
    }

    /// Commits the batch, then (and only then) updates the in-memory views and wakes readers.
    pub async fn commit(self) -> Result<()> {
        let RoomWriter {
            rooms,
            write,
            room_id,
            meta,
            state,
            appended,
            new_states,
            redacted,
            mut others,
            rows,
            txns,
            resolved_rooms,
            new_room,
            writes,
            portal_time,
            ..
        } = self;
        // Everything the transaction needs is read first, before it takes the write lock.
        // Rooms whose forks were merged get their whole current state from the resolution.
        let mut resolved_states = Vec::new();
        for resolved in &resolved_rooms {
            let map = if room_id.as_deref() == Some(&**resolved) { state.clone() } else { others[resolved].1.clone() };
            let mut entries = Vec::new();
            for ((kind, key), id) in map.iter() {
                let membership =
                    find_pdu(rooms, &appended, id).await?.and_then(|p| p.membership()).map(|m| m.to_string());
                entries.push((kind.to_string(), key.clone(), id.to_string(), membership));
            }
            resolved_states.push((resolved, entries));
        }
        let created_room = room_id.clone();
        if let Some(room_id) = room_id {
            others.insert(room_id, (meta, state));
        }
        if others.is_empty() {
            return Ok(());
        }
        // The subscribers' rows (notifications, the federation outbox) are computed before the
        // transaction opens and written in it.
        let created: HashSet<&RoomId> = match (&new_room, &created_room) {
            (Some(_), Some(r)) => HashSet::from([&**r]),
            _ => HashSet::new(),
        };
        let batch = commit::Batch {
            events: &appended,
            redacted: &redacted,
            states: &new_states,
            created: &created,
            txns: &txns,
        };
        let subscribers = rooms.subscribers();
        let started = std::time::Instant::now();
        let mut prepared = Vec::with_capacity(subscribers.rows.len());
        for s in &subscribers.rows {
            prepared.push(s.prepare(&batch).await?);
        }
        let evaluated = started.elapsed();
        let mut tx = rooms.db.begin().await?;
        let acquired = started.elapsed();
        for w in &writes {
            w.run(&mut tx).await?;
        }
        for (resolved, entries) in &resolved_states {
            let refs: Vec<(&str, &str, &str, Option<&str>)> =
                entries.iter().map(|(t, k, e, m)| (t.as_str(), k.as_str(), e.as_str(), m.as_deref())).collect();
            state_store::replace_current_state(&mut tx, resolved.as_str(), &refs, write.position()).await?;
        }
        // The rows, the transaction ids, each room's new forward extremity, the subscribers'.
        let new_events: Vec<ev_store::NewEvent<'_>> = rows.iter().map(EventRow::as_new).collect();
        ev_store::insert_events(&mut tx, &new_events).await?;
        let txn_rows: Vec<(&str, &str, &str, &str)> =
            txns.iter().map(|[u, d, t, e]| (u.as_str(), d.as_str(), t.as_str(), e.as_str())).collect();
        ev_store::insert_txns(&mut tx, &txn_rows).await?;
        for (room_id, (meta, _)) in &others {
            let ids: Vec<&str> = meta.extremities.iter().map(|e| e.as_str()).collect();
            if !ids.is_empty() {
                ev_store::set_forward_extremities(&mut tx, room_id.as_str(), &ids).await?;
            }
        }
        for p in &prepared {
            p.write(&mut tx).await?;
        }
        diplomatie_storage::commit(tx).await?;
        tracing::debug!(
            events = appended.len(),
            ?evaluated,
            ?acquired,
            committed = ?started.elapsed(),
            portal_checks = ?portal_time,
            "batch written"
        );
        // The in-memory views follow the commit before the writer lock is released (when the
        // positions are published): the next batch must build on this one's state, never on
        // what preceded it.
        let caches = rooms;
        {
            let mut metas = caches.meta.lock().unwrap();
            for (room_id, (meta, _)) in &others {
                metas.insert(room_id.clone(), Arc::new(meta.clone()));
            }
        }
        {
            let mut states = caches.states.lock().unwrap();
            for (id, map) in &new_states {
                states.put(*id, map.clone());
            }
        }
        {
            let mut events = caches.events.lock().unwrap();
            for pdu in &appended {
                events.put(pdu.event_id.clone(), pdu.clone());
            }
            for pdu in &redacted {
                events.put(pdu.event_id.clone(), Arc::new(pdu.clone()));
            }
        }
        {
            // A bump event committed now is its room's newest: recorded whether or not the room
            // was read before (a read in flight keeps the larger of the two).
            let mut bumps = caches.bumps.lock().unwrap();
            for pdu in appended.iter().filter(|p| is_bump(&p.kind)) {
                let last = bumps.get_or_insert_mut(pdu.room_id.clone(), || pdu.stream_ordering);
                *last = (*last).max(pdu.stream_ordering);
            }
        }
        {
            let mut threaded = caches.threaded.lock().unwrap();
            // The rows hold each event's relation, read once when the event was built.
            for row in rows.iter().filter(|r| r.relation.as_ref().is_some_and(|(t, _)| t == "m.thread")) {
                if let Ok(room) = OwnedRoomId::try_from(row.room_id.as_str()) {
                    threaded.put(room, true);
                }
            }
        }
        {
            let mut recent = caches.recent.lock().unwrap();
            for pdu in &appended {
                let room = recent
                    .get_or_insert_mut(pdu.room_id.clone(), || recent::RecentEvents::starting_at(pdu.stream_ordering));
                room.push(pdu.stream_ordering, pdu.event_id.clone());
            }
        }
        for resolved in &resolved_rooms {
            caches.joined.lock().unwrap().remove(resolved);
        }
        let mut wake: Vec<OwnedUserId> = Vec::new();
        let mut memberships: Vec<(OwnedUserId, OwnedRoomId)> = Vec::new();
        for pdu in appended.iter().filter(|p| p.kind == TimelineEventType::RoomMember) {
            let Some(target) = pdu.state_key.as_deref().and_then(|s| OwnedUserId::try_from(s).ok()) else { continue };
            let mut joined = caches.joined.lock().unwrap();
            if let Some(set) = joined.get_mut(&pdu.room_id) {
                let set = Arc::make_mut(set);
                if pdu.membership() == Some(MembershipState::Join) {
                    set.insert(target.clone());
                } else {
                    set.remove(&target);
                }
            }
            memberships.push((target.clone(), pdu.room_id.clone()));
            wake.push(target);
        }
        if !txns.is_empty() {
            // Both ways: a retry racing its original finds the event, and the sending device
            // sees its transaction id on it.
            let (mut recent, mut txn_of) = (caches.recent_txns.lock().unwrap(), caches.txn_of.lock().unwrap());
            for [user, device, txn_id, event_id] in &txns {
                let (Ok(user), Ok(id)) =
                    (OwnedUserId::try_from(user.as_str()), OwnedEventId::try_from(event_id.as_str()))
                else {
                    continue;
                };
                recent.put((user, device.as_str().into(), txn_id.as_str().into()), id.clone());
                txn_of.put(id, (device.clone(), txn_id.clone()));
            }
        }
        // The subscribers, before the positions are published and after.
        let at = commit::Committed { position: write.position(), memberships: &memberships };
        for s in &subscribers.others {
            s.committed(&batch, &at);
        }
        for p in &prepared {
            p.committed(&at);
        }
        write.publish();
        rooms.metrics.events_persisted.inc_by(appended.len() as u64);
        for p in &prepared {
            p.published();
        }
        for s in &subscribers.others {
            s.published(&batch, &at);
        }
        for room_id in others.keys() {
            rooms.wake(room_id).await?;
        }
        rooms.notifier.notify(wake.iter().map(|u| &**u));
        Ok(())
    }
}

/// An event written earlier in a batch, or a stored one.
pub(crate) async fn find_pdu(rooms: &Rooms, appended: &[Arc<Pdu>], id: &ruma::EventId) -> Result<Option<Arc<Pdu>>> {
    if let Some(p) = appended.iter().rev().find(|p| p.event_id == id) {
        return Ok(Some(p.clone()));
    }
    rooms.get_pdu(id).await
}

/// How an event cites `ids` (as previous or auth events): by id, or for room versions 1 and 2
/// with their reference hashes.
async fn references(
    rooms: &Rooms,
    appended: &[Arc<Pdu>],
    ids: &[OwnedEventId],
    rules: &RoomVersionRules,
) -> Result<Vec<event_core::Reference>> {
    let mut refs = Vec::with_capacity(ids.len());
    for id in ids {
        if rules.event_id_format != EventIdFormatVersion::V1 {
            refs.push(event_core::Reference::id(id.clone()));
            continue;
        }
        let pdu =
            find_pdu(rooms, appended, id).await?.ok_or_else(crate::internal!("a value present by construction"))?;
        refs.push(event_core::reference(&pdu, rules)?);
    }
    Ok(refs)
}

/// A user's power level from a room's create event and power levels content (`None` without a
/// power levels event), creators of rooms that privilege them (v12) above every level.
pub(crate) fn power_of(
    create: Option<&crate::Pdu>,
    levels: Option<&serde_json::Map<String, Value>>,
    user: &UserId,
    creators_privileged: bool,
) -> i64 {
    if let Some(create) = create {
        let extra = create.content_field("additional_creators");
        let listed = extra.and_then(|v| v.as_array().map(|a| a.iter().any(|u| u.as_str() == Some(user.as_str()))));
        if creators_privileged && (create.sender == user || listed.unwrap_or(false)) {
            return i64::MAX;
        }
    }
    let Some(levels) = levels else {
        // Without a power levels event the creator has 100, everyone else 0.
        return if create.is_some_and(|c| c.sender == user) { 100 } else { 0 };
    };
    let default = levels.get("users_default").and_then(Value::as_i64).unwrap_or(0);
    levels.get("users").and_then(|u| u.get(user.as_str())).and_then(Value::as_i64).unwrap_or(default)
}

/// A thread root's thread as its clients are shown it (`unsigned.m.relations.m.thread`).
pub struct ThreadSummary {
    /// The latest reply, in the client format.
    pub latest_event: Box<serde_json::value::RawValue>,
    /// The number of replies (redacted ones left out).
    pub count: i64,
    /// Whether the reader sent the root or a reply.
    pub participated: bool,
}

/// A state map as (type, state key, event id) rows.
fn state_rows(map: &StateMap<OwnedEventId>) -> Vec<[String; 3]> {
    map.iter().map(|((t, k), e)| [t.to_string(), k.clone(), e.to_string()]).collect()
}

/// The (rel_type, event id) an event relates to, from `m.relates_to`.
fn relation_of(pdu: &Pdu) -> Option<(String, String)> {
    let rel = pdu.content_field("m.relates_to")?;
    let rel_type = rel.get("rel_type").and_then(Value::as_str);
    let event_id = rel.get("event_id").and_then(Value::as_str);
    match (rel_type, event_id) {
        (Some(t), Some(e)) => Some((t.to_owned(), e.to_owned())),
        _ => {
            let reply = rel.get("m.in_reply_to")?.get("event_id")?.as_str()?;
            Some(("m.in_reply_to".to_owned(), reply.to_owned()))
        }
    }
}

/// An event as its redaction leaves it, at the same place in the room (its JSON without
/// `unsigned`, what is stored for a redacted event).
fn redacted_form(pdu: &Pdu, rules: &RoomVersionRules) -> Result<Pdu> {
    let mut redacted =
        ruma::canonical_json::redact(pdu.canonical_object()?, &rules.redaction, None).map_err(crate::internal!())?;
    redacted.remove("unsigned");
    let json = serde_json::to_string(&redacted).map_err(crate::internal!())?;
    let mut copy = Pdu::from_json(pdu.event_id.clone(), json, Some(pdu.room_id.clone()))?;
    copy.stream_ordering = pdu.stream_ordering;
    copy.state_group = pdu.state_group;
    Ok(copy)
}

/// The rooms a user is joined to.
pub async fn joined_rooms(core: &Core, user: &UserId) -> Result<Vec<OwnedRoomId>> {
    Ok(core
        .memberships_of(user)
        .await?
        .into_iter()
        .filter(|(_, m)| *m == MembershipState::Join)
        .map(|(r, _)| r)
        .collect())
}

impl Rooms {
    /// The rooms both users are joined to, by room id (`GET /mutual_rooms`, MSC2666).
    pub async fn mutual_rooms(&self, user: &UserId, other: &UserId) -> Result<Vec<OwnedRoomId>> {
        if user == other {
            return Err(Error::invalid_param("You share every room with yourself"));
        }
        let mut shared = Vec::new();
        for room in joined_rooms(&self.core, user).await? {
            if self.is_joined(&room, other).await? {
                shared.push(room);
            }
        }
        shared.sort();
        Ok(shared)
    }

    /// The room state as of a stream position (the state after the last event at or before it).
    pub async fn state_at_position(&self, room_id: &RoomId, position: i64) -> Result<Arc<StateMap<OwnedEventId>>> {
        let meta = self.known_room(room_id).await?;
        if position >= self.stream_position() {
            return self.state_map(meta.state_group).await;
        }
        match ev_store::last_room_event(self.db.pool(), room_id.as_str(), position).await? {
            Some(e) => self.state_map(e.state_group).await,
            None => Ok(Arc::default()),
        }
    }
}
