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

    /// Whether a record carries a valid signature of its author, and only of them, by one of
    /// the correspondence keys the server lists for them (Matrix's signing scheme, checked by
    /// ruma as the server checks the records clients sign).
    pub async fn verify_correspondence(&self, record: &Value) -> Result<bool> {
        let Some(author) = record["author"].as_str() else { return Ok(false) };
        let listed = self.get(&format!("/_diplomatie/client/v1/users/{}/correspondence_keys", enc(author))).await?;
        let keys: std::collections::BTreeMap<String, ruma::serde::Base64> = listed["keys"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(id, key)| Some((id.clone(), ruma::serde::Base64::parse(key.as_str()?).ok()?)))
            .collect();
        let Ok(object) = serde_json::from_value::<ruma::CanonicalJsonObject>(record.clone()) else { return Ok(false) };
        let map = std::collections::BTreeMap::from([(author.to_owned(), keys)]);
        Ok(ruma::signatures::verify_json(&map, &object).is_ok())
    }
}
