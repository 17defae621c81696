//! The pure core of the room DAG (`rooms::event_core`) run over JSON fixtures
//! (`tests/fixtures/events/*.json`), without a database: each fixture is a room's events for
//! the room versions it names, built, hashed, signed and authorised in turn against the state
//! before them (the resolution of their previous events' states where they meet forks).
//!
//! A fixture: `{"description", "room_versions": [...], "events": [...], "state": {...}}`. An
//! event: `sender`, `type`, `state_key`, `content`, and optionally `label` (to be named later),
//! `after` (labels of its previous events; by default the last event accepted), `ts` (its
//! timestamp; by default ten times its rank), `refused` (the errcode expected: nothing of it
//! is kept). `state` maps `type|state_key` to the label of the event the final state holds
//! there, or to null where it must hold none; the final state is that after the last event
//! accepted, or the resolution of the labels in `resolve`.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Arc,
};

use diplomatie_service::{
    rooms::event_core::{self, Draft, Reference},
    Error, Pdu,
};
use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    serde::Base64,
    signatures::{verify_event, Ed25519KeyPair, Verified},
    state_res::StateMap,
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId, ServerName, UInt,
};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Fixture {
    description: String,
    room_versions: Vec<String>,
    events: Vec<FixtureEvent>,
    #[serde(default)]
    resolve: Vec<String>,
    #[serde(default)]
    state: BTreeMap<String, Option<String>>,
}

#[derive(Deserialize)]
struct FixtureEvent {
    label: Option<String>,
    sender: OwnedUserId,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    state_key: Option<String>,
    content: Value,
    #[serde(default)]
    after: Option<Vec<String>>,
    ts: Option<u64>,
    redacts: Option<OwnedEventId>,
    refused: Option<String>,
}

/// A room as the fixture builds it.
struct Room {
    rules: RoomVersionRules,
    room_id: Option<OwnedRoomId>,
    events: HashMap<OwnedEventId, Arc<Pdu>>,
    state_after: HashMap<OwnedEventId, StateMap<OwnedEventId>>,
    labels: HashMap<String, OwnedEventId>,
    last: Option<OwnedEventId>,
}

const ORIGIN: &str = "a.test";

fn errcode(e: &Error) -> String {
    serde_json::to_value(e.body()).unwrap()["errcode"].as_str().unwrap().to_owned()
}

impl Room {
    fn state_of(&self, ids: &[OwnedEventId]) -> Result<StateMap<OwnedEventId>, Error> {
        let maps = ids.iter().map(|id| self.state_after[id].clone()).collect();
        event_core::resolve(&self.rules, maps, &self.events)
    }

    /// Builds and authorises one event; keeps it when accepted.
    fn add(&mut self, rank: usize, e: &FixtureEvent, key: &Ed25519KeyPair) -> Result<Arc<Pdu>, Error> {
        let prev: Vec<OwnedEventId> = match &e.after {
            Some(labels) => labels.iter().map(|l| self.labels[l].clone()).collect(),
            None => self.last.iter().cloned().collect(),
        };
        let state = if prev.is_empty() { StateMap::new() } else { self.state_of(&prev)? };
        let mut content = e.content.clone();
        if e.kind == TimelineEventType::RoomCreate && !self.rules.authorization.use_room_create_sender {
            content["creator"] = Value::String(e.sender.to_string());
        }
        let content_raw = serde_json::value::to_raw_value(&content).unwrap();
        let auth =
            event_core::auth_events_for(&self.rules, &e.kind, &e.sender, e.state_key.as_deref(), &content_raw, &state)?;
        let cite = |ids: &[OwnedEventId]| -> Vec<Reference> {
            ids.iter()
                .map(|id| match self.rules.event_id_format {
                    EventIdFormatVersion::V1 => event_core::reference(&self.events[id], &self.rules).unwrap(),
                    _ => Reference::id(id.clone()),
                })
                .collect()
        };
        let depth = prev.iter().map(|id| u64::from(self.events[id].depth)).max().map_or(0, |d| d + 1);
        let draft = Draft {
            room_id: self.room_id.as_deref(),
            sender: &e.sender,
            kind: &e.kind,
            state_key: e.state_key.as_deref(),
            content: &content,
            content_raw: &content_raw,
            redacts: e.redacts.as_deref(),
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(e.ts.unwrap_or(10 * rank as u64 + 10)).unwrap()),
            depth: UInt::new(depth).unwrap(),
            prev_events: &cite(&prev),
            auth_events: &cite(&auth),
            event_id: Some(format!("$e{rank}:{ORIGIN}").try_into().unwrap()),
            unsigned: BTreeMap::new(),
        };
        let pdu = event_core::build(draft, &self.rules, <&ServerName>::try_from(ORIGIN).unwrap(), key)?;
        let pdu = Arc::new(pdu);
        let mut loaded = self.events.clone();
        loaded.insert(pdu.event_id.clone(), pdu.clone());
        event_core::authorise(&self.rules, &pdu, &state, &loaded)?;
        self.state_after.insert(pdu.event_id.clone(), event_core::state_after(&state, &pdu));
        self.events.insert(pdu.event_id.clone(), pdu.clone());
        self.room_id = Some(pdu.room_id.clone());
        self.last = Some(pdu.event_id.clone());
        if let Some(label) = &e.label {
            self.labels.insert(label.clone(), pdu.event_id.clone());
        }
        Ok(pdu)
    }
}

fn run(name: &str, fixture: &Fixture, version: &str) {
    let here = format!("{name} (v{version}: {})", fixture.description);
    let version = RoomVersionId::try_from(version).unwrap();
    let rules = version.rules().unwrap();
    let key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "k".into()).unwrap();
    let public = BTreeMap::from([(
        ORIGIN.to_owned(),
        BTreeMap::from([("ed25519:k".to_owned(), Base64::new(key.public_key().to_vec()))]),
    )]);
    let mut room = Room {
        rules: rules.clone(),
        // Before v12 the room id is chosen by its creator; since, it is the create event's hash.
        room_id: (!rules.authorization.room_create_event_id_as_room_id)
            .then(|| format!("!room:{ORIGIN}").try_into().unwrap()),
        events: HashMap::new(),
        state_after: HashMap::new(),
        labels: HashMap::new(),
        last: None,
    };
    for (rank, e) in fixture.events.iter().enumerate() {
        let what = format!("{here}: event {rank} ({} by {})", e.kind, e.sender);
        match (room.add(rank, e, &key), &e.refused) {
            (Ok(pdu), None) => {
                // A valid PDU: it verifies with ruma's verifier, its id is its reference hash.
                let object = pdu.canonical_object().unwrap();
                assert_eq!(verify_event(&public, &object, &rules).unwrap(), Verified::All, "{what}");
                if rules.event_id_format != EventIdFormatVersion::V1 {
                    let hash = ruma::signatures::reference_hash(&object, &rules).unwrap();
                    assert_eq!(pdu.event_id.as_str(), format!("${hash}"), "{what}");
                }
                // The PDU read back from its JSON is the one built.
                let again = Pdu::from_json(pdu.event_id.clone(), pdu.json.clone(), Some(pdu.room_id.clone())).unwrap();
                assert_eq!(
                    (&again.kind, &again.state_key, again.content.get(), &again.prev_events, &again.auth_events),
                    (&pdu.kind, &pdu.state_key, pdu.content.get(), &pdu.prev_events, &pdu.auth_events),
                    "{what}"
                );
            }
            (Err(err), Some(code)) => assert_eq!(&errcode(&err), code, "{what}: {err:?}"),
            (Ok(pdu), Some(code)) => panic!("{what}: accepted as {}, expected {code}", pdu.event_id),
            (Err(err), None) => panic!("{what}: refused: {err:?}"),
        }
    }
    let last = room.last.clone().unwrap();
    let state = if fixture.resolve.is_empty() {
        room.state_after[&last].clone()
    } else {
        let ids: Vec<_> = fixture.resolve.iter().map(|l| room.labels[l].clone()).collect();
        room.state_of(&ids).unwrap()
    };
    for (key, expected) in &fixture.state {
        let (kind, state_key) = key.split_once('|').unwrap();
        let held = state.get(&(StateEventType::from(kind), state_key.to_owned()));
        let expected = expected.as_ref().map(|l| &room.labels[l]);
        assert_eq!(held, expected, "{here}: the state at {key}");
    }
}

#[test]
fn fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events");
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    assert!(names.len() >= 4, "fixtures found in {}", dir.display());
    for path in names {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(!fixture.room_versions.is_empty(), "{name}");
        for version in &fixture.room_versions {
            run(&name, &fixture, version);
        }
    }
}
