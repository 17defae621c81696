//! Account endpoints: registration, login and logout, tokens, password, deactivation, devices,
//! profile (client-server spec, "Client Authentication", "Device Management", "Profiles").

use std::{sync::Arc, time::Duration};

use axum::extract::State;
use diplomatie_service::{email::Purpose, Error, Services};
use ruma::api::{
    client::{
        account::{
            add_3pid, bind_3pid, change_password, check_registration_token_validity, deactivate, delete_3pid,
            get_3pids, get_username_availability, register, request_3pid_management_token_via_email,
            request_password_change_token_via_email, request_registration_token_via_email, unbind_3pid, whoami,
        },
        admin::get_user_info,
        device::{self, delete_device, delete_devices, get_device, get_devices, update_device},
        profile::{get_profile, set_profile_field},
        session::{get_login_token, get_login_types, login, logout, logout_all, refresh_token},
        uiaa::{AuthData, AuthType, UserIdentifier},
    },
    error::ErrorKind,
};
use serde_json::Value;

use crate::ruma_wrapper::{ApiResult, Ruma};

type S = State<Arc<Services>>;

/// `GET /register/available`
pub async fn username_available(
    State(s): S,
    req: Ruma<get_username_availability::v3::Request>,
) -> ApiResult<get_username_availability::v3::Response> {
    if !s.config.registration.enabled {
        return Err(Error::forbidden("Registration is disabled").into());
    }
    s.accounts.check_username_available(&req.body.username).await?;
    Ok(get_username_availability::v3::Response::new(true).into())
}

/// `GET /register/m.login.registration_token/validity`
pub async fn registration_token_validity(
    State(s): S,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> ApiResult<check_registration_token_validity::v1::Response> {
    if !s.config.registration.enabled || !s.config.registration.require_token {
        return Err(Error::forbidden("Registration tokens are not in use").into());
    }
    Ok(check_registration_token_validity::v1::Response::new(
        s.accounts.registration_token_valid(&req.body.token).await?,
    )
    .into())
}

/// `POST /register`: user-interactive, with `m.login.dummy` or `m.login.registration_token`.
pub async fn register(
    State(s): S,
    req: Ruma<register::v3::Request>,
) -> Result<axum::Json<serde_json::Value>, crate::error::ApiError> {
    let (operation, json) = (req.operation, req.json);
    let mut body = req.body;
    if body.login_type.as_ref() == Some(&register::LoginType::ApplicationService) || req.caller.is_some() {
        return Ok(register_for_appservice(&s, req.caller.as_ref(), &body).await?);
    }
    if body.kind == register::RegistrationKind::Guest {
        if !s.config.registration.allow_guests {
            return Err(Error::forbidden("Guest access is disabled").into());
        }
        let user_id = s.accounts.create_guest().await?;
        return Ok(open_registered_session(&s, user_id, &body).await?);
    }
    if !s.config.registration.enabled {
        return Err(Error::forbidden("Registration is disabled").into());
    }
    // A guest becoming a full account: its token proves who it is.
    let guest_token = json.as_ref().and_then(|j| j.get("guest_access_token")).and_then(|t| t.as_str());
    if let Some(token) = guest_token {
        s.uia.user_interactive_auth(&[vec![AuthType::Dummy]], body.auth.as_ref(), None, &operation).await?;
        let password = body.password.as_deref().filter(|p| !p.is_empty());
        let password = password.ok_or_else(|| Error::missing_param("A password is required"))?;
        let user_id = s.accounts.upgrade_guest(token, body.username.as_deref(), password).await?;
        return Ok(open_registered_session(&s, user_id, &body).await?);
    }
    // A later step of a session: it may send its `auth` alone, the first request's parameters
    // stand; asked again once done, the session answers with the account it created.
    let session = body.auth.as_ref().and_then(|a| a.session()).map(str::to_owned);
    if let Some(session) = &session {
        let (params, registered) = s.uia.kept(session);
        if let Some(user_id) = registered {
            return Ok(open_registered_session(&s, user_id, &body).await?);
        }
        if let Some(params) = params {
            fill_registration(&mut body, &params);
        }
    }
    // Check the username before asking for authentication, as Synapse does.
    if let Some(name) = &body.username {
        s.accounts.check_username_available(&name.to_lowercase()).await?;
    }
    let mut flows = if s.config.registration.require_token {
        vec![vec![AuthType::RegistrationToken]]
    } else {
        vec![vec![AuthType::Dummy]]
    };
    // With an address this server validated by mail, which the account then holds.
    if s.email.enabled() {
        let mut with_address = flows[0].clone();
        with_address.retain(|t| *t != AuthType::Dummy);
        with_address.push(AuthType::EmailIdentity);
        flows.push(with_address);
    }
    let step = s.uia.user_interactive_auth(&flows, body.auth.as_ref(), None, &operation).await;
    if let (Err(Error::Uiaa(info)), Some(json)) = (&step, &json) {
        if let (Some(id), Some(params)) = (&info.session, json.as_object()) {
            let mut params = params.clone();
            params.remove("auth");
            s.uia.keep_params(id, params.into());
        }
    }
    step?;
    if body.password.as_deref().is_none_or(str::is_empty) {
        return Err(Error::missing_param("A password is required").into());
    }
    // The address the account will hold is checked before the account is made.
    let address = match &body.auth {
        Some(AuthData::EmailIdentity(e)) => {
            let creds = &e.thirdparty_id_creds;
            Some(s.email.claimable(None, creds.sid.as_str(), creds.client_secret.as_str()).await?)
        }
        _ => None,
    };
    let user_id = s
        .accounts
        .create_account(
            body.username.as_deref().map(str::to_lowercase).as_deref(),
            body.password.as_deref(),
            false,
            None,
        )
        .await?;
    if let Some(AuthData::RegistrationToken(t)) = &body.auth {
        s.accounts.consume_registration_token(&t.token).await?;
    }
    if let Some(session) = address {
        s.email.add_address(&user_id, session).await?;
    }
    if let Some(session) = &session {
        s.uia.registered(session, &operation, &user_id);
    }
    Ok(open_registered_session(&s, user_id, &body).await?)
}

/// The application service whose token the request carries (registration and login take no
/// other token), or `M_MISSING_TOKEN`.
fn calling_service<'a>(
    s: &'a Services,
    caller: Option<&diplomatie_service::accounts::Caller>,
) -> Result<&'a std::sync::Arc<diplomatie_service::registrations::Appservice>, Error> {
    caller
        .and_then(|c| c.appservice.as_deref())
        .and_then(|id| s.registrations.by_id(id))
        .ok_or_else(|| Error::new(ErrorKind::MissingToken, "An application service's token is required"))
}

/// `POST /register` by an application service (`type: m.login.application_service`, its
/// token): a user of its namespaces, without password nor user-interactive authentication.
async fn register_for_appservice(
    s: &Services,
    caller: Option<&diplomatie_service::accounts::Caller>,
    body: &register::v3::Request,
) -> Result<axum::Json<serde_json::Value>, Error> {
    let service = calling_service(s, caller)?;
    if body.login_type.as_ref() != Some(&register::LoginType::ApplicationService) {
        return Err(Error::new(
            ErrorKind::AppserviceLoginUnsupported,
            "An application service registers with `type: m.login.application_service`",
        ));
    }
    let localpart = body
        .username
        .as_deref()
        .map(|name| name.strip_prefix('@').and_then(|n| n.split(':').next()).unwrap_or(name).to_lowercase())
        .ok_or_else(|| Error::missing_param("An application service names the user it registers"))?;
    let user_id = s.accounts.free_user_id(&localpart).await?;
    if !service.owns_user(user_id.as_str()) {
        return Err(Error::new(
            ErrorKind::Exclusive,
            format!("{user_id} is outside the application service's namespaces"),
        ));
    }
    let user_id = s.accounts.create_account(Some(&localpart), None, false, None).await?;
    open_registered_session(s, user_id, body).await
}

/// Fills what a registration request leaves out from its session's first request.
fn fill_registration(body: &mut register::v3::Request, params: &serde_json::Value) {
    let text = |key: &str| params.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let flag = |key: &str| params.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
    if body.username.is_none() {
        body.username = text("username");
    }
    if body.password.is_none() {
        body.password = text("password");
    }
    if body.device_id.is_none() {
        body.device_id = text("device_id").map(Into::into);
    }
    if body.initial_device_display_name.is_none() {
        body.initial_device_display_name = text("initial_device_display_name");
    }
    body.inhibit_login |= flag("inhibit_login");
    body.refresh_token |= flag("refresh_token");
}

/// The answer to a registration: the user id, and a new session unless `inhibit_login`
/// (without a session, no `device_id` at all, where ruma's response would say `null`).
async fn open_registered_session(
    s: &Services,
    user_id: ruma::OwnedUserId,
    body: &register::v3::Request,
) -> Result<axum::Json<serde_json::Value>, Error> {
    let mut json = serde_json::json!({ "user_id": user_id });
    if !body.inhibit_login {
        let session = s
            .sessions
            .open_session(
                &user_id,
                body.device_id.as_ref().map(|d| d.as_str()),
                body.initial_device_display_name.as_deref(),
                body.refresh_token,
            )
            .await?;
        json["access_token"] = session.access_token.into();
        json["device_id"] = session.device_id.as_str().into();
        if let Some(refresh) = session.refresh_token {
            json["refresh_token"] = refresh.into();
        }
        if let Some(ms) = session.expires_in_ms {
            json["expires_in_ms"] = ms.into();
        }
    }
    Ok(axum::Json(json))
}

/// `GET /login`
pub async fn login_types(
    State(s): S,
    _req: Ruma<get_login_types::v3::Request>,
) -> ApiResult<get_login_types::v3::Response> {
    use get_login_types::v3::{IdentityProvider, LoginType, SsoLoginType, TokenLoginType};
    let password = LoginType::Password(Default::default());
    let mut token = TokenLoginType::new();
    token.get_login_token = true;
    let appservice = LoginType::ApplicationService(Default::default());
    let mut flows = vec![password, LoginType::Token(token), appservice];
    let mut providers = s.sso.providers();
    if s.cas.enabled() {
        providers.push((diplomatie_service::cas::PROVIDER_ID.to_owned(), s.cas.name().to_owned()));
        // Synapse's login type before `m.login.sso`, which older clients and Sytest look for.
        flows.push(LoginType::new("m.login.cas", Default::default()).map_err(diplomatie_service::internal!())?);
    }
    if !providers.is_empty() {
        let mut sso = SsoLoginType::new();
        sso.identity_providers = providers.into_iter().map(|(id, name)| IdentityProvider::new(id, name)).collect();
        flows.push(LoginType::Sso(sso));
    }
    Ok(get_login_types::v3::Response::new(flows).into())
}

/// `POST /login/get_token` (user-interactive: the password again): a single-use token for
/// another device to log in with (`m.login.token`), as "sign in with another device" does.
pub async fn get_login_token(
    State(s): S,
    req: Ruma<get_login_token::v1::Request>,
) -> ApiResult<get_login_token::v1::Response> {
    let caller = req.caller();
    s.uia.reauthenticate(&caller.user_id, req.body.auth.as_ref(), &req.operation).await?;
    let token = s.accounts.issue_login_token(&caller.user_id)?;
    Ok(get_login_token::v1::Response::new(diplomatie_service::accounts::LOGIN_TOKEN_LIFETIME, token).into())
}

/// `POST /login` with `m.login.password`.
pub async fn login(State(s): S, req: Ruma<login::v3::Request>) -> ApiResult<login::v3::Response> {
    let (body, caller) = (req.body, req.caller);
    let user_id = match &body.login_info {
        // An application service opens a session for one of its users (with its token).
        login::v3::LoginInfo::ApplicationService(info) => {
            #[allow(deprecated)]
            let user = match (&info.identifier, &info.user) {
                (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
                (None, Some(user)) => user.clone(),
                _ => return Err(Error::missing_param("identifier is required").into()),
            };
            let service = calling_service(&s, caller.as_ref())?;
            let user_id = s.accounts.parse_local_user(&user).map_err(|_| Error::invalid_param("Invalid user id"))?;
            if !service.owns_user(user_id.as_str()) {
                return Err(Error::new(
                    ErrorKind::Exclusive,
                    "The user is outside the application service's namespaces",
                )
                .into());
            }
            if !s.accounts.is_active(&user_id).await? {
                return Err(Error::forbidden("The application service has not registered this user").into());
            }
            user_id
        }
        login::v3::LoginInfo::Password(info) => {
            // An address of the account (`m.id.thirdparty`, or the older `medium` and
            // `address`): the account holding it, if any; the same refusal as a wrong password
            // otherwise.
            #[allow(deprecated)]
            let address = match (&info.identifier, &info.medium, &info.address) {
                (Some(UserIdentifier::Email(e)), _, _) => Some(("email", e.address.as_str())),
                (None, Some(medium), Some(address)) => Some((medium.as_str(), address.as_str())),
                _ => None,
            };
            #[allow(deprecated)]
            let user = match (&info.identifier, &info.user, address) {
                (_, _, Some((medium, address))) => match s.email.account_of(medium, address).await? {
                    Some(user) => user.to_string(),
                    None => return Err(Error::forbidden("Invalid username or password").into()),
                },
                (Some(UserIdentifier::Matrix(id)), _, _) => id.user.clone(),
                (None, Some(user), _) => user.clone(),
                (Some(_), _, _) => {
                    return Err(Error::new(
                        ErrorKind::Unknown,
                        "Only user identifiers and e-mail addresses are supported",
                    )
                    .into())
                }
                (None, None, None) => return Err(Error::missing_param("identifier is required").into()),
            };
            let user_id =
                s.accounts.parse_local_user(&user).map_err(|_| Error::forbidden("Invalid username or password"))?;
            s.accounts.verify_password(&user_id, &info.password).await?;
            user_id
        }
        login::v3::LoginInfo::Token(info) => s.accounts.take_login_token(&info.token).await?,
        _ => return Err(Error::new(ErrorKind::Unknown, "Only m.login.password and m.login.token are supported").into()),
    };
    let session = s
        .sessions
        .open_session(
            &user_id,
            body.device_id.as_ref().map(|d| d.as_str()),
            body.initial_device_display_name.as_deref(),
            body.refresh_token,
        )
        .await?;
    let mut resp = login::v3::Response::new(session.user_id, session.access_token, session.device_id);
    resp.refresh_token = session.refresh_token;
    resp.expires_in = session.expires_in_ms.map(Duration::from_millis);
    // Deprecated by the spec, still given by Synapse and read by tools (synapse-admin builds
    // user ids with it).
    #[allow(deprecated)]
    {
        resp.home_server = Some(s.server_name().to_owned());
    }
    Ok(resp.into())
}

/// `GET /admin/whois/{userId}`: where and when each of a user's devices was last seen, for
/// administrators and the user themself.
pub async fn whois(State(s): S, req: Ruma<get_user_info::v3::Request>) -> ApiResult<get_user_info::v3::Response> {
    let caller = req.caller();
    let user = &req.body.user_id;
    if &caller.user_id != user && !caller.is_admin {
        return Err(Error::forbidden("You are not a server administrator").into());
    }
    if user.server_name() != s.server_name() {
        return Err(Error::invalid_param("Not a user of this server").into());
    }
    Ok(whois_of(&s, user).await?.into())
}

/// Where and when each of `user`'s devices was last seen, and with which client (also served
/// by Synapse's `/_synapse/admin/v1/whois`).
pub(crate) async fn whois_of(s: &Services, user: &ruma::UserId) -> Result<get_user_info::v3::Response, Error> {
    use get_user_info::v3::{ConnectionInfo, DeviceInfo, SessionInfo};
    let mut response = get_user_info::v3::Response::new();
    response.user_id = Some(user.to_owned());
    for device in s.accounts.devices(user).await? {
        let mut connection = ConnectionInfo::new();
        connection.ip = device.last_seen_ip;
        connection.last_seen = device
            .last_seen_ts
            .and_then(|t| ruma::UInt::try_from(t.max(0) as u64).ok())
            .map(ruma::MilliSecondsSinceUnixEpoch);
        connection.user_agent = device.last_seen_user_agent;
        let mut session = SessionInfo::new();
        session.connections = vec![connection];
        let mut info = DeviceInfo::new();
        info.sessions = vec![session];
        response.devices.insert(device.device_id, info);
    }
    Ok(response)
}

/// What `GET /account/3pid` answers: ruma's list, stated even when empty (ruma leaves it out;
/// Synapse states it, and clients iterate it without a check).
#[derive(serde::Serialize)]
pub struct Threepids {
    threepids: Vec<ruma::thirdparty::ThirdPartyIdentifier>,
}

/// `GET /account/3pid`: the addresses bound to the account through this server.
pub async fn threepids(
    State(s): S,
    req: Ruma<get_3pids::v3::Request>,
) -> Result<axum::Json<Threepids>, crate::error::ApiError> {
    let ms = |t: i64| ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::try_from(t.max(0) as u64).unwrap_or_default());
    let threepids = s
        .identity
        .addresses(&req.caller().user_id)
        .await?
        .into_iter()
        .map(|t| {
            ruma::thirdparty::ThirdPartyIdentifierInit {
                address: t.address,
                medium: t.medium.as_str().into(),
                validated_at: ms(t.validated_at),
                added_at: ms(t.added_at),
            }
            .into()
        })
        .collect();
    Ok(axum::Json(Threepids { threepids }))
}

/// `POST /account/3pid/bind`: binds an address an identity server validated.
pub async fn bind_threepid(State(s): S, req: Ruma<bind_3pid::v3::Request>) -> ApiResult<bind_3pid::v3::Response> {
    let b = &req.body;
    let info = &b.identity_server_info;
    s.identity
        .bind_address(
            &req.caller().user_id,
            &info.id_server,
            &info.id_access_token,
            b.sid.as_str(),
            b.client_secret.as_str(),
        )
        .await?;
    Ok(bind_3pid::v3::Response::new().into())
}

fn removal(unbound: bool) -> ruma::api::client::account::ThirdPartyIdRemovalStatus {
    if unbound {
        ruma::api::client::account::ThirdPartyIdRemovalStatus::Success
    } else {
        ruma::api::client::account::ThirdPartyIdRemovalStatus::NoSupport
    }
}

/// `POST /account/3pid/unbind`: unbinds an address on its identity server; the account keeps it.
pub async fn unbind_threepid(State(s): S, req: Ruma<unbind_3pid::v3::Request>) -> ApiResult<unbind_3pid::v3::Response> {
    let b = &req.body;
    let unbound = s
        .identity
        .unbind_address(&req.caller().user_id, b.id_server.as_deref(), b.medium.as_str(), &b.address, false)
        .await?;
    Ok(unbind_3pid::v3::Response::new(removal(unbound)).into())
}

/// `POST /account/3pid/delete`: the account loses an address (unbound where it was bound).
pub async fn delete_threepid(State(s): S, req: Ruma<delete_3pid::v3::Request>) -> ApiResult<delete_3pid::v3::Response> {
    let b = &req.body;
    let unbound = s
        .identity
        .unbind_address(&req.caller().user_id, b.id_server.as_deref(), b.medium.as_str(), &b.address, true)
        .await?;
    Ok(delete_3pid::v3::Response::new(removal(unbound)).into())
}

/// `POST /account/3pid/email/requestToken`: mails a validation link to an address no account
/// holds, to add it to the caller's (`/account/3pid/add`). Without `[email]`, this server
/// sends no mail (addresses are validated and bound by an identity server), as Synapse
/// answers without e-mail settings.
pub async fn request_threepid_email_token(
    State(s): S,
    req: Ruma<request_3pid_management_token_via_email::v3::Request>,
) -> ApiResult<request_3pid_management_token_via_email::v3::Response> {
    let b = &req.body;
    let (sid, submit_url) =
        mail_link(&s, Purpose::NewAddress, &b.client_secret, &b.email, b.send_attempt, b.next_link.as_deref()).await?;
    let mut response = request_3pid_management_token_via_email::v3::Response::new(sid);
    response.submit_url = Some(submit_url);
    Ok(response.into())
}

/// `POST /register/email/requestToken`: mails a validation link to an address no account
/// holds, to register with it (the `m.login.email.identity` stage).
pub async fn request_registration_email_token(
    State(s): S,
    req: Ruma<request_registration_token_via_email::v3::Request>,
) -> ApiResult<request_registration_token_via_email::v3::Response> {
    if !s.config.registration.enabled {
        return Err(Error::forbidden("Registration is disabled").into());
    }
    let b = &req.body;
    let (sid, submit_url) =
        mail_link(&s, Purpose::NewAddress, &b.client_secret, &b.email, b.send_attempt, b.next_link.as_deref()).await?;
    let mut response = request_registration_token_via_email::v3::Response::new(sid);
    response.submit_url = Some(submit_url);
    Ok(response.into())
}

/// `POST /account/password/email/requestToken`: mails a validation link to an address an
/// account holds, to reset that account's password (`POST /account/password` without an
/// access token).
pub async fn request_password_email_token(
    State(s): S,
    req: Ruma<request_password_change_token_via_email::v3::Request>,
) -> ApiResult<request_password_change_token_via_email::v3::Response> {
    let b = &req.body;
    let (sid, submit_url) =
        mail_link(&s, Purpose::PasswordReset, &b.client_secret, &b.email, b.send_attempt, b.next_link.as_deref())
            .await?;
    let mut response = request_password_change_token_via_email::v3::Response::new(sid);
    response.submit_url = Some(submit_url);
    Ok(response.into())
}

/// Mails a validation link (the three `requestToken` endpoints): the session's id and where
/// its token may be submitted.
async fn mail_link(
    s: &Services,
    purpose: Purpose,
    client_secret: &ruma::ClientSecret,
    address: &str,
    send_attempt: ruma::UInt,
    next_link: Option<&str>,
) -> Result<(ruma::OwnedSessionId, String), Error> {
    let requested =
        s.email.request_token(purpose, client_secret.as_str(), address, send_attempt.into(), next_link).await?;
    let sid = ruma::OwnedSessionId::try_from(requested.sid).map_err(diplomatie_service::internal!())?;
    Ok((sid, requested.submit_url))
}

/// `POST /account/3pid/add`: the address of a session this server validated joins the
/// caller's account (after authenticating again).
pub async fn add_threepid(State(s): S, req: Ruma<add_3pid::v3::Request>) -> ApiResult<add_3pid::v3::Response> {
    let caller = req.caller();
    s.uia.reauthenticate(&caller.user_id, req.body.auth.as_ref(), &req.operation).await?;
    s.email.add_to_account(&caller.user_id, req.body.sid.as_str(), req.body.client_secret.as_str()).await?;
    Ok(add_3pid::v3::Response::new().into())
}

/// The credentials of a validation session (`POST /account/3pid`, deprecated).
#[derive(serde::Deserialize)]
struct ThreepidCreds {
    sid: String,
    client_secret: String,
}

/// `POST /account/3pid` (deprecated since r0.6, which clients and Sytest still call):
/// `three_pid_creds` (or `threePidCreds`) of a session this server validated, whose address
/// joins the caller's account. Binding on an identity server is `/account/3pid/bind`.
pub async fn add_threepid_deprecated(
    State(s): S,
    parts: axum::http::request::Parts,
    body: axum::body::Bytes,
) -> Result<axum::Json<serde_json::Map<String, Value>>, crate::error::ApiError> {
    let caller = crate::ruma_wrapper::authenticate(&s, &parts).await?;
    let body = crate::ruma_wrapper::object_body(&body)?;
    let creds = body
        .get("three_pid_creds")
        .or_else(|| body.get("threePidCreds"))
        .ok_or_else(|| Error::missing_param("three_pid_creds is required"))?;
    let creds: ThreepidCreds =
        serde_json::from_value(creds.clone()).map_err(|e| Error::bad_json(format!("three_pid_creds: {e}")))?;
    s.email.add_to_account(&caller.user_id, &creds.sid, &creds.client_secret).await?;
    Ok(axum::Json(serde_json::Map::new()))
}

/// The query of a validation link.
#[derive(serde::Deserialize)]
pub struct SubmittedToken {
    sid: String,
    client_secret: String,
    token: String,
}

/// `GET /_diplomatie/client/v1/email/submit_token`: the link of a validation mail. Validates
/// the session and says so in a page, or sends the browser to where the client asked.
pub async fn email_link(
    State(s): S,
    q: Result<axum::extract::Query<SubmittedToken>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::response::{Html, IntoResponse, Redirect};
    let page = |status: axum::http::StatusCode, text: &str| {
        let html = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{text}</title></head>\
             <body><p>{text}</p></body></html>"
        );
        (status, Html(html)).into_response()
    };
    let Ok(axum::extract::Query(q)) = q else {
        return page(axum::http::StatusCode::BAD_REQUEST, "This link is incomplete.");
    };
    match s.email.submit_token(&q.sid, &q.client_secret, &q.token).await {
        Ok(Some(next)) => Redirect::to(&next).into_response(),
        Ok(None) => {
            page(axum::http::StatusCode::OK, "Your e-mail address is confirmed. You may go back to your application.")
        }
        Err(_) => page(axum::http::StatusCode::BAD_REQUEST, "This link is unknown or expired."),
    }
}

/// `POST /_diplomatie/client/v1/email/submit_token` (the `submit_url` of `requestToken`):
/// `{"sid", "client_secret", "token"}` validates the session; `{"success": true}`.
pub async fn email_submit_token(
    State(s): S,
    body: axum::body::Bytes,
) -> Result<axum::Json<Value>, crate::error::ApiError> {
    let body = crate::ruma_wrapper::object_body(&body)?;
    let field = |name: &str| match body.get(name) {
        None | Some(Value::Null) => Err(Error::missing_param(format!("{name} is required"))),
        Some(Value::String(v)) => Ok(v.as_str()),
        Some(_) => Err(Error::bad_json(format!("{name} must be a string"))),
    };
    s.email.submit_token(field("sid")?, field("client_secret")?, field("token")?).await?;
    Ok(axum::Json(serde_json::json!({ "success": true })))
}

/// `POST /refresh`
pub async fn refresh(State(s): S, req: Ruma<refresh_token::v3::Request>) -> ApiResult<refresh_token::v3::Response> {
    let session = s.accounts.refresh(&req.body.refresh_token).await?;
    let mut resp = refresh_token::v3::Response::new(session.access_token);
    resp.refresh_token = session.refresh_token;
    resp.expires_in_ms = session.expires_in_ms.map(Duration::from_millis);
    Ok(resp.into())
}

pub async fn logout(State(s): S, req: Ruma<logout::v3::Request>) -> ApiResult<logout::v3::Response> {
    s.sessions.logout(req.caller()).await?;
    Ok(logout::v3::Response::new().into())
}

pub async fn logout_all(State(s): S, req: Ruma<logout_all::v3::Request>) -> ApiResult<logout_all::v3::Response> {
    s.sessions.logout_all(&req.caller().user_id).await?;
    Ok(logout_all::v3::Response::new().into())
}

pub async fn whoami(_: S, req: Ruma<whoami::v3::Request>) -> ApiResult<whoami::v3::Response> {
    let caller = req.caller();
    let mut resp = whoami::v3::Response::new(caller.user_id.clone(), false);
    resp.device_id = Some(caller.device_id.clone());
    Ok(resp.into())
}

/// `POST /account/password` (user-interactive: the current password).
pub async fn change_password(
    State(s): S,
    req: Ruma<change_password::v3::Request>,
) -> ApiResult<change_password::v3::Response> {
    if req.body.new_password.is_empty() {
        return Err(Error::new(ErrorKind::WeakPassword, "The password must not be empty").into());
    }
    let Some(caller) = req.caller.as_ref() else {
        return reset_password_by_email(&s, req).await;
    };
    s.uia.reauthenticate(&caller.user_id, req.body.auth.as_ref(), &req.operation).await?;
    s.sessions.change_password(caller, &req.body.new_password, req.body.logout_devices).await?;
    Ok(change_password::v3::Response::new().into())
}

/// `POST /account/password` without an access token: a forgotten password, reset through an
/// address of the account this server validated by mail (the `m.login.email.identity` stage,
/// after `/account/password/email/requestToken`). Without mail, an access token is required.
async fn reset_password_by_email(
    s: &Services,
    req: Ruma<change_password::v3::Request>,
) -> ApiResult<change_password::v3::Response> {
    if !s.email.enabled() {
        return Err(Error::new(ErrorKind::MissingToken, "Missing access token").into());
    }
    let auth = req.body.auth.as_ref();
    s.uia.user_interactive_auth(&[vec![AuthType::EmailIdentity]], auth, None, &req.operation).await?;
    let Some(AuthData::EmailIdentity(e)) = auth else {
        return Err(Error::new(ErrorKind::ThreepidAuthFailed, "The e-mail stage is required").into());
    };
    let creds = &e.thirdparty_id_creds;
    let session = s.email.validated(creds.sid.as_str(), creds.client_secret.as_str()).await?;
    let user = s.email.account_of(&session.medium, &session.address).await?;
    let user = user.ok_or_else(|| Error::new(ErrorKind::ThreepidNotFound, "No account has this e-mail address"))?;
    s.sessions.set_password(&user, None, &req.body.new_password, req.body.logout_devices).await?;
    Ok(change_password::v3::Response::new().into())
}

/// `POST /account/deactivate` (user-interactive: the current password).
pub async fn deactivate(State(s): S, req: Ruma<deactivate::v3::Request>) -> ApiResult<deactivate::v3::Response> {
    let caller = req.caller();
    // An application service deactivates its users without authenticating again.
    if caller.appservice.is_none() {
        s.uia.reauthenticate(&caller.user_id, req.body.auth.as_ref(), &req.operation).await?;
    }
    s.sessions.deactivate(&caller.user_id, req.body.erase).await?;
    Ok(deactivate::v3::Response::new(ruma::api::client::account::ThirdPartyIdRemovalStatus::NoSupport).into())
}

fn to_device(d: diplomatie_service::accounts::DeviceRecord) -> device::Device {
    let mut out = device::Device::new(d.device_id.into());
    out.display_name = d.display_name;
    out.last_seen_ip = d.last_seen_ip;
    out.last_seen_ts =
        d.last_seen_ts.and_then(|t| ruma::UInt::try_from(t.max(0) as u64).ok()).map(ruma::MilliSecondsSinceUnixEpoch);
    out
}

pub async fn devices(State(s): S, req: Ruma<get_devices::v3::Request>) -> ApiResult<get_devices::v3::Response> {
    let list = s.accounts.devices(&req.caller().user_id).await?;
    Ok(get_devices::v3::Response::new(list.into_iter().map(to_device).collect()).into())
}

pub async fn device(State(s): S, req: Ruma<get_device::v3::Request>) -> ApiResult<get_device::v3::Response> {
    let d = s.accounts.device(&req.caller().user_id, req.body.device_id.as_str()).await?;
    Ok(get_device::v3::Response::new(to_device(d)).into())
}

pub async fn update_device(
    State(s): S,
    req: Ruma<update_device::v3::Request>,
) -> ApiResult<update_device::v3::Response> {
    s.sessions
        .rename_device(&req.caller().user_id, req.body.device_id.as_str(), req.body.display_name.as_deref())
        .await?;
    Ok(update_device::v3::Response::new().into())
}

/// `DELETE /devices/{deviceId}` (user-interactive).
pub async fn delete_device(
    State(s): S,
    req: Ruma<delete_device::v3::Request>,
) -> ApiResult<delete_device::v3::Response> {
    let caller = req.caller();
    s.accounts.device(&caller.user_id, req.body.device_id.as_str()).await?;
    s.uia.reauthenticate(&caller.user_id, req.body.auth.as_ref(), &req.operation).await?;
    s.sessions.delete_devices(&caller.user_id, &[req.body.device_id.as_str()]).await?;
    Ok(delete_device::v3::Response::new().into())
}

/// `POST /delete_devices` (user-interactive).
pub async fn delete_devices(
    State(s): S,
    req: Ruma<delete_devices::v3::Request>,
) -> ApiResult<delete_devices::v3::Response> {
    let caller = req.caller();
    s.uia.reauthenticate(&caller.user_id, req.body.auth.as_ref(), &req.operation).await?;
    let ids: Vec<&str> = req.body.devices.iter().map(|d| d.as_str()).collect();
    s.sessions.delete_devices(&caller.user_id, &ids).await?;
    Ok(delete_devices::v3::Response::new().into())
}

/// `GET /profile/{userId}`
pub async fn profile(State(s): S, req: Ruma<get_profile::v3::Request>) -> ApiResult<get_profile::v3::Response> {
    let (displayname, avatar) = s.directory.profile(&req.body.user_id).await?;
    let mut body = get_profile::v3::Response::new();
    for (field, value) in [("displayname", displayname), ("avatar_url", avatar)] {
        if let Some(v) = value {
            body.set(field.to_owned(), v.into());
        }
    }
    Ok(body.into())
}

/// `GET /profile/{userId}/{field}`
pub async fn profile_field_untyped(
    State(s): S,
    axum::extract::Path((user_id, field)): axum::extract::Path<(String, String)>,
) -> ApiResult<get_profile::v3::Response> {
    let user_id = ruma::OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user id"))?;
    let (displayname, avatar) = s.directory.profile(&user_id).await?;
    let value = match field.as_str() {
        "displayname" => displayname,
        "avatar_url" => avatar,
        _ => None,
    };
    let value = value.ok_or_else(|| Error::not_found("Profile field not set"))?;
    let mut body = get_profile::v3::Response::new();
    body.set(field, value.into());
    Ok(body.into())
}

/// `PUT /profile/{userId}/{field}`: parsed by hand, the field is in the path and the body.
pub async fn set_profile_field(
    State(s): S,
    axum::extract::Path((user_id, field)): axum::extract::Path<(String, String)>,
    parts: http::request::Parts,
    body: axum::body::Bytes,
) -> ApiResult<set_profile_field::v3::Response> {
    let caller = crate::ruma_wrapper::authenticate(&s, &parts).await?;
    if caller.user_id.as_str() != user_id {
        return Err(Error::forbidden("You may only change your own profile").into());
    }
    let value = crate::ruma_wrapper::object_body(&body)?;
    let v = match value.get(&field) {
        Some(Value::String(v)) => Some(v.clone()),
        Some(Value::Null) => None,
        Some(_) => return Err(Error::bad_json(format!("{field} must be a string")).into()),
        None => return Err(Error::missing_param(format!("Missing {field}")).into()),
    };
    if !matches!(field.as_str(), "displayname" | "avatar_url") {
        return Err(Error::forbidden("Only displayname and avatar_url can be set").into());
    }
    s.accounts.set_profile_field(&caller.user_id, &field, v.as_deref()).await?;
    Ok(set_profile_field::v3::Response::new().into())
}

/// `POST /user/{userId}/openid/request_token`
pub async fn request_openid_token(
    State(s): S,
    req: Ruma<ruma::api::client::account::request_openid_token::v3::Request>,
) -> crate::ruma_wrapper::ApiResult<ruma::api::client::account::request_openid_token::v3::Response> {
    use ruma::api::client::account::request_openid_token::v3::Response;
    let token = s.openid.request_token(&req.caller().user_id, &req.body.user_id)?;
    let lifetime = diplomatie_service::openid::OPENID_TOKEN_LIFETIME;
    Ok(Response::new(token, "Bearer".into(), s.server_name().to_owned(), lifetime).into())
}
