//! Rooms: creation, membership, state, aliases, the room directory and the user directory
//! (client-server spec, "Rooms", "Room Membership", "Room Directory", "User Directory").

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::request::Parts,
    Json,
};
use diplomatie_service::{rooms::directory::Networks, Error, Services};
use ruma::api::client::{
    alias::{create_alias, delete_alias, get_alias},
    directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
    knock::knock_room,
    membership::{
        ban_user, forget_room, get_member_events, get_mutual_rooms, invite_user, join_room_by_id,
        join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room, unban_user,
    },
    room::{aliases, create_room, upgrade_room, Visibility},
    state::{get_state_event_for_key, get_state_events, send_state_event},
    user_directory::search_users,
};
use ruma::events::room::member::MembershipState;
use ruma::{OwnedRoomId, OwnedRoomOrAliasId};
use serde_json::{json, Value};

use crate::{
    error::ApiError,
    ruma_wrapper::{authenticate, object_body, ApiResult, Ruma, RumaResponse},
};

type S = State<Arc<Services>>;

pub async fn create_room(State(s): S, req: Ruma<create_room::v3::Request>) -> ApiResult<create_room::v3::Response> {
    let user = req.caller().user_id.clone();
    // Invites by address (`invite_3pid`) go once the room exists; what they name is checked
    // before it is created.
    let by_address = req.body.invite_3pid.clone();
    for invite in &by_address {
        diplomatie_service::rooms::third_party::check_medium(invite.medium.as_str())?;
    }
    // Spawned: a client that disconnects must not interrupt the room's creation half-way
    // between its commit and the update of the caches.
    let task = tokio::spawn(async move {
        let room_id = s.membership.create_room(&user, req.body).await?;
        for invite in &by_address {
            let invite = diplomatie_service::rooms::third_party::AddressInvite {
                id_server: &invite.id_server,
                id_access_token: &invite.id_access_token,
                medium: invite.medium.as_str(),
                address: &invite.address,
            };
            s.membership.invite_by_address(&user, &room_id, invite).await?;
        }
        Ok::<_, Error>(room_id)
    });
    let room_id = task.await.map_err(diplomatie_service::internal!())??;
    Ok(create_room::v3::Response::new(room_id).into())
}

pub async fn join_by_id(
    State(s): S,
    req: Ruma<join_room_by_id::v3::Request>,
) -> ApiResult<join_room_by_id::v3::Response> {
    let user = req.caller().user_id.clone();
    let room_id = s.membership.join_via(&user, &req.body.room_id, join_content(&req.json), &[]).await?;
    follow_predecessor(&s, &user, &room_id).await;
    Ok(join_room_by_id::v3::Response::new(room_id).into())
}

/// Joining a room that replaced another (an upgrade) carries over what the user set for the
/// old one. A failure there does not undo the join.
async fn follow_predecessor(s: &Services, user: &ruma::UserId, room_id: &ruma::RoomId) {
    let create = s.rooms.state_event(room_id, &ruma::events::StateEventType::RoomCreate, "").await;
    let predecessor = create.ok().flatten().and_then(|c| {
        let old = c.content_value().get("predecessor")?.get("room_id")?.as_str()?.to_owned();
        ruma::OwnedRoomId::try_from(old).ok()
    });
    if let Some(old) = predecessor {
        if let Err(e) = s.push.follow_upgrade(user, &old, room_id).await {
            tracing::warn!(%user, %room_id, error = %e, "could not carry over the old room's settings");
        }
    }
}

/// `POST /rooms/{roomId}/upgrade`, read by hand: a version ruma cannot even read is one this
/// server does not support (`M_UNSUPPORTED_ROOM_VERSION`), not a bad request.
pub async fn upgrade(
    State(s): S,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    parts: http::request::Parts,
    body: axum::body::Bytes,
) -> Result<crate::ruma_wrapper::RumaResponse<upgrade_room::v3::Response>, crate::error::ApiError> {
    let caller = crate::ruma_wrapper::authenticate(&s, &parts).await?;
    let room_id = ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let body = crate::ruma_wrapper::object_body(&body)?;
    let version = match body.get("new_version") {
        Some(Value::String(v)) => ruma::RoomVersionId::try_from(v.as_str()).map_err(|_| {
            Error::new(
                ruma::api::error::ErrorKind::UnsupportedRoomVersion,
                format!("Room version {v} is not supported"),
            )
        })?,
        Some(_) => return Err(Error::bad_json("new_version must be a string").into()),
        None => return Err(Error::missing_param("Missing new_version").into()),
    };
    let user = &caller.user_id;
    let new = s.membership.upgrade_room(user, &room_id, &version).await?;
    follow_predecessor(&s, user, &new).await;
    Ok(upgrade_room::v3::Response::new(new).into())
}

/// What a join request's body asks to put in the member event: its keys but the request's own
/// (`third_party_signed`), as Synapse takes them.
fn join_content(json: &Option<Value>) -> serde_json::Map<String, Value> {
    let mut content = json.as_ref().and_then(Value::as_object).cloned().unwrap_or_default();
    content.remove("third_party_signed");
    if content.get("reason").is_some_and(|r| !r.is_string()) {
        content.remove("reason");
    }
    content
}

pub async fn join_by_id_or_alias(
    State(s): S,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> ApiResult<join_room_by_id_or_alias::v3::Response> {
    let (room_id, mut servers) = s.membership.resolve_room_and_servers(&req.body.room_id_or_alias).await?;
    servers.extend(req.body.via.iter().cloned());
    let user = req.caller().user_id.clone();
    let room_id = s.membership.join_via(&user, &room_id, join_content(&req.json), &servers).await?;
    follow_predecessor(&s, &user, &room_id).await;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id).into())
}

pub async fn knock(State(s): S, req: Ruma<knock_room::v3::Request>) -> ApiResult<knock_room::v3::Response> {
    let (room_id, mut servers) = s.membership.resolve_room_and_servers(&req.body.room_id_or_alias).await?;
    servers.extend(req.body.via.iter().cloned());
    let user = req.caller().user_id.clone();
    let room_id = s.membership.knock_via(&user, &room_id, req.body.reason, &servers).await?;
    Ok(knock_room::v3::Response::new(room_id).into())
}

pub async fn invite(State(s): S, req: Ruma<invite_user::v3::Request>) -> ApiResult<invite_user::v3::Response> {
    let recipient = match &req.body.recipient {
        invite_user::v3::InvitationRecipient::UserId(recipient) => recipient,
        invite_user::v3::InvitationRecipient::ThirdPartyId(invite) => {
            let invite = diplomatie_service::rooms::third_party::AddressInvite {
                id_server: &invite.id_server,
                id_access_token: &invite.id_access_token,
                medium: invite.medium.as_str(),
                address: &invite.address,
            };
            s.membership.invite_by_address(&req.caller().user_id, &req.body.room_id, invite).await?;
            return Ok(invite_user::v3::Response::new().into());
        }
        _ => return Err(Error::bad_json("Unknown kind of invitation").into()),
    };
    let is_direct = req.json.as_ref().and_then(|j| j.get("is_direct")).and_then(Value::as_bool).unwrap_or(false);
    s.organisation
        .invite_approving_knock(
            &req.caller().user_id,
            &req.body.room_id,
            &recipient.user_id,
            recipient.reason.clone(),
            is_direct,
        )
        .await?;
    Ok(invite_user::v3::Response::new().into())
}

pub async fn leave(State(s): S, req: Ruma<leave_room::v3::Request>) -> ApiResult<leave_room::v3::Response> {
    let user = req.caller().user_id.clone();
    s.membership.leave(&user, &req.body.room_id, req.body.reason).await?;
    Ok(leave_room::v3::Response::new().into())
}

pub async fn forget(State(s): S, req: Ruma<forget_room::v3::Request>) -> ApiResult<forget_room::v3::Response> {
    s.membership.forget(&req.caller().user_id, &req.body.room_id).await?;
    Ok(forget_room::v3::Response::new().into())
}

pub async fn kick(State(s): S, req: Ruma<kick_user::v3::Request>) -> ApiResult<kick_user::v3::Response> {
    let user = req.caller().user_id.clone();
    s.membership
        .set_membership_of(&user, &req.body.room_id, &req.body.user_id, MembershipState::Leave, req.body.reason)
        .await?;
    Ok(kick_user::v3::Response::new().into())
}

pub async fn ban(State(s): S, req: Ruma<ban_user::v3::Request>) -> ApiResult<ban_user::v3::Response> {
    let user = req.caller().user_id.clone();
    s.membership
        .set_membership_of(&user, &req.body.room_id, &req.body.user_id, MembershipState::Ban, req.body.reason)
        .await?;
    Ok(ban_user::v3::Response::new().into())
}

pub async fn unban(State(s): S, req: Ruma<unban_user::v3::Request>) -> ApiResult<unban_user::v3::Response> {
    let user = req.caller().user_id.clone();
    s.membership.unban(&user, &req.body.room_id, &req.body.user_id, req.body.reason).await?;
    Ok(unban_user::v3::Response::new().into())
}

pub async fn joined_rooms(State(s): S, req: Ruma<joined_rooms::v3::Request>) -> ApiResult<joined_rooms::v3::Response> {
    let rooms = diplomatie_service::rooms::joined_rooms(&s, &req.caller().user_id).await?;
    Ok(joined_rooms::v3::Response::new(rooms).into())
}

/// How many shared rooms a page of `/mutual_rooms` gives.
const MUTUAL_ROOMS_PAGE: usize = 100;

/// A page of the rooms the caller shares with a user, from `from` (an offset in the sorted list).
async fn mutual_rooms_page(
    s: &Services,
    caller: &ruma::UserId,
    other: &ruma::UserId,
    from: Option<&str>,
) -> Result<(usize, Vec<ruma::OwnedRoomId>, Option<String>), Error> {
    let shared = s.rooms.mutual_rooms(caller, other).await?;
    let start = match from {
        Some(f) => f.parse::<usize>().map_err(|_| Error::invalid_param("Invalid from token"))?,
        None => 0,
    };
    let end = (start + MUTUAL_ROOMS_PAGE).min(shared.len());
    let next = (end < shared.len()).then(|| end.to_string());
    let page = shared.get(start..end).map(<[_]>::to_vec).unwrap_or_default();
    Ok((shared.len(), page, next))
}

/// `GET /v1/mutual_rooms?user_id=` (spec 1.19, MSC2666).
pub async fn mutual_rooms(
    State(s): S,
    req: Ruma<get_mutual_rooms::v1::Request>,
) -> ApiResult<get_mutual_rooms::v1::Response> {
    let (count, joined, next) =
        mutual_rooms_page(&s, &req.caller().user_id, &req.body.user_id, req.body.from.as_deref()).await?;
    let mut response = get_mutual_rooms::v1::Response::new(ruma::UInt::try_from(count).unwrap_or_default(), joined);
    response.next_batch = next;
    Ok(response.into())
}

/// MSC2666's unstable endpoint, which clients still use.
pub async fn mutual_rooms_unstable(
    State(s): S,
    req: Ruma<get_mutual_rooms::unstable::Request>,
) -> ApiResult<get_mutual_rooms::unstable::Response> {
    let (_, joined, next) =
        mutual_rooms_page(&s, &req.caller().user_id, &req.body.user_id, req.body.from.as_deref()).await?;
    let mut response = get_mutual_rooms::unstable::Response::new(joined);
    response.next_batch = next;
    Ok(response.into())
}

/// `GET /rooms/{roomId}/members`: member events, as far as the caller reads the room, filtered.
pub async fn members(
    State(s): S,
    req: Ruma<get_member_events::v3::Request>,
) -> ApiResult<get_member_events::v3::Response> {
    let b = &req.body;
    let chunk = s
        .rooms
        .members_for(&req.caller().user_id, &b.room_id, b.membership.as_ref(), b.not_membership.as_ref())
        .await?;
    Ok(get_member_events::v3::Response::new(chunk.iter().map(|p| p.to_raw(true)).collect()).into())
}

/// `GET /rooms/{roomId}/joined_members`: each member's display name and avatar, `null` when
/// unset (as Synapse answers; ruma's type would leave the key out).
pub async fn joined_members(
    State(s): S,
    req: Ruma<joined_members::v3::Request>,
) -> Result<axum::Json<JoinedMembers>, crate::error::ApiError> {
    let joined = s.rooms.joined_profiles(&req.caller().user_id, &req.body.room_id).await?;
    let joined = joined
        .into_iter()
        .map(|(user, m)| (user, JoinedMember { display_name: m.display_name, avatar_url: m.avatar_url }))
        .collect();
    Ok(axum::Json(JoinedMembers { joined }))
}

#[derive(serde::Serialize)]
pub struct JoinedMembers {
    joined: std::collections::BTreeMap<ruma::OwnedUserId, JoinedMember>,
}

#[derive(serde::Serialize)]
pub struct JoinedMember {
    display_name: Option<String>,
    avatar_url: Option<ruma::OwnedMxcUri>,
}

/// `GET /rooms/{roomId}/state`
pub async fn state(State(s): S, req: Ruma<get_state_events::v3::Request>) -> ApiResult<get_state_events::v3::Response> {
    let events = s.rooms.state_for(&req.caller().user_id, &req.body.room_id).await?;
    Ok(get_state_events::v3::Response::new(events.iter().map(|p| p.to_raw(true)).collect()).into())
}

/// `GET /rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn state_event(
    State(s): S,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> ApiResult<get_state_event_for_key::v3::Response> {
    let user = &req.caller().user_id;
    let until = s.rooms.readable_until(user, &req.body.room_id).await?;
    let state = s.rooms.state_at_position(&req.body.room_id, until).await?;
    let pdu = s
        .rooms
        .state_event_in(&state, &req.body.event_type, &req.body.state_key)
        .await?
        .ok_or_else(|| Error::not_found("State event not found"))?;
    let full = matches!(req.body.format, get_state_event_for_key::v3::StateEventFormat::Event);
    let body = if full { pdu.to_raw::<ruma::events::AnyStateEvent>(true).into_json() } else { pdu.content.clone() };
    Ok(get_state_event_for_key::v3::Response::new(body).into())
}

/// `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`, and with `?org.matrix.msc4140.delay=`
/// a delayed state event (MSC4140's first form).
pub async fn send_state(
    State(s): S,
    uri: http::Uri,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let content: Value =
        serde_json::from_str(req.body.body.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    let event_type = req.body.event_type.to_string();
    if let Some(delay_ms) = super::voip::asked_delay(&uri)? {
        let caller = req.caller();
        let schedule = diplomatie_service::delayed::Schedule {
            room_id: &req.body.room_id,
            event_type: &event_type,
            state_key: Some(&req.body.state_key),
            content,
            delay_ms,
            txn_id: None,
        };
        let id = s.delayed.schedule(&caller.user_id, &caller.device_id, schedule).await?;
        return Ok(super::voip::delayed_answer(id));
    }
    let sender = &req.caller().user_id;
    let id = if event_type == "m.room.member" && req.body.state_key != sender.as_str() {
        s.membership.set_member_state(sender, &req.body.room_id, &req.body.state_key, &content).await?
    } else {
        s.timeline.send_state(sender, &req.body.room_id, &event_type, &req.body.state_key, content.clone()).await?
    };
    if event_type == "m.room.guest_access" && content["guest_access"] != "can_join" {
        // Guests leave the rooms they may no longer join, as Synapse has them do.
        s.rooms.remove_guests(&req.body.room_id).await?;
    }
    Ok(RumaResponse(send_state_event::v3::Response::new(id)).into_response())
}

pub async fn room_aliases(State(s): S, req: Ruma<aliases::v3::Request>) -> ApiResult<aliases::v3::Response> {
    let aliases = s.directory.room_aliases(&req.caller().user_id, &req.body.room_id).await?;
    Ok(aliases::v3::Response::new(aliases).into())
}

pub async fn get_alias(State(s): S, req: Ruma<get_alias::v3::Request>) -> ApiResult<get_alias::v3::Response> {
    let (room_id, servers) = s.directory.lookup_alias(&req.body.room_alias).await?;
    Ok(get_alias::v3::Response::new(room_id, servers).into())
}

pub async fn create_alias(State(s): S, req: Ruma<create_alias::v3::Request>) -> ApiResult<create_alias::v3::Response> {
    let caller = req.caller();
    s.directory
        .create_alias(&caller.user_id, caller.appservice.as_deref(), &req.body.room_alias, &req.body.room_id)
        .await?;
    Ok(create_alias::v3::Response::new().into())
}

pub async fn delete_alias(State(s): S, req: Ruma<delete_alias::v3::Request>) -> ApiResult<delete_alias::v3::Response> {
    s.directory.delete_alias(&req.caller().user_id, &req.body.room_alias).await?;
    Ok(delete_alias::v3::Response::new().into())
}

pub async fn room_visibility(
    State(s): S,
    req: Ruma<get_room_visibility::v3::Request>,
) -> ApiResult<get_room_visibility::v3::Response> {
    let public = s.directory.room_is_public(&req.body.room_id).await?;
    Ok(get_room_visibility::v3::Response::new(if public { Visibility::Public } else { Visibility::Private }).into())
}

pub async fn set_visibility(
    State(s): S,
    req: Ruma<set_room_visibility::v3::Request>,
) -> ApiResult<set_room_visibility::v3::Response> {
    s.directory
        .set_room_visibility(&req.caller().user_id, &req.body.room_id, req.body.visibility == Visibility::Public)
        .await?;
    Ok(set_room_visibility::v3::Response::new().into())
}

/// A page of a room directory as a response type (client or federation) carries it: `$new`
/// makes the response from the page's rooms.
macro_rules! rooms_page {
    ($page:expr, $new:expr) => {{
        let page: diplomatie_service::rooms::directory::RoomsPage = $page;
        let mut response = $new(page.chunk);
        response.next_batch = page.next_batch;
        response.prev_batch = page.prev_batch;
        response.total_room_count_estimate = page.total_room_count_estimate;
        response
    }};
}
pub(crate) use rooms_page;

/// Another server's public room directory, asked over federation.
fn remote(s: &Services, server: Option<&ruma::ServerName>) -> Option<ruma::OwnedServerName> {
    server.filter(|name| *name != s.server_name()).map(|n| n.to_owned())
}

/// The lists of the room directory a request asks for: the server's (by default), every list,
/// or one application service's network.
pub(crate) fn networks(network: &ruma::directory::RoomNetwork) -> Networks<'_> {
    match network {
        ruma::directory::RoomNetwork::All => Networks::All,
        ruma::directory::RoomNetwork::ThirdParty(id) => Networks::Instance(id),
        _ => Networks::Matrix,
    }
}

/// `GET /publicRooms`
pub async fn public_rooms(
    State(s): S,
    req: Ruma<get_public_rooms::v3::Request>,
) -> ApiResult<get_public_rooms::v3::Response> {
    let limit = req.body.limit.map(|l| u64::from(l) as usize);
    let page = match remote(&s, req.body.server.as_deref()) {
        Some(server) => {
            s.federation.remote_public_rooms(&server, None, req.body.since.clone(), req.body.limit).await?.into()
        }
        None => s.directory.public_rooms(Networks::Matrix, None, req.body.since.as_deref(), limit).await?,
    };
    Ok(rooms_page!(page, get_public_rooms::v3::Response::new).into())
}

/// `POST /publicRooms` with a search filter.
pub async fn public_rooms_filtered(
    State(s): S,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> ApiResult<get_public_rooms_filtered::v3::Response> {
    let limit = req.body.limit.map(|l| u64::from(l) as usize);
    let term = req.body.filter.generic_search_term.clone();
    let page = match remote(&s, req.body.server.as_deref()) {
        Some(server) => {
            s.federation.remote_public_rooms(&server, term, req.body.since.clone(), req.body.limit).await?.into()
        }
        None => {
            let networks = networks(&req.body.room_network);
            s.directory.public_rooms(networks, term.as_deref(), req.body.since.as_deref(), limit).await?
        }
    };
    Ok(rooms_page!(page, |chunk| {
        let mut r = get_public_rooms_filtered::v3::Response::new();
        r.chunk = chunk;
        r
    })
    .into())
}

/// `POST /user_directory/search`
pub async fn search_users(State(s): S, req: Ruma<search_users::v3::Request>) -> ApiResult<search_users::v3::Response> {
    let (results, limited) = s
        .directory
        .search_users(&req.caller().user_id, &req.body.search_term, u64::from(req.body.limit) as usize)
        .await?;
    Ok(search_users::v3::Response::new(results, limited).into())
}

/// `GET /room_summary/{roomIdOrAlias}` (MSC3266): a room's preview before joining.
pub async fn room_summary(
    State(s): S,
    req: Ruma<ruma::api::client::room::get_summary::v1::Request>,
) -> ApiResult<ruma::api::client::room::get_summary::v1::Response> {
    let (room_id, mut servers) = s.membership.resolve_room_and_servers(&req.body.room_id_or_alias).await?;
    servers.extend(req.body.via.iter().cloned());
    let user = req.caller.as_ref().map(|c| &*c.user_id);
    let (summary, membership) = s.directory.room_preview(user, &room_id, &servers).await?;
    let mut answer = ruma::api::client::room::get_summary::v1::Response::new(summary);
    answer.membership = membership;
    Ok(answer.into())
}

/// `GET /rooms/{roomId}/hierarchy` (client-server spec, "Spaces").
pub async fn hierarchy(
    State(s): S,
    req: Ruma<ruma::api::client::space::get_hierarchy::v1::Request>,
) -> ApiResult<ruma::api::client::space::get_hierarchy::v1::Response> {
    use diplomatie_service::rooms::spaces::HierarchyRequest;
    let b = &req.body;
    let as_usize = |v: Option<ruma::UInt>| v.map(|v| u64::from(v).min(usize::MAX as u64) as usize);
    let page = s
        .directory
        .hierarchy(
            &req.caller().user_id,
            &b.room_id,
            HierarchyRequest {
                from: b.from.as_deref(),
                limit: as_usize(b.limit),
                max_depth: as_usize(b.max_depth),
                suggested_only: b.suggested_only,
            },
        )
        .await?;
    let mut body = ruma::api::client::space::get_hierarchy::v1::Response::new();
    body.rooms = page.rooms;
    body.next_batch = page.next_batch;
    Ok(body.into())
}

/// The caller of `/peek` or `/unpeek`, whose body, if any, must be a JSON object (MSC2753
/// gives it no field this server reads).
async fn peek_caller(
    s: &Services,
    parts: &Parts,
    body: &[u8],
) -> Result<diplomatie_service::accounts::Caller, ApiError> {
    let caller = authenticate(s, parts).await?;
    if !body.is_empty() {
        object_body(body)?;
    }
    Ok(caller)
}

/// `POST /peek/{roomIdOrAlias}` (MSC2753): the caller's device follows a world-readable room
/// without joining it (its `/sync` shows the room under `rooms.peek`); `{"room_id": ...}`.
/// MSC2753 has no typed request in ruma: read by hand.
pub async fn peek(
    State(s): S,
    Path(room): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = peek_caller(&s, &parts, &body).await?;
    let room = OwnedRoomOrAliasId::try_from(room).map_err(|_| Error::invalid_param("Not a room id or alias"))?;
    let (room_id, _) = s.membership.resolve_room_and_servers(&room).await?;
    s.peeks.peek(&caller.user_id, caller.device_id.as_str(), &room_id, true).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /rooms/{roomId}/unpeek` (MSC2753): the caller's device no longer follows the room.
pub async fn unpeek(
    State(s): S,
    Path(room_id): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = peek_caller(&s, &parts, &body).await?;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    s.peeks.unpeek(&caller.user_id, caller.device_id.as_str(), &room_id).await?;
    Ok(Json(json!({})))
}
