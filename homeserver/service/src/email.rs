//! Addresses this server validates itself (`[email]`): it mails a link with a token to the
//! address (`/register/email/requestToken`, `/account/3pid/email/requestToken`); following the
//! link (or submitting the token) validates the session; a validated session then registers
//! an account with the address (the `m.login.email.identity` stage) or adds it to an account
//! (`/account/3pid/add`), after which the address logs in (`m.id.thirdparty`). Without an SMTP
//! relay configured, the server sends no mail and addresses are validated by identity servers
//! only (`identity.rs`), as Synapse without its `email` settings.
//!
//! Sessions live in `threepid_validation` (its token kept, its expiry checked when used);
//! addresses are kept lowercased, as Synapse canonicalises them.

use std::sync::Arc;

use diplomatie_storage::threepids as store;
use ruma::{api::error::ErrorKind, OwnedUserId, UserId};

use crate::{
    config::{RateLimits, SmtpTls},
    core::Core,
    ratelimit::RateLimiter,
    Error, Result,
};

/// What an address asked for must be: held by no account (to register with it, or to add it
/// to one), or held by an account (to reset that account's password).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    NewAddress,
    PasswordReset,
}

/// A session `request_token` opened or found again.
pub struct Requested {
    pub sid: String,
    /// Where a client may submit the token by API (the spec's `submit_url`).
    pub submit_url: String,
}

pub struct AddressValidation {
    core: Arc<Core>,
    /// The mail each address may be sent: 5 at once, then one every 5 minutes or so (as
    /// Synapse's `rc_3pid_validation`), so that nobody floods an inbox through this server.
    mails: RateLimiter,
}

crate::core::over_core!(AddressValidation);

/// An e-mail address as it is kept: trimmed and lowercased.
pub fn canonical_email(address: &str) -> String {
    address.trim().to_lowercase()
}

impl AddressValidation {
    pub(crate) fn new(core: Arc<Core>) -> AddressValidation {
        let (per_second, burst) = (0.003, 5.0);
        let limits = RateLimits {
            enabled: core.config.rate_limits.enabled,
            per_second,
            burst,
            login_per_second: per_second,
            login_burst: burst,
        };
        AddressValidation { mails: RateLimiter::new(&limits), core }
    }

    /// Whether this server sends mail (an SMTP relay is configured).
    pub fn enabled(&self) -> bool {
        !self.config.email.smtp_host.is_empty()
    }

    fn link_base(&self) -> String {
        format!("{}/_diplomatie/client/v1/email/submit_token", self.config.public_baseurl())
    }

    /// `.../email/requestToken`: opens a session for an address (no account's, or an
    /// account's for a password reset, as `purpose` says) and mails it its link, or finds the
    /// session of the same client secret and address again (nothing is sent unless
    /// `send_attempt` grew).
    pub async fn request_token(
        &self,
        purpose: Purpose,
        client_secret: &str,
        address: &str,
        send_attempt: u64,
        next_link: Option<&str>,
    ) -> Result<Requested> {
        if !self.enabled() {
            return Err(Error::new(
                ErrorKind::ThreepidDenied,
                "This server sends no e-mail: bind the address through an identity server",
            ));
        }
        let address = canonical_email(address);
        if !diplomatie_policies::is_mail_address(&address) {
            return Err(Error::invalid_param("Not an e-mail address"));
        }
        if let Some(next) = next_link {
            let url = url::Url::parse(next).map_err(|_| Error::invalid_param("next_link is not a URL"))?;
            if !matches!(url.scheme(), "https" | "http") {
                return Err(Error::invalid_param("next_link must be an http(s) URL"));
            }
        }
        let pool = self.db.pool();
        let held = store::owner(pool, "email", &address).await?.is_some();
        match purpose {
            Purpose::NewAddress if held => {
                return Err(Error::new(ErrorKind::ThreepidInUse, "This e-mail address is already in use"));
            }
            Purpose::PasswordReset if !held => {
                return Err(Error::new(ErrorKind::ThreepidNotFound, "No account has this e-mail address"));
            }
            _ => {}
        }
        let attempt = i64::try_from(send_attempt).map_err(|_| Error::invalid_param("send_attempt is too large"))?;
        let submit_url = self.link_base();
        let existing = store::find_session(pool, client_secret, "email", &address).await?;
        if let Some(s) = existing.as_ref().filter(|s| s.send_attempt >= attempt) {
            return Ok(Requested { sid: s.session_id.clone(), submit_url });
        }
        // A mail is to be sent: counted before anything is written.
        if let Err(ms) = self.mails.check(&address, false) {
            let mut data = ruma::api::error::LimitExceededErrorData::new();
            data.retry_after = Some(ruma::api::error::RetryAfter::Delay(std::time::Duration::from_millis(ms)));
            return Err(Error::new(ErrorKind::LimitExceeded(data), "Too many mails to this address: try again later"));
        }
        // The mail first: a session is written (or renewed) only once its link is sent, so
        // that a failed send leaves nothing a retry of the same attempt would take as sent.
        let session = match existing {
            Some(mut s) => {
                s.token = crate::random_string(32);
                s.send_attempt = attempt;
                s.next_link = next_link.map(str::to_owned);
                s.created_ts = crate::now_ms();
                self.send_link(&s).await?;
                store::renew_session(pool, &s).await?;
                s
            }
            None => {
                let s = store::ValidationSession {
                    session_id: crate::random_string(24),
                    client_secret: client_secret.to_owned(),
                    medium: "email".into(),
                    address: address.clone(),
                    token: crate::random_string(32),
                    send_attempt: attempt,
                    next_link: next_link.map(str::to_owned),
                    created_ts: crate::now_ms(),
                    validated_ts: None,
                };
                self.send_link(&s).await?;
                store::insert_session(pool, &s).await?;
                s
            }
        };
        Ok(Requested { sid: session.session_id, submit_url })
    }

    /// Mails the session's link to its address.
    async fn send_link(&self, s: &store::ValidationSession) -> Result<()> {
        let mut link = url::Url::parse(&self.link_base()).map_err(crate::internal!())?;
        link.query_pairs_mut()
            .append_pair("token", &s.token)
            .append_pair("client_secret", &s.client_secret)
            .append_pair("sid", &s.session_id);
        let server = self.server_name();
        let text = format!(
            "Someone asked to use the address {} on {server}.\n\n\
             To confirm that it is yours, open this link:\n\n{link}\n\n\
             If you did not ask for it, ignore this message: nothing changes.\n",
            s.address
        );
        let email = &self.config.email;
        let from =
            if email.notif_from.is_empty() { format!("noreply@{}", server.host()) } else { email.notif_from.clone() };
        // The envelope's sender: the address of `notif_from` (which may be `Name <address>`).
        let envelope_from = match (from.rfind('<'), from.rfind('>')) {
            (Some(open), Some(close)) if open < close => from[open + 1..close].to_owned(),
            _ => from.clone(),
        };
        let body = mail_builder::MessageBuilder::new()
            .from(from.as_str())
            .to(s.address.as_str())
            .subject(format!("[{server}] Confirm your e-mail address"))
            .text_body(text)
            .write_to_vec()
            .map_err(crate::internal!())?;
        let message = mail_send::smtp::message::Message {
            mail_from: envelope_from.into(),
            rcpt_to: vec![s.address.as_str().into()],
            body: body.into(),
        };
        fn failed(e: impl std::fmt::Display) -> Error {
            tracing::warn!(error = %e, "the validation mail could not be sent");
            Error::new(ErrorKind::Unknown, "The validation mail could not be sent")
        }
        let relay = || -> Result<mail_send::SmtpClientBuilder<String>> {
            let mut relay = mail_send::SmtpClientBuilder::new(email.smtp_host.clone(), email.smtp_port)
                .map_err(failed)?
                .implicit_tls(email.tls == SmtpTls::Implicit)
                .helo_host(server.host().to_owned())
                .timeout(std::time::Duration::from_secs(30));
            if let (Some(user), Some(password)) = (&email.smtp_user, &email.smtp_pass) {
                relay = relay.credentials((user.clone(), password.clone()));
            }
            Ok(relay)
        };
        if email.tls != SmtpTls::None {
            return relay()?.connect().await.map_err(failed)?.send(message).await.map_err(failed);
        }
        let mut client = match relay()?.connect_plain().await {
            Ok(client) => client,
            // A relay that does not know EHLO is greeted with HELO (RFC 5321, 3.2), as old
            // relays and Sytest's mail server are.
            Err(mail_send::Error::UnexpectedReply(reply)) if reply.code() >= 500 => {
                use mail_send::smtp::AssertReply;
                let mut client = relay()?.say_ehlo(false).connect_plain().await.map_err(failed)?;
                let hello = client.cmd(format!("HELO {}\r\n", server.host())).await.map_err(failed)?;
                hello.assert_positive_completion().map_err(failed)?;
                client
            }
            Err(e) => return Err(failed(e)),
        };
        client.send(message).await.map_err(failed)
    }

    /// The link followed, or the token submitted: validates the session. Answers where the
    /// client asked to be sent next, if anywhere.
    pub async fn submit_token(&self, sid: &str, client_secret: &str, token: &str) -> Result<Option<String>> {
        let failed = || Error::new(ErrorKind::ThreepidAuthFailed, "This validation link is unknown or expired");
        let session = store::get_session(self.db.pool(), sid).await?.ok_or_else(failed)?;
        let expired = session.created_ts + self.config.email.validation_token_lifetime_ms as i64 <= crate::now_ms();
        if session.client_secret != client_secret || session.token != token || expired {
            return Err(failed());
        }
        if session.validated_ts.is_none() {
            store::mark_validated(self.db.pool(), sid, crate::now_ms()).await?;
        }
        Ok(session.next_link)
    }

    /// The address of a validated session (`M_THREEPID_AUTH_FAILED` when it is not).
    pub async fn validated(&self, sid: &str, client_secret: &str) -> Result<store::ValidationSession> {
        let session = store::get_session(self.db.pool(), sid).await?;
        match session {
            Some(s) if s.client_secret == client_secret && s.validated_ts.is_some() => Ok(s),
            Some(s) if s.client_secret == client_secret => {
                Err(Error::new(ErrorKind::ThreepidAuthFailed, "The address has not been validated yet"))
            }
            _ => Err(Error::new(ErrorKind::ThreepidAuthFailed, "No validation session of this server has that id")),
        }
    }

    /// The validated session whose address `user` (a new account: `None`) may take: no other
    /// account holds it.
    pub async fn claimable(
        &self,
        user: Option<&UserId>,
        sid: &str,
        client_secret: &str,
    ) -> Result<store::ValidationSession> {
        let session = self.validated(sid, client_secret).await?;
        if let Some(owner) = store::owner(self.db.pool(), &session.medium, &session.address).await? {
            if user.is_none_or(|u| u.as_str() != owner) {
                return Err(Error::new(ErrorKind::ThreepidInUse, "This address is another account's"));
            }
        }
        Ok(session)
    }

    /// Adds the address of a validated session to `user`'s account.
    pub async fn add_to_account(&self, user: &UserId, sid: &str, client_secret: &str) -> Result<()> {
        let session = self.claimable(Some(user), sid, client_secret).await?;
        self.add_address(user, session).await
    }

    /// Adds the address of a session [`AddressValidation::claimable`] answered to `user`'s
    /// account.
    pub async fn add_address(&self, user: &UserId, session: store::ValidationSession) -> Result<()> {
        let threepid = store::Threepid {
            medium: session.medium,
            address: session.address,
            validated_at: session.validated_ts.unwrap_or_default(),
            added_at: crate::now_ms(),
            id_server: None,
        };
        store::upsert(self.db.pool(), user.as_str(), &threepid).await?;
        Ok(())
    }

    /// The account an address belongs to, for logging in with it.
    pub async fn account_of(&self, medium: &str, address: &str) -> Result<Option<OwnedUserId>> {
        let address = if medium == "email" { canonical_email(address) } else { address.to_owned() };
        let owner = store::owner(self.db.pool(), medium, &address).await?;
        Ok(owner.and_then(|o| OwnedUserId::try_from(o).ok()))
    }
}
