//! The signature circuit for programs (`/_diplomatie/client/v1/circuits`, `/delegations`) and
//! the groups' signatories for administrators. Standard clients act on a circuit with ✅ and ❌
//! on its notice in the group's correspondence room (see the service).

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::request::Parts,
    Json,
};
use diplomatie_service::{
    correspondence::{
        CircuitRequest, CircuitView, Composition, Decision, DelegationRequest, DelegationView, Signatory,
    },
    Error, Services,
};
use serde::{Deserialize, Serialize};

use crate::{
    admin::{admin, caller, parse_body},
    error::ApiError,
};

type S = State<Arc<Services>>;

/// `POST /_diplomatie/client/v1/circuits` `{"correspondence": {...}, "approvers": [...],
/// "signatory": ...}`: the caller, the drafter, starts a circuit.
pub async fn start(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Json<CircuitView>, ApiError> {
    let caller = caller(&s, &parts).await?;
    let req: CircuitRequest = parse_body(&body)?;
    Ok(Json(s.correspondence.start_circuit(&caller.user_id, Some(&caller.device_id), req).await?))
}

/// `GET /_diplomatie/client/v1/circuits/{circuitId}`.
pub async fn get(State(s): S, Path(id): Path<String>, parts: Parts) -> Result<Json<CircuitView>, ApiError> {
    let caller = caller(&s, &parts).await?;
    Ok(Json(s.correspondence.circuit(&caller.user_id, caller.is_admin, &id).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    comment: Option<String>,
}

/// `POST .../circuits/{circuitId}/{approve|refuse|sign}` `{"comment": ...}` (optional to
/// approve or sign, required to refuse: the draft goes back to its drafter). Signing seals and
/// dispatches the record.
pub async fn decide(
    State(s): S,
    Path((id, action)): Path<(String, String)>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<CircuitView>, ApiError> {
    let decision = match action.as_str() {
        "approve" => Decision::Approve,
        "refuse" => Decision::Refuse,
        "sign" => Decision::Sign,
        _ => return Err(Error::unrecognized("Unrecognized request").into()),
    };
    let caller = caller(&s, &parts).await?;
    let req: DecisionBody = if body.is_empty() { DecisionBody::default() } else { parse_body(&body)? };
    Ok(Json(s.correspondence.decide(&caller.user_id, &id, decision, req.comment.as_deref()).await?))
}

/// `PUT .../circuits/{circuitId}/draft` (a composition): a returned draft, submitted again.
pub async fn resubmit(
    State(s): S,
    Path(id): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<CircuitView>, ApiError> {
    let caller = caller(&s, &parts).await?;
    let c: Composition = parse_body(&body)?;
    Ok(Json(s.correspondence.resubmit(&caller.user_id, Some(&caller.device_id), &id, &c).await?))
}

/// `POST /_diplomatie/client/v1/delegations` `{"delegate": ..., "from_ts": ..., "until_ts": ...}`.
pub async fn delegate(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Json<DelegationView>, ApiError> {
    let caller = caller(&s, &parts).await?;
    let req: DelegationRequest = parse_body(&body)?;
    Ok(Json(s.correspondence.delegate(&caller.user_id, &req).await?))
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Signatories {
    signatories: Vec<Signatory>,
}

/// `PUT /_diplomatie/admin/v1/groups/{slug}/signatories` `{"signatories": [{"user_id": ...,
/// "title": ...}]}`.
pub async fn set_signatories(
    State(s): S,
    Path(slug): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Signatories>, ApiError> {
    admin(&s, &parts).await?;
    let req: Signatories = parse_body(&body)?;
    if req.signatories.len() > 100 {
        return Err(Error::invalid_param("At most 100 signatories").into());
    }
    Ok(Json(Signatories { signatories: s.correspondence.set_signatories(&slug, &req.signatories).await? }))
}
