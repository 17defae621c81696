//! Spaces (client-server spec, "Spaces"): the room hierarchy under a space, walked through its
//! `m.space.child` state events.
//!
//! The walk is depth-first in the order the spec gives children (`order`, then the child
//! event's timestamp, then the room id), visits each room once (hierarchies may loop), and
//! shows a room only to users who could see it from outside: members, or anyone when it is
//! world readable, public, open to knocks, or restricted to a room the user is joined to. The
//! children of a room that is not shown are not walked. A room this server does not know is
//! asked of the servers its `m.space.child` event names (`via`), over federation.

use std::collections::HashSet;

use ruma::events::room::member::MembershipState;
use ruma::{
    api::{
        client::space::SpaceHierarchyRoomsChunk,
        federation::space::{get_hierarchy, SpaceHierarchyParentSummary},
    },
    events::{space::child::HierarchySpaceChildEvent, StateEventType},
    room::{JoinRuleSummary, RoomSummary},
    serde::Raw,
    OwnedRoomId, OwnedServerName, RoomId, UserId,
};
use serde_json::{json, Value};

use super::directory::Directory;
use crate::{Error, Result};

/// One page of the hierarchy.
#[derive(Debug)]
pub struct HierarchyPage {
    pub rooms: Vec<SpaceHierarchyRoomsChunk>,
    pub next_batch: Option<String>,
}

/// What the client asked for; a `from` token is valid only with the same options.
#[derive(Clone, Copy, Debug)]
pub struct HierarchyRequest<'a> {
    pub from: Option<&'a str>,
    pub limit: Option<usize>,
    pub max_depth: Option<usize>,
    pub suggested_only: bool,
}

/// A room's `m.space.child` event, as the walk orders and shows it.
struct Child {
    room_id: OwnedRoomId,
    order: Option<String>,
    ts: i64,
    stripped: Value,
    /// The servers to ask about the room when this one does not know it.
    via: Vec<OwnedServerName>,
}

impl Child {
    /// A child from its `m.space.child` event (stripped): `None` without a `via`, or when only
    /// suggested children are wanted and it is not one.
    fn from_stripped(stripped: Value, suggested_only: bool) -> Option<Child> {
        let room_id = OwnedRoomId::try_from(stripped.get("state_key")?.as_str()?).ok()?;
        let content = stripped.get("content")?;
        let via: Vec<OwnedServerName> = content
            .get("via")?
            .as_array()?
            .iter()
            .filter_map(|v| OwnedServerName::try_from(v.as_str()?).ok())
            .collect();
        if via.is_empty() {
            return None;
        }
        if suggested_only && !content.get("suggested").and_then(Value::as_bool).unwrap_or(false) {
            return None;
        }
        let order = content.get("order").and_then(Value::as_str).filter(|o| valid_order(o)).map(str::to_owned);
        let ts = stripped.get("origin_server_ts").and_then(Value::as_i64).unwrap_or(0);
        Some(Child { room_id, order, ts, stripped, via })
    }

    /// The spec's order: ordered children first (by order), then the rest, each by timestamp
    /// then room id.
    fn sort(children: &mut [Child]) {
        children.sort_by(|a, b| {
            let key = |c: &Child| (c.order.is_none(), c.order.clone(), c.ts, c.room_id.clone());
            key(a).cmp(&key(b))
        });
    }
}

/// The children's `m.space.child` events as a hierarchy chunk lists them.
fn children_state(children: &[Child]) -> Result<Vec<Raw<HierarchySpaceChildEvent>>> {
    children.iter().map(|c| crate::to_raw(&c.stripped)).collect()
}

/// The spec's `order` key: at most 50 characters between 0x20 and 0x7E.
fn valid_order(order: &str) -> bool {
    order.len() <= 50 && order.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

impl Directory {
    /// `GET /rooms/{roomId}/hierarchy`.
    pub async fn hierarchy(&self, user: &UserId, root: &RoomId, req: HierarchyRequest<'_>) -> Result<HierarchyPage> {
        let limit = req.limit.unwrap_or(50).clamp(1, 200);
        let max_depth = req.max_depth.unwrap_or(usize::MAX);
        let options = format!("{}_{}", req.max_depth.map(|d| d.to_string()).unwrap_or_default(), req.suggested_only);
        let skip = match req.from {
            None => 0,
            Some(token) => {
                let (skip, opts) =
                    token.split_once('_').ok_or_else(|| Error::invalid_param("Unknown pagination token"))?;
                if opts != options {
                    return Err(Error::invalid_param("The pagination token was made with other parameters"));
                }
                skip.parse::<usize>().map_err(|_| Error::invalid_param("Unknown pagination token"))?
            }
        };
        // A root this server does not know is asked of the server its id names (up to v11).
        let root_via: Vec<OwnedServerName> = root.server_name().map(|s| vec![s.to_owned()]).unwrap_or_default();
        let mut rooms = Vec::new();
        let mut seen: HashSet<OwnedRoomId> = HashSet::new();
        let mut shown = 0usize;
        // A stack of (room, depth, via); children are pushed in reverse so the first is walked
        // first.
        let mut stack = vec![(root.to_owned(), 0usize, root_via)];
        while let Some((room_id, depth, via)) = stack.pop() {
            if !seen.insert(room_id.clone()) {
                continue;
            }
            let (summary, children) = if self.rooms.room_meta(&room_id).await?.is_some() {
                if !self.can_peek_room(user, &room_id).await? {
                    if room_id == root {
                        return Err(Error::forbidden("You cannot see this space"));
                    }
                    continue;
                }
                (None, self.space_children(&room_id, req.suggested_only).await?)
            } else {
                match self.remote_hierarchy(user, &room_id, &via, req.suggested_only).await? {
                    Some((summary, children)) => (Some(summary), children),
                    None if room_id == root => return Err(Error::forbidden("You cannot see this space")),
                    None => continue,
                }
            };
            if shown >= skip {
                if rooms.len() == limit {
                    return Ok(HierarchyPage { rooms, next_batch: Some(format!("{shown}_{options}")) });
                }
                let chunk = match summary {
                    Some(remote) => remote,
                    None => {
                        let summary = self.room_summary(&room_id).await?;
                        SpaceHierarchyRoomsChunk::new(summary, children_state(&children)?)
                    }
                };
                rooms.push(chunk);
            }
            shown += 1;
            if depth < max_depth {
                stack.extend(children.into_iter().rev().map(|c| (c.room_id, depth + 1, c.via)));
            }
        }
        Ok(HierarchyPage { rooms, next_batch: None })
    }

    /// The rooms a space lists as children, in the spec's order.
    pub(crate) async fn space_child_ids(&self, space: &RoomId) -> Result<Vec<OwnedRoomId>> {
        Ok(self.space_children(space, false).await?.into_iter().map(|c| c.room_id).collect())
    }

    /// The children a space lists (events with a non-empty `via`), in the spec's order.
    async fn space_children(&self, room_id: &RoomId, suggested_only: bool) -> Result<Vec<Child>> {
        let state = self.rooms.current_state(room_id).await?;
        let mut children = Vec::new();
        for ((kind, _), event_id) in state.iter() {
            if *kind != StateEventType::SpaceChild {
                continue;
            }
            let Some(pdu) = self.rooms.get_pdu(event_id).await? else { continue };
            let mut stripped = pdu.to_stripped();
            stripped["origin_server_ts"] = json!(pdu.origin_server_ts);
            children.extend(Child::from_stripped(stripped, suggested_only));
        }
        Child::sort(&mut children);
        Ok(children)
    }

    /// A room this server does not know, asked of `via` (three servers at most): its summary
    /// (with `children_state`) and children, when `user` may see it from outside (world
    /// readable, public, open to knocks, or restricted to a room the user is joined to).
    async fn remote_hierarchy(
        &self,
        user: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        suggested_only: bool,
    ) -> Result<Option<(SpaceHierarchyRoomsChunk, Vec<Child>)>> {
        if !self.transport.federation_enabled() {
            return Ok(None);
        }
        for server in via.iter().filter(|s| *s != self.server_name()).take(3) {
            let mut request = get_hierarchy::v1::Request::new(room_id.to_owned());
            request.suggested_only = suggested_only;
            let room = match self.transport.federation_request(server, request).await {
                Ok(answer) => answer.room,
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "remote hierarchy not available");
                    continue;
                }
            };
            if room.summary.room_id != room_id {
                continue;
            }
            if !self.may_see_remote_summary(user, &room.summary).await? {
                return Ok(None);
            }
            let mut children: Vec<Child> = room
                .children_state
                .iter()
                .filter_map(|c| serde_json::from_str(c.json().get()).ok())
                .filter_map(|c| Child::from_stripped(c, suggested_only))
                .collect();
            Child::sort(&mut children);
            return Ok(Some((SpaceHierarchyRoomsChunk::new(room.summary, room.children_state), children)));
        }
        Ok(None)
    }

    /// Whether `user`, who is not in it, may see a remote room's summary.
    async fn may_see_remote_summary(&self, user: &UserId, summary: &RoomSummary) -> Result<bool> {
        if summary.world_readable {
            return Ok(true);
        }
        match &summary.join_rule {
            JoinRuleSummary::Public | JoinRuleSummary::Knock | JoinRuleSummary::KnockRestricted(_) => Ok(true),
            JoinRuleSummary::Restricted(r) => {
                let joined = crate::rooms::joined_rooms(self, user).await?;
                Ok(r.allowed_room_ids.iter().any(|a| joined.iter().any(|j| j.as_str() == a.as_str())))
            }
            _ => Ok(false),
        }
    }

    /// A room's summary as a room preview shows it (MSC3266), with `user`'s membership: for a
    /// room `user` may see from outside (without a user: a world-readable or public room); a
    /// room this server does not know is asked of `via` (or of the server its id names).
    pub async fn room_preview(
        &self,
        user: Option<&UserId>,
        room_id: &RoomId,
        via: &[OwnedServerName],
    ) -> Result<(RoomSummary, Option<MembershipState>)> {
        if self.rooms.room_meta(room_id).await?.is_some() {
            let summary = self.room_summary(room_id).await?;
            let visible = match user {
                Some(u) => self.can_peek_room(u, room_id).await?,
                None => summary.world_readable || summary.join_rule == JoinRuleSummary::Public,
            };
            if !visible {
                return Err(Error::forbidden("This room cannot be previewed"));
            }
            let membership = match user {
                Some(u) => self.rooms.membership(room_id, u).await?,
                None => None,
            };
            return Ok((summary, membership));
        }
        let Some(user) = user else { return Err(Error::not_found("Unknown room")) };
        let mut servers = via.to_vec();
        servers.extend(room_id.server_name().map(|s| s.to_owned()));
        match self.remote_hierarchy(user, room_id, &servers, false).await? {
            Some((chunk, _)) => Ok((chunk.summary, None)),
            None => Err(Error::not_found("Unknown room")),
        }
    }

    /// Whether `user` may see a room's summary from outside.
    pub async fn can_peek_room(&self, user: &UserId, room_id: &RoomId) -> Result<bool> {
        if matches!(
            self.rooms.membership(room_id, user).await?,
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock)
        ) {
            return Ok(true);
        }
        let summary = self.room_summary(room_id).await?;
        if summary.world_readable {
            return Ok(true);
        }
        match &summary.join_rule {
            JoinRuleSummary::Public | JoinRuleSummary::Knock => Ok(true),
            JoinRuleSummary::Restricted(r) | JoinRuleSummary::KnockRestricted(r) => {
                for allowed in &r.allowed_room_ids {
                    if self.rooms.room_meta(allowed).await?.is_some() && self.rooms.is_joined(allowed, user).await? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }
}

impl Directory {
    /// `hierarchy` over federation: a space (or room) and its direct children, as another
    /// server's users could see them from outside (or `origin` from inside, for rooms it is
    /// in); children it may not see are listed as inaccessible.
    pub async fn federation_hierarchy(
        &self,
        origin: &ruma::ServerName,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Result<get_hierarchy::v1::Response> {
        if self.rooms.room_meta(room_id).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        if !self.server_may_see(origin, room_id).await? {
            return Err(Error::not_found("Unknown room"));
        }
        let children = self.space_children(room_id, suggested_only).await?;
        let room = SpaceHierarchyParentSummary::new(self.room_summary(room_id).await?, children_state(&children)?);
        let mut shown = Vec::new();
        let mut inaccessible = Vec::new();
        for child in children {
            if self.rooms.room_meta(&child.room_id).await?.is_none() {
                continue;
            }
            if !self.server_may_see(origin, &child.room_id).await? {
                inaccessible.push(child.room_id);
                continue;
            }
            shown.push(self.room_summary(&child.room_id).await?);
        }
        let mut answer = get_hierarchy::v1::Response::new(room);
        answer.children = shown;
        answer.inaccessible_children = inaccessible;
        Ok(answer)
    }

    /// Whether another server may see a room's summary: one of its users is in the room, or
    /// anyone could see it from outside (world readable, public, knock, restricted).
    async fn server_may_see(&self, origin: &ruma::ServerName, room_id: &RoomId) -> Result<bool> {
        if self.federation.check_server_acl(room_id, origin).await.is_err() {
            return Ok(false);
        }
        if self.federation.check_origin_may_read(room_id, origin).await.is_ok() {
            return Ok(true);
        }
        // No user of that server is a member: a user id of it that is no one stands for it.
        let outsider = ruma::UserId::parse_with_server_name("_", origin).map_err(crate::internal!())?;
        self.can_peek_room(&outsider, room_id).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn order_keys_follow_the_spec() {
        assert!(super::valid_order("a"));
        assert!(super::valid_order(" ~"));
        assert!(!super::valid_order(&"x".repeat(51)));
        assert!(!super::valid_order("é"));
        assert!(!super::valid_order("\n"));
    }
}
