//! Requests counted for Prometheus (by method, route template and status, with their latency;
//! only when the metrics listener is on), and the `/metrics` answer, served on that listener
//! only (`metrics.listen`).

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use diplomatie_service::Services;

use crate::error::ApiError;

/// Counts a request once answered. The route is the path's template (`/_matrix/client/v3/
/// rooms/{room_id}/send/...`), never the path itself, so the series stay few.
pub async fn record(State(s): State<Arc<Services>>, req: Request, next: Next) -> Response {
    // Nothing reads them without the metrics listener: no cost then.
    if s.config.metrics.listen.is_empty() {
        return next.run(req).await;
    }
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    s.metrics.requests.with_label_values(&[&method, &route, &status]).inc();
    s.metrics.request_seconds.with_label_values(&[&method, &route]).observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: Prometheus's text format.
pub async fn metrics(State(s): State<Arc<Services>>) -> Result<Response, ApiError> {
    let text = s.metrics.render(&s.db).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

/// `GET /health`, for load balancers (as Synapse has it): the process answers.
pub async fn health() -> &'static str {
    "OK"
}

/// The metrics listener's routes: `/metrics`, and `/health`.
pub fn router(services: Arc<Services>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/health", axum::routing::get(health))
        .with_state(services)
}
