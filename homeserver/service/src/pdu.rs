//! The persistent data unit: an event as the room DAG holds it, and its client-facing form.

use std::collections::BTreeMap;

use ruma::{
    events::TimelineEventType, CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, UInt, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, value::RawValue, Value};

use crate::{Error, Result};

/// An event of a room's DAG. Its JSON (`json`) is exactly what was hashed and signed.
#[derive(Clone, Debug)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    /// False only for the create event of room versions whose room id is its hash (v12+),
    /// which carries no `room_id` field.
    pub has_room_id: bool,
    pub sender: OwnedUserId,
    pub kind: TimelineEventType,
    pub content: Box<RawValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub depth: UInt,
    pub unsigned: BTreeMap<String, Value>,
    /// Position in this server's stream (0 until persisted).
    pub stream_ordering: i64,
    /// The state group of the room state after this event.
    pub state_group: i64,
    pub redacted_by: Option<String>,
    pub json: String,
}

#[derive(Deserialize)]
struct Wire {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    #[serde(default)]
    prev_events: Vec<PrevRef>,
    #[serde(default)]
    auth_events: Vec<PrevRef>,
    redacts: Option<OwnedEventId>,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    depth: UInt,
    #[serde(default)]
    unsigned: BTreeMap<String, Value>,
}

/// Event references: plain ids (v3+) or `[id, hashes]` pairs (v1, v2).
#[derive(Deserialize)]
#[serde(untagged)]
enum PrevRef {
    Id(OwnedEventId),
    Pair(OwnedEventId, serde::de::IgnoredAny),
}

impl PrevRef {
    fn id(self) -> OwnedEventId {
        match self {
            PrevRef::Id(id) | PrevRef::Pair(id, _) => id,
        }
    }
}

#[derive(Deserialize)]
struct RedactsInContent {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Reads a PDU from its JSON; `event_id` is given apart (it is the hash for v3+ rooms), and
    /// so is the room for a v12 create event (whose room id is derived from its event id).
    pub fn from_json(event_id: OwnedEventId, json: String, room: Option<OwnedRoomId>) -> Result<Pdu> {
        let wire: Wire = serde_json::from_str(&json).map_err(|e| {
            tracing::error!(%event_id, error = %e, "stored event does not parse");
            Error::Internal
        })?;
        let redacts = wire.redacts.or_else(|| {
            (wire.kind == TimelineEventType::RoomRedaction)
                .then(|| serde_json::from_str::<RedactsInContent>(wire.content.get()).ok())
                .flatten()
                .and_then(|c| c.redacts)
        });
        let has_room_id = wire.room_id.is_some();
        let Some(room_id) = wire.room_id.or(room) else {
            tracing::error!(%event_id, "event without a room");
            return Err(Error::Internal);
        };
        Ok(Pdu {
            event_id,
            room_id,
            has_room_id,
            sender: wire.sender,
            kind: wire.kind,
            content: wire.content,
            state_key: wire.state_key,
            prev_events: wire.prev_events.into_iter().map(PrevRef::id).collect(),
            auth_events: wire.auth_events.into_iter().map(PrevRef::id).collect(),
            redacts,
            origin_server_ts: wire.origin_server_ts,
            depth: wire.depth,
            unsigned: wire.unsigned,
            stream_ordering: 0,
            state_group: 0,
            redacted_by: None,
            json,
        })
    }

    /// Reads a PDU another server sent: one that does not parse is bad JSON, not a fault here.
    pub fn from_received(event_id: OwnedEventId, json: String, room: Option<OwnedRoomId>) -> Result<Pdu> {
        if let Err(e) = serde_json::from_str::<Wire>(&json) {
            return Err(Error::bad_json(format!("Malformed PDU {event_id}: {e}")));
        }
        Pdu::from_json(event_id, json, room)
    }

    pub fn from_stored(stored: diplomatie_storage::events::StoredEvent) -> Result<Pdu> {
        let event_id = OwnedEventId::try_from(stored.event_id).map_err(crate::internal!())?;
        let room = OwnedRoomId::try_from(stored.room_id).ok();
        let mut pdu = Pdu::from_json(event_id, stored.json, room)?;
        pdu.stream_ordering = stored.stream_ordering;
        pdu.state_group = stored.state_group;
        pdu.redacted_by = stored.redacted_by;
        Ok(pdu)
    }

    pub fn room(&self) -> &RoomId {
        &self.room_id
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Null)
    }

    /// A field of the content, for the few fields the server reads (membership, name, ...).
    pub fn content_field(&self, field: &str) -> Option<Value> {
        let mut v = self.content_value();
        v.get_mut(field).map(Value::take)
    }

    /// Whether the event is in the room's timeline here (with a stream position and a state),
    /// rather than an outlier known outside it. History fetched from other servers has
    /// positions below zero.
    pub fn in_timeline(&self) -> bool {
        self.stream_ordering != 0
    }

    /// The membership a member event sets (`None` for other events).
    pub fn membership(&self) -> Option<ruma::events::room::member::MembershipState> {
        (self.kind == TimelineEventType::RoomMember)
            .then(|| self.content_field("membership"))
            .flatten()
            .and_then(|v| v.as_str().map(ruma::events::room::member::MembershipState::from))
    }

    /// The event in the client-server format, borrowed from the PDU (its content is not
    /// parsed again). `room_id` is left out in `/sync`, where the room is the key;
    /// `transaction_id` is given to the device that sent it.
    pub fn client_view<'a>(&'a self, with_room_id: bool, transaction_id: Option<&'a str>) -> ClientEvent<'a> {
        let age = u64::from(MilliSecondsSinceUnixEpoch::now().get().saturating_sub(self.origin_server_ts.get()));
        let kept = |key: &str| self.unsigned.get(key);
        ClientEvent {
            content: &self.content,
            event_id: &self.event_id,
            origin_server_ts: self.origin_server_ts,
            room_id: with_room_id.then_some(&*self.room_id),
            sender: &self.sender,
            state_key: self.state_key.as_deref(),
            kind: &self.kind,
            redacts: self.redacts.as_deref(),
            unsigned: ClientUnsigned {
                age,
                transaction_id,
                prev_content: kept("prev_content"),
                replaces_state: kept("replaces_state"),
                prev_sender: kept("prev_sender"),
                invite_room_state: kept("invite_room_state"),
                knock_room_state: kept("knock_room_state"),
                membership: None,
                redacted_because: None,
                redacted_by: None,
                relations: None,
            },
        }
    }

    /// [`Pdu::client_view`] as a JSON value.
    pub fn to_client(&self, with_room_id: bool) -> Value {
        serde_json::to_value(self.client_view(with_room_id, None)).unwrap_or(Value::Null)
    }

    /// [`Pdu::client_view`] as a typed raw value of the response types, serialised once.
    pub fn to_raw<T>(&self, with_room_id: bool) -> ruma::serde::Raw<T> {
        self.client_view(with_room_id, None).to_raw()
    }

    /// The stripped form used in invite and knock room state.
    pub fn to_stripped(&self) -> Value {
        json!({
            "type": self.kind,
            "state_key": self.state_key,
            "sender": self.sender,
            "content": self.content_value(),
        })
    }

    pub fn canonical_object(&self) -> Result<CanonicalJsonObject> {
        serde_json::from_str(&self.json).map_err(crate::internal!())
    }
}

/// An event in the client-server format, borrowing the PDU's fields (see [`Pdu::client_view`]).
#[derive(Serialize)]
pub struct ClientEvent<'a> {
    content: &'a RawValue,
    event_id: &'a EventId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(skip_serializing_if = "Option::is_none")]
    room_id: Option<&'a RoomId>,
    sender: &'a UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_key: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'a TimelineEventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    redacts: Option<&'a EventId>,
    unsigned: ClientUnsigned<'a>,
}

/// What clients read in an event's `unsigned`.
#[derive(Serialize)]
struct ClientUnsigned<'a> {
    age: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_content: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replaces_state: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_sender: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invite_room_state: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    knock_room_state: Option<&'a Value>,
    /// The reader's membership at the event (MSC4115, spec 1.11): clients tell from it why
    /// they cannot decrypt an event sent before they joined.
    #[serde(skip_serializing_if = "Option::is_none")]
    membership: Option<&'a str>,
    /// The redaction that redacted the event, in the client format.
    #[serde(skip_serializing_if = "Option::is_none")]
    redacted_because: Option<&'a RawValue>,
    /// The id of that redaction, as Synapse also gives it (older clients and Sytest read it).
    #[serde(skip_serializing_if = "Option::is_none")]
    redacted_by: Option<&'a str>,
    /// The bundled aggregations (`m.thread` for a thread root).
    #[serde(rename = "m.relations", skip_serializing_if = "Option::is_none")]
    relations: Option<&'a Value>,
}

impl<'a> ClientEvent<'a> {
    /// The event with the reader's membership at it in `unsigned` (`membership`).
    pub fn with_membership(mut self, membership: &'a str) -> Self {
        self.unsigned.membership = Some(membership);
        self
    }

    /// The event with the redaction that redacted it in `unsigned` (`redacted_because`, and
    /// its id in `redacted_by`).
    pub fn with_redaction(mut self, redaction: Option<(&'a str, &'a RawValue)>) -> Self {
        self.unsigned.redacted_by = redaction.map(|r| r.0);
        self.unsigned.redacted_because = redaction.map(|r| r.1);
        self
    }

    /// The event with its bundled aggregations in `unsigned` (`m.relations`).
    pub fn with_relations(mut self, relations: Option<&'a Value>) -> Self {
        self.unsigned.relations = relations;
        self
    }

    /// The event as a typed raw value of the response types.
    pub fn to_raw<T>(&self) -> ruma::serde::Raw<T> {
        ruma::serde::Raw::from_json(serde_json::value::to_raw_value(self).expect("events serialise"))
    }
}

/// Wraps a JSON value as a typed raw value of the response types.
pub fn raw<T>(value: &Value) -> ruma::serde::Raw<T> {
    ruma::serde::Raw::from_json(serde_json::value::to_raw_value(value).expect("JSON values serialise"))
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.has_room_id.then_some(&*self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        false
    }
}

/// An event as sent over federation: its JSON without `unsigned`.
pub fn federation_json(pdu: &Pdu) -> Result<Box<RawValue>> {
    let mut value: Value = serde_json::from_str(&pdu.json).map_err(crate::internal!())?;
    if let Some(o) = value.as_object_mut() {
        o.remove("unsigned");
    }
    serde_json::value::to_raw_value(&value).map_err(crate::internal!())
}
