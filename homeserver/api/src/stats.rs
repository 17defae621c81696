//! The portal's dashboards: the page (`/_diplomatie/dashboard`, one HTML file with its script,
//! in French and English, that signs in with the user's Matrix credentials or single sign-on),
//! and the figures it draws (`/_diplomatie/admin/v1/stats/units`, for administrators and
//! managers; `/_diplomatie/admin/v1/stats/server`, for administrators).

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Query, State},
    http::{header, request::Parts},
    response::{Html, IntoResponse},
    Json,
};
use diplomatie_service::{
    stats::{ServerHealth, Units},
    Error, Services,
};

use crate::{
    admin::{admin, caller},
    error::ApiError,
};

type S = State<Arc<Services>>;

const PAGE: &str = include_str!("../assets/dashboard.html");

/// `GET /_diplomatie/dashboard`.
pub async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        Html(PAGE),
    )
}

/// `GET /_diplomatie/admin/v1/stats/units?days=N` (1 to 366, 30 by default).
pub async fn units(
    State(s): S,
    Query(q): Query<HashMap<String, String>>,
    parts: Parts,
) -> Result<Json<Units>, ApiError> {
    let caller = caller(&s, &parts).await?;
    let days = match q.get("days") {
        None => 30,
        Some(d) => d
            .parse::<u32>()
            .ok()
            .filter(|d| (1..=366).contains(d))
            .ok_or_else(|| Error::invalid_param("days must be an integer from 1 to 366"))?,
    };
    Ok(Json(s.stats.units(&caller.user_id, caller.is_admin, days).await?))
}

/// `GET /_diplomatie/admin/v1/stats/server`.
pub async fn server(State(s): S, parts: Parts) -> Result<Json<ServerHealth>, ApiError> {
    admin(&s, &parts).await?;
    Ok(Json(s.stats.server().await?))
}
