//! Application services (application-service spec): the events pushed to each service that is
//! interested in them, the questions the server asks them (does this user, this alias exist?
//! which third-party protocols do you bridge?), pings, and the room lists services publish.
//!
//! Which events a service receives is decided when they are committed: an [`AppserviceRows`]
//! subscriber queues them in the commit's own transaction (`appservice_outbox`), so that none is
//! lost across a restart. One sender task per service pushes the queue in transactions whose id
//! is the stream position of their last event, and backs off while the service fails.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, OnceLock, Weak},
    time::{Duration, Instant},
};

use diplomatie_storage::appservices as store;
use ruma::{
    api::error::{BadStatusErrorData, ErrorKind},
    events::{StateEventType, TimelineEventType},
    OwnedRoomId, RoomAliasId, RoomId, UserId,
};
use serde_json::{json, Value};

use crate::{
    core::Core,
    outbound,
    pdu::Pdu,
    registrations::Appservice,
    rooms::{commit, Rooms},
    Error, Result,
};

/// Events in one transaction, at most.
const TRANSACTION_EVENTS: i64 = 100;
/// Time a service has to answer one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait between two tries of a failing service.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a service's description of a protocol is kept.
const PROTOCOL_TTL: Duration = Duration::from_secs(300);

/// The application services at work: over the core (their registrations) and the rooms (the
/// events they are sent, the members and aliases that make them interested).
pub struct Appservices {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    client: OnceLock<outbound::Client>,
    /// Wakes each service's sender (by id) when events are queued for it.
    wakes: HashMap<String, Arc<tokio::sync::Notify>>,
    /// (service, protocol) → when asked, and what the service answered.
    protocols: Mutex<HashMap<(String, String), (Instant, Value)>>,
}

crate::core::over_core!(Appservices);

impl Appservices {
    pub(crate) fn new(core: Arc<Core>, rooms: Arc<Rooms>) -> Appservices {
        let wakes = core.registrations.all().iter().map(|s| (s.id().to_owned(), Arc::default())).collect();
        Appservices { core, rooms, client: OnceLock::new(), wakes, protocols: Mutex::default() }
    }

    /// The HTTP client for the services: their addresses are the operator's choice (often on
    /// loopback, beside the server), so no range is refused; TLS trusts what `[outbound]` says.
    fn client(&self) -> Result<&outbound::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let everywhere = outbound::parse_allowlist("app services", &["0.0.0.0/0".into(), "::/0".into()])?;
        let client = outbound::client(&self.config.outbound, everywhere, REQUEST_TIMEOUT, "application services")?;
        Ok(self.client.get_or_init(|| client))
    }

    /// Calls `service` at `/_matrix/app/v1/<segments>` with its `hs_token`. `None` when the
    /// service has no URL.
    async fn call(
        &self,
        service: &Appservice,
        method: reqwest::Method,
        segments: &[&str],
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Option<std::result::Result<reqwest::Response, reqwest::Error>>> {
        let Some(base) = &service.registration.url else { return Ok(None) };
        let mut url = reqwest::Url::parse(base).map_err(crate::internal!())?;
        {
            let mut path = url.path_segments_mut().map_err(|_| crate::internal!("a base URL")())?;
            path.pop_if_empty().extend(["_matrix", "app", "v1"]).extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let client = self.client()?.for_url(&url);
        let mut request = client.request(method, url).bearer_auth(&service.registration.hs_token);
        if let Some(body) = body {
            request = request.json(body);
        }
        Ok(Some(request.send().await))
    }

    /// A GET whose answer is JSON, or `None` when the service has no URL, fails or answers
    /// anything else.
    async fn ask(&self, service: &Appservice, segments: &[&str], query: &[(String, String)]) -> Option<Value> {
        let response = match self.call(service, reqwest::Method::GET, segments, query, None).await {
            Ok(Some(Ok(r))) if r.status().is_success() => r,
            Ok(Some(Ok(r))) => {
                tracing::debug!(service = service.id(), status = %r.status(), ?segments, "application service refused");
                return None;
            }
            Ok(Some(Err(e))) => {
                tracing::info!(service = service.id(), error = %e, ?segments, "application service unreachable");
                return None;
            }
            Ok(None) | Err(_) => return None,
        };
        response.json::<Value>().await.ok()
    }

    /// Asks the services whose namespaces hold `user` whether it exists (a bridge creates its
    /// users when asked); true when one says yes.
    pub async fn query_user(&self, user: &UserId) -> bool {
        for service in self.registrations.all().iter().filter(|s| s.owns_user(user.as_str())) {
            if self.ask(service, &["users", user.as_str()], &[]).await.is_some() {
                return true;
            }
        }
        false
    }

    /// The room this server's `alias` names: from the database, or, when none and a service's
    /// namespace holds the alias, from the database again once that service was asked (it
    /// creates the alias before answering).
    pub async fn local_alias(&self, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
        let lookup = || async {
            let row = diplomatie_storage::rooms::get_alias(self.db.pool(), alias.as_str()).await?;
            row.map(|(room, _)| OwnedRoomId::try_from(room).map_err(crate::internal!())).transpose()
        };
        if let Some(room) = lookup().await? {
            return Ok(Some(room));
        }
        for service in self.registrations.all().iter().filter(|s| s.owns_alias(alias.as_str())) {
            if self.ask(service, &["rooms", alias.as_str()], &[]).await.is_some() {
                return lookup().await;
            }
        }
        Ok(None)
    }

    /// What the services bridging `protocol` say of it, merged: the first one's fields, every
    /// one's instances (each with an `instance_id` when it names its network). `None` when no
    /// service bridges it or none answered.
    pub async fn protocol(&self, protocol: &str) -> Option<Value> {
        let mut merged: Option<Value> = None;
        for service in self.registrations.all().iter().filter(|s| s.protocols().iter().any(|p| p == protocol)) {
            let key = (service.id().to_owned(), protocol.to_owned());
            let cached =
                self.protocols.lock().unwrap().get(&key).filter(|(at, _)| at.elapsed() < PROTOCOL_TTL).cloned();
            let info = match cached {
                Some((_, info)) => info,
                None => match self.ask(service, &["thirdparty", "protocol", protocol], &[]).await {
                    Some(info) if info.is_object() => {
                        self.protocols.lock().unwrap().insert(key, (Instant::now(), info.clone()));
                        info
                    }
                    _ => continue,
                },
            };
            let mut info = info;
            let mut instances = match info.get_mut("instances").map(Value::take) {
                Some(Value::Array(list)) => list,
                _ => Vec::new(),
            };
            for instance in &mut instances {
                if let Some(network) = instance.get("network_id").and_then(Value::as_str) {
                    instance["instance_id"] = json!(format!("{}|{network}", service.id()));
                }
            }
            match &mut merged {
                None => {
                    info["instances"] = Value::Array(instances);
                    merged = Some(info);
                }
                Some(m) => {
                    if let Some(Value::Array(list)) = m.get_mut("instances") {
                        list.extend(instances);
                    }
                }
            }
        }
        merged
    }

    /// Every protocol the services bridge, as [`Appservices::protocol`] describes it.
    pub async fn protocols(&self) -> BTreeMap<String, Value> {
        let mut names: Vec<&str> =
            self.registrations.all().iter().flat_map(|s| s.protocols()).map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        let mut out = BTreeMap::new();
        for name in names {
            if let Some(info) = self.protocol(name).await {
                out.insert(name.to_owned(), info);
            }
        }
        out
    }

    /// Third-party users or locations (`kind`) the services know, for one protocol's fields or,
    /// without a protocol, for a Matrix user id or alias: every answer put together.
    pub async fn third_party_lookup(
        &self,
        kind: &str,
        protocol: Option<&str>,
        query: &[(String, String)],
    ) -> Vec<Value> {
        let mut found = Vec::new();
        for service in self.registrations.all() {
            let answer = match protocol {
                Some(p) if service.protocols().iter().any(|q| q == p) => {
                    self.ask(service, &["thirdparty", kind, p], query).await
                }
                Some(_) => continue,
                None => self.ask(service, &["thirdparty", kind], query).await,
            };
            if let Some(Value::Array(list)) = answer {
                found.extend(list);
            }
        }
        found
    }

    /// Pings the service `id` on behalf of `caller` (the service whose token called), which
    /// must be the same service; answers the round trip's duration in milliseconds.
    pub async fn ping(&self, caller: &str, id: &str, transaction_id: Option<&str>) -> Result<u64> {
        let service = self
            .registrations
            .by_id(id)
            .filter(|s| s.id() == caller)
            .ok_or_else(|| Error::forbidden("An application service may ping itself only"))?;
        let body = match transaction_id {
            Some(t) => json!({ "transaction_id": t }),
            None => json!({}),
        };
        let started = Instant::now();
        match self.call(service, reqwest::Method::POST, &["ping"], &[], Some(&body)).await? {
            None => Err(Error::new(ErrorKind::UrlNotSet, "The application service has no URL")),
            Some(Err(e)) if e.is_timeout() => {
                Err(Error::new(ErrorKind::ConnectionTimeout, "The application service did not answer in time"))
            }
            Some(Err(e)) => Err(Error::new(ErrorKind::ConnectionFailed, format!("Cannot reach the service: {e}"))),
            Some(Ok(r)) if !r.status().is_success() => {
                let mut data = BadStatusErrorData::new();
                data.status = Some(r.status());
                data.body = r.text().await.ok();
                Err(Error::new(ErrorKind::BadStatus(data), "The application service answered with an error"))
            }
            Some(Ok(_)) => Ok(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Lists a room in (or takes it off) the service's list for one of its networks.
    pub async fn set_listed(&self, service: &str, network_id: &str, room_id: &RoomId, listed: bool) -> Result<()> {
        if listed {
            self.rooms.known_room(room_id).await?;
        }
        store::set_listed(self.db.pool(), service, network_id, room_id.as_str(), listed).await?;
        Ok(())
    }

    /// The rooms of one service's network list (`instance_id` is `service|network`), or of
    /// every list (`None`). An unknown instance lists nothing.
    pub async fn listed_rooms(&self, instance_id: Option<&str>) -> Result<Vec<OwnedRoomId>> {
        let list = match instance_id {
            Some(id) => match id.split_once('|') {
                Some(pair) => Some(pair),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let rooms = store::listed_rooms(self.db.pool(), list).await?;
        Ok(rooms.into_iter().filter_map(|r| OwnedRoomId::try_from(r).ok()).collect())
    }

    /// Which of `events` each service is interested in: (service, position, event id). A
    /// service is when the sender, the member an event is about, or the room id is in its
    /// namespaces, or when the room has a member or an alias there.
    async fn interested(
        &self,
        events: &[Arc<Pdu>],
        created: &std::collections::HashSet<&RoomId>,
    ) -> Vec<(String, i64, String)> {
        let services: Vec<&Arc<Appservice>> =
            self.registrations.all().iter().filter(|s| s.registration.url.is_some()).collect();
        let mut rows = Vec::new();
        if services.is_empty() {
            return rows;
        }
        let mut rooms: HashMap<&RoomId, (Arc<std::collections::HashSet<ruma::OwnedUserId>>, Vec<String>)> =
            HashMap::new();
        // Whether a room's members or aliases interest a service: decided once per batch (a
        // large room's members are not matched again for each of its events).
        let mut by_room: HashMap<(&RoomId, usize), bool> = HashMap::new();
        for pdu in events {
            for (index, service) in services.iter().enumerate() {
                let member = pdu.kind == TimelineEventType::RoomMember;
                let direct = service.owns_user(pdu.sender.as_str())
                    || pdu.state_key.as_deref().is_some_and(|k| member && service.owns_user(k))
                    || service.owns_room(pdu.room_id.as_str());
                let interested = direct
                    || match by_room.get(&(&*pdu.room_id, index)) {
                        Some(known) => *known,
                        None => {
                            if !rooms.contains_key(&*pdu.room_id) {
                                // A room the batch creates has no members nor aliases yet; a read that
                                // fails costs the services the event, never the batch its commit.
                                let room = if created.contains(&*pdu.room_id) {
                                    Default::default()
                                } else {
                                    let members = self.rooms.joined_members(&pdu.room_id).await;
                                    let aliases = self.aliases(&pdu.room_id).await;
                                    match (members, aliases) {
                                        (Ok(m), Ok(a)) => (m, a),
                                        (Err(e), _) | (_, Err(e)) => {
                                            tracing::warn!(room = %pdu.room_id, error = %e, "application services: room not read");
                                            Default::default()
                                        }
                                    }
                                };
                                rooms.insert(&pdu.room_id, room);
                            }
                            let (members, aliases) = &rooms[&*pdu.room_id];
                            let found = members.iter().any(|u| service.owns_user(u.as_str()))
                                || aliases.iter().any(|a| service.owns_alias(a));
                            by_room.insert((&*pdu.room_id, index), found);
                            found
                        }
                    };
                if interested {
                    rows.push((service.id().to_owned(), pdu.stream_ordering, pdu.event_id.to_string()));
                }
            }
        }
        rows
    }

    /// A room's aliases: this server's, and those its canonical alias event names.
    async fn aliases(&self, room_id: &RoomId) -> Result<Vec<String>> {
        let mut aliases = diplomatie_storage::rooms::room_aliases(self.db.pool(), room_id.as_str()).await?;
        if let Some(event) = self.rooms.state_event(room_id, &StateEventType::RoomCanonicalAlias, "").await? {
            let content = event.content_value();
            aliases.extend(content.get("alias").and_then(Value::as_str).map(str::to_owned));
            if let Some(Value::Array(alt)) = content.get("alt_aliases") {
                aliases.extend(alt.iter().filter_map(Value::as_str).map(str::to_owned));
            }
        }
        Ok(aliases)
    }

    /// Pushes the oldest queued events of `service` in one transaction. `Ok(true)` when more
    /// are waiting, `Ok(false)` when none are, an error when the service failed (they stay).
    async fn push_queued(&self, service: &Appservice) -> Result<bool> {
        let queued = store::outbox(self.db.pool(), service.id(), TRANSACTION_EVENTS).await?;
        let Some(&(last, _)) = queued.last() else { return Ok(false) };
        let mut events = Vec::with_capacity(queued.len());
        for (_, event_id) in &queued {
            let Ok(id) = ruma::OwnedEventId::try_from(event_id.as_str()) else { continue };
            if let Some(pdu) = self.rooms.get_pdu(&id).await? {
                events.push(pdu.to_client(true));
            }
        }
        let txn = last.to_string();
        let body = json!({ "events": events });
        match self.call(service, reqwest::Method::PUT, &["transactions", &txn], &[], Some(&body)).await? {
            Some(Ok(r)) if r.status().is_success() => {}
            Some(Ok(r)) => return Err(Error::Remote(format!("transaction {txn} answered {}", r.status()))),
            Some(Err(e)) => return Err(Error::Remote(format!("transaction {txn}: {e}"))),
            None => return Ok(false),
        }
        store::delivered(self.db.pool(), service.id(), last).await?;
        Ok(queued.len() as i64 == TRANSACTION_EVENTS)
    }
}

/// Starts one sender per service with a URL: it pushes what is queued, sleeps until more is,
/// and waits longer after each failure (from 1 s to [`MAX_BACKOFF`]), a restart resuming from
/// the queue.
pub fn spawn_senders(services: &Arc<Appservices>) {
    for service in services.registrations.all().iter().filter(|s| s.registration.url.is_some()) {
        let (me, service, wake) = (Arc::downgrade(services), service.clone(), services.wakes[service.id()].clone());
        tokio::spawn(async move {
            let mut backoff = Duration::ZERO;
            loop {
                let outcome = {
                    let Some(s) = me.upgrade() else { return };
                    s.push_queued(&service).await
                };
                match outcome {
                    Ok(true) => backoff = Duration::ZERO,
                    Ok(false) => {
                        backoff = Duration::ZERO;
                        wake.notified().await;
                    }
                    Err(e) => {
                        backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                        tracing::warn!(service = service.id(), error = %e, retry_in = ?backoff, "application service");
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
        });
    }
}

/// The application services as a commit subscriber: queues each batch's events for the
/// services interested, in the batch's transaction.
pub(crate) struct AppserviceRows(pub(crate) Weak<Appservices>);

impl commit::RowsSubscriber for AppserviceRows {
    fn prepare<'a>(&'a self, batch: &'a commit::Batch<'a>) -> commit::Preparing<'a> {
        Box::pin(async move {
            let services = crate::upgrade(&self.0)?;
            let rows = services.interested(batch.events, batch.created).await;
            Ok(Box::new(Queued { services, rows }) as Box<dyn commit::Rows>)
        })
    }
}

/// A batch's queued events, with the services to wake once they are committed.
struct Queued {
    services: Arc<Appservices>,
    rows: Vec<(String, i64, String)>,
}

impl commit::Rows for Queued {
    fn write<'a>(&'a self, tx: &'a mut commit::Transaction) -> commit::Writing<'a> {
        Box::pin(async move {
            if !self.rows.is_empty() {
                let rows: Vec<(&str, i64, &str)> =
                    self.rows.iter().map(|(s, p, e)| (s.as_str(), *p, e.as_str())).collect();
                store::enqueue(tx, &rows).await?;
            }
            Ok(())
        })
    }

    fn published(&self) {
        for (service, ..) in &self.rows {
            if let Some(wake) = self.services.wakes.get(service) {
                wake.notify_one();
            }
        }
    }
}
