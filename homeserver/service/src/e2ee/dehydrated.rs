//! Dehydrated devices (MSC3814, which Element X uses): a device kept on the server, encrypted
//! by the client, that receives to-device messages while the user has no other device online.

use std::collections::BTreeMap;

use diplomatie_storage::{accounts, e2ee as store};
use ruma::{
    api::client::dehydrated_device::{get_events, DehydratedDeviceData},
    serde::Raw,
    OwnedDeviceId, UserId,
};
use serde_json::Value;

use super::E2ee;
use crate::{
    accounts::Caller,
    e2ee::{write_key_upload, KeyUpload},
    now_ms, Error, Result,
};

/// A dehydrated device as a client uploads it.
pub struct Dehydrated {
    pub device_id: OwnedDeviceId,
    pub display_name: Option<String>,
    pub device_data: Value,
    pub device_keys: Value,
    pub one_time_keys: BTreeMap<String, Value>,
    pub fallback_keys: BTreeMap<String, Value>,
}

impl E2ee {
    /// `PUT .../dehydrated_device`: replaces the user's dehydrated device (and its keys).
    pub async fn put_dehydrated_device(&self, caller: &Caller, device: Dehydrated) -> Result<OwnedDeviceId> {
        let user = caller.user_id.as_str();
        if accounts::get_device(self.db.pool(), user, device.device_id.as_str()).await?.is_some()
            && store::dehydrated_device(self.db.pool(), user).await?.is_none_or(|(d, _)| d != device.device_id.as_str())
        {
            return Err(Error::invalid_param("A device with this id already exists"));
        }
        // Check every key before anything is replaced: a refused upload keeps the old device.
        let upload = KeyUpload::new(Some(device.device_keys), device.one_time_keys, device.fallback_keys);
        let upload = self.check_key_upload(&caller.user_id, device.device_id.as_str(), upload, true).await?;
        let mut tx = self.db.begin().await?;
        if let Some((old, _)) = store::dehydrated_device(self.db.pool(), user).await? {
            accounts::delete_device(&mut tx, user, &old).await?;
        }
        let name = device.display_name.as_deref();
        accounts::upsert_device(&mut *tx, user, device.device_id.as_str(), name, now_ms(), None).await?;
        let data = serde_json::to_string(&device.device_data)?;
        store::set_dehydrated_device(&mut tx, user, device.device_id.as_str(), &data).await?;
        write_key_upload(&mut tx, user, device.device_id.as_str(), &upload).await?;
        diplomatie_storage::commit(tx).await?;
        self.accounts.tokens.forget_user(user);
        self.device_list_changed(&caller.user_id).await?;
        Ok(device.device_id)
    }

    /// `GET .../dehydrated_device`: (device id, device data).
    pub async fn dehydrated_device(&self, user: &UserId) -> Result<(OwnedDeviceId, Raw<DehydratedDeviceData>)> {
        let (device, data) = store::dehydrated_device(self.db.pool(), user.as_str())
            .await?
            .ok_or_else(|| Error::not_found("No dehydrated device"))?;
        Ok((device.into(), Raw::from_json_string(data)?))
    }

    /// `DELETE .../dehydrated_device`: removes it with its keys and messages.
    pub async fn delete_dehydrated_device(&self, user: &UserId) -> Result<OwnedDeviceId> {
        let (device, _) = self.dehydrated_device(user).await?;
        let mut tx = self.db.begin().await?;
        accounts::delete_device(&mut tx, user.as_str(), device.as_str()).await?;
        store::delete_dehydrated_device(&mut tx, user.as_str()).await?;
        diplomatie_storage::commit(tx).await?;
        self.accounts.tokens.forget_user(user.as_str());
        self.devices_changed(user, &[device.as_str()]).await?;
        Ok(device)
    }

    /// `POST .../dehydrated_device/{deviceId}/events`: the device's to-device messages after
    /// `next_batch` (those up to it are acknowledged and deleted).
    pub async fn dehydrated_device_events(
        &self,
        user: &UserId,
        device_id: &str,
        next_batch: Option<&str>,
    ) -> Result<get_events::unstable::Response> {
        match store::dehydrated_device(self.db.pool(), user.as_str()).await? {
            Some((d, _)) if d == device_id => {}
            _ => return Err(Error::forbidden("Not your dehydrated device")),
        }
        let since =
            next_batch.map(|b| b.parse::<i64>().map_err(|_| Error::invalid_param("Invalid next_batch"))).transpose()?;
        if let Some(since) = since {
            store::ack_to_device(self.db.pool(), user.as_str(), device_id, since).await?;
        }
        let rows = store::to_device_for(self.db.pool(), user.as_str(), device_id, i64::MAX, 100).await?;
        let last = rows.last().map(|r| r.3).or(since);
        let events = rows
            .into_iter()
            .map(|(sender, kind, content, _)| super::to_device_event(&sender, &kind, &content))
            .collect::<Result<_>>()?;
        let mut out = get_events::unstable::Response::new(events);
        out.next_batch = last.map(|l| l.to_string());
        Ok(out)
    }
}
