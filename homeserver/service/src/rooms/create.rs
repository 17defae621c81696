//! Room creation (`POST /createRoom`), in the order the spec gives for the initial events.

use ruma::events::room::member::MembershipState;
use ruma::{
    api::{
        client::room::{create_room::v3::Request as CreateRoomRequest, Visibility},
        error::ErrorKind,
    },
    events::TimelineEventType,
    OwnedRoomAliasId, OwnedRoomId, RoomVersionId, UserId,
};
use serde_json::{json, Map, Value};

use super::{
    membership::{with_membership, Membership},
    PduBuilder, RoomWriter, Target,
};
use crate::{Error, Result};

/// Room versions this server creates and joins. The spec's recommended default is 12.
pub const SUPPORTED_ROOM_VERSIONS: &[&str] = &["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

#[derive(Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the spec's preset names
enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

impl Membership {
    pub fn default_room_version(&self) -> RoomVersionId {
        RoomVersionId::try_from(self.config.default_room_version.as_str()).unwrap_or(RoomVersionId::V12)
    }

    pub fn is_supported_room_version(&self, version: &RoomVersionId) -> bool {
        SUPPORTED_ROOM_VERSIONS.contains(&version.as_str())
    }

    /// Creates a room as `creator` asks, and returns its id once every initial event is durable.
    pub async fn create_room(&self, creator: &UserId, req: CreateRoomRequest) -> Result<OwnedRoomId> {
        let version = req.room_version.clone().unwrap_or_else(|| self.default_room_version());
        if !self.is_supported_room_version(&version) {
            return Err(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                format!("Room version {version} is not supported"),
            ));
        }
        let rules = version.rules().ok_or_else(crate::internal!("a value present by construction"))?;
        let v12 = rules.authorization.room_create_event_id_as_room_id;

        // Check everything that can fail before the first event is written.
        let alias = match &req.room_alias_name {
            Some(name) => {
                let alias = OwnedRoomAliasId::try_from(format!("#{name}:{}", self.server_name()))
                    .map_err(|_| Error::new(ErrorKind::InvalidParam, "Invalid room alias name"))?;
                if name.contains(':') || name.is_empty() {
                    return Err(Error::new(ErrorKind::InvalidParam, "Invalid room alias name"));
                }
                if crate::names::is_organisation_alias(name) && creator.localpart() != crate::names::SYSTEM_LOCALPART {
                    return Err(Error::new(ErrorKind::Exclusive, "Aliases g.* and c.* are the organisation's"));
                }
                if diplomatie_storage::rooms::get_alias(self.db.pool(), alias.as_str()).await?.is_some() {
                    return Err(Error::new(ErrorKind::RoomInUse, "Room alias already taken"));
                }
                Some(alias)
            }
            None => None,
        };
        let mut creation: Map<String, Value> = match &req.creation_content {
            Some(raw) => {
                serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(format!("creation_content: {e}")))?
            }
            None => Map::new(),
        };
        let mut initial_state = Vec::new();
        for raw in &req.initial_state {
            let ev: Value =
                serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(format!("initial_state: {e}")))?;
            let kind = ev
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::bad_json("initial_state event without type"))?;
            let state_key = ev.get("state_key").and_then(Value::as_str).unwrap_or("").to_owned();
            let content = ev
                .get("content")
                .cloned()
                .filter(Value::is_object)
                .ok_or_else(|| Error::bad_json("initial_state event without content"))?;
            initial_state.push(PduBuilder::state(kind, state_key, content));
        }
        // A DR (restricted distribution) room is encrypted from its creation: encryption comes
        // before the classification, and is added when the request forgot it.
        let classified_dr = initial_state.iter().any(|b| {
            b.kind.to_string() == crate::names::CLASSIFICATION
                && b.content.get("level").and_then(Value::as_str) == Some("DR")
        });
        if classified_dr {
            if req.visibility == Visibility::Public {
                return Err(Error::forbidden("A DR (restricted distribution) room is never listed in the directory"));
            }
            if !initial_state.iter().any(|b| b.kind == TimelineEventType::RoomEncryption) {
                let content = json!({ "algorithm": "m.megolm.v1.aes-sha2" });
                initial_state.insert(0, PduBuilder::state(TimelineEventType::RoomEncryption, "", content));
            }
            let mls = |b: &PduBuilder| b.kind.to_string() == diplomatie_mls::MODE_EVENT;
            if self.config.portal.dr_rooms_mls && !initial_state.iter().any(mls) {
                initial_state.push(PduBuilder::state(
                    TimelineEventType::from(diplomatie_mls::MODE_EVENT),
                    "",
                    json!({ "mode": "mls" }),
                ));
            }
            // Encryption, then the MLS mode, come before the classification that needs them.
            initial_state.sort_by_key(|b| (b.kind != TimelineEventType::RoomEncryption, !mls(b)));
        }

        let preset = match req.preset.as_ref().map(|p| p.as_str()) {
            Some("private_chat") => Preset::PrivateChat,
            Some("trusted_private_chat") => Preset::TrustedPrivateChat,
            Some("public_chat") => Preset::PublicChat,
            Some(other) => return Err(Error::bad_json(format!("Unknown preset {other}"))),
            None if req.visibility == Visibility::Public => Preset::PublicChat,
            None => Preset::PrivateChat,
        };

        // Invitees must exist here before anything is written.
        for invitee in &req.invite {
            if invitee.server_name() != self.server_name() {
                self.transport.check_server_allowed(invitee.server_name())?;
                continue;
            }
            if diplomatie_storage::accounts::get_user(self.db.pool(), invitee.as_str()).await?.is_none() {
                return Err(Error::not_found(format!("Unknown user {invitee}")));
            }
        }

        // Every initial event goes into one batch: the room exists whole, or not at all.
        creation.insert("room_version".into(), json!(version));
        if !rules.authorization.use_room_create_sender {
            creation.insert("creator".into(), json!(creator));
        }
        let room_id = if v12 { None } else { Some(self.new_room_id()?) };
        let mut w = self.rooms.room_writer(Target::New { room_id, version: version.clone() }).await?;
        let mut create = PduBuilder::state(TimelineEventType::RoomCreate, "", Value::Object(creation.clone()));
        // Since v12 a room id is its create event's hash: two rooms created by the same user in
        // the same millisecond with the same options would collide, so timestamps never repeat.
        create.timestamp = Some(self.rooms.unique_timestamp());
        w.append(creator, create, None).await?;
        let room_id = w.room_id().ok_or_else(crate::internal!("a value present by construction"))?.to_owned();
        let result =
            self.initial_events(&mut w, creator, &req, preset, v12, &creation, alias.as_ref(), initial_state).await;
        match result {
            Ok(()) => {}
            Err(Error::Matrix(ErrorKind::Forbidden, reason)) => {
                return Err(Error::new(ErrorKind::InvalidRoomState, format!("Invalid initial room state: {reason}")));
            }
            Err(e) => return Err(e),
        }
        // 8. invites (a refusal is the invitee's, not the state's: M_FORBIDDEN)
        for invitee in req.invite.iter().filter(|u| u.server_name() == self.server_name()) {
            let content =
                with_membership(MembershipState::Invite, self.accounts.member_profile(invitee).await?, req.is_direct);
            w.append(creator, PduBuilder::state(TimelineEventType::RoomMember, invitee.as_str(), content), None)
                .await?;
        }
        if req.visibility == Visibility::Public {
            w.publish_room(&room_id);
        }
        w.commit().await?;
        // Users of other servers are invited once the room exists (their servers sign the
        // invites); a server that refuses or cannot be reached does not undo the room.
        for invitee in req.invite.iter().filter(|u| u.server_name() != self.server_name()) {
            if let Err(e) = self.invite(creator, &room_id, invitee, None, req.is_direct).await {
                tracing::warn!(%room_id, %invitee, error = %e, "invite to another server failed");
            }
        }
        Ok(room_id)
    }

    /// The events after `m.room.create`, in the order the spec gives.
    #[allow(clippy::too_many_arguments)]
    async fn initial_events(
        &self,
        w: &mut RoomWriter<'_>,
        creator: &UserId,
        req: &CreateRoomRequest,
        preset: Preset,
        v12: bool,
        creation: &Map<String, Value>,
        alias: Option<&OwnedRoomAliasId>,
        initial_state: Vec<PduBuilder>,
    ) -> Result<()> {
        let room_id = w.room_id().ok_or_else(crate::internal!("a value present by construction"))?.to_owned();
        // 2. the creator joins
        let profile = self.accounts.member_profile(creator).await?;
        let join = with_membership(MembershipState::Join, profile, req.is_direct);
        w.append(creator, PduBuilder::state(TimelineEventType::RoomMember, creator.as_str(), join), None).await?;

        // 3. power levels: defaults, the preset's changes, then the client's override
        let mut users = Map::new();
        if !v12 {
            users.insert(creator.to_string(), json!(100));
        }
        if preset == Preset::TrustedPrivateChat {
            for invitee in &req.invite {
                users.insert(invitee.to_string(), json!(100));
            }
        }
        let mut power = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
                "m.room.server_acl": 100, "m.room.encryption": 100,
                // Every member may join a call (MatrixRTC): each sets only their own membership
                // of it (`Rooms`' owned state keys).
                "org.matrix.msc3401.call.member": 0, "m.call.member": 0, "m.rtc.member": 0
            },
            "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50,
            "invite": if preset == Preset::PublicChat { 50 } else { 0 },
            "notifications": { "room": 50 },
        });
        if let Some(raw) = &req.power_level_content_override {
            let overrides: Map<String, Value> = serde_json::from_str(raw.json().get())
                .map_err(|e| Error::bad_json(format!("power_level_content_override: {e}")))?;
            for (k, v) in overrides {
                power[k] = v;
            }
        }
        if creation.get("type").and_then(Value::as_str) == Some("m.space") {
            // Spaces: only moderators post messages (children are state and need power 50).
            power["events_default"] = json!(100);
        }
        w.append(creator, PduBuilder::state(TimelineEventType::RoomPowerLevels, "", power), None).await?;

        // 4. canonical alias
        if let Some(alias) = alias {
            w.add_alias(alias, &room_id, creator);
            let content = json!({ "alias": alias });
            w.append(creator, PduBuilder::state(TimelineEventType::RoomCanonicalAlias, "", content), None).await?;
        }

        // 5. the preset's join rules, history visibility and guest access
        let join_rule = if preset == Preset::PublicChat { "public" } else { "invite" };
        let mut preset_events = vec![
            PduBuilder::state(TimelineEventType::RoomJoinRules, "", json!({ "join_rule": join_rule })),
            PduBuilder::state(TimelineEventType::RoomHistoryVisibility, "", json!({ "history_visibility": "shared" })),
        ];
        // Public rooms keep the default guest access (forbidden) without an event, as Synapse.
        if preset != Preset::PublicChat {
            preset_events.push(PduBuilder::state(
                TimelineEventType::RoomGuestAccess,
                "",
                json!({ "guest_access": "can_join" }),
            ));
        }
        for builder in preset_events {
            let overridden = initial_state.iter().any(|b| b.kind == builder.kind && b.state_key == builder.state_key);
            if !overridden {
                w.append(creator, builder, None).await?;
            }
        }

        // 6. initial state, 7. name and topic
        for builder in initial_state {
            if builder.kind == TimelineEventType::RoomCreate {
                return Err(Error::bad_json("initial_state cannot hold m.room.create"));
            }
            w.append(creator, builder, None).await?;
        }
        if let Some(name) = &req.name {
            w.append(creator, PduBuilder::state(TimelineEventType::RoomName, "", json!({ "name": name })), None)
                .await?;
        }
        if let Some(topic) = &req.topic {
            let content = json!({ "topic": topic, "m.topic": [{ "mimetype": "text/plain", "body": topic }] });
            w.append(creator, PduBuilder::state(TimelineEventType::RoomTopic, "", content), None).await?;
        }
        Ok(())
    }

    fn new_room_id(&self) -> Result<OwnedRoomId> {
        OwnedRoomId::try_from(format!("!{}:{}", crate::random_string(18), self.server_name()))
            .map_err(crate::internal!())
    }
}
