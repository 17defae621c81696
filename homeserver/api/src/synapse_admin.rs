//! Synapse's admin API (`/_synapse/admin`), the subset its tools use (synapse-admin, scripts):
//! the server's version, accounts (list, read, create or change, deactivate, reset password,
//! devices, rooms, whois) and rooms (list, read, members, state); and the portal's audit log
//! of what administrators did. Requests and answers keep Synapse's shapes; every endpoint is
//! for the server's administrators only (`M_FORBIDDEN` otherwise), and its parameters are
//! checked with the spec's errors.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    http::{request::Parts, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use diplomatie_service::{
    admin::{
        content::{DeletedMedia, MediaOrder, MediaPage, Quarantined, RoomMedia},
        deletions::{DeleteRoom, DeletionList, DeletionStarted, DeletionStatus, Shutdown},
        AuditPage, DeviceList, DeviceView, JoinedRooms, Members, Messages, RateLimitView, RoomBlock, RoomOrder,
        RoomPage, RoomState, RoomView, TokenList, TokenView, UserChange, UserFilter, UserOrder, UserPage, UserView,
    },
    rooms::visibility::EventFilter,
    Error, Services,
};
use ruma::{OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    admin::{admin, parse_body},
    error::ApiError,
    ruma_wrapper::ApiResult,
};

type S = State<Arc<Services>>;
type Params = Query<HashMap<String, String>>;
type Answer<T> = Result<Json<T>, ApiError>;

fn user_id(raw: &str) -> Result<OwnedUserId, Error> {
    OwnedUserId::try_from(raw).map_err(|_| Error::invalid_param(format!("Invalid user id: {raw}")))
}

fn room_id(raw: &str) -> Result<OwnedRoomId, Error> {
    OwnedRoomId::try_from(raw).map_err(|_| Error::invalid_param(format!("Invalid room id: {raw}")))
}

/// A non-negative integer parameter, `default` when absent.
fn count(params: &HashMap<String, String>, name: &str, default: i64) -> Result<i64, Error> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| Error::invalid_param(format!("Query parameter {name} must be a non-negative integer"))),
    }
}

/// A boolean parameter (`true` or `false`), `default` when absent.
fn flag(params: &HashMap<String, String>, name: &str, default: bool) -> Result<bool, Error> {
    match params.get(name).map(String::as_str) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(Error::invalid_param(format!("Query parameter {name} must be true or false"))),
    }
}

/// `dir`: `f` (forwards, the default) or `b`; answers whether backwards.
fn backwards(params: &HashMap<String, String>) -> Result<bool, Error> {
    match params.get("dir").map(String::as_str) {
        None | Some("f") => Ok(false),
        Some("b") => Ok(true),
        Some(_) => Err(Error::invalid_param("Query parameter dir must be f or b")),
    }
}

/// The limit of a page: at most 1000 entries.
fn limit(params: &HashMap<String, String>) -> Result<i64, Error> {
    Ok(count(params, "limit", 100)?.min(1000))
}

#[derive(Serialize)]
pub struct ServerVersion {
    server_version: &'static str,
    server: &'static str,
}

/// `GET /_synapse/admin/v1/server_version`.
pub async fn server_version() -> Answer<ServerVersion> {
    Ok(Json(ServerVersion { server_version: env!("CARGO_PKG_VERSION"), server: "Diplomatie" }))
}

/// An empty answer, `{}`.
#[derive(Serialize)]
pub struct Empty {}

/// `GET /_synapse/admin/v2/users`: `from`, `limit`, `user_id`, `name`, `guests`,
/// `deactivated`, `admins`, `order_by`, `dir`.
pub async fn list_users(State(s): S, Query(q): Params, parts: Parts) -> Answer<UserPage> {
    admin(&s, &parts).await?;
    let order = match q.get("order_by").map(String::as_str) {
        None | Some("name") => UserOrder::Name,
        Some("displayname") => UserOrder::DisplayName,
        Some("creation_ts") => UserOrder::CreationTs,
        Some("admin") => UserOrder::Admin,
        Some("deactivated") => UserOrder::Deactivated,
        Some("is_guest") => UserOrder::Guest,
        Some(other) => return Err(Error::invalid_param(format!("Unknown value for order_by: {other}")).into()),
    };
    let filter = UserFilter {
        user_id: q.get("user_id").filter(|v| !v.is_empty()).cloned(),
        name: q.get("name").filter(|v| !v.is_empty()).cloned(),
        guests: flag(&q, "guests", true)?,
        deactivated: flag(&q, "deactivated", false)?,
        admins: q.get("admins").map(|_| flag(&q, "admins", false)).transpose()?,
        order,
        descending: backwards(&q)?,
    };
    Ok(Json(s.admin.list_users(&filter, count(&q, "from", 0)?, limit(&q)?).await?))
}

/// `GET /_synapse/admin/v2/users/{userId}`.
pub async fn get_user(State(s): S, Path(user): Path<String>, parts: Parts) -> Answer<UserView> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.user(&user_id(&user)?).await?))
}

/// Fields it does not know are ignored, as Synapse does: the admin UI sends back the whole
/// account it read (its id, creation time, erasure and so on).
#[derive(Deserialize)]
struct PutUser {
    #[serde(default)]
    password: Option<String>,
    #[serde(default = "yes")]
    logout_devices: bool,
    #[serde(default, deserialize_with = "present")]
    displayname: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    avatar_url: Option<Option<String>>,
    #[serde(default)]
    admin: Option<bool>,
    #[serde(default)]
    deactivated: Option<bool>,
    #[serde(default)]
    threepids: Option<Vec<PutThreepid>>,
    // Accepted as Synapse does, and not kept: this server has no external identities, no
    // locked accounts nor user types beyond its own kinds.
    #[serde(default)]
    external_ids: Option<Vec<Value>>,
    #[serde(default)]
    locked: Option<bool>,
    #[serde(default, rename = "user_type")]
    _user_type: Option<Value>,
}

#[derive(Deserialize)]
struct PutThreepid {
    medium: String,
    address: String,
}

fn yes() -> bool {
    true
}

/// A field that may be given as `null` (cleared) or left out (unchanged, with
/// `#[serde(default)]`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::<T>::deserialize(d)?))
}

/// A password an administrator sets: 1 to 512 bytes, as Synapse allows.
fn check_password(password: &str) -> Result<(), Error> {
    if password.is_empty() || password.len() > 512 {
        return Err(Error::invalid_param("The password must be 1 to 512 characters"));
    }
    Ok(())
}

/// `PUT /_synapse/admin/v2/users/{userId}`: creates (201) or changes (200) an account.
pub async fn put_user(
    State(s): S,
    Path(user): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = admin(&s, &parts).await?;
    let user = user_id(&user)?;
    let req: PutUser = parse_body(&body)?;
    if req.external_ids.as_ref().is_some_and(|ids| !ids.is_empty()) {
        return Err(Error::invalid_param("External identities are not supported by this server").into());
    }
    if req.locked == Some(true) {
        return Err(Error::invalid_param("Locked accounts are not supported: deactivate the account").into());
    }
    if let Some(password) = &req.password {
        check_password(password)?;
    }
    let threepids = match req.threepids {
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for t in list {
                if !matches!(t.medium.as_str(), "email" | "msisdn") {
                    return Err(Error::invalid_param(format!("Unknown medium: {}", t.medium)).into());
                }
                let address = if t.medium == "email" { t.address.to_lowercase() } else { t.address };
                out.push((t.medium, address));
            }
            Some(out)
        }
        None => None,
    };
    let change = UserChange {
        password: req.password,
        logout_devices: req.logout_devices,
        displayname: req.displayname,
        avatar_url: req.avatar_url,
        admin: req.admin,
        deactivated: req.deactivated,
        threepids,
    };
    let (created, view) = s.admin.put_user(&caller.user_id, &user, change).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)).into_response())
}

#[derive(Deserialize, Default)]
struct Deactivate {
    #[serde(default)]
    erase: bool,
}

#[derive(Serialize)]
pub struct Deactivated {
    /// Addresses are unbound from the identity servers that had them (a failure there is
    /// logged, not answered, so this is always `success`).
    id_server_unbind_result: &'static str,
}

/// `POST /_synapse/admin/v1/deactivate/{userId}`.
pub async fn deactivate(
    State(s): S,
    Path(user): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Answer<Deactivated> {
    let caller = admin(&s, &parts).await?;
    let user = user_id(&user)?;
    let req: Deactivate = if body.is_empty() { Deactivate::default() } else { parse_body(&body)? };
    s.admin.deactivate(&caller.user_id, &user, req.erase).await?;
    Ok(Json(Deactivated { id_server_unbind_result: "success" }))
}

#[derive(Deserialize)]
struct ResetPassword {
    new_password: String,
    #[serde(default = "yes")]
    logout_devices: bool,
}

/// `POST /_synapse/admin/v1/reset_password/{userId}`.
pub async fn reset_password(
    State(s): S,
    Path(user): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Answer<Empty> {
    let caller = admin(&s, &parts).await?;
    let user = user_id(&user)?;
    let req: ResetPassword = parse_body(&body)?;
    check_password(&req.new_password)?;
    s.admin.reset_password(&caller.user_id, &user, &req.new_password, req.logout_devices).await?;
    Ok(Json(Empty {}))
}

/// `GET /_synapse/admin/v2/users/{userId}/devices`.
pub async fn devices(State(s): S, Path(user): Path<String>, parts: Parts) -> Answer<DeviceList> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.devices(&user_id(&user)?).await?))
}

/// `GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}`.
pub async fn device(State(s): S, Path((user, device)): Path<(String, String)>, parts: Parts) -> Answer<DeviceView> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.device(&user_id(&user)?, &device).await?))
}

/// `DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}`.
pub async fn delete_device(State(s): S, Path((user, device)): Path<(String, String)>, parts: Parts) -> Answer<Empty> {
    let caller = admin(&s, &parts).await?;
    s.admin.delete_devices(&caller.user_id, &user_id(&user)?, &[device]).await?;
    Ok(Json(Empty {}))
}

#[derive(Deserialize)]
struct DeleteDevices {
    devices: Vec<String>,
}

/// `POST /_synapse/admin/v2/users/{userId}/delete_devices`.
pub async fn delete_devices(
    State(s): S,
    Path(user): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Answer<Empty> {
    let caller = admin(&s, &parts).await?;
    let req: DeleteDevices = parse_body(&body)?;
    s.admin.delete_devices(&caller.user_id, &user_id(&user)?, &req.devices).await?;
    Ok(Json(Empty {}))
}

/// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`.
pub async fn joined_rooms(State(s): S, Path(user): Path<String>, parts: Parts) -> Answer<JoinedRooms> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.joined_rooms(&user_id(&user)?).await?))
}

/// `GET /_synapse/admin/v1/whois/{userId}`: where and when the user's devices were last seen,
/// as the client API's `/admin/whois` says it.
pub async fn whois(
    State(s): S,
    Path(user): Path<String>,
    parts: Parts,
) -> ApiResult<ruma::api::client::admin::get_user_info::v3::Response> {
    admin(&s, &parts).await?;
    let user = user_id(&user)?;
    s.admin.check_user(&user).await?;
    Ok(crate::client::account::whois_of(&s, &user).await?.into())
}

/// `GET /_synapse/admin/v1/rooms`: `from`, `limit`, `order_by`, `dir`, `search_term`.
pub async fn list_rooms(State(s): S, Query(q): Params, parts: Parts) -> Answer<RoomPage> {
    admin(&s, &parts).await?;
    let order = match q.get("order_by") {
        None => RoomOrder::Name,
        Some(name) => {
            RoomOrder::parse(name).ok_or_else(|| Error::invalid_param(format!("Unknown value for order_by: {name}")))?
        }
    };
    let from = count(&q, "from", 0)? as usize;
    let limit = limit(&q)? as usize;
    let term = q.get("search_term").map(String::as_str).filter(|t| !t.is_empty());
    Ok(Json(s.admin.list_rooms(term, order, backwards(&q)?, from, limit).await?))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}`.
pub async fn get_room(State(s): S, Path(room): Path<String>, parts: Parts) -> Answer<RoomView> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.room(&room_id(&room)?).await?))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/members`.
pub async fn room_members(State(s): S, Path(room): Path<String>, parts: Parts) -> Answer<Members> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.room_members(&room_id(&room)?).await?))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/state`.
pub async fn room_state(State(s): S, Path(room): Path<String>, parts: Parts) -> Answer<RoomState> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.room_state(&room_id(&room)?).await?))
}

/// `GET /_diplomatie/admin/v1/audit?from=&limit=`: what administrators did, newest first.
pub async fn audit(State(s): S, Query(q): Params, parts: Parts) -> Answer<AuditPage> {
    admin(&s, &parts).await?;
    let before = q.get("from").map(|_| count(&q, "from", 0)).transpose()?;
    Ok(Json(s.admin.audit_log(before, limit(&q)?.max(1)).await?))
}

/// `GET /_synapse/admin/v1/registration_tokens?valid=`.
pub async fn registration_tokens(State(s): S, Query(q): Params, parts: Parts) -> Answer<TokenList> {
    admin(&s, &parts).await?;
    let valid = q.get("valid").map(|_| flag(&q, "valid", true)).transpose()?;
    Ok(Json(s.admin.registration_tokens(valid).await?))
}

/// `GET /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn registration_token(State(s): S, Path(token): Path<String>, parts: Parts) -> Answer<TokenView> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.registration_token(&token).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    length: Option<i64>,
    #[serde(default)]
    uses_allowed: Option<i64>,
    #[serde(default)]
    expiry_time: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenChange {
    #[serde(default, deserialize_with = "present")]
    uses_allowed: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    expiry_time: Option<Option<i64>>,
}

/// Synapse's checks of a token's uses and expiry.
fn check_token_limits(uses_allowed: Option<i64>, expiry_time: Option<i64>) -> Result<(), Error> {
    if uses_allowed.is_some_and(|n| n < 0) {
        return Err(Error::invalid_param("uses_allowed must be a non-negative integer or null"));
    }
    if expiry_time.is_some_and(|t| t < diplomatie_service::now_ms()) {
        return Err(Error::invalid_param("expiry_time must not be in the past"));
    }
    Ok(())
}

/// `POST /_synapse/admin/v1/registration_tokens/new`.
pub async fn new_registration_token(State(s): S, parts: Parts, body: axum::body::Bytes) -> Answer<TokenView> {
    let caller = admin(&s, &parts).await?;
    let req: NewToken = parse_body(&body)?;
    if let Some(token) = &req.token {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-');
        if token.is_empty() || token.len() > 64 || !token.chars().all(allowed) {
            return Err(Error::invalid_param("token must be 1 to 64 characters of [A-Za-z0-9._~-]").into());
        }
    }
    let length = req.length.unwrap_or(16);
    if !(1..=64).contains(&length) {
        return Err(Error::invalid_param("length must be an integer from 1 to 64").into());
    }
    check_token_limits(req.uses_allowed, req.expiry_time)?;
    let made = s
        .admin
        .new_registration_token(
            &caller.user_id,
            req.token.as_deref(),
            length as usize,
            req.uses_allowed,
            req.expiry_time,
        )
        .await?;
    Ok(Json(made))
}

/// `PUT /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn update_registration_token(
    State(s): S,
    Path(token): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Answer<TokenView> {
    let caller = admin(&s, &parts).await?;
    let req: TokenChange = parse_body(&body)?;
    check_token_limits(req.uses_allowed.flatten(), req.expiry_time.flatten())?;
    Ok(Json(s.admin.update_registration_token(&caller.user_id, &token, req.uses_allowed, req.expiry_time).await?))
}

/// `DELETE /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn delete_registration_token(State(s): S, Path(token): Path<String>, parts: Parts) -> Answer<Empty> {
    let caller = admin(&s, &parts).await?;
    s.admin.delete_registration_token(&caller.user_id, &token).await?;
    Ok(Json(Empty {}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Block {
    block: bool,
}

/// `PUT /_synapse/admin/v1/rooms/{roomId}/block` `{"block": bool}`.
pub async fn block_room(
    State(s): S,
    Path(room): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Answer<RoomBlock> {
    let caller = admin(&s, &parts).await?;
    let room = room_id(&room)?;
    let req: Block = parse_body(&body)?;
    Ok(Json(s.admin.block_room(&caller.user_id, &room, req.block).await?))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/block`.
pub async fn room_block(State(s): S, Path(room): Path<String>, parts: Parts) -> Answer<RoomBlock> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.room_block(&room_id(&room)?).await?))
}

/// The body of a room's deletion (every field optional; an empty body asks for the defaults).
#[derive(Deserialize)]
struct DeleteRoomBody {
    #[serde(default)]
    block: bool,
    #[serde(default = "yes")]
    purge: bool,
    #[serde(default)]
    force_purge: bool,
    /// Synapse moves the members to a new room made by this user: not done here.
    new_room_user_id: Option<String>,
    #[serde(default, rename = "room_name")]
    _room_name: Option<String>,
    #[serde(default, rename = "message")]
    _message: Option<String>,
}

/// A body every field of which is optional: an empty one is `{}`.
fn optional_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        parse_body(b"{}")
    } else {
        parse_body(body)
    }
}

fn deletion_request(body: &[u8]) -> Result<DeleteRoom, Error> {
    let req: DeleteRoomBody = optional_body(body)?;
    if req.new_room_user_id.is_some() {
        return Err(Error::invalid_param("This server does not move the members to a new room (new_room_user_id)"));
    }
    Ok(DeleteRoom { block: req.block, purge: req.purge, force_purge: req.force_purge })
}

/// `DELETE /_synapse/admin/v2/rooms/{roomId}`: starts the room's deletion, answers its id.
pub async fn delete_room(
    State(s): S,
    Path(room): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Answer<DeletionStarted> {
    let caller = admin(&s, &parts).await?;
    let room = room_id(&room)?;
    let ask = deletion_request(&body)?;
    Ok(Json(s.admin.delete_room(&caller.user_id, &room, ask).await?))
}

/// `DELETE /_synapse/admin/v1/rooms/{roomId}`: deletes the room, answers once done.
pub async fn delete_room_now(
    State(s): S,
    Path(room): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Answer<Shutdown> {
    let caller = admin(&s, &parts).await?;
    let room = room_id(&room)?;
    let ask = deletion_request(&body)?;
    Ok(Json(s.admin.delete_room_now(&caller.user_id, &room, ask).await?))
}

/// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`.
pub async fn room_deletions(State(s): S, Path(room): Path<String>, parts: Parts) -> Answer<DeletionList> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.room_deletions(&room_id(&room)?).await?))
}

/// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`.
pub async fn deletion_status(State(s): S, Path(delete_id): Path<String>, parts: Parts) -> Answer<DeletionStatus> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.deletion_status(&delete_id).await?))
}

#[derive(Deserialize)]
struct RateLimitBody {
    #[serde(default)]
    messages_per_second: i64,
    #[serde(default)]
    burst_count: i64,
}

/// `GET /_synapse/admin/v1/users/{userId}/override_ratelimit`.
pub async fn ratelimit_override(State(s): S, Path(user): Path<String>, parts: Parts) -> Answer<RateLimitView> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.ratelimit_override(&user_id(&user)?).await?))
}

/// `POST /_synapse/admin/v1/users/{userId}/override_ratelimit`.
pub async fn set_ratelimit_override(
    State(s): S,
    Path(user): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Answer<RateLimitView> {
    let caller = admin(&s, &parts).await?;
    let user = user_id(&user)?;
    let req: RateLimitBody = optional_body(&body)?;
    Ok(Json(s.admin.set_ratelimit_override(&caller.user_id, &user, req.messages_per_second, req.burst_count).await?))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit`.
pub async fn delete_ratelimit_override(State(s): S, Path(user): Path<String>, parts: Parts) -> Answer<Empty> {
    let caller = admin(&s, &parts).await?;
    s.admin.delete_ratelimit_override(&caller.user_id, &user_id(&user)?).await?;
    Ok(Json(Empty {}))
}

/// `GET /_synapse/admin/v1/users/{userId}/media`.
pub async fn user_media(State(s): S, Path(user): Path<String>, Query(q): Params, parts: Parts) -> Answer<MediaPage> {
    admin(&s, &parts).await?;
    let order = match q.get("order_by").map(String::as_str) {
        None | Some("created_ts") | Some("last_access_ts") => MediaOrder::Created,
        Some("media_id") => MediaOrder::MediaId,
        Some("upload_name") => MediaOrder::Name,
        Some("media_length") => MediaOrder::Size,
        Some("media_type") => MediaOrder::Type,
        Some("quarantined_by") => MediaOrder::Quarantined,
        Some("safe_from_quarantine") => MediaOrder::Protected,
        Some(other) => return Err(Error::invalid_param(format!("Unknown value for order_by: {other}")).into()),
    };
    let page = s.admin.user_media(&user_id(&user)?, order, backwards(&q)?, count(&q, "from", 0)?, limit(&q)?).await?;
    Ok(Json(page))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/media`.
pub async fn delete_user_media(State(s): S, Path(user): Path<String>, parts: Parts) -> Answer<DeletedMedia> {
    let caller = admin(&s, &parts).await?;
    Ok(Json(s.admin.delete_user_media(&caller.user_id, &user_id(&user)?).await?))
}

/// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`.
pub async fn delete_media(
    State(s): S,
    Path((server, media_id)): Path<(String, String)>,
    parts: Parts,
) -> Answer<DeletedMedia> {
    let caller = admin(&s, &parts).await?;
    Ok(Json(s.admin.delete_media(&caller.user_id, &server, &media_id).await?))
}

/// `POST /_synapse/admin/v1/media/{serverName}/delete?before_ts=&size_gt=`.
pub async fn delete_media_before(
    State(s): S,
    Path(server): Path<String>,
    Query(q): Params,
    parts: Parts,
) -> Answer<DeletedMedia> {
    let caller = admin(&s, &parts).await?;
    if !q.contains_key("before_ts") {
        return Err(Error::missing_param("Missing integer query parameter before_ts").into());
    }
    let before = count(&q, "before_ts", 0)?;
    let size_gt = count(&q, "size_gt", 0)?;
    Ok(Json(s.admin.delete_media_before(&caller.user_id, &server, before, size_gt).await?))
}

/// `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}`.
pub async fn quarantine_media(
    State(s): S,
    Path((server, media_id)): Path<(String, String)>,
    parts: Parts,
) -> Answer<Empty> {
    let caller = admin(&s, &parts).await?;
    s.admin.quarantine_media(&caller.user_id, &server, &media_id, true).await?;
    Ok(Json(Empty {}))
}

/// `POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}`.
pub async fn unquarantine_media(
    State(s): S,
    Path((server, media_id)): Path<(String, String)>,
    parts: Parts,
) -> Answer<Empty> {
    let caller = admin(&s, &parts).await?;
    s.admin.quarantine_media(&caller.user_id, &server, &media_id, false).await?;
    Ok(Json(Empty {}))
}

/// `POST /_synapse/admin/v1/media/protect/{mediaId}`.
pub async fn protect_media(State(s): S, Path(media_id): Path<String>, parts: Parts) -> Answer<Empty> {
    let caller = admin(&s, &parts).await?;
    s.admin.protect_media(&caller.user_id, &media_id, true).await?;
    Ok(Json(Empty {}))
}

/// `POST /_synapse/admin/v1/media/unprotect/{mediaId}`.
pub async fn unprotect_media(State(s): S, Path(media_id): Path<String>, parts: Parts) -> Answer<Empty> {
    let caller = admin(&s, &parts).await?;
    s.admin.protect_media(&caller.user_id, &media_id, false).await?;
    Ok(Json(Empty {}))
}

/// `GET /_synapse/admin/v1/room/{roomId}/media`.
pub async fn room_media(State(s): S, Path(room): Path<String>, parts: Parts) -> Answer<RoomMedia> {
    admin(&s, &parts).await?;
    Ok(Json(s.admin.room_media(&room_id(&room)?).await?))
}

/// `POST /_synapse/admin/v1/room/{roomId}/media/quarantine`.
pub async fn quarantine_room_media(State(s): S, Path(room): Path<String>, parts: Parts) -> Answer<Quarantined> {
    let caller = admin(&s, &parts).await?;
    Ok(Json(s.admin.quarantine_room_media(&caller.user_id, &room_id(&room)?).await?))
}

/// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`.
pub async fn quarantine_user_media(State(s): S, Path(user): Path<String>, parts: Parts) -> Answer<Quarantined> {
    let caller = admin(&s, &parts).await?;
    Ok(Json(s.admin.quarantine_user_media(&caller.user_id, &user_id(&user)?).await?))
}

/// `POST /_synapse/admin/v1/users/{userId}/shadow_ban`.
pub async fn shadow_ban(State(s): S, Path(user): Path<String>, parts: Parts) -> Answer<Empty> {
    let caller = admin(&s, &parts).await?;
    s.admin.shadow_ban(&caller.user_id, &user_id(&user)?, true).await?;
    Ok(Json(Empty {}))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/shadow_ban`.
pub async fn shadow_unban(State(s): S, Path(user): Path<String>, parts: Parts) -> Answer<Empty> {
    let caller = admin(&s, &parts).await?;
    s.admin.shadow_ban(&caller.user_id, &user_id(&user)?, false).await?;
    Ok(Json(Empty {}))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/messages?from=&to=&dir=&limit=&filter=`.
pub async fn room_messages(State(s): S, Path(room): Path<String>, Query(q): Params, parts: Parts) -> Answer<Messages> {
    admin(&s, &parts).await?;
    let room = room_id(&room)?;
    let filter: EventFilter = match q.get("filter") {
        None => EventFilter::default(),
        Some(raw) => serde_json::from_str(raw).map_err(|e| Error::invalid_param(format!("Invalid filter: {e}")))?,
    };
    let backwards = backwards(&q)?;
    let limit = count(&q, "limit", 10)?.min(1000) as usize;
    let from = q.get("from").map(String::as_str);
    let to = q.get("to").map(String::as_str);
    Ok(Json(s.admin.room_messages(&room, from, to, backwards, limit, &filter).await?))
}
