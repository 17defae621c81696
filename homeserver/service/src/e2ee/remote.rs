//! What end-to-end encryption asks of other servers: their users' device and one-time keys
//! (asked at once), to-device messages and device list changes (queued as EDUs). As on one
//! server, only public keys and ciphertext travel. What other servers ask of this one is
//! answered in `federation::e2ee`.

use std::collections::{BTreeMap, HashSet};

use ruma::{
    api::federation::{
        keys::{claim_keys, get_keys},
        transactions::edu::{DeviceListUpdateContent, DirectDeviceContent, Edu},
    },
    encryption::{CrossSigningKey, DeviceKeys},
    events::ToDeviceEventType,
    serde::Raw,
    OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName, TransactionId, UInt, UserId,
};

use super::{E2ee, ToDeviceMessages};
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
        let keys: BTreeMap<String, String> =
            diplomatie_storage::e2ee::user_device_keys(self.db.pool(), user.as_str()).await?.into_iter().collect();
        let stream_id = UInt::try_from(position).map_err(crate::internal!())?;
        for device in self.accounts.devices(user).await? {
            let device_id: OwnedDeviceId = device.device_id.into();
            let mut content = DeviceListUpdateContent::new(user.to_owned(), device_id.clone(), stream_id);
            content.device_display_name = device.display_name;
            content.deleted = Some(false);
            content.keys = keys.get(device_id.as_str()).map(|k| Raw::from_json_string(k.clone())).transpose()?;
            self.outbox.enqueue_edu(&servers, &Edu::DeviceListUpdate(content)).await?;
        }
        for device in deleted {
            let mut content = DeviceListUpdateContent::new(user.to_owned(), (*device).into(), stream_id);
            content.deleted = Some(true);
            self.outbox.enqueue_edu(&servers, &Edu::DeviceListUpdate(content)).await?;
        }
        Ok(())
    }
}
