//! The TURN credentials clients get for calls (`/voip/turnServer`), in the TURN REST scheme
//! the configured relay checks (the built-in one, or coturn with the same secret).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ruma::UserId;

use crate::config::Voip;

/// Credentials for one user.
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
    pub uris: Vec<String>,
    pub ttl: Duration,
}

/// Credentials valid `turn_user_lifetime_ms` for `user`; none when no TURN server is
/// configured, or for a guest when guests get none.
pub fn turn_credentials(voip: &Voip, user: &UserId, is_guest: bool) -> Option<TurnCredentials> {
    if voip.turn_uris.is_empty() || voip.turn_shared_secret.is_empty() || (is_guest && !voip.turn_allow_guests) {
        return None;
    }
    let ttl = Duration::from_millis(voip.turn_user_lifetime_ms.max(1000));
    let expiry = (SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() + ttl).as_secs();
    let username = diplomatie_turn::credentials::username(expiry, user.as_str());
    let password = diplomatie_turn::credentials::password(&voip.turn_shared_secret, &username);
    Some(TurnCredentials { username, password, uris: voip.turn_uris.clone(), ttl })
}
