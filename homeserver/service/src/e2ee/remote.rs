//! What end-to-end encryption asks of other servers: their users' device and one-time keys
//! (asked at once), to-device messages and device list changes (queued as EDUs). As on one
//! server, only public keys and ciphertext travel. What other servers ask of this one is
//! answered in `federation::e2ee`.
//!
//! The device lists of other servers' users that a local user shares a room with are kept
//! here (as Synapse keeps them): fetched whole (`user/devices`) the first time, moved on by
//! each `m.device_list_update` whose `prev_id` this server has seen, fetched again when one
//! was missed, and forgotten when no local user shares a room with them anymore. A query is
//! answered from the list kept; when the user's server is down, from the last copy.

use std::collections::{BTreeMap, HashSet};

use diplomatie_storage::remote_devices::{self as kept, DeviceList, RemoteDevice};
use ruma::{
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
        transactions::edu::{DeviceListUpdateContent, DirectDeviceContent, Edu, SigningKeyUpdateContent},
    },
    encryption::{CrossSigningKey, DeviceKeys},
    events::ToDeviceEventType,
    serde::Raw,
    OwnedDeviceId, OwnedRoomId, OwnedServerName, OwnedUserId, ServerName, TransactionId, UInt, UserId,
};
use serde_json::{json, Value};

use super::{E2ee, ToDeviceMessages};
use crate::{now_ms, Result};

/// What another server answered about its users' keys (only its own users kept).
pub struct RemoteKeys {
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Raw<DeviceKeys>>>,
    pub master_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    pub self_signing_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
}

/// A remote user's keys as this server keeps them, for a `/keys/query` answer.
pub struct KeptKeys {
    pub devices: BTreeMap<OwnedDeviceId, Raw<DeviceKeys>>,
    pub master_key: Option<Raw<CrossSigningKey>>,
    pub self_signing_key: Option<Raw<CrossSigningKey>>,
}

/// The `m.device_list_update` EDUs one change of a user's devices sends at most (one a device).
const EDUS_PER_CHANGE: usize = 1024;

/// The stream id of the `k`th update of the change at `position` (not its last).
fn update_id(position: i64, k: usize) -> Result<UInt> {
    let id = position.checked_mul(EDUS_PER_CHANGE as i64).and_then(|b| b.checked_add(k as i64));
    id.and_then(|i| UInt::try_from(i).ok()).ok_or_else(crate::internal!("a stream id within bounds"))
}

/// The stream id of the last update of the change at `position`, which `user/devices` also
/// answers when that change is the user's last.
pub(crate) fn last_update_id(position: i64) -> Result<UInt> {
    update_id(position, EDUS_PER_CHANGE - 1)
}

fn stream(id: UInt) -> i64 {
    i64::try_from(u64::from(id)).unwrap_or(i64::MAX)
}

impl E2ee {
    /// Whether a local user shares a room with `user` (then this server keeps their list).
    async fn tracks(&self, user: &UserId) -> Result<bool> {
        for room in crate::rooms::joined_rooms(self, user).await? {
            if self.rooms.server_in_room(&room).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The lock of `user`'s kept list.
    async fn lock_list(&self, user: &UserId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self.state.remote_lists.lock().unwrap().entry(user.to_owned()).or_default().clone();
        lock.lock_owned().await
    }

    /// `m.device_list_update` from the user's own server: taken in when it follows what this
    /// server saw (every `prev_id` seen), ignored when seen already, else the whole list is
    /// fetched again; then the local users sharing a room with them are told.
    pub(crate) async fn take_device_list_update(&self, update: DeviceListUpdateContent) -> Result<()> {
        let user = update.user_id.clone();
        if !self.tracks(&user).await? {
            return Ok(());
        }
        {
            let _one = self.lock_list(&user).await;
            let stream_id = stream(update.stream_id);
            // Keys that are not this device's (or not device keys at all) are not kept: the
            // device keeps those it had (as fetched whole).
            let keys = update
                .keys
                .as_ref()
                .filter(|keys| keys.deserialize().is_ok_and(|k| k.user_id == user && k.device_id == update.device_id));
            match kept::list(self.db.pool(), user.as_str()).await? {
                // Seen already (our own server sends one stream id for every device of a change:
                // an equal one is taken in again, which changes nothing when it was).
                Some(list) if !list.stale && stream_id < list.stream_id => return Ok(()),
                Some(mut list) if !list.stale && update.prev_id.iter().all(|p| stream(*p) <= list.stream_id) => {
                    list.stream_id = stream_id;
                    let device = if update.deleted == Some(true) {
                        None
                    } else {
                        let known = kept::devices(self.db.pool(), user.as_str())
                            .await?
                            .into_iter()
                            .find(|d| d.device_id == update.device_id.as_str());
                        let device_keys = match (keys, &known) {
                            (Some(keys), _) => keys.json().get().to_owned(),
                            (None, Some(d)) => d.device_keys.clone(),
                            (None, None) => "{}".to_owned(),
                        };
                        let display_name = update.device_display_name.clone().or(known.and_then(|d| d.display_name));
                        Some(RemoteDevice { device_id: update.device_id.to_string(), device_keys, display_name })
                    };
                    let mut tx = self.db.begin_write().await?;
                    kept::update(&mut tx, user.as_str(), &list, update.device_id.as_str(), device.as_ref(), now_ms())
                        .await?;
                    diplomatie_storage::commit(tx).await?;
                }
                _ => {
                    self.resync_devices(&user).await?;
                }
            }
        }
        self.device_list_changed(&user).await
    }

    /// `m.signing_key_update` from the user's own server: their kept cross-signing keys.
    pub(crate) async fn take_signing_key_update(&self, update: SigningKeyUpdateContent) -> Result<()> {
        let user = update.user_id.clone();
        if !self.tracks(&user).await? {
            return Ok(());
        }
        {
            let _one = self.lock_list(&user).await;
            if let Some(mut list) = kept::list(self.db.pool(), user.as_str()).await? {
                if let Some(key) = &update.master_key {
                    list.master_key = Some(key.json().get().to_owned());
                }
                if let Some(key) = &update.self_signing_key {
                    list.self_signing_key = Some(key.json().get().to_owned());
                }
                kept::put_list(self.db.pool(), user.as_str(), &list, now_ms()).await?;
            }
        }
        self.device_list_changed(&user).await
    }

    /// Fetches a remote user's whole device list and keeps it; when their server does not
    /// answer, the copy kept (if any) is marked stale. Answers whether it was fetched.
    async fn resync_devices(&self, user: &UserId) -> Result<bool> {
        let request = get_devices::v1::Request::new(user.to_owned());
        let answer = match self.transport.federation_request(user.server_name(), request).await {
            Ok(answer) if answer.user_id == user => answer,
            outcome => {
                let error = outcome.err().map(|e| e.to_string()).unwrap_or_else(|| "another user's list".into());
                tracing::warn!(user = %user, error, "remote device list: not fetched");
                kept::mark_stale(self.db.pool(), user.as_str()).await?;
                return Ok(false);
            }
        };
        let devices: Vec<RemoteDevice> = answer
            .devices
            .iter()
            .map(|d| RemoteDevice {
                device_id: d.device_id.to_string(),
                device_keys: d.keys.json().get().to_owned(),
                display_name: d.device_display_name.clone(),
            })
            .collect();
        let list = DeviceList {
            stream_id: stream(answer.stream_id),
            stale: false,
            master_key: answer.master_key.as_ref().map(|k| k.json().get().to_owned()),
            self_signing_key: answer.self_signing_key.as_ref().map(|k| k.json().get().to_owned()),
        };
        let mut tx = self.db.begin_write().await?;
        kept::replace(&mut tx, user.as_str(), &list, &devices, now_ms()).await?;
        diplomatie_storage::commit(tx).await?;
        Ok(true)
    }

    /// A tracked remote user's keys (`devices` of them, or all) from the list kept, fetched
    /// first when there is none or it is stale; the last copy when their server does not
    /// answer. `None`: the user is not tracked (ask their server).
    pub(crate) async fn kept_keys(&self, user: &UserId, devices: &[String]) -> Result<Option<KeptKeys>> {
        if !self.tracks(user).await? {
            return Ok(None);
        }
        let _one = self.lock_list(user).await;
        let list = match kept::list(self.db.pool(), user.as_str()).await? {
            Some(list) if !list.stale => list,
            _ => {
                // Fetched: what the list kept said before may have been behind (as Synapse
                // does, the users sharing a room with them are told the list changed).
                if self.resync_devices(user).await? {
                    self.device_list_changed(user).await?;
                }
                match kept::list(self.db.pool(), user.as_str()).await? {
                    Some(list) => list,
                    None => return Err(crate::Error::not_found(format!("{} did not answer", user.server_name()))),
                }
            }
        };
        let mut out = BTreeMap::new();
        for d in kept::devices(self.db.pool(), user.as_str()).await? {
            if !devices.is_empty() && !devices.contains(&d.device_id) {
                continue;
            }
            let mut keys: Value = serde_json::from_str(&d.device_keys)?;
            if let (Some(object), Some(name)) = (keys.as_object_mut(), d.display_name) {
                object.insert("unsigned".into(), json!({ "device_display_name": name }));
            }
            out.insert(OwnedDeviceId::from(d.device_id), crate::to_raw(&keys)?);
        }
        let key = |k: Option<String>| k.map(Raw::from_json_string).transpose();
        Ok(Some(KeptKeys {
            devices: out,
            master_key: key(list.master_key)?,
            self_signing_key: key(list.self_signing_key)?,
        }))
    }

    /// After members left rooms: the lists of remote users no local user shares a room with
    /// anymore are forgotten (a later join fetches them again).
    pub(crate) async fn untrack_after(&self, departures: Vec<(OwnedRoomId, String)>) -> Result<()> {
        let me = self.server_name().to_owned();
        let mut candidates = HashSet::new();
        for (room, member) in departures {
            let Ok(member) = OwnedUserId::try_from(member) else { continue };
            if member.server_name() != me {
                candidates.insert(member);
            } else {
                candidates
                    .extend(self.rooms.joined_members(&room).await?.iter().filter(|u| u.server_name() != me).cloned());
            }
        }
        for user in candidates {
            if kept::list(self.db.pool(), user.as_str()).await?.is_none() || self.tracks(&user).await? {
                continue;
            }
            let _one = self.lock_list(&user).await;
            let mut tx = self.db.begin_write().await?;
            kept::forget(&mut tx, user.as_str()).await?;
            diplomatie_storage::commit(tx).await?;
        }
        Ok(())
    }

    /// Asks `server` for its users' device and cross-signing keys.
    pub(crate) async fn query_remote_keys(
        &self,
        server: &ServerName,
        users: BTreeMap<OwnedUserId, Vec<String>>,
    ) -> Result<RemoteKeys> {
        let request: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>> =
            users.into_iter().map(|(u, d)| (u, d.into_iter().map(OwnedDeviceId::from).collect())).collect();
        let answer = self.transport.federation_request(server, get_keys::v1::Request::new(request)).await?;
        let own = |u: &OwnedUserId| u.server_name() == server;
        Ok(RemoteKeys {
            device_keys: answer.device_keys.into_iter().filter(|(u, _)| own(u)).collect(),
            master_keys: answer.master_keys.into_iter().filter(|(u, _)| own(u)).collect(),
            self_signing_keys: answer.self_signing_keys.into_iter().filter(|(u, _)| own(u)).collect(),
        })
    }

    /// Claims one-time keys of `server`'s users.
    pub(crate) async fn claim_remote_keys(
        &self,
        server: &ServerName,
        users: BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> Result<BTreeMap<OwnedUserId, super::OneTimeKeys>> {
        let request: claim_keys::v1::OneTimeKeyClaims = users
            .into_iter()
            .map(|(u, d)| {
                (u, d.into_iter().map(|(dev, alg)| (OwnedDeviceId::from(dev), alg.as_str().into())).collect())
            })
            .collect();
        let answer = self.transport.federation_request(server, claim_keys::v1::Request::new(request)).await?;
        Ok(answer.one_time_keys.into_iter().filter(|(u, _)| u.server_name() == server).collect())
    }

    /// Sends to-device messages to other servers' users, one EDU per server.
    pub(crate) async fn send_remote_to_device(
        &self,
        sender: &UserId,
        event_type: &ToDeviceEventType,
        txn_id: &TransactionId,
        messages: ToDeviceMessages,
    ) -> Result<()> {
        let mut by_server: BTreeMap<OwnedServerName, ToDeviceMessages> = BTreeMap::new();
        for (user, devices) in messages {
            by_server.entry(user.server_name().to_owned()).or_default().insert(user, devices);
        }
        for (server, messages) in by_server {
            self.transport.check_server_allowed(&server)?;
            let message_id = format!("{}-{txn_id}", crate::random_string(8));
            let mut content = DirectDeviceContent::new(sender.to_owned(), event_type.clone(), message_id.into());
            content.messages = messages;
            self.outbox.enqueue_edu(&[server], &Edu::DirectToDevice(content)).await?;
        }
        Ok(())
    }

    /// Tells the servers sharing a room with a local user that its devices changed: an
    /// `m.device_list_update` per device, and one with `deleted: true` per deleted device
    /// (they may also resync through `user/devices`).
    pub(crate) async fn federate_device_list_change(
        &self,
        user: &UserId,
        sharing: &HashSet<OwnedUserId>,
        position: i64,
        deleted: &[&str],
    ) -> Result<()> {
        if !self.transport.federation_enabled() {
            return Ok(());
        }
        let servers: Vec<OwnedServerName> = {
            let mut s: Vec<OwnedServerName> = sharing
                .iter()
                .map(|u| u.server_name().to_owned())
                .filter(|s| s != self.server_name() && self.transport.check_server_allowed(s).is_ok())
                .collect();
            s.sort();
            s.dedup();
            s
        };
        if servers.is_empty() {
            return Ok(());
        }
        let pool = self.db.pool();
        let keys: BTreeMap<String, String> =
            diplomatie_storage::e2ee::user_device_keys(pool, user.as_str()).await?.into_iter().collect();
        let mut updates = Vec::new();
        for device in self.accounts.devices(user).await? {
            let device_id: OwnedDeviceId = device.device_id.into();
            let mut content = DeviceListUpdateContent::new(user.to_owned(), device_id.clone(), UInt::MIN);
            content.device_display_name = device.display_name;
            content.deleted = Some(false);
            content.keys = keys.get(device_id.as_str()).map(|k| Raw::from_json_string(k.clone())).transpose()?;
            updates.push(content);
        }
        for device in deleted {
            let mut content = DeviceListUpdateContent::new(user.to_owned(), (*device).into(), UInt::MIN);
            content.deleted = Some(true);
            updates.push(content);
        }
        if updates.len() > EDUS_PER_CHANGE {
            tracing::warn!(user = %user, devices = updates.len(), "device list change: only the first updates are sent");
            updates.truncate(EDUS_PER_CHANGE);
        }
        // Each update has a stream id of its own, chained by `prev_id` to the one before (the
        // last of the previous change first), so that a server that missed one fetches the
        // list again, and none takes two updates for one.
        let previous = diplomatie_storage::e2ee::user_device_list_change_before(pool, user.as_str(), position).await?;
        let mut prev = previous.map(last_update_id).transpose()?;
        let count = updates.len();
        for (k, mut content) in updates.into_iter().enumerate() {
            let id = if k + 1 == count { last_update_id(position)? } else { update_id(position, k)? };
            content.stream_id = id;
            content.prev_id = prev.into_iter().collect();
            prev = Some(id);
            self.outbox.enqueue_edu(&servers, &Edu::DeviceListUpdate(content)).await?;
        }
        Ok(())
    }
}
