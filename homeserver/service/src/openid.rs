//! OpenID tokens (client-server "OpenID", server-server `openid/userinfo`): a user proves to a
//! third party (a widget, an integration manager) who they are; the third party asks this
//! server whose token it holds. Tokens live an hour, in memory (a restart ends them, as a
//! third party expects of short-lived tokens anyway).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{api::error::ErrorKind, OwnedUserId, UserId};

use crate::{Error, Result};

/// How long an OpenID token is valid.
pub const OPENID_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The OpenID tokens handed out (a service with no dependencies).
#[derive(Default)]
pub struct OpenId(Mutex<HashMap<String, (OwnedUserId, Instant)>>);

impl OpenId {
    /// A new OpenID token for `user` (the caller, who may ask for no one else).
    pub fn request_token(&self, caller: &UserId, user: &UserId) -> Result<String> {
        if caller != user {
            return Err(Error::forbidden("You may only request an OpenID token for yourself"));
        }
        let token = crate::random_string(32);
        let mut tokens = self.0.lock().unwrap();
        let now = Instant::now();
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(token.clone(), (user.to_owned(), now + OPENID_TOKEN_LIFETIME));
        Ok(token)
    }

    /// `openid/userinfo`: whose token this is.
    pub fn userinfo(&self, token: &str) -> Result<OwnedUserId> {
        let tokens = self.0.lock().unwrap();
        match tokens.get(token) {
            Some((user, expires)) if *expires > Instant::now() => Ok(user.clone()),
            _ => Err(Error::new(
                ErrorKind::UnknownToken(ruma::api::error::UnknownTokenErrorData::new()),
                "Unknown or expired OpenID token",
            )),
        }
    }
}
