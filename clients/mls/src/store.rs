//! The client's store: one JSON file per device, written whole and atomically (a temporary
//! file renamed over it, readable by its owner only), so that a client killed at any moment
//! finds either the state before an operation or the state after it.
//!
//! It holds the device's secrets (its access token, its ed25519 seed, the MLS groups' secrets)
//! and what the device read, so that `history` works offline and survives restarts.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A message read (or sent) in a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub room_id: String,
    pub event_id: String,
    pub sender: String,
    pub sender_device: String,
    pub text: String,
}

/// What the device keeps of a room.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoomState {
    /// Handshake messages of the current epoch already applied (their SHA-256, hex).
    #[serde(default)]
    pub seen: Vec<String>,
    /// The messages read, in the room's order.
    #[serde(default)]
    pub history: Vec<Message>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub homeserver: String,
    pub user_id: String,
    pub device_id: String,
    pub access_token: String,
    /// The device's ed25519 seed (base64): its Matrix device key and its MLS signature key.
    pub seed: String,
    /// The MLS groups' state (base64 of `Device::save`).
    #[serde(default)]
    pub mls: String,
    /// The `/sync` position.
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub rooms: BTreeMap<String, RoomState>,
}

impl State {
    pub fn load(path: &Path) -> Result<State> {
        let bytes = std::fs::read(path).map_err(|e| Error::Store(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Store(format!("{} is not a client store: {e}", path.display())))
    }

    /// Writes the whole state to `path`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| Error::Store(format!("cannot write {}: {e}", path.display()));
        let mut tmp = PathBuf::from(path);
        tmp.as_mut_os_string().push(".tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(&serde_json::to_vec_pretty(self).expect("the state serialises")).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}
