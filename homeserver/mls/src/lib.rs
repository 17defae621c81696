//! MLS (RFC 9420) for the portal's DR rooms, with the homeserver as the delivery service
//! (RFC 9750).
//!
//! What the server and its clients share: the one ciphersuite, how a leaf names its Matrix
//! user and device ([`Identity`]), the encodings on the wire ([`b64`]), the names of the
//! events and state. The delivery service's checks live in [`ds`]: the server keeps each
//! group's *public* state (openmls' `PublicGroup`: the ratchet tree, the group context, no
//! secret), validates every commit against it and tells the caller what the commit changes,
//! so that the server's policy (clearances, approved devices) can accept or refuse it.
//!
//! Nothing here knows HTTP, the database or the rooms: callers give bytes and get decisions.

pub mod ds;
pub mod member;
pub mod store;

use openmls::prelude::{BasicCredential, Ciphersuite, Credential};
use serde::{Deserialize, Serialize};

/// The one ciphersuite of the portal's groups: X25519, AES-128-GCM, SHA-256 and Ed25519, the
/// curve of Matrix device keys, so that a device signs its MLS leaf with its Matrix key.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// The state event that makes a room an MLS room, set at its creation (state key empty):
/// `{"mode": "mls", "group_id": <the room id>}`.
pub const MODE_EVENT: &str = "fr.diplomatie.mls";
/// A commit the delivery service accepted, as a room event: `{"epoch", "message"}`.
pub const COMMIT_EVENT: &str = "fr.diplomatie.mls.commit";
/// An application message (ciphertext only), as a room event: `{"epoch", "message"}`.
pub const MESSAGE_EVENT: &str = "fr.diplomatie.mls.message";
/// A Welcome for a device that a commit added, as a to-device message:
/// `{"room_id", "epoch", "welcome"}`.
pub const WELCOME_EVENT: &str = "fr.diplomatie.mls.welcome";

/// Who a leaf of a group is: a Matrix user's device. A leaf's credential is a basic
/// credential whose identity is this value's JSON, and its signature key is the device's
/// Matrix ed25519 key, which the server checks against the device keys it holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub user_id: String,
    pub device_id: String,
}

impl Identity {
    pub fn new(user_id: impl Into<String>, device_id: impl Into<String>) -> Identity {
        Identity { user_id: user_id.into(), device_id: device_id.into() }
    }

    /// The credential naming this device.
    pub fn credential(&self) -> Credential {
        let json = serde_json::to_vec(self).expect("two strings serialise");
        BasicCredential::new(json).into()
    }

    /// The device a credential names; an error for any other kind of credential.
    pub fn of_credential(credential: &Credential) -> Result<Identity> {
        let basic = BasicCredential::try_from(credential.clone())
            .map_err(|_| Error::Invalid("the credential is not a basic credential".into()))?;
        serde_json::from_slice(basic.identity())
            .map_err(|_| Error::Invalid("the credential does not name a user and a device".into()))
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.user_id, self.device_id)
    }
}

/// What the delivery service refuses, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Bytes that are not the MLS structure expected (or not base64).
    #[error("malformed: {0}")]
    Malformed(String),
    /// A well-formed message that fails MLS validation: a bad signature or membership tag, a
    /// proposal the group cannot apply, a key package that does not verify.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A commit or message for an epoch that is not the group's current one. For a commit, the
    /// client must fetch the commits it missed, merge them and try again.
    #[error("the group is at epoch {current}; this is for epoch {got}")]
    WrongEpoch { current: u64, got: u64 },
    /// Valid MLS that the portal's rules refuse.
    #[error("{0}")]
    Forbidden(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Base64 (standard alphabet, unpadded, as Matrix writes keys) for MLS structures in JSON.
pub mod b64 {
    use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};

    pub fn encode(bytes: impl AsRef<[u8]>) -> String {
        STANDARD_NO_PAD.encode(bytes)
    }

    /// Decodes padded or unpadded base64.
    pub fn decode(text: &str) -> super::Result<Vec<u8>> {
        STANDARD_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| super::Error::Malformed("not base64".into()))
    }
}
