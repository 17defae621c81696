//! The server's ed25519 signing key, which signs every event this server builds.

use std::path::Path;

use ruma::signatures::Ed25519KeyPair;

use crate::anyhow_like::{msg, Result};

pub struct ServerKeys {
    pub keypair: Ed25519KeyPair,
}

impl ServerKeys {
    /// Loads the key from `signing.key` in the data directory, creating it on first start.
    /// The file holds `ed25519 <version> <base64 PKCS#8>`, as Synapse's signing key file does
    /// for the same information.
    pub fn load_or_create(data_dir: &Path) -> Result<ServerKeys> {
        use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
        let path = data_dir.join("signing.key");
        if !path.exists() {
            let document = Ed25519KeyPair::generate();
            let version = crate::random_string(6);
            let line = format!("ed25519 {version} {}\n", STANDARD_NO_PAD.encode(&*document));
            std::fs::write(&path, line).map_err(|e| msg(format!("cannot write {}: {e}", path.display())))?;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| msg(format!("cannot read {}: {e}", path.display())))?;
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [algorithm, version, key] = parts[..] else {
            return Err(msg(format!("{} is not `ed25519 <version> <key>`", path.display())));
        };
        if algorithm != "ed25519" {
            return Err(msg(format!("{}: unsupported algorithm {algorithm}", path.display())));
        }
        let der = STANDARD_NO_PAD
            .decode(key.trim_end_matches('='))
            .map_err(|e| msg(format!("{}: bad base64: {e}", path.display())))?;
        let keypair = Ed25519KeyPair::from_der(&der, version.to_owned())
            .map_err(|e| msg(format!("{}: bad key: {e}", path.display())))?;
        Ok(ServerKeys { keypair })
    }

    /// The key id, `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.keypair.version())
    }
}
