//! The server's administration of accounts and rooms, in the shapes of Synapse's admin API
//! (so that the tools written for it, synapse-admin among them, work unchanged): accounts
//! listed, read, created or changed, deactivated, their passwords reset and devices deleted;
//! rooms listed, read and blocked; registration tokens. Only administrators get here (the API
//! checks), and every change is written to the audit log once made.

use std::sync::Arc;

pub mod content;
pub mod deletions;

use diplomatie_storage::accounts as accounts_store;
use diplomatie_storage::admin::{self as store, ListedUser};
pub use diplomatie_storage::admin::{UserFilter, UserOrder};
use ruma::{api::error::ErrorKind, events::StateEventType, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    accounts::Accounts, core::Core, media::Repository, now_ms, ratelimit::RateLimiter, rooms::membership::Membership,
    rooms::Rooms, search::Search, sessions::Sessions, Error, Result,
};

/// The administration of accounts and rooms, over the accounts, sessions and rooms.
pub struct Admin {
    core: Arc<Core>,
    accounts: Arc<Accounts>,
    sessions: Arc<Sessions>,
    rooms: Arc<Rooms>,
    membership: Arc<Membership>,
    search: Arc<Search>,
    ratelimiter: Arc<RateLimiter>,
    media: Arc<Repository>,
    /// This very value, for the tasks that delete rooms.
    me: std::sync::Weak<Admin>,
}

crate::core::over_core!(Admin);

/// An account as Synapse's admin API shows it (`GET /_synapse/admin/v2/users/{userId}`, and
/// each entry of the list).
#[derive(Serialize)]
pub struct UserView {
    pub name: String,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub is_guest: bool,
    pub admin: bool,
    pub deactivated: bool,
    pub erased: bool,
    pub shadow_banned: bool,
    pub locked: bool,
    /// Seconds since the epoch, as Synapse counts it.
    pub creation_ts: i64,
    pub user_type: Option<String>,
    pub appservice_id: Option<String>,
    /// The portal's kind of account (`agent` or `external`).
    pub account_kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threepids: Option<Vec<ThreepidView>>,
    /// The identities at single sign-on providers linked to the account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_ids: Option<Vec<ExternalId>>,
}

/// An identity at a single sign-on provider linked to an account.
#[derive(Serialize)]
pub struct ExternalId {
    pub auth_provider: String,
    pub external_id: String,
}

/// An account's e-mail address or phone number, as the admin API shows it.
#[derive(Serialize)]
pub struct ThreepidView {
    pub medium: String,
    pub address: String,
    pub added_at: i64,
    pub validated_at: i64,
}

impl From<ListedUser> for UserView {
    fn from(u: ListedUser) -> Self {
        UserView {
            name: u.user_id,
            displayname: u.displayname,
            avatar_url: u.avatar_url,
            is_guest: u.is_guest,
            admin: u.is_admin,
            deactivated: u.deactivated,
            erased: u.erased,
            shadow_banned: false,
            locked: false,
            creation_ts: u.created_ts / 1000,
            user_type: None,
            appservice_id: None,
            account_kind: u.account_kind,
            threepids: None,
            external_ids: None,
        }
    }
}

/// A page of accounts (`GET /_synapse/admin/v2/users`).
#[derive(Serialize)]
pub struct UserPage {
    pub users: Vec<UserView>,
    /// The offset of the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
    pub total: i64,
}

/// What `PUT /_synapse/admin/v2/users/{userId}` may set; what it leaves out stays.
#[derive(Default)]
pub struct UserChange {
    pub password: Option<String>,
    pub logout_devices: bool,
    pub displayname: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub admin: Option<bool>,
    pub deactivated: Option<bool>,
    /// E-mail addresses and phone numbers, replacing those the account has.
    pub threepids: Option<Vec<(String, String)>>,
}

/// A room as Synapse's admin API lists it.
#[derive(Serialize, Clone)]
pub struct RoomView {
    pub room_id: OwnedRoomId,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub avatar: Option<String>,
    pub canonical_alias: Option<String>,
    pub joined_members: u64,
    pub joined_local_members: u64,
    pub version: Option<String>,
    pub creator: Option<String>,
    pub encryption: Option<String>,
    pub federatable: bool,
    pub public: bool,
    pub join_rules: Option<String>,
    pub guest_access: Option<String>,
    pub history_visibility: Option<String>,
    pub state_events: u64,
    pub room_type: Option<String>,
}

/// A page of rooms (`GET /_synapse/admin/v1/rooms`).
#[derive(Serialize)]
pub struct RoomPage {
    pub rooms: Vec<RoomView>,
    pub offset: usize,
    pub total_rooms: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_batch: Option<usize>,
}

/// The columns a room list may be ordered by (Synapse's `order_by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomOrder {
    Name,
    CanonicalAlias,
    JoinedMembers,
    JoinedLocalMembers,
    Version,
    Creator,
    Encryption,
    Federatable,
    Public,
    JoinRules,
    GuestAccess,
    HistoryVisibility,
    StateEvents,
}

impl RoomOrder {
    /// Synapse's name of the order, `None` for one it does not have.
    pub fn parse(name: &str) -> Option<RoomOrder> {
        Some(match name {
            "name" | "alphabetical" => RoomOrder::Name,
            "canonical_alias" => RoomOrder::CanonicalAlias,
            "joined_members" | "size" => RoomOrder::JoinedMembers,
            "joined_local_members" => RoomOrder::JoinedLocalMembers,
            "version" => RoomOrder::Version,
            "creator" => RoomOrder::Creator,
            "encryption" => RoomOrder::Encryption,
            "federatable" => RoomOrder::Federatable,
            "public" => RoomOrder::Public,
            "join_rules" => RoomOrder::JoinRules,
            "guest_access" => RoomOrder::GuestAccess,
            "history_visibility" => RoomOrder::HistoryVisibility,
            "state_events" => RoomOrder::StateEvents,
            _ => return None,
        })
    }

    fn compare(self, a: &RoomView, b: &RoomView) -> std::cmp::Ordering {
        let text = |x: &Option<String>, y: &Option<String>| lowered(x).cmp(lowered(y));
        match self {
            RoomOrder::Name => text(&a.name, &b.name),
            RoomOrder::CanonicalAlias => text(&a.canonical_alias, &b.canonical_alias),
            // The largest first, as Synapse lists them (`dir=b` turns it round).
            RoomOrder::JoinedMembers => b.joined_members.cmp(&a.joined_members),
            RoomOrder::JoinedLocalMembers => b.joined_local_members.cmp(&a.joined_local_members),
            RoomOrder::Version => text(&a.version, &b.version),
            RoomOrder::Creator => text(&a.creator, &b.creator),
            RoomOrder::Encryption => text(&a.encryption, &b.encryption),
            RoomOrder::Federatable => a.federatable.cmp(&b.federatable),
            RoomOrder::Public => a.public.cmp(&b.public),
            RoomOrder::JoinRules => text(&a.join_rules, &b.join_rules),
            RoomOrder::GuestAccess => text(&a.guest_access, &b.guest_access),
            RoomOrder::HistoryVisibility => text(&a.history_visibility, &b.history_visibility),
            RoomOrder::StateEvents => b.state_events.cmp(&a.state_events),
        }
    }
}

/// One line of the audit log as administrators read it.
#[derive(Serialize)]
pub struct AuditView {
    pub id: i64,
    pub ts: i64,
    pub admin: String,
    pub action: String,
    pub target: String,
    pub detail: Option<Value>,
}

/// A page of the audit log, newest first.
#[derive(Serialize)]
pub struct AuditPage {
    pub entries: Vec<AuditView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// A device as the admin API shows it.
#[derive(Serialize)]
pub struct DeviceView {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ip: Option<String>,
    pub last_seen_ts: Option<i64>,
    pub last_seen_user_agent: Option<String>,
    pub user_id: OwnedUserId,
}

/// `GET /_synapse/admin/v2/users/{userId}/devices`.
#[derive(Serialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
    pub total: usize,
}

/// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`.
#[derive(Serialize)]
pub struct JoinedRooms {
    pub joined_rooms: Vec<OwnedRoomId>,
    pub total: usize,
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/members`.
#[derive(Serialize)]
pub struct Members {
    pub members: Vec<OwnedUserId>,
    pub total: usize,
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/state`: events in the client format.
#[derive(Serialize)]
pub struct RoomState {
    pub state: Vec<Value>,
}

/// A user's own rate limit (`/_synapse/admin/v1/users/{userId}/override_ratelimit`); both
/// absent when the user has none.
#[derive(Serialize, Default)]
pub struct RateLimitView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_per_second: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_count: Option<i64>,
}

/// A page of a room's events (`GET /_synapse/admin/v1/rooms/{roomId}/messages`).
#[derive(Serialize)]
pub struct Messages {
    pub chunk: Vec<Value>,
    pub start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// A registration token as the admin API shows it (`expiry_time` in milliseconds).
#[derive(Serialize)]
pub struct TokenView {
    pub token: String,
    pub uses_allowed: Option<i64>,
    pub pending: i64,
    pub completed: i64,
    pub expiry_time: Option<i64>,
}

/// Whether a room is blocked, and by whom.
#[derive(Serialize)]
pub struct RoomBlock {
    pub block: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// `GET /_synapse/admin/v1/registration_tokens`.
#[derive(Serialize)]
pub struct TokenList {
    pub registration_tokens: Vec<TokenView>,
}

impl Admin {
    #[allow(clippy::too_many_arguments)] // the services it works over, each named once
    pub(crate) fn new(
        core: Arc<Core>,
        accounts: Arc<Accounts>,
        sessions: Arc<Sessions>,
        rooms: Arc<Rooms>,
        membership: Arc<Membership>,
        search: Arc<Search>,
        ratelimiter: Arc<RateLimiter>,
        media: Arc<Repository>,
    ) -> Arc<Admin> {
        Arc::new_cyclic(|me| Admin {
            core,
            accounts,
            sessions,
            rooms,
            membership,
            search,
            ratelimiter,
            media,
            me: me.clone(),
        })
    }

    /// Writes a line of the audit log (outside any change's transaction: the change was made).
    async fn audit(&self, admin: &UserId, action: &str, target: &str, detail: Option<Value>) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let detail = detail.map(|d| d.to_string());
        store::record(&mut tx, now_ms(), admin.as_str(), action, target, detail.as_deref()).await?;
        diplomatie_storage::commit(tx).await?;
        tracing::info!(%admin, action, target, "administration");
        Ok(())
    }

    /// Writes a line of the audit log for a change made elsewhere (the portal's
    /// administration, whose routes the API records).
    pub async fn record(&self, who: &UserId, action: &str, target: &str) -> Result<()> {
        self.audit(who, action, target, None).await
    }

    fn check_local(&self, user: &UserId) -> Result<()> {
        if user.server_name() != self.server_name() {
            return Err(Error::invalid_param("Only local users can be administered"));
        }
        Ok(())
    }

    /// A user of this server, who must exist.
    async fn local_user(&self, user: &UserId) -> Result<ListedUser> {
        self.check_local(user)?;
        store::listed_user(self.db.pool(), user.as_str()).await?.ok_or_else(|| Error::not_found("User not found"))
    }

    /// `GET /_synapse/admin/v2/users`: a page of accounts.
    pub async fn list_users(&self, filter: &UserFilter, from: i64, limit: i64) -> Result<UserPage> {
        let (users, total) = store::list_users(self.db.pool(), filter, from, limit).await?;
        let next = from + users.len() as i64;
        let mut views = Vec::with_capacity(users.len());
        for user in users {
            let mut view = UserView::from(user);
            if let Ok(id) = <&UserId>::try_from(view.name.as_str()) {
                view.shadow_banned = self.rooms.is_shadow_banned(id).await?;
            }
            views.push(view);
        }
        Ok(UserPage { next_token: (next < total && !views.is_empty()).then(|| next.to_string()), users: views, total })
    }

    /// `GET /_synapse/admin/v2/users/{userId}`: an account with its addresses.
    pub async fn user(&self, user: &UserId) -> Result<UserView> {
        let listed = self.local_user(user).await?;
        let mut view = UserView::from(listed);
        let threepids = diplomatie_storage::threepids::list(self.db.pool(), user.as_str()).await?;
        view.threepids = Some(
            threepids
                .into_iter()
                .map(|t| ThreepidView {
                    medium: t.medium,
                    address: t.address,
                    added_at: t.added_at,
                    validated_at: t.validated_at,
                })
                .collect(),
        );
        let external = diplomatie_storage::accounts::external_ids(self.db.pool(), user.as_str()).await?;
        view.external_ids = Some(
            external
                .into_iter()
                .map(|(auth_provider, external_id)| ExternalId { auth_provider, external_id })
                .collect(),
        );
        view.shadow_banned = self.rooms.is_shadow_banned(user).await?;
        Ok(view)
    }

    /// `PUT /_synapse/admin/v2/users/{userId}`: creates the account (answers `true`) or changes
    /// it. A new account needs a password unless it is created deactivated.
    pub async fn put_user(&self, admin: &UserId, user: &UserId, change: UserChange) -> Result<(bool, UserView)> {
        self.check_local(user)?;
        let existing = store::listed_user(self.db.pool(), user.as_str()).await?;
        let created = existing.is_none();
        let reactivated = existing.as_ref().is_some_and(|u| u.deactivated) && change.deactivated == Some(false);
        if reactivated && change.password.is_none() {
            return Err(Error::invalid_param("An account is reactivated with a new password"));
        }
        if created {
            let displayname = change.displayname.clone().flatten();
            self.accounts
                .create_account(
                    Some(user.localpart()),
                    change.password.as_deref(),
                    change.admin.unwrap_or(false),
                    displayname.as_deref(),
                )
                .await?;
        } else if let Some(password) = &change.password {
            if existing.as_ref().is_some_and(|u| u.deactivated) && !reactivated {
                return Err(Error::invalid_param("A deactivated account cannot be given a password"));
            }
            self.sessions.set_password(user, None, password, change.logout_devices).await?;
        }
        if let Some(admin_flag) = change.admin.filter(|_| !created) {
            store::set_admin(self.db.pool(), user.as_str(), admin_flag).await?;
        }
        if let Some(name) = change.displayname.as_ref().filter(|_| !created) {
            self.accounts.set_profile_field(user, "displayname", name.as_deref()).await?;
        }
        if let Some(url) = &change.avatar_url {
            self.accounts.set_profile_field(user, "avatar_url", url.as_deref()).await?;
        }
        if let Some(threepids) = &change.threepids {
            // Set by an administrator: validated now, bound on no identity server.
            use diplomatie_storage::threepids as addresses;
            let mut tx = self.db.begin().await?;
            for old in addresses::list(&mut *tx, user.as_str()).await? {
                addresses::delete(&mut *tx, user.as_str(), &old.medium, &old.address).await?;
            }
            let now = now_ms();
            for (medium, address) in threepids {
                let t = addresses::Threepid {
                    medium: medium.clone(),
                    address: address.clone(),
                    validated_at: now,
                    added_at: now,
                    id_server: None,
                };
                addresses::upsert(&mut *tx, user.as_str(), &t).await?;
            }
            diplomatie_storage::commit(tx).await?;
        }
        match (change.deactivated, existing.as_ref().map(|u| u.deactivated)) {
            (Some(true), Some(false)) => self.sessions.deactivate(user, false).await?,
            // Reactivated: its new password was set above.
            (Some(false), Some(true)) => store::reactivate(self.db.pool(), user.as_str()).await?,
            (Some(true), None) => self.sessions.deactivate(user, false).await?,
            _ => {}
        }
        let detail = json!({
            "password_set": change.password.is_some(),
            "displayname": change.displayname,
            "avatar_url": change.avatar_url,
            "admin": change.admin,
            "deactivated": change.deactivated,
            "threepids": change.threepids.as_ref().map(Vec::len),
        });
        self.audit(admin, if created { "user.create" } else { "user.modify" }, user.as_str(), Some(detail)).await?;
        Ok((created, self.user(user).await?))
    }

    /// `POST /_synapse/admin/v1/deactivate/{userId}`: the account leaves its rooms, loses its
    /// devices and can no longer log in; with `erase`, its messages are shown redacted to
    /// those who join later.
    pub async fn deactivate(&self, admin: &UserId, user: &UserId, erase: bool) -> Result<()> {
        self.local_user(user).await?;
        self.sessions.deactivate(user, erase).await?;
        self.audit(admin, "user.deactivate", user.as_str(), Some(json!({ "erase": erase }))).await
    }

    /// `POST /_synapse/admin/v1/reset_password/{userId}`.
    pub async fn reset_password(&self, admin: &UserId, user: &UserId, password: &str, logout: bool) -> Result<()> {
        let listed = self.local_user(user).await?;
        if listed.deactivated {
            return Err(Error::invalid_param("The account is deactivated"));
        }
        self.sessions.set_password(user, None, password, logout).await?;
        self.audit(admin, "user.reset_password", user.as_str(), Some(json!({ "logout_devices": logout }))).await
    }

    /// Whether `user` is an account of this server (`M_NOT_FOUND`, `M_INVALID_PARAM` if not).
    pub async fn check_user(&self, user: &UserId) -> Result<()> {
        self.local_user(user).await.map(drop)
    }

    /// `GET /_synapse/admin/v2/users/{userId}/devices`.
    pub async fn devices(&self, user: &UserId) -> Result<DeviceList> {
        self.local_user(user).await?;
        let devices: Vec<DeviceView> =
            self.accounts.devices(user).await?.into_iter().map(|d| device_view(user, d)).collect();
        Ok(DeviceList { total: devices.len(), devices })
    }

    /// `GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}`.
    pub async fn device(&self, user: &UserId, device: &str) -> Result<DeviceView> {
        self.local_user(user).await?;
        Ok(device_view(user, self.accounts.device(user, device).await?))
    }

    /// `DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}` and `POST .../delete_devices`:
    /// the devices and their sessions end (those already gone are passed over).
    pub async fn delete_devices(&self, admin: &UserId, user: &UserId, devices: &[String]) -> Result<()> {
        self.local_user(user).await?;
        let known: Vec<String> = self.accounts.devices(user).await?.into_iter().map(|d| d.device_id).collect();
        let gone: Vec<&str> = devices.iter().filter(|d| known.contains(d)).map(String::as_str).collect();
        self.sessions.delete_devices(user, &gone).await?;
        self.audit(admin, "user.delete_devices", user.as_str(), Some(json!({ "devices": gone }))).await
    }

    /// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`.
    pub async fn joined_rooms(&self, user: &UserId) -> Result<JoinedRooms> {
        self.local_user(user).await?;
        let joined_rooms = crate::rooms::joined_rooms(self, user).await?;
        Ok(JoinedRooms { total: joined_rooms.len(), joined_rooms })
    }

    /// `GET /_diplomatie/admin/v1/audit`: the audit log, newest first.
    pub async fn audit_log(&self, before: Option<i64>, limit: i64) -> Result<AuditPage> {
        let entries = store::audit(self.db.pool(), before, limit).await?;
        let next_token = (entries.len() as i64 == limit).then(|| entries.last().map(|e| e.id.to_string())).flatten();
        Ok(AuditPage {
            entries: entries
                .into_iter()
                .map(|e| AuditView {
                    id: e.id,
                    ts: e.ts,
                    admin: e.admin,
                    action: e.action,
                    target: e.target,
                    detail: e.detail.and_then(|d| serde_json::from_str(&d).ok()),
                })
                .collect(),
            next_token,
        })
    }

    /// `GET /_synapse/admin/v1/registration_tokens`: every token, or only the valid ones
    /// (`Some(true)`) or the others (`Some(false)`).
    pub async fn registration_tokens(&self, valid: Option<bool>) -> Result<TokenList> {
        let now = now_ms();
        let tokens = store::registration_tokens(self.db.pool()).await?;
        let registration_tokens =
            tokens.into_iter().filter(|t| valid.is_none_or(|v| t.valid_at(now) == v)).map(token_view).collect();
        Ok(TokenList { registration_tokens })
    }

    /// `GET /_synapse/admin/v1/registration_tokens/{token}`.
    pub async fn registration_token(&self, token: &str) -> Result<TokenView> {
        let t = accounts_store::get_registration_token(self.db.pool(), token)
            .await?
            .ok_or_else(|| Error::not_found("No such registration token"))?;
        Ok(token_view(t))
    }

    /// `POST /_synapse/admin/v1/registration_tokens/new`.
    pub async fn new_registration_token(
        &self,
        admin: &UserId,
        token: Option<&str>,
        length: usize,
        uses_allowed: Option<i64>,
        expiry_ts: Option<i64>,
    ) -> Result<TokenView> {
        let token = token.map(str::to_owned).unwrap_or_else(|| crate::random_string(length));
        let token = self.accounts.create_registration_token(Some(&token), uses_allowed, expiry_ts).await?;
        let detail = json!({ "uses_allowed": uses_allowed, "expiry_time": expiry_ts });
        self.audit(admin, "registration_token.create", &token, Some(detail)).await?;
        self.registration_token(&token).await
    }

    /// `PUT /_synapse/admin/v1/registration_tokens/{token}`: what is given changes (`null`:
    /// unlimited, never expires), the rest stays.
    pub async fn update_registration_token(
        &self,
        admin: &UserId,
        token: &str,
        uses_allowed: Option<Option<i64>>,
        expiry_ts: Option<Option<i64>>,
    ) -> Result<TokenView> {
        let t = accounts_store::get_registration_token(self.db.pool(), token)
            .await?
            .ok_or_else(|| Error::not_found("No such registration token"))?;
        let uses = uses_allowed.unwrap_or(t.uses_allowed);
        let expiry = expiry_ts.unwrap_or(t.expiry_ts);
        store::update_registration_token(self.db.pool(), token, uses, expiry).await?;
        let detail = json!({ "uses_allowed": uses, "expiry_time": expiry });
        self.audit(admin, "registration_token.update", token, Some(detail)).await?;
        self.registration_token(token).await
    }

    /// `DELETE /_synapse/admin/v1/registration_tokens/{token}`.
    pub async fn delete_registration_token(&self, admin: &UserId, token: &str) -> Result<()> {
        if !store::delete_registration_token(self.db.pool(), token).await? {
            return Err(Error::not_found("No such registration token"));
        }
        self.audit(admin, "registration_token.delete", token, None).await
    }

    /// `PUT /_synapse/admin/v1/rooms/{roomId}/block`: blocks or unblocks a room (known here or
    /// not); a block does not make members leave.
    pub async fn block_room(&self, admin: &UserId, room_id: &RoomId, block: bool) -> Result<RoomBlock> {
        if block {
            store::block_room(self.db.pool(), room_id.as_str(), admin.as_str(), now_ms()).await?;
        } else {
            store::unblock_room(self.db.pool(), room_id.as_str()).await?;
        }
        self.audit(admin, if block { "room.block" } else { "room.unblock" }, room_id.as_str(), None).await?;
        self.room_block(room_id).await
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/block`.
    pub async fn room_block(&self, room_id: &RoomId) -> Result<RoomBlock> {
        let by = store::room_blocked_by(self.db.pool(), room_id.as_str()).await?;
        Ok(RoomBlock { block: by.is_some(), user_id: by })
    }

    /// A room as the admin API shows it, from one reading of its current state.
    pub async fn room(&self, room_id: &RoomId) -> Result<RoomView> {
        let room = diplomatie_storage::rooms::get_room(self.db.pool(), room_id.as_str())
            .await?
            .ok_or_else(|| Error::not_found("Room not found"))?;
        let state = self.rooms.current_state(room_id).await?;
        let members = self.rooms.joined_members(room_id).await?;
        let local = members.iter().filter(|m| m.server_name() == self.server_name()).count();
        let content = |kind: StateEventType| {
            let state = state.clone();
            async move {
                let pdu = self.rooms.state_event_in(&state, &kind, "").await?;
                Ok::<_, Error>(pdu.map(|p| p.content_value()))
            }
        };
        // A field of a state event's content, a non-empty string.
        let field = |v: &Option<Value>, f: &str| {
            v.as_ref().and_then(|v| v.get(f)).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
        };
        let create = content(StateEventType::RoomCreate).await?;
        Ok(RoomView {
            room_id: room_id.to_owned(),
            name: field(&content(StateEventType::RoomName).await?, "name"),
            topic: field(&content(StateEventType::RoomTopic).await?, "topic"),
            avatar: field(&content(StateEventType::RoomAvatar).await?, "url"),
            canonical_alias: field(&content(StateEventType::RoomCanonicalAlias).await?, "alias"),
            joined_members: members.len() as u64,
            joined_local_members: local as u64,
            version: Some(room.room_version),
            creator: Some(room.creator),
            encryption: field(&content(StateEventType::RoomEncryption).await?, "algorithm"),
            federatable: create.as_ref().and_then(|c| c.get("m.federate")).and_then(Value::as_bool).unwrap_or(true),
            public: room.is_public,
            join_rules: field(&content(StateEventType::RoomJoinRules).await?, "join_rule"),
            guest_access: field(&content(StateEventType::RoomGuestAccess).await?, "guest_access"),
            history_visibility: field(&content(StateEventType::RoomHistoryVisibility).await?, "history_visibility"),
            state_events: state.len() as u64,
            room_type: field(&create, "type"),
        })
    }

    /// `GET /_synapse/admin/v1/rooms`: every room this server knows, filtered by a term in
    /// their name, alias or id, ordered, a page from `from`.
    pub async fn list_rooms(
        &self,
        term: Option<&str>,
        order: RoomOrder,
        backwards: bool,
        from: usize,
        limit: usize,
    ) -> Result<RoomPage> {
        let term = term.map(str::to_lowercase);
        let mut rooms = Vec::new();
        for room_id in diplomatie_storage::retention::all_rooms(self.db.pool()).await? {
            let Ok(room_id) = OwnedRoomId::try_from(room_id) else { continue };
            let view = match self.room(&room_id).await {
                Ok(view) => view,
                // A room whose state this server never had (an invite over federation).
                Err(Error::Matrix(ErrorKind::NotFound, _)) => continue,
                Err(e) => return Err(e),
            };
            if let Some(term) = &term {
                let hit = |v: &Option<String>| v.as_ref().is_some_and(|v| v.to_lowercase().contains(term.as_str()));
                if !hit(&view.name)
                    && !hit(&view.canonical_alias)
                    && !view.room_id.as_str().to_lowercase().contains(term.as_str())
                {
                    continue;
                }
            }
            rooms.push(view);
        }
        rooms.sort_by(|a, b| order.compare(a, b).then_with(|| a.room_id.cmp(&b.room_id)));
        if backwards {
            rooms.reverse();
        }
        let total = rooms.len();
        let page: Vec<RoomView> = rooms.into_iter().skip(from).take(limit).collect();
        let end = from + page.len();
        Ok(RoomPage {
            offset: from,
            total_rooms: total,
            next_batch: (end < total).then_some(end),
            prev_batch: (from > 0).then(|| from.saturating_sub(limit)),
            rooms: page,
        })
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/members`.
    pub async fn room_members(&self, room_id: &RoomId) -> Result<Members> {
        self.rooms.known_room(room_id).await?;
        let mut members: Vec<OwnedUserId> = self.rooms.joined_members(room_id).await?.iter().cloned().collect();
        members.sort();
        Ok(Members { total: members.len(), members })
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/state`: the room's current state events.
    pub async fn room_state(&self, room_id: &RoomId) -> Result<RoomState> {
        self.rooms.known_room(room_id).await?;
        let state = self.rooms.current_state(room_id).await?;
        let mut events = Vec::with_capacity(state.len());
        for event_id in state.values() {
            if let Some(pdu) = self.rooms.get_pdu(event_id).await? {
                events.push(pdu.to_client(true));
            }
        }
        Ok(RoomState { state: events })
    }
}

/// A text's characters in lower case (an absent text is empty, so first), compared without
/// allocating.
fn lowered(v: &Option<String>) -> impl Iterator<Item = char> + '_ {
    v.as_deref().unwrap_or_default().chars().flat_map(char::to_lowercase)
}

fn device_view(user: &UserId, d: accounts_store::Device) -> DeviceView {
    DeviceView {
        device_id: d.device_id,
        display_name: d.display_name,
        last_seen_ip: d.last_seen_ip,
        last_seen_ts: d.last_seen_ts,
        last_seen_user_agent: d.last_seen_user_agent,
        user_id: user.to_owned(),
    }
}

fn token_view(t: accounts_store::RegistrationToken) -> TokenView {
    TokenView {
        token: t.token,
        uses_allowed: t.uses_allowed,
        pending: t.pending,
        completed: t.completed,
        expiry_time: t.expiry_ts,
    }
}

impl Admin {
    /// Reads the users' own rate limits into the limiter (at start-up).
    pub(crate) async fn load_ratelimit_overrides(&self) -> Result<()> {
        for (user, rate, burst) in store::ratelimit_overrides(self.db.pool()).await? {
            self.ratelimiter.set_override(&user, Some((rate as f64, burst as f64)));
        }
        Ok(())
    }

    /// `GET /_synapse/admin/v1/users/{userId}/override_ratelimit`.
    pub async fn ratelimit_override(&self, user: &UserId) -> Result<RateLimitView> {
        self.local_user(user).await?;
        let found = store::ratelimit_override(self.db.pool(), user.as_str()).await?;
        Ok(found.map_or_else(RateLimitView::default, |(rate, burst)| RateLimitView {
            messages_per_second: Some(rate),
            burst_count: Some(burst),
        }))
    }

    /// `POST /_synapse/admin/v1/users/{userId}/override_ratelimit`: the user's own limit
    /// (0 and 0: none at all), in force at once.
    pub async fn set_ratelimit_override(
        &self,
        admin: &UserId,
        user: &UserId,
        rate: i64,
        burst: i64,
    ) -> Result<RateLimitView> {
        if rate < 0 || burst < 0 {
            return Err(Error::invalid_param("messages_per_second and burst_count must be non-negative integers"));
        }
        self.local_user(user).await?;
        store::set_ratelimit_override(self.db.pool(), user.as_str(), rate, burst).await?;
        self.ratelimiter.set_override(user.as_str(), Some((rate as f64, burst as f64)));
        let detail = json!({ "messages_per_second": rate, "burst_count": burst });
        self.audit(admin, "user.ratelimit", user.as_str(), Some(detail)).await?;
        Ok(RateLimitView { messages_per_second: Some(rate), burst_count: Some(burst) })
    }

    /// `DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit`: the server's limit again.
    pub async fn delete_ratelimit_override(&self, admin: &UserId, user: &UserId) -> Result<()> {
        self.local_user(user).await?;
        store::delete_ratelimit_override(self.db.pool(), user.as_str()).await?;
        self.ratelimiter.set_override(user.as_str(), None);
        self.audit(admin, "user.ratelimit.delete", user.as_str(), None).await
    }
}

impl Admin {
    /// `POST` (and `DELETE`) `/_synapse/admin/v1/users/{userId}/shadow_ban`: what the user
    /// sends (messages, state, redactions, invites) seems to succeed and reaches nobody.
    pub async fn shadow_ban(&self, admin: &UserId, user: &UserId, ban: bool) -> Result<()> {
        self.local_user(user).await?;
        self.rooms.set_shadow_banned(user, ban.then_some(admin)).await?;
        let action = if ban { "user.shadow_ban" } else { "user.shadow_unban" };
        self.audit(admin, action, user.as_str(), None).await
    }
}

impl Admin {
    /// `GET /_synapse/admin/v1/rooms/{roomId}/messages`: a page of the room's events as this
    /// server holds them, whoever could see them (an administrator's view), filtered.
    pub async fn room_messages(
        &self,
        room_id: &RoomId,
        from: Option<&str>,
        to: Option<&str>,
        backwards: bool,
        limit: usize,
        filter: &crate::rooms::visibility::EventFilter,
    ) -> Result<Messages> {
        use crate::rooms::{timeline::parse_token, visibility::Window};
        self.rooms.known_room(room_id).await?;
        let limit = limit.clamp(1, 1000);
        let from_pos = match from {
            Some(t) => parse_token(t)?,
            None if backwards => self.stream_position(),
            None => i64::MIN,
        };
        let to_pos = to.map(parse_token).transpose()?;
        let window = if backwards {
            Window { from: to_pos.unwrap_or(i64::MIN), to: from_pos, backwards, limit }
        } else {
            Window { from: from_pos, to: to_pos.unwrap_or(i64::MAX), backwards, limit }
        };
        let (events, next) = self.rooms.visible_page(None, room_id, window, filter).await?;
        let chunk = events.iter().map(|pdu| pdu.to_client(true)).collect();
        let end = next.map(|n| n.to_string());
        Ok(Messages { chunk, start: from_pos.to_string(), end })
    }
}
