//! The audit log of the portal's administration: every change made through
//! `/_diplomatie/admin/...` (clearances, kinds, groups, imports, holds, retention, archives,
//! signatories...) that succeeded is written with who made it (an administrator, or a manager
//! where the portal lets one), the route it went through and the ids its path named. Synapse's
//! admin API writes its own, finer lines from the service (`Admin`).

use std::sync::Arc;

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use diplomatie_service::Services;

use crate::ruma_wrapper::{access_token, caller_of};

/// The values a request's path gives the route's `{parameters}`, decoded, space-separated.
fn path_parameters(template: &str, path: &str) -> String {
    template
        .split('/')
        .zip(path.split('/'))
        .filter(|(t, _)| t.starts_with('{'))
        .map(|(_, value)| percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn portal_changes(State(s): State<Arc<Services>>, req: Request, next: Next) -> Response {
    // Every request passes here: only the portal's administrative changes cost anything.
    let changes = matches!(req.method().as_str(), "POST" | "PUT" | "DELETE" | "PATCH");
    let route = match req.extensions().get::<MatchedPath>() {
        Some(route) if changes && route.as_str().starts_with("/_diplomatie/admin/") => route.as_str().to_owned(),
        _ => return next.run(req).await,
    };
    let (parts, body) = req.into_parts();
    let who = match access_token(&parts) {
        Some(token) => caller_of(&s, &parts, &token).await.ok().map(|c| c.user_id),
        None => None,
    };
    let action = format!("{} {route}", parts.method);
    let target = path_parameters(&route, parts.uri.path());
    let response = next.run(Request::from_parts(parts, body)).await;
    if let Some(who) = who.filter(|_| response.status().is_success()) {
        if let Err(e) = s.admin.record(&who, &action, &target).await {
            tracing::error!(%who, action, error = %e, "an administrative change was not written to the audit log");
        }
    }
    response
}
