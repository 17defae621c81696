//! User-interactive authentication (the spec's UIA): sessions, flows and stages.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{
    api::{
        client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
        error::{ErrorKind, StandardErrorBody},
    },
    UserId,
};

use crate::{accounts::Accounts, core::Core, email::AddressValidation, Error, Result};

/// How long a UIA session may stay unfinished.
const SESSION_LIFETIME: Duration = Duration::from_secs(30 * 60);

struct Session {
    completed: Vec<AuthType>,
    created: Instant,
    /// The request that opened the session (method and path): a session authorises that
    /// operation only, as Synapse binds it.
    operation: String,
    /// A registration's parameters from the session's first request: a later step may send
    /// its `auth` alone (Synapse keeps them the same way).
    params: Option<serde_json::Value>,
    /// The account a completed registration created: the same session asked again answers
    /// with it (registration is idempotent).
    registered: Option<ruma::OwnedUserId>,
    /// Whom the session must authenticate (none for a registration).
    user: Option<ruma::OwnedUserId>,
    /// Single sign-on, done in the fallback page, named somebody else: the session's next
    /// step is refused.
    sso_mismatch: bool,
}

impl Session {
    fn new(operation: &str, user: Option<&UserId>) -> Session {
        Session {
            completed: vec![],
            created: Instant::now(),
            operation: operation.to_owned(),
            params: None,
            registered: None,
            user: user.map(ToOwned::to_owned),
            sso_mismatch: false,
        }
    }
}

/// User-interactive authentication, over the accounts (whose passwords the password stage
/// checks) and the addresses this server validates (the e-mail stage): the sessions in
/// progress.
pub struct Uia {
    core: Arc<Core>,
    accounts: Arc<Accounts>,
    email: Arc<AddressValidation>,
    sessions: Mutex<HashMap<String, Session>>,
}

crate::core::over_core!(Uia);

impl Uia {
    pub(crate) fn new(core: Arc<Core>, accounts: Arc<Accounts>, email: Arc<AddressValidation>) -> Uia {
        Uia { core, accounts, email, sessions: Mutex::default() }
    }

    /// Runs one step of user-interactive authentication. `Ok(())` once a flow is complete;
    /// otherwise the spec's 401 with the flows, the completed stages and the session.
    /// `user` is whom the password stage must authenticate; `operation` names the request
    /// (method and path): a session opened by one operation cannot authorise another.
    pub async fn user_interactive_auth(
        &self,
        flows: &[Vec<AuthType>],
        auth: Option<&AuthData>,
        user: Option<&UserId>,
        operation: &str,
    ) -> Result<()> {
        let info = |session: String, completed: Vec<AuthType>, error: Option<StandardErrorBody>| {
            let mut info = UiaaInfo::new(flows.iter().map(|f| AuthFlow::new(f.clone())).collect());
            info.session = Some(session);
            info.completed = completed;
            // Always present, as clients and Sytest expect: no stage here takes parameters.
            info.params = serde_json::value::to_raw_value(&serde_json::json!({})).ok();
            info.auth_error = error.map(Box::new);
            Error::Uiaa(Box::new(info))
        };
        let Some(auth) = auth else {
            let session = crate::random_string(24);
            self.sessions.lock().unwrap().insert(session.clone(), Session::new(operation, user));
            return Err(info(session, vec![], None));
        };
        let session_id = match auth.session() {
            Some(s) => s.to_owned(),
            None => {
                let s = crate::random_string(24);
                self.sessions.lock().unwrap().insert(s.clone(), Session::new(operation, user));
                s
            }
        };
        let completed = {
            let mut sessions = self.sessions.lock().unwrap();
            sessions.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
            match sessions.get(&session_id) {
                Some(s) if s.operation != operation => {
                    return Err(Error::forbidden(
                        "Requested operation has changed during the UI authentication session",
                    ));
                }
                Some(s) if s.sso_mismatch => {
                    return Err(Error::forbidden("Single sign-on authenticated another user"));
                }
                Some(s) => s.completed.clone(),
                None => return Err(Error::new(ErrorKind::Unknown, "Unknown or expired UIA session")),
            }
        };
        let complete = |completed: &[AuthType]| flows.iter().any(|f| f.iter().all(|s| completed.contains(s)));
        // The session alone, after a stage done in its fallback page (single sign-on).
        if matches!(auth, AuthData::FallbackAcknowledgement(_)) {
            if complete(&completed) {
                self.sessions.lock().unwrap().remove(&session_id);
                return Ok(());
            }
            return Err(info(session_id, completed, None));
        }

        // Check the stage the client just completed.
        let stage = auth.auth_type();
        let allowed = stage.as_ref().is_some_and(|t| flows.iter().any(|f| f.contains(t)));
        if !allowed {
            let err = StandardErrorBody::new(ErrorKind::Unrecognized, "This stage is not offered here".into());
            return Err(info(session_id, completed, Some(err)));
        }
        // The stage's check; a password stage answers whom it authenticated.
        let check = match auth {
            AuthData::Dummy(_) => Ok(None),
            AuthData::Password(p) => self.check_password_stage(&p.identifier, &p.password).await.map(Some),
            AuthData::RegistrationToken(t) => self.check_registration_token(&t.token).await.map(|()| None),
            AuthData::EmailIdentity(e) => {
                let creds = &e.thirdparty_id_creds;
                self.email.validated(creds.sid.as_str(), creds.client_secret.as_str()).await.map(|_| None)
            }
            _ => Err(Error::new(ErrorKind::Unrecognized, "Unsupported stage")),
        };
        match check {
            Err(e) => return Err(info(session_id, completed, Some(e.body()))),
            // Right credentials of somebody else: not a stage to retry (Synapse's 403).
            Ok(Some(who)) if user.is_some_and(|u| u != who) => {
                return Err(Error::forbidden("The credentials are another user's"));
            }
            Ok(_) => {}
        }
        let stage = stage.expect("checked above");
        let mut completed = completed;
        if !completed.contains(&stage) {
            completed.push(stage);
        }
        if complete(&completed) {
            self.sessions.lock().unwrap().remove(&session_id);
            return Ok(());
        }
        if let Some(s) = self.sessions.lock().unwrap().get_mut(&session_id) {
            s.completed = completed.clone();
        }
        Err(info(session_id, completed, None))
    }

    /// The flows that authenticate an account again (deleting devices, changing the password,
    /// cross-signing keys...): its password, if it has one, or single sign-on, when this server
    /// has an identity provider.
    async fn reauth_flows(&self, user: &UserId) -> Result<Vec<Vec<AuthType>>> {
        let sso = !self.config.sso.oidc_providers.is_empty() || self.config.cas.enabled;
        let password = diplomatie_storage::accounts::get_user(self.db.pool(), user.as_str())
            .await?
            .is_some_and(|u| u.password_hash.as_deref().is_some_and(|h| !h.is_empty()));
        let mut flows = vec![];
        if password || !sso {
            flows.push(vec![AuthType::Password]);
        }
        if sso {
            flows.push(vec![AuthType::Sso]);
        }
        Ok(flows)
    }

    /// One step of authenticating `user` again for `operation`, by [`Uia::reauth_flows`].
    pub async fn reauthenticate(&self, user: &UserId, auth: Option<&AuthData>, operation: &str) -> Result<()> {
        let flows = self.reauth_flows(user).await?;
        self.user_interactive_auth(&flows, auth, Some(user), operation).await
    }

    /// The account a session must authenticate, if it is still open.
    pub fn session_user(&self, session: &str) -> Option<ruma::OwnedUserId> {
        let sessions = self.sessions.lock().unwrap();
        sessions.get(session).filter(|s| s.created.elapsed() < SESSION_LIFETIME).and_then(|s| s.user.clone())
    }

    /// Single sign-on done in a session's fallback page authenticated `who`: the stage is
    /// complete if that is the session's user (`true`); else the session's next step is
    /// refused (`false`).
    pub fn sso_done(&self, session: &str, who: &UserId) -> Result<bool> {
        let mut sessions = self.sessions.lock().unwrap();
        let Some(s) = sessions.get_mut(session).filter(|s| s.created.elapsed() < SESSION_LIFETIME) else {
            return Err(Error::new(ErrorKind::Unknown, "Unknown or expired UIA session"));
        };
        if s.user.as_deref() != Some(who) {
            s.sso_mismatch = true;
            return Ok(false);
        }
        if !s.completed.contains(&AuthType::Sso) {
            s.completed.push(AuthType::Sso);
        }
        Ok(true)
    }

    /// Keeps a registration's parameters in its session (the first request's).
    pub fn keep_params(&self, session: &str, params: serde_json::Value) {
        if let Some(s) = self.sessions.lock().unwrap().get_mut(session) {
            s.params.get_or_insert(params);
        }
    }

    /// The parameters kept in a session, and the account it registered if it did.
    pub fn kept(&self, session: &str) -> (Option<serde_json::Value>, Option<ruma::OwnedUserId>) {
        let sessions = self.sessions.lock().unwrap();
        match sessions.get(session).filter(|s| s.created.elapsed() < SESSION_LIFETIME) {
            Some(s) => (s.params.clone(), s.registered.clone()),
            None => (None, None),
        }
    }

    /// Records the account a completed registration session created (its session stays, for
    /// the same request asked again, until it expires).
    pub fn registered(&self, session: &str, operation: &str, user: &UserId) {
        let mut entry = Session::new(operation, None);
        entry.registered = Some(user.to_owned());
        self.sessions.lock().unwrap().insert(session.to_owned(), entry);
    }

    /// Checks a password stage; answers the user it authenticates.
    async fn check_password_stage(&self, identifier: &UserIdentifier, password: &str) -> Result<ruma::OwnedUserId> {
        let UserIdentifier::Matrix(id) = identifier else {
            return Err(Error::new(ErrorKind::Unrecognized, "Only user identifiers are supported"));
        };
        let claimed = self.accounts.parse_local_user(&id.user)?;
        self.accounts.verify_password(&claimed, password).await?;
        Ok(claimed)
    }

    async fn check_registration_token(&self, token: &str) -> Result<()> {
        let valid = match diplomatie_storage::accounts::get_registration_token(self.db.pool(), token).await? {
            Some(t) => {
                t.uses_allowed.is_none_or(|n| t.completed < n) && t.expiry_ts.is_none_or(|e| e > crate::now_ms())
            }
            None => false,
        };
        if valid {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Unauthorized, "Invalid registration token"))
        }
    }
}

/// One-time nonces of the shared-secret registration endpoint (valid one minute, used once).
#[derive(Default)]
pub struct Nonces {
    nonces: Mutex<HashMap<String, Instant>>,
}

impl Nonces {
    pub fn issue(&self) -> String {
        let nonce = crate::random_string(32);
        let mut nonces = self.nonces.lock().unwrap();
        nonces.retain(|_, at| at.elapsed() < Duration::from_secs(60));
        nonces.insert(nonce.clone(), Instant::now());
        nonce
    }

    /// Consumes a nonce; false if it is unknown, used or expired.
    pub fn take(&self, nonce: &str) -> bool {
        self.nonces.lock().unwrap().remove(nonce).is_some_and(|at| at.elapsed() < Duration::from_secs(60))
    }
}
