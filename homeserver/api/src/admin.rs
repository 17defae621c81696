//! Administration: Synapse-compatible endpoints, so that existing tools
//! (`register_new_matrix_user`) work, and the portal's (`/_diplomatie/admin/v1`): clearances of
//! users and devices, kinds of accounts, primary groups.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::request::Parts,
    Json,
};
use diplomatie_policies::{AccountKind, Level};
use diplomatie_service::{
    accounts::Caller,
    organisation::{CommunitySpec, Created, GroupSpec, ImportReport, OrganisationFile},
    portal::{ClearanceReport, DeviceClearanceReport},
    Error, Services,
};
use ruma::{api::error::ErrorKind, OwnedDeviceId, OwnedRoomId, OwnedServerName, OwnedUserId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::ApiError;

type S = State<Arc<Services>>;

/// `GET /_synapse/admin/v1/register`: a nonce for the next registration.
pub async fn register_nonce(State(s): S) -> Result<Json<Nonce>, ApiError> {
    if s.config.registration.shared_secret.is_empty() {
        return Err(Error::forbidden("Shared secret registration is not enabled").into());
    }
    Ok(Json(Nonce { nonce: s.admin_nonces.issue() }))
}

#[derive(Serialize)]
pub struct Nonce {
    nonce: String,
}

/// What a shared-secret registration answers: the new account's first session.
#[derive(Serialize)]
pub struct Registered {
    access_token: String,
    user_id: OwnedUserId,
    home_server: OwnedServerName,
    device_id: OwnedDeviceId,
}

#[derive(Deserialize)]
pub struct SharedSecretRegistration {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    displayname: Option<String>,
    #[serde(default)]
    admin: bool,
    mac: String,
}

/// `POST /_synapse/admin/v1/register`: creates a user when the HMAC matches the shared secret.
pub async fn register(State(s): S, body: axum::body::Bytes) -> Result<Json<Registered>, ApiError> {
    let req: SharedSecretRegistration = parse_body(&body)?;
    s.accounts.check_shared_secret_mac(&req.nonce, &req.username, &req.password, req.admin, &req.mac)?;
    if !s.admin_nonces.take(&req.nonce) {
        return Err(Error::new(ErrorKind::Unknown, "Unrecognised nonce").into());
    }
    let user_id = s
        .accounts
        .create_account(Some(&req.username.to_lowercase()), Some(&req.password), req.admin, req.displayname.as_deref())
        .await?;
    let session = s.accounts.open_session(&user_id, None, None, false).await?;
    Ok(Json(Registered {
        access_token: session.access_token,
        user_id: session.user_id,
        home_server: s.server_name().to_owned(),
        device_id: session.device_id,
    }))
}

/// A JSON body, with the spec's error codes for what is wrong with it.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Error::new(ErrorKind::NotJson, e.to_string()))?;
    if let Some(at) = crate::ruma_wrapper::nul_in(&value) {
        return Err(Error::bad_json(format!("A NUL character is not allowed (at {at})")));
    }
    serde_json::from_value(value).map_err(|e| {
        let kind =
            if e.to_string().starts_with("missing field") { ErrorKind::MissingParam } else { ErrorKind::BadJson };
        Error::new(kind, e.to_string())
    })
}

/// The authenticated caller of a portal administration request.
pub(crate) async fn caller(s: &Services, parts: &Parts) -> Result<Caller, Error> {
    let token = crate::ruma_wrapper::access_token(parts)
        .ok_or_else(|| Error::new(ErrorKind::MissingToken, "Missing access token"))?;
    s.accounts.authenticate(&token).await
}

pub(crate) async fn admin(s: &Services, parts: &Parts) -> Result<Caller, Error> {
    let caller = caller(s, parts).await?;
    if !caller.is_admin {
        return Err(Error::forbidden("You are not a server administrator"));
    }
    Ok(caller)
}

/// `GET /_diplomatie/admin/v1/users/{user_id}/clearance`: clearance, kind, primary group, who
/// set the clearance and when, and the history of changes.
pub async fn get_clearance(
    State(s): S,
    Path(user): Path<String>,
    parts: Parts,
) -> Result<Json<ClearanceReport>, ApiError> {
    admin(&s, &parts).await?;
    Ok(Json(s.portal.clearance_report(&s.accounts.parse_local_user(&user)?).await?))
}

#[derive(Deserialize)]
struct ClearanceBody {
    clearance: String,
}

fn level(raw: &str) -> Result<Level, Error> {
    Level::parse(raw).ok_or_else(|| Error::new(ErrorKind::InvalidParam, "clearance must be \"NP\" or \"DR\""))
}

/// `PUT /_diplomatie/admin/v1/users/{user_id}/clearance` `{"clearance": "DR"}`: by an
/// administrator, or a manager of the user's primary functional group when delegated.
pub async fn set_clearance(
    State(s): S,
    Path(user): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<ClearanceReport>, ApiError> {
    let caller = caller(&s, &parts).await?;
    let req: ClearanceBody = parse_body(&body)?;
    let target = s.accounts.parse_local_user(&user)?;
    s.organisation.set_clearance(&caller.user_id, caller.is_admin, &target, level(&req.clearance)?).await?;
    s.mls.enforce_clearances(&target, &[]).await?;
    Ok(Json(s.portal.clearance_report(&target).await?))
}

/// `GET /_diplomatie/admin/v1/users/{user_id}/devices/{device_id}/clearance`.
pub async fn get_device_clearance(
    State(s): S,
    Path((user, device)): Path<(String, String)>,
    parts: Parts,
) -> Result<Json<DeviceClearanceReport>, ApiError> {
    admin(&s, &parts).await?;
    Ok(Json(
        s.portal.device_clearance_report(&s.accounts.parse_local_user(&user)?, &OwnedDeviceId::from(device)).await?,
    ))
}

#[derive(Deserialize)]
struct DeviceBody {
    dr: bool,
}

/// `PUT /_diplomatie/admin/v1/users/{user_id}/devices/{device_id}/clearance` `{"dr": true}`:
/// approves (or withdraws) a terminal for DR content.
pub async fn set_device_clearance(
    State(s): S,
    Path((user, device)): Path<(String, String)>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<DeviceClearanceReport>, ApiError> {
    let caller = caller(&s, &parts).await?;
    let req: DeviceBody = parse_body(&body)?;
    let (target, device) = (s.accounts.parse_local_user(&user)?, OwnedDeviceId::from(device));
    s.portal.set_device_clearance(&caller.user_id, caller.is_admin, &target, &device, req.dr).await?;
    s.mls.enforce_clearances(&target, &[]).await?;
    Ok(Json(s.portal.device_clearance_report(&target, &device).await?))
}

#[derive(Deserialize)]
struct KindBody {
    kind: String,
}

/// `PUT /_diplomatie/admin/v1/users/{user_id}/kind` `{"kind": "external"}` (or `"agent"`).
pub async fn set_kind(
    State(s): S,
    Path(user): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<ClearanceReport>, ApiError> {
    admin(&s, &parts).await?;
    let req: KindBody = parse_body(&body)?;
    let kind = AccountKind::parse(&req.kind)
        .ok_or_else(|| Error::new(ErrorKind::InvalidParam, "kind must be \"agent\" or \"external\""))?;
    let target = s.accounts.parse_local_user(&user)?;
    s.organisation.set_account_kind(&target, kind).await?;
    Ok(Json(s.portal.clearance_report(&target).await?))
}

#[derive(Deserialize)]
struct GroupBody {
    room_id: Option<OwnedRoomId>,
}

/// `PUT /_diplomatie/admin/v1/users/{user_id}/primary_group` `{"room_id": "!space"}`.
pub async fn set_primary_group(
    State(s): S,
    Path(user): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<ClearanceReport>, ApiError> {
    admin(&s, &parts).await?;
    let req: GroupBody = parse_body(&body)?;
    let target = s.accounts.parse_local_user(&user)?;
    s.portal.set_primary_group(&target, req.room_id.as_deref()).await?;
    Ok(Json(s.portal.clearance_report(&target).await?))
}

/// `POST /_diplomatie/admin/v1/groups`: creates a functional group (a space with its general
/// and correspondence rooms) unless it exists.
pub async fn create_group(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Json<Created>, ApiError> {
    admin(&s, &parts).await?;
    let spec: GroupSpec = parse_body(&body)?;
    Ok(Json(s.organisation.create_group(&spec).await?))
}

/// `POST /_diplomatie/client/v1/communities`: any agent creates a community of interest, with
/// a named manager and project; its `members` are added.
pub async fn create_community(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Json<Created>, ApiError> {
    let caller = caller(&s, &parts).await?;
    let spec: CommunitySpec = parse_body(&body)?;
    let created = s.organisation.create_community(Some(&caller.user_id), &spec).await?;
    for member in &spec.members {
        let user = s.accounts.parse_local_user(member)?;
        s.organisation.add_to_org_space(&created.space_id, &user).await?;
    }
    Ok(Json(created))
}

/// `POST /_diplomatie/admin/v1/import`: imports an organisation, YAML (or CSV of users when
/// the content type is `text/csv`). Idempotent; answers what changed.
pub async fn import(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Json<ImportReport>, ApiError> {
    admin(&s, &parts).await?;
    let csv = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv"));
    let text = std::str::from_utf8(&body).map_err(|_| Error::new(ErrorKind::NotJson, "The file is not UTF-8"))?;
    let org = OrganisationFile::parse(text, csv)?;
    let report = s.organisation.import_organisation(&org).await?;
    Ok(Json(report))
}

#[derive(Deserialize)]
struct ManagersBody {
    managers: Vec<String>,
}

/// `PUT /_diplomatie/admin/v1/groups/{slug}/managers` `{"managers": [...]}`.
pub async fn set_group_managers(
    State(s): S,
    Path(slug): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Managers>, ApiError> {
    set_managers(&s, false, &slug, &parts, &body).await
}

/// `PUT /_diplomatie/admin/v1/communities/{slug}/managers` `{"managers": [...]}`.
pub async fn set_community_managers(
    State(s): S,
    Path(slug): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Managers>, ApiError> {
    set_managers(&s, true, &slug, &parts, &body).await
}

async fn set_managers(
    s: &Services,
    community: bool,
    slug: &str,
    parts: &Parts,
    body: &[u8],
) -> Result<Json<Managers>, ApiError> {
    admin(s, parts).await?;
    let req: ManagersBody = parse_body(body)?;
    Ok(Json(Managers { managers: s.organisation.set_managers(community, slug, &req.managers).await? }))
}

/// The managers of a group or community, once set.
#[derive(Serialize)]
pub struct Managers {
    managers: Vec<OwnedUserId>,
}
