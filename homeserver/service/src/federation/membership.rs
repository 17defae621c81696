//! Joining, leaving and inviting across servers.
//!
//! As the resident server, this one builds templates (`make_join`, `make_leave`) with the same
//! writer that builds its own events (so the template passes the room's rules), and takes back
//! only an event of the expected shape: a membership of the requesting server's own user, with
//! the expected membership, the event id of the path, checked and authorised like any received
//! PDU. It countersigns a restricted join only once all of that holds: a server cannot make it
//! sign an event it did not build from a template (CVE-2026-24471 in the Conduit family).
//!
//! As the joining server, it signs only an event it assembled itself from the template's room
//! position (`prev_events`, `auth_events`, `depth`), never the template as given.

use std::sync::Arc;

use ruma::events::room::member::MembershipState;
use ruma::{
    api::{
        error::{ErrorKind, IncompatibleRoomVersionErrorData},
        federation::membership::{
            create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
            prepare_knock_event, prepare_leave_event, RawStrippedState,
        },
    },
    events::{StateEventType, TimelineEventType},
    state_res::{self, StateMap},
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName, OwnedUserId, RoomId, RoomVersionId,
    ServerName, UserId,
};
use serde_json::{json, value::RawValue, Value};

use super::{
    client::Transport,
    inbound::{canonical, event_id_of, room_of},
    sender::Outbox,
    Federation,
};
use crate::pdu::federation_json;
use crate::{
    accounts::Accounts,
    core::Core,
    portal::Portal,
    rooms::{received::Placement, PduBuilder, Rooms, Target},
    Error, Pdu, Result,
};

/// Room versions this server can join (those ruma knows the rules of, which it advertises).
/// Longest answer to an invite (the event, signed): as much as a federation request's answer.
const MAX_INVITE_ANSWER: u64 = 1024 * 1024;
/// Longest answer to a join (the room's whole state and auth chain): any federation answer's.
const MAX_JOIN_ANSWER: u64 = super::client::MAX_RESPONSE_BYTES;

/// Whether another server's answer says it does not know the endpoint (404, or 400
/// `M_UNRECOGNIZED`): then the deprecated v1 form is tried.
fn unknown_endpoint(answer: &http::Response<Vec<u8>>) -> bool {
    answer.status() == http::StatusCode::NOT_FOUND
        || (answer.status() == http::StatusCode::BAD_REQUEST
            && serde_json::from_slice::<Value>(answer.body()).is_ok_and(|b| b["errcode"] == "M_UNRECOGNIZED"))
}

/// `/_matrix/federation/v1/<endpoint>/{roomId}/{eventId}`, percent-encoded.
fn federation_path(endpoint: &str, room_id: &RoomId, event_id: &ruma::EventId) -> String {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!("/_matrix/federation/v1/{endpoint}/{}/{}", encode(room_id.as_str()), encode(event_id.as_str()))
}

/// The body of a v1 answer, `[200, body]` (the form of `/v1/invite` and `/v1/send_join`).
fn v1_answer<T: serde::de::DeserializeOwned>(server: &ServerName, answer: &http::Response<Vec<u8>>) -> Result<T> {
    if !answer.status().is_success() {
        let text = String::from_utf8_lossy(answer.body()).chars().take(200).collect::<String>();
        return Err(super::client::remote_error(server, format!("[{}] {text}", answer.status())));
    }
    let body: Value = serde_json::from_slice(answer.body())
        .map_err(|e| super::client::remote_error(server, format!("the answer is not JSON: {e}")))?;
    let inner = match body {
        Value::Array(mut pair) if pair.len() == 2 => pair.pop().unwrap_or_default(),
        other => other,
    };
    serde_json::from_value(inner).map_err(|e| super::client::remote_error(server, format!("unexpected answer: {e}")))
}

pub fn supported_versions() -> Vec<RoomVersionId> {
    use RoomVersionId::*;
    vec![V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12]
}

/// What a received membership event must be.
struct Expected<'a> {
    membership: MembershipState,
    origin: &'a ServerName,
}

/// Joining, leaving, knocking and inviting across servers, on both sides; over the rooms, the
/// accounts (profiles), the portal (its federation rule), the transport, the outbox and the
/// checks of received events.
pub struct RemoteMembership {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    accounts: Arc<Accounts>,
    portal: Arc<Portal>,
    transport: Arc<Transport>,
    outbox: Arc<Outbox>,
    federation: Arc<Federation>,
}

crate::core::over_core!(RemoteMembership);

impl RemoteMembership {
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        accounts: Arc<Accounts>,
        portal: Arc<Portal>,
        transport: Arc<Transport>,
        outbox: Arc<Outbox>,
        federation: Arc<Federation>,
    ) -> RemoteMembership {
        RemoteMembership { core, rooms, accounts, portal, transport, outbox, federation }
    }

    /// `make_join` / `make_leave`: a template of `user`'s membership, built on the room's
    /// current position by this server's own writer (and so checked by its rules), unsigned.
    pub async fn make_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        membership: MembershipState,
        versions: Option<&[RoomVersionId]>,
    ) -> Result<(RoomVersionId, Box<RawValue>)> {
        if user.server_name() != origin {
            return Err(Error::forbidden("A server may only ask for memberships of its own users"));
        }
        let meta = self.rooms.room_meta(room_id).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
        if !self.rooms.may_write_membership(room_id, &membership).await? {
            return Err(Error::not_found("This server is no longer in the room"));
        }
        self.federation.check_server_acl(room_id, origin).await?;
        if membership == MembershipState::Join {
            self.portal.check_federation(room_id, origin).await?;
        }
        if let Some(versions) = versions {
            if !versions.contains(&meta.version) {
                return Err(Error::new(
                    ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(meta.version.clone())),
                    format!("The room's version {} is not among those your server supports", meta.version),
                ));
            }
        }
        let mut content = json!({ "membership": membership.as_str() });
        if membership == MembershipState::Join {
            let state = self.rooms.current_state(room_id).await?;
            let current = self
                .rooms
                .state_event_in(&state, &StateEventType::RoomMember, user.as_str())
                .await?
                .and_then(|p| p.membership());
            if !matches!(current, Some(MembershipState::Invite | MembershipState::Join)) {
                if let Some(rule) = self.rooms.state_event_in(&state, &StateEventType::RoomJoinRules, "").await? {
                    let kind = rule.content_field("join_rule").and_then(|v| v.as_str().map(str::to_owned));
                    if matches!(kind.as_deref(), Some("restricted" | "knock_restricted"))
                        && meta.rules().authorization.restricted_join_rule
                        && self.rooms.allowed_by_restricted_rule(&rule.content_value(), user).await?
                    {
                        if let Some(authoriser) = self.rooms.local_inviter(room_id).await? {
                            content["join_authorised_via_users_server"] = json!(authoriser);
                        }
                    }
                }
            }
        }
        // Built, authorised and then discarded: nothing of it is written.
        let mut writer = self.rooms.room_writer(Target::Room(room_id)).await?;
        let built = writer
            .append(user, PduBuilder::state(TimelineEventType::RoomMember, user.as_str(), content), None)
            .await
            .map_err(|e| match e {
                Error::Matrix(ErrorKind::Forbidden, m) => {
                    Error::forbidden(format!("This membership is not allowed: {m}"))
                }
                e => e,
            })?;
        drop(writer);
        let mut template: Value = serde_json::from_str(&built.json).map_err(crate::internal!())?;
        if let Some(o) = template.as_object_mut() {
            for field in ["signatures", "hashes", "unsigned"] {
                o.remove(field);
            }
            if meta.rules().event_id_format != ruma::room_version_rules::EventIdFormatVersion::V1 {
                o.remove("event_id");
            }
            o.insert("origin".into(), json!(origin));
        }
        Ok((meta.version.clone(), serde_json::value::to_raw_value(&template).map_err(crate::internal!())?))
    }

    /// `send_join` / `send_leave`: takes the membership event `origin` built from a template,
    /// if it is exactly what it should be, checks and persists it, and sends it to the room's
    /// other servers. Answers the event as stored, the state before it, and the event with this
    /// server's signature when it vouched for a restricted join.
    pub async fn send_membership_from(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        raw: &RawValue,
        membership: MembershipState,
    ) -> Result<(Arc<Pdu>, Arc<StateMap<OwnedEventId>>, Option<CanonicalJsonObject>)> {
        let mut object = canonical(raw)?;
        if room_of(&object)? != room_id {
            return Err(Error::bad_json("The event is of another room than the path's"));
        }
        let meta = self.rooms.room_meta(room_id).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
        if !self.rooms.may_write_membership(room_id, &membership).await? {
            return Err(Error::not_found("This server is no longer in the room"));
        }
        self.federation.check_server_acl(room_id, origin).await?;
        let rules = meta.rules();
        if event_id_of(&object, &rules)? != event_id {
            return Err(Error::bad_json("The event id does not match the event"));
        }
        check_membership_shape(&object, &Expected { membership: membership.clone(), origin })?;
        if membership == MembershipState::Join {
            self.portal.check_federation(room_id, origin).await?;
        }
        // A restricted join names a user of this server: vouch for it (sign) only now that it is
        // known to be the join of the origin's own user; the authorisation rules then check
        // that the named user may invite.
        let mut countersigned = false;
        let authoriser = object
            .get("content")
            .and_then(|c| c.as_object())
            .and_then(|c| c.get("join_authorised_via_users_server"))
            .and_then(|v| v.as_str())
            .and_then(|s| OwnedUserId::try_from(s).ok());
        if let Some(authoriser) = authoriser.filter(|u| u.server_name() == self.server_name()) {
            if membership != MembershipState::Join || !self.rooms.is_joined(room_id, &authoriser).await? {
                return Err(Error::forbidden("The authorising user cannot vouch for this join"));
            }
            ruma::signatures::sign_event(
                self.server_name().as_str(),
                &self.keys.keypair,
                &mut object,
                &rules.redaction,
            )
            .map_err(|e| Error::bad_json(format!("Cannot sign the event: {e}")))?;
            countersigned = true;
        }
        let lock = self.federation.room_lock(room_id);
        let guard = lock.lock().await;
        let (pdu, state_before) =
            self.federation.handle_pdu(origin, &meta.version, object.clone(), Placement::Extend, 0).await?;
        drop(guard);
        if pdu.kind != TimelineEventType::RoomMember || pdu.membership() != Some(membership) {
            return Err(crate::internal!("a checked membership event stays one")());
        }
        // The other servers of the room learn of it from here.
        let mut servers = self.rooms.servers_in_room(room_id).await?;
        servers.retain(|s| s != origin);
        self.outbox.enqueue_pdus(&servers, std::slice::from_ref(&pdu.event_id)).await?;
        Ok((pdu, state_before, countersigned.then_some(object)))
    }

    /// The `send_join` answer: the state before the join and its auth chain, full events.
    pub async fn join_response(
        &self,
        room_id: &RoomId,
        join: &Pdu,
        state_before: &StateMap<OwnedEventId>,
        signed: Option<CanonicalJsonObject>,
    ) -> Result<create_join_event::v2::RoomState> {
        let mut state = Vec::new();
        for id in state_before.values() {
            if let Some(p) = self.rooms.get_pdu(id).await? {
                state.push(federation_json(&p)?);
            }
        }
        let starts: Vec<OwnedEventId> =
            state_before.values().cloned().chain(join.auth_events.iter().cloned()).collect();
        let mut auth_chain = Vec::new();
        for p in self.rooms.auth_chain_events(&starts).await? {
            auth_chain.push(federation_json(&p)?);
        }
        let mut answer = create_join_event::v2::RoomState::new();
        answer.state = state;
        answer.auth_chain = auth_chain;
        answer.event = match signed {
            Some(o) => Some(serde_json::value::to_raw_value(&o).map_err(crate::internal!())?),
            None => None,
        };
        answer.servers_in_room =
            Some(self.rooms.servers_in_room(room_id).await?.iter().map(|s| s.to_string()).collect());
        Ok(answer)
    }

    /// Joins a local user to a room this server is not in, through one of `via` (then the
    /// servers this one knows in the room).
    pub async fn remote_join(
        &self,
        user: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        reason: Option<String>,
    ) -> Result<()> {
        let reason = &reason;
        self.through_servers("join", user, room_id, via, move |server| async move {
            self.join_through(&server, user, room_id, reason.clone()).await
        })
        .await
    }

    /// Tries `attempt` with each server that may be in the room, in order, until one succeeds;
    /// answers the last failure.
    async fn through_servers<F>(
        &self,
        what: &str,
        user: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        attempt: impl Fn(OwnedServerName) -> F,
    ) -> Result<()>
    where
        F: std::future::Future<Output = Result<()>> + Send,
    {
        let mut servers = via.to_vec();
        servers.extend(self.rooms.servers_known_in(room_id, user).await?);
        let mut last = Error::not_found(format!("No server to {what} the room through"));
        for server in candidates(self.server_name(), room_id, &servers) {
            match attempt(server.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(%server, %room_id, error = %e, "remote {what} failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn join_through(
        &self,
        server: &ServerName,
        user: &UserId,
        room_id: &RoomId,
        reason: Option<String>,
    ) -> Result<()> {
        let mut request = prepare_join_event::v1::Request::new(room_id.to_owned(), user.to_owned());
        request.ver = supported_versions();
        let response = self.transport.federation_request(server, request).await?;
        let version = response.room_version.unwrap_or(RoomVersionId::V1);
        let rules = version.rules().ok_or_else(|| {
            Error::new(ErrorKind::UnsupportedRoomVersion, format!("Room version {version} is not supported"))
        })?;
        let mut content = json!({ "membership": "join" });
        let profile = self.accounts.member_profile(user).await?;
        for field in ["displayname", "avatar_url"] {
            if let Some(v) = profile.get(field).filter(|v| !v.is_null()) {
                content[field] = v.clone();
            }
        }
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        let template = canonical(&response.event)?;
        if let Some(a) = template
            .get("content")
            .and_then(|c| c.as_object())
            .and_then(|c| c.get("join_authorised_via_users_server"))
            .and_then(|v| v.as_str())
        {
            let authoriser = OwnedUserId::try_from(a).map_err(|_| Error::bad_json("Bad template"))?;
            content["join_authorised_via_users_server"] = json!(authoriser);
        }
        let object = self.event_from_template(&template, &rules, room_id, user, content)?;
        let event_id = event_id_of(&object, &rules)?;
        let pdu_raw = serde_json::value::to_raw_value(&object).map_err(crate::internal!())?;
        let request = create_join_event::v2::Request::new(room_id.to_owned(), event_id.clone(), pdu_raw);
        let answer = self.transport.federation_http(server, request, MAX_JOIN_ANSWER).await?;
        // A server that does not know `/v2/send_join` is asked through `/v1/send_join`.
        let answer = if unknown_endpoint(&answer) {
            let path = federation_path("send_join", room_id, &event_id);
            let body = serde_json::to_value(&object).map_err(crate::internal!())?;
            let answer =
                self.transport.federation_json(server, http::Method::PUT, &path, &body, MAX_JOIN_ANSWER).await?;
            v1_answer::<create_join_event::v2::RoomState>(server, &answer)?
        } else {
            super::client::Transport::parse_answer::<create_join_event::v2::Request>(server, answer)?.room_state
        };

        // The join as the resident server returns it (countersigned), if it is ours.
        let mut join = object;
        if let Some(signed) = &answer.event {
            let signed = canonical(signed)?;
            if event_id_of(&signed, &rules)? == event_id {
                join = signed;
            }
        }
        let mut state_objects = Vec::new();
        for raw in &answer.state {
            state_objects.push(canonical(raw)?);
        }
        let state_events = self.federation.verify_outliers(&version, room_id, state_objects).await?;
        let mut auth_objects = Vec::new();
        for raw in &answer.auth_chain {
            auth_objects.push(canonical(raw)?);
        }
        let auth_events = self.federation.verify_outliers(&version, room_id, auth_objects).await?;
        self.federation.check_join_state(&rules, room_id, &state_events, &auth_events).await?;
        self.federation.persist_outliers(&state_events).await?;
        self.federation.persist_outliers(&auth_events).await?;
        let mut state = StateMap::new();
        for p in &state_events {
            if let Some(sk) = &p.state_key {
                state.insert((StateEventType::from(p.kind.to_string()), sk.clone()), p.event_id.clone());
            }
        }
        let create_id = state
            .get(&(StateEventType::RoomCreate, String::new()))
            .cloned()
            .ok_or_else(|| Error::bad_json(format!("{server} sent a room state without its create event")))?;
        if rules.room_id_format == ruma::room_version_rules::RoomIdFormatVersion::V2
            && room_id.as_str()[1..] != create_id.as_str()[1..]
        {
            return Err(Error::bad_json(format!("{server} sent the state of another room")));
        }
        let creator = self
            .rooms
            .get_pdu(&create_id)
            .await?
            .ok_or_else(crate::internal!("a value present by construction"))?
            .sender
            .clone();

        // The join must pass the rules against that state.
        let json = serde_json::to_string(&join).map_err(crate::internal!())?;
        let pdu = Pdu::from_received(event_id.clone(), json, Some(room_id.to_owned()))?;
        let loaded = self.federation.auth_state(&state, &pdu, &rules).await?;
        state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |k, s| {
            loaded.get(&(k.clone(), s.to_owned())).cloned()
        })
        .map_err(|e| Error::forbidden(format!("The join does not pass the room's rules: {e}")))?;

        let lock = self.federation.room_lock(room_id);
        let _guard = lock.lock().await;
        let mut writer = self.rooms.received_writer(room_id, &version, &creator).await?;
        writer.append_received(pdu, Arc::new(state), Placement::Adopt).await?;
        writer.commit().await?;
        diplomatie_storage::rooms::unforget(self.db.pool(), user.as_str(), room_id.as_str()).await?;
        Ok(())
    }

    /// The membership event this server signs for its user: the template's room position
    /// (`prev_events`, `auth_events`, `depth`) and nothing else of it.
    fn event_from_template(
        &self,
        template: &CanonicalJsonObject,
        rules: &ruma::room_version_rules::RoomVersionRules,
        room_id: &RoomId,
        user: &UserId,
        content: Value,
    ) -> Result<CanonicalJsonObject> {
        let bad = |what: &str| Error::bad_json(format!("Bad membership template: {what}"));
        if room_of(template)? != room_id {
            return Err(bad("another room"));
        }
        let ids = |field: &str| -> Result<CanonicalJsonValue> {
            match template.get(field) {
                Some(CanonicalJsonValue::Array(a)) if a.len() <= 20 => Ok(CanonicalJsonValue::Array(a.clone())),
                _ => Err(bad(field)),
            }
        };
        let depth = match template.get("depth") {
            Some(CanonicalJsonValue::Integer(i)) => *i,
            _ => return Err(bad("depth")),
        };
        let mut object = json!({
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user,
            "state_key": user,
            "content": content,
            "origin_server_ts": crate::now_ms(),
        });
        if rules.event_id_format == ruma::room_version_rules::EventIdFormatVersion::V1 {
            object["event_id"] = json!(format!("${}:{}", crate::random_string(18), self.server_name()));
            object["origin"] = json!(self.server_name());
        }
        let mut object: CanonicalJsonObject = serde_json::from_value(object).map_err(crate::internal!())?;
        object.insert("prev_events".into(), ids("prev_events")?);
        object.insert("auth_events".into(), ids("auth_events")?);
        object.insert("depth".into(), CanonicalJsonValue::Integer(depth));
        ruma::signatures::hash_and_sign_event(
            self.server_name().as_str(),
            &self.keys.keypair,
            &mut object,
            &rules.redaction,
        )
        .map_err(|e| bad(&e.to_string()))?;
        Ok(object)
    }

    /// A membership of `user` built from another server's template: the signed event, its id,
    /// and its JSON to send.
    fn build_from_template(
        &self,
        template: &RawValue,
        version: &RoomVersionId,
        room_id: &RoomId,
        user: &UserId,
        content: Value,
    ) -> Result<(CanonicalJsonObject, OwnedEventId, Box<RawValue>)> {
        let rules = version.rules().ok_or_else(|| {
            Error::new(ErrorKind::UnsupportedRoomVersion, format!("Room version {version} is not supported"))
        })?;
        let object = self.event_from_template(&canonical(template)?, &rules, room_id, user, content)?;
        let event_id = event_id_of(&object, &rules)?;
        let raw = serde_json::value::to_raw_value(&object).map_err(crate::internal!())?;
        Ok((object, event_id, raw))
    }

    /// Keeps a membership event of a room this server is not in as the room's state here
    /// (with what the other server showed of the room, in `unsigned`).
    async fn keep_outside_membership(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        user: &UserId,
        object: CanonicalJsonObject,
        event_id: OwnedEventId,
        unsigned: Option<Value>,
    ) -> Result<()> {
        let mut stored = serde_json::to_value(&object).map_err(crate::internal!())?;
        if let Some(u) = unsigned {
            stored["unsigned"] = u;
        }
        let json = serde_json::to_string(&stored).map_err(crate::internal!())?;
        let pdu = Pdu::from_received(event_id, json, Some(room_id.to_owned()))?;
        let state = self.rooms.current_state(room_id).await.unwrap_or_default();
        let mut writer = self.rooms.received_writer(room_id, version, user).await?;
        writer.append_received(pdu, state, Placement::Adopt).await?;
        writer.commit().await
    }

    /// Leaves (or refuses the invite to) a room this server is not in, through one of `via`
    /// (then the servers this one knows in the room).
    pub async fn remote_leave(&self, user: &UserId, room_id: &RoomId, via: &[OwnedServerName]) -> Result<()> {
        self.through_servers("leave", user, room_id, via, move |server| async move {
            let server = &*server;
            let request = prepare_leave_event::v1::Request::new(room_id.to_owned(), user.to_owned());
            let response = self.transport.federation_request(server, request).await?;
            let version = response.room_version.unwrap_or(RoomVersionId::V1);
            let content = json!({ "membership": "leave" });
            let built = self.build_from_template(&response.event, &version, room_id, user, content)?;
            let request = create_leave_event::v2::Request::new(room_id.to_owned(), built.1.clone(), built.2);
            self.transport.federation_request(server, request).await?;
            self.keep_outside_membership(room_id, &version, user, built.0, built.1, None).await
        })
        .await
    }

    /// Refuses an invite to a room this server is not in when no server of the room takes the
    /// refusal (unreachable, or refusing): a leave this server signs alone, after the invite
    /// (an out-of-band membership, as Synapse writes one), so that the invitee is out of the
    /// room here. The room's servers never hear of it.
    pub async fn reject_locally(&self, user: &UserId, room_id: &RoomId) -> Result<()> {
        let meta = self.rooms.known_room(room_id).await?;
        let rules = meta.rules();
        let invite = self
            .rooms
            .state_event(room_id, &StateEventType::RoomMember, user.as_str())
            .await?
            .filter(|p| matches!(p.membership(), Some(MembershipState::Invite | MembershipState::Knock)))
            .ok_or_else(|| Error::forbidden("No invite to refuse"))?;
        // Room versions 1 and 2 cite events with their hashes: this event is never sent, so
        // none are given.
        let cited = if rules.event_id_format == ruma::room_version_rules::EventIdFormatVersion::V1 {
            json!([[invite.event_id, {}]])
        } else {
            json!([invite.event_id])
        };
        let template = json!({
            "room_id": room_id,
            "prev_events": cited,
            "auth_events": cited,
            "depth": u64::from(invite.depth) + 1,
        });
        let template = serde_json::value::to_raw_value(&template).map_err(crate::internal!())?;
        let content = json!({ "membership": "leave" });
        let (object, event_id, _) = self.build_from_template(&template, &meta.version, room_id, user, content)?;
        let unsigned = json!({ "out_of_band_membership": true });
        self.keep_outside_membership(room_id, &meta.version, user, object, event_id, Some(unsigned)).await
    }

    /// Invites a user of another server: the event is built here, signed by the invitee's
    /// server (`invite` v2, or v1 for a server that has no v2), then persisted and sent to the
    /// room's other servers.
    pub async fn invite_remote(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        invitee: &UserId,
        content: Value,
    ) -> Result<()> {
        let server = invitee.server_name();
        self.transport.check_server_allowed(server)?;
        let meta = self.rooms.known_room(room_id).await?;
        let rules = meta.rules();
        let mut writer = self.rooms.room_writer(Target::Room(room_id)).await?;
        let built = writer
            .append(sender, PduBuilder::state(TimelineEventType::RoomMember, invitee.as_str(), content), None)
            .await?;
        drop(writer);
        let event = federation_json(&built)?;
        let invite_state = self.state_shown_before_joining(room_id, sender).await?;
        let request = create_invite::v2::Request::new(
            room_id.to_owned(),
            built.event_id.clone(),
            meta.version.clone(),
            event,
            invite_state,
        );
        let answer = self.transport.federation_http(server, request, MAX_INVITE_ANSWER).await?;
        // A server that does not know `/v2/invite` is asked through `/v1/invite`, for the room
        // versions that API can carry (1 and 2, as Synapse falls back).
        let event = if unknown_endpoint(&answer) && matches!(meta.version, RoomVersionId::V1 | RoomVersionId::V2) {
            self.invite_v1(server, room_id, &built).await?
        } else {
            super::client::Transport::parse_answer::<create_invite::v2::Request>(server, answer)?.event
        };
        let signed = canonical(&event)?;
        if event_id_of(&signed, &rules)? != built.event_id {
            return Err(super::client::remote_error(server, "the invite came back altered"));
        }
        let signatures = signed.get("signatures").and_then(|s| s.as_object());
        if !signatures.is_some_and(|s| s.contains_key(server.as_str())) {
            return Err(super::client::remote_error(server, "the invite came back without its signature"));
        }
        let lock = self.federation.room_lock(room_id);
        let _guard = lock.lock().await;
        self.federation.handle_pdu(self.server_name(), &meta.version, signed, Placement::Extend, 0).await?;
        Ok(())
    }

    /// `PUT /v1/invite`: the event is the body (with the invite room state in its
    /// `unsigned`), and the answer `[200, {"event": ...}]`.
    async fn invite_v1(&self, server: &ServerName, room_id: &RoomId, built: &Pdu) -> Result<Box<RawValue>> {
        let mut event: Value = serde_json::from_str(federation_json(built)?.get()).map_err(crate::internal!())?;
        let shown: Vec<Value> = self
            .state_shown_before_joining(room_id, &built.sender)
            .await?
            .iter()
            .filter_map(|s| serde_json::to_value(s).ok())
            .collect();
        event["unsigned"]["invite_room_state"] = Value::Array(shown);
        let path = federation_path("invite", room_id, &built.event_id);
        let answer =
            self.transport.federation_json(server, http::Method::PUT, &path, &event, MAX_INVITE_ANSWER).await?;
        #[derive(serde::Deserialize)]
        struct Signed {
            event: Box<RawValue>,
        }
        Ok(v1_answer::<Signed>(server, &answer)?.event)
    }

    /// What a server not in the room is shown of it (an invite's or a knock's room state):
    /// its name, topic, avatar, alias, join rules, encryption and create event, and the
    /// membership of `user`, as full events.
    pub async fn state_shown_before_joining(&self, room_id: &RoomId, user: &UserId) -> Result<Vec<RawStrippedState>> {
        let mut shown = Vec::new();
        let state = self.rooms.current_state(room_id).await?;
        for kind in crate::rooms::members::STRIPPED_STATE {
            if let Some(p) = self.rooms.state_event_in(&state, &kind, "").await? {
                shown.push(RawStrippedState::Pdu(federation_json(&p)?));
            }
        }
        if let Some(p) = self.rooms.state_event_in(&state, &StateEventType::RoomMember, user.as_str()).await? {
            shown.push(RawStrippedState::Pdu(federation_json(&p)?));
        }
        Ok(shown)
    }

    /// Knocks on a room this server is not in, through one of `via` (then the servers this one
    /// knows in the room); the room's state shown to knockers is kept with the knock, for the
    /// user's client.
    pub async fn remote_knock(
        &self,
        user: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        reason: Option<String>,
    ) -> Result<()> {
        let reason = &reason;
        self.through_servers("knock on", user, room_id, via, move |server| async move {
            let server = &*server;
            let mut request = prepare_knock_event::v1::Request::new(room_id.to_owned(), user.to_owned());
            request.ver = supported_versions();
            let response = self.transport.federation_request(server, request).await?;
            let version = response.room_version;
            let mut content = json!({ "membership": "knock" });
            if let Some(r) = reason {
                content["reason"] = json!(r);
            }
            let built = self.build_from_template(&response.event, &version, room_id, user, content)?;
            let request = create_knock_event::v1::Request::new(room_id.to_owned(), built.1.clone(), built.2);
            let answer = self.transport.federation_request(server, request).await?;
            let shown: Vec<Value> = answer.knock_room_state.iter().filter_map(stripped_of).collect();
            let unsigned = json!({ "knock_room_state": shown });
            self.keep_outside_membership(room_id, &version, user, built.0, built.1, Some(unsigned)).await
        })
        .await
    }

    /// `invite` v2 from another server: a user of this server is invited. The event is checked,
    /// signed, and kept (with the room's stripped state, for the invitee's client).
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        version: &RoomVersionId,
        raw: &RawValue,
        invite_state: &[RawStrippedState],
    ) -> Result<Box<RawValue>> {
        let rules = version.rules().ok_or_else(|| {
            Error::new(
                ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(version.clone())),
                format!("Room version {version} is not supported"),
            )
        })?;
        let object = canonical(raw)?;
        if room_of(&object)? != room_id || event_id_of(&object, &rules)? != event_id {
            return Err(Error::bad_json("The event does not match the path"));
        }
        let kind = object.get("type").and_then(|v| v.as_str());
        let sender = object.get("sender").and_then(|v| v.as_str()).and_then(|s| <&UserId>::try_from(s).ok());
        let membership = object
            .get("content")
            .and_then(|c| c.as_object())
            .and_then(|c| c.get("membership"))
            .and_then(|v| v.as_str());
        if kind != Some("m.room.member")
            || membership != Some("invite")
            || sender.is_none_or(|s| s.server_name() != origin)
        {
            return Err(Error::forbidden(format!("Not an invite sent by a user of {origin}")));
        }
        let invitee = object
            .get("state_key")
            .and_then(|v| v.as_str())
            .and_then(|s| OwnedUserId::try_from(s).ok())
            .ok_or_else(|| Error::bad_json("No invitee"))?;
        if invitee.server_name() != self.server_name() {
            return Err(Error::bad_json("The invitee is not a user of this server"));
        }
        // A server the room's ACL bans learns nothing, not even whether the account exists.
        if self.rooms.room_meta(room_id).await?.is_some() {
            self.federation.check_server_acl(room_id, origin).await?;
        }
        if diplomatie_storage::accounts::get_user(self.db.pool(), invitee.as_str()).await?.is_none() {
            return Err(Error::not_found("Unknown user"));
        }
        let object = self.transport.verify_pdu(&object, version).await?;
        let mut object = object;
        ruma::signatures::sign_event(self.server_name().as_str(), &self.keys.keypair, &mut object, &rules.redaction)
            .map_err(|e| Error::bad_json(format!("Cannot sign the invite: {e}")))?;
        let signed = serde_json::value::to_raw_value(&object).map_err(crate::internal!())?;

        let lock = self.federation.room_lock(room_id);
        let _guard = lock.lock().await;
        if self.rooms.room_meta(room_id).await?.is_some() && self.rooms.server_in_room(room_id).await? {
            self.federation.handle_pdu(origin, version, object, Placement::Extend, 0).await?;
            return Ok(signed);
        }
        // A room this server is not in: the invite alone, with what the inviter showed of it.
        let stripped: Vec<Value> = invite_state.iter().filter_map(stripped_of).collect();
        let sender = OwnedUserId::try_from(sender_of(&object)?).map_err(|_| Error::bad_json("sender"))?;
        let unsigned = json!({ "invite_room_state": stripped });
        self.keep_outside_membership(room_id, version, &sender, object, event_id.to_owned(), Some(unsigned)).await?;
        Ok(signed)
    }
}

/// The servers to try, in order: those given, then the room id's (before v12).
fn candidates(me: &ServerName, room_id: &RoomId, servers: &[OwnedServerName]) -> Vec<OwnedServerName> {
    let mut out: Vec<OwnedServerName> = Vec::new();
    let from_id = room_id.server_name().map(|s| s.to_owned());
    for s in servers.iter().cloned().chain(from_id) {
        if s != me && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// A membership event of the origin's own user about itself, with the expected membership.
fn check_membership_shape(object: &CanonicalJsonObject, expected: &Expected<'_>) -> Result<()> {
    let field = |name: &str| object.get(name).and_then(|v| v.as_str());
    let refuse = |what: &str| {
        Err(Error::forbidden(format!("Not a {} of a user of {}: {what}", expected.membership, expected.origin)))
    };
    if field("type") != Some("m.room.member") {
        return refuse("not a membership event");
    }
    let Some(sender) = field("sender").and_then(|s| <&UserId>::try_from(s).ok()) else { return refuse("no sender") };
    if field("state_key") != Some(sender.as_str()) {
        return refuse("about another user");
    }
    if sender.server_name() != expected.origin {
        return refuse("a user of another server");
    }
    let membership =
        object.get("content").and_then(|c| c.as_object()).and_then(|c| c.get("membership")).and_then(|v| v.as_str());
    if membership != Some(expected.membership.as_str()) {
        return refuse("another membership");
    }
    Ok(())
}

/// The sender of an event (checked to be a user id).
fn sender_of(object: &CanonicalJsonObject) -> Result<&str> {
    object.get("sender").and_then(|v| v.as_str()).ok_or_else(|| Error::bad_json("No sender"))
}

/// The stripped form of an invite's room state entry.
fn stripped_of(entry: &RawStrippedState) -> Option<Value> {
    #[allow(deprecated)]
    let raw = match entry {
        RawStrippedState::Pdu(raw) => raw.get(),
        RawStrippedState::Stripped(raw) => raw.json().get(),
        _ => return None,
    };
    let v: Value = serde_json::from_str(raw).ok()?;
    Some(json!({
        "type": v.get("type")?,
        "state_key": v.get("state_key")?,
        "content": v.get("content")?,
        "sender": v.get("sender")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: Value) -> CanonicalJsonObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_the_origin_users_own_membership_is_taken() {
        let origin: &ServerName = "b.test".try_into().unwrap();
        let join = |sender: &str, key: &str, kind: &str, m: &str| {
            object(json!({ "type": kind, "sender": sender, "state_key": key, "content": { "membership": m } }))
        };
        let expected = Expected { membership: MembershipState::Join, origin };
        assert!(check_membership_shape(&join("@bob:b.test", "@bob:b.test", "m.room.member", "join"), &expected).is_ok());
        for bad in [
            join("@bob:b.test", "@alice:a.test", "m.room.member", "join"),
            join("@eve:c.test", "@eve:c.test", "m.room.member", "join"),
            join("@bob:b.test", "@bob:b.test", "m.room.member", "leave"),
            join("@bob:b.test", "@bob:b.test", "m.room.member", "ban"),
            join("@bob:b.test", "", "m.room.power_levels", "join"),
        ] {
            assert!(check_membership_shape(&bad, &expected).is_err(), "{bad:?}");
        }
    }
}
