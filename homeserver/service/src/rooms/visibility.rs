//! What a user may read of a room: history visibility at each event, how far a member who
//! left reads, and pages of visible events (what `/messages`, `/context`, search and `/sync`
//! read through).

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use diplomatie_storage::events as ev_store;
use ruma::events::room::member::MembershipState;
use ruma::{
    api::client::membership::joined_members,
    events::{StateEventType, TimelineEventType},
    EventId, OwnedUserId, RoomId, UserId,
};

use super::Rooms;
use crate::{Error, Pdu, Result};

/// A filter on room events (`RoomEventFilter`), with the fields the server applies.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct EventFilter {
    pub limit: Option<u64>,
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub contains_url: Option<bool>,
    pub lazy_load_members: bool,
    pub include_redundant_members: bool,
    /// Notification counts per thread in `/sync` (`unread_thread_notifications`).
    pub unread_thread_notifications: bool,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
}

fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

impl EventFilter {
    /// Whether the filter picks events by type, sender or URL (not only by number).
    pub fn selects_events(&self) -> bool {
        self.types.is_some()
            || !self.not_types.is_empty()
            || self.senders.is_some()
            || !self.not_senders.is_empty()
            || self.contains_url.is_some()
    }

    /// Whether the filter's `types` and `not_types` let an event of this type through (what
    /// applies to events without a sender, such as account data).
    pub fn allows_type(&self, kind: &str) -> bool {
        self.types.as_ref().is_none_or(|types| types.iter().any(|t| type_matches(t, kind)))
            && !self.not_types.iter().any(|t| type_matches(t, kind))
    }

    pub fn allows(&self, pdu: &Pdu) -> bool {
        if !self.allows_type(&pdu.kind.to_string()) {
            return false;
        }
        if let Some(senders) = &self.senders {
            if !senders.iter().any(|s| s == pdu.sender.as_str()) {
                return false;
            }
        }
        if self.not_senders.iter().any(|s| s == pdu.sender.as_str()) {
            return false;
        }
        if let Some(want) = self.contains_url {
            let has = pdu.content_field("url").is_some_and(|u| u.is_string());
            if has != want {
                return false;
            }
        }
        true
    }
}

/// Stream positions to read between (`from < position <= to`), in one direction.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub from: i64,
    pub to: i64,
    pub backwards: bool,
    pub limit: usize,
}

impl Rooms {
    /// Whether `user` may see `pdu`, by the history visibility at the event. A change of the
    /// history visibility itself is seen by whoever the visibility before it or after it lets
    /// see it (client-server spec, "Room History Visibility").
    pub async fn can_see_event(&self, user: &UserId, pdu: &Pdu) -> Result<bool> {
        let state = self.state_map(pdu.state_group).await?;
        if self.visible_under(user, pdu, &state).await? {
            return Ok(true);
        }
        if pdu.kind == TimelineEventType::RoomHistoryVisibility && pdu.state_key.as_deref() == Some("") {
            let before = self.state_at_position(pdu.room(), pdu.stream_ordering - 1).await?;
            return self.visible_under(user, pdu, &before).await;
        }
        Ok(false)
    }

    /// Whether `user` may see `pdu` under the history visibility and membership of `state`.
    async fn visible_under(
        &self,
        user: &UserId,
        pdu: &Pdu,
        state: &super::StateMap<ruma::OwnedEventId>,
    ) -> Result<bool> {
        let visibility = self
            .state_event_in(state, &StateEventType::RoomHistoryVisibility, "")
            .await?
            .and_then(|p| p.content_field("history_visibility"))
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "shared".into());
        if visibility == "world_readable" {
            return Ok(true);
        }
        // Users always see their own membership changes (their invite, join, leave, ban).
        if pdu.kind == TimelineEventType::RoomMember && pdu.state_key.as_deref() == Some(user.as_str()) {
            return Ok(true);
        }
        let at_event =
            self.state_event_in(state, &StateEventType::RoomMember, user.as_str()).await?.and_then(|p| p.membership());
        if at_event == Some(MembershipState::Join) {
            return Ok(true);
        }
        match visibility.as_str() {
            "shared" => Ok(self.is_joined(pdu.room(), user).await?),
            "invited" => Ok(at_event == Some(MembershipState::Invite)
                || self.is_joined(pdu.room(), user).await? && at_event.is_some()),
            _ => Ok(false),
        }
    }

    /// `user`'s membership in the room right after `pdu` (`None`: never a member by then).
    pub async fn membership_at(&self, user: &UserId, pdu: &Pdu) -> Result<Option<MembershipState>> {
        let state = self.state_map(pdu.state_group).await?;
        Ok(self.state_event_in(&state, &StateEventType::RoomMember, user.as_str()).await?.and_then(|p| p.membership()))
    }

    /// The highest stream position of the room `user` may read: everything while joined, up
    /// to their leave otherwise. `M_FORBIDDEN` for users never in the room and for banned ones,
    /// unless it is world readable.
    pub async fn readable_until(&self, user: &UserId, room_id: &RoomId) -> Result<i64> {
        self.known_room(room_id).await?;
        let Some(member) = self.state_event(room_id, &StateEventType::RoomMember, user.as_str()).await? else {
            if self.is_world_readable(room_id).await? {
                return Ok(self.stream_position());
            }
            return Err(Error::forbidden("You are not a member of this room"));
        };
        match member.membership() {
            Some(MembershipState::Join) => Ok(self.stream_position()),
            // As Synapse: a user who left reads the room as it was then, a banned one no more
            // (unless anyone may).
            Some(MembershipState::Ban) if !self.is_world_readable(room_id).await? => {
                Err(Error::forbidden("You are banned from this room"))
            }
            Some(MembershipState::Invite | MembershipState::Knock) if !self.is_world_readable(room_id).await? => {
                Ok(member.stream_ordering)
            }
            _ => Ok(member.stream_ordering),
        }
    }

    pub async fn is_world_readable(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self
            .state_event(room_id, &StateEventType::RoomHistoryVisibility, "")
            .await?
            .and_then(|p| p.content_field("history_visibility"))
            .is_some_and(|v| v == "world_readable"))
    }

    /// `GET /rooms/{roomId}/event/{eventId}`.
    pub async fn event_for_user(&self, user: &UserId, room_id: &RoomId, event_id: &EventId) -> Result<Arc<Pdu>> {
        let until = self.readable_until(user, room_id).await?;
        let pdu = self
            .get_pdu(event_id)
            .await?
            .filter(|p| p.room() == room_id)
            .ok_or_else(|| Error::not_found("Event not found"))?;
        // Outliers (state a join brought, soft-failed events) are not in the room's timeline.
        if !pdu.in_timeline() || pdu.stream_ordering > until || !self.can_see_event(user, &pdu).await? {
            return Err(Error::not_found("Event not found"));
        }
        Ok(pdu)
    }

    /// Reads a page of the events `viewer` may see between stream positions (every event for
    /// `None`: an administrator's view, whatever their membership); answers the position the
    /// next page starts from, when there is one.
    pub(crate) async fn visible_page(
        &self,
        viewer: Option<&UserId>,
        room_id: &RoomId,
        window: Window,
        filter: &EventFilter,
    ) -> Result<(Vec<Arc<Pdu>>, Option<i64>)> {
        let Window { from, to, backwards, limit } = window;
        let mut out = Vec::new();
        let (mut lo, mut hi) = (from, to);
        // Read in batches until the page is full, skipping what the filter or visibility hides.
        loop {
            let batch =
                ev_store::room_events(self.db.pool(), room_id.as_str(), lo, hi, backwards, (limit * 2).max(20) as i64)
                    .await?;
            let exhausted = batch.len() < (limit * 2).max(20);
            let mut last = None;
            for stored in batch {
                let so = stored.stream_ordering;
                last = Some(so);
                let pdu = match self
                    .get_pdu(<&EventId>::try_from(stored.event_id.as_str()).map_err(crate::internal!())?)
                    .await?
                {
                    Some(p) => p,
                    None => continue,
                };
                let visible = match viewer {
                    Some(user) => self.can_see_event(user, &pdu).await?,
                    None => true,
                };
                if filter.allows(&pdu) && visible {
                    out.push(pdu);
                    if out.len() >= limit {
                        let next = if backwards { so - 1 } else { so };
                        return Ok((out, Some(next)));
                    }
                }
            }
            match last {
                Some(so) if !exhausted => {
                    if backwards {
                        hi = so - 1;
                    } else {
                        lo = so;
                    }
                }
                _ => return Ok((out, None)),
            }
        }
    }

    /// Up to `before` visible events before `event` (newest first) and `after` after it, and
    /// the tokens that continue each way (the `event_context` of search results).
    pub(crate) async fn events_around(
        &self,
        user: &UserId,
        event: &Pdu,
        before: usize,
        after: usize,
    ) -> Result<(Vec<Arc<Pdu>>, Vec<Arc<Pdu>>, String, String)> {
        let room_id = event.room();
        let until = self.readable_until(user, room_id).await?;
        let filter = EventFilter::default();
        let so = event.stream_ordering;
        let (b, b_next) = if before > 0 {
            let window = Window { from: 0, to: so - 1, backwards: true, limit: before };
            self.visible_page(Some(user), room_id, window, &filter).await?
        } else {
            (Vec::new(), None)
        };
        let (a, a_next) = if after > 0 {
            self.visible_page(
                Some(user),
                room_id,
                Window { from: so, to: until, backwards: false, limit: after },
                &filter,
            )
            .await?
        } else {
            (Vec::new(), None)
        };
        let start = b_next.unwrap_or(b.last().map_or(so - 1, |e| e.stream_ordering - 1));
        let end = a_next.unwrap_or(a.last().map_or(so, |e| e.stream_ordering));
        Ok((b, a, start.to_string(), end.to_string()))
    }

    /// The current member events of the senders of `events` (lazy-loading members).
    pub async fn member_events_for(
        &self,
        room_id: &RoomId,
        events: &[Arc<Pdu>],
        user: &UserId,
    ) -> Result<Vec<Arc<Pdu>>> {
        let state = self.current_state(room_id).await?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for sender in events.iter().map(|e| e.sender.as_str()).chain(std::iter::once(user.as_str())) {
            if seen.insert(sender.to_owned()) {
                if let Some(p) = self.state_event_in(&state, &StateEventType::RoomMember, sender).await? {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// `GET /rooms/{roomId}/members`: the member events as far as `user` reads the room,
    /// with the membership asked for (`want`) or without the one refused (`not`).
    pub async fn members_for(
        &self,
        user: &UserId,
        room_id: &RoomId,
        want: Option<&MembershipState>,
        not: Option<&MembershipState>,
    ) -> Result<Vec<Arc<Pdu>>> {
        let until = self.readable_until(user, room_id).await?;
        let state = self.state_at_position(room_id, until).await?;
        let mut chunk = Vec::new();
        for ((kind, _), id) in state.iter() {
            if *kind != StateEventType::RoomMember {
                continue;
            }
            let Some(pdu) = self.get_pdu(id).await? else { continue };
            let m = pdu.membership();
            if want.is_some_and(|w| m.as_ref() != Some(w)) || not.is_some_and(|n| m.as_ref() == Some(n)) {
                continue;
            }
            chunk.push(pdu);
        }
        Ok(chunk)
    }

    /// `GET /rooms/{roomId}/state`: the state as far as `user` reads the room.
    pub async fn state_for(&self, user: &UserId, room_id: &RoomId) -> Result<Vec<Arc<Pdu>>> {
        let until = self.readable_until(user, room_id).await?;
        let state = self.state_at_position(room_id, until).await?;
        let mut events = Vec::new();
        for id in state.values() {
            if let Some(p) = self.get_pdu(id).await? {
                events.push(p);
            }
        }
        Ok(events)
    }

    /// `GET /rooms/{roomId}/joined_members`: each joined member's display name and avatar
    /// (joined members may ask, and anyone of a world-readable room, as Synapse answers: room
    /// previews read it).
    pub async fn joined_profiles(
        &self,
        user: &UserId,
        room_id: &RoomId,
    ) -> Result<BTreeMap<OwnedUserId, joined_members::v3::RoomMember>> {
        if !self.is_joined(room_id, user).await? && !self.is_world_readable(room_id).await? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        let state = self.current_state(room_id).await?;
        let mut joined = BTreeMap::new();
        for member in self.joined_members(room_id).await?.iter() {
            let event = self.state_event_in(&state, &StateEventType::RoomMember, member.as_str()).await?;
            let field = |name: &str| {
                event.as_ref().and_then(|p| p.content_field(name)).and_then(|v| v.as_str().map(str::to_owned))
            };
            let mut profile = joined_members::v3::RoomMember::new();
            profile.display_name = field("displayname");
            profile.avatar_url = field("avatar_url").map(Into::into);
            joined.insert(member.clone(), profile);
        }
        Ok(joined)
    }
}
