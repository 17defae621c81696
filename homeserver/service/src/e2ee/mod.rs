//! End-to-end encryption support (client-server spec, "End-to-End Encryption"): the server
//! stores and relays public keys and ciphertext, and tells clients whose devices changed.
//! It never sees plaintext.

pub mod backup;
pub mod cross_signing;
pub mod dehydrated;
pub mod remote;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
};

use diplomatie_storage::e2ee as store;
use ruma::{
    api::client::keys::{claim_keys, get_keys},
    encryption::{CrossSigningKey, OneTimeKey},
    events::{room::member::MembershipState, AnyToDeviceEvent, AnyToDeviceEventContent, ToDeviceEventType},
    serde::Raw,
    to_device::DeviceIdOrAllDevices,
    OneTimeKeyAlgorithm, OneTimeKeyId, OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId, TransactionId, UInt, UserId,
};
use serde_json::{json, Value};

use crate::{
    accounts::{Accounts, Caller},
    core::Core,
    federation::{client::Transport, sender::Outbox},
    rooms::{commit, Rooms},
    uia::Uia,
    Error, Result,
};

/// To-device messages by user and device (`*`: every device of the user), as clients send
/// them and as other servers pass them on.
pub type ToDeviceMessages = BTreeMap<OwnedUserId, BTreeMap<DeviceIdOrAllDevices, Raw<AnyToDeviceEventContent>>>;

/// What `/sync` needs to skip the encryption queries when nothing changed: which devices have
/// to-device messages waiting, where the device list stream and the membership events stand,
/// and each device's key counts.
#[derive(Default)]
pub struct E2eeState {
    /// Devices with messages waiting, with a count of sends (so that a sync that found nothing
    /// does not clear the mark of a send that raced it).
    pending: Mutex<HashMap<(String, String), u64>>,
    last_device_change: AtomicI64,
    last_member_change: AtomicI64,
    counts: Mutex<HashMap<(String, String), KeyCounts>>,
    /// A lock per remote user whose device list is being read, resynced or moved on (one
    /// thing at a time per user; as many entries as remote users ever tracked at once).
    remote_lists: Mutex<HashMap<OwnedUserId, Arc<tokio::sync::Mutex<()>>>>,
}

/// End-to-end encryption: device and one-time keys, cross-signing, key backups, dehydrated
/// devices, to-device messages and device lists; over the rooms (who shares a room with whom),
/// the accounts (devices), UIA, and the transport and outbox (other servers' users).
pub struct E2ee {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    accounts: Arc<Accounts>,
    uia: Arc<Uia>,
    transport: Arc<Transport>,
    outbox: Arc<Outbox>,
    pub(crate) state: E2eeState,
}

crate::core::over_core!(E2ee);

impl E2ee {
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        accounts: Arc<Accounts>,
        uia: Arc<Uia>,
        transport: Arc<Transport>,
        outbox: Arc<Outbox>,
        state: E2eeState,
    ) -> E2ee {
        E2ee { core, rooms, accounts, uia, transport, outbox, state }
    }
}

impl E2eeState {
    /// Loads the state from the database at start-up. `stream` is the stream position: taken
    /// as the last membership change (an over-estimate only makes the first `/sync`s after a
    /// start compute device lists; scanning every event for the true one took seconds on a
    /// large database).
    pub async fn load(db: &diplomatie_storage::Db, stream: i64) -> diplomatie_storage::Result<E2eeState> {
        let state = E2eeState::default();
        let waiting = store::devices_with_to_device(db.pool()).await?;
        state.pending.lock().unwrap().extend(waiting.into_iter().map(|k| (k, 0)));
        state.last_device_change.store(store::last_device_list_change(db.pool()).await?, Ordering::Release);
        state.last_member_change.store(stream, Ordering::Release);
        Ok(state)
    }

    /// Called by the room writer when membership events are committed at `position`.
    pub(crate) fn membership_changed(&self, position: i64) {
        self.last_member_change.fetch_max(position, Ordering::AcqRel);
    }

    fn forget_counts(&self, user: &str, device: &str) {
        self.counts.lock().unwrap().remove(&(user.to_owned(), device.to_owned()));
    }

    /// Forgets the key counts of a user's devices (keys claimed or devices deleted).
    pub fn forget_user_counts(&self, user: &str) {
        self.counts.lock().unwrap().retain(|(u, _), _| u != user);
    }
}

/// Keys a device uploads; `new_device_keys` is set by the check when they are to be stored.
pub struct KeyUpload {
    pub device_keys: Option<Value>,
    pub one_time_keys: BTreeMap<String, Value>,
    pub fallback_keys: BTreeMap<String, Value>,
    new_device_keys: Option<Value>,
}

impl KeyUpload {
    pub fn new(
        device_keys: Option<Value>,
        one_time_keys: BTreeMap<String, Value>,
        fallback_keys: BTreeMap<String, Value>,
    ) -> Self {
        KeyUpload { device_keys, one_time_keys, fallback_keys, new_device_keys: None }
    }
}

/// Writes a checked upload into a transaction.
pub async fn write_key_upload(
    tx: &mut diplomatie_storage::Connection,
    user: &str,
    device: &str,
    upload: &KeyUpload,
) -> Result<()> {
    if let Some(keys) = &upload.new_device_keys {
        store::set_device_keys(tx, user, device, &serde_json::to_string(keys)?).await?;
    }
    for (name, value) in &upload.one_time_keys {
        store::add_one_time_key(tx, user, device, split_key_name(name)?, &serde_json::to_string(value)?).await?;
    }
    for (name, value) in &upload.fallback_keys {
        store::set_fallback_key(tx, user, device, split_key_name(name)?, &serde_json::to_string(value)?).await?;
    }
    Ok(())
}

/// The (algorithm, key id) of a key name such as `signed_curve25519:AAAAHg`.
fn split_key_name(name: &str) -> Result<(&str, &str)> {
    name.split_once(':')
        .filter(|(a, k)| !a.is_empty() && !k.is_empty())
        .ok_or_else(|| Error::invalid_param(format!("Invalid key name {name}")))
}

impl E2ee {
    /// `POST /keys/upload`. Returns the unclaimed one-time key counts by algorithm.
    pub async fn upload_keys(
        &self,
        caller: &Caller,
        device_keys: Option<Value>,
        one_time_keys: BTreeMap<String, Value>,
        fallback_keys: BTreeMap<String, Value>,
    ) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        let upload = KeyUpload { device_keys, one_time_keys, fallback_keys, new_device_keys: None };
        let upload = self.check_key_upload(&caller.user_id, caller.device_id.as_str(), upload, false).await?;
        let mut tx = self.db.begin().await?;
        write_key_upload(&mut tx, caller.user_id.as_str(), caller.device_id.as_str(), &upload).await?;
        diplomatie_storage::commit(tx).await?;
        self.state.forget_counts(caller.user_id.as_str(), caller.device_id.as_str());
        if upload.new_device_keys.is_some() {
            self.device_list_changed(&caller.user_id).await?;
        }
        self.one_time_key_counts(caller).await
    }

    /// Checks an upload of keys for `device` without writing anything: device keys for this
    /// device, self-signed, never replacing other keys (unless `replacing` the whole device);
    /// signed one-time and fallback keys verified; one-time key ids keeping their first value.
    pub async fn check_key_upload(
        &self,
        user_id: &UserId,
        device: &str,
        mut upload: KeyUpload,
        replacing: bool,
    ) -> Result<KeyUpload> {
        let user = user_id.as_str();
        let KeyUpload { device_keys, one_time_keys, fallback_keys, .. } = &upload;
        let stored = if replacing { None } else { store::device_keys(self.db.pool(), user, device).await? };
        let stored: Option<Value> = stored.map(|s| serde_json::from_str(&s)).transpose()?;

        // Device keys: for this very device, and never replaced by other keys (a stolen token must
        // not swap a known device's identity keys).
        let mut new_device_keys = None;
        if let Some(keys) = &device_keys {
            if keys.get("user_id").and_then(Value::as_str) != Some(user)
                || keys.get("device_id").and_then(Value::as_str) != Some(device)
            {
                return Err(Error::invalid_param("device_keys must be this device's keys"));
            }
            if !keys.get("algorithms").is_some_and(Value::is_array)
                || !keys.get("keys").is_some_and(Value::is_object)
                || !keys.get("signatures").is_some_and(Value::is_object)
            {
                return Err(Error::bad_json("device_keys needs algorithms, keys and signatures"));
            }
            // A device without its own `ed25519:{device}` key cannot sign, and clients will not
            // trust it; that is the uploader's loss only, so it is not refused (as Synapse).
            // Signatures are the clients' to verify (the spec asks every client to check them
            // before trusting a key), as Synapse leaves them: the uploader is the device itself,
            // so a check here would only refuse what its owner signed badly.
            match &stored {
                Some(old) if old.get("keys") != keys.get("keys") => {
                    return Err(Error::invalid_param("This device already has other keys: log in as a new device"));
                }
                Some(old) if old == keys => {}
                _ => new_device_keys = Some(keys.clone()),
            }
        }
        // One-time and fallback keys: strings or signed objects; a key id keeps its first value.
        let check = |name: &str, value: &Value| -> Result<()> {
            split_key_name(name)?;
            if !value.is_object() && !value.is_string() {
                return Err(Error::bad_json(format!("Key {name} must be a string or an object")));
            }
            Ok(())
        };
        for (name, value) in one_time_keys.iter().chain(fallback_keys.iter()) {
            check(name, value)?;
        }

        if !replacing {
            for (name, value) in one_time_keys {
                let (algorithm, key_id) = split_key_name(name)?;
                if let Some(existing) = store::one_time_key(self.db.pool(), user, device, algorithm, key_id).await? {
                    if serde_json::from_str::<Value>(&existing)? != *value {
                        return Err(Error::invalid_param(format!(
                            "One-time key {name} already exists with another value"
                        )));
                    }
                }
            }
        }
        upload.new_device_keys = new_device_keys;
        Ok(upload)
    }

    pub async fn one_time_key_counts(&self, caller: &Caller) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        one_time_key_counts(&self.db, caller.user_id.as_str(), caller.device_id.as_str()).await
    }

    /// Records that a user's devices changed, and wakes whoever shares a room with them.
    pub async fn device_list_changed(&self, user: &UserId) -> Result<()> {
        self.devices_changed(user, &[]).await
    }

    /// [`Self::device_list_changed`] when `deleted` devices are gone: other servers are told
    /// so by name (they keep remote device lists; `/sync` needs no more than the change).
    pub async fn devices_changed(&self, user: &UserId, deleted: &[&str]) -> Result<()> {
        let mut write = self.begin_write().await;
        let position = write.next_position();
        store::record_device_list_change(self.db.pool(), user.as_str(), position).await?;
        // The mark moves before the position is published: a `/sync` that reads the position
        // must not find the mark behind it (it would skip the change, then start past it).
        self.state.last_device_change.fetch_max(position, Ordering::AcqRel);
        write.publish();
        self.state.forget_user_counts(user.as_str());
        let mut targets = self.rooms.users_sharing_rooms_with(user).await?;
        targets.insert(user.to_owned());
        self.notifier.notify(targets.iter().map(|u| &**u));
        if user.server_name() == self.server_name() {
            self.federate_device_list_change(user, &targets, position, deleted).await?;
        }
        Ok(())
    }

    /// `POST /keys/query`: device keys of local users, and of other servers' users (asked of them).
    pub async fn query_keys(
        &self,
        requester: &UserId,
        requested: &BTreeMap<OwnedUserId, Vec<String>>,
    ) -> Result<get_keys::v3::Response> {
        let mut out = get_keys::v3::Response::new();
        let mut remote: BTreeMap<ruma::OwnedServerName, BTreeMap<OwnedUserId, Vec<String>>> = BTreeMap::new();
        for (user, devices) in requested {
            if user.server_name() != self.server_name() {
                remote.entry(user.server_name().to_owned()).or_default().insert(user.clone(), devices.clone());
                continue;
            }
            let names: BTreeMap<String, Option<String>> =
                self.accounts.devices(user).await?.into_iter().map(|d| (d.device_id, d.display_name)).collect();
            let mut user_keys = BTreeMap::new();
            for (device, json) in store::user_device_keys(self.db.pool(), user.as_str()).await? {
                if !devices.is_empty() && !devices.contains(&device) {
                    continue;
                }
                // `unsigned` is always there (Synapse's shape), with the name when there is one.
                let mut keys: Value = serde_json::from_str(&json)?;
                keys["unsigned"] = match names.get(&device) {
                    Some(Some(name)) => json!({ "device_display_name": name }),
                    _ => json!({}),
                };
                let keys = crate::to_raw(&keys)?;
                user_keys.insert(OwnedDeviceId::from(device), keys);
            }
            out.device_keys.insert(user.clone(), user_keys);
            for (kind, key) in self.cross_signing_keys_for(requester, user).await? {
                cross_signing_slot(&mut out, kind).insert(user.clone(), key);
            }
        }
        // Users of other servers: from the lists kept of those a local user shares a room
        // with, else asked of their servers (a server that fails is a failure).
        for (server, users) in remote {
            let mut ask = BTreeMap::new();
            for (user, devices) in users {
                match self.kept_keys(&user, &devices).await {
                    Ok(Some(kept)) => {
                        out.device_keys.insert(user.clone(), kept.devices);
                        if let Some(key) = kept.master_key {
                            out.master_keys.insert(user.clone(), key);
                        }
                        if let Some(key) = kept.self_signing_key {
                            out.self_signing_keys.insert(user.clone(), key);
                        }
                    }
                    Ok(None) => {
                        ask.insert(user, devices);
                    }
                    Err(e) => {
                        out.failures
                            .insert(server.to_string(), json!({ "errcode": "M_UNKNOWN", "error": e.to_string() }));
                    }
                }
            }
            if ask.is_empty() {
                continue;
            }
            match self.query_remote_keys(&server, ask).await {
                Ok(answer) => {
                    out.device_keys.extend(answer.device_keys);
                    out.master_keys.extend(answer.master_keys);
                    out.self_signing_keys.extend(answer.self_signing_keys);
                }
                Err(e) => {
                    out.failures.insert(server.to_string(), json!({ "errcode": "M_UNKNOWN", "error": e.to_string() }));
                }
            }
        }
        Ok(out)
    }

    /// `POST /keys/claim`: a one-time key per requested device, the fallback key otherwise.
    pub async fn claim_keys(
        &self,
        requested: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> Result<claim_keys::v3::Response> {
        let mut claimed: BTreeMap<OwnedUserId, OneTimeKeys> = BTreeMap::new();
        let mut failures = BTreeMap::new();
        let mut remote: BTreeMap<ruma::OwnedServerName, BTreeMap<OwnedUserId, BTreeMap<String, String>>> =
            BTreeMap::new();
        let mut tx = self.db.begin().await?;
        for (user, devices) in requested {
            if user.server_name() != self.server_name() {
                remote.entry(user.server_name().to_owned()).or_default().insert(user.clone(), devices.clone());
                continue;
            }
            let mut user_keys = BTreeMap::new();
            for (device, algorithm) in devices {
                let key = match store::claim_one_time_key(&mut tx, user.as_str(), device, algorithm).await? {
                    Some(k) => Some(k),
                    None => store::claim_fallback_key(&mut tx, user.as_str(), device, algorithm).await?,
                };
                self.state.forget_counts(user.as_str(), device);
                if let Some((key_id, json)) = key {
                    let id = OneTimeKeyId::parse(format!("{algorithm}:{key_id}"))
                        .map_err(|_| Error::invalid_param("Invalid one-time key id"))?;
                    user_keys.insert(
                        OwnedDeviceId::from(device.as_str()),
                        BTreeMap::from([(id, Raw::from_json_string(json)?)]),
                    );
                }
            }
            // A user none of whose devices had a key is left out, as Synapse answers.
            if !user_keys.is_empty() {
                claimed.insert(user.clone(), user_keys);
            }
        }
        diplomatie_storage::commit(tx).await?;
        for (server, users) in remote {
            match self.claim_remote_keys(&server, users).await {
                Ok(keys) => claimed.extend(keys),
                Err(e) => {
                    failures.insert(server.to_string(), json!({ "errcode": "M_UNKNOWN", "error": e.to_string() }));
                }
            }
        }
        let mut out = claim_keys::v3::Response::new(claimed);
        out.failures = failures;
        Ok(out)
    }

    /// `GET /keys/changes`: between two tokens, the users (the caller included) whose devices
    /// changed or who came to share a room with the caller, and those who no longer share one,
    /// as `/sync`'s `device_lists` says.
    pub async fn key_changes(&self, user: &UserId, from: i64, to: i64) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
        let (changed, left) = self.device_list_updates(user, from, to).await?;
        let users = |list: Vec<String>| list.into_iter().filter_map(|u| OwnedUserId::try_from(u).ok()).collect();
        Ok((users(changed), users(left)))
    }

    /// Those of `shared` whose devices changed between the two positions, and those `viewer`
    /// signed (verified) meanwhile, sorted.
    async fn device_changes_among(
        &self,
        viewer: &UserId,
        shared: &HashSet<OwnedUserId>,
        from: i64,
        to: i64,
    ) -> Result<Vec<String>> {
        if self.state.last_device_change.load(Ordering::Acquire) <= from {
            return Ok(Vec::new());
        }
        let mut changed: Vec<String> = store::device_list_changes_between(self.db.pool(), viewer.as_str(), from, to)
            .await?
            .into_iter()
            .filter(|(u, signed)| *signed || <&UserId>::try_from(u.as_str()).is_ok_and(|u| shared.contains(u)))
            .map(|(u, _)| u)
            .collect();
        changed.sort();
        changed.dedup();
        Ok(changed)
    }

    /// Records that `signer` signed `targets`' master keys: `signer`'s devices (only theirs)
    /// hear that those users' keys changed, and fetch them again with the new signatures.
    pub(crate) async fn signatures_changed(&self, signer: &UserId, targets: &[OwnedUserId]) -> Result<()> {
        let mut write = self.begin_write().await;
        let position = write.next_position();
        let mut tx = self.db.begin().await?;
        for target in targets {
            store::record_signature_change(&mut *tx, signer.as_str(), target.as_str(), position).await?;
        }
        diplomatie_storage::commit(tx).await?;
        // Before publishing, as in `devices_changed`.
        self.state.last_device_change.fetch_max(position, Ordering::AcqRel);
        write.publish();
        self.notifier.notify([signer]);
        Ok(())
    }

    /// Whose device lists a client must refresh (`changed`: their devices changed, or they
    /// started sharing a room with the user) or may forget (`left`: they share no room anymore).
    async fn device_list_updates(&self, user: &UserId, since: i64, to: i64) -> Result<(Vec<String>, Vec<String>)> {
        // Nothing to say when no device and no membership changed since.
        let moved = |mark: &AtomicI64| mark.load(Ordering::Acquire) > since;
        if !moved(&self.state.last_device_change) && !moved(&self.state.last_member_change) {
            return Ok((Vec::new(), Vec::new()));
        }
        // A user's own devices are news to their other devices.
        let mut shared = self.rooms.users_sharing_rooms_with(user).await?;
        shared.insert(user.to_owned());
        let listed = self.device_changes_among(user, &shared, since, to).await?;
        let mut changed: std::collections::BTreeSet<String> = listed.iter().cloned().collect();
        let mut left = std::collections::BTreeSet::new();
        let mut invited = std::collections::BTreeSet::new();
        let my_rooms: HashSet<String> =
            crate::rooms::joined_rooms(self, user).await?.into_iter().map(|r| r.to_string()).collect();
        for (room, member, json) in
            diplomatie_storage::events::membership_changes_between(self.db.pool(), since, to).await?
        {
            let membership =
                serde_json::from_str::<Value>(&json)?["content"]["membership"].as_str().map(MembershipState::from);
            let joined = membership == Some(MembershipState::Join);
            if member == user.as_str() {
                // I joined a room: its members are new to me. I left one: some may be gone.
                let Ok(room_id) = ruma::OwnedRoomId::try_from(room.as_str()) else { continue };
                for other in self.rooms.joined_members(&room_id).await?.iter().filter(|u| *u != user) {
                    if joined {
                        changed.insert(other.to_string());
                    } else if !shared.contains(other) {
                        left.insert(other.to_string());
                    }
                }
            } else if my_rooms.contains(&room) {
                // Someone joined or left a room of mine; someone invited to one is news too
                // (as Synapse says it: a client encrypts for invited members).
                if joined {
                    changed.insert(member);
                } else if membership == Some(MembershipState::Invite) {
                    invited.insert(member.clone());
                    changed.insert(member);
                } else if !shared.iter().any(|u| u.as_str() == member) {
                    left.insert(member);
                }
            }
        }
        changed.retain(|u| shared.iter().any(|s| s.as_str() == u) || listed.contains(u) || invited.contains(u));
        left.retain(|u| !changed.contains(u));
        Ok((changed.into_iter().collect(), left.into_iter().collect()))
    }

    /// `PUT /sendToDevice/{eventType}/{txnId}`: queues messages for devices of local users;
    /// `*` stands for every device of a user.
    pub async fn send_to_device(
        &self,
        caller: &Caller,
        event_type: &ToDeviceEventType,
        txn_id: &TransactionId,
        messages: &ToDeviceMessages,
    ) -> Result<()> {
        let remote: ToDeviceMessages = messages
            .iter()
            .filter(|(u, _)| u.server_name() != self.server_name())
            .map(|(u, m)| (u.clone(), m.clone()))
            .collect();
        if !remote.is_empty() {
            // Sent on as `m.direct_to_device` EDUs, one per server.
            self.send_remote_to_device(&caller.user_id, event_type, txn_id, remote).await?;
        }
        // Local users' messages (`deliver_to_device` passes over other servers' users).
        self.deliver_to_device(&caller.user_id, caller.device_id.as_str(), event_type, txn_id.as_str(), messages).await
    }

    /// Queues to-device messages for local users' devices (`*`: every device), once per
    /// (sender, sender's device, transaction id).
    pub(crate) async fn deliver_to_device(
        &self,
        sender: &UserId,
        sender_device: &str,
        event_type: &ToDeviceEventType,
        txn_id: &str,
        messages: &ToDeviceMessages,
    ) -> Result<()> {
        let mut rows = Vec::new();
        let mut recipients = Vec::new();
        for (user, devices) in messages {
            if user.server_name() != self.server_name() {
                continue;
            }
            let known: Vec<String> = self.accounts.devices(user).await?.into_iter().map(|d| d.device_id).collect();
            for (device, content) in devices {
                let content = content.json().get();
                let targets: Vec<&String> = match device {
                    DeviceIdOrAllDevices::AllDevices => known.iter().collect(),
                    DeviceIdOrAllDevices::DeviceId(d) => known.iter().filter(|k| *k == d.as_str()).collect(),
                };
                for target in targets {
                    rows.push((user.to_string(), target.clone(), content.to_owned()));
                }
            }
            recipients.push(user.clone());
        }
        let mut write = self.begin_write().await;
        let position = write.next_position();
        let mut tx = self.db.begin().await?;
        if !store::use_to_device_txn(&mut tx, sender.as_str(), sender_device, txn_id).await? {
            // A retry of a transaction already delivered.
            return Ok(());
        }
        store::add_to_device(&mut tx, position, sender.as_str(), &event_type.to_string(), &rows).await?;
        diplomatie_storage::commit(tx).await?;
        {
            let mut pending = self.state.pending.lock().unwrap();
            for (u, d, _) in &rows {
                *pending.entry((u.clone(), d.clone())).or_default() += 1;
            }
        }
        write.publish();
        self.notifier.notify(recipients.iter().map(|u| &**u));
        Ok(())
    }

    /// The encryption part of `/sync` for one device: to-device messages (acknowledging those
    /// up to `since`), device list changes, key counts.
    pub async fn sync_e2ee(&self, user: &UserId, device: &str, since: Option<i64>, to: i64) -> Result<SyncE2ee> {
        let to_device = self.to_device_after(user, device, since, to).await?;
        let keys = self.device_keys_news(user, device, since, to).await?;
        Ok(SyncE2ee {
            to_device,
            changed: keys.changed,
            left: keys.left,
            one_time_keys_count: keys.one_time_keys_count,
            unused_fallback_key_types: keys.unused_fallback_key_types,
        })
    }

    /// A device's to-device messages up to position `to`, those up to `since` acknowledged
    /// (deleted) first.
    pub(crate) async fn to_device_after(
        &self,
        user: &UserId,
        device: &str,
        since: Option<i64>,
        to: i64,
    ) -> Result<Vec<Raw<AnyToDeviceEvent>>> {
        let pool = self.db.pool();
        let key = (user.to_string(), device.to_owned());
        let mut to_device = Vec::new();
        let generation = self.state.pending.lock().unwrap().get(&key).copied();
        if let Some(generation) = generation {
            if let Some(since) = since {
                store::ack_to_device(pool, user.as_str(), device, since).await?;
            }
            let rows = store::to_device_for(pool, user.as_str(), device, i64::MAX, 100).await?;
            if rows.is_empty() {
                let mut pending = self.state.pending.lock().unwrap();
                if pending.get(&key) == Some(&generation) {
                    pending.remove(&key);
                }
            }
            for (sender, kind, content, position) in rows {
                if position <= to {
                    to_device.push(to_device_event(&sender, &kind, &content)?);
                }
            }
        }
        Ok(to_device)
    }

    /// The device lists that changed between `since` and `to` (none without `since`), and the
    /// device's key counts.
    pub(crate) async fn device_keys_news(
        &self,
        user: &UserId,
        device: &str,
        since: Option<i64>,
        to: i64,
    ) -> Result<DeviceKeysNews> {
        let pool = self.db.pool();
        let key = (user.to_string(), device.to_owned());
        let (changed, left) = match since {
            Some(since) => self.device_list_updates(user, since, to).await?,
            None => (Vec::new(), Vec::new()),
        };
        let users = |list: Vec<String>| list.into_iter().filter_map(|u| OwnedUserId::try_from(u).ok()).collect();
        let cached = self.state.counts.lock().unwrap().get(&key).cloned();
        let counts = match cached {
            Some(c) => c,
            None => {
                let mut one_time_keys = one_time_key_counts(&self.db, user.as_str(), device).await?;
                let fallback = store::unused_fallback_algorithms(pool, user.as_str(), device).await?;
                // Always stated, at zero too, as Synapse does: clients that read a missing count
                // as unknown would otherwise never upload their first keys.
                one_time_keys.entry(OneTimeKeyAlgorithm::SignedCurve25519).or_default();
                let entry = KeyCounts {
                    one_time_keys,
                    unused_fallback: fallback.into_iter().map(OneTimeKeyAlgorithm::from).collect(),
                };
                self.state.counts.lock().unwrap().insert(key.clone(), entry.clone());
                entry
            }
        };
        Ok(DeviceKeysNews {
            changed: users(changed),
            left: users(left),
            one_time_keys_count: counts.one_time_keys,
            unused_fallback_key_types: counts.unused_fallback,
        })
    }
}

/// What changed of the keys a device cares about: the device lists of users sharing a room,
/// and its own key counts.
pub struct DeviceKeysNews {
    pub changed: Vec<OwnedUserId>,
    pub left: Vec<OwnedUserId>,
    pub one_time_keys_count: BTreeMap<OneTimeKeyAlgorithm, UInt>,
    pub unused_fallback_key_types: Vec<OneTimeKeyAlgorithm>,
}

/// A device's unclaimed one-time keys by algorithm.
async fn one_time_key_counts(
    db: &diplomatie_storage::Db,
    user: &str,
    device: &str,
) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
    let counts = store::one_time_key_counts(db.pool(), user, device).await?;
    Ok(counts
        .into_iter()
        .map(|(a, n)| (OneTimeKeyAlgorithm::from(a), UInt::try_from(n.max(0)).unwrap_or_default()))
        .collect())
}

/// A device's unclaimed key counts, as `/sync` reports them.
#[derive(Clone)]
struct KeyCounts {
    one_time_keys: BTreeMap<OneTimeKeyAlgorithm, UInt>,
    unused_fallback: Vec<OneTimeKeyAlgorithm>,
}

/// What `/sync` reports of end-to-end encryption for one device.
pub struct SyncE2ee {
    pub to_device: Vec<Raw<AnyToDeviceEvent>>,
    pub changed: Vec<OwnedUserId>,
    pub left: Vec<OwnedUserId>,
    pub one_time_keys_count: BTreeMap<OneTimeKeyAlgorithm, UInt>,
    pub unused_fallback_key_types: Vec<OneTimeKeyAlgorithm>,
}

/// A to-device message as stored, its content kept as it came.
fn to_device_event(sender: &str, kind: &str, content: &str) -> Result<Raw<AnyToDeviceEvent>> {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        sender: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        content: &'a serde_json::value::RawValue,
    }
    let content = serde_json::from_str(content).map_err(crate::internal!())?;
    Ok(Raw::from_json(serde_json::value::to_raw_value(&Event { sender, kind, content }).map_err(crate::internal!())?))
}

/// Records the position of each membership change before it is published, so that `/sync`
/// looks at device lists again (a commit subscriber).
pub(crate) struct MembershipPositions(pub(crate) std::sync::Weak<E2ee>);

impl commit::Subscriber for MembershipPositions {
    fn committed(&self, batch: &commit::Batch<'_>, _at: &commit::Committed<'_>) {
        let Some(e2ee) = self.0.upgrade() else { return };
        let members = batch.events.iter().filter(|p| p.kind == ruma::events::TimelineEventType::RoomMember);
        let mut departures = Vec::new();
        for pdu in members {
            e2ee.state.membership_changed(pdu.stream_ordering);
            let gone = !matches!(
                pdu.membership(),
                Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock)
            );
            if let (true, Some(member)) = (gone, pdu.state_key.as_deref()) {
                departures.push((pdu.room_id.clone(), member.to_owned()));
            }
        }
        if !departures.is_empty() {
            tokio::spawn(async move {
                if let Err(e) = e2ee.untrack_after(departures).await {
                    tracing::warn!(error = %e, "remote device lists: not forgotten");
                }
            });
        }
    }
}

/// One-time keys claimed for a user's devices.
pub type OneTimeKeys = BTreeMap<OwnedDeviceId, BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>>;

/// The map of a `/keys/query` answer that holds cross-signing keys of `kind`.
fn cross_signing_slot<'a>(
    out: &'a mut get_keys::v3::Response,
    kind: &str,
) -> &'a mut BTreeMap<OwnedUserId, Raw<CrossSigningKey>> {
    match kind {
        "master" => &mut out.master_keys,
        "self_signing" => &mut out.self_signing_keys,
        _ => &mut out.user_signing_keys,
    }
}
