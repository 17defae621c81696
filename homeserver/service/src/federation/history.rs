//! What other servers read of a room: events, the state at an event, auth chains, backfill and
//! missing events. Only servers with a member in the room (or a world-readable room) may read.

use std::{
    collections::{BinaryHeap, HashSet},
    sync::Arc,
};

use ruma::{
    api::federation::directory::get_public_rooms_filtered, events::StateEventType, state_res::StateMap, OwnedEventId,
    RoomId, ServerName,
};

use super::Federation;
use crate::{Error, Pdu, Result};

impl Federation {
    /// The room's event closest to `ts` this server holds (`timestamp_to_event`): the last at or
    /// before it, or with `forward` the first at or after it, among stream positions up to
    /// `until`.
    pub async fn event_at_timestamp(
        &self,
        room_id: &RoomId,
        ts: i64,
        forward: bool,
        until: i64,
    ) -> Result<Option<(OwnedEventId, i64)>> {
        let found =
            diplomatie_storage::events::event_at_timestamp(self.db.pool(), room_id.as_str(), ts, forward, until)
                .await?;
        Ok(found.and_then(|(id, ts)| OwnedEventId::try_from(id).ok().map(|id| (id, ts))))
    }

    /// [`Self::event_at_timestamp`] asked of the other servers in the room, in turn, when this
    /// one holds none (its history may start later than theirs).
    pub async fn remote_event_at_timestamp(
        &self,
        room_id: &RoomId,
        ts: i64,
        forward: bool,
    ) -> Result<Option<(OwnedEventId, i64)>> {
        use ruma::api::{federation::event::get_event_by_timestamp, Direction};
        if !self.transport.federation_enabled() {
            return Ok(None);
        }
        let dir = if forward { Direction::Forward } else { Direction::Backward };
        let at = ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::try_from(ts.max(0)).unwrap_or_default());
        for server in self.rooms.servers_in_room(room_id).await? {
            if server == self.server_name() {
                continue;
            }
            let request = get_event_by_timestamp::v1::Request::new(room_id.to_owned(), at, dir);
            match self.transport.federation_request(&server, request).await {
                Ok(answer) => return Ok(Some((answer.event_id, i64::from(answer.origin_server_ts.get())))),
                Err(e) => tracing::debug!(%server, error = %e, "no event at that time there"),
            }
        }
        Ok(None)
    }

    /// Refuses `origin` unless one of its users is (or was) a member of the room, or the room
    /// is world-readable; and if the room's server ACL denies it.
    pub async fn check_origin_may_read(&self, room_id: &RoomId, origin: &ServerName) -> Result<()> {
        self.rooms.room_meta(room_id).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
        self.check_server_acl(room_id, origin).await?;
        let state = self.rooms.current_state(room_id).await?;
        let member = state.keys().any(|(kind, key)| {
            *kind == StateEventType::RoomMember
                && <&ruma::UserId>::try_from(key.as_str()).is_ok_and(|u| u.server_name() == origin)
        });
        if member {
            return Ok(());
        }
        let readable = self
            .rooms
            .state_event_in(&state, &StateEventType::RoomHistoryVisibility, "")
            .await?
            .and_then(|p| p.content_field("history_visibility"))
            .is_some_and(|v| v == "world_readable");
        if readable {
            Ok(())
        } else {
            Err(Error::forbidden(format!("{origin} is not in the room")))
        }
    }

    /// An event of the timeline (or an outlier) `origin` may read.
    pub async fn event_for_server(&self, origin: &ServerName, event_id: &ruma::EventId) -> Result<Arc<Pdu>> {
        let pdu = self.rooms.get_pdu(event_id).await?.ok_or_else(|| Error::not_found("Unknown event"))?;
        self.check_origin_may_read(&pdu.room_id, origin).await?;
        self.rooms.for_federation(pdu).await
    }

    /// The room state before `event_id` (the state after its prev_events).
    pub async fn state_before_event(
        &self,
        room_id: &RoomId,
        event_id: &ruma::EventId,
    ) -> Result<StateMap<OwnedEventId>> {
        let pdu = self
            .rooms
            .get_pdu(event_id)
            .await?
            .filter(|p| p.room_id == room_id && p.in_timeline())
            .ok_or_else(|| Error::not_found("Unknown event"))?;
        if pdu.state_key.is_none() {
            return Ok((*self.rooms.state_map(pdu.state_group).await?).clone());
        }
        let meta = self.rooms.known_room(room_id).await?;
        let mut maps = Vec::new();
        for prev in &pdu.prev_events {
            if let Some(p) = self.rooms.get_pdu(prev).await?.filter(|p| p.in_timeline()) {
                maps.push((*self.rooms.state_map(p.state_group).await?).clone());
            }
        }
        match maps.len() {
            0 => Ok(StateMap::new()),
            1 => Ok(maps.pop().expect("one")),
            _ => self.rooms.resolve_states(&meta.version, maps).await,
        }
    }

    /// Events before `from` (inclusive), newest first along prev_events, at most `limit`.
    pub async fn backfill_events(
        &self,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<Arc<Pdu>>> {
        let mut events = Vec::new();
        for pdu in self.walk_back(room_id, from, &HashSet::new(), limit, 0).await? {
            events.push(self.rooms.for_federation(pdu).await?);
        }
        Ok(events)
    }

    /// `get_missing_events`: events between `earliest` (excluded) and `latest` (excluded), at
    /// most `limit`, not below `min_depth`, oldest first.
    pub async fn missing_events(
        &self,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<Arc<Pdu>>> {
        let mut starts = Vec::new();
        for id in latest {
            if let Some(p) = self.rooms.get_pdu(id).await?.filter(|p| p.room_id == room_id) {
                starts.extend(p.prev_events.iter().cloned());
            }
        }
        let stop: HashSet<OwnedEventId> = earliest.iter().cloned().chain(latest.iter().cloned()).collect();
        let mut events = Vec::new();
        for pdu in self.walk_back(room_id, &starts, &stop, limit, min_depth).await? {
            events.push(self.rooms.for_federation(pdu).await?);
        }
        events.reverse();
        Ok(events)
    }

    /// Walks prev_events from `starts`, deepest first, skipping `stop`.
    async fn walk_back(
        &self,
        room_id: &RoomId,
        starts: &[OwnedEventId],
        stop: &HashSet<OwnedEventId>,
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<Arc<Pdu>>> {
        let mut heap: BinaryHeap<(u64, OwnedEventId)> = BinaryHeap::new();
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut out = Vec::new();
        for id in starts {
            if let Some(p) = self.rooms.get_pdu(id).await? {
                heap.push((u64::from(p.depth), id.clone()));
            }
        }
        while let Some((_, id)) = heap.pop() {
            if out.len() >= limit {
                break;
            }
            if stop.contains(&id) || !seen.insert(id.clone()) {
                continue;
            }
            let Some(p) = self.rooms.get_pdu(&id).await? else { continue };
            if p.room_id != room_id || !p.in_timeline() || u64::from(p.depth) < min_depth {
                continue;
            }
            for prev in &p.prev_events {
                if let Some(pp) = self.rooms.get_pdu(prev).await? {
                    heap.push((u64::from(pp.depth), prev.clone()));
                }
            }
            out.push(p);
        }
        Ok(out)
    }
}

impl Federation {
    /// Another server's public room directory (`publicRooms` over federation), as the
    /// client-server API answers it.
    pub async fn remote_public_rooms(
        &self,
        server: &ServerName,
        term: Option<String>,
        since: Option<String>,
        limit: Option<ruma::UInt>,
    ) -> Result<get_public_rooms_filtered::v1::Response> {
        let mut request = get_public_rooms_filtered::v1::Request::new();
        request.filter.generic_search_term = term;
        request.since = since;
        request.limit = limit;
        self.transport.federation_request(server, request).await
    }
}
