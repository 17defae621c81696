//! Server-side search (client-server spec, "Server Side Search"): `room_events` over message
//! bodies, room names and topics, with tantivy.
//!
//! Committed events reach the index through a channel to one indexer task, which batches them
//! into at most one commit a second (sooner when a search waits); a search first waits
//! (briefly) until every event committed before it is indexed, so a user finds what they just
//! sent. On start the indexer catches up from the positions its last commit recorded (searches
//! wait for it), so the index survives restarts and can be rebuilt from the database. History
//! fetched from other servers (backfill, below stream position 0) is indexed like the rest.
//! Encrypted events are never indexed: the server cannot read them.
//!
//! The index returns candidates in the rooms the user has a membership in; each candidate is
//! then checked like any event read (history visibility at the event), so results never show
//! what the user could not read in the timeline.

pub mod index;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use diplomatie_storage::{events as ev_store, state as state_store, Db};
use ruma::{
    api::client::search::search_events::v3::{
        EventContextResult, ResultGroup, ResultGroupMap, ResultRoomEvents, SearchResult, UserProfile,
    },
    events::TimelineEventType,
    EventId, UInt, UserId,
};
use serde::Deserialize;

use self::index::{Covered, IndexedEvent, Key, SearchIndex};
use crate::{
    core::Core,
    portal::Portal,
    rooms::{commit, timeline::EventFilter, Rooms},
    Error, Pdu, Result,
};

/// The event types whose texts are indexed.
const INDEXED_TYPES: &[&str] = &["m.room.message", "m.room.name", "m.room.topic"];

/// Work for the indexer: events to add, events to remove, and the stream positions their
/// commit covered.
struct Job {
    add: Vec<IndexedEvent>,
    delete: Vec<String>,
    covered: Covered,
    seq: u64,
}

/// Full-text search over the rooms' events, over the rooms (history visibility) and the portal
/// (which rooms may be listed).
pub struct Search {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    portal: Arc<Portal>,
    pub state: SearchState,
}

crate::core::over_core!(Search);

impl Search {
    pub(crate) fn new(core: Arc<Core>, rooms: Arc<Rooms>, portal: Arc<Portal>, state: SearchState) -> Search {
        Search { core, rooms, portal, state }
    }
}

/// The index and its indexer's queue. The index is opened by the serving process only (a
/// command run beside a running server must not contend for its lock).
pub struct SearchState {
    dir: std::path::PathBuf,
    index: std::sync::OnceLock<Arc<SearchIndex>>,
    queue: tokio::sync::mpsc::UnboundedSender<Job>,
    receiver: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Job>>>,
    enqueued: AtomicU64,
    processed: tokio::sync::watch::Sender<u64>,
    /// The indexer has caught up with the database (at start-up).
    ready: tokio::sync::watch::Sender<bool>,
    /// A search waits for the indexer: commit now.
    wanted: Arc<tokio::sync::Notify>,
}

/// How long the indexer gathers events before a commit when no search waits.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

impl SearchState {
    pub fn new(data_dir: &std::path::Path) -> SearchState {
        let (queue, receiver) = tokio::sync::mpsc::unbounded_channel();
        SearchState {
            dir: data_dir.join("search"),
            index: std::sync::OnceLock::new(),
            queue,
            receiver: Mutex::new(Some(receiver)),
            enqueued: AtomicU64::new(0),
            processed: tokio::sync::watch::Sender::new(0),
            ready: tokio::sync::watch::Sender::new(false),
            wanted: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Opens the index (its writer is made when there is something to write).
    pub async fn open(&self) -> tantivy::Result<Arc<SearchIndex>> {
        if let Some(index) = self.index.get() {
            return Ok(index.clone());
        }
        let index = Arc::new(SearchIndex::open(&self.dir, 15_000_000)?);
        Ok(self.index.get_or_init(|| index).clone())
    }

    /// The index, once opened.
    pub fn index(&self) -> Result<Arc<SearchIndex>> {
        self.index.get().cloned().ok_or_else(|| {
            tracing::error!("the search index is not open");
            Error::Internal
        })
    }
}

/// What the index keeps of an event, when it has a searchable text.
pub fn indexed_event(pdu: &Pdu) -> Option<IndexedEvent> {
    let text = |field: &str| pdu.content_field(field).and_then(|v| v.as_str().map(str::to_owned));
    let (body, name, topic) = match pdu.kind {
        TimelineEventType::RoomMessage => (Some(text("body")?), None, None),
        TimelineEventType::RoomName => (None, Some(text("name")?), None),
        TimelineEventType::RoomTopic => (None, None, Some(text("topic")?)),
        _ => return None,
    };
    Some(IndexedEvent {
        event_id: pdu.event_id.to_string(),
        room_id: pdu.room_id.to_string(),
        sender: pdu.sender.to_string(),
        kind: pdu.kind.to_string(),
        stream: pdu.stream_ordering,
        body,
        name,
        topic,
    })
}

fn search_failed(e: tantivy::TantivyError) -> Error {
    tracing::error!(error = %e, "search index failure");
    Error::Internal
}

/// Indexes what the database holds after the index's last commit. Returns the position reached.
async fn catch_up(db: &Db, index: &SearchIndex) -> Result<Covered> {
    let mut covered = index.committed();
    // Events written here since, oldest first; then history fetched from other servers since,
    // newest first (each below the last).
    for upwards in [true, false] {
        loop {
            let bound = if upwards { covered.high } else { covered.low };
            let batch = ev_store::events_of_types(db.pool(), INDEXED_TYPES, bound, upwards, 2000).await?;
            let Some(last) = batch.last().map(|e| e.stream_ordering) else { break };
            let events: Vec<IndexedEvent> =
                batch.into_iter().filter_map(|s| Pdu::from_stored(s).ok()).filter_map(|p| indexed_event(&p)).collect();
            index.add(&events, covered).map_err(search_failed)?;
            covered = covered.union(Covered { high: last, low: last });
            index.commit(covered).map_err(search_failed)?;
        }
    }
    Ok(covered)
}

/// Starts the indexer on the opened index: it catches up with the database, then indexes what
/// commits send it.
pub fn spawn_indexer(search: &Search) {
    let Ok(index) = search.state.index() else { return };
    let Some(mut receiver) = search.state.receiver.lock().unwrap().take() else { return };
    let db = search.db.clone();
    let processed = search.state.processed.clone();
    let wanted = search.state.wanted.clone();
    let ready = search.state.ready.clone();
    let core = search.core.clone();
    tokio::spawn(async move {
        let caught_up = match catch_up(&db, &index).await {
            Ok(c) => c,
            Err(_) => index.committed(),
        };
        ready.send_replace(true);
        // What the index's commits have covered so far.
        let mut committed = caught_up;
        while let Some(first) = receiver.recv().await {
            // A tantivy commit syncs files: batch for up to a second, unless a search waits.
            let mut jobs = vec![first];
            let deadline = tokio::time::Instant::now() + COMMIT_INTERVAL;
            loop {
                tokio::select! {
                    more = receiver.recv() => match more {
                        Some(job) => jobs.push(job),
                        None => break,
                    },
                    _ = wanted.notified() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            let index = index.clone();
            let batches = jobs.len() as i64;
            let done = tokio::task::spawn_blocking(move || {
                let mut covered = committed;
                let mut seq = 0;
                for job in jobs {
                    // What the catch-up read is there already.
                    let add: Vec<IndexedEvent> = job.add.into_iter().filter(|e| !caught_up.holds(e.stream)).collect();
                    index.add(&add, committed)?;
                    index.delete(&job.delete)?;
                    covered = covered.union(job.covered);
                    seq = seq.max(job.seq);
                }
                index.commit(covered)?;
                Ok::<(u64, Covered), tantivy::TantivyError>((seq, covered))
            })
            .await;
            match done {
                Ok(Ok((seq, covered))) => {
                    committed = covered;
                    processed.send_modify(|p| *p = (*p).max(seq));
                }
                Ok(Err(e)) => {
                    search_failed(e);
                }
                Err(_) => tracing::error!("the search indexer panicked"),
            }
            // Done with, indexed or not (a failure is logged; the next start catches up).
            core.metrics.search_pending.sub(batches);
        }
    });
}

/// A `room_events` search, as the spec's `Criteria` gives it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Criteria {
    pub search_term: String,
    pub keys: Option<Vec<String>>,
    pub filter: EventFilter,
    pub order_by: Option<String>,
    pub event_context: Option<ContextRequest>,
    pub include_state: bool,
    pub groupings: Option<Groupings>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct ContextRequest {
    pub before_limit: usize,
    pub after_limit: usize,
    pub include_profile: bool,
}

impl Default for ContextRequest {
    fn default() -> Self {
        ContextRequest { before_limit: 5, after_limit: 5, include_profile: false }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Groupings {
    pub group_by: Vec<GroupBy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GroupBy {
    pub key: String,
}

impl Search {
    /// Sends committed events to the indexer (after the commit: the index never holds events
    /// the database does not).
    pub(crate) fn index_committed(&self, appended: &[Arc<Pdu>], redacted: &[Pdu], covered: Covered) {
        let add: Vec<IndexedEvent> = appended.iter().filter_map(|p| indexed_event(p)).collect();
        let delete: Vec<String> = redacted.iter().map(|p| p.event_id.to_string()).collect();
        // Without an index (a command, not a server), the next server catches up instead.
        if (add.is_empty() && delete.is_empty()) || self.state.index.get().is_none() {
            return;
        }
        let seq = self.state.enqueued.fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.search_pending.inc();
        let _ = self.state.queue.send(Job { add, delete, covered, seq });
    }

    /// Makes the index forget what purges emptied (a retention run, a room deleted) and it
    /// has not confirmed forgetting yet (a stop between a purge's commit and the index's).
    pub(crate) async fn forget_purged(&self) -> Result<()> {
        use diplomatie_storage::retention as store;
        loop {
            let ids = store::search_not_cleared(self.db.pool(), 1000).await?;
            if ids.is_empty() || !self.forget(ids.clone()).await {
                return Ok(());
            }
            let mut tx = self.db.begin_write().await?;
            store::mark_search_cleared(&mut tx, &ids).await?;
            diplomatie_storage::commit(tx).await?;
        }
    }

    /// Removes events from the index and waits until the removal is committed: false when it
    /// was not (no index in this process, which is a command; or the indexer failing), for the
    /// caller to try again later.
    pub(crate) async fn forget(&self, event_ids: Vec<String>) -> bool {
        if event_ids.is_empty() {
            return true;
        }
        if self.state.index.get().is_none() {
            return false;
        }
        let seq = self.state.enqueued.fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.search_pending.inc();
        let job = Job { add: Vec::new(), delete: event_ids, covered: Covered::default(), seq };
        if self.state.queue.send(job).is_err() {
            return false;
        }
        self.state.wanted.notify_one();
        let mut processed = self.state.processed.subscribe();
        let done = tokio::time::timeout(Duration::from_secs(30), processed.wait_for(|p| *p >= seq)).await;
        matches!(done, Ok(Ok(_)))
    }

    /// Waits until every event committed so far is searchable (at most a few seconds).
    async fn search_caught_up(&self) {
        let target = self.state.enqueued.load(Ordering::Acquire);
        let mut processed = self.state.processed.subscribe();
        if *processed.borrow() < target {
            self.state.wanted.notify_one();
        }
        let mut ready = self.state.ready.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = ready.wait_for(|r| *r).await;
            let _ = processed.wait_for(|p| *p >= target).await;
        })
        .await;
    }

    /// Empties the index and indexes the whole database again (`diplomatie search rebuild`).
    pub async fn rebuild_search_index(&self) -> Result<Covered> {
        let index = self.state.open().await.map_err(search_failed)?;
        index.clear().map_err(search_failed)?;
        catch_up(&self.db, &index).await
    }

    /// `POST /search` with `room_events`: the spec's `room_events` result object.
    pub async fn search_room_events(
        &self,
        user: &UserId,
        criteria: Criteria,
        next_batch: Option<&str>,
    ) -> Result<ResultRoomEvents> {
        let keys: Vec<Key> = match &criteria.keys {
            None => vec![Key::Body, Key::Name, Key::Topic],
            Some(keys) => keys
                .iter()
                .map(|k| match k.as_str() {
                    "content.body" => Ok(Key::Body),
                    "content.name" => Ok(Key::Name),
                    "content.topic" => Ok(Key::Topic),
                    other => Err(Error::invalid_param(format!("Unknown search key {other}"))),
                })
                .collect::<Result<_>>()?,
        };
        let recent = match criteria.order_by.as_deref() {
            None | Some("rank") => false,
            Some("recent") => true,
            Some(other) => return Err(Error::invalid_param(format!("Unknown order_by {other}"))),
        };
        let mut offset: usize = match next_batch {
            None => 0,
            Some(t) => t.parse().map_err(|_| Error::invalid_param("Unknown next_batch token"))?,
        };
        let filter = &criteria.filter;
        let limit = filter.limit.unwrap_or(10).clamp(1, 100) as usize;

        // Rooms the user is or was in, as the filter allows.
        let rooms: Vec<String> = state_store::rooms_for_user(self.db.pool(), user.as_str())
            .await?
            .into_iter()
            .map(|(room, _)| room)
            .filter(|r| filter.rooms.as_ref().is_none_or(|allowed| allowed.contains(r)))
            .filter(|r| !filter.not_rooms.contains(r))
            .collect();
        // DR (restricted distribution) rooms never appear in search.
        let mut listed = Vec::with_capacity(rooms.len());
        for room in rooms {
            let Ok(id) = ruma::OwnedRoomId::try_from(room.as_str()) else { continue };
            if self.rooms.room_meta(&id).await?.is_some() && self.portal.room_may_be_listed(&id).await? {
                listed.push(room);
            }
        }
        let rooms = listed;

        self.search_caught_up().await;
        let index = self.state.index()?;
        let mut results: Vec<(f32, Arc<Pdu>)> = Vec::new();
        // `count` is over what the user may read, never the index's own count: that would
        // tell how many matching messages were posted where the user cannot look (after they
        // left a room, say). It counts the readable hits from this page's start on, reading
        // up to COUNT_CAP candidates past the page (a lower bound beyond that).
        let mut count = 0usize;
        let mut next = None;
        // The candidate position after this page's last result, and how many candidates were
        // read past it.
        let mut page_end = offset;
        let mut past_page = 0usize;
        let chunk = limit * 2 + 10;
        'pages: loop {
            let (term, keys, rooms, index) = (criteria.search_term.clone(), keys.clone(), rooms.clone(), index.clone());
            let found = tokio::task::spawn_blocking(move || index.search(&term, &keys, &rooms, recent, offset, chunk))
                .await
                .map_err(crate::internal!())?
                .map_err(search_failed)?;
            let exhausted = found.hits.len() < chunk;
            for (event_id, score) in found.hits {
                offset += 1;
                if results.len() == limit {
                    past_page += 1;
                    if past_page > COUNT_CAP {
                        // Not read to the end: there may be more.
                        next.get_or_insert_with(|| page_end.to_string());
                        break 'pages;
                    }
                }
                let Ok(id) = <&EventId>::try_from(event_id.as_str()) else { continue };
                let Some(pdu) = self.rooms.get_pdu(id).await? else { continue };
                if pdu.redacted_by.is_some() || !filter.allows(&pdu) || !self.rooms.can_see_event(user, &pdu).await? {
                    continue;
                }
                count += 1;
                if results.len() < limit {
                    results.push((score, pdu));
                    page_end = offset;
                } else {
                    next.get_or_insert_with(|| page_end.to_string());
                }
            }
            if exhausted {
                break;
            }
        }

        let context = criteria.event_context.as_ref();
        let mut body = ResultRoomEvents::new();
        for (score, pdu) in &results {
            let mut result = SearchResult::new();
            result.rank = Some(f64::from(*score));
            result.result = Some(pdu.to_raw(true));
            if let Some(ctx) = context {
                result.context = self.search_context(user, pdu, ctx).await?;
            }
            body.results.push(result);
        }
        body.count = Some(UInt::try_from(count).unwrap_or(UInt::MAX));
        body.highlights = SearchIndex::words(&criteria.search_term);
        body.next_batch = next;
        if criteria.include_state {
            for (_, pdu) in &results {
                if body.state.contains_key(&pdu.room_id) {
                    continue;
                }
                let map = self.rooms.current_state(pdu.room()).await?;
                let mut events = Vec::new();
                for id in map.values() {
                    if let Some(p) = self.rooms.get_pdu(id).await? {
                        events.push(p.to_raw(true));
                    }
                }
                body.state.insert(pdu.room_id.clone(), events);
            }
        }
        if let Some(groupings) = &criteria.groupings {
            for group in &groupings.group_by {
                // Groups in the order their first result comes.
                fn grouped<K: Ord + Clone>(
                    results: &[(f32, Arc<Pdu>)],
                    key_of: impl Fn(&Pdu) -> K,
                ) -> BTreeMap<K, ResultGroup> {
                    let mut groups: BTreeMap<K, ResultGroup> = BTreeMap::new();
                    for (_, pdu) in results {
                        let order = UInt::try_from(groups.len()).unwrap_or(UInt::MAX);
                        let group = groups.entry(key_of(pdu)).or_insert_with(|| {
                            let mut g = ResultGroup::new();
                            g.order = Some(order);
                            g
                        });
                        group.results.push(pdu.event_id.clone());
                    }
                    groups
                }
                let map = match group.key.as_str() {
                    "room_id" => ResultGroupMap::RoomId(grouped(&results, |p| p.room_id.clone())),
                    "sender" => ResultGroupMap::Sender(grouped(&results, |p| p.sender.clone())),
                    other => return Err(Error::invalid_param(format!("Unknown grouping key {other}"))),
                };
                body.groups.insert(map);
            }
        }
        Ok(body)
    }

    /// The `context` of a search result.
    async fn search_context(&self, user: &UserId, pdu: &Pdu, ctx: &ContextRequest) -> Result<EventContextResult> {
        let (before, after, start, end) =
            self.rooms.events_around(user, pdu, ctx.before_limit.min(50), ctx.after_limit.min(50)).await?;
        let mut context = EventContextResult::new();
        context.events_before = before.iter().map(|p| p.to_raw(true)).collect();
        context.events_after = after.iter().map(|p| p.to_raw(true)).collect();
        context.start = Some(start);
        context.end = Some(end);
        if ctx.include_profile {
            for p in before.iter().chain(after.iter()).map(|p| &**p).chain(std::iter::once(pdu)) {
                if context.profile_info.contains_key(&p.sender) {
                    continue;
                }
                let state = self.rooms.state_map(p.state_group).await?;
                let member = self
                    .rooms
                    .state_event_in(&state, &ruma::events::StateEventType::RoomMember, p.sender.as_str())
                    .await?;
                let mut profile = UserProfile::new();
                if let Some(m) = member {
                    let text = |field| m.content_field(field).and_then(|v| v.as_str().map(str::to_owned));
                    profile.displayname = text("displayname");
                    profile.avatar_url = text("avatar_url").map(Into::into);
                }
                context.profile_info.insert(p.sender.clone(), profile);
            }
        }
        Ok(context)
    }
}

/// Sends each committed batch to the indexer, once published (a commit subscriber).
pub(crate) struct Indexer(pub(crate) std::sync::Weak<Search>);

impl commit::Subscriber for Indexer {
    fn published(&self, batch: &commit::Batch<'_>, at: &commit::Committed<'_>) {
        let Some(search) = self.0.upgrade() else { return };
        search.index_committed(batch.events, batch.redacted, Covered::up_to(at.position));
    }

    /// Backfilled history is searchable like the rest of the room (history visibility still
    /// applies to results).
    fn backfilled(&self, events: &[Arc<Pdu>]) {
        let Some(search) = self.0.upgrade() else { return };
        if let Some(low) = events.iter().map(|p| p.stream_ordering).min() {
            search.index_committed(events, &[], Covered { high: 0, low });
        }
    }
}

/// How many candidates a search reads past its page to count the results the user may read.
const COUNT_CAP: usize = 500;
