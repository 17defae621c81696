//! The pure core of the room DAG: which auth events an event cites, how it is built, hashed,
//! signed and authorised, and how forks resolve; each a function of the room's state and of
//! events already loaded. Nothing here reads the database, the clock or a random source: the
//! writer (`rooms::RoomWriter`) and the resolver (`rooms::resolve`) load, this decides.
//! Tested from JSON fixtures (`homeserver/service/tests/fixtures/events/`).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use ruma::{
    api::error::ErrorKind,
    canonical_json::{CanonicalJsonObject, CanonicalJsonValue},
    events::{StateEventType, TimelineEventType},
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    signatures::Ed25519KeyPair,
    state_res::{self, utils::event_id_set::EventIdSet, StateMap},
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomId, ServerName, UInt, UserId,
};
use serde::Serialize;
use serde_json::{value::RawValue, Value};

use crate::{Error, Pdu, Result};

/// The largest PDU, in bytes of its JSON (the spec's limit).
pub const MAX_PDU_BYTES: usize = 65_536;

/// An event before it is hashed and signed: everything its author and the room's position
/// decide.
pub struct Draft<'a> {
    /// `None` only for the create event of room versions whose room id is its hash (v12+).
    pub room_id: Option<&'a RoomId>,
    pub sender: &'a UserId,
    pub kind: &'a TimelineEventType,
    pub state_key: Option<&'a str>,
    /// The content, as the author gave it; its raw form is [`Draft::content_raw`].
    pub content: &'a Value,
    pub content_raw: &'a RawValue,
    pub redacts: Option<&'a EventId>,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub depth: UInt,
    pub prev_events: &'a [Reference],
    pub auth_events: &'a [Reference],
    /// The event's own id, for room versions 1 and 2 (whose ids are not hashes); ignored since.
    pub event_id: Option<OwnedEventId>,
    /// What replaced state, for clients (`unsigned`): neither hashed nor signed.
    pub unsigned: BTreeMap<String, Value>,
}

/// An event cited as a previous or auth event: its id, and for room versions 1 and 2 its
/// reference hash (they cite `[id, {"sha256": hash}]`).
#[derive(Clone, Debug)]
pub struct Reference {
    pub event_id: OwnedEventId,
    pub sha256: Option<String>,
}

impl Reference {
    pub fn id(event_id: OwnedEventId) -> Reference {
        Reference { event_id, sha256: None }
    }

    fn to_canonical(&self, format: &EventIdFormatVersion) -> CanonicalJsonValue {
        let id = CanonicalJsonValue::String(self.event_id.to_string());
        match (format, &self.sha256) {
            (EventIdFormatVersion::V1, Some(hash)) => {
                let hashes = BTreeMap::from([("sha256".to_owned(), CanonicalJsonValue::String(hash.clone()))]);
                CanonicalJsonValue::Array(vec![id, CanonicalJsonValue::Object(hashes)])
            }
            _ => id,
        }
    }
}

/// The state keys whose events an event must cite as its auth events (by the room version's
/// rules), and those present in `state`, in the rules' order.
pub fn auth_events_for(
    rules: &RoomVersionRules,
    kind: &TimelineEventType,
    sender: &UserId,
    state_key: Option<&str>,
    content: &RawValue,
    state: &StateMap<OwnedEventId>,
) -> Result<Vec<OwnedEventId>> {
    let keys = state_res::auth_types_for_event(kind, sender, state_key, content, &rules.authorization)
        .map_err(Error::bad_json)?;
    Ok(keys.iter().filter_map(|key| state.get(key).cloned()).collect())
}

/// The reference hash of a stored event (how room versions 1 and 2 cite it).
pub fn reference(pdu: &Pdu, rules: &RoomVersionRules) -> Result<Reference> {
    let sha256 = ruma::signatures::reference_hash(&pdu.canonical_object()?, rules).map_err(crate::internal!())?;
    Ok(Reference { event_id: pdu.event_id.clone(), sha256: Some(sha256) })
}

/// The object written to the database: the signed event with the client's `unsigned` beside.
#[derive(Serialize)]
struct Stored<'a> {
    #[serde(flatten)]
    event: &'a CanonicalJsonObject,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    unsigned: &'a BTreeMap<String, Value>,
}

/// Builds the PDU of `draft` in the room version's format, hashes and signs it with `key` as
/// `origin`, and derives its event id (and, for a v12+ create event, its room id). The event's
/// JSON is made once, from the canonical object that was signed.
pub fn build(draft: Draft<'_>, rules: &RoomVersionRules, origin: &ServerName, key: &Ed25519KeyPair) -> Result<Pdu> {
    let too_large = || Error::new(ErrorKind::TooLarge, "Event larger than 64 KiB");
    let content = CanonicalJsonValue::try_from(draft.content.clone())
        .map_err(|e| Error::bad_json(format!("Content is not canonical JSON: {e}")))?;
    let format = &rules.event_id_format;
    let refs = |list: &[Reference]| CanonicalJsonValue::Array(list.iter().map(|r| r.to_canonical(format)).collect());
    let string = |s: &str| CanonicalJsonValue::String(s.to_owned());

    let mut object = CanonicalJsonObject::new();
    object.insert("type".into(), string(&draft.kind.to_string()));
    object.insert("content".into(), content);
    object.insert("sender".into(), string(draft.sender.as_str()));
    object.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(draft.origin_server_ts.0.into()));
    object.insert("depth".into(), CanonicalJsonValue::Integer(draft.depth.into()));
    if let Some(room) = draft.room_id {
        object.insert("room_id".into(), string(room.as_str()));
    }
    if let Some(key) = draft.state_key {
        object.insert("state_key".into(), string(key));
    }
    if let Some(target) = draft.redacts {
        if !rules.redaction.content_field_redacts {
            object.insert("redacts".into(), string(target.as_str()));
        }
    }
    object.insert("prev_events".into(), refs(draft.prev_events));
    object.insert("auth_events".into(), refs(draft.auth_events));
    if *format == EventIdFormatVersion::V1 {
        let id = draft.event_id.as_ref().ok_or_else(crate::internal!("v1 events carry their id"))?;
        object.insert("event_id".into(), string(id.as_str()));
    }

    ruma::signatures::hash_and_sign_event(origin.as_str(), key, &mut object, &rules.redaction).map_err(
        |e| match e {
            ruma::signatures::JsonError::PduTooLarge => too_large(),
            e => Error::bad_json(format!("Cannot sign the event: {e}")),
        },
    )?;
    let event_id: OwnedEventId = match draft.event_id {
        Some(id) if *format == EventIdFormatVersion::V1 => id,
        _ => {
            let hash = ruma::signatures::reference_hash(&object, rules)
                .map_err(|e| Error::new(ErrorKind::TooLarge, format!("Event rejected: {e}")))?;
            format!("${hash}").try_into().map_err(crate::internal!())?
        }
    };
    let room_id: OwnedRoomId = match draft.room_id {
        Some(room) => room.to_owned(),
        // Since v12 the room id is the create event's id with the `!` sigil.
        None => format!("!{}", &event_id.as_str()[1..]).try_into().map_err(crate::internal!())?,
    };
    let json =
        serde_json::to_string(&Stored { event: &object, unsigned: &draft.unsigned }).map_err(crate::internal!())?;
    if json.len() > MAX_PDU_BYTES {
        return Err(too_large());
    }
    Ok(Pdu {
        event_id,
        room_id,
        has_room_id: draft.room_id.is_some(),
        sender: draft.sender.to_owned(),
        kind: draft.kind.clone(),
        content: draft.content_raw.to_owned(),
        state_key: draft.state_key.map(str::to_owned),
        prev_events: draft.prev_events.iter().map(|r| r.event_id.clone()).collect(),
        auth_events: draft.auth_events.iter().map(|r| r.event_id.clone()).collect(),
        redacts: draft.redacts.map(ToOwned::to_owned),
        origin_server_ts: draft.origin_server_ts,
        depth: draft.depth,
        unsigned: draft.unsigned,
        stream_ordering: 0,
        state_group: 0,
        redacted_by: None,
        json,
    })
}

/// Authorises `pdu` by the room version's rules: against its own auth events, then (but for
/// a create event) against `state`, the room's state before it. `events` holds the auth
/// events and the state events the rules read.
pub fn authorise(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateMap<OwnedEventId>,
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> Result<()> {
    let refused = |reason: String| Error::forbidden(format!("Event not authorised: {reason}"));
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id| events.get(id).cloned())
        .map_err(refused)?;
    if pdu.kind != TimelineEventType::RoomCreate {
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind, key| {
            state.get(&(kind.clone(), key.to_owned())).and_then(|id| events.get(id)).cloned()
        })
        .map_err(refused)?;
    }
    Ok(())
}

/// The state after `pdu`, given the state before it.
pub fn state_after(state: &StateMap<OwnedEventId>, pdu: &Pdu) -> StateMap<OwnedEventId> {
    let mut after = state.clone();
    if let Some(key) = &pdu.state_key {
        after.insert((StateEventType::from(pdu.kind.to_string()), key.clone()), pdu.event_id.clone());
    }
    after
}

/// The resolution of several states of a room (state resolution v2, or v2.1 with the
/// conflicted state subgraph since v12). `events` must hold every event of the states and
/// their auth chains; one missing is left out of the chains, as an unknown event would be.
pub fn resolve(
    rules: &RoomVersionRules,
    mut maps: Vec<StateMap<OwnedEventId>>,
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> Result<StateMap<OwnedEventId>> {
    maps.dedup();
    if maps.len() == 1 {
        return Ok(maps.pop().expect("one map"));
    }
    let Some(v2) = rules.state_res.v2_rules() else {
        return Ok(resolve_v1(rules, &maps, events));
    };
    let auth_chains: Vec<_> = maps.iter().map(|map| auth_chain(map.values(), events)).collect();
    let subgraph = v2.consider_conflicted_state_subgraph.then(|| conflicted_subgraph(&conflicted(&maps), events));
    state_res::resolve(
        &rules.authorization,
        v2,
        maps.iter(),
        auth_chains,
        |id| events.get(id).cloned(),
        |_| subgraph.clone(),
    )
    .map_err(|e| {
        tracing::error!(error = %e, "state resolution failed");
        Error::Internal
    })
}

/// State resolution v1 (room version 1, "Room Version 1", "State resolution"; ruma
/// implements v2 only). The keys every state agrees on (or that only some states hold, with one
/// event) stand; then the conflicts of power levels, of join rules, and of members, in that
/// order, each taken in ascending depth (then descending SHA-1 of the event id): the first
/// event, then each next one while the authorisation rules allow it on the state resolved so
/// far. Any other conflict goes to the deepest event (then lowest SHA-1) the rules allow, or
/// the least deep when none is allowed.
fn resolve_v1(
    rules: &RoomVersionRules,
    maps: &[StateMap<OwnedEventId>],
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> StateMap<OwnedEventId> {
    let mut candidates: BTreeMap<(StateEventType, String), Vec<Arc<Pdu>>> = BTreeMap::new();
    let mut resolved = StateMap::new();
    let mut all: HashMap<&(StateEventType, String), HashSet<&OwnedEventId>> = HashMap::new();
    for map in maps {
        for (key, id) in map {
            all.entry(key).or_default().insert(id);
        }
    }
    for (key, ids) in all {
        if ids.len() == 1 {
            resolved.insert(key.clone(), ids.into_iter().next().expect("one id").clone());
        } else {
            // An event not loaded cannot be judged: it is left out.
            let pdus = ids.into_iter().filter_map(|id| events.get(id).cloned()).collect();
            candidates.insert(key.clone(), pdus);
        }
    }
    let sha1 = |id: &EventId| {
        use sha1::Digest;
        sha1::Sha1::digest(id.as_str().as_bytes())
    };
    // Ascending depth, then descending SHA-1.
    let order =
        |a: &Arc<Pdu>, b: &Arc<Pdu>| a.depth.cmp(&b.depth).then_with(|| sha1(&b.event_id).cmp(&sha1(&a.event_id)));
    let allowed = |pdu: &Pdu, state: &StateMap<OwnedEventId>| {
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind, key| {
            state.get(&(kind.clone(), key.to_owned())).and_then(|id| events.get(id)).cloned()
        })
        .is_ok()
    };
    for kind in [StateEventType::RoomPowerLevels, StateEventType::RoomJoinRules, StateEventType::RoomMember] {
        let keys: Vec<_> = candidates.keys().filter(|(k, _)| *k == kind).cloned().collect();
        for key in keys {
            let mut pdus = candidates.remove(&key).unwrap_or_default();
            pdus.sort_by(order);
            let Some(first) = pdus.first() else { continue };
            resolved.insert(key.clone(), first.event_id.clone());
            for pdu in &pdus[1..] {
                if !allowed(pdu, &resolved) {
                    break;
                }
                resolved.insert(key.clone(), pdu.event_id.clone());
            }
        }
    }
    for (key, mut pdus) in candidates {
        pdus.sort_by(order);
        let chosen = pdus.iter().rev().find(|p| allowed(p, &resolved)).or(pdus.first());
        if let Some(chosen) = chosen {
            resolved.insert(key, chosen.event_id.clone());
        }
    }
    resolved
}

/// The events in conflict between several states: those of a key the states disagree on, or
/// that some state lacks.
fn conflicted(maps: &[StateMap<OwnedEventId>]) -> HashSet<OwnedEventId> {
    let mut all: HashMap<_, HashSet<&OwnedEventId>> = HashMap::new();
    for map in maps {
        for (key, id) in map {
            all.entry(key).or_default().insert(id);
        }
    }
    let complete = |key: &(StateEventType, String)| maps.iter().all(|m| m.contains_key(key));
    all.into_iter()
        .filter(|(key, ids)| ids.len() > 1 || !complete(key))
        .flat_map(|(_, ids)| ids.into_iter().cloned())
        .collect()
}

/// The full recursive set of auth events of `starts` (themselves not included).
pub fn auth_chain<'a>(
    starts: impl IntoIterator<Item = &'a OwnedEventId>,
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> EventIdSet<OwnedEventId> {
    let mut chain = EventIdSet::new();
    let mut queue: VecDeque<&OwnedEventId> = VecDeque::new();
    for id in starts {
        if let Some(p) = events.get(id) {
            queue.extend(p.auth_events.iter());
        }
    }
    while let Some(id) = queue.pop_front() {
        if chain.insert(id.clone()) {
            if let Some(p) = events.get(id) {
                queue.extend(p.auth_events.iter());
            }
        }
    }
    chain
}

/// The conflicted state subgraph (MSC4297, room version 12): the events on some path of
/// `auth_events` links from one conflicted event to another, both included. An auth ancestor of
/// a conflicted event lies on such a path when it is itself conflicted or authorised
/// (transitively) by one: found by propagating from the conflicted events along the reversed
/// links, without recursion, so that long histories cannot exhaust the stack.
fn conflicted_subgraph(
    conflicted: &HashSet<OwnedEventId>,
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> EventIdSet<OwnedEventId> {
    let mut ancestors: HashSet<&OwnedEventId> = HashSet::new();
    let mut children: HashMap<&OwnedEventId, Vec<&OwnedEventId>> = HashMap::new();
    let mut queue: VecDeque<&OwnedEventId> = conflicted.iter().collect();
    while let Some(id) = queue.pop_front() {
        if !ancestors.insert(id) {
            continue;
        }
        if let Some(p) = events.get(id) {
            for parent in &p.auth_events {
                children.entry(parent).or_default().push(id);
                queue.push_back(parent);
            }
        }
    }
    let mut subgraph = EventIdSet::new();
    let mut frontier: Vec<&OwnedEventId> = Vec::new();
    for c in conflicted {
        if let Some(kids) = children.get(c) {
            frontier.extend(kids.iter().copied());
        }
        if events.contains_key(c) {
            subgraph.insert(c.clone());
        }
    }
    while let Some(id) = frontier.pop() {
        if subgraph.insert(id.clone()) {
            if let Some(kids) = children.get(id) {
                frontier.extend(kids.iter().copied());
            }
        }
    }
    subgraph
}
