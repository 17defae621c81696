//! Third-party invites (client-server spec, "Third-party invites"): an invite by e-mail
//! address. When the identity server knows the address, its user is invited as any other;
//! otherwise the identity server stores the invite (and e-mails it), and the room gets an
//! `m.room.third_party_invite` event. Once someone binds the address, the identity server tells
//! their homeserver (`/3pid/onbind`), and the inviter's server sends the member event the
//! invite promised, carrying the identity server's signature, which the authorisation rules
//! check against the keys of the `m.room.third_party_invite` event.

use ruma::{
    api::error::ErrorKind,
    events::{StateEventType, TimelineEventType},
    OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde_json::{json, Value};

use super::{membership::Membership, PduBuilder, Target};
use crate::{Error, Result};

/// Who is invited, and through which identity server (`POST /rooms/{roomId}/invite` with a
/// third-party id).
pub struct AddressInvite<'a> {
    pub id_server: &'a str,
    pub id_access_token: &'a str,
    pub medium: &'a str,
    pub address: &'a str,
}

/// Whether an invite may go to an address of `medium`: e-mail addresses and phone numbers.
pub fn check_medium(medium: &str) -> Result<()> {
    if !matches!(medium, "email" | "msisdn") {
        let message = format!("Cannot invite by {medium}: only e-mail addresses and phone numbers");
        return Err(Error::new(ErrorKind::ThreepidMediumNotSupported, message));
    }
    Ok(())
}

impl Membership {
    /// Invites whoever holds `invite.address` into the room. Answers the user invited when the
    /// identity server knew them, `None` when the invite waits for the address to be bound.
    pub async fn invite_by_address(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        invite: AddressInvite<'_>,
    ) -> Result<Option<OwnedUserId>> {
        self.rooms.known_room(room_id).await?;
        if !self.rooms.is_joined(room_id, sender).await? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        check_medium(invite.medium)?;
        let room = self.portal.room_facts_now(room_id).await?;
        diplomatie_policies::may_invite_by_address(room).map_err(crate::error::forbidden)?;
        let AddressInvite { id_server, id_access_token: token, medium, address } = invite;
        if let Some(user) = self.identity.lookup(id_server, token, medium, address).await? {
            self.invite(sender, room_id, &user, None, false).await?;
            return Ok(Some(user));
        }
        let state = self.rooms.current_state(room_id).await?;
        let field = |kind: StateEventType, name: &'static str| {
            let state = state.clone();
            async move {
                let pdu = self.rooms.state_event_in(&state, &kind, "").await?;
                Ok::<_, Error>(pdu.and_then(|p| p.content_field(name)).filter(Value::is_string))
            }
        };
        let profile = self.accounts.member_profile(sender).await?;
        let mut request = json!({
            "medium": medium,
            "address": address,
            "room_id": room_id,
            "sender": sender,
        });
        let shown = [
            ("room_name", field(StateEventType::RoomName, "name").await?),
            ("room_alias", field(StateEventType::RoomCanonicalAlias, "alias").await?),
            ("room_avatar_url", field(StateEventType::RoomAvatar, "url").await?),
            ("room_join_rules", field(StateEventType::RoomJoinRules, "join_rule").await?),
            ("sender_display_name", profile.get("displayname").cloned()),
            ("sender_avatar_url", profile.get("avatar_url").cloned()),
        ];
        for (key, value) in shown {
            if let Some(v) = value {
                request[key] = v;
            }
        }
        let stored = self.identity.store_invite(id_server, token, &request).await?;
        let first = stored.public_keys.first().cloned().unwrap_or(Value::Null);
        let content = json!({
            "display_name": stored.display_name,
            "key_validity_url": first.get("key_validity_url"),
            "public_key": first.get("public_key"),
            "public_keys": stored.public_keys,
        });
        let builder = PduBuilder::state(TimelineEventType::RoomThirdPartyInvite, &stored.token, content);
        self.rooms.append_event(Target::Room(room_id), sender, builder, None).await?;
        Ok(None)
    }

    /// The member event a third-party invite promised, now that `mxid` holds the address:
    /// sent by the inviter (a user of this server) with the identity server's `signed` block,
    /// as `/3pid/onbind` and another server's `exchange_third_party_invite` ask.
    pub async fn exchange_third_party_invite(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        mxid: &UserId,
        signed: &Value,
    ) -> Result<()> {
        if sender.server_name() != self.server_name() {
            return Err(Error::forbidden("The inviter is not a user of this server"));
        }
        self.rooms.known_room(room_id).await?;
        let token =
            signed.get("token").and_then(Value::as_str).ok_or_else(|| Error::bad_json("signed.token is missing"))?;
        if signed.get("mxid").and_then(Value::as_str) != Some(mxid.as_str()) {
            return Err(Error::bad_json("signed.mxid is not the user invited"));
        }
        let promise = self
            .rooms
            .state_event(room_id, &StateEventType::RoomThirdPartyInvite, token)
            .await?
            .ok_or_else(|| Error::not_found("No third-party invite with that token in the room"))?;
        self.check_invite_signature(&promise.content_value(), signed).await?;
        let display_name = promise.content_field("display_name").unwrap_or(Value::Null);
        let mut content = json!({
            "membership": "invite",
            "third_party_invite": { "display_name": display_name, "signed": signed },
        });
        if mxid.server_name() != self.server_name() {
            self.portal.check_federation(room_id, mxid.server_name()).await?;
            return self.remote_membership.invite_remote(sender, room_id, mxid, content).await;
        }
        for (key, value) in self.accounts.member_profile(mxid).await? {
            content[key] = value;
        }
        let builder = PduBuilder::state(TimelineEventType::RoomMember, mxid.as_str(), content);
        self.rooms.append_event(Target::Room(room_id), sender, builder, None).await?;
        Ok(())
    }

    /// Checks, before anything is sent, that a key of the invite's promise signed `signed` and
    /// that its identity server still vouches for that key (a key revoked since, or an
    /// identity server that cannot be asked, refuses the invite).
    async fn check_invite_signature(&self, promise: &Value, signed: &Value) -> Result<()> {
        use ruma::{serde::Base64, signatures::PublicKeyMap, CanonicalJsonObject};
        let mut keys: Vec<(&str, Option<&str>)> = Vec::new();
        if let Some(key) = promise.get("public_key").and_then(Value::as_str) {
            keys.push((key, promise.get("key_validity_url").and_then(Value::as_str)));
        }
        for k in promise.get("public_keys").and_then(Value::as_array).into_iter().flatten() {
            if let Some(key) = k.get("public_key").and_then(Value::as_str) {
                keys.push((key, k.get("key_validity_url").and_then(Value::as_str)));
            }
        }
        let object: CanonicalJsonObject =
            serde_json::from_value(signed.clone()).map_err(|_| Error::bad_json("signed is not canonical JSON"))?;
        let signers: Vec<(String, Vec<String>)> = signed
            .get("signatures")
            .and_then(Value::as_object)
            .map(|by_entity| {
                by_entity
                    .iter()
                    .map(|(entity, sigs)| {
                        (entity.clone(), sigs.as_object().map(|s| s.keys().cloned().collect()).unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (key, validity_url) in keys {
            let Ok(decoded) = Base64::parse(key) else { continue };
            let map: PublicKeyMap = signers
                .iter()
                .map(|(entity, ids)| (entity.clone(), ids.iter().map(|id| (id.clone(), decoded.clone())).collect()))
                .collect();
            if map.is_empty() || ruma::signatures::verify_json(&map, &object).is_err() {
                continue;
            }
            let Some(url) = validity_url else { return Ok(()) };
            return match self.identity.key_is_valid(url, key).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(Error::forbidden("The identity server revoked the key that signed the invite")),
                Err(e) => Err(Error::forbidden(format!("The invite's key could not be checked: {e}"))),
            };
        }
        Err(Error::forbidden("No key of the invite signed it"))
    }

    /// `/3pid/onbind`: an identity server says `mxid` now holds an address that had invites.
    /// Each is exchanged by the inviter's server: here when the inviter is a user of this
    /// server, else asked of theirs (`exchange_third_party_invite`). An invite that fails is
    /// logged, the others go on, and the first failure is answered.
    pub async fn on_bind(&self, mxid: &UserId, invites: &[(OwnedRoomId, OwnedUserId, Value)]) -> Result<()> {
        use ruma::api::federation::thirdparty::exchange_invite;
        if mxid.server_name() != self.server_name() {
            return Err(Error::invalid_param("Not a user of this server"));
        }
        let mut failed = None;
        for (room_id, sender, signed) in invites {
            let done = if sender.server_name() == self.server_name() {
                self.exchange_third_party_invite(room_id, sender, mxid, signed).await
            } else {
                let content = json!({
                    "membership": "invite",
                    "third_party_invite": { "display_name": "", "signed": signed },
                });
                let request = exchange_invite::v1::Request::new(
                    room_id.clone(),
                    sender.clone(),
                    mxid.to_owned(),
                    crate::pdu::raw(&content),
                );
                self.transport.federation_request(sender.server_name(), request).await.map(|_| ())
            };
            if let Err(e) = done {
                tracing::warn!(%room_id, %sender, %mxid, error = %e, "a third-party invite could not be exchanged");
                failed.get_or_insert(e);
            }
        }
        // The identity server hears of a failure (and may try again), as from Synapse.
        failed.map_or(Ok(()), Err)
    }
}
