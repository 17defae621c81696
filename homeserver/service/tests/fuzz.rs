//! The parsers this project owns, fuzzed: organisation files (YAML, CSV), correspondence drafts
//! and exported records, push rule conditions with the events they are evaluated against, sync
//! and event filters, and the canonical JSON of PDUs other servers send. Inputs are random
//! mutations of valid seeds (bytes inserted, removed, replaced, and tokens that parsers find
//! hard: anchors, aliases, brackets, NUL, deep nesting); none may panic, and none may make the
//! parser allocate more than [`MAX_ALLOCATED`] bytes at once.
//!
//! A bounded run in CI: `PROPTEST_CASES` inputs per parser (512 by default); set it higher to
//! search longer, e.g. `PROPTEST_CASES=100000 cargo test -p diplomatie-service --test fuzz`.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use diplomatie_service::{
    correspondence::{text::parse_draft, verify_export, Export},
    federation::inbound::{canonical, event_id_of, room_of},
    federation::keys::canonical_has_nul,
    organisation::OrganisationFile,
    pdu::Pdu,
    rooms::timeline::EventFilter,
    sync::SyncFilter,
};
use proptest::prelude::*;

/// What the process has allocated and not freed, and the most it has since the last reset.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counters are kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most one parse may allocate beyond what was allocated before it (the inputs are a few
/// kilobytes: anything near this is an expansion without bound).
const MAX_ALLOCATED: usize = 64 << 20;

/// Runs `f` and fails if it allocated more than [`MAX_ALLOCATED`] at any moment. (cargo-nextest
/// runs each test in a process of its own; under `cargo test` the others' small allocations
/// count too, far below the bound.)
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert!(grew < MAX_ALLOCATED, "{what}: allocated {} MiB for one input", grew >> 20);
    out
}

/// Tokens that parsers of these formats find hard.
const TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "&b [*a,*a,*a,*a]",
    "<<: *a",
    "[",
    "]",
    "{",
    "}",
    ":",
    ": ",
    "- ",
    "\n",
    "\n  ",
    "\t",
    "\"",
    "'",
    "\\",
    "\\0",
    "\0",
    "\u{feff}",
    "é",
    "\u{10ffff}",
    "#",
    "!!binary ",
    "!tag ",
    "---\n",
    "...\n",
    ",",
    ";",
    "\r\n",
    "%",
    "?",
    "|",
    ">",
    "~",
    "null",
    "1e999",
    "-0",
    "9223372036854775808",
    "\"\\ud800\"",
    "{\"a\":",
    "[[[[[[[[",
    "]]]]]]]]",
    "!telegram",
    "!note",
    "Objet:",
    "Pour action:",
    "Tags:",
    "\n\n",
];

#[derive(Clone, Debug)]
enum Edit {
    Insert(usize, usize),
    Remove(usize, usize),
    Replace(usize, u8),
    Repeat(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Edit::Insert(at, t)),
        (any::<usize>(), 1usize..16).prop_map(|(at, n)| Edit::Remove(at, n)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Replace(at, b)),
        (any::<usize>(), 1usize..32, 2usize..64).prop_map(|(at, len, times)| Edit::Repeat(at, len, times)),
    ]
}

/// `seed` with `edits` applied (bytes, then read as UTF-8 lossily: the parsers take text).
fn mutate(seed: &str, edits: &[Edit]) -> String {
    let mut bytes = seed.as_bytes().to_vec();
    for e in edits {
        let at = |i: usize| if bytes.is_empty() { 0 } else { i % (bytes.len() + 1) };
        match *e {
            Edit::Insert(i, t) => {
                let i = at(i);
                bytes.splice(i..i, TOKENS[t].bytes());
            }
            Edit::Remove(i, n) => {
                let i = at(i);
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Replace(i, b) => {
                if !bytes.is_empty() {
                    let i = i % bytes.len();
                    bytes[i] = b;
                }
            }
            Edit::Repeat(i, len, times) => {
                let i = at(i);
                let end = (i + len).min(bytes.len());
                let piece = bytes[i..end].to_vec();
                for _ in 0..times {
                    bytes.splice(end..end, piece.iter().copied());
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(edit(), 0..12)
}

const ORGANISATION_YAML: &str = include_str!("../../../config/organisation.example.yaml");

const ORGANISATION_CSV: &str = "localpart,name,clearance,kind,group,admin\n\
    jdupont,Jeanne Dupont,DR,agent,dgm,false\n\
    \"mmartin\",\"Martin, Marc\",NP,external,,\n";

const DRAFT: &str = "!telegram\nObjet: Visite du ministre\nPour action: dgm, cabinet\n\
    Pour information: paris\nTags: allemagne; europe\nClassification: NP\n\nLe ministre se rendra à Berlin.\n";

const EXPORT: &str = r#"{"record":{"reference":"DGM-2026-000001","kind":"telegram","from":"dgm",
    "subject":"Visite","body":"Texte","action":["paris"],"information":[],"tags":["europe"],
    "classification":"NP","author":"@alice:localhost","signed_at":1764800000000,
    "key_id":"ed25519:k1","signatures":{"@alice:localhost":{"ed25519:k1":"c2lnbmF0dXJl"}}},
    "public_keys":{"@alice:localhost":{"ed25519:k1":"MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI"}}}"#;

const PUSH_CONDITIONS: &str = r#"[{"kind":"event_match","key":"content.body","pattern":"*ananas*"},
    {"kind":"event_property_is","key":"content.m\\.relates_to.rel_type","value":"m.thread"},
    {"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":"@alice:localhost"},
    {"kind":"contains_display_name"},{"kind":"room_member_count","is":">=2"},
    {"kind":"sender_notification_permission","key":"room"}]"#;

const EVENT: &str = r#"{"type":"m.room.message","sender":"@bob:localhost","room_id":"!r:localhost",
    "event_id":"$e","origin_server_ts":1,"content":{"msgtype":"m.text","body":"un ananas pour alice",
    "m.mentions":{"user_ids":["@alice:localhost"]},"m.relates_to":{"rel_type":"m.thread","event_id":"$t"}}}"#;

const FILTER: &str = r#"{"room":{"timeline":{"limit":10,"types":["m.room.*"],"not_types":["m.room.member"],
    "senders":["@a:b"],"lazy_load_members":true,"contains_url":false},"state":{"lazy_load_members":true},
    "rooms":["!r:localhost"],"not_rooms":[],"include_leave":true},"presence":{"not_types":["*"]},
    "account_data":{"types":["m.*"]}}"#;

const PDU: &str = r#"{"auth_events":["$a","$b"],"content":{"body":"bonjour","msgtype":"m.text"},
    "depth":12,"hashes":{"sha256":"aGFzaA"},"origin":"remote.example","origin_server_ts":1764800000000,
    "prev_events":["$p"],"room_id":"!room:remote.example","sender":"@bob:remote.example",
    "signatures":{"remote.example":{"ed25519:a":"c2ln"}},"type":"m.room.message","unsigned":{"age":4}}"#;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4096),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn organisation_yaml(edits in edits()) {
        let text = mutate(ORGANISATION_YAML, &edits);
        let _ = bounded("organisation YAML", || OrganisationFile::parse(&text, false));
    }

    #[test]
    fn organisation_csv(edits in edits()) {
        let text = mutate(ORGANISATION_CSV, &edits);
        let _ = bounded("organisation CSV", || OrganisationFile::parse(&text, true));
    }

    #[test]
    fn correspondence_drafts(edits in edits()) {
        let text = mutate(DRAFT, &edits);
        let _ = bounded("draft", || parse_draft(&text, "dgm"));
    }

    #[test]
    fn correspondence_exports(edits in edits()) {
        let text = mutate(EXPORT, &edits);
        bounded("export", || {
            if let Ok(export) = serde_json::from_str::<Export>(&text) {
                let _ = verify_export(&export);
            }
        });
    }

    #[test]
    fn push_conditions(conditions in edits(), event in edits()) {
        let conditions = mutate(PUSH_CONDITIONS, &conditions);
        let event = mutate(EVENT, &event);
        bounded("push conditions", || {
            use ruma::push::{FlattenedJson, PushCondition, PushConditionRoomCtx};
            let Ok(conditions) = serde_json::from_str::<Vec<PushCondition>>(&conditions) else { return };
            // The server evaluates rules on events it built or accepted, which are canonical
            // JSON (content with a float or an integer past 2^53 is refused first; ruma's
            // FlattenedJson panics on such numbers, as this harness found).
            if serde_json::from_str::<ruma::CanonicalJsonObject>(&event).is_err() {
                return;
            }
            let Ok(event) = serde_json::from_str::<ruma::serde::Raw<serde_json::Value>>(&event) else { return };
            let flat = FlattenedJson::from_raw(&event);
            let ctx = PushConditionRoomCtx::new(
                ruma::owned_room_id!("!r:localhost"),
                ruma::uint!(3),
                ruma::owned_user_id!("@alice:localhost"),
                "alice".to_owned(),
            );
            for c in &conditions {
                let _ = futures::executor::block_on(c.applies(&flat, &ctx));
            }
        });
    }

    #[test]
    fn filters(edits in edits(), event in edits()) {
        let text = mutate(FILTER, &edits);
        let event = mutate(PDU, &event);
        bounded("filters", || {
            let _ = serde_json::from_str::<SyncFilter>(&text);
            if let Ok(filter) = serde_json::from_str::<EventFilter>(&text) {
                if let Ok(pdu) = Pdu::from_received(ruma::owned_event_id!("$e"), event.clone(), None) {
                    let _ = filter.allows(&pdu);
                }
            }
        });
    }

    #[test]
    fn pdus(edits in edits()) {
        let text = mutate(PDU, &edits);
        bounded("PDU", || {
            let Ok(raw) = serde_json::value::RawValue::from_string(text.clone()) else { return };
            let Ok(object) = canonical(&raw) else { return };
            let _ = canonical_has_nul(&object);
            let _ = room_of(&object);
            for version in [ruma::RoomVersionId::V1, ruma::RoomVersionId::V10, ruma::RoomVersionId::V12] {
                if let Some(rules) = version.rules() {
                    if let Ok(id) = event_id_of(&object, &rules) {
                        let _ = Pdu::from_received(id, text.clone(), None);
                    }
                }
            }
        });
    }
}

#[test]
fn the_seeds_parse() {
    // The mutations start from valid inputs: each seed parses as it is.
    OrganisationFile::parse(ORGANISATION_YAML, false).expect("YAML seed");
    OrganisationFile::parse(ORGANISATION_CSV, true).expect("CSV seed");
    parse_draft(DRAFT, "dgm").expect("draft seed");
    serde_json::from_str::<Export>(EXPORT).expect("export seed");
    serde_json::from_str::<Vec<ruma::push::PushCondition>>(PUSH_CONDITIONS).expect("conditions seed");
    serde_json::from_str::<SyncFilter>(FILTER).expect("filter seed");
    let raw = serde_json::value::RawValue::from_string(PDU.to_owned()).unwrap();
    let object = canonical(&raw).expect("PDU seed");
    assert!(room_of(&object).is_ok());
}

#[test]
fn an_alias_bomb_is_refused_without_expanding() {
    let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
    for (p, n) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().zip(["b", "c", "d", "e", "f", "g", "h", "i"]) {
        bomb.push_str(&format!("{n}: &{n} [{}]\n", vec![format!("*{p}"); 9].join(",")));
    }
    let refused = bounded("alias bomb", || OrganisationFile::parse(&bomb, false));
    assert!(refused.is_err());
}
