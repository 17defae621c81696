//! What application services call, and the third-party lookups they answer for clients
//! (client-server spec, "Third-party networks"; application-service spec, "Client-Server API
//! Extensions").

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    Json,
};
use diplomatie_service::{accounts::Caller, Error, Services};
use ruma::api::client::{
    appservice::{request_ping, set_room_visibility},
    room::Visibility,
};
use serde_json::Value;

use crate::{
    error::ApiError,
    ruma_wrapper::{authenticate, ApiResult, Ruma},
};

type S = State<Arc<Services>>;

/// The application service calling, or `M_FORBIDDEN` for anyone else.
fn service_of(caller: &Caller) -> Result<&str, Error> {
    caller.appservice.as_deref().ok_or_else(|| Error::forbidden("Only an application service may call this endpoint"))
}

/// `POST /v1/appservice/{appserviceId}/ping`: the server pings the service and says how long
/// it took, or why it failed.
pub async fn ping(State(s): S, req: Ruma<request_ping::v1::Request>) -> ApiResult<request_ping::v1::Response> {
    let caller = service_of(req.caller())?;
    let txn = req.body.transaction_id.as_ref().map(|t| t.as_str());
    let ms = s.appservices.ping(caller, &req.body.appservice_id, txn).await?;
    Ok(request_ping::v1::Response::new(std::time::Duration::from_millis(ms)).into())
}

/// `PUT /directory/list/appservice/{networkId}/{roomId}`: lists a room in (or takes it off)
/// the service's list for one of its networks.
pub async fn set_listed(
    State(s): S,
    req: Ruma<set_room_visibility::v3::Request>,
) -> ApiResult<set_room_visibility::v3::Response> {
    let service = service_of(req.caller())?;
    let listed = req.body.visibility == Visibility::Public;
    s.appservices.set_listed(service, &req.body.network_id, &req.body.room_id, listed).await?;
    Ok(set_room_visibility::v3::Response::new().into())
}

/// `DELETE /directory/list/appservice/{networkId}/{roomId}` (as Synapse has it): takes a room
/// off the service's list.
pub async fn unlist(
    State(s): S,
    Path((network_id, room_id)): Path<(String, String)>,
    parts: http::request::Parts,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&s, &parts).await?;
    let service = service_of(&caller)?;
    let room_id = ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    s.appservices.set_listed(service, &network_id, &room_id, false).await?;
    Ok(Json(serde_json::json!({})))
}

/// `GET /thirdparty/protocols`
pub async fn protocols(State(s): S, parts: http::request::Parts) -> Result<Json<Value>, ApiError> {
    authenticate(&s, &parts).await?;
    Ok(Json(serde_json::to_value(s.appservices.protocols().await).map_err(diplomatie_service::internal!())?))
}

/// `GET /thirdparty/protocol/{protocol}`
pub async fn protocol(
    State(s): S,
    Path(protocol): Path<String>,
    parts: http::request::Parts,
) -> Result<Json<Value>, ApiError> {
    authenticate(&s, &parts).await?;
    let info = s.appservices.protocol(&protocol).await.ok_or_else(|| Error::not_found("Unknown protocol"))?;
    Ok(Json(info))
}

/// `GET /thirdparty/{user,location}/{protocol}`: what the services bridging the protocol find
/// for the query's fields.
pub async fn lookup_in_protocol(
    State(s): S,
    Path((kind, protocol)): Path<(String, String)>,
    Query(fields): Query<Vec<(String, String)>>,
    parts: http::request::Parts,
) -> Result<Json<Value>, ApiError> {
    authenticate(&s, &parts).await?;
    if !matches!(kind.as_str(), "user" | "location") {
        return Err(Error::unrecognized("Unrecognized request").into());
    }
    let fields: Vec<(String, String)> = fields.into_iter().filter(|(k, _)| k != "access_token").collect();
    Ok(Json(Value::Array(s.appservices.third_party_lookup(&kind, Some(&protocol), &fields).await)))
}

/// `GET /thirdparty/user?userid=`: the third-party users a Matrix user stands for.
pub async fn user_of_matrix_id(
    s: S,
    query: Query<Vec<(String, String)>>,
    parts: http::request::Parts,
) -> Result<Json<Value>, ApiError> {
    lookup_matrix_id(s, "user", "userid", query, parts).await
}

/// `GET /thirdparty/location?alias=`: the third-party locations an alias stands for.
pub async fn location_of_alias(
    s: S,
    query: Query<Vec<(String, String)>>,
    parts: http::request::Parts,
) -> Result<Json<Value>, ApiError> {
    lookup_matrix_id(s, "location", "alias", query, parts).await
}

async fn lookup_matrix_id(
    State(s): S,
    kind: &str,
    key: &str,
    Query(fields): Query<Vec<(String, String)>>,
    parts: http::request::Parts,
) -> Result<Json<Value>, ApiError> {
    authenticate(&s, &parts).await?;
    let id = fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| Error::missing_param(format!("Missing the `{key}` parameter")))?;
    Ok(Json(Value::Array(s.appservices.third_party_lookup(kind, None, &[(key.to_owned(), id)]).await)))
}
