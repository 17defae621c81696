//! A client of the portal's DR rooms: MLS (RFC 9420, openmls) end to end, the homeserver as
//! delivery service (`/_diplomatie/client/v1/mls`), the client-server API for the rest (log
//! in, rooms, invitations, `/sync`).
//!
//! A [`Client`] is one device. Its store ([`store::State`], one JSON file) holds its access
//! token, its ed25519 seed (its Matrix device key, which also signs its MLS leaves), the MLS
//! groups' secrets, its `/sync` position and the messages it read; every operation saves it
//! before returning, so that a client started again goes on where it stopped.
//!
//! How a change of a group goes: the device catches up with the handshakes (commits and the
//! server's removal proposals) it has not applied, stages its commit, sends it; if another
//! commit won the epoch (409 `FR_DIPLOMATIE_MLS_WRONG_EPOCH`), it drops its own, catches up
//! and tries again. Removals the server proposed are committed before anything is sent.

pub mod correspondence;
pub mod store;

use std::path::{Path, PathBuf};

use diplomatie_mls::{
    b64,
    member::{server_external_sender, Device, Outgoing, Received},
    Identity, COMMIT_EVENT, MESSAGE_EVENT, MODE_EVENT, WELCOME_EVENT,
};
use serde_json::{json, Value};
use sha2::Digest as _;
pub use store::Message;
use store::State;

/// How many times a change of a group is tried again after losing its epoch to another.
const COMMIT_ATTEMPTS: usize = 8;
/// How many one-time key packages a device keeps on the server.
pub const KEY_PACKAGES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a Matrix error.
    #[error("{status} {errcode}: {error}")]
    Server { status: u16, errcode: String, error: String, body: Value },
    #[error("cannot reach the server: {0}")]
    Http(#[from] reqwest::Error),
    #[error("MLS: {0}")]
    Mls(#[from] diplomatie_mls::Error),
    #[error("store: {0}")]
    Store(String),
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// The Matrix error code, for an error of the server.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            Error::Server { errcode, .. } => Some(errcode),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One device of a user, with its store.
pub struct Client {
    path: PathBuf,
    state: State,
    mls: Device,
    http: reqwest::Client,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().build().expect("a TLS backend")
}

fn seed_of(state: &State) -> Result<[u8; 32]> {
    b64::decode(&state.seed)?.try_into().map_err(|_| Error::Store("the device seed is not 32 bytes".into()))
}

/// A path segment, percent-encoded.
pub fn enc(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What `POST .../mls/rooms/{roomId}/commit` carries of a staged change.
fn commit_body(outgoing: &Outgoing) -> Value {
    json!({
        "commit": b64::encode(&outgoing.commit),
        "welcome": outgoing.welcome.as_ref().map(b64::encode),
        "group_info": outgoing.group_info.as_ref().map(b64::encode),
    })
}

fn digest(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// One request to the server: its JSON answer, or the Matrix error it answered.
pub async fn call(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let mut request = http.request(method, format!("{}{path}", base.trim_end_matches('/')));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "error": text }));
    if (200..300).contains(&status) {
        return Ok(body);
    }
    Err(Error::Server {
        status,
        errcode: body["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned(),
        error: body["error"].as_str().unwrap_or_default().to_owned(),
        body,
    })
}

impl Client {
    /// Logs in with a password as a new device: makes its ed25519 key, uploads it as the
    /// device's Matrix key, publishes key packages, and writes the store at `path` (which must
    /// not exist: a store is one device).
    pub async fn login(path: &Path, homeserver: &str, user: &str, password: &str) -> Result<Client> {
        if path.exists() {
            return Err(Error::Usage(format!("{} exists: a store is one device", path.display())));
        }
        let http = http();
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": user },
            "password": password,
            "initial_device_display_name": "diplomatie-client",
        });
        let v = call(&http, homeserver, None, reqwest::Method::POST, "/_matrix/client/v3/login", Some(&body)).await?;
        let field = |k: &str| v[k].as_str().map(str::to_owned).ok_or_else(|| Error::Usage(format!("no {k} in {v}")));
        let seed: [u8; 32] = rand::random();
        let state = State {
            homeserver: homeserver.trim_end_matches('/').to_owned(),
            user_id: field("user_id")?,
            device_id: field("device_id")?,
            access_token: field("access_token")?,
            seed: b64::encode(seed),
            mls: String::new(),
            since: None,
            rooms: Default::default(),
        };
        let mls = Device::new(Identity::new(&state.user_id, &state.device_id), &seed, None)?;
        let mut client = Client { path: path.to_owned(), state, mls, http };
        client.save()?;
        client.upload_device_key().await?;
        client.publish_key_packages(KEY_PACKAGES).await?;
        Ok(client)
    }

    /// The device whose store is at `path`.
    pub fn open(path: &Path) -> Result<Client> {
        let state = State::load(path)?;
        let seed = seed_of(&state)?;
        let saved = if state.mls.is_empty() { None } else { Some(b64::decode(&state.mls)?) };
        let mls = Device::new(Identity::new(&state.user_id, &state.device_id), &seed, saved.as_deref())?;
        Ok(Client { path: path.to_owned(), state, mls, http: http() })
    }

    pub fn user_id(&self) -> &str {
        &self.state.user_id
    }

    pub fn device_id(&self) -> &str {
        &self.state.device_id
    }

    pub fn access_token(&self) -> &str {
        &self.state.access_token
    }

    /// The `/sync` position the store holds.
    pub fn since(&self) -> Option<&str> {
        self.state.since.as_deref()
    }

    fn save(&mut self) -> Result<()> {
        self.state.mls = b64::encode(self.mls.save());
        self.state.save(&self.path)
    }

    async fn request(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value> {
        call(&self.http, &self.state.homeserver, Some(&self.state.access_token), method, path, body).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.request(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    /// The device's ed25519 signature of a JSON object's canonical form (Matrix's signing
    /// scheme: the caller leaves out `signatures` and `unsigned`), in unpadded base64.
    fn sign(&self, value: &Value) -> Result<String> {
        use ed25519_dalek::Signer as _;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed_of(&self.state)?);
        let canonical = ruma::canonical_json::to_canonical_value(value)
            .map_err(|e| Error::Usage(format!("not canonical JSON: {e}")))?
            .to_string();
        Ok(b64::encode(key.sign(canonical.as_bytes()).to_bytes()))
    }

    /// Uploads the device's ed25519 key as its Matrix device key, self-signed: the server
    /// binds the device's MLS leaves to it.
    async fn upload_device_key(&self) -> Result<()> {
        let (user, device) = (&self.state.user_id, &self.state.device_id);
        let mut device_keys = json!({
            "user_id": user,
            "device_id": device,
            "algorithms": ["fr.diplomatie.mls.v1"],
            "keys": { format!("ed25519:{device}"): b64::encode(self.mls.signature_key()) },
        });
        let signature = self.sign(&device_keys)?;
        device_keys["signatures"] = json!({ user: { format!("ed25519:{device}"): signature } });
        self.post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": device_keys })).await?;
        Ok(())
    }

    /// Publishes `count` one-time key packages and a last-resort one; answers how many
    /// one-time packages the server holds for this device.
    pub async fn publish_key_packages(&mut self, count: usize) -> Result<i64> {
        let packages: Vec<String> =
            (0..count).map(|_| self.mls.key_package(false).map(b64::encode)).collect::<diplomatie_mls::Result<_>>()?;
        let last_resort = b64::encode(self.mls.key_package(true)?);
        // The packages' private keys must be stored before the server hands them out.
        self.save()?;
        let v = self
            .post(
                "/_diplomatie/client/v1/mls/key_packages",
                &json!({ "key_packages": packages, "last_resort": last_resort }),
            )
            .await?;
        Ok(v["count"].as_i64().unwrap_or_default())
    }

    /// Creates a DR room in MLS mode (named `name`), and its group with this device alone in
    /// it, the server as the external sender that proposes removals.
    pub async fn create_room(&mut self, name: Option<&str>) -> Result<String> {
        let mut body = json!({ "preset": "private_chat", "initial_state": [
            { "type": "fr.diplomatie.classification", "state_key": "", "content": { "level": "DR" } },
            { "type": MODE_EVENT, "state_key": "", "content": { "mode": "mls" } },
        ]});
        if let Some(name) = name {
            body["name"] = json!(name);
        }
        let room = self.post("/_matrix/client/v3/createRoom", &body).await?;
        let room_id = room["room_id"].as_str().ok_or_else(|| Error::Usage(format!("no room_id in {room}")))?.to_owned();
        let config = self.get("/_diplomatie/client/v1/mls/config").await?;
        let sender = &config["external_sender"];
        let key = b64::decode(sender["signature_key"].as_str().unwrap_or_default())?;
        let server = server_external_sender(sender["server_name"].as_str().unwrap_or_default(), &key);
        let (info, tree) = self.mls.create_group(room_id.as_bytes(), server)?;
        self.state.rooms.entry(room_id.clone()).or_default();
        self.save()?;
        self.post(
            &format!("/_diplomatie/client/v1/mls/rooms/{}/group", enc(&room_id)),
            &json!({ "group_info": b64::encode(&info), "ratchet_tree": b64::encode(&tree) }),
        )
        .await?;
        Ok(room_id)
    }

    /// Invites a user into the room (the Matrix invitation; their devices come into the group
    /// with [`Client::add`]).
    pub async fn invite(&self, room_id: &str, user_id: &str) -> Result<()> {
        self.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(room_id)), &json!({ "user_id": user_id })).await?;
        Ok(())
    }

    /// Joins a room this device's user was invited to. The device comes into the room's group
    /// when a member adds it: its Welcome arrives with a later [`Client::sync`].
    pub async fn join(&self, room_id: &str) -> Result<()> {
        self.post(&format!("/_matrix/client/v3/join/{}", enc(room_id)), &json!({})).await?;
        Ok(())
    }

    /// Adds to the room's group the devices of `user_id` (joined or invited) that may join
    /// it: cleared DR and approved, as the server answers the claim. Returns their device ids.
    pub async fn add(&mut self, room_id: &str, user_id: &str) -> Result<Vec<String>> {
        let claimed = self
            .post("/_diplomatie/client/v1/mls/key_packages/claim", &json!({ "user_id": user_id, "room_id": room_id }))
            .await?;
        let mut devices = Vec::new();
        let mut packages = Vec::new();
        let members = self.members(room_id)?;
        for (device, package) in claimed["key_packages"].as_object().into_iter().flatten() {
            if members.contains(&Identity::new(user_id, device)) {
                continue;
            }
            devices.push(device.clone());
            packages.push(b64::decode(package.as_str().unwrap_or_default())?);
        }
        if packages.is_empty() {
            return Err(Error::Usage(format!("{user_id} has no device that may join this DR room, or all are in it")));
        }
        self.change(room_id, |mls, group| mls.add(group, &packages)).await?;
        Ok(devices)
    }

    /// Brings this device (back) into the room's group by itself, with an external commit
    /// from the group's current GroupInfo and tree: after it was removed and approved again,
    /// or lost its state. The server accepts it for a device of a user joined to the room,
    /// cleared DR and approved. Returns the new epoch.
    pub async fn rejoin(&mut self, room_id: &str) -> Result<u64> {
        let path = format!("/_diplomatie/client/v1/mls/rooms/{}/commit", enc(room_id));
        for _ in 0..COMMIT_ATTEMPTS {
            let group = self.get(&format!("/_diplomatie/client/v1/mls/rooms/{}/group", enc(room_id))).await?;
            let Some(info) = group["group_info"].as_str() else {
                return Err(Error::Usage(format!("the group of {room_id} has no group info to join from yet")));
            };
            let tree = b64::decode(group["ratchet_tree"].as_str().unwrap_or_default())?;
            let outgoing = self.mls.join_externally(&b64::decode(info)?, &tree)?;
            match self.post(&path, &commit_body(&outgoing)).await {
                Ok(v) => {
                    let room = self.state.rooms.entry(room_id.to_owned()).or_default();
                    room.seen.clear();
                    self.save()?;
                    return Ok(v["epoch"].as_u64().unwrap_or_default());
                }
                Err(e) => {
                    // openmls keeps the group at the epoch it made: drop it, and try again
                    // from the newer group info (after a lost epoch) or give up.
                    self.mls.forget(room_id.as_bytes())?;
                    self.save()?;
                    if e.errcode() != Some("FR_DIPLOMATIE_MLS_WRONG_EPOCH") {
                        return Err(e);
                    }
                }
            }
        }
        Err(Error::Usage(format!("the group of {room_id} changed {COMMIT_ATTEMPTS} times under this join")))
    }

    /// Renews this device's key material in the room's group (a commit of its own leaf), which
    /// also commits any removal the server proposed.
    pub async fn rotate(&mut self, room_id: &str) -> Result<u64> {
        self.change(room_id, |mls, group| mls.update(group)).await
    }

    /// Leaves the room: the server then proposes the removal of this user's devices from the
    /// group, and this device forgets the group's secrets.
    pub async fn leave(&mut self, room_id: &str) -> Result<()> {
        self.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(room_id)), &json!({})).await?;
        self.mls.forget(room_id.as_bytes())?;
        if let Some(room) = self.state.rooms.get_mut(room_id) {
            room.seen.clear();
        }
        self.save()
    }

    /// Encrypts and sends a message to the room's group; first commits any removal the server
    /// proposed (no message is accepted before). Returns the event id.
    pub async fn send(&mut self, room_id: &str, text: &str) -> Result<String> {
        self.catch_up(room_id).await?;
        if self.mls.has_pending_proposals(room_id.as_bytes()) {
            self.change(room_id, |mls, group| mls.commit_pending(group)).await?;
        }
        let message = b64::encode(self.mls.encrypt(room_id.as_bytes(), text.as_bytes())?);
        // The ratchet moved: saved before the message leaves, so no key is ever used twice.
        self.save()?;
        let txn = format!("c{}", rand::random::<u64>());
        let v = self
            .request(
                reqwest::Method::PUT,
                &format!("/_diplomatie/client/v1/mls/rooms/{}/send/{txn}", enc(room_id)),
                Some(&json!({ "message": message })),
            )
            .await?;
        let event_id = v["event_id"].as_str().unwrap_or_default().to_owned();
        self.state.rooms.entry(room_id.to_owned()).or_default().history.push(Message {
            room_id: room_id.to_owned(),
            event_id: event_id.clone(),
            sender: self.state.user_id.clone(),
            sender_device: self.state.device_id.clone(),
            text: text.to_owned(),
        });
        self.save()?;
        Ok(event_id)
    }

    /// Points this device at its homeserver's new address (the server moved), saved at once.
    pub fn set_homeserver(&mut self, url: &str) -> Result<()> {
        self.state.homeserver = url.trim_end_matches('/').to_owned();
        self.save()
    }

    /// The devices of the room's group, as this device sees it.
    pub fn members(&self, room_id: &str) -> Result<Vec<Identity>> {
        Ok(self.mls.members(room_id.as_bytes())?)
    }

    /// The group's epoch, if this device is in it.
    pub fn epoch(&self, room_id: &str) -> Option<u64> {
        self.mls.epoch(room_id.as_bytes())
    }

    /// The messages read and sent in a room, from the store.
    pub fn history(&self, room_id: &str) -> Vec<Message> {
        self.state.rooms.get(room_id).map(|r| r.history.clone()).unwrap_or_default()
    }

    /// Stages a change of the group with `stage`, and sends it until it wins an epoch: after
    /// a 409, the staged commit is dropped, the device catches up and stages it again.
    async fn change<F>(&mut self, room_id: &str, stage: F) -> Result<u64>
    where
        F: Fn(&Device, &[u8]) -> diplomatie_mls::Result<Outgoing>,
    {
        let group = room_id.as_bytes();
        let path = format!("/_diplomatie/client/v1/mls/rooms/{}/commit", enc(room_id));
        for _ in 0..COMMIT_ATTEMPTS {
            self.catch_up(room_id).await?;
            let outgoing = stage(&self.mls, group)?;
            match self.post(&path, &commit_body(&outgoing)).await {
                Ok(_) => {
                    let epoch = self.mls.merge_pending(group)?;
                    self.state.rooms.entry(room_id.to_owned()).or_default().seen.clear();
                    self.save()?;
                    return Ok(epoch);
                }
                Err(e) => {
                    self.mls.discard_pending(group)?;
                    self.save()?;
                    if e.errcode() != Some("FR_DIPLOMATIE_MLS_WRONG_EPOCH") {
                        return Err(e);
                    }
                }
            }
        }
        Err(Error::Usage(format!("the group of {room_id} changed {COMMIT_ATTEMPTS} times under this commit")))
    }

    /// Applies the handshakes (commits, the server's proposals) of the group since this
    /// device's epoch that it has not applied yet. The caller saves: until then a restart
    /// fetches and applies them again, from the state saved with the handshakes seen.
    async fn catch_up(&mut self, room_id: &str) -> Result<()> {
        let Some(epoch) = self.mls.epoch(room_id.as_bytes()) else {
            return Err(Error::Usage(format!("this device is not in the group of {room_id} (not added yet?)")));
        };
        let v = self
            .get(&format!("/_diplomatie/client/v1/mls/rooms/{}/handshakes?from_epoch={epoch}", enc(room_id)))
            .await?;
        for handshake in v["handshakes"].as_array().into_iter().flatten() {
            let text = handshake["message"].as_str().unwrap_or_default();
            let hash = digest(text);
            let room = self.state.rooms.entry(room_id.to_owned()).or_default();
            if room.seen.contains(&hash) {
                continue;
            }
            match self.mls.receive(room_id.as_bytes(), &b64::decode(text)?)? {
                // A new epoch: what was seen belongs to the past one.
                Received::Commit { .. } => room.seen.clear(),
                _ => room.seen.push(hash),
            }
        }
        Ok(())
    }

    /// Syncs once (waiting up to `timeout_ms` for news): opens the Welcomes of groups this
    /// device was added to, applies the commits and proposals of its groups, decrypts the
    /// messages. Returns the messages read, which the store keeps.
    pub async fn sync(&mut self, timeout_ms: u64) -> Result<Vec<Message>> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = &self.state.since {
            path.push_str(&format!("&since={}", enc(since)));
        }
        let v = self.get(&path).await?;
        for event in v["to_device"]["events"].as_array().into_iter().flatten() {
            if event["type"] != WELCOME_EVENT {
                continue;
            }
            let (Some(room_id), Some(welcome)) =
                (event["content"]["room_id"].as_str(), event["content"]["welcome"].as_str())
            else {
                continue;
            };
            if self.mls.epoch(room_id.as_bytes()).is_some() {
                continue;
            }
            // A Welcome that does not open (not for this device's key packages) is dropped.
            let _ = self.mls.join(&b64::decode(welcome)?, None);
        }
        let mut read = Vec::new();
        let mut receipts = Vec::new();
        for (room_id, room) in v["rooms"]["join"].as_object().into_iter().flatten() {
            // Groups this device is not in, or was removed from.
            if !self.mls.is_active(room_id.as_bytes()) {
                continue;
            }
            let events = room["timeline"]["events"].as_array().map(Vec::as_slice).unwrap_or_default();
            // Commits are applied from the handshake log, in order, when some came (the
            // timeline's may be cut short); the server's proposals wait for the next change.
            // Or when a message of a later epoch came first (its commit travelling from another
            // server).
            let epoch = self.mls.epoch(room_id.as_bytes());
            let ahead = events.iter().any(|e| e["type"] == MESSAGE_EVENT && e["content"]["epoch"].as_u64() > epoch);
            if room["timeline"]["limited"] == true || ahead || events.iter().any(|e| e["type"] == COMMIT_EVENT) {
                self.catch_up(room_id).await?;
            }
            let mut last_read = None;
            for event in events {
                if event["type"] != MESSAGE_EVENT && event["type"] != COMMIT_EVENT {
                    continue;
                }
                let Ok(bytes) = b64::decode(event["content"]["message"].as_str().unwrap_or_default()) else {
                    continue;
                };
                // Messages of epochs before this device joined, or its own: not for it to read.
                let Ok(Received::Application { sender, plaintext }) = self.mls.receive(room_id.as_bytes(), &bytes)
                else {
                    continue;
                };
                let message = Message {
                    room_id: room_id.clone(),
                    event_id: event["event_id"].as_str().unwrap_or_default().to_owned(),
                    sender: sender.user_id,
                    sender_device: sender.device_id,
                    text: String::from_utf8_lossy(&plaintext).into_owned(),
                };
                last_read = Some(message.event_id.clone());
                self.state.rooms.entry(room_id.clone()).or_default().history.push(message.clone());
                read.push(message);
            }
            receipts.extend(last_read.map(|event_id| (room_id.clone(), event_id)));
        }
        self.state.since = v["next_batch"].as_str().map(str::to_owned);
        self.save()?;
        // Read receipts, as Matrix clients send them: what the authors of formal
        // correspondence see as its audience.
        for (room_id, event_id) in receipts {
            let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room_id), enc(&event_id));
            self.post(&path, &json!({})).await?;
        }
        Ok(read)
    }
}
