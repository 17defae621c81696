//! Room upgrades (`POST /rooms/{roomId}/upgrade`, client-server spec "Room Upgrades"): a new
//! room of another version replaces the old one, which a tombstone closes. When a user of
//! another server joins the new room, that server moves its own aliases and directory listing
//! the same way (`Membership::follow_upgrade`).
//!
//! The new room starts with the old room's create options (`m.federate`, `type`), its important
//! state (join rules, history visibility, guest access, name, topic, avatar, encryption, server
//! ACL, power levels, the portal's classification and externals) and its bans; the local
//! aliases move to it, and its directory listing. In the old room, the tombstone names the new
//! room, and the power levels are raised so that only moderators may still speak or invite.

use ruma::events::room::member::MembershipState;
use ruma::{
    api::error::ErrorKind,
    events::{StateEventType, TimelineEventType},
    OwnedRoomId, RoomId, RoomVersionId, UserId,
};
use serde_json::{json, Map, Value};

use super::{
    membership::{with_membership, Membership},
    PduBuilder, Target,
};
use crate::{Error, Result};

/// The state events copied into the new room, in the order they are sent.
const COPIED_STATE: &[&str] = &[
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.pinned_events",
    crate::names::CLASSIFICATION,
    crate::names::EXTERNALS,
    crate::names::GROUP,
];

impl Membership {
    /// Upgrades `old` to `version` for `user`, who must be allowed to send the tombstone.
    /// Answers the new room's id.
    pub async fn upgrade_room(&self, user: &UserId, old: &RoomId, version: &RoomVersionId) -> Result<OwnedRoomId> {
        if !self.is_supported_room_version(version) {
            return Err(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                format!("Room version {version} is not supported"),
            ));
        }
        if self.rooms.room_meta(old).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        if !self.rooms.is_joined(old, user).await? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        // Everything that can refuse the upgrade is checked before the first event.
        let levels = self.rooms.power_levels(old).await?;
        let power = self.rooms.user_power(old, &levels, user).await?;
        let level_of = |kind: &str| {
            levels
                .get("events")
                .and_then(|e| e.get(kind))
                .and_then(Value::as_i64)
                .or_else(|| levels.get("state_default").and_then(Value::as_i64))
                .unwrap_or(50)
        };
        if power < level_of("m.room.tombstone") {
            return Err(Error::forbidden("You may not upgrade this room (the tombstone needs a higher power level)"));
        }
        let state = self.rooms.current_state(old).await?;
        let create = self
            .rooms
            .state_event_in(&state, &StateEventType::RoomCreate, "")
            .await?
            .ok_or_else(crate::internal!("a room without its create event"))?;
        let mut copied = Vec::new();
        for kind in COPIED_STATE {
            if let Some(p) = self.rooms.state_event_in(&state, &StateEventType::from(*kind), "").await? {
                copied.push(PduBuilder::state(*kind, "", p.content_value()));
            } else if *kind == "m.room.guest_access" {
                // Said explicitly in the new room, as Synapse's upgrades do (clients wait for it).
                copied.push(PduBuilder::state(*kind, "", json!({ "guest_access": "forbidden" })));
            }
        }
        let mut bans = Vec::new();
        for ((kind, key), id) in state.iter() {
            if *kind == StateEventType::RoomMember {
                if let Some(p) = self.rooms.get_pdu(id).await? {
                    if p.membership() == Some(MembershipState::Ban) {
                        bans.push(PduBuilder::state(TimelineEventType::RoomMember, key.clone(), p.content_value()));
                    }
                }
            }
        }
        let canonical = self.rooms.state_event_in(&state, &StateEventType::RoomCanonicalAlias, "").await?;
        let was_public = self.directory_listed(old).await?;
        let rules = version.rules().ok_or_else(crate::internal!("a supported version has rules"))?;
        let v12 = rules.authorization.room_create_event_id_as_room_id;

        // The new room's create event names its predecessor: with the tombstone's id when the
        // new room's id can be chosen first (before v12, ids are not hashes of the create).
        let mut creation: Map<String, Value> = Map::new();
        let old_create = create.content_value();
        for key in ["m.federate", "type"] {
            if let Some(v) = old_create.get(key) {
                creation.insert(key.into(), v.clone());
            }
        }
        creation.insert("room_version".into(), json!(version));
        if !rules.authorization.use_room_create_sender {
            creation.insert("creator".into(), json!(user));
        }
        let tombstone = |new: &RoomId| {
            PduBuilder::state(
                TimelineEventType::RoomTombstone,
                "",
                json!({ "body": "This room has been replaced", "replacement_room": new }),
            )
        };
        let (new_room, tombstone_id) = if v12 {
            creation.insert("predecessor".into(), json!({ "room_id": old }));
            (None, None)
        } else {
            let new_room = OwnedRoomId::try_from(format!("!{}:{}", crate::random_string(18), self.server_name()))
                .map_err(crate::internal!())?;
            let t = self.rooms.append_event(Target::Room(old), user, tombstone(&new_room), None).await?;
            creation.insert("predecessor".into(), json!({ "room_id": old, "event_id": t.event_id }));
            (Some(new_room), Some(t.event_id.clone()))
        };

        let mut w = self.rooms.room_writer(Target::New { room_id: new_room, version: version.clone() }).await?;
        let mut create_builder = PduBuilder::state(TimelineEventType::RoomCreate, "", Value::Object(creation));
        create_builder.timestamp = Some(self.rooms.unique_timestamp());
        w.append(user, create_builder, None).await?;
        let new_room = w.room_id().ok_or_else(crate::internal!("a value present by construction"))?.to_owned();
        let join = with_membership(MembershipState::Join, self.accounts.member_profile(user).await?, false);
        w.append(user, PduBuilder::state(TimelineEventType::RoomMember, user.as_str(), join), None).await?;
        // The power levels: the old room's, with the upgrader able to send the rest first.
        let mut power = levels.clone();
        let mut raised = false;
        if let Some(users) = power.entry("users").or_insert_with(|| json!({})).as_object_mut() {
            if v12 {
                // Creators are above every level since v12, and are not listed.
                users.remove(user.as_str());
            } else {
                let own = power_of_user(&levels, user);
                let needed = levels
                    .get("events")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|e| e.values().filter_map(Value::as_i64))
                    .chain(["state_default", "ban"].iter().filter_map(|k| levels.get(*k).and_then(Value::as_i64)))
                    .max()
                    .unwrap_or(100);
                if needed > own {
                    users.insert(user.to_string(), json!(needed));
                    raised = true;
                }
            }
        }
        w.append(user, PduBuilder::state(TimelineEventType::RoomPowerLevels, "", Value::Object(power)), None).await?;
        for builder in copied.into_iter().chain(bans) {
            w.append(user, builder, None).await?;
        }
        if let Some(c) = &canonical {
            w.append(user, PduBuilder::state(TimelineEventType::RoomCanonicalAlias, "", c.content_value()), None)
                .await?;
        }
        // Back to the old room's levels once the upgrader's own events are in.
        if raised {
            let builder = PduBuilder::state(TimelineEventType::RoomPowerLevels, "", Value::Object(levels.clone()));
            w.append(user, builder, None).await?;
        }
        if was_public {
            w.publish_room(&new_room);
        }
        w.commit().await?;

        if tombstone_id.is_none() {
            self.rooms.append_event(Target::Room(old), user, tombstone(&new_room), None).await?;
        }
        // The old room: only moderators may still speak or invite.
        let users_default = levels.get("users_default").and_then(Value::as_i64).unwrap_or(0);
        let restricted = 50.max(users_default + 1);
        let mut old_levels = levels.clone();
        let mut changed = false;
        for key in ["events_default", "invite"] {
            if old_levels.get(key).and_then(Value::as_i64).unwrap_or(0) < restricted {
                old_levels.insert(key.into(), json!(restricted));
                changed = true;
            }
        }
        if changed {
            let builder = PduBuilder::state(TimelineEventType::RoomPowerLevels, "", Value::Object(old_levels));
            if let Err(e) = self.rooms.append_event(Target::Room(old), user, builder, None).await {
                tracing::warn!(room_id = %old, error = %e, "could not restrict the upgraded room's power levels");
            }
        }
        // Local aliases and the directory listing move to the new room.
        self.move_aliases(old, &new_room).await?;
        if was_public {
            diplomatie_storage::rooms::set_public(self.db.pool(), old.as_str(), false).await?;
        }
        // The old room names no alias any more: they lead to the new one.
        if canonical.is_some() {
            let builder = PduBuilder::state(TimelineEventType::RoomCanonicalAlias, "", json!({}));
            if let Err(e) = self.rooms.append_event(Target::Room(old), user, builder, None).await {
                tracing::warn!(room_id = %old, error = %e, "could not clear the upgraded room's canonical alias");
            }
        }
        tracing::info!(old = %old, new = %new_room, %version, "room upgraded");
        Ok(new_room)
    }

    /// This server's aliases of `old` now lead to `new`.
    async fn move_aliases(&self, old: &RoomId, new: &RoomId) -> Result<()> {
        let pool = self.db.pool();
        for alias in diplomatie_storage::rooms::room_aliases(pool, old.as_str()).await? {
            if let Some((_, creator)) = diplomatie_storage::rooms::get_alias(pool, &alias).await? {
                let mut tx = self.db.begin().await?;
                diplomatie_storage::rooms::delete_alias(&mut *tx, &alias).await?;
                diplomatie_storage::rooms::insert_alias(&mut *tx, &alias, new.as_str(), &creator).await?;
                diplomatie_storage::commit(tx).await?;
            }
        }
        Ok(())
    }

    /// After a user of this server joined `room_id`: when it replaces an upgraded room (its
    /// create event names a predecessor whose tombstone names it back), this server's aliases
    /// and directory listing of the old room move to it, as the upgrading server moved its own.
    pub(crate) async fn follow_upgrade(&self, room_id: &RoomId) -> Result<()> {
        let Some(create) = self.rooms.state_event(room_id, &StateEventType::RoomCreate, "").await? else {
            return Ok(());
        };
        let old = create.content_field("predecessor").and_then(|p| p.get("room_id").cloned());
        let Some(old) = old.as_ref().and_then(Value::as_str).and_then(|r| RoomId::parse(r).ok()) else {
            return Ok(());
        };
        let tombstone = self.rooms.state_event(&old, &StateEventType::RoomTombstone, "").await?;
        let replacement = tombstone.and_then(|t| t.content_field("replacement_room"));
        if replacement.as_ref().and_then(Value::as_str) != Some(room_id.as_str()) {
            return Ok(());
        }
        self.move_aliases(&old, room_id).await?;
        if self.directory_listed(&old).await? {
            let pool = self.db.pool();
            diplomatie_storage::rooms::set_public(pool, room_id.as_str(), true).await?;
            diplomatie_storage::rooms::set_public(pool, old.as_str(), false).await?;
        }
        Ok(())
    }

    async fn directory_listed(&self, room_id: &RoomId) -> Result<bool> {
        Ok(diplomatie_storage::rooms::get_room(self.db.pool(), room_id.as_str()).await?.is_some_and(|r| r.is_public))
    }
}

/// A user's level in a power levels content (before v12 creators count as their listed level).
fn power_of_user(levels: &Map<String, Value>, user: &UserId) -> i64 {
    levels
        .get("users")
        .and_then(|u| u.get(user.as_str()))
        .and_then(Value::as_i64)
        .or_else(|| levels.get("users_default").and_then(Value::as_i64))
        .unwrap_or(0)
}
