//! DR rooms shared with partner servers (those on the DR allow-list, `portal.
//! dr_federation_allowlist`). One server orders each group's commits: the room creator's,
//! which registered the group. The partners' servers forward their devices' commits and
//! messages to it, read the group and its handshakes from it, and hand out their own users'
//! key packages; each vouches for its own devices (their Matrix keys, their DR approval) and
//! asks the orderer to remove those it stops approving.
//!
//! Over federation, signed (`X-Matrix`): `POST /_diplomatie/federation/v1/mls/{op}` with a
//! JSON object naming the room and the user (of the requesting server) it acts for; `op` is
//! `claim`, `group`, `handshakes`, `commit`, `check` or `revoke`. Errors come back as the
//! client-server API's, the wrong-epoch conflict included, so that the client's retry works
//! the same through a partner.

use std::collections::{BTreeMap, HashMap};

use ruma::{
    api::error::StandardErrorBody, events::StateEventType, OwnedDeviceId, OwnedRoomId, OwnedServerName, OwnedUserId,
    RoomId, ServerName, UserId,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Checked, Handshakes, Mls};
use crate::{federation::client::remote_error, Error, Result};
use diplomatie_mls::{b64, Identity};
use diplomatie_storage::mls as store;

/// Largest answer of a partner server (a group's ratchet tree, a page of handshakes).
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// The operations partners ask for.
const OPERATIONS: &[&str] = &["claim", "group", "handshakes", "commit", "check", "revoke"];

/// What the federation requests carry.
#[derive(Deserialize)]
struct Request {
    room_id: Option<OwnedRoomId>,
    user_id: OwnedUserId,
    device_id: Option<OwnedDeviceId>,
    device_ids: Option<Vec<OwnedDeviceId>>,
    #[serde(default)]
    from_epoch: i64,
    commit: Option<String>,
    welcome: Option<String>,
    group_info: Option<String>,
    message: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Claimed {
    key_packages: HashMap<OwnedDeviceId, String>,
}

fn missing(what: &str) -> Error {
    Error::missing_param(format!("Missing '{what}'"))
}

impl Mls {
    /// The server that orders the room's commits (its creator's), when it is not this one.
    pub(super) async fn orderer(&self, room_id: &RoomId) -> Result<Option<OwnedServerName>> {
        let create = self
            .rooms
            .state_event(room_id, &StateEventType::RoomCreate, "")
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let server = create.sender.server_name();
        Ok((server != self.server_name()).then(|| server.to_owned()))
    }

    /// A partner server: on the DR allow-list.
    pub(super) fn check_partner(&self, server: &ServerName) -> Result<()> {
        if self.config.portal.dr_federation_allowlist.iter().any(|s| s == server.as_str()) {
            Ok(())
        } else {
            Err(Error::forbidden(format!("{server} is not on the DR allow-list: DR rooms are not shared with it")))
        }
    }

    /// Asks the partner `server` for `op`, and reads its answer (its refusal as the error).
    pub(super) async fn ask_json<T: DeserializeOwned>(&self, server: &ServerName, op: &str, body: Value) -> Result<T> {
        self.check_partner(server)?;
        let path = format!("/_diplomatie/federation/v1/mls/{op}");
        let answer = self.transport.federation_json(server, http::Method::POST, &path, &body, MAX_ANSWER_BYTES).await?;
        let status = answer.status();
        let value: Value = serde_json::from_slice(answer.body())
            .map_err(|e| remote_error(server, format!("{op}: not JSON ({status}): {e}")))?;
        if status.is_success() {
            return serde_json::from_value(value).map_err(|e| remote_error(server, format!("{op}: {e}")));
        }
        if value["errcode"] == "FR_DIPLOMATIE_MLS_WRONG_EPOCH" {
            let current = value["current_epoch"].as_u64().unwrap_or_default();
            return Err(Error::MlsWrongEpoch { current, got: current.saturating_sub(1) });
        }
        match serde_json::from_value::<StandardErrorBody>(value) {
            Ok(body) => Err(Error::new(body.kind, format!("{server}: {}", body.message))),
            Err(_) => Err(remote_error(server, format!("{op}: {status}"))),
        }
    }

    /// The Matrix ed25519 key of a partner's device, as its server answers.
    pub(super) async fn remote_device_key(&self, user: &UserId, device: &OwnedDeviceId) -> Result<Option<Vec<u8>>> {
        let asked = BTreeMap::from([(user.to_owned(), vec![device.to_string()])]);
        let answer = self.e2ee.query_remote_keys(user.server_name(), asked).await?;
        let Some(keys) = answer.device_keys.get(user).and_then(|d| d.get(device)) else { return Ok(None) };
        let keys: Value = keys.deserialize_as().map_err(|e| remote_error(user.server_name(), e))?;
        if keys["user_id"] != user.as_str() || keys["device_id"] != device.as_str() {
            return Ok(None);
        }
        let key = keys["keys"][format!("ed25519:{device}")].as_str();
        Ok(key.and_then(|k| b64::decode(k).ok()))
    }

    /// Claims key packages of a partner's user, from its server (which hands out only those
    /// of devices it approves for DR).
    pub(super) async fn claim_remote(
        &self,
        user: &UserId,
        devices: Option<&[OwnedDeviceId]>,
        room_id: Option<&RoomId>,
    ) -> Result<HashMap<OwnedDeviceId, String>> {
        let body = json!({ "user_id": user, "device_ids": devices, "room_id": room_id });
        let claimed: Claimed = self.ask_json(user.server_name(), "claim", body).await?;
        Ok(claimed.key_packages)
    }

    /// Asks the orderer of a room to propose the removal of `user`'s devices this server no
    /// longer approves (all of them when the user lost the DR clearance) or deleted (`gone`).
    /// When the orderer cannot be reached, the removals are kept and asked for again
    /// ([`spawn_revocation_retries`]) until it answers.
    pub(super) async fn revoke_remotely(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        gone: &[&str],
    ) -> Result<usize> {
        let cleared = self.portal.person(user).await?.clearance == diplomatie_policies::Level::DR;
        let mut devices: Vec<OwnedDeviceId> = gone.iter().map(|d| (*d).into()).collect();
        for d in self.accounts.devices(user).await? {
            let id: OwnedDeviceId = d.device_id.as_str().into();
            if !cleared || !self.portal.device_is_dr(user, &id).await? {
                devices.push(id);
            }
        }
        if devices.is_empty() {
            return Ok(0);
        }
        match self.ask_revoke(server, room_id.as_str(), user.as_str(), &devices).await {
            Ok(n) => Ok(n),
            Err(e) => {
                tracing::warn!(%room_id, %server, error = ?e, "MLS: the orderer cannot be asked to remove devices yet");
                let rows: Vec<_> = devices
                    .iter()
                    .map(|d| (server.to_string(), room_id.to_string(), user.to_string(), d.to_string()))
                    .collect();
                let mut tx = self.db.begin().await?;
                store::add_revocations(&mut tx, &rows, crate::now_ms()).await?;
                diplomatie_storage::commit(tx).await?;
                Ok(0)
            }
        }
    }

    async fn ask_revoke(
        &self,
        server: &ServerName,
        room_id: &str,
        user: &str,
        devices: &[OwnedDeviceId],
    ) -> Result<usize> {
        let body = json!({ "room_id": room_id, "user_id": user, "device_ids": devices });
        let v: Value = self.ask_json(server, "revoke", body).await?;
        Ok(v["proposed"].as_u64().unwrap_or_default() as usize)
    }

    /// Asks again for the removals kept (see [`Mls::revoke_remotely`]); those an orderer took
    /// are forgotten. Answers how many it took.
    pub(super) async fn retry_revocations(&self) -> Result<usize> {
        let pending = store::pending_revocations(self.db.pool(), 500).await?;
        let mut by_request: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
        for (server, room, user, device) in pending {
            by_request.entry((server, room, user)).or_default().push(device);
        }
        let mut taken = 0;
        for ((server, room, user), devices) in by_request {
            let Ok(name) = OwnedServerName::try_from(server.as_str()) else { continue };
            let ids: Vec<OwnedDeviceId> = devices.iter().map(|d| d.as_str().into()).collect();
            if let Err(e) = self.ask_revoke(&name, &room, &user, &ids).await {
                tracing::debug!(%server, %room, error = ?e, "MLS: the orderer still cannot be asked to remove devices");
                continue;
            }
            let rows: Vec<_> = devices.into_iter().map(|d| (server.clone(), room.clone(), user.clone(), d)).collect();
            let mut tx = self.db.begin().await?;
            store::delete_revocations(&mut tx, &rows).await?;
            diplomatie_storage::commit(tx).await?;
            taken += rows.len();
        }
        Ok(taken)
    }

    /// `POST /_diplomatie/federation/v1/mls/{op}` from `origin`, a partner server acting for
    /// one of its users.
    pub async fn serve_partner(&self, origin: &ServerName, op: &str, body: &[u8]) -> Result<Value> {
        if !OPERATIONS.contains(&op) {
            return Err(Error::unrecognized(format!("Unknown MLS operation '{op}'")));
        }
        let req: Request = serde_json::from_slice(body).map_err(|e| Error::bad_json(format!("{op}: {e}")))?;
        self.check_partner(origin)?;
        let user = &req.user_id;
        if op == "claim" {
            if user.server_name() != self.server_name() {
                return Err(Error::not_found(format!("{user} is not a user of this server")));
            }
            // Only for an MLS room the user is in and the partner takes part in: a partner
            // cannot drain the key packages of users it shares no DR room with.
            let room_id = req.room_id.as_deref().ok_or_else(|| missing("room_id"))?;
            self.rooms.known_room(room_id).await?;
            if !self.is_mls_room(room_id).await? || !self.in_room(room_id, user).await? {
                return Err(Error::forbidden(format!("{user} is not in that MLS room")));
            }
            if !self.rooms.joined_members(room_id).await?.iter().any(|u| u.server_name() == origin) {
                return Err(Error::forbidden("Your server has no member in that room"));
            }
            let key_packages = self.claim_local(user, req.device_ids.as_deref(), true).await?;
            return to_value(Claimed { key_packages });
        }
        if user.server_name() != origin {
            return Err(Error::forbidden("A server acts only for its own users"));
        }
        let room_id = req.room_id.as_deref().ok_or_else(|| missing("room_id"))?;
        self.rooms.known_room(room_id).await?;
        if self.orderer(room_id).await?.is_some() {
            return Err(Error::forbidden("This server does not order this room's MLS group"));
        }
        let device = req.device_id.as_deref();
        match op {
            "group" => to_value(self.group(user, room_id).await?),
            "handshakes" => to_value(Handshakes { handshakes: self.handshakes(user, room_id, req.from_epoch).await? }),
            "commit" => {
                let device = device.ok_or_else(|| missing("device_id"))?;
                let commit = req.commit.as_deref().ok_or_else(|| missing("commit"))?;
                self.check_mls_member_of_room(room_id, user).await?;
                let info = req.group_info.as_deref();
                to_value(self.decide_commit(user, device, room_id, commit, req.welcome.is_some(), info).await?)
            }
            "check" => {
                let device = device.ok_or_else(|| missing("device_id"))?;
                let message = req.message.as_deref().ok_or_else(|| missing("message"))?;
                self.check_mls_member_of_room(room_id, user).await?;
                self.check_cleared(user, device).await?;
                to_value(Checked { epoch: self.check_message(user, device, room_id, message).await? })
            }
            "revoke" => {
                let revoked: Vec<Identity> =
                    req.device_ids.iter().flatten().map(|d| Identity::new(user.as_str(), d.as_str())).collect();
                Ok(json!({ "proposed": self.enforce_room(room_id, &revoked).await? }))
            }
            _ => Err(Error::unrecognized(format!("Unknown MLS operation '{op}'"))),
        }
    }
}

fn to_value<T: Serialize>(v: T) -> Result<Value> {
    serde_json::to_value(v).map_err(crate::internal!())
}

/// Asks again, in the background, for the removals partners' orderers could not be asked for
/// (as often as the federation's longest back-off allows, at least every minute).
pub fn spawn_revocation_retries(mls: std::sync::Weak<Mls>) {
    tokio::spawn(async move {
        loop {
            let Some(service) = mls.upgrade() else { return };
            let every = std::time::Duration::from_millis(service.config.federation.max_backoff_ms.clamp(1000, 60_000));
            match service.retry_revocations().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(devices = n, "MLS: removals asked of partners' orderers at last"),
                Err(e) => tracing::warn!(error = ?e, "MLS: cannot read the removals to ask for"),
            }
            drop(service);
            tokio::time::sleep(every).await;
        }
    });
}
