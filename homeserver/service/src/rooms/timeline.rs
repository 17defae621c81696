//! Sending events and reading the timeline: send, state, redact, `/messages`, `/context`,
//! relations and threads. The history visibility rules that bound every read are in
//! `visibility.rs`.
//!
//! Pagination tokens are stream positions: token `t` stands between the events at positions `t`
//! and `t + 1`, so backwards pagination from `t` returns events at `t` and below.

use std::sync::Arc;

use diplomatie_storage::events as ev_store;
use ruma::{
    api::error::ErrorKind,
    events::{StateEventType, TimelineEventType},
    DeviceId, EventId, OwnedEventId, RoomId, TransactionId, UserId,
};
use serde_json::{json, Value};

pub use super::visibility::EventFilter;
use super::{visibility::Window, PduBuilder, Rooms, Target};
use crate::{core::Core, federation::Federation, portal::Portal, Error, Pdu, Result};

/// The state of MatrixRTC call memberships: each member's own (MSC3401, MSC4143).
const CALL_MEMBERSHIPS: [&str; 3] = ["org.matrix.msc3401.call.member", "m.call.member", "m.rtc.member"];

/// Whether a state key is its sender's own, as MSC3757 and MatrixRTC name them: the user id,
/// or the user id followed by `_` and more (a device), with or without a leading `_`.
fn owns_state_key(sender: &UserId, key: &str) -> bool {
    let key = key.strip_prefix('_').filter(|k| k.starts_with('@')).unwrap_or(key);
    key == sender.as_str() || key.strip_prefix(sender.as_str()).is_some_and(|rest| rest.starts_with('_'))
}

/// A client's pagination request: tokens, direction and page size.
#[derive(Clone, Copy)]
pub struct Paging<'a> {
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub backwards: bool,
    pub limit: usize,
}

/// A page of events with the tokens around it.
pub struct Page {
    pub events: Vec<Arc<Pdu>>,
    pub start: String,
    pub end: Option<String>,
    pub state: Vec<Arc<Pdu>>,
}

/// Parses a pagination token: our own positions, or a `/sync` token (its event position).
pub fn parse_token(token: &str) -> Result<i64> {
    let pos = token.trim_start_matches(['s', 't']).split('_').next().unwrap_or("");
    pos.parse().map_err(|_| Error::invalid_param("Invalid pagination token"))
}

/// Sending events and reading the timeline, over the rooms, the portal (the device check of a
/// send) and federation (backfill, when a client paginates past what this server holds).
pub struct Timeline {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    portal: Arc<Portal>,
    federation: Arc<Federation>,
}

crate::core::over_core!(Timeline);

impl Timeline {
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        portal: Arc<Portal>,
        federation: Arc<Federation>,
    ) -> Timeline {
        Timeline { core, rooms, portal, federation }
    }

    /// Sends a message-like event, idempotently per (device, transaction id).
    pub async fn send_message(
        &self,
        sender: &UserId,
        device: &DeviceId,
        room_id: &RoomId,
        kind: &str,
        txn_id: &TransactionId,
        content: Value,
    ) -> Result<OwnedEventId> {
        if let Some(id) = ev_store::txn_event(self.db.pool(), sender.as_str(), device.as_str(), txn_id.as_str()).await?
        {
            return OwnedEventId::try_from(id).map_err(crate::internal!());
        }
        self.rooms.known_room(room_id).await?;
        if !self.rooms.is_joined(room_id, sender).await? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        if kind == "m.room.redaction" {
            return Err(Error::bad_json("Redact with the /redact endpoint"));
        }
        check_tombstone(room_id, kind, &content)?;
        // MLS events come from the delivery service only (`Mls`), which checks them against
        // the group; the portal's rules refuse anything else in an MLS room.
        if kind.starts_with(diplomatie_mls::MODE_EVENT) {
            return Err(Error::forbidden("MLS events are sent through /_diplomatie/client/v1/mls"));
        }
        self.portal.check_device_for_send(sender, device, room_id).await?;
        if self.rooms.is_shadow_banned(sender).await? {
            return Ok(self.rooms.shadow_event_id(sender, &format!("{device}\u{0}{txn_id}")));
        }
        let pdu = self
            .rooms
            .append_event(Target::Room(room_id), sender, PduBuilder::message(kind, content), Some((device, txn_id)))
            .await?;
        Ok(pdu.event_id.clone())
    }

    /// Whether `sender` may schedule an event of this type in this room (MSC4140): the room is
    /// known and joined, and the event is one its endpoint would take. Power levels are those
    /// of the moment it is sent.
    pub async fn check_schedulable(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        kind: &str,
        state_key: Option<&str>,
    ) -> Result<()> {
        self.rooms.known_room(room_id).await?;
        if !self.rooms.is_joined(room_id, sender).await? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        let refused = match state_key {
            Some(_) => kind == "m.room.create" || kind == "m.room.member" || kind == diplomatie_mls::MODE_EVENT,
            None => kind.starts_with(diplomatie_mls::MODE_EVENT),
        };
        if refused {
            return Err(Error::forbidden(format!("{kind} cannot be a delayed event")));
        }
        Ok(())
    }

    /// Sets a piece of room state.
    pub async fn send_state(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
        content: Value,
    ) -> Result<OwnedEventId> {
        self.rooms.known_room(room_id).await?;
        if kind == "m.room.member" {
            // Another user's membership changes through `Membership` (the membership endpoints,
            // or `Membership::set_member_state`); here, clients (and Element) set their own member
            // event to change their per-room profile.
            if state_key != sender.as_str() {
                return Err(Error::forbidden("Use the membership endpoints to change another user's membership"));
            }
        } else if !self.rooms.is_joined(room_id, sender).await? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        if kind == "m.room.create" {
            return Err(Error::forbidden("The create event cannot be replaced"));
        }
        if kind == diplomatie_mls::MODE_EVENT {
            return Err(Error::forbidden("A room is an MLS room from its creation (initial_state), or never"));
        }
        if kind == "m.room.canonical_alias" {
            self.check_canonical_alias(room_id, &content).await?;
        }
        if CALL_MEMBERSHIPS.contains(&kind) && !owns_state_key(sender, state_key) {
            // A member sets their own membership of a call, never another's; an administrator
            // of the room may clear one left behind.
            let levels = self.rooms.power_levels(room_id).await?;
            if self.rooms.user_power(room_id, &levels, sender).await? < 100 {
                return Err(Error::forbidden("A call membership's state key names its own sender"));
            }
        }
        check_tombstone(room_id, kind, &content)?;
        if kind == "m.room.encryption" {
            if let Some(current) = self.rooms.state_event(room_id, &StateEventType::RoomEncryption, "").await? {
                if current.content_value() != content {
                    return Err(Error::forbidden("Encryption cannot be changed or turned off once enabled"));
                }
            }
        }
        // The same state again, from the same sender, is the event already there (as Synapse):
        // clients that re-send their settings do not fill the timeline.
        if let Some(current) = self.rooms.state_event(room_id, &StateEventType::from(kind), state_key).await? {
            if current.sender == sender && current.content_value() == content {
                return Ok(current.event_id.clone());
            }
        }
        if self.rooms.is_shadow_banned(sender).await? {
            return Ok(self
                .rooms
                .shadow_event_id(sender, &format!("{room_id}\u{0}{kind}\u{0}{state_key}\u{0}{content}")));
        }
        let pdu = self
            .rooms
            .append_event(Target::Room(room_id), sender, PduBuilder::state(kind, state_key, content), None)
            .await?;
        Ok(pdu.event_id.clone())
    }

    /// A canonical alias must point at this room (spec: `M_BAD_ALIAS` otherwise).
    async fn check_canonical_alias(&self, room_id: &RoomId, content: &Value) -> Result<()> {
        let mut aliases: Vec<&str> = Vec::new();
        if let Some(a) = content.get("alias").and_then(Value::as_str) {
            aliases.push(a);
        }
        if let Some(alts) = content.get("alt_aliases").and_then(Value::as_array) {
            aliases.extend(alts.iter().filter_map(Value::as_str));
        }
        for alias in aliases {
            let parsed =
                ruma::RoomAliasId::parse(alias).map_err(|_| Error::invalid_param(format!("Invalid alias {alias}")))?;
            if parsed.server_name() == self.server_name() {
                match diplomatie_storage::rooms::get_alias(self.db.pool(), alias).await? {
                    Some((r, _)) if r == room_id.as_str() => {}
                    _ => return Err(Error::new(ErrorKind::BadAlias, format!("{alias} does not point to this room"))),
                }
            }
        }
        Ok(())
    }

    /// Redacts an event: its sender, or someone with the room's redact power, may.
    pub async fn redact(
        &self,
        sender: &UserId,
        device: &DeviceId,
        room_id: &RoomId,
        target: &EventId,
        txn_id: &TransactionId,
        reason: Option<String>,
    ) -> Result<OwnedEventId> {
        if let Some(id) = ev_store::txn_event(self.db.pool(), sender.as_str(), device.as_str(), txn_id.as_str()).await?
        {
            return OwnedEventId::try_from(id).map_err(crate::internal!());
        }
        let meta = self.rooms.known_room(room_id).await?;
        if !self.rooms.is_joined(room_id, sender).await? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        let original = self.rooms.get_pdu(target).await?.ok_or_else(|| Error::not_found("Event not found"))?;
        // An event of another room is no event of this one's to redact (Synapse answers 400).
        if original.room() != room_id {
            return Err(Error::invalid_param("The event is in another room"));
        }
        if original.sender != sender {
            let levels = self.rooms.power_levels(room_id).await?;
            let needed = levels.get("redact").and_then(Value::as_i64).unwrap_or(50);
            if self.rooms.user_power(room_id, &levels, sender).await? < needed {
                return Err(Error::forbidden("You may only redact your own events"));
            }
        }
        let mut content = json!({});
        if let Some(r) = reason {
            content["reason"] = json!(r);
        }
        if meta.rules().redaction.content_field_redacts {
            content["redacts"] = json!(target);
        }
        let builder = PduBuilder {
            kind: TimelineEventType::RoomRedaction,
            content,
            state_key: None,
            redacts: Some(target.to_owned()),
            timestamp: None,
        };
        if self.rooms.is_shadow_banned(sender).await? {
            return Ok(self.rooms.shadow_event_id(sender, &format!("{device}\u{0}{txn_id}")));
        }
        let pdu = self.rooms.append_event(Target::Room(room_id), sender, builder, Some((device, txn_id))).await?;
        Ok(pdu.event_id.clone())
    }

    /// `GET /rooms/{roomId}/messages`.
    pub async fn messages(
        &self,
        user: &UserId,
        room_id: &RoomId,
        paging: Paging<'_>,
        filter: &EventFilter,
    ) -> Result<Page> {
        let Paging { from, to, backwards, limit } = paging;
        let until = self.rooms.readable_until(user, room_id).await?;
        let limit = limit.clamp(1, 1000);
        let from_pos = match from {
            Some(t) => parse_token(t)?,
            None if backwards => until,
            // History fetched from other servers lies below zero.
            None => i64::MIN,
        };
        let to_pos = to.map(parse_token).transpose()?;
        let (events, next) = if backwards {
            let hi = from_pos.min(until);
            let lo = to_pos.unwrap_or(i64::MIN);
            let window = Window { from: lo, to: hi, backwards: true, limit };
            let (events, next) = self.rooms.visible_page(Some(user), room_id, window, filter).await?;
            // At the start of what this server holds: ask the room's other servers for more.
            if next.is_none()
                && to_pos.is_none()
                && events.len() < limit
                && self.federation.backfill(room_id).await? > 0
            {
                self.rooms.visible_page(Some(user), room_id, window, filter).await?
            } else {
                (events, next)
            }
        } else {
            let hi = to_pos.unwrap_or(i64::MAX).min(until);
            self.rooms
                .visible_page(Some(user), room_id, Window { from: from_pos, to: hi, backwards: false, limit }, filter)
                .await?
        };
        // As Synapse does (and clients and Sytest expect), a page that returned events has an
        // `end`, even at the start of the room (the next page is then empty, without one):
        // forwards, the newest events are never the last ones.
        let next = match (next, events.last()) {
            (None, Some(last)) if !backwards => Some(last.stream_ordering),
            (None, Some(last)) => Some(last.stream_ordering - 1),
            (next, _) => next,
        };
        let state = if filter.lazy_load_members {
            self.rooms.member_events_for(room_id, &events, user).await?
        } else {
            Vec::new()
        };
        Ok(Page { events, start: from_pos.to_string(), end: next.map(|n| n.to_string()), state })
    }

    /// `GET /rooms/{roomId}/context/{eventId}`: events around one event, and the state.
    pub async fn context(
        &self,
        user: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<(Arc<Pdu>, Page, Page)> {
        let event = self.rooms.event_for_user(user, room_id, event_id).await?;
        let until = self.rooms.readable_until(user, room_id).await?;
        let before_n = limit / 2;
        let after_n = limit - before_n;
        let (before, before_next) = if before_n > 0 {
            self.rooms
                .visible_page(
                    Some(user),
                    room_id,
                    Window { from: 0, to: event.stream_ordering - 1, backwards: true, limit: before_n },
                    filter,
                )
                .await?
        } else {
            (Vec::new(), None)
        };
        let (after, after_next) = if after_n > 0 {
            self.rooms
                .visible_page(
                    Some(user),
                    room_id,
                    Window { from: event.stream_ordering, to: until, backwards: false, limit: after_n },
                    filter,
                )
                .await?
        } else {
            (Vec::new(), None)
        };
        let start = before_next.unwrap_or(before.last().map_or(event.stream_ordering - 1, |e| e.stream_ordering - 1));
        let end = after_next.unwrap_or(after.last().map_or(event.stream_ordering, |e| e.stream_ordering));
        let last = after.last().cloned().unwrap_or_else(|| event.clone());
        let state_map = self.rooms.state_map(last.state_group).await?;
        let mut state = Vec::new();
        for ((kind, key), id) in state_map.iter() {
            if filter.lazy_load_members && *kind == StateEventType::RoomMember {
                let relevant = key == user.as_str()
                    || before
                        .iter()
                        .chain(after.iter())
                        .chain(std::iter::once(&event))
                        .any(|e| e.sender.as_str() == key);
                if !relevant {
                    continue;
                }
            }
            if let Some(p) = self.rooms.get_pdu(id).await? {
                state.push(p);
            }
        }
        Ok((
            event,
            Page { events: before, start: start.to_string(), end: None, state },
            Page { events: after, start: String::new(), end: Some(end.to_string()), state: Vec::new() },
        ))
    }

    /// `GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`.
    #[allow(clippy::too_many_arguments)]
    pub async fn relations(
        &self,
        user: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        backwards: bool,
        limit: usize,
    ) -> Result<(Vec<Arc<Pdu>>, Option<String>)> {
        self.rooms.event_for_user(user, room_id, event_id).await?;
        let until = self.rooms.readable_until(user, room_id).await?;
        let limit = limit.clamp(1, 1000);
        let (lo, hi) = match (backwards, from.map(parse_token).transpose()?, to.map(parse_token).transpose()?) {
            (true, f, t) => (t.unwrap_or(0), f.unwrap_or(until).min(until)),
            (false, f, t) => (f.unwrap_or(0), t.unwrap_or(until).min(until)),
        };
        let rows = ev_store::relations(
            self.db.pool(),
            event_id.as_str(),
            rel_type,
            event_type,
            lo,
            hi,
            backwards,
            limit as i64 + 1,
        )
        .await?;
        let more = rows.len() > limit;
        let mut out = Vec::new();
        let mut last = None;
        for stored in rows.into_iter().take(limit) {
            last = Some(stored.stream_ordering);
            let pdu = Arc::new(Pdu::from_stored(stored)?);
            if self.rooms.can_see_event(user, &pdu).await? {
                out.push(pdu);
            }
        }
        let next = if more { last.map(|so| if backwards { so - 1 } else { so }.to_string()) } else { None };
        Ok((out, next))
    }

    /// `GET /rooms/{roomId}/timestamp_to_event`: the event closest to `ts` that `user` may
    /// read, from this server's history, else from another server in the room.
    pub async fn event_at_timestamp(
        &self,
        user: &UserId,
        room_id: &RoomId,
        ts: i64,
        forward: bool,
    ) -> Result<(OwnedEventId, i64)> {
        let until = self.rooms.readable_until(user, room_id).await?;
        let found = match self.federation.event_at_timestamp(room_id, ts, forward, until).await? {
            Some(found) => Some(found),
            // Another server's history is asked only for a member, who may read it all.
            None if self.rooms.is_joined(room_id, user).await? => {
                self.federation.remote_event_at_timestamp(room_id, ts, forward).await?
            }
            None => None,
        };
        let not_found = || Error::not_found("No event found at that time");
        let (event_id, ts) = found.ok_or_else(not_found)?;
        if let Some(pdu) = self.rooms.get_pdu(&event_id).await? {
            if !self.rooms.can_see_event(user, &pdu).await? {
                return Err(not_found());
            }
        }
        Ok((event_id, ts))
    }

    /// `GET /rooms/{roomId}/threads`: thread roots by latest activity (their summaries are
    /// bundled when they are given to the client, [`Rooms::client_raws`]).
    pub async fn threads(
        &self,
        user: &UserId,
        device: &str,
        room_id: &RoomId,
        participated_only: bool,
        from: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Arc<Pdu>>, Option<String>)> {
        let until = self.rooms.readable_until(user, room_id).await?;
        let before = from.map(parse_token).transpose()?.unwrap_or(until + 1);
        let limit = limit.clamp(1, 100);
        let rows = ev_store::threads(self.db.pool(), room_id.as_str(), before, limit as i64 + 1).await?;
        let more = rows.len() > limit;
        let mut out = Vec::new();
        let mut last = None;
        for (root_id, latest, _) in rows.into_iter().take(limit) {
            last = Some(latest);
            let Ok(root_id) = OwnedEventId::try_from(root_id) else {
                continue;
            };
            let Some(root) = self.rooms.get_pdu(&root_id).await? else {
                continue;
            };
            if !self.rooms.can_see_event(user, &root).await? {
                continue;
            }
            out.push(root);
        }
        if participated_only {
            // One read of the page's summaries, not one a root.
            let roots: Vec<&Pdu> = out.iter().map(|p| &**p).collect();
            let summaries = self.rooms.thread_summaries(&roots, user, device).await?;
            out.retain(|root| summaries.get(&root.event_id).is_some_and(|t| t.participated));
        }
        Ok((out, if more { last.map(|l| l.to_string()) } else { None }))
    }
}

/// A tombstone cannot name its own room as the replacement (Synapse's 400).
fn check_tombstone(room_id: &RoomId, kind: &str, content: &Value) -> Result<()> {
    if kind == "m.room.tombstone" && content.get("replacement_room").and_then(Value::as_str) == Some(room_id.as_str()) {
        return Err(Error::bad_json("A tombstone cannot point to its own room"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::owns_state_key;

    #[test]
    fn call_memberships_belong_to_their_sender() {
        let alice = ruma::user_id!("@alice:example.org");
        for own in ["@alice:example.org", "_@alice:example.org_DEVICE", "@alice:example.org_DEVICE_m.call"] {
            assert!(owns_state_key(alice, own), "{own}");
        }
        for other in
            ["@bob:example.org", "_@bob:example.org_DEV", "@alice:example.org.evil", "", "_", "@alice:example.orgX"]
        {
            assert!(!owns_state_key(alice, other), "{other}");
        }
    }
}
