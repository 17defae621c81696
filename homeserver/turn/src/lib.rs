//! TURN for calls.
//!
//! Clients get time-limited TURN credentials from `/_matrix/client/v3/voip/turnServer`, in the
//! TURN REST scheme coturn and Synapse use: the username is `<expiry>:<user id>` (expiry in
//! Unix seconds) and the password the base64 HMAC-SHA1 of the username under a secret the
//! homeserver shares with the relay. [`credentials`] makes and checks them; the homeserver's
//! service layer needs nothing else.
//!
//! With the feature `relay`, [`relay::Relay`] is the relay itself (RFC 8656 over UDP, the
//! webrtc-rs `turn` crate), which checks those credentials, relays only to the peers its
//! configuration allows, and limits allocations per user.

pub mod credentials {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};

    /// The username of credentials valid until `expiry` (Unix seconds) for `user`.
    pub fn username(expiry: u64, user: &str) -> String {
        format!("{expiry}:{user}")
    }

    /// The password of a username under the shared secret.
    pub fn password(secret: &str, username: &str) -> String {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    /// The user a username names, when it has not expired at `now` (Unix seconds).
    pub fn user_of(username: &str, now: u64) -> Option<&str> {
        let (expiry, user) = username.split_once(':')?;
        let expiry: u64 = expiry.parse().ok()?;
        (expiry > now && !user.is_empty()).then_some(user)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn usernames_expire_and_name_their_user() {
            let name = username(1_000, "@alice:example.org");
            assert_eq!(user_of(&name, 999), Some("@alice:example.org"));
            assert_eq!(user_of(&name, 1_000), None);
            assert_eq!(user_of("alice", 0), None);
            assert_eq!(user_of("12:", 0), None);
        }

        #[test]
        fn passwords_are_base64_hmac_sha1() {
            // RFC 2104's example vector: HMAC-SHA1("key", "The quick brown fox ...").
            let expected = "3nybhbi3iqa8ino29wqQcBydtNk=";
            assert_eq!(password("key", "The quick brown fox jumps over the lazy dog"), expected);
            assert_ne!(password("other", "The quick brown fox jumps over the lazy dog"), expected);
        }
    }
}

#[cfg(feature = "relay")]
pub mod relay;
#[cfg(feature = "relay")]
pub mod tcp;
