//! Formal correspondence: telegrams, diplomatic notes and formal letters, as signed records
//! the server dispatches between functional groups.
//!
//! A correspondence is a **record**: a JSON object with its kind, reference, subject, body,
//! sending group, addressee groups for action and for information, tags, classification,
//! attachments and the reference it answers, signed by its author (ed25519 over the canonical
//! JSON, Matrix's signing scheme: `signatures.{author}.{ed25519:key}`, with `signed_at`). The
//! server seals on the author's behalf with a key it holds for them (recording which device
//! asked), or takes a record a client signed with a key it registered.
//!
//! Dispatch posts the record, as an `m.room.message` of msgtype
//! `fr.diplomatie.correspondence` with a readable `body` and `formatted_body`, into the sending
//! group's correspondence room, the correspondence room of every addressee group, the general
//! room of every community whose tags match (when the classification allows), and the journals
//! of the agents concerned; with the record's row, its deliveries and the addressees' action
//! items, in **one** transaction: a refusal or a failure leaves nothing half-dispatched.

mod circuit;
mod encrypted;
mod journal;
mod model;
mod state;
mod status;
pub mod text;
pub(crate) mod worker;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use diplomatie_policies::{self as policies, JournalView, Level};
use diplomatie_storage::correspondence as store;
use ruma::{
    api::error::ErrorKind, serde::Base64, CanonicalJsonObject, DeviceId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId,
    UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use model::{
    normalise_tag, ActionItem, CircuitRequest, CircuitView, Composition, Decision, DelegationRequest, DelegationView,
    EncryptedDispatch, JournalItems, Kind, Signatory,
};
pub(crate) use model::{Addressee, Community, OrgRoom};
pub use status::Status;
pub use text::parse_draft;

use self::state::CorrespondenceState;
use crate::{
    accounts::{Accounts, Caller},
    core::Core,
    organisation::Organisation,
    portal::Portal,
    rooms::{directory::Directory, membership::Membership, PduBuilder, Rooms, Target},
    Error, Result,
};

pub use crate::names::{DELIVERY, MSGTYPE};

/// A correspondence checked and ready to be sealed and dispatched.
#[derive(Clone, Debug)]
struct Plan {
    kind: Kind,
    level: Level,
    from: Addressee,
    addressees: Vec<Addressee>,
    communities: Vec<Addressee>,
    tags: Vec<String>,
    /// The copies an encrypted (MLS) correspondence already has, which its author's client
    /// sent into each group's DR room: then dispatch posts no copy of its own.
    copies: Option<Vec<store::Delivery>>,
}

/// What a dispatch made.
#[derive(Clone, Debug, Serialize)]
pub struct Dispatched {
    pub reference: String,
    /// Every copy (rooms and journals), `{room_id, event_id, as, group}`.
    pub deliveries: Vec<Value>,
    pub journal_entries: usize,
}

/// The signed record of a correspondence, with the public keys that verify it: what
/// `diplomatie verify` checks offline.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Export {
    pub record: Value,
    /// `{user_id: {key_id: base64 public key}}`.
    pub public_keys: BTreeMap<String, BTreeMap<String, String>>,
    /// A crisis cell's log: its sealed entries, each signed by its author; the record is then
    /// the closing record, which lists each entry's digest (or, while the cell is active, an
    /// unsigned `"open": true` header).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<Value>,
}

/// A verified export: who signed, with which key, when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub reference: String,
    pub author: String,
    pub key_id: String,
    pub signed_at: i64,
    /// The log entries verified with it (a crisis cell's log).
    pub entries: usize,
    /// Whether a log is closed (its closing record signed): an open log is its entries only.
    pub closed: bool,
    /// The approvals of a record signed at the end of a circuit (each verified, in order).
    pub approvals: Option<usize>,
}

/// Checks an exported correspondence's signature, or a crisis log's: every entry's, and the
/// closing record's with the digest of every entry (offline: no server, no network).
pub fn verify_export(export: &Export) -> std::result::Result<Verified, String> {
    let mut digests = Vec::new();
    for (i, entry) in export.entries.iter().enumerate() {
        let author = entry.get("author").and_then(Value::as_str).ok_or("an entry names no author")?;
        let keys = export.public_keys.get(author).ok_or_else(|| format!("no public key of {author}"))?;
        let v = verify_record(entry, author, keys).map_err(|e| format!("entry {}: {e}", i + 1))?;
        if entry.get("number").and_then(Value::as_i64) != Some(i as i64 + 1) {
            return Err(format!("entry {} is out of order or missing ({})", i + 1, v.reference));
        }
        digests.push(record_digest(entry).map_err(|_| "an entry is not canonical JSON".to_owned())?);
    }
    let open =
        export.record.get("open").and_then(Value::as_bool) == Some(true) && export.record.get("signatures").is_none();
    if open {
        if export.entries.is_empty() {
            return Err("an open log with no entry".into());
        }
        let reference = export.record.get("reference").and_then(Value::as_str).unwrap_or_default().to_owned();
        return Ok(Verified {
            reference,
            author: String::new(),
            key_id: String::new(),
            signed_at: 0,
            entries: digests.len(),
            closed: false,
            approvals: None,
        });
    }
    let author = export.record.get("author").and_then(Value::as_str).ok_or("the record names no author")?;
    let keys = export.public_keys.get(author).ok_or("no public key of the author")?;
    let mut verified = verify_record(&export.record, author, keys)?;
    verified.approvals = verify_circuit(&export.record, &export.public_keys)?;
    if export.record.get("kind").and_then(Value::as_str) == Some("crisis_log") {
        let listed: Vec<&str> = export.record["entries"]
            .as_array()
            .ok_or("the closing record lists no entries")?
            .iter()
            .map(|e| e["sha256"].as_str().unwrap_or_default())
            .collect();
        if listed != digests.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err("the entries are not those the closing record lists".into());
        }
        verified.entries = digests.len();
        verified.closed = true;
    }
    Ok(verified)
}

/// Checks the signature circuit a record went through, if any: every decision signed by who
/// gave it; the approvals of the final draft (after the last refusal) those of the named
/// approvers, in their order (a delegate names whom it acted for); the last decision the
/// signatory's signature over that draft, by the record's author.
fn verify_circuit(
    record: &Value,
    keys: &BTreeMap<String, BTreeMap<String, String>>,
) -> std::result::Result<Option<usize>, String> {
    let Some(circuit) = record.get("circuit") else { return Ok(None) };
    let draft = composition_of(record).map_err(|_| "the record's draft cannot be read".to_owned())?;
    let draft = serde_json::to_value(&draft).map_err(|e| e.to_string())?;
    let digest = record_digest(&draft).map_err(|_| "the draft is not canonical JSON".to_owned())?;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
    };
    let approvers = strings(&circuit["approvers"]);
    let decisions = circuit["decisions"].as_array().ok_or("the circuit lists no decisions")?;
    let mut round: Vec<&Value> = Vec::new();
    for (i, d) in decisions.iter().enumerate() {
        let author = d["author"].as_str().ok_or_else(|| format!("decision {} names no author", i + 1))?;
        let signer_keys = keys.get(author).ok_or_else(|| format!("no public key of {author}"))?;
        verify_record(d, author, signer_keys).map_err(|e| format!("decision {}: {e}", i + 1))?;
        if d["circuit_id"] != circuit["circuit_id"] {
            return Err(format!("decision {} belongs to another circuit", i + 1));
        }
        if d["decision"] == "refused" {
            round.clear();
        } else {
            round.push(d);
        }
    }
    let Some((signature, approvals)) = round.split_last() else { return Err("the circuit was not signed".into()) };
    let on_draft = |d: &Value| d["draft_sha256"].as_str() == Some(digest.as_str());
    let approved: Vec<String> = approvals
        .iter()
        .filter(|d| d["decision"] == "approved" && on_draft(d))
        .filter_map(|d| d["by"].as_str().map(str::to_owned))
        .collect();
    if approvals.len() != approved.len() || approved != approvers {
        return Err("the approvals of the final draft are not the named approvers', in their order".into());
    }
    if signature["decision"] != "signed" || !on_draft(signature) || signature["by"] != circuit["signatory"] {
        return Err("the last decision is not the signatory's signature of the final draft".into());
    }
    if signature["author"] != record["author"] {
        return Err("the record is not signed by whoever signed in the circuit".into());
    }
    Ok(Some(approved.len()))
}

/// The people whose signatures a record carries: its author, and its circuit's deciders.
fn record_signers(record: &Value) -> Vec<OwnedUserId> {
    let mut out: Vec<OwnedUserId> = Vec::new();
    let deciders = record["circuit"]["decisions"].as_array().into_iter().flatten().map(|d| &d["author"]);
    for id in std::iter::once(&record["author"]).chain(deciders).filter_map(Value::as_str) {
        if let Ok(u) = OwnedUserId::try_from(id) {
            if !out.contains(&u) {
                out.push(u);
            }
        }
    }
    out
}

/// The SHA-256 (unpadded base64) of a record's canonical JSON, as the closing record lists it.
pub fn record_digest(record: &Value) -> Result<String> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let object: CanonicalJsonObject = serde_json::from_value(record.clone()).map_err(crate::internal!())?;
    let canonical = serde_json::to_string(&object).map_err(crate::internal!())?;
    Ok(base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes())))
}

/// Signs a record as `author` with `key` (the record's `signatures` replaced).
pub(crate) fn sign_with(key: &ruma::signatures::Ed25519KeyPair, author: &str, record: Value) -> Result<Value> {
    let mut object: CanonicalJsonObject = serde_json::from_value(record).map_err(crate::internal!())?;
    object.remove("signatures");
    ruma::signatures::sign_json(author, key, &mut object).map_err(crate::internal!())?;
    serde_json::to_value(&object).map_err(crate::internal!())
}

/// Checks that `record` carries a valid signature of `author` by one of `keys`, and nobody
/// else's.
fn verify_record(
    record: &Value,
    author: &str,
    keys: &BTreeMap<String, String>,
) -> std::result::Result<Verified, String> {
    let object: CanonicalJsonObject =
        serde_json::from_value(record.clone()).map_err(|e| format!("not canonical JSON: {e}"))?;
    let signatures = record.get("signatures").and_then(Value::as_object).ok_or("the record is not signed")?;
    if signatures.len() != 1 || !signatures.contains_key(author) {
        return Err("the record must be signed by its author, and only by them".into());
    }
    let key_ids: Vec<&String> = signatures[author].as_object().map(|m| m.keys().collect()).unwrap_or_default();
    let [key_id] = key_ids[..] else { return Err("the record must carry exactly one signature".into()) };
    let public = keys.get(key_id).ok_or_else(|| format!("unknown key {key_id}"))?;
    let public = Base64::parse(public).map_err(|_| format!("invalid public key {key_id}"))?;
    let map = BTreeMap::from([(author.to_owned(), BTreeMap::from([(key_id.clone(), public)]))]);
    ruma::signatures::verify_json(&map, &object).map_err(|e| format!("the signature does not verify: {e}"))?;
    Ok(Verified {
        reference: record.get("reference").and_then(Value::as_str).unwrap_or_default().to_owned(),
        author: author.to_owned(),
        key_id: key_id.clone(),
        signed_at: record.get("signed_at").and_then(Value::as_i64).ok_or("the record has no signed_at")?,
        entries: 0,
        closed: false,
        approvals: None,
    })
}

/// The record's fields (without signatures) as the author composed them.
fn composition_of(record: &Value) -> Result<Composition> {
    let mut fields = record.as_object().cloned().ok_or_else(|| Error::bad_json("The record is not an object"))?;
    for k in ["reference", "author", "signed_at", "signatures", "sealed", "unsigned", "circuit"] {
        fields.remove(k);
    }
    serde_json::from_value(Value::Object(fields)).map_err(|e| Error::bad_json(format!("Invalid record: {e}")))
}

fn level_of(raw: Option<&str>) -> Result<Level> {
    match raw {
        None => Ok(Level::NP),
        Some(s) => Level::parse(s.trim().to_uppercase().as_str())
            .ok_or_else(|| Error::invalid_param(format!("Unknown classification {s:?} (NP or DR)"))),
    }
}

/// Formal correspondence: composition, sealing, dispatch, journals, action items and the
/// service account's worker; over the rooms, the accounts, the portal, the organisation, the
/// directory (aliases) and memberships (journals).
pub struct Correspondence {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    accounts: Arc<Accounts>,
    portal: Arc<Portal>,
    organisation: Arc<Organisation>,
    directory: Arc<Directory>,
    membership: Arc<Membership>,
    state: CorrespondenceState,
}

crate::core::over_core!(Correspondence);

impl Correspondence {
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        accounts: Arc<Accounts>,
        portal: Arc<Portal>,
        organisation: Arc<Organisation>,
        directory: Arc<Directory>,
        membership: Arc<Membership>,
    ) -> Correspondence {
        Correspondence {
            core,
            rooms,
            accounts,
            portal,
            organisation,
            directory,
            membership,
            state: CorrespondenceState::default(),
        }
    }

    /// A group's or community's space, name and room (`key`: `correspondence`, `general`),
    /// from the cache of the organisation's directory (see [`CorrespondenceState`]).
    pub(crate) async fn org_room(&self, prefix: &str, slug: &str, key: &str) -> Result<Option<OrgRoom>> {
        let cache_key = format!("{prefix}.{slug}.{key}");
        if let Some(found) = self.state.directory.lock().unwrap().get(&cache_key) {
            return Ok(found.clone());
        }
        let generation = self.state.generation();
        let found = self.org_room_uncached(prefix, slug, key).await?;
        self.state.remember(generation, cache_key, found.clone());
        Ok(found)
    }

    async fn org_room_uncached(&self, prefix: &str, slug: &str, key: &str) -> Result<Option<OrgRoom>> {
        let alias =
            |s: String| RoomAliasId::parse(s).map_err(|_| Error::invalid_param(format!("Invalid group {slug:?}")));
        let space_alias = alias(format!("#{prefix}.{slug}:{}", self.server_name()))?;
        let room_alias = alias(format!("#{prefix}.{slug}.{key}:{}", self.server_name()))?;
        let (Some(space), Some(room)) =
            (self.directory.alias_target(&space_alias).await?, self.directory.alias_target(&room_alias).await?)
        else {
            return Ok(None);
        };
        let name = self
            .rooms
            .state_event(&space, &ruma::events::StateEventType::RoomName, "")
            .await?
            .and_then(|p| p.content_value().get("name").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| slug.to_owned());
        Ok(Some((space, name, room)))
    }

    async fn addressee(&self, slug: &str, role: &'static str) -> Result<Addressee> {
        let (space, name, room) = self
            .org_room("g", slug, "correspondence")
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("Unknown group {slug:?}")))?;
        Ok(Addressee { slug: slug.to_owned(), name, space, room, role })
    }

    /// Checks everything about a composition that can be checked before anything is written.
    async fn plan(&self, author: &UserId, device: Option<&DeviceId>, c: &Composition) -> Result<Plan> {
        let kind = Kind::parse(&c.kind).ok_or_else(|| {
            Error::invalid_param(format!("Unknown kind {:?}: telegram, diplomatic_note or formal_letter", c.kind))
        })?;
        let level = level_of(c.classification.as_deref())?;
        if c.subject.trim().is_empty() {
            return Err(Error::new(ErrorKind::MissingParam, "A correspondence has a subject"));
        }
        if c.body.trim().is_empty() {
            return Err(Error::new(ErrorKind::MissingParam, "A correspondence has a body"));
        }
        if c.action.is_empty() && c.information.is_empty() && c.external.is_empty() {
            return Err(Error::new(ErrorKind::MissingParam, "A correspondence has at least one addressee"));
        }
        if let Some(bad) = c.external.iter().find(|a| !policies::is_mail_address(a)) {
            return Err(Error::invalid_param(format!("External addressee {bad:?} is not an e-mail address")));
        }
        if !c.external.is_empty() && level == Level::DR {
            return Err(Error::forbidden("DR correspondence never leaves by e-mail: no external addressees"));
        }
        for uri in &c.attachments {
            if ruma::OwnedMxcUri::from(uri.as_str()).validate().is_err() {
                return Err(Error::invalid_param(format!("Attachment {uri:?} is not an mxc:// URI")));
            }
        }
        if let Some(answered) = &c.in_reply_to {
            if store::get(self.db.pool(), answered).await?.is_none() {
                return Err(Error::new(ErrorKind::NotFound, format!("Unknown reference {answered:?} to answer")));
            }
        }
        let from = self.sender_group(author, device, &c.from, level).await?;
        if !c.external.is_empty() && !self.has_mail_bridge(&from.room).await? {
            return Err(Error::forbidden(format!(
                "No e-mail bridge in the correspondence room of {:?}: its managers invite one before \
                 correspondence goes to external addressees",
                c.from
            )));
        }
        let addressees = self.addressees(&c.action, &c.information, level).await?;
        let tags: Vec<String> = c.tags.iter().map(|t| normalise_tag(t)).filter(|t| !t.is_empty()).collect();
        let communities = self.matching_communities(&tags, level).await?;
        Ok(Plan { kind, level, from, addressees, communities, tags, copies: None })
    }

    /// Whether an e-mail bridge (an application service of protocol `email`) is in `room`, to
    /// send a correspondence's external addressees their letter.
    async fn has_mail_bridge(&self, room: &ruma::RoomId) -> Result<bool> {
        for service in self.registrations.all() {
            if service.protocols().iter().any(|p| p == "email") && self.rooms.is_joined(room, &service.sender).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The sending group, if `author` (on `device`) may send a correspondence of `level` from
    /// it: a member, cleared for the level, the device approved for DR.
    async fn sender_group(
        &self,
        author: &UserId,
        device: Option<&DeviceId>,
        slug: &str,
        level: Level,
    ) -> Result<Addressee> {
        let from = self.addressee(slug, "origin").await.map_err(|e| match e {
            Error::Matrix(ErrorKind::NotFound, _) => {
                Error::new(ErrorKind::NotFound, format!("Unknown sending group {slug:?}"))
            }
            e => e,
        })?;
        let person = self.portal.person(author).await?;
        let member = self.rooms.is_joined(&from.space, author).await?;
        let device_dr = match device {
            Some(d) => self.portal.device_is_dr(author, d).await?,
            None => false,
        };
        let require_device = self.config.portal.dr_requires_approved_device;
        policies::may_send_correspondence(person, member, level, device_dr, require_device)
            .map_err(crate::error::forbidden)?;
        Ok(from)
    }

    /// The addressee groups, each once, each one that may receive `level`.
    async fn addressees(&self, action: &[String], information: &[String], level: Level) -> Result<Vec<Addressee>> {
        let mut seen = BTreeSet::new();
        let mut addressees = Vec::new();
        for (slugs, role) in [(action, "action"), (information, "information")] {
            for slug in slugs {
                if !seen.insert(slug.as_str()) {
                    return Err(Error::invalid_param(format!("Group {slug:?} is addressed twice")));
                }
                let a = self.addressee(slug, role).await?;
                let facts = self.portal.room_facts_now(&a.space).await?;
                policies::may_address(facts, level).map_err(|r| Error::forbidden(format!("{} ({slug})", r.0)))?;
                addressees.push(a);
            }
        }
        Ok(addressees)
    }

    /// The communities whose interest tags meet `tags` and whose room may take `level`.
    async fn matching_communities(&self, tags: &[String], level: Level) -> Result<Vec<Addressee>> {
        if tags.is_empty() {
            return Ok(vec![]);
        }
        let mut found = Vec::new();
        for c in self.communities().await?.iter() {
            if c.tags.iter().any(|t| tags.contains(t)) && policies::may_post_record(c.facts, level).is_ok() {
                found.push(c.addressee.clone());
            }
        }
        Ok(found)
    }

    /// Every community of this server with its (normalised) tags, from the cache.
    async fn communities(&self) -> Result<Arc<Vec<Community>>> {
        if let Some(list) = self.state.communities.lock().unwrap().clone() {
            return Ok(list);
        }
        let _reading = self.state.reading_communities.lock().await;
        if let Some(list) = self.state.communities.lock().unwrap().clone() {
            return Ok(list);
        }
        let generation = self.state.generation();
        let prefix = "#c.";
        let suffix = format!(":{}", self.server_name());
        let mut out = Vec::new();
        for (alias, room) in diplomatie_storage::rooms::aliases_with_prefix(self.db.pool(), prefix).await? {
            let Some(slug) = alias.strip_prefix(prefix).and_then(|a| a.strip_suffix(&suffix)) else { continue };
            if slug.contains('.') {
                continue; // a room of the community, not its space
            }
            let Ok(room) = OwnedRoomId::try_from(room) else { continue };
            let Some(marker) = self.organisation.org_marker(&room).await? else { continue };
            let tags = marker
                .get("tags")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(normalise_tag).collect())
                .unwrap_or_default();
            let Some((space, name, general)) = self.org_room_uncached("c", slug, "general").await? else { continue };
            let facts = self.portal.room_facts_now(&general).await?;
            let addressee = Addressee { slug: slug.to_owned(), name, space, room: general, role: "community" };
            out.push(Community { addressee, tags, facts });
        }
        let list = Arc::new(out);
        self.state.remember_communities(generation, list.clone());
        Ok(list)
    }

    /// The key the server holds to seal `user`'s correspondence, created on first use.
    pub(crate) async fn sealing_key(&self, user: &UserId) -> Result<ruma::signatures::Ed25519KeyPair> {
        use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
        use ruma::signatures::Ed25519KeyPair;
        let stored = match store::held_key(self.db.pool(), user.as_str()).await? {
            Some(k) => k,
            None => {
                let document = Ed25519KeyPair::generate();
                let version = format!("seal_{}", crate::random_string(8));
                let pair = Ed25519KeyPair::from_der(&document, version.clone()).map_err(crate::internal!())?;
                let key = store::SigningKey {
                    key_id: format!("ed25519:{version}"),
                    public_key: STANDARD_NO_PAD.encode(pair.public_key()),
                    secret: Some(STANDARD_NO_PAD.encode(&*document)),
                };
                store::insert_key(self.db.pool(), user.as_str(), &key, crate::now_ms()).await?;
                // Two first seals at once: both use whichever key was stored first.
                store::held_key(self.db.pool(), user.as_str())
                    .await?
                    .ok_or_else(crate::internal!("a value present by construction"))?
            }
        };
        let der = STANDARD_NO_PAD.decode(stored.secret.as_deref().unwrap_or_default()).map_err(crate::internal!())?;
        let version = stored.key_id.trim_start_matches("ed25519:").to_owned();
        Ed25519KeyPair::from_der(&der, version).map_err(crate::internal!())
    }

    /// Registers a key a client keeps, to sign its own correspondence (`key_id`
    /// `ed25519:<version>`, unpadded base64 public key).
    pub async fn register_correspondence_key(&self, user: &UserId, key_id: &str, public_key: &str) -> Result<()> {
        let Some(version) = key_id.strip_prefix("ed25519:").filter(|v| !v.is_empty()) else {
            return Err(Error::invalid_param("A key id is ed25519:<version>"));
        };
        if version.starts_with("seal_") {
            return Err(Error::invalid_param("Key ids starting with seal_ are the server's"));
        }
        let decoded = Base64::<ruma::serde::base64::Standard>::parse(public_key)
            .map_err(|_| Error::invalid_param("The public key is not base64"))?;
        if decoded.as_bytes().len() != 32 {
            return Err(Error::invalid_param("An ed25519 public key has 32 bytes"));
        }
        let key = store::SigningKey { key_id: key_id.to_owned(), public_key: public_key.to_owned(), secret: None };
        if !store::insert_key(self.db.pool(), user.as_str(), &key, crate::now_ms()).await? {
            let known = store::public_keys(self.db.pool(), user.as_str()).await?;
            if !known.iter().any(|(id, k)| id == key_id && k == public_key) {
                return Err(Error::invalid_param("This key id is already registered with another key"));
            }
        }
        Ok(())
    }

    /// The public keys of `user`'s correspondence (held by the server or by clients).
    pub async fn correspondence_keys(&self, user: &UserId) -> Result<BTreeMap<String, String>> {
        Ok(store::public_keys(self.db.pool(), user.as_str()).await?.into_iter().collect())
    }

    /// Hands out a reference of `group` for a client that signs itself.
    pub async fn reserve_reference(&self, author: &UserId, group: &str) -> Result<String> {
        let from = self.addressee(group, "origin").await?;
        let person = self.portal.person(author).await?;
        let member = self.rooms.is_joined(&from.space, author).await?;
        policies::may_send_correspondence(person, member, Level::NP, true, false).map_err(crate::error::forbidden)?;
        self.new_reference(author, group).await
    }

    async fn new_reference(&self, author: &UserId, group: &str) -> Result<String> {
        let now = crate::now_ms();
        let year = year_of(now);
        let mut tx = self.db.begin_write().await?;
        let reference = store::reserve_reference(&mut tx, group, year, author.as_str(), now, |n| {
            format!("{}-{year}-{n:06}", group.to_uppercase())
        })
        .await?;
        diplomatie_storage::commit(tx).await?;
        Ok(reference)
    }

    /// Seals a composition with the author's key held by the server (recording which device
    /// asked) and dispatches it.
    pub async fn send_correspondence(
        &self,
        author: &UserId,
        device: Option<&DeviceId>,
        c: &Composition,
    ) -> Result<Dispatched> {
        let plan = self.plan(author, device, c).await?;
        let reference = self.new_reference(author, &plan.from.slug).await?;
        let mut record = serde_json::to_value(c).map_err(crate::internal!())?;
        record["kind"] = json!(plan.kind.as_str());
        record["classification"] = json!(plan.level.as_str());
        record["tags"] = json!(plan.tags);
        record["reference"] = json!(reference);
        record["author"] = json!(author);
        record["signed_at"] = json!(crate::now_ms());
        record["sealed"] = json!({ "by": self.server_name(), "device_id": device });
        let record = self.seal(author, record).await?;
        self.dispatch(author, device, plan, record).await
    }

    /// Signs a record with `author`'s key held by the server (made the first time).
    pub(crate) async fn seal(&self, author: &UserId, record: Value) -> Result<Value> {
        let key = self.sealing_key(author).await?;
        sign_with(&key, author.as_str(), record)
    }

    /// Dispatches a record its author signed with a key of their own (registered before), under
    /// a reference reserved for them.
    pub async fn send_signed_correspondence(&self, caller: &Caller, record: Value) -> Result<Dispatched> {
        let author = record.get("author").and_then(Value::as_str).unwrap_or_default();
        if author != caller.user_id.as_str() {
            return Err(Error::forbidden("The record's author must be the caller"));
        }
        if record.get("sealed").is_some() {
            return Err(Error::invalid_param("A record the client signs carries no `sealed`"));
        }
        let reference = record
            .get("reference")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::new(ErrorKind::MissingParam, "The record has no reference"))?
            .to_owned();
        let keys = self.correspondence_keys(&caller.user_id).await?;
        verify_record(&record, author, &keys).map_err(|e| Error::forbidden(format!("Refused: {e}")))?;
        let c = composition_of(&record)?;
        self.check_reservation(&reference, &c.from, author).await?;
        let plan = self.plan(&caller.user_id, Some(&caller.device_id), &c).await?;
        // `plan` accepts the words agents type; a signed record names its kind canonically.
        if c.kind != plan.kind.as_str() {
            return Err(Error::invalid_param("The record's kind must be telegram, diplomatic_note or formal_letter"));
        }
        self.dispatch(&caller.user_id, None, plan, record).await
    }

    /// A reference reserved by `author` for `group`, not dispatched yet.
    async fn check_reservation(&self, reference: &str, group: &str, author: &str) -> Result<()> {
        match store::reservation(self.db.pool(), reference).await? {
            Some((g, by)) if g == group && by == author => {}
            _ => {
                return Err(Error::forbidden(format!(
                    "Reference {reference} was not reserved by you for group {group}"
                )))
            }
        }
        if store::get(self.db.pool(), reference).await?.is_some() {
            return Err(Error::forbidden(format!("Reference {reference} was already dispatched (replay)")));
        }
        Ok(())
    }

    /// Delivers a signed record everywhere `plan` says, in one transaction.
    async fn dispatch(
        &self,
        author: &UserId,
        device: Option<&DeviceId>,
        plan: Plan,
        record: Value,
    ) -> Result<Dispatched> {
        let system = self.organisation.system_user().await?;
        let reference =
            record["reference"].as_str().ok_or_else(crate::internal!("a value present by construction"))?.to_owned();
        // Journals: the members of groups for action, and the followers of the tags.
        let mut action_readers: Vec<(OwnedUserId, usize)> = Vec::new();
        for (i, a) in plan.addressees.iter().enumerate().filter(|(_, a)| a.role == "action") {
            for member in self.rooms.joined_members(&a.space).await?.iter() {
                if member.server_name() == self.server_name() && *member != system {
                    action_readers.push((member.clone(), i));
                }
            }
        }
        action_readers.sort();
        let with_action: BTreeSet<&OwnedUserId> = action_readers.iter().map(|(u, _)| u).collect();
        let mut interested = BTreeSet::new();
        for tag in &plan.tags {
            for u in store::followers(self.db.pool(), tag).await? {
                if let Ok(u) = OwnedUserId::try_from(u) {
                    if !with_action.contains(&u) && u != system {
                        interested.insert(u);
                    }
                }
            }
        }
        let mut views: HashMap<OwnedUserId, JournalView> = HashMap::new();
        for u in with_action.iter().map(|u| (*u).clone()).chain(interested.iter().cloned()) {
            let view = policies::journal_view(self.portal.person(&u).await?, plan.level);
            views.insert(u, view);
        }
        views.retain(|_, v| *v != JournalView::Nothing);
        let users: Vec<OwnedUserId> = views.keys().cloned().collect();
        let journals = self.ensure_journals(&users).await?;

        // Everything in one batch: a refusal or failure anywhere keeps nothing.
        let kind = plan.kind;
        let copy = |role: &str, group: &Addressee| {
            let mut content = text::room_copy(&record, kind, role);
            content[DELIVERY] = json!({ "as": role, "group": group.slug });
            content
        };
        let mut targets: Vec<(OwnedRoomId, Value, &'static str, String)> = Vec::new();
        if plan.copies.is_none() {
            targets.push((plan.from.room.clone(), copy("origin", &plan.from), "origin", plan.from.slug.clone()));
            for a in plan.addressees.iter().chain(plan.communities.iter()) {
                targets.push((a.room.clone(), copy(a.role, a), a.role, a.slug.clone()));
            }
        }
        let mut journal_entries = 0;
        for (user, i) in &action_readers {
            let Some(view) = views.get(user) else { continue };
            let a = &plan.addressees[*i];
            let status = status::ItemStatus::new_item();
            let content = text::journal_entry(&record, kind, *view, "action", Some((a, &status)));
            let role = if *view == JournalView::Pointer { "journal_action_pointer" } else { "journal_action" };
            targets.push((journals[user].clone(), content, role, a.slug.clone()));
            journal_entries += 1;
        }
        for user in &interested {
            let Some(view) = views.get(user) else { continue };
            let content = text::journal_entry(&record, kind, *view, "interest", None);
            let role = if *view == JournalView::Pointer { "journal_interest_pointer" } else { "journal_interest" };
            targets.push((journals[user].clone(), content, role, String::new()));
            journal_entries += 1;
        }

        let mut writer = self.multi_room_writer().await;
        let mut deliveries = plan.copies.clone().unwrap_or_default();
        for (room, content, role, group) in targets {
            writer.switch_to(&room).await?;
            let pdu = writer.append(&system, PduBuilder::message("m.room.message", content), None).await?;
            deliveries.push(store::Delivery {
                reference: reference.clone(),
                room_id: room.to_string(),
                event_id: pdu.event_id.to_string(),
                stream_ordering: pdu.stream_ordering,
                role: role.to_owned(),
                group_slug: group,
            });
        }
        let now = crate::now_ms();
        let actions = plan
            .addressees
            .iter()
            .filter(|a| a.role == "action")
            .map(|a| store::Action {
                reference: reference.clone(),
                group_slug: a.slug.clone(),
                status: Status::New.as_str().to_owned(),
                assignee: None,
                updated_by: None,
                updated_ts: now,
            })
            .collect();
        let stored = store::Stored {
            reference: reference.clone(),
            kind: kind.as_str().to_owned(),
            group_slug: plan.from.slug.clone(),
            author: author.to_string(),
            sealed_for_device: device.map(|d| d.to_string()),
            classification: plan.level.as_str().to_owned(),
            subject: record["subject"].as_str().unwrap_or_default().to_owned(),
            record: serde_json::to_string(&record).map_err(crate::internal!())?,
            ts: now,
        };
        writer.add_correspondence(stored, deliveries.clone(), actions);
        writer.commit().await?;
        tracing::info!(%reference, copies = deliveries.len(), journal_entries, "correspondence dispatched");
        Ok(Dispatched {
            reference,
            deliveries: deliveries
                .iter()
                .map(|d| json!({ "room_id": d.room_id, "event_id": d.event_id, "as": d.role, "group": d.group_slug }))
                .collect(),
            journal_entries,
        })
    }

    /// A dispatched correspondence's signed record and the keys that verify it, for whoever
    /// may read it (its author, an administrator, or a member of a room it was delivered to).
    pub async fn export_correspondence(&self, caller: &Caller, reference: &str) -> Result<Export> {
        let stored = store::get(self.db.pool(), reference)
            .await?
            .ok_or_else(|| Error::not_found(format!("Unknown correspondence {reference}")))?;
        let mut allowed = caller.is_admin || stored.author == caller.user_id.as_str();
        if !allowed {
            for d in store::deliveries(self.db.pool(), reference).await? {
                if d.role.ends_with("pointer") {
                    continue;
                }
                let Ok(room) = OwnedRoomId::try_from(d.room_id) else { continue };
                if self.rooms.is_joined(&room, &caller.user_id).await? {
                    allowed = true;
                    break;
                }
            }
        }
        if !allowed {
            return Err(Error::not_found(format!("Unknown correspondence {reference}")));
        }
        let record: Value = serde_json::from_str(&stored.record).map_err(crate::internal!())?;
        let public_keys = self.record_keys(&record).await?;
        Ok(Export { record, public_keys, entries: Vec::new() })
    }

    /// The public keys of everyone who signed a record (its author, its circuit's deciders).
    pub async fn record_keys(&self, record: &Value) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        let mut keys = BTreeMap::new();
        for signer in record_signers(record) {
            keys.insert(signer.to_string(), self.correspondence_keys(&signer).await?);
        }
        Ok(keys)
    }

    /// How many distinct agents read a correspondence (a public read receipt at or after one of
    /// its copies), in all and by their primary group; for its author or an administrator.
    pub async fn audience(&self, caller: &Caller, reference: &str) -> Result<Audience> {
        self.audience_for(&caller.user_id, caller.is_admin, reference).await
    }

    pub(crate) async fn audience_for(&self, user: &UserId, is_admin: bool, reference: &str) -> Result<Audience> {
        let stored = store::get(self.db.pool(), reference)
            .await?
            .ok_or_else(|| Error::not_found(format!("Unknown correspondence {reference}")))?;
        if !is_admin && stored.author != user.as_str() {
            return Err(Error::forbidden("Only the author sees the audience of a correspondence"));
        }
        self.audience_of(&stored).await
    }

    async fn audience_of(&self, stored: &store::Stored) -> Result<Audience> {
        let system = self.organisation.system_user().await?;
        let mut by_group: BTreeMap<String, u64> = BTreeMap::new();
        let mut readers = 0u64;
        let mut names: HashMap<String, String> = HashMap::new();
        for (user, primary) in store::readers(self.db.pool(), &stored.reference).await? {
            if user == stored.author || user == system.as_str() {
                continue;
            }
            readers += 1;
            let group = match primary {
                Some(space) => match names.get(&space) {
                    Some(slug) => slug.clone(),
                    None => {
                        let slug = match OwnedRoomId::try_from(space.clone()) {
                            Ok(room) => self
                                .organisation
                                .org_marker(&room)
                                .await?
                                .and_then(|m| m.get("slug").and_then(Value::as_str).map(str::to_owned))
                                .unwrap_or_else(|| space.clone()),
                            Err(_) => space.clone(),
                        };
                        names.insert(space, slug.clone());
                        slug
                    }
                },
                None => "-".to_owned(),
            };
            *by_group.entry(group).or_default() += 1;
        }
        let deliveries = store::deliveries(self.db.pool(), &stored.reference).await?;
        Ok(Audience {
            reference: stored.reference.clone(),
            readers,
            by_group,
            delivered_to: deliveries.iter().filter(|d| !d.role.starts_with("journal")).count(),
            journal_entries: deliveries.iter().filter(|d| d.role.starts_with("journal")).count(),
        })
    }

    /// A batch writer spanning rooms (see [`crate::rooms::RoomWriter`]).
    async fn multi_room_writer(&self) -> crate::rooms::RoomWriter<'_> {
        let write = self.begin_write().await;
        self.rooms.batch_writer(write)
    }

    /// Posts a notice of the system account in a room (answers to drafts and commands).
    async fn notice(&self, room: &RoomId, text: &str, reply_to: Option<&ruma::EventId>) -> Result<Arc<crate::Pdu>> {
        let system = self.organisation.system_user().await?;
        let mut content = json!({ "msgtype": "m.notice", "body": text });
        if let Some(event) = reply_to {
            content["m.relates_to"] = json!({ "m.in_reply_to": { "event_id": event } });
        }
        self.rooms.append_event(Target::Room(room), &system, PduBuilder::message("m.room.message", content), None).await
    }
}

/// Who read a correspondence: its readers (author and system account aside), by primary
/// group (`-` for none), and where it was delivered.
#[derive(Debug, serde::Serialize)]
pub struct Audience {
    pub reference: String,
    pub readers: u64,
    pub by_group: BTreeMap<String, u64>,
    pub delivered_to: usize,
    pub journal_entries: usize,
}

/// The calendar year of a timestamp (UTC).
fn year_of(ms: i64) -> i64 {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map(|t| i64::from(t.year())).unwrap_or(1970)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years() {
        assert_eq!(year_of(0), 1970);
        assert_eq!(year_of(1_704_067_199_999), 2023); // 2023-12-31T23:59:59.999Z
        assert_eq!(year_of(1_704_067_200_000), 2024);
        assert_eq!(year_of(1_795_000_000_000), 2026);
    }

    #[test]
    fn kinds() {
        assert_eq!(Kind::parse("Télégramme"), Some(Kind::Telegram));
        assert_eq!(Kind::parse("diplomatic_note"), Some(Kind::DiplomaticNote));
        assert_eq!(Kind::parse("courrier"), Some(Kind::FormalLetter));
        assert_eq!(Kind::parse("memo"), None);
    }

    #[test]
    fn records_verify_and_tampering_fails() {
        use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
        let doc = ruma::signatures::Ed25519KeyPair::generate();
        let key = ruma::signatures::Ed25519KeyPair::from_der(&doc, "k1".into()).unwrap();
        let mut object: CanonicalJsonObject = serde_json::from_value(json!({
            "kind": "telegram", "reference": "DGM-2026-000001", "author": "@a:x", "subject": "s", "body": "b",
            "from": "dgm", "signed_at": 1,
        }))
        .unwrap();
        ruma::signatures::sign_json("@a:x", &key, &mut object).unwrap();
        let record = serde_json::to_value(&object).unwrap();
        let keys = BTreeMap::from([("ed25519:k1".to_owned(), STANDARD_NO_PAD.encode(key.public_key()))]);
        let export = Export {
            record: record.clone(),
            public_keys: BTreeMap::from([("@a:x".to_owned(), keys.clone())]),
            entries: Vec::new(),
        };
        let ok = verify_export(&export).unwrap();
        assert_eq!((ok.reference.as_str(), ok.key_id.as_str(), ok.signed_at), ("DGM-2026-000001", "ed25519:k1", 1));
        let mut changed = record.clone();
        changed["body"] = json!("c");
        assert!(verify_record(&changed, "@a:x", &keys).is_err());
        let mut other_author = record;
        other_author["author"] = json!("@b:x");
        let export = Export {
            record: other_author,
            public_keys: BTreeMap::from([("@b:x".to_owned(), keys)]),
            entries: Vec::new(),
        };
        assert!(verify_export(&export).is_err());
    }
}
