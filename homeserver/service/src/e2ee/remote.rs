//! What end-to-end encryption asks of other servers: their users' device and one-time keys
//! (asked at once), to-device messages and device list changes (queued as EDUs). As on one
//! server, only public keys and ciphertext travel. What other servers ask of this one is
//! answered in `federation::e2ee`.

use std::collections::{BTreeMap, HashSet};

use ruma::{
    api::federation::keys::{claim_keys, get_keys},
    encryption::{CrossSigningKey, DeviceKeys},
    serde::Raw,
    OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName, UserId,
};
use serde_json::{json, Map, Value};

use super::E2ee;
use crate::Result;

/// What another server answered about its users' keys (only its own users kept).
pub struct RemoteKeys {
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Raw<DeviceKeys>>>,
    pub master_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    pub self_signing_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
}

impl E2ee {
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
        event_type: &str,
        txn_id: &str,
        messages: BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    ) -> Result<()> {
        let mut by_server: BTreeMap<OwnedServerName, Map<String, Value>> = BTreeMap::new();
        for (user, devices) in messages {
            let devices: Map<String, Value> = devices.into_iter().collect();
            by_server
                .entry(user.server_name().to_owned())
                .or_default()
                .insert(user.to_string(), Value::Object(devices));
        }
        for (server, messages) in by_server {
            self.transport.check_server_allowed(&server)?;
            let edu = json!({
                "edu_type": "m.direct_to_device",
                "content": {
                    "sender": sender,
                    "type": event_type,
                    "message_id": format!("{}-{txn_id}", crate::random_string(8)),
                    "messages": messages,
                },
            });
            self.outbox.enqueue_edu(&[server], edu).await?;
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
        let keys: BTreeMap<String, String> =
            diplomatie_storage::e2ee::user_device_keys(self.db.pool(), user.as_str()).await?.into_iter().collect();
        for device in self.accounts.devices(user).await? {
            let mut content = json!({
                "user_id": user,
                "device_id": device.device_id,
                "stream_id": position,
                "prev_id": [],
                "deleted": false,
            });
            if let Some(name) = &device.display_name {
                content["device_display_name"] = json!(name);
            }
            if let Some(k) = keys.get(&device.device_id) {
                content["keys"] = serde_json::from_str(k)?;
            }
            self.outbox
                .enqueue_edu(&servers, json!({ "edu_type": "m.device_list_update", "content": content }))
                .await?;
        }
        for device in deleted {
            let content = json!({
                "user_id": user,
                "device_id": device,
                "stream_id": position,
                "prev_id": [],
                "deleted": true,
            });
            self.outbox
                .enqueue_edu(&servers, json!({ "edu_type": "m.device_list_update", "content": content }))
                .await?;
        }
        Ok(())
    }
}
