//! DR formal correspondence encrypted end to end: the author's device signs the whole record
//! (its ed25519 key, registered as the author's correspondence key), sends it as an MLS
//! message into the DR room of its own group and of each addressee group, and has the server
//! dispatch the metadata it may see (reference, kind, groups, the copies' event ids). A reader
//! finds the record in the message, and checks its signature against the author's keys.

use diplomatie_mls::b64;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{enc, Client, Error, Message, Result};

/// Where the record sits in the MLS message's plaintext (a JSON object).
pub const RECORD: &str = "fr.diplomatie.correspondence";

/// A DR correspondence to send.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Composition {
    /// `telegram`, `diplomatic_note` or `formal_letter`.
    pub kind: String,
    /// The sending group's slug.
    pub from: String,
    pub subject: String,
    pub body: String,
    #[serde(default)]
    pub action: Vec<String>,
    #[serde(default)]
    pub information: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// What the server answered: the reference, the deliveries and journal entries it made.
#[derive(Clone, Debug, Deserialize)]
pub struct Dispatched {
    pub reference: String,
    pub deliveries: Vec<Value>,
    pub journal_entries: usize,
}

impl Message {
    /// The signed record of a correspondence this message carries, if it carries one.
    pub fn correspondence(&self) -> Option<Value> {
        let v: Value = serde_json::from_str(&self.text).ok()?;
        v.get(RECORD).filter(|r| r.is_object()).cloned()
    }
}

impl Client {
    /// This device's correspondence key id.
    fn correspondence_key_id(&self) -> String {
        format!("ed25519:mls_{}", self.state.device_id)
    }

    /// The DR room of a group (named by one of its managers).
    pub async fn group_dr_room(&self, group: &str) -> Result<String> {
        let v = self.get(&format!("/_diplomatie/client/v1/groups/{}/dr_room", enc(group))).await?;
        v["room_id"].as_str().map(str::to_owned).ok_or_else(|| Error::Usage(format!("no room_id in {v}")))
    }

    /// Names `room_id` (an MLS room classified DR) as the DR room of `group`, which this user
    /// manages.
    pub async fn set_group_dr_room(&self, group: &str, room_id: &str) -> Result<()> {
        let path = format!("/_diplomatie/client/v1/groups/{}/dr_room", enc(group));
        self.request(reqwest::Method::PUT, &path, Some(&json!({ "room_id": room_id }))).await?;
        Ok(())
    }

    /// Signs and sends a DR correspondence: a reference reserved for the sending group, the
    /// record signed with this device's key, an MLS message carrying it in the DR room of the
    /// sending group and of each addressee group (this device must be in each), then the
    /// server's dispatch of the metadata. Returns the dispatch and the signed record.
    pub async fn send_correspondence(&mut self, c: &Composition) -> Result<(Dispatched, Value)> {
        let mut groups = vec![(c.from.as_str(), "origin")];
        groups.extend(c.action.iter().map(|g| (g.as_str(), "action")));
        groups.extend(c.information.iter().map(|g| (g.as_str(), "information")));
        let mut rooms = Vec::new();
        for (group, role) in &groups {
            let room = self.group_dr_room(group).await?;
            if self.epoch(&room).is_none() {
                return Err(Error::Usage(format!("this device is not in the DR room of {group} ({room})")));
            }
            rooms.push((*group, *role, room));
        }
        let key_id = self.correspondence_key_id();
        let key = json!({ "public_key": b64::encode(self.mls.signature_key()) });
        let path = format!("/_diplomatie/client/v1/correspondence/keys/{}", enc(&key_id));
        self.request(reqwest::Method::PUT, &path, Some(&key)).await?;
        let reserved =
            self.post("/_diplomatie/client/v1/correspondence/references", &json!({ "from": c.from })).await?;
        let reference = reserved["reference"].as_str().ok_or_else(|| Error::Usage(format!("{reserved}")))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut record = json!({
            "kind": c.kind,
            "reference": reference,
            "from": c.from,
            "author": self.state.user_id,
            "subject": c.subject,
            "body": c.body,
            "action": c.action,
            "information": c.information,
            "tags": c.tags,
            "classification": "DR",
            "signed_at": now.as_millis() as u64,
        });
        let signature = self.sign(&record)?;
        record["signatures"] = json!({ self.state.user_id.clone(): { key_id: signature } });
        let mut copies = serde_json::Map::new();
        for (group, role, room) in rooms {
            let text = json!({ RECORD: record, "fr.diplomatie.delivery": { "as": role, "group": group } });
            copies.insert(group.to_owned(), json!(self.send(&room, &text.to_string()).await?));
        }
        let body = json!({
            "reference": reference, "kind": c.kind, "from": c.from,
            "action": c.action, "information": c.information, "copies": copies,
        });
        let dispatched = self.post("/_diplomatie/client/v1/correspondence/encrypted", &body).await?;
        let dispatched = serde_json::from_value(dispatched).map_err(|e| Error::Usage(format!("dispatch: {e}")))?;
        Ok((dispatched, record))
    }

    /// Whether a record carries a valid signature of its author, by one of the correspondence
    /// keys the server lists for them.
    pub async fn verify_correspondence(&self, record: &Value) -> Result<bool> {
        use ed25519_dalek::Verifier as _;
        let Some(author) = record["author"].as_str() else { return Ok(false) };
        let Some(signatures) = record["signatures"][author].as_object() else { return Ok(false) };
        let keys = self.get(&format!("/_diplomatie/client/v1/users/{}/correspondence_keys", enc(author))).await?;
        let mut unsigned = record.clone();
        if let Some(o) = unsigned.as_object_mut() {
            o.remove("signatures");
            o.remove("unsigned");
        }
        let canonical = ruma::canonical_json::to_canonical_value(&unsigned)
            .map_err(|e| Error::Usage(format!("not canonical JSON: {e}")))?
            .to_string();
        for (key_id, signature) in signatures {
            let Some(public) = keys["keys"][key_id].as_str() else { continue };
            let (Ok(public), Ok(signature)) =
                (b64::decode(public), b64::decode(signature.as_str().unwrap_or_default()))
            else {
                continue;
            };
            let (Ok(public), Ok(signature)) =
                (<[u8; 32]>::try_from(public.as_slice()), ed25519_dalek::Signature::from_slice(&signature))
            else {
                continue;
            };
            let Ok(public) = ed25519_dalek::VerifyingKey::from_bytes(&public) else { continue };
            if public.verify(canonical.as_bytes(), &signature).is_ok() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
