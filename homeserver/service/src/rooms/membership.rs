//! Membership: invite, join (by id, by alias, restricted), leave, kick, ban, unban, knock, forget.

use std::sync::Arc;

use ruma::events::room::member::MembershipState;
use ruma::state_res::StateMap;
use ruma::{
    api::error::ErrorKind,
    events::{StateEventType, TimelineEventType},
    OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomOrAliasId, UserId,
};
use serde_json::{json, Map, Value};

use super::{PduBuilder, Rooms, Target};
use crate::{
    accounts::Accounts,
    appservice::Appservices,
    core::Core,
    federation::{client::Transport, membership::RemoteMembership},
    identity::Identity,
    portal::Portal,
    Error, Result,
};

/// Creating rooms and changing memberships (join, leave, invite, knock, kick, ban), here or
/// through other servers; over the rooms, the accounts (profiles), the portal, the transport
/// (the allow-list) and the memberships across servers.
pub struct Membership {
    core: Arc<Core>,
    pub(crate) rooms: Arc<Rooms>,
    pub(super) accounts: Arc<Accounts>,
    pub(super) portal: Arc<Portal>,
    pub(super) transport: Arc<Transport>,
    pub(super) remote_membership: Arc<RemoteMembership>,
    pub(super) identity: Arc<Identity>,
    appservices: Arc<Appservices>,
    /// One join through another server at a time per room: two users of this server joining
    /// a room it is not in yet would both store the room's state (the second would fail);
    /// the second waits, then joins here.
    joining: std::sync::Mutex<std::collections::HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
}

crate::core::over_core!(Membership);

impl Membership {
    // One argument per service held: the dependencies are explicit (ARCHITECTURE.md).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        accounts: Arc<Accounts>,
        portal: Arc<Portal>,
        transport: Arc<Transport>,
        remote_membership: Arc<RemoteMembership>,
        identity: Arc<Identity>,
        appservices: Arc<Appservices>,
    ) -> Membership {
        Membership {
            core,
            rooms,
            accounts,
            portal,
            transport,
            remote_membership,
            identity,
            appservices,
            joining: Default::default(),
        }
    }

    /// Resolves a room id or an alias (another server's through federation) to a room id and
    /// servers that are in the room.
    pub async fn resolve_room_and_servers(&self, room: &RoomOrAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        match <&RoomId>::try_from(room) {
            Ok(id) => Ok((id.to_owned(), Vec::new())),
            Err(alias) if alias.server_name() != self.server_name() && self.transport.federation_enabled() => {
                self.transport.query_alias(alias).await
            }
            Err(alias) => {
                let room_id = self
                    .appservices
                    .local_alias(alias)
                    .await?
                    .ok_or_else(|| Error::not_found("Room alias not found"))?;
                Ok((room_id, Vec::new()))
            }
        }
    }

    pub async fn invite(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        invitee: &UserId,
        reason: Option<String>,
        is_direct: bool,
    ) -> Result<()> {
        self.rooms.known_room(room_id).await?;
        if !self.rooms.is_joined(room_id, sender).await? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        // A shadow-banned sender's invites seem to succeed and reach nobody.
        if self.rooms.is_shadow_banned(sender).await? {
            return Ok(());
        }
        if invitee.server_name() != self.server_name() {
            // The portal's rule for sharing a room with another server comes first.
            self.portal.check_federation(room_id, invitee.server_name()).await?;
            self.transport.check_server_allowed(invitee.server_name())?;
            let mut content = json!({ "membership": "invite" });
            if is_direct {
                content["is_direct"] = json!(true);
            }
            add_reason(&mut content, reason);
            return self.remote_membership.invite_remote(sender, room_id, invitee, content).await;
        }
        self.check_not_blocked(room_id).await?;
        let exists = || async { diplomatie_storage::accounts::get_user(self.db.pool(), invitee.as_str()).await };
        // A user of an application service's namespace may be created when it is asked.
        if exists().await?.is_none() && !(self.appservices.query_user(invitee).await && exists().await?.is_some()) {
            return Err(Error::not_found("Unknown user"));
        }
        let mut content =
            with_membership(MembershipState::Invite, self.accounts.member_profile(invitee).await?, is_direct);
        add_reason(&mut content, reason);
        self.send_membership(sender, room_id, invitee, content).await
    }

    /// A room an administrator blocked is closed to this server's users.
    async fn check_not_blocked(&self, room_id: &RoomId) -> Result<()> {
        if diplomatie_storage::admin::room_blocked_by(self.db.pool(), room_id.as_str()).await?.is_some() {
            return Err(Error::forbidden("This room has been blocked on this server"));
        }
        Ok(())
    }

    /// Joins `user` to a room known to this server.
    pub async fn join(&self, user: &UserId, room_id: &RoomId, reason: Option<String>) -> Result<OwnedRoomId> {
        let mut content = Map::new();
        if let Some(r) = reason {
            content.insert("reason".into(), json!(r));
        }
        self.join_via(user, room_id, content, &[]).await
    }

    /// Joins `user` to a room: here if this server is in the room, else through `via` (and
    /// the servers this one knows to be in it). `extra` is what the client asked to put in its
    /// member event beside the membership and profile (`reason`, custom keys).
    pub async fn join_via(
        &self,
        user: &UserId,
        room_id: &RoomId,
        extra: Map<String, Value>,
        via: &[OwnedServerName],
    ) -> Result<OwnedRoomId> {
        let reason = extra.get("reason").and_then(Value::as_str).map(str::to_owned);
        self.check_not_blocked(room_id).await?;
        if self.outside_room(room_id).await? {
            // A guest joins a room of other servers only when what the invite showed of it
            // lets guests in (its state is not known here before the join).
            if self.accounts.is_guest(user).await? {
                let shown = self.rooms.stripped_state(room_id, user).await?;
                let access = shown.iter().find(|e| e["type"] == "m.room.guest_access");
                if access.and_then(|e| e["content"]["guest_access"].as_str()) != Some("can_join") {
                    return Err(Error::new(ErrorKind::GuestAccessForbidden, "Guests may not join this room"));
                }
            }
            let lock = self.joining.lock().unwrap().entry(room_id.to_owned()).or_default().clone();
            let guard = lock.lock().await;
            // Another user's join may have brought this server in meanwhile: then here.
            let outside = self.outside_room(room_id).await;
            let joined = match outside {
                Ok(true) => Some(self.remote_membership.remote_join(user, room_id, via, reason.clone()).await),
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            };
            drop(guard);
            {
                let mut joining = self.joining.lock().unwrap();
                if Arc::strong_count(&lock) <= 2 {
                    joining.remove(room_id);
                }
            }
            if let Some(joined) = joined {
                joined?;
                self.after_join(room_id).await;
                return Ok(room_id.to_owned());
            }
        }
        let meta = self.rooms.room_meta(room_id).await?;
        let Some(meta) = meta else {
            return Err(Error::not_found("This server does not know this room, and federation is not enabled"));
        };
        let state = self.rooms.state_map(meta.state_group).await?;
        self.check_guest_may_join(user, &state).await?;
        let current_event = self.rooms.state_event_in(&state, &StateEventType::RoomMember, user.as_str()).await?;
        let current = current_event.as_ref().and_then(|p| p.membership());
        let mut content = with_membership(MembershipState::Join, self.accounts.member_profile(user).await?, false);
        for (k, v) in extra {
            if k != "membership" && k != "join_authorised_via_users_server" {
                content[k] = v;
            }
        }

        // Restricted rooms: a local member who may invite vouches for the joiner, when the joiner
        // is in one of the rooms the join rule allows.
        if !matches!(current, Some(MembershipState::Invite | MembershipState::Join)) {
            if let Some(rule) = self.rooms.state_event_in(&state, &StateEventType::RoomJoinRules, "").await? {
                let kind = rule.content_field("join_rule").and_then(|v| v.as_str().map(str::to_owned));
                if matches!(kind.as_deref(), Some("restricted" | "knock_restricted"))
                    && meta.rules().authorization.restricted_join_rule
                {
                    let allowed = self.rooms.allowed_by_restricted_rule(&rule.content_value(), user).await?;
                    if allowed {
                        if let Some(authoriser) = self.rooms.local_inviter(room_id).await? {
                            content["join_authorised_via_users_server"] = json!(authoriser);
                        }
                    }
                }
            }
        }
        // Joining again with the same member event changes nothing (as Synapse).
        if current_event.is_some_and(|e| e.content_value() == content) {
            return Ok(room_id.to_owned());
        }
        match self.send_membership(user, room_id, user, content).await {
            Ok(_) => {
                diplomatie_storage::rooms::unforget(self.db.pool(), user.as_str(), room_id.as_str()).await?;
                self.after_join(room_id).await;
                Ok(room_id.to_owned())
            }
            Err(Error::Matrix(ErrorKind::Forbidden, reason)) => {
                Err(Error::forbidden(format!("You are not allowed to join this room ({reason})")))
            }
            Err(e) => Err(e),
        }
    }

    /// What follows a join, which has happened whatever it meets.
    async fn after_join(&self, room_id: &RoomId) {
        if let Err(e) = self.follow_upgrade(room_id).await {
            tracing::warn!(%room_id, error = %e, "could not follow a room upgrade");
        }
    }

    async fn check_guest_may_join(&self, user: &UserId, state: &StateMap<OwnedEventId>) -> Result<()> {
        if !self.accounts.is_guest(user).await? {
            return Ok(());
        }
        let access = self.rooms.state_event_in(state, &StateEventType::RoomGuestAccess, "").await?;
        if access.and_then(|p| p.content_field("guest_access")).and_then(|v| v.as_str().map(str::to_owned)).as_deref()
            != Some("can_join")
        {
            return Err(Error::new(ErrorKind::GuestAccessForbidden, "Guests may not join this room"));
        }
        Ok(())
    }

    pub async fn leave(&self, user: &UserId, room_id: &RoomId, reason: Option<String>) -> Result<()> {
        let current = self.rooms.membership(room_id, user).await?;
        match current {
            None => return Err(Error::forbidden("You are not a member of this room")),
            Some(MembershipState::Leave) => return Ok(()),
            Some(MembershipState::Ban) => return Err(Error::forbidden("You are banned from this room")),
            _ => {}
        }
        // An invite (or knock) to a room this server is not in is refused through another;
        // when none takes it and nobody is in the room any more (the room was this server's,
        // its members all left), this server's state is the room's last: it writes the leave.
        if self.outside_room(room_id).await? {
            let remote = self.remote_membership.remote_leave(user, room_id, &[]).await;
            let Err(e) = remote else { return Ok(()) };
            let last = self.rooms.has_full_state(room_id).await?
                && self.rooms.may_write_membership(room_id, &MembershipState::Leave).await?;
            if !last {
                // Nobody takes it: an invite or a knock is refused here alone.
                if matches!(current, Some(MembershipState::Invite | MembershipState::Knock)) {
                    tracing::info!(%room_id, error = %e, "the refusal is kept here only");
                    return self.remote_membership.reject_locally(user, room_id).await;
                }
                return Err(e);
            }
        }
        self.send_membership(user, room_id, user, membership_content(MembershipState::Leave, reason)).await
    }

    /// Kick, ban and unban: a membership event about someone else.
    pub async fn set_membership_of(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        membership: MembershipState,
        reason: Option<String>,
    ) -> Result<()> {
        self.rooms.known_room(room_id).await?;
        let current = self.rooms.membership(room_id, target).await?;
        if membership == MembershipState::Leave && matches!(current, None | Some(MembershipState::Leave)) {
            return Err(Error::forbidden("The user is not a member of this room"));
        }
        // A kick does not lift a ban (the auth rules would take it as an unban): /unban does.
        if membership == MembershipState::Leave && current == Some(MembershipState::Ban) {
            return Err(Error::forbidden("The user is banned from this room: unban them instead"));
        }
        self.send_membership(sender, room_id, target, membership_content(membership, reason)).await
    }

    /// `PUT /rooms/{roomId}/state/m.room.member/{userId}` about someone else, as Synapse takes
    /// it: a ban, an unban or a kick (`leave`), or an invite, each with its own checks.
    /// Answers the member event now in the room.
    pub async fn set_member_state(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &str,
        content: &Value,
    ) -> Result<OwnedEventId> {
        let target = UserId::parse(target).map_err(|_| Error::invalid_param("The state key must be a user id"))?;
        let reason = content.get("reason").and_then(Value::as_str).map(str::to_owned);
        match content.get("membership").and_then(Value::as_str) {
            Some("ban") => self.set_membership_of(sender, room_id, &target, MembershipState::Ban, reason).await?,
            Some("leave") if self.rooms.membership(room_id, &target).await? == Some(MembershipState::Ban) => {
                self.unban(sender, room_id, &target, reason).await?
            }
            Some("leave") => self.set_membership_of(sender, room_id, &target, MembershipState::Leave, reason).await?,
            Some("invite") => {
                let direct = content.get("is_direct").and_then(Value::as_bool).unwrap_or(false);
                self.invite(sender, room_id, &target, reason, direct).await?
            }
            Some(_) => {
                return Err(Error::forbidden("Only a ban, an unban, a kick or an invite is sent for another user"))
            }
            None => return Err(Error::bad_json("A member event needs a membership")),
        }
        match self.rooms.state_event(room_id, &StateEventType::RoomMember, target.as_str()).await? {
            Some(event) => Ok(event.event_id.clone()),
            // A shadow-banned sender's invite, which reached nobody.
            None => Ok(self.rooms.shadow_event_id(sender, &format!("{room_id}\u{0}{target}\u{0}{content}"))),
        }
    }

    pub async fn unban(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<String>,
    ) -> Result<()> {
        if self.rooms.membership(room_id, target).await? != Some(MembershipState::Ban) {
            return Err(Error::forbidden("The user is not banned"));
        }
        self.send_membership(sender, room_id, target, membership_content(MembershipState::Leave, reason)).await
    }

    pub async fn knock(&self, user: &UserId, room_id: &RoomId, reason: Option<String>) -> Result<OwnedRoomId> {
        self.knock_via(user, room_id, reason, &[]).await
    }

    /// Knocks here if this server is in the room, else through `via` (and the servers known).
    pub async fn knock_via(
        &self,
        user: &UserId,
        room_id: &RoomId,
        reason: Option<String>,
        via: &[OwnedServerName],
    ) -> Result<OwnedRoomId> {
        if self.outside_room(room_id).await? {
            self.remote_membership.remote_knock(user, room_id, via, reason).await?;
            return Ok(room_id.to_owned());
        }
        if self.rooms.room_meta(room_id).await?.is_none() {
            return Err(Error::not_found("This server does not know this room, and federation is not enabled"));
        }
        let mut content = with_membership(MembershipState::Knock, self.accounts.member_profile(user).await?, false);
        add_reason(&mut content, reason);
        self.send_membership(user, room_id, user, content).await?;
        Ok(room_id.to_owned())
    }

    pub async fn forget(&self, user: &UserId, room_id: &RoomId) -> Result<()> {
        match self.rooms.membership(room_id, user).await? {
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
                Err(Error::new(ErrorKind::Unknown, "You must leave the room before forgetting it"))
            }
            None => Err(Error::not_found("You were never a member of this room")),
            _ => {
                diplomatie_storage::rooms::forget(self.db.pool(), user.as_str(), room_id.as_str()).await?;
                Ok(())
            }
        }
    }
}

impl Membership {
    /// Whether memberships in this room go through another server: federation is on and no
    /// user of this server is in the room (or the room is unknown here).
    async fn outside_room(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.transport.federation_enabled()
            && (self.rooms.room_meta(room_id).await?.is_none() || !self.rooms.server_in_room(room_id).await?))
    }

    /// Appends `sender`'s membership event about `target`.
    async fn send_membership(&self, sender: &UserId, room_id: &RoomId, target: &UserId, content: Value) -> Result<()> {
        let builder = PduBuilder::state(TimelineEventType::RoomMember, target.as_str(), content);
        self.rooms.append_event(Target::Room(room_id), sender, builder, None).await?;
        Ok(())
    }
}

/// A member event's content without profile: the membership and its reason.
fn membership_content(membership: MembershipState, reason: Option<String>) -> Value {
    let mut content = json!({ "membership": membership });
    add_reason(&mut content, reason);
    content
}

fn add_reason(content: &mut Value, reason: Option<String>) {
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
}

/// Member event content: `membership` plus the profile fields.
pub(crate) fn with_membership(membership: MembershipState, mut profile: Map<String, Value>, is_direct: bool) -> Value {
    profile.insert("membership".into(), json!(membership.as_str()));
    if is_direct {
        profile.insert("is_direct".into(), json!(true));
    }
    Value::Object(profile)
}
