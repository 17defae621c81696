//! The server as the MLS delivery service of DR rooms (RFC 9750): key packages, each room's
//! group (its public state only), commits ordered one per epoch and checked against the
//! portal's rules, application messages (ciphertext) as room events, Welcomes as to-device
//! messages released once their commit is accepted.
//!
//! A room is an MLS room when its creation set the state event `fr.diplomatie.mls`
//! (`{"mode": "mls"}`); its group id is the room id. The MLS checks are `diplomatie-mls`'s; this
//! module adds what the server knows: which device a leaf is (its signature key must be the
//! device's Matrix ed25519 key), who is in the room, who is cleared DR and which devices are
//! approved. The portal's rules refuse any other message event in an MLS room.

pub mod partners;

use std::{collections::HashMap, path::Path, sync::Arc};

use diplomatie_mls::{b64, ds, member::server_external_sender, Identity};
use diplomatie_policies::Level;
use diplomatie_storage::mls as store;
use openmls_basic_credential::SignatureKeyPair;
use ruma::{
    events::{room::member::MembershipState, AnyToDeviceEventContent, StateEventType, ToDeviceEventType},
    serde::Raw,
    to_device::DeviceIdOrAllDevices,
    DeviceId, OwnedDeviceId, OwnedEventId, OwnedUserId, RoomId, TransactionId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::{
    accounts::Accounts,
    core::Core,
    e2ee::E2ee,
    federation::client::Transport,
    now_ms,
    portal::Portal,
    rooms::{PduBuilder, Rooms, Target},
    Error, Result,
};

pub use diplomatie_mls::{COMMIT_EVENT, MESSAGE_EVENT, MODE_EVENT, WELCOME_EVENT};

/// Most key packages a device may upload at once, and keep.
const MAX_KEY_PACKAGES: usize = 100;
/// Most handshake messages one catch-up request answers.
const HANDSHAKES_PER_PAGE: i64 = 200;

/// The delivery service, over the rooms, the portal (clearances), the accounts (devices) and
/// end-to-end encryption (device keys, to-device messages).
pub struct Mls {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    portal: Arc<Portal>,
    accounts: Arc<Accounts>,
    e2ee: Arc<E2ee>,
    /// Requests to partner servers (DR rooms shared over federation).
    transport: Arc<Transport>,
    /// The server's signing key as the external sender of its groups.
    signer: SignatureKeyPair,
    /// One writer per group at a time (the database's compare-and-set guards across processes).
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Each group's summary for checking messages, with the version of the state it was
    /// made from (`store::group_version`): a message does not load the group's whole state.
    summaries: std::sync::Mutex<HashMap<String, (StateVersion, Arc<ds::Summary>)>>,
}

crate::core::over_core!(Mls);

/// A group state's version: its epoch, and the server's proposals in that epoch so far.
type StateVersion = (i64, i64);

/// What a client needs to create a group: the ciphersuite and the server as external sender.
#[derive(Serialize)]
pub struct MlsConfig {
    pub ciphersuite: u16,
    pub external_sender: ExternalSenderInfo,
}

#[derive(Serialize)]
pub struct ExternalSenderInfo {
    pub server_name: String,
    pub signature_key: String,
}

/// A group's public state, for devices joining it.
#[derive(Serialize, Deserialize)]
pub struct GroupView {
    pub epoch: u64,
    pub ratchet_tree: String,
    pub members: Vec<Identity>,
    /// The current epoch's signed GroupInfo, for an external join (when its committer gave it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_info: Option<String>,
}

/// A handshake message, as members catch up.
#[derive(Serialize, Deserialize)]
pub struct HandshakeView {
    pub epoch: i64,
    pub kind: String,
    pub sender: String,
    pub message: String,
}

/// A page of handshakes, as a partner server answers it.
#[derive(Serialize, Deserialize)]
struct Handshakes {
    handshakes: Vec<HandshakeView>,
}

/// A commit accepted.
#[derive(Serialize)]
pub struct Accepted {
    pub epoch: u64,
    pub event_id: OwnedEventId,
}

/// The orderer's decision on a commit: the epoch it ended, the new one, the devices added.
#[derive(Serialize, Deserialize)]
struct Decided {
    from: u64,
    epoch: u64,
    added: Vec<Identity>,
}

/// The orderer's answer on an application message: its epoch.
#[derive(Serialize, Deserialize)]
struct Checked {
    epoch: u64,
}

fn refused(e: diplomatie_mls::Error) -> Error {
    match e {
        diplomatie_mls::Error::Malformed(m) => Error::bad_json(m),
        diplomatie_mls::Error::Invalid(m) => Error::invalid_param(m),
        diplomatie_mls::Error::Forbidden(m) => Error::forbidden(m),
        diplomatie_mls::Error::WrongEpoch { current, got } => Error::MlsWrongEpoch { current, got },
    }
}

/// Loads (or creates, at first start) the server's MLS signing key: an ed25519 seed in the
/// data directory.
fn load_signer(dir: &Path) -> std::io::Result<SignatureKeyPair> {
    let path = dir.join("mls_external_sender.key");
    let seed: [u8; 32] = match std::fs::read(&path) {
        Ok(bytes) => {
            bytes.try_into().map_err(|_| std::io::Error::other(format!("{} is not 32 bytes", path.display())))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed: [u8; 32] = rand::random();
            std::fs::write(&path, seed)?;
            seed
        }
        Err(e) => return Err(e),
    };
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    Ok(SignatureKeyPair::from_raw(openmls_traits::types::SignatureScheme::ED25519, seed.to_vec(), public.to_vec()))
}

impl Mls {
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        portal: Arc<Portal>,
        accounts: Arc<Accounts>,
        e2ee: Arc<E2ee>,
        transport: Arc<Transport>,
    ) -> std::io::Result<Mls> {
        let signer = load_signer(&core.config.data_dir)?;
        Ok(Mls {
            core,
            rooms,
            portal,
            accounts,
            e2ee,
            transport,
            signer,
            locks: Default::default(),
            summaries: Default::default(),
        })
    }

    fn external_sender(&self) -> openmls::prelude::ExternalSender {
        server_external_sender(self.server_name().as_str(), self.signer.public())
    }

    pub fn config(&self) -> MlsConfig {
        MlsConfig {
            ciphersuite: diplomatie_mls::CIPHERSUITE as u16,
            external_sender: ExternalSenderInfo {
                server_name: self.server_name().to_string(),
                signature_key: b64::encode(self.signer.public()),
            },
        }
    }

    /// Whether a room is an MLS room.
    pub async fn is_mls_room(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.rooms.state_event(room_id, &StateEventType::from(MODE_EVENT), "").await?.is_some())
    }

    /// The device's Matrix ed25519 key, as the server holds it.
    async fn device_key(&self, user: &str, device: &str) -> Result<Option<Vec<u8>>> {
        let Some(json) = diplomatie_storage::e2ee::device_keys(self.db.pool(), user, device).await? else {
            return Ok(None);
        };
        let keys: Value = serde_json::from_str(&json).map_err(crate::internal!())?;
        let key = keys.get("keys").and_then(|k| k.get(format!("ed25519:{device}"))).and_then(Value::as_str);
        Ok(key.and_then(|k| b64::decode(k).ok()))
    }

    /// A leaf names a device (of this server, or of a partner server on the DR allow-list,
    /// which is asked) whose Matrix key is the leaf's signature key.
    async fn check_binding(&self, leaf: &ds::Leaf) -> Result<(OwnedUserId, OwnedDeviceId)> {
        let user = UserId::parse(&leaf.identity.user_id)
            .map_err(|_| Error::invalid_param("The credential does not name a user"))?;
        let device: OwnedDeviceId = leaf.identity.device_id.as_str().into();
        let key = if user.server_name() == self.server_name() {
            self.device_key(user.as_str(), device.as_str()).await?
        } else {
            self.check_partner(user.server_name())?;
            self.remote_device_key(&user, &device).await?
        };
        match key {
            Some(key) if key == leaf.signature_key => Ok((user, device)),
            Some(_) => {
                Err(Error::forbidden(format!("The leaf of {} is not signed with that device's key", leaf.identity)))
            }
            None => Err(Error::forbidden(format!("{} has no device keys", leaf.identity))),
        }
    }

    /// The portal's rule for a device in a DR group: its user cleared DR, the device approved.
    /// Users of partner servers count as cleared when their server is on the DR allow-list;
    /// their devices' approvals are their server's (which hands out only approved devices' key
    /// packages, checks its devices before forwarding their commits and messages, and asks
    /// for the removal of those it stops approving).
    async fn check_cleared(&self, user: &UserId, device: &DeviceId) -> Result<()> {
        if self.portal.person(user).await?.clearance != Level::DR {
            return Err(Error::forbidden(format!("{user} is not cleared for DR (restricted distribution)")));
        }
        if user.server_name() != self.server_name() {
            return Ok(());
        }
        if !self.portal.device_is_dr(user, device).await? {
            return Err(Error::forbidden(format!("The device {device} of {user} is not approved for DR")));
        }
        Ok(())
    }

    /// `POST /mls/key_packages`: stores a device's key packages, each verified and naming
    /// the caller's device with its Matrix key. Answers how many one-time packages it has.
    pub async fn upload_key_packages(
        &self,
        user: &UserId,
        device: &DeviceId,
        packages: &[String],
        last_resort: Option<&str>,
    ) -> Result<i64> {
        if packages.len() > MAX_KEY_PACKAGES {
            return Err(Error::invalid_param(format!("At most {MAX_KEY_PACKAGES} key packages at once")));
        }
        let mut rows = Vec::new();
        for (text, resort) in packages.iter().map(|p| (p.as_str(), false)).chain(last_resort.map(|p| (p, true))) {
            let checked = ds::check_key_package(&b64::decode(text).map_err(refused)?).map_err(refused)?;
            if checked.leaf.identity != Identity::new(user.as_str(), device.as_str()) {
                return Err(Error::forbidden("A key package must name the uploading user and device"));
            }
            if checked.last_resort != resort {
                return Err(Error::invalid_param("Mark the last-resort key package as such, and only it"));
            }
            self.check_binding(&checked.leaf).await?;
            rows.push((b64::encode(&checked.reference), resort, text.trim_end_matches('=').to_owned()));
        }
        let count = store::key_package_count(self.db.pool(), user.as_str(), device.as_str()).await?;
        if count as usize + packages.len() > MAX_KEY_PACKAGES {
            return Err(Error::invalid_param(format!("A device keeps at most {MAX_KEY_PACKAGES} key packages")));
        }
        let mut tx = self.db.begin().await?;
        store::add_key_packages(&mut tx, user.as_str(), device.as_str(), &rows, now_ms()).await?;
        diplomatie_storage::commit(tx).await?;
        Ok(store::key_package_count(self.db.pool(), user.as_str(), device.as_str()).await?)
    }

    /// `POST /mls/key_packages/claim`: one key package per device of `user` that has one
    /// (only `devices`, if given). With `for_room`, only the devices that may join that room's
    /// group (the user in the room, cleared DR, the device approved), so that a client adding
    /// a user takes no key package of a device the commit would be refused for.
    pub async fn claim_key_packages(
        &self,
        caller: &UserId,
        user: &UserId,
        devices: Option<&[OwnedDeviceId]>,
        for_room: Option<&RoomId>,
    ) -> Result<HashMap<OwnedDeviceId, String>> {
        if let Some(room_id) = for_room {
            self.check_mls_member_of_room(room_id, caller).await?;
            if !self.in_room(room_id, user).await? {
                return Err(Error::forbidden(format!("{user} is neither joined to this room nor invited")));
            }
        }
        if user.server_name() != self.server_name() {
            return self.claim_remote(user, devices, for_room).await;
        }
        self.claim_local(user, devices, for_room.is_some()).await
    }

    /// Claims key packages of this server's `user`: with `cleared_only`, only of the devices
    /// that may be in a DR group.
    async fn claim_local(
        &self,
        user: &UserId,
        devices: Option<&[OwnedDeviceId]>,
        cleared_only: bool,
    ) -> Result<HashMap<OwnedDeviceId, String>> {
        // Which devices, decided before the transaction: a query on the pool while it holds a
        // connection could wait for itself (SQLite's one writer).
        let mut wanted = Vec::new();
        for d in self.accounts.devices(user).await? {
            let id: OwnedDeviceId = d.device_id.as_str().into();
            if devices.is_some_and(|ds| !ds.contains(&id)) {
                continue;
            }
            if cleared_only && self.check_cleared(user, &id).await.is_err() {
                continue;
            }
            wanted.push(id);
        }
        let mut claimed = HashMap::new();
        let mut tx = self.db.begin().await?;
        for id in wanted {
            if let Some(p) = store::claim_key_package(&mut tx, user.as_str(), id.as_str()).await? {
                claimed.insert(id, p);
            }
        }
        diplomatie_storage::commit(tx).await?;
        Ok(claimed)
    }

    fn lock(&self, room_id: &RoomId) -> Arc<Mutex<()>> {
        self.locks.lock().unwrap().entry(room_id.to_string()).or_default().clone()
    }

    async fn load(&self, room_id: &RoomId) -> Result<ds::Group> {
        let (_, state) = store::group(self.db.pool(), room_id.as_str())
            .await?
            .ok_or_else(|| Error::not_found("This room has no MLS group yet"))?;
        self.parse_group(room_id, &state)
    }

    fn parse_group(&self, room_id: &RoomId, state: &str) -> Result<ds::Group> {
        ds::Group::load(&b64::decode(state).map_err(refused)?, room_id.as_bytes()).map_err(|e| {
            tracing::error!(%room_id, error = %e, "unreadable MLS group state");
            Error::Internal
        })
    }

    async fn check_mls_member_of_room(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        self.rooms.known_room(room_id).await?;
        if !self.is_mls_room(room_id).await? {
            return Err(Error::forbidden("This room is not an MLS room (set fr.diplomatie.mls at its creation)"));
        }
        if !self.rooms.is_joined(room_id, user).await? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        Ok(())
    }

    /// `POST /mls/rooms/{roomId}/group`: the room's creator registers its group (epoch 0, the
    /// caller's device alone, the server as external sender).
    pub async fn create_group(
        &self,
        user: &UserId,
        device: &DeviceId,
        room_id: &RoomId,
        group_info: &str,
        ratchet_tree: &str,
    ) -> Result<u64> {
        self.check_mls_member_of_room(room_id, user).await?;
        let info = b64::decode(group_info).map_err(refused)?;
        let tree = b64::decode(ratchet_tree).map_err(refused)?;
        let group = ds::Group::create(&info, &tree).map_err(refused)?;
        if group.group_id() != room_id.as_bytes() {
            return Err(Error::invalid_param("The group id must be the room id"));
        }
        if group.epoch() != 0 {
            return Err(Error::invalid_param("A new group starts at epoch 0"));
        }
        let members = group.members();
        if members.len() != 1 || members[0].identity != Identity::new(user.as_str(), device.as_str()) {
            return Err(Error::forbidden("A new group holds its creator's device alone"));
        }
        self.check_binding(&members[0]).await?;
        self.check_cleared(user, device).await?;
        if group.external_sender_index(&self.external_sender()) != Some(0) {
            return Err(Error::forbidden("The group must name this server as its first external sender"));
        }
        let mut tx = self.db.begin().await?;
        let state = b64::encode(group.save());
        if !store::insert_group(&mut tx, room_id.as_str(), 0, &state, now_ms()).await? {
            return Err(Error::Conflict("This room already has its MLS group".into()));
        }
        // The creator's GroupInfo, verified with the group: the first external joins use it.
        store::set_group_info(&mut tx, room_id.as_str(), Some(group_info.trim_end_matches('='))).await?;
        diplomatie_storage::commit(tx).await?;
        Ok(0)
    }

    /// `GET /mls/rooms/{roomId}/group`: the group's epoch, ratchet tree and devices.
    pub async fn group(&self, user: &UserId, room_id: &RoomId) -> Result<GroupView> {
        self.rooms.known_room(room_id).await?;
        if !self.in_room(room_id, user).await? {
            return Err(Error::forbidden("You are not in this room"));
        }
        if let Some(server) = self.orderer(room_id).await? {
            return self.ask_json(&server, "group", json!({ "room_id": room_id, "user_id": user })).await;
        }
        let group = self.load(room_id).await?;
        Ok(GroupView {
            epoch: group.epoch(),
            ratchet_tree: b64::encode(group.ratchet_tree()),
            members: group.members().into_iter().map(|m| m.identity).collect(),
            group_info: store::group_info(self.db.pool(), room_id.as_str()).await?,
        })
    }

    /// `GET /mls/rooms/{roomId}/handshakes?from_epoch=`: the commits and the server's
    /// proposals made in `from_epoch` and after, in order.
    pub async fn handshakes(&self, user: &UserId, room_id: &RoomId, from_epoch: i64) -> Result<Vec<HandshakeView>> {
        self.rooms.known_room(room_id).await?;
        if !self.in_room(room_id, user).await? {
            return Err(Error::forbidden("You are not in this room"));
        }
        if let Some(server) = self.orderer(room_id).await? {
            let body = json!({ "room_id": room_id, "user_id": user, "from_epoch": from_epoch });
            return Ok(self.ask_json::<Handshakes>(&server, "handshakes", body).await?.handshakes);
        }
        let rows = store::handshakes_since(self.db.pool(), room_id.as_str(), from_epoch, HANDSHAKES_PER_PAGE).await?;
        Ok(rows
            .into_iter()
            .map(|h| HandshakeView { epoch: h.epoch, kind: h.kind, sender: h.sender, message: h.message })
            .collect())
    }

    /// Whether a user is joined to the room or invited to it.
    async fn in_room(&self, room_id: &RoomId, user: &UserId) -> Result<bool> {
        let membership = self.rooms.membership(room_id, user).await?;
        Ok(matches!(membership, Some(MembershipState::Join | MembershipState::Invite)))
    }

    /// Whether a device may stay in a DR group: its user still in the room (joined or
    /// invited), cleared DR, the device approved.
    async fn may_stay(&self, room_id: &RoomId, leaf: &ds::Leaf) -> Result<bool> {
        let Ok(user) = UserId::parse(&leaf.identity.user_id) else { return Ok(false) };
        if !self.in_room(room_id, &user).await? {
            return Ok(false);
        }
        Ok(self.check_cleared(&user, leaf.identity.device_id.as_str().into()).await.is_ok())
    }

    /// Proposes, as the group's external sender, the removal of every device that may no
    /// longer be in it (and is not proposed already); the proposals are logged for members to
    /// fetch, and the next commit must include them. `revoked`: devices of partner servers
    /// whose server withdrew their approval. Called with the group's lock held.
    async fn enforce(&self, room_id: &RoomId, group: &mut ds::Group, revoked: &[Identity]) -> Result<usize> {
        let pending = group.pending_removals();
        let mut leaving = Vec::new();
        for leaf in group.members() {
            if leaf.index.is_some_and(|i| !pending.contains(&i))
                && (revoked.contains(&leaf.identity) || !self.may_stay(room_id, &leaf).await?)
            {
                leaving.push(leaf);
            }
        }
        if leaving.is_empty() {
            return Ok(0);
        }
        let epoch = group.epoch() as i64;
        let mut proposals = Vec::new();
        for leaf in &leaving {
            let index = leaf.index.unwrap_or_default();
            proposals.push((leaf, group.propose_removal(index, &self.signer, 0).map_err(refused)?));
        }
        let mut tx = self.db.begin().await?;
        let state = b64::encode(group.save());
        if !store::update_group(&mut tx, room_id.as_str(), epoch, epoch, &state).await? {
            return Err(Error::MlsWrongEpoch { current: epoch as u64 + 1, got: epoch as u64 });
        }
        for (leaf, message) in &proposals {
            let text = b64::encode(message);
            tracing::info!(%room_id, device = %leaf.identity, "MLS: the server proposes a device's removal");
            store::add_handshake(
                &mut tx,
                room_id.as_str(),
                epoch,
                "proposal",
                self.server_name().as_str(),
                &text,
                now_ms(),
            )
            .await?;
        }
        diplomatie_storage::commit(tx).await?;
        Ok(proposals.len())
    }

    /// After a change of `user`'s clearance or devices' approvals (or of their rooms): in each
    /// of their rooms' groups, proposes the removal of the devices that may no longer be in it.
    /// In rooms whose group a partner server orders, that server is asked to propose them.
    /// `gone`: devices of the user just deleted (logged out), which no longer exist here.
    pub async fn enforce_clearances(&self, user: &UserId, gone: &[&str]) -> Result<usize> {
        let mut proposed = 0;
        for room_id in crate::rooms::joined_rooms(&self.core, user).await? {
            if self.has_group(&room_id).await? {
                proposed += self.enforce_room(&room_id, &[]).await?;
            } else if self.is_mls_room(&room_id).await? {
                if let Some(server) = self.orderer(&room_id).await? {
                    proposed += self.revoke_remotely(&server, &room_id, user, gone).await?;
                }
            }
        }
        Ok(proposed)
    }

    /// Whether this server tracks the room's group (it orders its commits), read without its
    /// state.
    async fn has_group(&self, room_id: &RoomId) -> Result<bool> {
        Ok(store::group_version(self.db.pool(), room_id.as_str()).await?.is_some())
    }

    /// [`Mls::enforce`] in one room, if it has a group.
    async fn enforce_room(&self, room_id: &RoomId, revoked: &[Identity]) -> Result<usize> {
        if !self.has_group(room_id).await? {
            return Ok(0);
        }
        let lock = self.lock(room_id);
        let _guard = lock.lock().await;
        let mut group = self.load(room_id).await?;
        self.enforce(room_id, &mut group, revoked).await
    }

    /// `POST /mls/rooms/{roomId}/commit`: the first valid commit of an epoch wins. The server
    /// that orders the room's commits (the room creator's: this one, or a partner asked over
    /// federation) checks it ([`Mls::decide_commit`]); then this server, the committer's, sends
    /// it into the room and the Welcome to the added devices.
    pub async fn commit(
        &self,
        user: &UserId,
        device: &DeviceId,
        room_id: &RoomId,
        commit: &str,
        welcome: Option<&str>,
        group_info: Option<&str>,
    ) -> Result<Accepted> {
        self.check_mls_member_of_room(room_id, user).await?;
        let welcome_bytes = welcome.map(b64::decode).transpose().map_err(refused)?;
        let decided = match self.orderer(room_id).await? {
            None => self.decide_commit(user, device, room_id, commit, welcome.is_some(), group_info).await?,
            Some(server) => {
                let body = json!({
                    "room_id": room_id, "user_id": user, "device_id": device,
                    "commit": commit, "welcome": welcome, "group_info": group_info,
                });
                self.ask_json(&server, "commit", body).await?
            }
        };
        let content = json!({ "epoch": decided.from, "message": commit.trim_end_matches('=') });
        let pdu = self
            .rooms
            .append_event(Target::Room(room_id), user, PduBuilder::message(COMMIT_EVENT, content), None)
            .await?;
        if let Some(welcome) = welcome_bytes {
            self.send_welcome(user, device, room_id, decided.epoch, &welcome, &decided.added).await?;
        }
        Ok(Accepted { epoch: decided.epoch, event_id: pdu.event_id.clone() })
    }

    /// The orderer's part of a commit: checked by MLS (signature, proposals, path), then by
    /// the portal: the committer is the caller's device; added and updated devices are bound
    /// to their Matrix keys, of users joined or invited, cleared DR and approved; removed
    /// devices are the caller's own, of users no longer in the room, or those the server
    /// proposed to remove; every removal the server proposed is included. Then the group
    /// moves on and the commit is logged, with the new epoch's GroupInfo if the committer
    /// gave one (checked against the new state).
    ///
    /// An external commit is a device of the caller joining by itself (coming back after its
    /// removal, its old leaf replaced): its user joined to the room, cleared DR, the device
    /// approved and bound to its key; it adds nobody else.
    async fn decide_commit(
        &self,
        user: &UserId,
        device: &DeviceId,
        room_id: &RoomId,
        commit: &str,
        has_welcome: bool,
        group_info: Option<&str>,
    ) -> Result<Decided> {
        let bytes = b64::decode(commit).map_err(refused)?;
        let group_info = group_info.map(|i| b64::decode(i).map(|b| (i, b))).transpose().map_err(refused)?;
        let lock = self.lock(room_id);
        let _guard = lock.lock().await;
        let mut group = self.load(room_id).await?;
        self.enforce(room_id, &mut group, &[]).await?;
        let checked = group.check_commit(&bytes).map_err(refused)?;
        let caller = Identity::new(user.as_str(), device.as_str());
        if checked.committer.identity != caller {
            return Err(Error::forbidden("A device commits only its own commits"));
        }
        if checked.external {
            let (u, d) = self.check_binding(&checked.committer).await?;
            self.check_cleared(&u, &d).await?;
            if !checked.added.is_empty() {
                return Err(Error::forbidden("An external commit brings in its own device only"));
            }
        }
        let pending = group.pending_removals();
        for leaf in checked.added.iter().chain(&checked.updated) {
            let (u, d) = self.check_binding(leaf).await?;
            if !self.in_room(room_id, &u).await? {
                return Err(Error::forbidden(format!("{u} is not in the room")));
            }
            self.check_cleared(&u, &d).await?;
        }
        for leaf in &checked.removed {
            let proposed = leaf.index.is_some_and(|i| pending.contains(&i));
            let own = leaf.identity.user_id == user.as_str();
            let gone = match UserId::parse(&leaf.identity.user_id) {
                Ok(u) => !self.in_room(room_id, &u).await?,
                Err(_) => true,
            };
            if !(proposed || own || gone) {
                return Err(Error::forbidden(format!("{} may not be removed by you", leaf.identity)));
            }
        }
        if !group.includes_pending_removals(&checked) {
            return Err(Error::forbidden(
                "The commit must include the removals the server proposed: fetch the handshakes of this epoch",
            ));
        }
        if !checked.added.is_empty() && !has_welcome {
            return Err(Error::missing_param("A commit that adds devices needs their Welcome"));
        }
        let added: Vec<Identity> = checked.added.iter().map(|l| l.identity.clone()).collect();
        let from = checked.epoch;
        group.merge(checked).map_err(refused)?;
        let epoch = group.epoch();
        if let Some((_, bytes)) = &group_info {
            group.check_group_info(bytes).map_err(refused)?;
        }
        let mut tx = self.db.begin().await?;
        let state = b64::encode(group.save());
        if !store::update_group(&mut tx, room_id.as_str(), from as i64, epoch as i64, &state).await? {
            return Err(Error::MlsWrongEpoch { current: from + 1, got: from });
        }
        let info = group_info.as_ref().map(|(text, _)| text.trim_end_matches('='));
        store::set_group_info(&mut tx, room_id.as_str(), info).await?;
        store::add_handshake(&mut tx, room_id.as_str(), from as i64, "commit", &caller.user_id, commit, now_ms())
            .await?;
        diplomatie_storage::commit(tx).await?;
        Ok(Decided { from, epoch, added })
    }

    async fn send_welcome(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        room_id: &RoomId,
        epoch: u64,
        welcome: &[u8],
        to: &[Identity],
    ) -> Result<()> {
        let content = json!({ "room_id": room_id, "epoch": epoch, "welcome": b64::encode(welcome) });
        let raw: Raw<AnyToDeviceEventContent> =
            Raw::from_json(serde_json::value::to_raw_value(&content).map_err(crate::internal!())?);
        let (mut messages, mut remote) = (crate::e2ee::ToDeviceMessages::new(), crate::e2ee::ToDeviceMessages::new());
        for identity in to {
            let Ok(user) = UserId::parse(&identity.user_id) else { continue };
            let messages = if user.server_name() == self.server_name() { &mut messages } else { &mut remote };
            messages
                .entry(user)
                .or_default()
                .insert(DeviceIdOrAllDevices::DeviceId(identity.device_id.as_str().into()), raw.clone());
        }
        let txn = format!("mls-welcome-{room_id}-{epoch}");
        let event_type = ToDeviceEventType::from(WELCOME_EVENT);
        if !remote.is_empty() {
            self.e2ee.send_remote_to_device(sender, &event_type, txn.as_str().into(), remote).await?;
        }
        self.e2ee.deliver_to_device(sender, sender_device.as_str(), &event_type, &txn, &messages).await
    }

    /// `PUT /mls/rooms/{roomId}/send/{txnId}`: an application message of a device in the
    /// group, in its current epoch, while no removal the server proposed waits for its commit;
    /// sent into the room as ciphertext. Removals are proposed when their cause happens (a
    /// clearance changed, a member gone: [`MlsMembers`]) and at each commit, not here.
    pub async fn send(
        &self,
        user: &UserId,
        device: &DeviceId,
        room_id: &RoomId,
        txn_id: &TransactionId,
        message: &str,
    ) -> Result<OwnedEventId> {
        if let Some(id) =
            diplomatie_storage::events::txn_event(self.db.pool(), user.as_str(), device.as_str(), txn_id.as_str())
                .await?
        {
            return OwnedEventId::try_from(id).map_err(crate::internal!());
        }
        self.check_mls_member_of_room(room_id, user).await?;
        self.check_cleared(user, device).await?;
        let epoch = match self.orderer(room_id).await? {
            None => self.check_message(user, device, room_id, message).await?,
            Some(server) => {
                let body = json!({ "room_id": room_id, "user_id": user, "device_id": device, "message": message });
                self.ask_json::<Checked>(&server, "check", body).await?.epoch
            }
        };
        let content = json!({ "epoch": epoch, "message": message.trim_end_matches('=') });
        let pdu = self
            .rooms
            .append_event(
                Target::Room(room_id),
                user,
                PduBuilder::message(MESSAGE_EVENT, content),
                Some((device, txn_id)),
            )
            .await?;
        Ok(pdu.event_id.clone())
    }

    /// The orderer's check of an application message: from a device in the group, in its
    /// current epoch, while no removal the server proposed waits for its commit. Answers the
    /// epoch.
    async fn check_message(&self, user: &UserId, device: &DeviceId, room_id: &RoomId, message: &str) -> Result<u64> {
        let bytes = b64::decode(message).map_err(refused)?;
        let group = self.summary(room_id).await?;
        let caller = Identity::new(user.as_str(), device.as_str());
        if !group.members.contains(&caller) {
            return Err(Error::forbidden("This device is not in the room's MLS group"));
        }
        if group.removals_pending {
            return Err(Error::forbidden(
                "A removal the server proposed must be committed first: fetch the handshakes of this epoch",
            ));
        }
        group.check_application(&bytes).map_err(refused)
    }

    /// The group's summary, made again only when its state changed (here or in another
    /// process: the version is read from the database each time).
    async fn summary(&self, room_id: &RoomId) -> Result<Arc<ds::Summary>> {
        let version = store::group_version(self.db.pool(), room_id.as_str())
            .await?
            .ok_or_else(|| Error::not_found("This room has no MLS group yet"))?;
        if let Some((v, s)) = self.summaries.lock().unwrap().get(room_id.as_str()) {
            if *v == version {
                return Ok(s.clone());
            }
        }
        // The state and its version, read by one statement (the state may be newer than the
        // version read above).
        let (epoch, proposals, state) = store::group_with_version(self.db.pool(), room_id.as_str())
            .await?
            .ok_or_else(|| Error::not_found("This room has no MLS group yet"))?;
        let group = self.parse_group(room_id, &state)?;
        let summary = Arc::new(group.summary());
        self.summaries.lock().unwrap().insert(room_id.to_string(), ((epoch, proposals), summary.clone()));
        Ok(summary)
    }
}

/// Hears of members leaving rooms (leave, kick, ban): in an MLS room, the server then proposes
/// the removal of their devices from its group, so that they read nothing sent after.
pub(crate) struct MlsMembers(pub(crate) std::sync::Weak<Mls>);

impl crate::rooms::commit::Subscriber for MlsMembers {
    fn published(&self, batch: &crate::rooms::commit::Batch<'_>, _at: &crate::rooms::commit::Committed<'_>) {
        let rooms: std::collections::BTreeSet<&RoomId> = batch
            .events
            .iter()
            .filter(|p| matches!(p.membership(), Some(MembershipState::Leave | MembershipState::Ban)))
            .map(|p| &*p.room_id)
            .collect();
        if rooms.is_empty() {
            return;
        }
        let Some(mls) = self.0.upgrade() else { return };
        for room_id in rooms {
            let (mls, room_id) = (mls.clone(), room_id.to_owned());
            tokio::spawn(async move {
                if let Err(e) = mls.enforce_room(&room_id, &[]).await {
                    tracing::warn!(%room_id, error = ?e, "MLS: cannot propose the removal of a departed member");
                }
            });
        }
    }
}
