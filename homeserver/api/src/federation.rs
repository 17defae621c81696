//! The server-server API: keys, transactions, joins, leaves and invites, history and queries.
//! Every handler but the key endpoints takes a request whose `X-Matrix` signature the
//! extractor checked; the origin's permissions are checked by the services.

use std::sync::Arc;

use axum::extract::State;
use diplomatie_service::{pdu::federation_json, Error, Services};
use ruma::events::room::member::MembershipState;
use ruma::{
    api::federation::{
        authenticated_media::{get_content, get_content_thumbnail, Content, ContentMetadata, FileOrLocation},
        authorization::get_event_authorization,
        backfill::get_backfill,
        device::get_devices,
        directory::{get_public_rooms, get_public_rooms_filtered},
        discovery::{get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, get_server_version},
        event::{get_event, get_event_by_timestamp, get_room_state, get_room_state_ids},
        keys::{claim_keys, get_keys},
        membership::{
            create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
            prepare_knock_event, prepare_leave_event,
        },
        openid::get_openid_userinfo,
        query::{get_profile_information, get_room_information},
        space::get_hierarchy,
        thirdparty::{bind_callback, exchange_invite},
        transactions::send_transaction_message,
    },
    MilliSecondsSinceUnixEpoch, OwnedServerName,
};
use serde_json::value::RawValue;

use crate::ruma_wrapper::{route, ApiResult, Ruma};

type S = State<Arc<Services>>;

/// Registers the federation routes.
pub fn routes(r: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    use axum::routing::get;
    // The trailing slash too: Sydent asks for `/_matrix/key/v2/server/`.
    let r = r
        .route("/_matrix/key/v2/server", get(server_keys))
        .route("/_matrix/key/v2/server/", get(server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys));
    let r = route::<get_remote_server_keys_batch::v2::Request, _, _>(r, notary_batch);
    let r = route::<get_remote_server_keys::v2::Request, _, _>(r, notary_one);
    let r = r.route("/_matrix/key/v2/query/{server_name}/{key_id}", get(notary_one_with_key_id));
    let r = route::<get_server_version::v1::Request, _, _>(r, version);
    let r = route::<send_transaction_message::v1::Request, _, _>(r, send_transaction);
    let r = route::<prepare_join_event::v1::Request, _, _>(r, make_join);
    let r = route::<create_join_event::v2::Request, _, _>(r, send_join);
    let r = route::<prepare_leave_event::v1::Request, _, _>(r, make_leave);
    let r = route::<create_leave_event::v2::Request, _, _>(r, send_leave);
    let r = r
        .route("/_matrix/federation/v1/send_join/{room_id}/{event_id}", axum::routing::put(send_membership_v1))
        .route("/_matrix/federation/v1/send_leave/{room_id}/{event_id}", axum::routing::put(send_membership_v1))
        .route("/_matrix/federation/v1/invite/{room_id}/{event_id}", axum::routing::put(invite_v1));
    let r = route::<create_invite::v2::Request, _, _>(r, invite);
    let r = route::<prepare_knock_event::v1::Request, _, _>(r, make_knock);
    let r = route::<create_knock_event::v1::Request, _, _>(r, send_knock);
    let r = route::<get_event::v1::Request, _, _>(r, event);
    let r = route::<get_event_by_timestamp::v1::Request, _, _>(r, timestamp_to_event);
    let r = route::<bind_callback::v1::Request, _, _>(r, on_bind);
    // Sydent calls it with POST (the spec says PUT; Synapse takes both).
    let r = r.route("/_matrix/federation/v1/3pid/onbind", axum::routing::post(on_bind_post));
    let r = route::<exchange_invite::v1::Request, _, _>(r, exchange_third_party_invite);
    let r = route::<get_room_state_ids::v1::Request, _, _>(r, state_ids);
    let r = route::<get_room_state::v1::Request, _, _>(r, state);
    let r = route::<get_event_authorization::v1::Request, _, _>(r, event_auth);
    let r = route::<get_backfill::v1::Request, _, _>(r, backfill);
    let r = r.route("/_matrix/federation/v1/get_missing_events/{room_id}", axum::routing::post(missing_events));
    let r = route::<get_profile_information::v1::Request, _, _>(r, query_profile);
    let r = route::<get_public_rooms::v1::Request, _, _>(r, public_rooms);
    let r = r.route("/_matrix/federation/v1/openid/userinfo", axum::routing::get(openid_userinfo));
    let r = r.route("/_diplomatie/federation/v1/mls/{op}", axum::routing::post(crate::mls::federation));
    let r = route::<get_hierarchy::v1::Request, _, _>(r, hierarchy);
    let r = route::<get_public_rooms_filtered::v1::Request, _, _>(r, public_rooms_filtered);
    let r = route::<get_keys::v1::Request, _, _>(r, keys_query);
    let r = route::<claim_keys::v1::Request, _, _>(r, keys_claim);
    let r = route::<get_devices::v1::Request, _, _>(r, user_devices);
    let r = route::<get_content::v1::Request, _, _>(r, media_download);
    let r = route::<get_content_thumbnail::v1::Request, _, _>(r, media_thumbnail);
    route::<get_room_information::v1::Request, _, _>(r, query_directory)
}

/// A file of this server's as the federation media endpoints send it: `multipart/mixed`, the
/// metadata then the bytes (never a redirection).
fn media_content(d: diplomatie_service::media::Download) -> FileOrLocation {
    use ruma::http_headers::{ContentDisposition, ContentDispositionType};
    let kind = if diplomatie_service::media::is_inline(&d.content_type) {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    };
    FileOrLocation::File(Content::new(d.bytes, d.content_type, ContentDisposition::new(kind).with_filename(d.filename)))
}

/// `GET /_matrix/federation/v1/media/download/{mediaId}`: media uploaded to this server.
async fn media_download(State(s): S, req: Ruma<get_content::v1::Request>) -> ApiResult<get_content::v1::Response> {
    let d = s.media.download_media(s.server_name(), &req.body.media_id, req.body.timeout_ms).await?;
    Ok(get_content::v1::Response::new(ContentMetadata::new(), media_content(d)).into())
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`.
async fn media_thumbnail(
    State(s): S,
    req: Ruma<get_content_thumbnail::v1::Request>,
) -> ApiResult<get_content_thumbnail::v1::Response> {
    let b = req.body;
    let method = crate::client::media::method_of(b.method.as_ref());
    let d =
        s.media.thumbnail(s.server_name(), &b.media_id, b.width.into(), b.height.into(), method, b.timeout_ms).await?;
    Ok(get_content_thumbnail::v1::Response::new(ContentMetadata::new(), media_content(d)).into())
}

/// `GET /_matrix/key/v2/server`: this server's keys, self-signed.
async fn server_keys(State(s): S) -> ApiResult<get_server_keys::v2::Response> {
    Ok(get_server_keys::v2::Response::new(s.transport.own_server_keys()?).into())
}

async fn notary_batch(
    State(s): S,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> ApiResult<get_remote_server_keys_batch::v2::Response> {
    let mut keys = Vec::new();
    for (server, wanted) in &req.body.server_keys {
        let ids: Vec<String> = wanted.keys().map(|id| id.to_string()).collect();
        // The latest of the validities asked.
        let min_valid = wanted.values().filter_map(|c| c.minimum_valid_until_ts).map(|t| i64::from(t.get())).max();
        match s.transport.notary_keys(server, &ids, min_valid).await {
            Ok(found) => keys.extend(found),
            Err(e) => tracing::info!(%server, error = %e, "notary: no keys"),
        }
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(keys).into())
}

async fn notary_one(
    State(s): S,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> ApiResult<get_remote_server_keys::v2::Response> {
    let min_valid = i64::from(req.body.minimum_valid_until_ts.get());
    Ok(notary_answer(&s, &req.body.server_name, &[], Some(min_valid).filter(|t| *t > 0)).await)
}

/// The notary's answer for one server: its keys, none when they cannot be had.
async fn notary_answer(
    s: &Services,
    server: &ruma::ServerName,
    ids: &[String],
    min_valid: Option<i64>,
) -> crate::ruma_wrapper::RumaResponse<get_remote_server_keys::v2::Response> {
    let keys = s.transport.notary_keys(server, ids, min_valid).await.unwrap_or_default();
    get_remote_server_keys::v2::Response::new(keys).into()
}

/// The notary's older path, naming a key id (deprecated in v1.x, still asked by some
/// servers and Sytest): the key id picks what is answered from what was fetched before; a
/// fetch answers every key of the server.
async fn notary_one_with_key_id(
    State(s): S,
    axum::extract::Path((server_name, key_id)): axum::extract::Path<(String, String)>,
) -> Result<crate::ruma_wrapper::RumaResponse<get_remote_server_keys::v2::Response>, crate::error::ApiError> {
    let server =
        ruma::OwnedServerName::try_from(server_name).map_err(|_| Error::invalid_param("Invalid server name"))?;
    Ok(notary_answer(&s, &server, &[key_id], None).await)
}

async fn version(_: S, _: Ruma<get_server_version::v1::Request>) -> ApiResult<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Diplomatie".into());
    server.version = Some(env!("CARGO_PKG_VERSION").into());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response.into())
}

async fn send_transaction(
    State(s): S,
    req: Ruma<send_transaction_message::v1::Request>,
) -> ApiResult<send_transaction_message::v1::Response> {
    if req.body.origin != req.origin() {
        return Err(Error::forbidden("The transaction's origin is not the server that signed it").into());
    }
    let edus: Vec<Box<RawValue>> = req.body.edus.iter().map(|e| e.json().to_owned()).collect();
    let results =
        s.peers.receive_transaction(req.origin(), req.body.transaction_id.as_str(), &req.body.pdus, &edus).await?;
    Ok(send_transaction_message::v1::Response::new(results).into())
}

async fn make_join(
    State(s): S,
    req: Ruma<prepare_join_event::v1::Request>,
) -> ApiResult<prepare_join_event::v1::Response> {
    let (version, event) = s
        .remote_membership
        .make_membership(req.origin(), &req.body.room_id, &req.body.user_id, MembershipState::Join, Some(&req.body.ver))
        .await?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(version);
    Ok(response.into())
}

async fn send_join(
    State(s): S,
    req: Ruma<create_join_event::v2::Request>,
) -> ApiResult<create_join_event::v2::Response> {
    let b = &req.body;
    let (pdu, state_before, signed) = s
        .remote_membership
        .send_membership_from(req.origin(), &b.room_id, &b.event_id, &b.pdu, MembershipState::Join)
        .await?;
    let state = s.remote_membership.join_response(&b.room_id, &pdu, &state_before, signed).await?;
    Ok(create_join_event::v2::Response::new(state).into())
}

/// `/v1/send_join` and `/v1/send_leave`, which the spec keeps beside their `/v2/` forms (ruma
/// carries only the latter): the same request, answered as `[200, body]`.
async fn send_membership_v1(
    State(s): S,
    axum::extract::Path((room_id, event_id)): axum::extract::Path<(String, String)>,
    request: axum::extract::Request,
) -> Result<axum::Json<serde_json::Value>, crate::error::ApiError> {
    let join = request.uri().path().contains("/send_join/");
    let (parts, bytes) = crate::ruma_wrapper::read_limited_body(request).await?;
    let origin = crate::ruma_wrapper::server_origin(&s, &parts, &bytes).await?;
    let room_id = ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let event_id = ruma::OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event ID"))?;
    let pdu: Box<RawValue> = serde_json::from_slice(&bytes)
        .map_err(|e| Error::new(ruma::api::error::ErrorKind::NotJson, format!("Body is not JSON: {e}")))?;
    if !pdu.get().trim_start().starts_with('{') {
        return Err(Error::bad_json("The event must be a JSON object").into());
    }
    let membership = if join { MembershipState::Join } else { MembershipState::Leave };
    let (event, state_before, signed) =
        s.remote_membership.send_membership_from(&origin, &room_id, &event_id, &pdu, membership).await?;
    let body = if join {
        let state = s.remote_membership.join_response(&room_id, &event, &state_before, signed).await?;
        serde_json::to_value(state).map_err(diplomatie_service::internal!())?
    } else {
        serde_json::json!({})
    };
    Ok(axum::Json(serde_json::json!([200, body])))
}

async fn make_leave(
    State(s): S,
    req: Ruma<prepare_leave_event::v1::Request>,
) -> ApiResult<prepare_leave_event::v1::Response> {
    let (version, event) = s
        .remote_membership
        .make_membership(req.origin(), &req.body.room_id, &req.body.user_id, MembershipState::Leave, None)
        .await?;
    Ok(prepare_leave_event::v1::Response::new(Some(version), event).into())
}

async fn send_leave(
    State(s): S,
    req: Ruma<create_leave_event::v2::Request>,
) -> ApiResult<create_leave_event::v2::Response> {
    let b = &req.body;
    s.remote_membership
        .send_membership_from(req.origin(), &b.room_id, &b.event_id, &b.pdu, MembershipState::Leave)
        .await?;
    Ok(create_leave_event::v2::Response::new().into())
}

async fn make_knock(
    State(s): S,
    req: Ruma<prepare_knock_event::v1::Request>,
) -> ApiResult<prepare_knock_event::v1::Response> {
    let (version, event) = s
        .remote_membership
        .make_membership(
            req.origin(),
            &req.body.room_id,
            &req.body.user_id,
            MembershipState::Knock,
            Some(&req.body.ver),
        )
        .await?;
    Ok(prepare_knock_event::v1::Response::new(version, event).into())
}

async fn send_knock(
    State(s): S,
    req: Ruma<create_knock_event::v1::Request>,
) -> ApiResult<create_knock_event::v1::Response> {
    let b = &req.body;
    let (pdu, _, _) = s
        .remote_membership
        .send_membership_from(req.origin(), &b.room_id, &b.event_id, &b.pdu, MembershipState::Knock)
        .await?;
    let shown = s.remote_membership.state_shown_before_joining(&b.room_id, &pdu.sender).await?;
    Ok(create_knock_event::v1::Response::new(shown).into())
}

async fn invite(State(s): S, req: Ruma<create_invite::v2::Request>) -> ApiResult<create_invite::v2::Response> {
    let b = &req.body;
    let signed = s
        .remote_membership
        .receive_invite(req.origin(), &b.room_id, &b.event_id, &b.room_version, &b.event, &b.invite_room_state)
        .await?;
    Ok(create_invite::v2::Response::new(signed).into())
}

/// The deprecated `/v1/invite`: the event is the body, of a room of version 1 or 2 (the API
/// names none; the spec's v1 invite predates room versions), answered in the v1 array form.
/// Read by hand: ruma's type wants fields older servers' events do not all carry (`origin`).
async fn invite_v1(
    State(s): S,
    axum::extract::Path((room_id, event_id)): axum::extract::Path<(String, String)>,
    request: axum::extract::Request,
) -> Result<axum::Json<serde_json::Value>, crate::error::ApiError> {
    let (parts, bytes) = crate::ruma_wrapper::read_limited_body(request).await?;
    let origin = crate::ruma_wrapper::server_origin(&s, &parts, &bytes).await?;
    let room_id = ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let event_id = ruma::OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event ID"))?;
    let event = crate::ruma_wrapper::object_body(&bytes)?;
    let invite_state: Vec<ruma::api::federation::membership::RawStrippedState> =
        match event.get("unsigned").and_then(|u| u.get("invite_room_state")) {
            Some(state) => serde_json::from_value(state.clone())
                .map_err(|e| Error::bad_json(format!("Invalid invite_room_state: {e}")))?,
            None => Vec::new(),
        };
    let raw = serde_json::value::to_raw_value(&event).map_err(|e| Error::bad_json(e.to_string()))?;
    let signed = s
        .remote_membership
        .receive_invite(&origin, &room_id, &event_id, &ruma::RoomVersionId::V1, &raw, &invite_state)
        .await?;
    let signed: serde_json::Value = serde_json::from_str(signed.get()).map_err(diplomatie_service::internal!())?;
    Ok(axum::Json(serde_json::json!([200, { "event": signed }])))
}

async fn event(State(s): S, req: Ruma<get_event::v1::Request>) -> ApiResult<get_event::v1::Response> {
    let pdu = s.federation.event_for_server(req.origin(), &req.body.event_id).await?;
    let response = get_event::v1::Response::new(
        s.server_name().to_owned(),
        MilliSecondsSinceUnixEpoch::now(),
        federation_json(&pdu)?,
    );
    Ok(response.into())
}

/// `PUT /3pid/onbind`, from an identity server (unauthenticated: each invite carries the
/// identity server's signature, which the authorisation rules check).
async fn on_bind(State(s): S, req: Ruma<bind_callback::v1::Request>) -> ApiResult<bind_callback::v1::Response> {
    let invites: Vec<_> = req
        .body
        .invites
        .iter()
        .filter_map(|i| {
            let signed = serde_json::from_str(i.signed.json().get()).ok()?;
            Some((i.room_id.clone(), i.sender.clone(), signed))
        })
        .collect();
    s.membership.on_bind(&req.body.mxid, &invites).await?;
    Ok(bind_callback::v1::Response::new().into())
}

#[derive(serde::Deserialize)]
struct OnBind {
    mxid: ruma::OwnedUserId,
    #[serde(default)]
    invites: Vec<OnBindInvite>,
}

#[derive(serde::Deserialize)]
struct OnBindInvite {
    room_id: ruma::OwnedRoomId,
    sender: ruma::OwnedUserId,
    signed: serde_json::Value,
}

/// `POST /3pid/onbind`, as Sydent sends it.
async fn on_bind_post(
    State(s): S,
    body: axum::body::Bytes,
) -> Result<axum::Json<serde_json::Map<String, serde_json::Value>>, crate::error::ApiError> {
    let body: OnBind = crate::admin::parse_body(&body)?;
    let invites: Vec<_> = body.invites.into_iter().map(|i| (i.room_id, i.sender, i.signed)).collect();
    s.membership.on_bind(&body.mxid, &invites).await?;
    Ok(axum::Json(serde_json::Map::new()))
}

/// `PUT /exchange_third_party_invite/{roomId}`: another server's user bound an address one of
/// ours invited; the member event is ours to send.
async fn exchange_third_party_invite(
    State(s): S,
    req: Ruma<exchange_invite::v1::Request>,
) -> ApiResult<exchange_invite::v1::Response> {
    let b = &req.body;
    if b.state_key.server_name() != req.origin() {
        return Err(Error::forbidden("The invited user is not of the asking server").into());
    }
    let content: serde_json::Value =
        serde_json::from_str(b.content.json().get()).map_err(|_| Error::bad_json("Invalid content"))?;
    let signed = content
        .get("third_party_invite")
        .and_then(|t| t.get("signed"))
        .ok_or_else(|| Error::bad_json("content.third_party_invite.signed is missing"))?;
    s.membership.exchange_third_party_invite(&b.room_id, &b.sender, &b.state_key, signed).await?;
    Ok(exchange_invite::v1::Response::new().into())
}

async fn timestamp_to_event(
    State(s): S,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> ApiResult<get_event_by_timestamp::v1::Response> {
    let b = &req.body;
    s.federation.check_origin_may_read(&b.room_id, req.origin()).await?;
    let forward = b.dir == ruma::api::Direction::Forward;
    let found = s.federation.event_at_timestamp(&b.room_id, i64::from(b.ts.get()), forward, i64::MAX).await?;
    let (event_id, ts) = found.ok_or_else(|| Error::not_found("No event found at that time"))?;
    let ts = MilliSecondsSinceUnixEpoch(ruma::UInt::try_from(ts).unwrap_or_default());
    Ok(get_event_by_timestamp::v1::Response::new(event_id, ts).into())
}

async fn state_ids(
    State(s): S,
    req: Ruma<get_room_state_ids::v1::Request>,
) -> ApiResult<get_room_state_ids::v1::Response> {
    s.federation.check_origin_may_read(&req.body.room_id, req.origin()).await?;
    let state = s.federation.state_before_event(&req.body.room_id, &req.body.event_id).await?;
    let ids: Vec<_> = state.values().cloned().collect();
    let chain = s.rooms.auth_chain_events(&ids).await?.iter().map(|p| p.event_id.clone()).collect();
    Ok(get_room_state_ids::v1::Response::new(chain, ids).into())
}

async fn state(State(s): S, req: Ruma<get_room_state::v1::Request>) -> ApiResult<get_room_state::v1::Response> {
    s.federation.check_origin_may_read(&req.body.room_id, req.origin()).await?;
    let state = s.federation.state_before_event(&req.body.room_id, &req.body.event_id).await?;
    let ids: Vec<_> = state.values().cloned().collect();
    let mut pdus = Vec::new();
    for id in &ids {
        if let Some(p) = s.rooms.get_pdu(id).await? {
            pdus.push(federation_json(&p)?);
        }
    }
    let chain = s.rooms.auth_chain_events(&ids).await?.iter().map(|p| federation_json(p)).collect::<Result<_, _>>()?;
    Ok(get_room_state::v1::Response::new(chain, pdus).into())
}

async fn event_auth(
    State(s): S,
    req: Ruma<get_event_authorization::v1::Request>,
) -> ApiResult<get_event_authorization::v1::Response> {
    s.federation.check_origin_may_read(&req.body.room_id, req.origin()).await?;
    let chain = s.rooms.auth_chain_events(std::slice::from_ref(&req.body.event_id)).await?;
    let chain = chain.iter().map(|p| federation_json(p)).collect::<Result<_, _>>()?;
    Ok(get_event_authorization::v1::Response::new(chain).into())
}

async fn backfill(State(s): S, req: Ruma<get_backfill::v1::Request>) -> ApiResult<get_backfill::v1::Response> {
    s.federation.check_origin_may_read(&req.body.room_id, req.origin()).await?;
    let limit = u64::from(req.body.limit).min(100) as usize;
    let events = s.federation.backfill_events(&req.body.room_id, &req.body.v, limit).await?;
    let pdus = events.iter().map(|p| federation_json(p)).collect::<Result<_, _>>()?;
    Ok(get_backfill::v1::Response::new(s.server_name().to_owned(), MilliSecondsSinceUnixEpoch::now(), pdus).into())
}

/// The body of `get_missing_events`, read by hand: as Synapse, a body without
/// `earliest_events` or `latest_events` asks for nothing rather than being refused (the
/// server ACL is checked first either way).
#[derive(serde::Deserialize)]
struct MissingEventsBody {
    #[serde(default)]
    earliest_events: Vec<ruma::OwnedEventId>,
    #[serde(default)]
    latest_events: Vec<ruma::OwnedEventId>,
    #[serde(default = "default_missing_limit")]
    limit: u64,
    #[serde(default)]
    min_depth: u64,
}

fn default_missing_limit() -> u64 {
    10
}

/// `POST /get_missing_events/{roomId}`.
async fn missing_events(
    State(s): S,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    request: axum::extract::Request,
) -> Result<axum::Json<serde_json::Value>, crate::error::ApiError> {
    let (parts, bytes) = crate::ruma_wrapper::read_limited_body(request).await?;
    let origin = crate::ruma_wrapper::server_origin(&s, &parts, &bytes).await?;
    let room_id = ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    s.federation.check_origin_may_read(&room_id, &origin).await?;
    let body = crate::ruma_wrapper::object_body(&bytes)?;
    let b: MissingEventsBody = serde_json::from_value(body).map_err(|e| Error::bad_json(e.to_string()))?;
    let limit = b.limit.min(100) as usize;
    let events =
        s.federation.missing_events(&room_id, &b.earliest_events, &b.latest_events, limit, b.min_depth).await?;
    let pdus: Vec<_> = events.iter().map(|p| federation_json(p)).collect::<Result<_, _>>()?;
    Ok(axum::Json(serde_json::json!({ "events": pdus })))
}

async fn query_profile(
    State(s): S,
    req: Ruma<get_profile_information::v1::Request>,
) -> ApiResult<get_profile_information::v1::Response> {
    let user = &req.body.user_id;
    if user.server_name() != s.server_name() {
        return Err(Error::invalid_param("Not a user of this server").into());
    }
    let (displayname, avatar_url) = s.accounts.profile(user).await?;
    let mut answer = get_profile_information::v1::Response::new();
    for (field, value) in [("displayname", displayname), ("avatar_url", avatar_url)] {
        let wanted = req.body.field.as_ref().is_none_or(|f| f.as_str() == field);
        if let Some(v) = value.filter(|_| wanted) {
            answer.set(field.into(), v.into());
        }
    }
    Ok(answer.into())
}

async fn query_directory(
    State(s): S,
    req: Ruma<get_room_information::v1::Request>,
) -> ApiResult<get_room_information::v1::Response> {
    let alias = &req.body.room_alias;
    if alias.server_name() != s.server_name() {
        return Err(Error::not_found("Not an alias of this server").into());
    }
    let room_id = s.directory.alias_target(alias).await?.ok_or_else(|| Error::not_found("Room alias not found"))?;
    let servers: Vec<OwnedServerName> = s.rooms.servers_in_room(&room_id).await?;
    Ok(get_room_information::v1::Response::new(room_id, servers).into())
}

async fn keys_query(State(s): S, req: Ruma<get_keys::v1::Request>) -> ApiResult<get_keys::v1::Response> {
    Ok(s.peers.federation_query_keys(&req.body.device_keys).await?.into())
}

async fn keys_claim(State(s): S, req: Ruma<claim_keys::v1::Request>) -> ApiResult<claim_keys::v1::Response> {
    let requested = req
        .body
        .one_time_keys
        .iter()
        .map(|(u, d)| (u.clone(), d.iter().map(|(dev, alg)| (dev.to_string(), alg.to_string())).collect()))
        .collect();
    Ok(s.peers.federation_claim_keys(&requested).await?.into())
}

async fn user_devices(State(s): S, req: Ruma<get_devices::v1::Request>) -> ApiResult<get_devices::v1::Response> {
    Ok(s.peers.federation_user_devices(&req.body.user_id).await?.into())
}

/// This server's public rooms, for another server's users.
async fn public_rooms(
    State(s): S,
    req: Ruma<get_public_rooms::v1::Request>,
) -> ApiResult<get_public_rooms::v1::Response> {
    let limit = req.body.limit.map(|l| u64::from(l) as usize);
    let networks = crate::client::rooms::networks(&req.body.room_network);
    let page = s.directory.public_rooms(networks, None, req.body.since.as_deref(), limit).await?;
    Ok(crate::client::rooms::rooms_page!(page, |chunk| {
        let mut r = get_public_rooms::v1::Response::new();
        r.chunk = chunk;
        r
    })
    .into())
}

async fn public_rooms_filtered(
    State(s): S,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> ApiResult<get_public_rooms_filtered::v1::Response> {
    let b = &req.body;
    let limit = b.limit.map(|l| u64::from(l) as usize);
    let networks = crate::client::rooms::networks(&b.room_network);
    let term = b.filter.generic_search_term.as_deref();
    let page = s.directory.public_rooms(networks, term, b.since.as_deref(), limit).await?;
    Ok(crate::client::rooms::rooms_page!(page, |chunk| {
        let mut r = get_public_rooms_filtered::v1::Response::new();
        r.chunk = chunk;
        r
    })
    .into())
}

/// `openid/userinfo`: a third party asks whose OpenID token it holds (no server signature).
/// Read by hand: a request without the token is unauthorised (401), not malformed.
async fn openid_userinfo(State(s): S, parts: http::request::Parts) -> ApiResult<get_openid_userinfo::v1::Response> {
    let token = crate::ruma_wrapper::access_token(&parts)
        .ok_or_else(|| Error::new(ruma::api::error::ErrorKind::MissingToken, "Missing the OpenID access token"))?;
    Ok(get_openid_userinfo::v1::Response::new(s.openid.userinfo(&token)?).into())
}

async fn hierarchy(State(s): S, req: Ruma<get_hierarchy::v1::Request>) -> ApiResult<get_hierarchy::v1::Response> {
    Ok(s.directory.federation_hierarchy(req.origin(), &req.body.room_id, req.body.suggested_only).await?.into())
}
