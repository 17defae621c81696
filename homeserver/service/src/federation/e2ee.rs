//! End-to-end encryption across servers: device keys and one-time keys of other servers'
//! users (asked of their servers), to-device messages (`m.direct_to_device` EDUs), and device
//! list changes (`m.device_list_update` EDUs) both ways. As on one server, only public keys
//! and ciphertext travel.

use std::collections::{BTreeMap, HashSet};

use ruma::{
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
        transactions::edu::DirectDeviceContent,
    },
    OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName, UserId,
};
use serde_json::{json, Map, Value};

use crate::{Error, Result, Services};

/// What another server answered about its users' keys.
pub struct RemoteKeys {
    pub device_keys: Vec<(String, Value)>,
    pub cross_signing: Vec<(&'static str, Map<String, Value>)>,
}

impl Services {
    /// Asks `server` for its users' device and cross-signing keys.
    pub(crate) async fn query_remote_keys(
        &self,
        server: &ServerName,
        users: BTreeMap<OwnedUserId, Vec<String>>,
    ) -> Result<RemoteKeys> {
        let request: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>> =
            users.into_iter().map(|(u, d)| (u, d.into_iter().map(OwnedDeviceId::from).collect())).collect();
        let answer = self.transport.federation_request(server, get_keys::v1::Request::new(request)).await?;
        let mut device_keys = Vec::new();
        for (user, devices) in answer.device_keys {
            if user.server_name() != server {
                continue;
            }
            let mut keys = Map::new();
            for (device, raw) in devices {
                keys.insert(device.to_string(), serde_json::from_str(raw.json().get())?);
            }
            device_keys.push((user.to_string(), Value::Object(keys)));
        }
        let mut cross_signing = Vec::new();
        for (kind, keys) in [("master", answer.master_keys), ("self_signing", answer.self_signing_keys)] {
            let mut map = Map::new();
            for (user, raw) in keys.into_iter().filter(|(u, _)| u.server_name() == server) {
                map.insert(user.to_string(), serde_json::from_str(raw.json().get())?);
            }
            cross_signing.push((kind, map));
        }
        Ok(RemoteKeys { device_keys, cross_signing })
    }

    /// Claims one-time keys of `server`'s users.
    pub(crate) async fn claim_remote_keys(
        &self,
        server: &ServerName,
        users: BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> Result<Map<String, Value>> {
        let request: claim_keys::v1::OneTimeKeyClaims = users
            .into_iter()
            .map(|(u, d)| {
                (u, d.into_iter().map(|(dev, alg)| (OwnedDeviceId::from(dev), alg.as_str().into())).collect())
            })
            .collect();
        let answer = self.transport.federation_request(server, claim_keys::v1::Request::new(request)).await?;
        let value = serde_json::to_value(&answer.one_time_keys)?;
        let mut out = Map::new();
        if let Value::Object(users) = value {
            for (user, keys) in users {
                if <&UserId>::try_from(user.as_str()).is_ok_and(|u| u.server_name() == server) {
                    out.insert(user, keys);
                }
            }
        }
        Ok(out)
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
            self.enqueue_edu(&[server], edu).await?;
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
            self.enqueue_edu(&servers, json!({ "edu_type": "m.device_list_update", "content": content })).await?;
        }
        for device in deleted {
            let content = json!({
                "user_id": user,
                "device_id": device,
                "stream_id": position,
                "prev_id": [],
                "deleted": true,
            });
            self.enqueue_edu(&servers, json!({ "edu_type": "m.device_list_update", "content": content })).await?;
        }
        Ok(())
    }

    /// `user/keys/query` from another server: keys of this server's users.
    pub async fn federation_query_keys(&self, requested: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>) -> Result<Value> {
        let local: BTreeMap<OwnedUserId, Vec<String>> = requested
            .iter()
            .filter(|(u, _)| u.server_name() == self.server_name())
            .map(|(u, d)| (u.clone(), d.iter().map(|d| d.to_string()).collect()))
            .collect();
        let me = self.federation_reader();
        self.query_keys(&me, &local).await
    }

    /// `user/keys/claim` from another server: one-time keys of this server's users.
    pub async fn federation_claim_keys(
        &self,
        requested: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> Result<Value> {
        let local: BTreeMap<OwnedUserId, BTreeMap<String, String>> = requested
            .iter()
            .filter(|(u, _)| u.server_name() == self.server_name())
            .map(|(u, d)| (u.clone(), d.clone()))
            .collect();
        self.claim_keys(&local).await
    }

    /// `user/devices/{userId}` from another server.
    pub async fn federation_user_devices(&self, user: &UserId) -> Result<get_devices::v1::Response> {
        if user.server_name() != self.server_name() {
            return Err(Error::invalid_param("Not a user of this server"));
        }
        let keys: BTreeMap<String, String> =
            diplomatie_storage::e2ee::user_device_keys(self.db.pool(), user.as_str()).await?.into_iter().collect();
        let mut devices = Vec::new();
        for d in self.accounts.devices(user).await? {
            let Some(k) = keys.get(&d.device_id) else { continue };
            let raw = serde_json::value::RawValue::from_string(k.clone()).map_err(crate::internal!())?;
            let mut device =
                get_devices::v1::UserDevice::new(d.device_id.as_str().into(), ruma::serde::Raw::from_json(raw));
            device.device_display_name = d.display_name.clone();
            devices.push(device);
        }
        let position = u64::try_from(self.stream_position()).unwrap_or(0);
        let mut response = get_devices::v1::Response::new(user.to_owned(), ruma::UInt::new_saturating(position));
        response.devices = devices;
        let me = self.federation_reader();
        for (kind, key) in self.cross_signing_keys_for(&me, user).await? {
            let raw = serde_json::value::to_raw_value(&key).map_err(crate::internal!())?;
            match kind {
                "master" => response.master_key = Some(ruma::serde::Raw::from_json(raw)),
                "self_signing" => response.self_signing_key = Some(ruma::serde::Raw::from_json(raw)),
                _ => {}
            }
        }
        Ok(response)
    }

    /// A user id no one else is, to read keys as another server would (no private views).
    fn federation_reader(&self) -> OwnedUserId {
        UserId::parse_with_server_name("_federation", self.server_name()).expect("a valid user id")
    }

    /// `m.direct_to_device` from `origin`: to-device messages of one of its users for ours.
    pub(crate) async fn receive_to_device(&self, origin: &ServerName, content: DirectDeviceContent) -> Result<()> {
        let sender = content.sender;
        if sender.server_name() != origin {
            return Err(Error::forbidden("to-device messages of a user the origin does not speak for"));
        }
        let mut messages: BTreeMap<OwnedUserId, BTreeMap<String, Value>> = BTreeMap::new();
        for (user, devices) in content.messages {
            let mut out = BTreeMap::new();
            for (device, message) in devices {
                out.insert(device.to_string(), serde_json::from_str(message.json().get())?);
            }
            messages.insert(user, out);
        }
        let (event_type, message_id) = (content.ev_type.to_string(), content.message_id.to_string());
        self.deliver_to_device(&sender, &format!("federation:{origin}"), &event_type, &message_id, &messages).await
    }

    /// `m.device_list_update` / `m.signing_key_update` from `origin`: local users sharing a room
    /// with that user are told to fetch its keys again.
    pub(crate) async fn receive_device_list_update(&self, origin: &ServerName, user: &UserId) -> Result<()> {
        if user.server_name() != origin {
            return Err(Error::forbidden("devices of a user the origin does not speak for"));
        }
        self.device_list_changed(user).await
    }
}
