//! Single sign-on's HTTP side: the spec's redirect endpoints (`/login/sso/redirect`, with or
//! without a provider), the OpenID Connect providers' callback (`/_synapse/client/oidc/callback`),
//! CAS's redirect and ticket endpoints (Synapse's paths), and the `m.login.sso` stage's
//! fallback page. A login ends back at the client with a login token, or on a page that asks
//! the person to confirm when the client's address is not on the allow-list; a fallback ends
//! on a page that tells the client the stage is done.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
};
use diplomatie_service::{
    sso::{Departure, Purpose, Return, SESSION_COOKIE},
    Error, Services,
};
use ruma::api::client::session::{sso_login, sso_login_with_provider};

use crate::{
    error::ApiError,
    ruma_wrapper::{ApiResult, Ruma},
};

type S = State<Arc<Services>>;

/// Where a journey to provider `idp` (the first one when none is named) starts.
async fn depart(s: &Services, idp: Option<&str>, purpose: Purpose) -> Result<Departure, Error> {
    let cas = idp == Some(diplomatie_service::cas::PROVIDER_ID) || (idp.is_none() && !s.sso.has_providers());
    if cas && s.cas.enabled() {
        return Ok(Departure { location: s.cas.depart(&purpose)?, cookie: String::new() });
    }
    s.sso.depart(idp, purpose).await
}

/// The cookie to set, if the journey has one.
fn cookie(departure: &Departure) -> Option<String> {
    (!departure.cookie.is_empty()).then(|| departure.cookie.clone())
}

/// `GET /login/sso/redirect?redirectUrl=`: to the first provider.
pub async fn redirect(State(s): S, req: Ruma<sso_login::v3::Request>) -> ApiResult<sso_login::v3::Response> {
    let departure = depart(&s, None, Purpose::login(&req.body.redirect_url)?).await?;
    let mut resp = sso_login::v3::Response::new(departure.location.clone());
    resp.cookie = cookie(&departure);
    Ok(resp.into())
}

/// `GET /login/sso/redirect/{idpId}?redirectUrl=`.
pub async fn redirect_to(
    State(s): S,
    req: Ruma<sso_login_with_provider::v3::Request>,
) -> ApiResult<sso_login_with_provider::v3::Response> {
    let purpose = Purpose::login(&req.body.redirect_url)?;
    let departure = depart(&s, Some(&req.body.idp_id), purpose).await?;
    let mut resp = sso_login_with_provider::v3::Response::new(departure.location.clone());
    resp.cookie = cookie(&departure);
    Ok(resp.into())
}

fn query<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Error> {
    q.get(name).map(String::as_str).ok_or_else(|| Error::missing_param(format!("Missing {name}")))
}

/// `GET /login/cas/redirect?redirectUrl=` (Synapse's, before `m.login.sso`): to the CAS server.
pub async fn cas_redirect(State(s): S, Query(q): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let location = s.cas.depart(&Purpose::login(query(&q, "redirectUrl")?)?)?;
    Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
}

/// `GET /login/cas/ticket?ticket=&redirectUrl=` (or `&session=`): back from the CAS server.
pub async fn cas_ticket(State(s): S, Query(q): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let ticket = query(&q, "ticket")?;
    let purpose = match q.get("session") {
        Some(session) => Purpose::Uia(session.clone()),
        None => Purpose::login(query(&q, "redirectUrl")?)?,
    };
    Ok(back(s.cas.ticket(ticket, purpose).await?, None))
}

/// `GET /auth/{authType}/fallback/web?session=`: for `m.login.sso`, to the provider the
/// session's user signs in with (the first one when none is linked), back to a page that
/// tells the client the stage is done.
pub async fn fallback(
    State(s): S,
    Path(auth_type): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if auth_type != "m.login.sso" {
        return Err(Error::unrecognized(format!("No fallback page for {auth_type}")).into());
    }
    let session = query(&q, "session")?;
    let user = s.uia.session_user(session).ok_or_else(|| Error::not_found("Unknown or expired session"))?;
    let linked = s.sso.linked_providers(&user).await?;
    let idp = linked
        .iter()
        .map(String::as_str)
        .find(|p| (*p == diplomatie_service::cas::PROVIDER_ID && s.cas.enabled()) || s.sso.offers(p));
    let departure = depart(&s, idp, Purpose::Uia(session.to_owned())).await?;
    let mut resp = (StatusCode::FOUND, [(header::LOCATION, departure.location.clone())]).into_response();
    if let Some(cookie) = cookie(&departure).and_then(|c| c.parse().ok()) {
        resp.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(resp)
}

/// The attempt's cookie, if the browser sent it.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|cookies| {
        cookies.split(';').find_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('=').map(str::to_owned))
    })
}

/// Text for an HTML page.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// `GET /_synapse/client/oidc/callback?code=&state=` (or `error=`): the provider's answer.
pub async fn callback(
    State(s): S,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let browser = session_cookie(&headers);
    let get = |name: &str| q.get(name).map(String::as_str);
    let back_to = s.sso.arrive(get("state"), get("code"), get("error"), browser.as_deref()).await?;
    let clear = format!("{SESSION_COOKIE}=; Path=/_synapse/client/oidc; Max-Age=0; HttpOnly; SameSite=Lax");
    Ok(back(back_to, Some(clear)))
}

/// The answer that ends a journey (clearing the attempt's cookie if it has one).
fn back(back_to: Return, clear: Option<String>) -> Response {
    let mut resp = match back_to {
        Return::Redirect(url) => (StatusCode::FOUND, [(header::LOCATION, url)]).into_response(),
        Return::Confirm { url, user } => {
            let host = reqwest_host(&url);
            Html(format!(
                "<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\"><title>Diplomatie</title></head>\
                 <body><main><h1>Continuer vers votre application ? / Continue to your application?</h1>\
                 <p>Vous êtes connecté·e en tant que <strong>{user}</strong>. L'application à <strong>{host}</strong> \
                 demande l'accès à votre compte.</p><p>You are signed in as <strong>{user}</strong>. The \
                 application at <strong>{host}</strong> asks for access to your account.</p>\
                 <p><a id=\"continue\" href=\"{url}\">Continuer / Continue</a></p></main></body></html>",
                user = escaped(user.as_str()),
                host = escaped(&host),
                url = escaped(&url),
            ))
            .into_response()
        }
        Return::AuthDone { done: true } => Html(
            "<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\"><title>Diplomatie</title>\
             <script>if (window.onAuthDone) { window.onAuthDone(); } else if (window.opener && window.opener.postMessage) \
             { window.opener.postMessage(\"authDone\", \"*\"); }</script></head><body><main>\
             <p id=\"done\">Authentification terminée : vous pouvez fermer cette fenêtre. / Authentication done: \
             you may close this window.</p></main></body></html>",
        )
        .into_response(),
        Return::AuthDone { done: false } => Html(
            "<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\"><title>Diplomatie</title></head>\
             <body><main><p id=\"refused\">Ce compte n'est pas celui de la session : l'opération est refusée. / \
             This identity is not the session's account: the operation is refused.</p></main></body></html>",
        )
        .into_response(),
    };
    if let Some(clear) = clear.and_then(|c| c.parse().ok()) {
        resp.headers_mut().insert(header::SET_COOKIE, clear);
    }
    resp
}

/// The host a URL names (for the confirmation page).
fn reqwest_host(url: &str) -> String {
    url.split("://").nth(1).and_then(|rest| rest.split(['/', '?']).next()).unwrap_or(url).to_owned()
}
