//! End-to-end encryption asked of this server by others: its users' device and one-time keys,
//! to-device messages (`m.direct_to_device` EDUs) and device list changes
//! (`m.device_list_update` EDUs) they send. What this server asks of others is in
//! `e2ee::remote`.

use std::collections::BTreeMap;

use ruma::{
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
        transactions::edu::{DeviceListUpdateContent, DirectDeviceContent, SigningKeyUpdateContent},
    },
    OwnedDeviceId, OwnedUserId, ServerName, UserId,
};

use super::transactions::Peers;
use crate::{Error, Result};

impl Peers {
    /// `user/keys/query` from another server: keys of this server's users.
    pub async fn federation_query_keys(
        &self,
        requested: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<get_keys::v1::Response> {
        let local: BTreeMap<OwnedUserId, Vec<String>> = requested
            .iter()
            .filter(|(u, _)| u.server_name() == self.server_name())
            .map(|(u, d)| (u.clone(), d.iter().map(|d| d.to_string()).collect()))
            .collect();
        let me = self.federation_reader();
        let answer = self.e2ee.query_keys(&me, &local).await?;
        let mut out = get_keys::v1::Response::new(answer.device_keys);
        out.master_keys = answer.master_keys;
        out.self_signing_keys = answer.self_signing_keys;
        Ok(out)
    }

    /// `user/keys/claim` from another server: one-time keys of this server's users.
    pub async fn federation_claim_keys(
        &self,
        requested: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> Result<claim_keys::v1::Response> {
        let local: BTreeMap<OwnedUserId, BTreeMap<String, String>> = requested
            .iter()
            .filter(|(u, _)| u.server_name() == self.server_name())
            .map(|(u, d)| (u.clone(), d.clone()))
            .collect();
        Ok(claim_keys::v1::Response::new(self.e2ee.claim_keys(&local).await?.one_time_keys))
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
        // The stream id of the last update sent of this user's devices (see `e2ee::remote`).
        let last =
            diplomatie_storage::e2ee::user_device_list_change_before(self.db.pool(), user.as_str(), i64::MAX).await?;
        let stream_id = match last {
            Some(position) => crate::e2ee::remote::last_update_id(position)?,
            None => ruma::UInt::MIN,
        };
        let mut response = get_devices::v1::Response::new(user.to_owned(), stream_id);
        response.devices = devices;
        let me = self.federation_reader();
        for (kind, key) in self.e2ee.cross_signing_keys_for(&me, user).await? {
            match kind {
                "master" => response.master_key = Some(key),
                "self_signing" => response.self_signing_key = Some(key),
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
        let origin_device = format!("federation:{origin}");
        self.e2ee
            .deliver_to_device(
                &sender,
                &origin_device,
                &content.ev_type,
                content.message_id.as_str(),
                &content.messages,
            )
            .await
    }

    /// `m.device_list_update` from `origin`: the list kept of its user moves on (or is fetched
    /// again, which asks `origin`: done apart, so that the transaction is answered at once),
    /// and local users sharing a room with that user are told.
    pub(crate) async fn receive_device_list_update(
        &self,
        origin: &ServerName,
        update: DeviceListUpdateContent,
    ) -> Result<()> {
        if update.user_id.server_name() != origin {
            return Err(Error::forbidden("devices of a user the origin does not speak for"));
        }
        let e2ee = self.e2ee.clone();
        tokio::spawn(async move {
            if let Err(e) = e2ee.take_device_list_update(update).await {
                tracing::warn!(error = %e, "device list update not taken in");
            }
        });
        Ok(())
    }

    /// `m.signing_key_update` from `origin`: the cross-signing keys kept of its user.
    pub(crate) async fn receive_signing_key_update(
        &self,
        origin: &ServerName,
        update: SigningKeyUpdateContent,
    ) -> Result<()> {
        if update.user_id.server_name() != origin {
            return Err(Error::forbidden("devices of a user the origin does not speak for"));
        }
        self.e2ee.take_signing_key_update(update).await
    }
}
