//! Single sign-on's HTTP side: the spec's redirect endpoints (`/login/sso/redirect`, with or
//! without a provider), and the providers' callback (`/_synapse/client/oidc/callback`), which
//! sends the browser back to the client with a login token, or shows a page that asks the
//! person to confirm when the client's address is not on the allow-list.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
};
use diplomatie_service::{
    sso::{Return, SESSION_COOKIE},
    Services,
};
use ruma::api::client::session::{sso_login, sso_login_with_provider};

use crate::{
    error::ApiError,
    ruma_wrapper::{ApiResult, Ruma},
};

type S = State<Arc<Services>>;

/// `GET /login/sso/redirect?redirectUrl=`: to the first provider.
pub async fn redirect(State(s): S, req: Ruma<sso_login::v3::Request>) -> ApiResult<sso_login::v3::Response> {
    let departure = s.sso.depart(None, &req.body.redirect_url).await?;
    let mut resp = sso_login::v3::Response::new(departure.location);
    resp.cookie = Some(departure.cookie);
    Ok(resp.into())
}

/// `GET /login/sso/redirect/{idpId}?redirectUrl=`.
pub async fn redirect_to(
    State(s): S,
    req: Ruma<sso_login_with_provider::v3::Request>,
) -> ApiResult<sso_login_with_provider::v3::Response> {
    let departure = s.sso.depart(Some(&req.body.idp_id), &req.body.redirect_url).await?;
    let mut resp = sso_login_with_provider::v3::Response::new(departure.location);
    resp.cookie = Some(departure.cookie);
    Ok(resp.into())
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
    let back = s.sso.arrive(get("state"), get("code"), get("error"), browser.as_deref()).await?;
    let clear = format!("{SESSION_COOKIE}=; Path=/_synapse/client/oidc; Max-Age=0; HttpOnly; SameSite=Lax");
    Ok(match back {
        Return::Redirect(url) => {
            (StatusCode::FOUND, [(header::LOCATION, url), (header::SET_COOKIE, clear)]).into_response()
        }
        Return::Confirm { url, user } => {
            let host = reqwest_host(&url);
            let page = format!(
                "<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\"><title>Diplomatie</title></head>\
                 <body><main><h1>Continuer vers votre application ? / Continue to your application?</h1>\
                 <p>Vous êtes connecté·e en tant que <strong>{user}</strong>. L'application à <strong>{host}</strong> \
                 demande l'accès à votre compte.</p><p>You are signed in as <strong>{user}</strong>. The \
                 application at <strong>{host}</strong> asks for access to your account.</p>\
                 <p><a id=\"continue\" href=\"{url}\">Continuer / Continue</a></p></main></body></html>",
                user = escaped(user.as_str()),
                host = escaped(&host),
                url = escaped(&url),
            );
            ([(header::SET_COOKIE, clear)], Html(page)).into_response()
        }
    })
}

/// The host a URL names (for the confirmation page).
fn reqwest_host(url: &str) -> String {
    url.split("://").nth(1).and_then(|rest| rest.split(['/', '?']).next()).unwrap_or(url).to_owned()
}
