//! History older than what this server holds of a room (server-server spec, "Backfilling"):
//! when a client paginates back to the oldest event here, the room's other servers are asked
//! for the events before it (`/backfill`).
//!
//! Each event is checked as on receipt, as far as history allows: signatures and content hash
//! (an altered event is kept redacted), then authorisation against its own auth events (those
//! not known here are fetched). The state before the oldest one comes from `/state` (checked
//! like a join's); from there each event's state is the one before it plus itself. Events that
//! fail are left out; the rest are stored below every stream position of the room
//! (`Rooms::store_backfilled`), so that only backward pagination reads them.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    api::federation::{
        backfill::get_backfill,
        event::{get_room_state, get_room_state_ids},
    },
    events::StateEventType,
    state_res::StateMap,
    OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName, UInt,
};
use serde_json::value::RawValue;

use super::inbound::{authorise_in_depth_order, canonical, event_id_of, implicit_create_id, room_of};
use super::Federation;
use crate::{Pdu, Result};

/// The state and auth chain events a backfill fetches one by one at most (by `/state_ids`;
/// beyond, the whole state is asked for at once).
const MAX_STATE_FETCHED: usize = 500;

/// The events asked for at once.
const MAX_BACKFILL: usize = 100;

impl Federation {
    /// Asks the room's other servers for up to [`MAX_BACKFILL`] events before the oldest one held here;
    /// answers how many were added. A failure of theirs adds nothing and is not an error.
    pub(crate) async fn backfill(&self, room_id: &RoomId) -> Result<usize> {
        if !self.transport.federation_enabled() {
            return Ok(0);
        }
        let Some(meta) = self.rooms.room_meta(room_id).await? else { return Ok(0) };
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let pool = self.db.pool();
        let Some(oldest) = diplomatie_storage::events::oldest_room_event(pool, room_id.as_str()).await? else {
            return Ok(0);
        };
        let oldest = Pdu::from_stored(oldest)?;
        let mut missing = Vec::new();
        for prev in &oldest.prev_events {
            if !self.rooms.get_pdu(prev).await?.is_some_and(|p| p.in_timeline()) {
                missing.push(prev.clone());
            }
        }
        if missing.is_empty() {
            return Ok(0);
        }
        let servers: Vec<OwnedServerName> = self
            .rooms
            .servers_in_room(room_id)
            .await?
            .into_iter()
            .filter(|s| s != self.server_name() && self.transport.check_server_allowed(s).is_ok())
            .collect();
        // As many as a request may bring (Synapse asks 100 too): a batch that reaches the
        // room's creation needs no state from the other server.
        let limit = UInt::new_saturating(MAX_BACKFILL as u64);
        for server in servers.iter().take(3) {
            let request = get_backfill::v1::Request::new(room_id.to_owned(), missing.clone(), limit);
            let pdus = match self.transport.federation_request(server, request).await {
                Ok(answer) => answer.pdus,
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "backfill failed");
                    continue;
                }
            };
            match self.take_backfilled(server, &meta.version, room_id, &pdus).await {
                Ok(n) => {
                    tracing::info!(%room_id, %server, events = n, "backfilled");
                    return Ok(n);
                }
                Err(e) => tracing::info!(%room_id, %server, error = %e, "backfilled events refused"),
            }
        }
        Ok(0)
    }

    /// Checks and stores what `server` answered to `/backfill`; answers how many were kept.
    async fn take_backfilled(
        &self,
        server: &ServerName,
        version: &RoomVersionId,
        room_id: &RoomId,
        pdus: &[Box<RawValue>],
    ) -> Result<usize> {
        let rules = version.rules().ok_or_else(crate::internal!("a value present by construction"))?;
        let create_id = implicit_create_id(&rules, room_id);
        let mut batch: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        for raw in pdus {
            let Ok(object) = canonical(raw) else { continue };
            let event_id = event_id_of(&object, &rules)?;
            let of_room = match room_of(&object) {
                Ok(r) => r == room_id,
                Err(_) => create_id.as_ref() == Some(&event_id),
            };
            if !of_room {
                continue;
            }
            if batch.contains_key(&event_id) || self.rooms.get_pdu(&event_id).await?.is_some_and(|p| p.in_timeline()) {
                continue;
            }
            let object = match self.transport.verify_pdu(&object, version).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::info!(%event_id, error = %e, "backfilled event refused");
                    continue;
                }
            };
            let json = serde_json::to_string(&object).map_err(crate::internal!())?;
            let pdu = Pdu::from_received(event_id.clone(), json, Some(room_id.to_owned()))?;
            batch.insert(event_id, Arc::new(pdu));
        }
        // Authorisation against each event's own auth events: the batch's, those held here, or
        // fetched from `server`.
        let mut wanted: Vec<OwnedEventId> = batch.values().flat_map(|p| p.auth_events.iter().cloned()).collect();
        wanted.extend(create_id);
        let mut known = HashMap::new();
        for id in &wanted {
            if batch.contains_key(id) || known.contains_key(id) {
                continue;
            }
            let event = match self.rooms.get_pdu(id).await? {
                Some(p) => Some(p),
                None => self.fetch_outlier(server, version, room_id, id).await.ok(),
            };
            if let Some(p) = event {
                known.insert(id.clone(), p);
            }
        }
        let events: Vec<Arc<Pdu>> = batch.into_values().collect();
        let (accepted, _) = authorise_in_depth_order(&rules, room_id, &events, &known);
        let Some(first) = accepted.first() else { return Ok(0) };

        // The state before the oldest: nothing before the create event, else as `server` says.
        let state_before = if first.prev_events.is_empty() {
            StateMap::new()
        } else {
            self.remote_state_before(server, version, first).await?
        };
        let events: Vec<Pdu> = accepted.iter().map(|p| (**p).clone()).collect();
        let stored = self.rooms.store_backfilled(room_id, state_before, events).await?;
        Ok(stored.len())
    }

    /// The events `ids`: those held here, the others fetched from `server` (and kept).
    async fn held_or_fetched(
        &self,
        server: &ServerName,
        version: &RoomVersionId,
        room_id: &RoomId,
        ids: &[OwnedEventId],
    ) -> Result<Vec<Arc<Pdu>>> {
        let mut events = Vec::new();
        for id in ids {
            match self.rooms.get_pdu(id).await? {
                Some(p) if p.room_id == room_id => events.push(p),
                Some(_) => return Err(crate::Error::bad_json(format!("{server} named an event of another room"))),
                None => events.push(self.fetch_outlier(server, version, room_id, id).await?),
            }
        }
        Ok(events)
    }

    /// The room state before `pdu` as `server` gives it, its events checked like a join's
    /// state and kept as outliers: by their ids (`/state_ids`, as Synapse asks), fetching only
    /// the events not held here, else whole (`/state`).
    async fn remote_state_before(
        &self,
        server: &ServerName,
        version: &RoomVersionId,
        pdu: &Pdu,
    ) -> Result<StateMap<OwnedEventId>> {
        let rules = version.rules().ok_or_else(crate::internal!("a value present by construction"))?;
        let room_id = &pdu.room_id;
        let by_ids = get_room_state_ids::v1::Request::new(pdu.event_id.clone(), room_id.clone());
        let (state, auth_chain) = match self.transport.federation_request(server, by_ids).await {
            Ok(ids) if ids.pdu_ids.len() + ids.auth_chain_ids.len() <= MAX_STATE_FETCHED => {
                let state = self.held_or_fetched(server, version, room_id, &ids.pdu_ids).await?;
                (state, self.held_or_fetched(server, version, room_id, &ids.auth_chain_ids).await?)
            }
            _ => {
                let request = get_room_state::v1::Request::new(pdu.event_id.clone(), room_id.clone());
                let answer = self.transport.federation_request(server, request).await?;
                let objects = |raws: &[Box<RawValue>]| raws.iter().map(|r| canonical(r)).collect::<Result<Vec<_>>>();
                let state = self.verify_outliers(version, room_id, objects(&answer.pdus)?).await?;
                (state, self.verify_outliers(version, room_id, objects(&answer.auth_chain)?).await?)
            }
        };
        self.check_join_state(&rules, room_id, &state, &auth_chain).await?;
        self.persist_outliers(&state).await?;
        self.persist_outliers(&auth_chain).await?;
        Ok(state
            .iter()
            .filter_map(|p| {
                Some(((StateEventType::from(p.kind.to_string()), p.state_key.clone()?), p.event_id.clone()))
            })
            .collect())
    }
}
