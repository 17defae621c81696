//! Who is in a room, read from its current state: the servers of its members, the users who
//! share a room with someone, the power levels, and who may let a restricted join in.

use std::collections::HashSet;

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    OwnedServerName, OwnedUserId, RoomId, UserId,
};
use serde_json::{Map, Value};

use super::Rooms;
use crate::Result;

/// The state events shown of a room to someone not in it (invites, knocks, over federation).
pub(crate) const STRIPPED_STATE: [StateEventType; 8] = [
    StateEventType::RoomCreate,
    StateEventType::RoomJoinRules,
    // Whether guests may join: their server cannot know it otherwise before joining.
    StateEventType::RoomGuestAccess,
    StateEventType::RoomName,
    StateEventType::RoomAvatar,
    StateEventType::RoomCanonicalAlias,
    StateEventType::RoomTopic,
    StateEventType::RoomEncryption,
];

impl Rooms {
    /// The servers with a joined user in the room, this one included.
    pub async fn servers_in_room(&self, room_id: &RoomId) -> Result<Vec<OwnedServerName>> {
        let mut servers: Vec<OwnedServerName> =
            self.joined_members(room_id).await?.iter().map(|u| u.server_name().to_owned()).collect();
        servers.sort();
        servers.dedup();
        Ok(servers)
    }

    /// Users who share a joined room with `user` (including `user`).
    pub async fn users_sharing_rooms_with(&self, user: &UserId) -> Result<HashSet<OwnedUserId>> {
        let mut users = HashSet::new();
        for room in crate::rooms::joined_rooms(self, user).await? {
            users.extend(self.joined_members(&room).await?.iter().cloned());
        }
        Ok(users)
    }

    /// The content of the room's power levels (the spec's defaults when absent).
    pub async fn power_levels(&self, room_id: &RoomId) -> Result<Map<String, Value>> {
        Ok(match self.state_event(room_id, &StateEventType::RoomPowerLevels, "").await? {
            Some(p) => match p.content_value() {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            None => Map::new(),
        })
    }

    /// Servers this one knows in a room it may not be in: the sender of `user`'s membership
    /// (an invite's), then those of the members it knew.
    pub(crate) async fn servers_known_in(&self, room_id: &RoomId, user: &UserId) -> Result<Vec<OwnedServerName>> {
        let mut servers = Vec::new();
        if self.room_meta(room_id).await?.is_none() {
            return Ok(servers);
        }
        let state = self.current_state(room_id).await?;
        if let Some(p) = self.state_event_in(&state, &StateEventType::RoomMember, user.as_str()).await? {
            servers.push(p.sender.server_name().to_owned());
        }
        for ((kind, key), _) in state.iter() {
            if *kind == StateEventType::RoomMember {
                if let Ok(u) = <&UserId>::try_from(key.as_str()) {
                    if !servers.iter().any(|s| s == u.server_name()) {
                        servers.push(u.server_name().to_owned());
                    }
                }
            }
        }
        Ok(servers)
    }

    /// Whether `user` is joined to one of the rooms a restricted join rule allows.
    pub(crate) async fn allowed_by_restricted_rule(&self, content: &Value, user: &UserId) -> Result<bool> {
        let Some(allow) = content.get("allow").and_then(Value::as_array) else {
            return Ok(false);
        };
        for entry in allow {
            if entry.get("type").and_then(Value::as_str) != Some("m.room_membership") {
                continue;
            }
            let Some(room) = entry.get("room_id").and_then(Value::as_str).and_then(|r| <&RoomId>::try_from(r).ok())
            else {
                continue;
            };
            if self.room_meta(room).await?.is_some() && self.is_joined(room, user).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A local joined member whose power allows inviting, to authorise restricted joins.
    pub(crate) async fn local_inviter(&self, room_id: &RoomId) -> Result<Option<OwnedUserId>> {
        let levels = self.power_levels(room_id).await?;
        let invite_level = levels.get("invite").and_then(Value::as_i64).unwrap_or(0);
        let mut candidates: Vec<OwnedUserId> = self
            .joined_members(room_id)
            .await?
            .iter()
            .filter(|u| u.server_name() == self.server_name())
            .cloned()
            .collect();
        candidates.sort();
        for user in candidates {
            if self.user_power(room_id, &levels, &user).await? >= invite_level {
                return Ok(Some(user));
            }
        }
        Ok(None)
    }

    /// Whether a user of this server is joined to the room (the server is then in the room).
    pub async fn server_in_room(&self, room_id: &RoomId) -> Result<bool> {
        let me = self.server_name();
        Ok(self.joined_members(room_id).await?.iter().any(|u| u.server_name() == me))
    }

    /// Whether this server may write a membership in the room: it is in the room, or, for a
    /// leave (an invite rejected, a knock withdrawn), nobody at all is: its state is then the
    /// room's last, and no other server could take the leave.
    pub async fn may_write_membership(&self, room_id: &RoomId, membership: &MembershipState) -> Result<bool> {
        let joined = self.joined_members(room_id).await?;
        let me = self.server_name();
        Ok(joined.iter().any(|u| u.server_name() == me) || (*membership == MembershipState::Leave && joined.is_empty()))
    }

    /// Whether this server holds the room's state (its create event), not only what an invite
    /// or a knock showed of it.
    pub async fn has_full_state(&self, room_id: &RoomId) -> Result<bool> {
        if self.room_meta(room_id).await?.is_none() {
            return Ok(false);
        }
        Ok(self.state_event(room_id, &StateEventType::RoomCreate, "").await?.is_some())
    }

    /// Has this server's guests leave a room whose `m.room.guest_access` no longer lets them
    /// in (as Synapse has them do), whoever changed it, here or on another server.
    pub async fn remove_guests(&self, room_id: &RoomId) -> Result<()> {
        let access = self.state_event(room_id, &StateEventType::RoomGuestAccess, "").await?;
        if access.and_then(|p| p.content_field("guest_access")).as_ref().and_then(Value::as_str) == Some("can_join") {
            return Ok(());
        }
        let members = self.joined_members(room_id).await?;
        for user in members.iter().filter(|u| u.server_name() == self.server_name()) {
            if diplomatie_storage::accounts::get_user(self.db.pool(), user.as_str()).await?.is_some_and(|u| u.is_guest)
            {
                let leave = super::PduBuilder::state(
                    ruma::events::TimelineEventType::RoomMember,
                    user.as_str(),
                    serde_json::json!({ "membership": "leave" }),
                );
                if let Err(e) = self.append_event(super::Target::Room(room_id), user, leave, None).await {
                    tracing::warn!(%user, %room_id, error = %e, "a guest could not leave a room closed to guests");
                }
            }
        }
        Ok(())
    }

    /// Stripped state for invites and knocks: what a client shows before joining (the room's
    /// `STRIPPED_STATE` events and the user's membership).
    pub async fn stripped_state(&self, room_id: &RoomId, user: &UserId) -> Result<Vec<Value>> {
        let state = self.current_state(room_id).await?;
        let member = self.state_event_in(&state, &StateEventType::RoomMember, user.as_str()).await?;
        // An invite or a knock to a room this server is not in: what the other server showed.
        if let Some(p) = &member {
            let shown = p.unsigned.get("invite_room_state").or_else(|| p.unsigned.get("knock_room_state"));
            if let Some(Value::Array(shown)) = shown {
                let mut out = shown.clone();
                out.push(p.to_stripped());
                return Ok(out);
            }
        }
        let mut out = Vec::new();
        for kind in STRIPPED_STATE {
            if let Some(p) = self.state_event_in(&state, &kind, "").await? {
                out.push(p.to_stripped());
            }
        }
        if let Some(p) = member {
            out.push(p.to_stripped());
            if let Some(s) = self.state_event_in(&state, &StateEventType::RoomMember, p.sender.as_str()).await? {
                if s.sender != p.sender || s.event_id != p.event_id {
                    out.push(s.to_stripped());
                }
            }
        }
        Ok(out)
    }
}
