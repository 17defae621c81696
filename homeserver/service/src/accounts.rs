//! Accounts: registration, login and tokens, devices, passwords, deactivation, profiles.

use hmac::{Hmac, Mac};
use ruma::events::room::member::MembershipState;
use ruma::{
    api::error::{ErrorKind, UnknownTokenErrorData},
    events::{StateEventType, TimelineEventType},
    OwnedDeviceId, OwnedUserId, UserId,
};
use serde_json::{json, Map, Value};

use std::sync::Arc;

use crate::{
    core::Core,
    now_ms, random_string,
    rooms::{PduBuilder, Rooms, Target},
    Error, Result,
};
use diplomatie_storage::accounts as store;

/// A device as stored, for the HTTP layer (which does not depend on storage).
pub use diplomatie_storage::accounts::Device as DeviceRecord;

/// What a successful registration or login hands to the client.
#[derive(Debug)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in_ms: Option<u64>,
}

/// Access tokens already checked, so that a request costs no query to authenticate. Every
/// server-side change that ends tokens (logout, device deletion, refresh, password change,
/// deactivation) drops the user's entries; entries also expire after a few seconds, so that
/// changes made by a command beside the server apply soon.
pub struct TokenCache {
    /// Token → (caller, expiry, when it was checked).
    entries: std::sync::Mutex<lru::LruCache<String, CachedToken>>,
    /// Bumped by every [`TokenCache::forget_user`]: a check that started before is not cached.
    generation: std::sync::atomic::AtomicU64,
}

type CachedToken = (Caller, Option<i64>, std::time::Instant);

/// How long a checked token is trusted without asking the database again.
const TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(10);

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache { entries: std::sync::Mutex::new(crate::lru(16384)), generation: Default::default() }
    }
}

impl TokenCache {
    fn get(&self, token: &str) -> Option<(Caller, Option<i64>)> {
        let mut entries = self.entries.lock().unwrap();
        match entries.get(token) {
            Some((caller, expires, at)) if at.elapsed() < TOKEN_TTL => Some((caller.clone(), *expires)),
            Some(_) => {
                entries.pop(token);
                None
            }
            None => None,
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn put(&self, token: &str, caller: &Caller, expires: Option<i64>, generation: u64) {
        let mut entries = self.entries.lock().unwrap();
        if self.generation() == generation {
            entries.put(token.to_owned(), (caller.clone(), expires, std::time::Instant::now()));
        }
    }

    /// Drops every cached token of a user.
    pub fn forget_user(&self, user: &str) {
        let mut entries = self.entries.lock().unwrap();
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let stale: Vec<String> =
            entries.iter().filter(|(_, (c, _, _))| c.user_id.as_str() == user).map(|(t, _)| t.clone()).collect();
        for t in stale {
            entries.pop(&t);
        }
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub is_admin: bool,
    /// A guest: limited to the spec's guest endpoints (the API checks).
    pub is_guest: bool,
    /// The application service acting as this user (its id), when it called with its token.
    pub appservice: Option<String>,
}

/// The accounts: registration, login and tokens, devices, passwords, profiles. Above the rooms
/// (a profile change is written into the member events of the user's rooms).
pub struct Accounts {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    pub tokens: TokenCache,
    /// Login tokens given out and not used yet: token → (user, when it expires). In memory
    /// only: they live two minutes, and a restart merely ends those in flight.
    login_tokens: std::sync::Mutex<std::collections::HashMap<String, (OwnedUserId, std::time::Instant)>>,
    /// Where and when devices were last seen since the last write ([`Accounts::flush_last_seen`]):
    /// every authenticated request notes it here, and it reaches the database in batches.
    last_seen: std::sync::Mutex<std::collections::HashMap<OwnedUserId, std::collections::HashMap<OwnedDeviceId, Seen>>>,
}

/// Where, when and with what client a device was seen.
#[derive(Clone, Debug)]
pub struct Seen {
    pub ts: i64,
    pub ip: Option<std::net::IpAddr>,
    pub user_agent: Option<String>,
}

/// The device of an application service's requests that name none: no device of the user's,
/// as Synapse has none for them.
pub const APPSERVICE_DEVICE: &str = "APPSERVICE";

/// How long a login token (`POST /login/get_token`) may be used.
pub const LOGIN_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);

/// The most login tokens outstanding at once (each was asked for with a password).
const MAX_LOGIN_TOKENS: usize = 10_000;

crate::core::over_core!(Accounts);

impl Accounts {
    pub(crate) fn new(core: Arc<Core>, rooms: Arc<Rooms>) -> Accounts {
        Accounts {
            core,
            rooms,
            tokens: TokenCache::default(),
            login_tokens: Default::default(),
            last_seen: Default::default(),
        }
    }

    /// Parses a user id or a bare localpart into a user of this server.
    pub fn parse_local_user(&self, user: &str) -> Result<OwnedUserId> {
        let id = if user.starts_with('@') {
            user.to_owned()
        } else {
            format!("@{}:{}", user.to_lowercase(), self.server_name())
        };
        let id = OwnedUserId::try_from(id).map_err(|_| Error::new(ErrorKind::InvalidUsername, "Invalid user id"))?;
        if id.server_name() != self.server_name() {
            return Err(Error::forbidden("User is not local to this server"));
        }
        Ok(id)
    }

    /// Checks a requested localpart: [`Accounts::free_user_id`], outside every application
    /// service's exclusive namespace.
    pub async fn check_username_available(&self, localpart: &str) -> Result<OwnedUserId> {
        let user_id = self.free_user_id(localpart).await?;
        if let Some(service) = self.registrations.exclusive_owner_of_user(user_id.as_str()) {
            return Err(Error::new(
                ErrorKind::Exclusive,
                format!("{user_id} is reserved by the application service {}", service.id()),
            ));
        }
        Ok(user_id)
    }

    /// Creates each application service's own user (`sender_localpart`) that does not exist
    /// yet: a service acts as it without registering it.
    pub async fn create_appservice_users(&self) -> Result<()> {
        for service in self.registrations.all() {
            if store::get_user(self.db.pool(), service.sender.as_str()).await?.is_none() {
                self.create_account(Some(service.sender.localpart()), None, false, None).await?;
                tracing::info!(user = %service.sender, service = service.id(), "application service user created");
            }
        }
        Ok(())
    }

    /// The user id of `localpart`, if it follows the spec's grammar and nobody has it.
    pub async fn free_user_id(&self, localpart: &str) -> Result<OwnedUserId> {
        let valid = !localpart.is_empty()
            && localpart.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'));
        if !valid {
            return Err(Error::new(ErrorKind::InvalidUsername, "User ids may contain only a-z, 0-9 and ._=-/+"));
        }
        let user_id = OwnedUserId::try_from(format!("@{localpart}:{}", self.server_name()))
            .map_err(|_| Error::new(ErrorKind::InvalidUsername, "Invalid user id"))?;
        if user_id.as_str().len() > 255 {
            return Err(Error::new(ErrorKind::InvalidUsername, "User id too long"));
        }
        if store::user_exists(self.db.pool(), user_id.as_str()).await? {
            return Err(Error::new(ErrorKind::UserInUse, "User id already taken"));
        }
        Ok(user_id)
    }

    /// Creates an account. With `login`, also a device and its tokens.
    pub async fn create_account(
        &self,
        localpart: Option<&str>,
        password: Option<&str>,
        is_admin: bool,
        displayname: Option<&str>,
    ) -> Result<OwnedUserId> {
        let user_id = match localpart {
            Some(l) => self.free_user_id(l).await?,
            None => loop {
                let candidate = random_string(12).to_lowercase();
                if let Ok(id) = self.check_username_available(&candidate).await {
                    break id;
                }
            },
        };
        let hash = match password {
            Some(p) => Some(hash_password(p).await?),
            None => None,
        };
        let display = displayname.map(str::to_owned).unwrap_or_else(|| user_id.localpart().to_owned());
        store::create_user(
            self.db.pool(),
            user_id.as_str(),
            hash.as_deref(),
            Some(&display),
            is_admin,
            false,
            now_ms(),
        )
        .await
        .map_err(|e| {
            if e.is_unique_violation() {
                Error::new(ErrorKind::UserInUse, "User id already taken")
            } else {
                e.into()
            }
        })?;
        tracing::info!(user = %user_id, "account created");
        Ok(user_id)
    }

    /// `POST /register?kind=guest`: a guest account, with a numeric localpart as Synapse gives
    /// (`@1234567:server`) and no password.
    pub async fn create_guest(&self) -> Result<OwnedUserId> {
        let user_id = loop {
            let n: u64 = rand::random::<u64>() % 9_000_000_000 + 1_000_000_000;
            if let Ok(id) = self.check_username_available(&n.to_string()).await {
                break id;
            }
        };
        store::create_user(self.db.pool(), user_id.as_str(), None, Some(user_id.localpart()), false, true, now_ms())
            .await?;
        tracing::info!(user = %user_id, "guest account created");
        Ok(user_id)
    }

    /// `POST /register` with `guest_access_token`: the guest whose token it is becomes a full
    /// account, keeping its user id (a `username` must be its localpart) and its rooms.
    pub async fn upgrade_guest(
        &self,
        guest_token: &str,
        username: Option<&str>,
        password: &str,
    ) -> Result<OwnedUserId> {
        let guest = self.authenticate(guest_token).await.map_err(|_| Error::forbidden("Invalid guest access token"))?;
        if !guest.is_guest {
            return Err(Error::forbidden("This access token is not a guest's"));
        }
        if username.is_some_and(|u| !u.eq_ignore_ascii_case(guest.user_id.localpart())) {
            return Err(Error::forbidden("A guest can only upgrade its own account"));
        }
        let hash = hash_password(password).await?;
        let mut tx = self.db.begin().await?;
        store::set_password(&mut *tx, guest.user_id.as_str(), Some(&hash)).await?;
        store::set_guest(&mut *tx, guest.user_id.as_str(), false).await?;
        diplomatie_storage::commit(tx).await?;
        self.tokens.forget_user(guest.user_id.as_str());
        tracing::info!(user = %guest.user_id, "guest account upgraded");
        Ok(guest.user_id)
    }

    /// Whether `user` is a guest of this server.
    pub async fn is_guest(&self, user: &UserId) -> Result<bool> {
        Ok(store::get_user(self.db.pool(), user.as_str()).await?.is_some_and(|u| u.is_guest))
    }

    /// Opens a session (device and tokens) for a user.
    pub async fn open_session(
        &self,
        user_id: &UserId,
        device_id: Option<&str>,
        display_name: Option<&str>,
        refresh: bool,
    ) -> Result<Session> {
        // A device id the client chose may be in use: its old tokens are replaced.
        let reused = device_id.is_some();
        let device_id = device_id.map(str::to_owned).unwrap_or_else(|| random_string(10).to_uppercase());
        let device_id = OwnedDeviceId::from(device_id);
        let mut tx = self.db.begin().await?;
        // Re-using a device id replaces its old tokens.
        store::delete_device(&mut tx, user_id.as_str(), device_id.as_str()).await?;
        store::upsert_device(&mut *tx, user_id.as_str(), device_id.as_str(), display_name, now_ms(), None).await?;
        let access_token = format!("dip_{}", random_string(32));
        let (refresh_token, expires) = if refresh {
            let rt = format!("dipr_{}", random_string(32));
            store::insert_refresh_token(&mut *tx, &rt, user_id.as_str(), device_id.as_str()).await?;
            (Some(rt), Some(self.config.access_token_lifetime_ms))
        } else {
            (None, None)
        };
        let expires_ts = expires.map(|ms| now_ms() + ms as i64);
        store::insert_access_token(
            &mut *tx,
            &access_token,
            user_id.as_str(),
            device_id.as_str(),
            expires_ts,
            refresh_token.as_deref(),
        )
        .await?;
        diplomatie_storage::commit(tx).await?;
        if reused {
            self.tokens.forget_user(user_id.as_str());
        }
        Ok(Session { user_id: user_id.to_owned(), device_id, access_token, refresh_token, expires_in_ms: expires })
    }

    /// Marks a registration token as used once.
    pub async fn consume_registration_token(&self, token: &str) -> Result<()> {
        store::use_registration_token(self.db.pool(), token).await?;
        Ok(())
    }

    pub async fn create_registration_token(
        &self,
        token: Option<&str>,
        uses_allowed: Option<i64>,
        expiry_ts: Option<i64>,
    ) -> Result<String> {
        let token = token.map(str::to_owned).unwrap_or_else(|| random_string(16));
        store::create_registration_token(self.db.pool(), &token, uses_allowed, expiry_ts).await.map_err(|e| {
            if e.is_unique_violation() {
                Error::invalid_param("Token already exists")
            } else {
                e.into()
            }
        })?;
        Ok(token)
    }

    pub async fn registration_token_valid(&self, token: &str) -> Result<bool> {
        Ok(store::get_registration_token(self.db.pool(), token).await?.is_some_and(|t| t.valid_at(now_ms())))
    }

    /// Checks a user's password (`M_FORBIDDEN` on any mismatch, without saying which part).
    /// A single-use token with which another device of `user` logs in (`m.login.token`),
    /// valid [`LOGIN_TOKEN_LIFETIME`].
    pub fn issue_login_token(&self, user: &UserId) -> Result<String> {
        let now = std::time::Instant::now();
        let mut tokens = self.login_tokens.lock().unwrap();
        tokens.retain(|_, (_, expiry)| *expiry > now);
        if tokens.len() >= MAX_LOGIN_TOKENS {
            let mut data = ruma::api::error::LimitExceededErrorData::new();
            data.retry_after = Some(ruma::api::error::RetryAfter::Delay(LOGIN_TOKEN_LIFETIME));
            return Err(Error::new(ErrorKind::LimitExceeded(data), "Too many login tokens outstanding"));
        }
        let token = random_string(32);
        tokens.insert(token.clone(), (user.to_owned(), now + LOGIN_TOKEN_LIFETIME));
        Ok(token)
    }

    /// The user a login token was given to; the token is used up. An unknown, used or expired
    /// token, or a deactivated account, is refused (`M_FORBIDDEN`, as the spec says).
    pub async fn take_login_token(&self, token: &str) -> Result<OwnedUserId> {
        let taken = self.login_tokens.lock().unwrap().remove(token);
        let user = match taken {
            Some((user, expiry)) if expiry > std::time::Instant::now() => user,
            _ => return Err(Error::forbidden("Invalid or expired login token")),
        };
        let account = store::get_user(self.db.pool(), user.as_str()).await?;
        if account.is_none_or(|a| a.deactivated) {
            return Err(Error::forbidden("Invalid or expired login token"));
        }
        Ok(user)
    }

    pub async fn verify_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        let denied = || Error::forbidden("Invalid username or password");
        let user = store::get_user(self.db.pool(), user_id.as_str()).await?.ok_or_else(denied)?;
        if user.deactivated {
            return Err(Error::new(ErrorKind::UserDeactivated, "This account has been deactivated"));
        }
        let hash = user.password_hash.ok_or_else(denied)?;
        let password = password.to_owned();
        let _permit = HASHING.acquire().await.map_err(crate::internal!())?;
        let ok = tokio::task::spawn_blocking(move || crate::password::verify(&password, &hash))
            .await
            .map_err(crate::internal!())?;
        if ok {
            Ok(())
        } else {
            Err(denied())
        }
    }

    /// The caller of a request: an application service's token acts as its own user, or as
    /// `user_id` (the identity assertion) when that user is the service's and registered, on
    /// the device `device_id` names when the user has it (MSC3202); any other token is a
    /// user's own.
    pub async fn authenticate_request(
        &self,
        token: &str,
        user_id: Option<&str>,
        device_id: Option<&str>,
    ) -> Result<Caller> {
        let Some(service) = self.registrations.by_token(token) else {
            return self.authenticate(token).await;
        };
        let user = match user_id {
            Some(u) => OwnedUserId::try_from(u).map_err(|_| Error::invalid_param("`user_id` is not a user id"))?,
            None => service.sender.clone(),
        };
        if user.server_name() != self.server_name() || !service.owns_user(user.as_str()) {
            return Err(Error::forbidden(format!("The application service cannot act as {user}")));
        }
        let row = store::get_user(self.db.pool(), user.as_str())
            .await?
            .filter(|u| !u.deactivated)
            .ok_or_else(|| Error::forbidden(format!("The application service has not registered {user}")))?;
        let device = match device_id {
            Some(d) => {
                if store::get_device(self.db.pool(), user.as_str(), d).await?.is_none() {
                    return Err(Error::new(ErrorKind::UnknownToken(UnknownTokenErrorData::new()), "Unknown device"));
                }
                OwnedDeviceId::from(d)
            }
            None => OwnedDeviceId::from(APPSERVICE_DEVICE),
        };
        Ok(Caller {
            user_id: user,
            device_id: device,
            is_admin: row.is_admin,
            is_guest: false,
            appservice: Some(service.id().to_owned()),
        })
    }

    /// Authenticates an access token.
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        let unknown = |soft_logout| {
            Error::new(
                ErrorKind::UnknownToken({
                    let mut d = UnknownTokenErrorData::new();
                    d.soft_logout = soft_logout;
                    d
                }),
                "Unknown or expired access token",
            )
        };
        if let Some((caller, expires)) = self.tokens.get(token) {
            if expires.is_some_and(|e| e <= now_ms()) {
                return Err(unknown(true));
            }
            return Ok(caller);
        }
        let generation = self.tokens.generation();
        let t = store::get_access_token(self.db.pool(), token).await?.ok_or_else(|| unknown(false))?;
        if t.expires_ts.is_some_and(|e| e <= now_ms()) {
            return Err(unknown(true));
        }
        let user = store::get_user(self.db.pool(), &t.user_id).await?.ok_or_else(|| unknown(false))?;
        if user.deactivated {
            return Err(unknown(false));
        }
        let caller = Caller {
            user_id: OwnedUserId::try_from(t.user_id).map_err(crate::internal!())?,
            device_id: t.device_id.into(),
            is_admin: user.is_admin,
            is_guest: user.is_guest,
            appservice: None,
        };
        self.tokens.put(token, &caller, t.expires_ts, generation);
        Ok(caller)
    }

    /// Whether `user` is an account of this server that is not deactivated.
    pub async fn is_active(&self, user: &UserId) -> Result<bool> {
        Ok(store::get_user(self.db.pool(), user.as_str()).await?.is_some_and(|u| !u.deactivated))
    }

    pub async fn is_admin(&self, user: &UserId) -> Result<bool> {
        Ok(store::get_user(self.db.pool(), user.as_str()).await?.is_some_and(|u| u.is_admin))
    }

    /// Exchanges a refresh token for new tokens; the old pair stops working.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session> {
        let mut tx = self.db.begin().await?;
        let (user_id, device_id) = store::take_refresh_token(&mut tx, refresh_token).await?.ok_or_else(|| {
            Error::new(ErrorKind::UnknownToken(UnknownTokenErrorData::new()), "Unknown refresh token")
        })?;
        let access_token = format!("dip_{}", random_string(32));
        let new_refresh = format!("dipr_{}", random_string(32));
        let lifetime = self.config.access_token_lifetime_ms;
        store::insert_refresh_token(&mut *tx, &new_refresh, &user_id, &device_id).await?;
        store::insert_access_token(
            &mut *tx,
            &access_token,
            &user_id,
            &device_id,
            Some(now_ms() + lifetime as i64),
            Some(&new_refresh),
        )
        .await?;
        diplomatie_storage::commit(tx).await?;
        self.tokens.forget_user(&user_id);
        Ok(Session {
            user_id: OwnedUserId::try_from(user_id).map_err(crate::internal!())?,
            device_id: device_id.into(),
            access_token,
            refresh_token: Some(new_refresh),
            expires_in_ms: Some(lifetime),
        })
    }

    pub async fn devices(&self, user: &UserId) -> Result<Vec<store::Device>> {
        let mut devices = store::get_devices(self.db.pool(), user.as_str()).await?;
        for d in &mut devices {
            self.with_pending_seen(user, d);
        }
        Ok(devices)
    }

    pub async fn device(&self, user: &UserId, device_id: &str) -> Result<store::Device> {
        let mut device = store::get_device(self.db.pool(), user.as_str(), device_id)
            .await?
            .ok_or_else(|| Error::not_found("Unknown device"))?;
        self.with_pending_seen(user, &mut device);
        Ok(device)
    }

    /// A device as last seen, counting what is not written yet.
    fn with_pending_seen(&self, user: &UserId, device: &mut store::Device) {
        let seen = self.last_seen.lock().unwrap();
        let Some(seen) = seen.get(user).and_then(|d| d.get(<&ruma::DeviceId>::from(device.device_id.as_str()))) else {
            return;
        };
        device.last_seen_ts = Some(seen.ts);
        if let Some(ip) = seen.ip {
            device.last_seen_ip = Some(ip.to_string());
        }
        if seen.user_agent.is_some() {
            device.last_seen_user_agent.clone_from(&seen.user_agent);
        }
    }

    /// Notes that `caller`'s device made a request now, from `ip` with `user_agent`: on every
    /// authenticated request, so nothing is allocated once the device is known.
    pub fn note_seen(&self, caller: &Caller, ip: Option<std::net::IpAddr>, user_agent: Option<&str>) {
        let ts = now_ms();
        // A header may be long: the first 512 bytes name the client well enough.
        let user_agent = user_agent.map(|a| &a[..a.floor_char_boundary(512)]);
        let mut seen = self.last_seen.lock().unwrap();
        let devices = match seen.get_mut(&*caller.user_id) {
            Some(devices) => devices,
            None => seen.entry(caller.user_id.clone()).or_default(),
        };
        match devices.get_mut(&*caller.device_id) {
            Some(s) => {
                s.ts = ts;
                if ip.is_some() {
                    s.ip = ip;
                }
                if user_agent.is_some() && s.user_agent.as_deref() != user_agent {
                    s.user_agent = user_agent.map(str::to_owned);
                }
            }
            None => {
                let entry = Seen { ts, ip, user_agent: user_agent.map(str::to_owned) };
                devices.insert(caller.device_id.clone(), entry);
            }
        }
    }

    /// Writes where and when devices were last seen since the last call, in one transaction.
    pub async fn flush_last_seen(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.last_seen.lock().unwrap());
        if pending.is_empty() {
            return Ok(());
        }
        let seen: Vec<(&OwnedUserId, &OwnedDeviceId, &Seen, Option<String>)> = pending
            .iter()
            .flat_map(|(user, devices)| {
                devices.iter().map(move |(device, s)| (user, device, s, s.ip.map(|ip| ip.to_string())))
            })
            .collect();
        let rows: Vec<store::LastSeen<'_>> = seen
            .iter()
            .map(|(user, device, s, ip)| store::LastSeen {
                user_id: user.as_str(),
                device_id: device.as_str(),
                ts: s.ts,
                ip: ip.as_deref(),
                user_agent: s.user_agent.as_deref(),
            })
            .collect();
        let mut tx = self.db.begin().await?;
        store::record_last_seen(&mut tx, &rows).await?;
        diplomatie_storage::commit(tx).await?;
        Ok(())
    }

    /// Writes [`Accounts::flush_last_seen`] every few seconds, as long as the accounts live.
    pub fn spawn_last_seen_writer(accounts: std::sync::Weak<Accounts>) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                let Some(accounts) = accounts.upgrade() else { return };
                if let Err(e) = accounts.flush_last_seen().await {
                    tracing::warn!(error = %e, "could not record when devices were last seen");
                }
            }
        });
    }

    pub async fn rename_device(&self, user: &UserId, device_id: &str, name: Option<&str>) -> Result<()> {
        if store::rename_device(self.db.pool(), user.as_str(), device_id, name).await? {
            Ok(())
        } else {
            Err(Error::not_found("Unknown device"))
        }
    }

    pub async fn profile(&self, user: &UserId) -> Result<(Option<String>, Option<String>)> {
        let u = store::get_user(self.db.pool(), user.as_str())
            .await?
            .ok_or_else(|| Error::not_found("Profile not found"))?;
        Ok((u.displayname, u.avatar_url))
    }

    /// Sets the display name or avatar and propagates it into the member event of every joined
    /// room, as clients expect.
    pub async fn set_profile_field(&self, user: &UserId, field: &str, value: Option<&str>) -> Result<()> {
        if value.is_some_and(|v| v.len() > 1024) {
            return Err(Error::new(ErrorKind::TooLarge, "Profile field too long"));
        }
        match field {
            "displayname" => store::set_displayname(self.db.pool(), user.as_str(), value).await?,
            "avatar_url" => store::set_avatar_url(self.db.pool(), user.as_str(), value).await?,
            _ => return Err(Error::bad_json("Unknown profile field")),
        }
        for (room_id, membership) in self.memberships_of(user).await? {
            if membership != MembershipState::Join {
                continue;
            }
            let current = self.rooms.state_event(&room_id, &StateEventType::RoomMember, user.as_str()).await?;
            let mut content = current.map(|p| p.content_value()).unwrap_or_else(|| json!({ "membership": "join" }));
            match value {
                Some(v) => content[field] = json!(v),
                None => {
                    if let Value::Object(m) = &mut content {
                        m.remove(field);
                    }
                }
            }
            let builder = PduBuilder::state(TimelineEventType::RoomMember, user.as_str(), content);
            if let Err(e) = self.rooms.append_event(Target::Room(&room_id), user, builder, None).await {
                tracing::warn!(%room_id, error = %e, "could not propagate profile change");
            }
        }
        Ok(())
    }

    /// Synapse's shared-secret registration: checks the HMAC-SHA1 the admin tool computed over
    /// `nonce NUL user NUL password NUL admin|notadmin`.
    pub fn check_shared_secret_mac(
        &self,
        nonce: &str,
        username: &str,
        password: &str,
        admin: bool,
        mac_hex: &str,
    ) -> Result<()> {
        let secret = &self.config.registration.shared_secret;
        if secret.is_empty() {
            return Err(Error::new(ErrorKind::Forbidden, "Shared secret registration is not enabled"));
        }
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).map_err(crate::internal!())?;
        mac.update(nonce.as_bytes());
        mac.update(b"\0");
        mac.update(username.as_bytes());
        mac.update(b"\0");
        mac.update(password.as_bytes());
        mac.update(b"\0");
        mac.update(if admin { b"admin" as &[u8] } else { b"notadmin" });
        let given = hex::decode(mac_hex).map_err(|_| Error::forbidden("HMAC incorrect"))?;
        mac.verify_slice(&given).map_err(|_| Error::forbidden("HMAC incorrect"))
    }

    /// The displayname and avatar a member event of `user` carries.
    pub async fn member_profile(&self, user: &UserId) -> Result<Map<String, Value>> {
        let mut profile = Map::new();
        if let Some(u) = diplomatie_storage::accounts::get_user(self.db.pool(), user.as_str()).await? {
            if let Some(d) = u.displayname {
                profile.insert("displayname".into(), json!(d));
            }
            if let Some(a) = u.avatar_url {
                profile.insert("avatar_url".into(), json!(a));
            }
        }
        Ok(profile)
    }
}

/// Password hashing is deliberately slow and takes 7 MiB a hash: at most one per core runs at a
/// time, so that a burst of logins neither starves the server nor inflates its memory.
static HASHING: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
});

/// Hashes a password with Argon2id, off the async threads.
pub async fn hash_password(password: &str) -> Result<String> {
    let password = password.to_owned();
    let _permit = HASHING.acquire().await.map_err(crate::internal!())?;
    tokio::task::spawn_blocking(move || crate::password::hash(&password)).await.map_err(crate::internal!())?.map_err(
        |e| {
            tracing::error!(error = %e, "password hashing failed");
            Error::Internal
        },
    )
}
