//! PDUs received from other servers, checked as the spec orders it before anything is kept:
//!
//! 1. it parses and belongs to a room this server is in (else dropped);
//! 2. its signatures verify with its servers' keys (else dropped);
//! 3. its content hash matches (else it is kept redacted);
//! 4. it passes the authorisation rules against its own auth events (else rejected);
//! 5. it passes them against the room state before it (else rejected);
//! 6. it passes them against the current state of the room (else soft-failed: not kept in the
//!    timeline nor the state).
//!
//! Missing `prev_events` are asked of the sender (`get_missing_events`); where a gap remains,
//! the state at the missing event is fetched (`state_ids`) and its events kept as outliers.
//! Rejected and soft-failed events are not stored: they change nothing.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use diplomatie_storage::federation as store;
use ruma::{
    api::{
        error::ErrorKind,
        federation::event::{get_event, get_missing_events, get_room_state_ids},
    },
    events::{StateEventType, TimelineEventType},
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    state_res::{self, StateMap},
    CanonicalJsonObject, EventId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, ServerName,
};
use serde_json::value::RawValue;

use super::Federation;
use crate::{rooms::received::Placement, Error, Pdu, Result};

/// The id of an event: carried by it (v1, v2), its reference hash since v3.
pub fn event_id_of(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId> {
    if rules.event_id_format == EventIdFormatVersion::V1 {
        return object
            .get("event_id")
            .and_then(|v| v.as_str())
            .and_then(|s| OwnedEventId::try_from(s).ok())
            .ok_or_else(|| Error::bad_json("PDU without a valid event_id"));
    }
    let hash = ruma::signatures::reference_hash(object, rules)
        .map_err(|e| Error::bad_json(format!("Cannot hash the PDU: {e}")))?;
    OwnedEventId::try_from(format!("${hash}")).map_err(crate::internal!())
}

/// Parses a PDU's JSON into a canonical object (the spec's rules for integers and nesting).
pub fn canonical(raw: &RawValue) -> Result<CanonicalJsonObject> {
    serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("PDU is not canonical JSON: {e}")))
}

/// The room a PDU names.
pub fn room_of(object: &CanonicalJsonObject) -> Result<OwnedRoomId> {
    object
        .get("room_id")
        .and_then(|v| v.as_str())
        .and_then(|s| OwnedRoomId::try_from(s).ok())
        .ok_or_else(|| Error::bad_json("PDU without a valid room_id"))
}

/// Since v12 the create event is not among an event's auth events, and carries no room id:
/// the room id names it. `None` before v12.
pub(crate) fn implicit_create_id(rules: &RoomVersionRules, room_id: &RoomId) -> Option<OwnedEventId> {
    if !rules.authorization.room_create_event_id_as_room_id {
        return None;
    }
    OwnedEventId::try_from(format!("${}", &room_id.as_str()[1..])).ok()
}

/// Step 4 of the checks on receipt: `pdu` against its own auth events (`auth` holds them, and
/// the create event since v12, where it is not among them).
pub(crate) fn check_auth_events(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    auth: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> std::result::Result<(), String> {
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id| auth.get(id).cloned())?;
    let by_key: HashMap<(StateEventType, String), Arc<Pdu>> = auth
        .values()
        .filter_map(|p| Some(((StateEventType::from(p.kind.to_string()), p.state_key.clone()?), p.clone())))
        .collect();
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |k, s| {
        by_key.get(&(k.clone(), s.to_owned())).cloned()
    })
}

/// Events another server gave (a join's state and auth chain, a backfilled batch), each checked
/// against its own auth events (among them, or in `known`, events this server holds), in order
/// of depth, an event whose auth events were refused being refused too. Answers the accepted
/// events in that order, and why each refused one was.
pub(crate) fn authorise_in_depth_order(
    rules: &RoomVersionRules,
    room_id: &RoomId,
    events: &[Arc<Pdu>],
    known: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> (Vec<Arc<Pdu>>, HashMap<OwnedEventId, String>) {
    let given: HashSet<&EventId> = events.iter().map(|p| &*p.event_id).collect();
    let mut order: Vec<&Arc<Pdu>> = events.iter().collect();
    order.sort_by(|a, b| (a.depth, a.origin_server_ts, &a.event_id).cmp(&(b.depth, b.origin_server_ts, &b.event_id)));
    order.dedup_by_key(|p| &p.event_id);
    let create_id = implicit_create_id(rules, room_id);
    let mut accepted: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
    let mut in_order = Vec::new();
    let mut refused = HashMap::new();
    for pdu in order {
        let mut auth = HashMap::new();
        let mut missing = None;
        for id in pdu.auth_events.iter().chain(create_id.as_ref().filter(|c| **c != pdu.event_id)) {
            // Given but not accepted yet: refused, or placed after this one by its depth.
            let event = if given.contains(&**id) { accepted.get(id) } else { known.get(id) };
            match event {
                Some(p) => {
                    auth.insert(id.clone(), p.clone());
                }
                None => missing = Some(id),
            }
        }
        let verdict = match missing {
            Some(id) => Err(format!("its auth event {id} is missing or refused")),
            None => check_auth_events(rules, pdu, &auth),
        };
        match verdict {
            Ok(()) => {
                accepted.insert(pdu.event_id.clone(), pdu.clone());
                in_order.push(pdu.clone());
            }
            Err(reason) => {
                tracing::info!(event_id = %pdu.event_id, %reason, "refused an event another server gave");
                refused.insert(pdu.event_id.clone(), reason);
            }
        }
    }
    (in_order, refused)
}

/// The state and auth chain another server gave with a join, through
/// [`authorise_in_depth_order`]: an error names the first state event refused.
pub(crate) fn check_join_state(
    rules: &RoomVersionRules,
    room_id: &RoomId,
    state: &[Arc<Pdu>],
    auth_chain: &[Arc<Pdu>],
    known: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> Result<()> {
    let events: Vec<Arc<Pdu>> = state.iter().chain(auth_chain).cloned().collect();
    let (_, refused) = authorise_in_depth_order(rules, room_id, &events, known);
    match state.iter().find_map(|p| refused.get(&p.event_id).map(|r| (&p.event_id, r))) {
        Some((id, reason)) => {
            Err(Error::bad_json(format!("The room's state holds an event that fails its rules: {id} ({reason})")))
        }
        None => Ok(()),
    }
}

impl Federation {
    /// Handles one PDU of a transaction from `origin`; answers its event id when it was
    /// accepted (or already known).
    pub async fn receive_pdu(&self, origin: &ServerName, raw: &RawValue) -> Result<OwnedEventId> {
        let object = canonical(raw)?;
        let room_id = room_of(&object)?;
        let meta =
            self.rooms.room_meta(&room_id).await?.ok_or_else(|| Error::not_found("This server is not in the room"))?;
        if !self.rooms.server_in_room(&room_id).await? {
            return Err(Error::not_found("This server is not in the room"));
        }
        self.check_server_acl(&room_id, origin).await?;
        let lock = self.room_lock(&room_id);
        let guard = lock.lock().await;
        let (pdu, _) = self.handle_pdu(origin, &meta.version, object, Placement::Extend, 0).await?;
        drop(guard);
        // Guests of this server leave a room that no longer lets them in, whoever closed it.
        if pdu.kind == TimelineEventType::RoomGuestAccess {
            if let Err(e) = self.rooms.remove_guests(&room_id).await {
                tracing::warn!(%room_id, error = %e, "guests could not leave a room closed to them");
            }
        }
        Ok(pdu.event_id.clone())
    }

    /// Checks and persists a PDU (the room's lock held). Answers the event as stored and the
    /// state before it.
    pub(crate) async fn handle_pdu(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        object: CanonicalJsonObject,
        placement: Placement,
        depth: usize,
    ) -> Result<(Arc<Pdu>, Arc<StateMap<OwnedEventId>>)> {
        let rules =
            version.rules().ok_or_else(|| Error::new(ErrorKind::UnsupportedRoomVersion, "Unknown room version"))?;
        let room_id = room_of(&object)?;
        let event_id = event_id_of(&object, &rules)?;
        if let Some(known) = self.rooms.get_pdu(&event_id).await? {
            if known.in_timeline() {
                let state = self.rooms.state_map(known.state_group).await?;
                return Ok((known, state));
            }
        }
        let object = self.transport.verify_pdu(&object, version).await?;
        let json = serde_json::to_string(&object).map_err(crate::internal!())?;
        let pdu = Pdu::from_received(event_id.clone(), json, Some(room_id.clone()))?;
        if pdu.room_id != room_id {
            return Err(Error::bad_json("PDU of another room"));
        }
        if pdu.kind == TimelineEventType::RoomCreate {
            return Err(Error::forbidden("A create event cannot be added to an existing room"));
        }

        // Missing prev_events first, whatever becomes of this event (as Synapse): one round of
        // `get_missing_events` for an event pushed to this server; the events it brings that miss
        // theirs are placed on the state their sender gives.
        if depth == 0 {
            let mut missing = false;
            for id in &pdu.prev_events {
                missing |= !self.holds_state_after(id).await?;
            }
            if missing {
                self.fill_gap(origin, version, &pdu, depth).await;
            }
        }

        // 4. The auth events, fetched when unknown, and the checks against them.
        // An event whose auth events cannot be had is rejected (it was processed).
        let auth = self
            .own_auth_events(origin, version, &rules, &pdu)
            .await?
            .map_err(|reason| rejection(&event_id, "rejected", reason))?;
        let reject = |reason: String| rejection(&event_id, "rejected", reason);
        // The state before it (asked of `origin` where a gap remains), before any check, as
        // Synapse computes it: a rejected event stays known with that state, for the events
        // that cite it.
        let state_before = Arc::new(self.state_before(origin, version, &pdu, depth).await?);
        if let Err(reason) = check_auth_events(&rules, &pdu, &auth) {
            self.rejected.lock().unwrap().put(event_id.clone(), state_before.clone());
            return Err(reject(reason));
        }

        // 5. The checks against the state before it.
        let loaded = self.auth_state(&state_before, &pdu, &rules).await?;
        let mut refused = state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |k, s| {
            loaded.get(&(k.clone(), s.to_owned())).cloned()
        })
        .err()
        .map(|reason| reason.to_string());
        // A redaction names an event of its own room: one aimed at another room's is refused.
        if let Some(target) = pdu.redacts.as_ref().filter(|_| pdu.kind == TimelineEventType::RoomRedaction) {
            if refused.is_none() && self.rooms.get_pdu(target).await?.is_some_and(|t| t.room_id != room_id) {
                refused = Some(format!("it redacts {target}, an event of another room"));
            }
        }
        if let Some(reason) = refused {
            self.rejected.lock().unwrap().put(event_id.clone(), state_before.clone());
            return Err(reject(reason));
        }

        // 6. The current state: an event it forbids is soft-failed.
        if placement == Placement::Extend {
            let current = self.rooms.current_state(&room_id).await?;
            if *current != *state_before {
                let loaded = self.auth_state(&current, &pdu, &rules).await?;
                if let Err(reason) = state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |k, s| {
                    loaded.get(&(k.clone(), s.to_owned())).cloned()
                }) {
                    // Kept as an outlier: known (and served) as part of the graph, but neither
                    // in the timeline nor in the state.
                    tracing::info!(%event_id, %reason, "soft-failed a received event");
                    let row = (event_id.as_str(), room_id.as_str(), pdu.json.as_str());
                    let mut tx = self.db.begin().await?;
                    store::insert_outliers(&mut tx, &[row]).await?;
                    diplomatie_storage::commit(tx).await?;
                    return Err(rejection(&event_id, "soft-failed", reason));
                }
            }
        }

        let creator = pdu.sender.clone();
        let mut writer = self.rooms.received_writer(&room_id, version, &creator).await?;
        let stored = writer.append_received(pdu, state_before.clone(), placement).await?;
        writer.commit().await?;
        Ok((stored, state_before))
    }

    /// The events among `state` the authorisation rules read for `pdu`.
    pub(crate) async fn auth_state(
        &self,
        state: &StateMap<OwnedEventId>,
        pdu: &Pdu,
        rules: &RoomVersionRules,
    ) -> Result<HashMap<(StateEventType, String), Arc<Pdu>>> {
        let mut keys = state_res::auth_types_for_event(
            &pdu.kind,
            &pdu.sender,
            pdu.state_key.as_deref(),
            &pdu.content,
            &rules.authorization,
        )
        .map_err(Error::bad_json)?;
        keys.push((StateEventType::RoomCreate, String::new()));
        let mut out = HashMap::new();
        for key in keys {
            if let Some(id) = state.get(&key) {
                if let Some(p) = self.rooms.get_pdu(id).await? {
                    out.insert(key, p);
                }
            }
        }
        Ok(out)
    }

    /// The room state before `pdu`: after its prev_events (resolved when they are several),
    /// fetching what is missing from `origin`.
    async fn state_before(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        pdu: &Pdu,
        depth: usize,
    ) -> Result<StateMap<OwnedEventId>> {
        let mut maps = Vec::new();
        for id in &pdu.prev_events {
            match self.known_state_after(id).await? {
                Some(map) => maps.push((*map).clone()),
                // An event pushed here whose history its sender does not give is refused: it
                // could otherwise bring a state of its own making.
                None if depth == 0 => {
                    return Err(rejection(
                        &pdu.event_id,
                        "rejected",
                        format!("its prev_event {id} is unavailable from {origin}"),
                    ))
                }
                None => maps.push(self.state_at_remote_event(origin, version, &pdu.room_id, id).await?),
            }
        }
        match maps.len() {
            0 => Err(Error::bad_json("PDU without prev_events")),
            1 => Ok(maps.pop().expect("one")),
            _ => self.rooms.resolve_states(version, maps).await,
        }
    }

    /// Whether [`Federation::known_state_after`] has `id`'s state, without reading it.
    async fn holds_state_after(&self, id: &ruma::EventId) -> Result<bool> {
        if self.rooms.get_pdu(id).await?.is_some_and(|p| p.in_timeline()) {
            return Ok(true);
        }
        Ok(self.rejected.lock().unwrap().contains(id))
    }

    /// The state after an event of the room's graph this server holds: in the timeline, or
    /// rejected lately (whose state after is the state before it).
    async fn known_state_after(&self, id: &ruma::EventId) -> Result<Option<Arc<StateMap<OwnedEventId>>>> {
        if let Some(p) = self.rooms.get_pdu(id).await?.filter(|p| p.in_timeline()) {
            return Ok(Some(self.rooms.state_map(p.state_group).await?));
        }
        Ok(self.rejected.lock().unwrap().get(id).cloned())
    }

    /// Asks `origin` for the events between the room's extremities and `pdu`, and handles
    /// them oldest first. Failures leave the gap to `state_at_remote_event`.
    async fn fill_gap(&self, origin: &ServerName, version: &RoomVersionId, pdu: &Pdu, depth: usize) {
        let Ok(meta) = self.rooms.known_room(&pdu.room_id).await else { return };
        let mut request = get_missing_events::v1::Request::new(
            pdu.room_id.clone(),
            meta.extremities.clone(),
            vec![pdu.event_id.clone()],
        );
        request.limit = 20u32.into();
        let events = match self.transport.federation_request(origin, request).await {
            Ok(r) => r.events,
            Err(e) => {
                tracing::info!(error = %e, "get_missing_events failed");
                return;
            }
        };
        let mut objects: Vec<CanonicalJsonObject> = events.iter().filter_map(|r| canonical(r).ok()).collect();
        objects.sort_by_key(|o| match o.get("depth") {
            Some(ruma::CanonicalJsonValue::Integer(i)) => i64::from(*i),
            _ => 0,
        });
        let rules = version.rules();
        for object in objects {
            if room_of(&object).ok().as_deref() != Some(&*pdu.room_id) {
                continue;
            }
            // The event being handled comes back among them (Sytest's server, with its
            // `latest_events`): it is handled once, by its caller.
            if rules.as_ref().and_then(|r| event_id_of(&object, r).ok()).is_some_and(|id| id == pdu.event_id) {
                continue;
            }
            if let Err(e) = Box::pin(self.handle_pdu(origin, version, object, Placement::Extend, depth + 1)).await {
                tracing::info!(error = %e, "a missing event was not accepted");
            }
        }
    }

    /// The state after an event this server does not have in its timeline, as `origin` says
    /// (`state_ids`), its events fetched and kept as outliers.
    async fn state_at_remote_event(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        room_id: &RoomId,
        event_id: &ruma::EventId,
    ) -> Result<StateMap<OwnedEventId>> {
        let request = get_room_state_ids::v1::Request::new(event_id.to_owned(), room_id.to_owned());
        let response = self.transport.federation_request(origin, request).await?;
        let rules = version.rules().ok_or_else(crate::internal!("a value present by construction"))?;
        let mut map = StateMap::new();
        for id in response.pdu_ids.iter().chain(std::iter::once(&event_id.to_owned())) {
            let event = match self.rooms.get_pdu(id).await? {
                Some(p) => p,
                None => self.fetch_outlier(origin, version, room_id, id).await?,
            };
            let Some(sk) = &event.state_key else { continue };
            // A state event its own auth events do not allow is left out, as Synapse rejects
            // it: a made-up state (power levels of the sender's making) cannot enter this way.
            // Events of the timeline passed these checks when they came.
            if !event.in_timeline() {
                let refused = match self.own_auth_events(origin, version, &rules, &event).await? {
                    Ok(auth) => check_auth_events(&rules, &event, &auth).err(),
                    Err(reason) => Some(reason),
                };
                if let Some(reason) = refused {
                    tracing::info!(event = %id, %reason, "a state event another server gave is left out");
                    continue;
                }
            }
            map.insert((StateEventType::from(event.kind.to_string()), sk.clone()), id.clone());
        }
        // `state_ids` gives the state before the event; the event itself completes it.
        Ok(map)
    }

    /// An event's own auth events, with the room's create event since v12 (where it is not
    /// among them), fetched from `origin` where this server does not hold them (step 4 of the
    /// checks on receipt); `Ok(Err(reason))` when one cannot be had.
    async fn own_auth_events(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) -> Result<std::result::Result<HashMap<OwnedEventId, Arc<Pdu>>, String>> {
        let create_id = implicit_create_id(rules, &pdu.room_id).filter(|c| *c != pdu.event_id);
        let mut auth = HashMap::new();
        for id in pdu.auth_events.iter().chain(&create_id) {
            if auth.contains_key(id) {
                continue;
            }
            let event = match self.rooms.get_pdu(id).await? {
                Some(p) => p,
                None => match self.fetch_outlier(origin, version, &pdu.room_id, id).await {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(format!("its auth event {id} is unavailable: {e}"))),
                },
            };
            auth.insert(id.clone(), event);
        }
        Ok(Ok(auth))
    }

    /// Fetches one event from `origin`, checks its signatures, and keeps it as an outlier.
    pub(crate) async fn fetch_outlier(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        room_id: &RoomId,
        event_id: &ruma::EventId,
    ) -> Result<Arc<Pdu>> {
        let response =
            self.transport.federation_request(origin, get_event::v1::Request::new(event_id.to_owned())).await?;
        let object = canonical(&response.pdu)?;
        let mut stored = self.store_outliers(version, room_id, vec![object]).await?;
        let pdu = stored.pop().ok_or_else(|| Error::bad_json("No event"))?;
        if pdu.event_id != event_id {
            return Err(Error::bad_json(format!("{origin} answered another event than {event_id}")));
        }
        Ok(pdu)
    }

    /// Checks signatures and hashes of events known outside the timeline (a join's state, auth
    /// events), then stores them as outliers.
    pub(crate) async fn store_outliers(
        &self,
        version: &RoomVersionId,
        room_id: &RoomId,
        objects: Vec<CanonicalJsonObject>,
    ) -> Result<Vec<Arc<Pdu>>> {
        let pdus = self.verify_outliers(version, room_id, objects).await?;
        self.persist_outliers(&pdus).await?;
        Ok(pdus)
    }

    /// The events of `objects` whose signatures hold (those that do not are left out; one
    /// whose content hash does not hold is kept redacted), each once.
    pub(crate) async fn verify_outliers(
        &self,
        version: &RoomVersionId,
        room_id: &RoomId,
        objects: Vec<CanonicalJsonObject>,
    ) -> Result<Vec<Arc<Pdu>>> {
        let rules = version.rules().ok_or_else(crate::internal!("a value present by construction"))?;
        let mut pdus = Vec::new();
        let mut seen = HashSet::new();
        for object in objects {
            let event_id = event_id_of(&object, &rules)?;
            if !seen.insert(event_id.clone()) {
                continue;
            }
            // An event whose signature does not hold is left out, as Synapse leaves it out: if
            // the state or the auth chain needs it, the checks that follow find it missing.
            let object = match self.transport.verify_pdu(&object, version).await {
                Ok(object) => object,
                Err(Error::Matrix(ErrorKind::Forbidden, reason)) => {
                    tracing::warn!(event = %event_id, reason, "an event of a state or auth chain left out");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut value = serde_json::to_value(&object).map_err(crate::internal!())?;
            if let Some(o) = value.as_object_mut() {
                o.remove("unsigned");
            }
            let json = serde_json::to_string(&value).map_err(crate::internal!())?;
            let pdu = Pdu::from_received(event_id, json, Some(room_id.to_owned()))?;
            if pdu.room_id != room_id {
                return Err(Error::bad_json("An event of another room"));
            }
            pdus.push(Arc::new(pdu));
        }
        Ok(pdus)
    }

    pub(crate) async fn persist_outliers(&self, pdus: &[Arc<Pdu>]) -> Result<()> {
        let rows: Vec<(&str, &str, &str)> =
            pdus.iter().map(|p| (p.event_id.as_str(), p.room_id.as_str(), p.json.as_str())).collect();
        let mut tx = self.db.begin().await?;
        store::insert_outliers(&mut tx, &rows).await?;
        Ok(diplomatie_storage::commit(tx).await?)
    }

    /// The state and auth chain another server gave with a join, checked by
    /// [`check_join_state`] (auth events neither given nor known here count as missing).
    pub(crate) async fn check_join_state(
        &self,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        state: &[Arc<Pdu>],
        auth_chain: &[Arc<Pdu>],
    ) -> Result<()> {
        let given: HashSet<&EventId> = state.iter().chain(auth_chain).map(|p| &*p.event_id).collect();
        let mut known = HashMap::new();
        for id in state.iter().chain(auth_chain).flat_map(|p| &p.auth_events) {
            if !given.contains(&**id) && !known.contains_key(id) {
                if let Some(p) = self.rooms.get_pdu(id).await?.filter(|p| p.in_timeline()) {
                    known.insert(id.clone(), p);
                }
            }
        }
        check_join_state(rules, room_id, state, auth_chain, &known)
    }
}

/// The error of an event the authorisation rules refused (`rejected`), or that the room's
/// current state forbids (`soft-failed`): the event was processed, and is not taken.
fn rejection(event_id: &EventId, how: &str, reason: impl std::fmt::Display) -> Error {
    Error::forbidden(format!("Event {event_id} {how}: {reason}"))
}

/// Whether `e` is a [`rejection`]: a processed event, which `/send` answers with an empty result
/// as other servers expect (an error there means the event could not be processed).
pub(crate) fn is_rejection(e: &Error) -> bool {
    matches!(e, Error::Matrix(ruma::api::error::ErrorKind::Forbidden, m)
        if m.starts_with("Event ") && (m.contains(" rejected: ") || m.contains(" soft-failed: ")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// An event of room `!r:a.test` (version 10), its auth events and depth given.
    fn event(
        id: &str,
        kind: &str,
        sender: &str,
        state_key: &str,
        content: serde_json::Value,
        auth: &[&str],
        depth: u64,
    ) -> Arc<Pdu> {
        let json = json!({
            "room_id": "!r:a.test", "type": kind, "sender": sender, "state_key": state_key,
            "content": content, "auth_events": auth, "prev_events": auth, "depth": depth,
            "origin_server_ts": depth,
        });
        Arc::new(
            Pdu::from_json(id.try_into().unwrap(), json.to_string(), Some("!r:a.test".try_into().unwrap())).unwrap(),
        )
    }

    #[test]
    fn a_join_state_that_breaks_the_rules_is_refused() {
        let rules = RoomVersionId::V10.rules().unwrap();
        let room: OwnedRoomId = "!r:a.test".try_into().unwrap();
        let alice = "@alice:a.test";
        let create =
            event("$create", "m.room.create", alice, "", json!({ "creator": alice, "room_version": "10" }), &[], 1);
        let join = event("$join", "m.room.member", alice, alice, json!({ "membership": "join" }), &["$create"], 2);
        let pl = event(
            "$pl",
            "m.room.power_levels",
            alice,
            "",
            json!({ "users": { alice: 100 } }),
            &["$create", "$join"],
            3,
        );
        let rules_ev = event(
            "$jr",
            "m.room.join_rules",
            alice,
            "",
            json!({ "join_rule": "invite" }),
            &["$create", "$join", "$pl"],
            4,
        );
        let state = vec![create.clone(), join.clone(), pl.clone(), rules_ev.clone()];
        let known = HashMap::new();
        check_join_state(&rules, &room, &state, &state, &known).unwrap();

        // Mallory joins an invite-only room uninvited: the resident server's state is refused.
        let mallory = "@mallory:evil.test";
        let intruder = event(
            "$mallory",
            "m.room.member",
            mallory,
            mallory,
            json!({ "membership": "join" }),
            &["$create", "$jr", "$pl"],
            5,
        );
        let mut bad = state.clone();
        bad.push(intruder.clone());
        let e = check_join_state(&rules, &room, &bad, &state, &known).unwrap_err();
        assert!(e.to_string().contains("$mallory"), "{e}");

        // What builds on a refused event is refused with it.
        let power = event(
            "$pl2",
            "m.room.power_levels",
            mallory,
            "",
            json!({ "users": { mallory: 100 } }),
            &["$create", "$mallory", "$pl"],
            6,
        );
        let mut chain = state.clone();
        chain.push(intruder);
        let e =
            check_join_state(&rules, &room, &[create.clone(), join.clone(), power, rules_ev.clone()], &chain, &known)
                .unwrap_err();
        assert!(e.to_string().contains("$pl2"), "{e}");

        // An auth event that is neither given nor known here is missing.
        let e = check_join_state(&rules, &room, std::slice::from_ref(&join), &[], &known).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let known = HashMap::from([(create.event_id.clone(), create)]);
        check_join_state(&rules, &room, &[join], &[], &known).unwrap();
    }
}
