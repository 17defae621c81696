//! Archiving: transfers to the ministry's archives service in SEDA 2.3, the French state's
//! format (the `diplomatie-archive` crate writes the manifest and the zip; this module gathers
//! what goes in). A functional group's transfer for a period holds each formal correspondence
//! it sent or received (its signed record with the keys that verify it, its text, its
//! attachments) and its rooms' messages as documents; a closed crisis cell's transfer is
//! gathered by the crisis service with [`Archive::room_unit`] and [`Archive::package`].
//!
//! Invariant: an export reads only what was stored, never the clock, so exporting the same
//! period twice gives the same package (see the crate's invariant).

use std::{sync::Arc, time::Duration};

use diplomatie_archive::{Agent, File, Level as UnitLevel, Package, Signer, Unit};
use diplomatie_storage::{correspondence as store, events};
use ruma::{RoomId, UserId};
use serde_json::{json, Value};

use crate::{
    accounts::Accounts,
    core::Core,
    correspondence::{Correspondence, Export, Kind},
    media::Repository,
    pdu::Pdu,
    Error, Result,
};

/// How a signature of ours is described to the archives service.
pub const SIGNING_TYPE: &str = "ed25519, JSON canonique Matrix (diplomatie verify)";

/// How long an attachment held by another server may take to come.
const REMOTE_MEDIA_TIMEOUT: Duration = Duration::from_secs(20);

/// Events per page when a room's messages are read for its document.
const PAGE: i64 = 500;

pub struct Archive {
    core: Arc<Core>,
    accounts: Arc<Accounts>,
    media: Arc<Repository>,
    correspondence: Arc<Correspondence>,
}

crate::core::over_core!(Archive);

impl Archive {
    pub(crate) fn new(
        core: Arc<Core>,
        accounts: Arc<Accounts>,
        media: Arc<Repository>,
        correspondence: Arc<Correspondence>,
    ) -> Archive {
        Archive { core, accounts, media, correspondence }
    }

    /// The transfer of functional group `slug` for `from_ms <= t < to_ms`: its correspondence
    /// (sent, or received for action or information) and its rooms' messages. A zip.
    pub async fn group_package(&self, slug: &str, from_ms: i64, to_ms: i64) -> Result<Vec<u8>> {
        if to_ms <= from_ms {
            return Err(Error::invalid_param("The period ends before it starts"));
        }
        let (space, name, correspondence_room) = self
            .correspondence
            .org_room("g", slug, "correspondence")
            .await?
            .ok_or_else(|| Error::not_found(format!("Unknown group {slug:?}")))?;
        let general = self.correspondence.org_room("g", slug, "general").await?.map(|(_, _, room)| room);

        let mut root =
            Unit::new(UnitLevel::RecordGrp, format!("{name} : archives du {} au {}", day(from_ms), day(to_ms - 1)));
        root.system_id = Some(space.to_string());
        root.originating_agency = Some(group_agent(slug, &name, None));
        root.start_ms = Some(from_ms);
        root.end_ms = Some(to_ms - 1);
        let mut newest = from_ms;

        let mut letters = Unit::new(UnitLevel::SubGrp, "Correspondance formelle");
        for c in store::of_group_between(self.db.pool(), slug, from_ms, to_ms).await? {
            newest = newest.max(c.ts);
            letters.children.push(self.correspondence_unit(&c).await?);
        }
        if !letters.children.is_empty() {
            root.children.push(letters);
        }
        let rooms = [
            ("correspondence", "Salon de correspondance", Some(correspondence_room)),
            ("general", "Salon général", general),
        ];
        for (key, title, room) in rooms {
            let Some(room) = room else { continue };
            if let Some((unit, last)) = self
                .room_unit(&room, format!("{title} de {name}"), format!("salons/{slug}-{key}.json"), from_ms, to_ms)
                .await?
            {
                newest = newest.max(last);
                root.children.push(unit);
            }
        }
        let identifier = format!("{}-{slug}-{}-{}", self.server_name(), day(from_ms), day(to_ms - 1));
        self.package(identifier, newest, slug, root)?.to_zip().map_err(crate::internal!())
    }

    /// Writes a package to the archive directory (`archive.directory`, or
    /// `<data_dir>/archives`), whole or not at all (written aside, then renamed).
    pub(crate) async fn write(&self, name: &str, package: &[u8]) -> Result<std::path::PathBuf> {
        let configured = &self.config.archive.directory;
        let dir =
            if configured.as_os_str().is_empty() { self.config.data_dir.join("archives") } else { configured.clone() };
        tokio::fs::create_dir_all(&dir).await.map_err(crate::internal!())?;
        let path = dir.join(safe_name(name));
        let partial = dir.join(format!(".{}.partial", safe_name(name)));
        tokio::fs::write(&partial, package).await.map_err(crate::internal!())?;
        tokio::fs::rename(&partial, &path).await.map_err(crate::internal!())?;
        Ok(path)
    }

    /// A transfer from this server of `root`, produced by `originating_agency`.
    pub(crate) fn package(
        &self,
        identifier: String,
        date_ms: i64,
        originating_agency: &str,
        root: Unit,
    ) -> Result<Package> {
        let archive = &self.config.archive;
        Ok(Package {
            identifier: identifier.replace([':', ' '], "-"),
            date_ms,
            comment: Some(format!("Versement de {} par Diplomatie", self.server_name())),
            agreement: archive.agreement.clone(),
            archival_agency: archive.archival_agency.clone(),
            transferring_agency: self.server_name().to_string(),
            originating_agency: originating_agency.to_owned(),
            root,
        })
    }

    /// A formal correspondence as an item: its record with the keys that verify it
    /// (`record.json`, which `diplomatie verify` checks), its text, its attachments.
    async fn correspondence_unit(&self, c: &store::Stored) -> Result<Unit> {
        let record: Value = serde_json::from_str(&c.record).map_err(crate::internal!())?;
        let label = Kind::parse(&c.kind).map_or_else(|| c.kind.clone(), |k| k.label().to_owned());
        let mut unit = Unit::new(UnitLevel::Item, format!("{label} {} : {}", c.reference, c.subject));
        unit.system_id = Some(c.reference.clone());
        unit.document_type = Some(label);
        unit.tags = strings(&record["tags"]);
        unit.originating_agency = Some(group_agent(&c.group_slug, &self.group_name(&c.group_slug).await?, None));
        let author = self.person(&c.author, Some("Auteur")).await?;
        unit.writers.push(author);
        for slug in strings(&record["action"]) {
            let name = self.group_name(&slug).await?;
            unit.addressees.push(group_agent(&slug, &name, Some("Pour action")));
        }
        for slug in strings(&record["information"]) {
            let name = self.group_name(&slug).await?;
            unit.recipients.push(group_agent(&slug, &name, Some("Pour information")));
        }
        for address in strings(&record["external"]) {
            unit.recipients.push(Agent {
                name: address.clone(),
                identifier: format!("mailto:{address}"),
                corporate: false,
                role: Some("Destinataire externe".into()),
            });
        }
        let signed_ms = record["signed_at"].as_i64().unwrap_or(c.ts);
        unit.sent_ms = Some(signed_ms);
        unit.restricted = c.classification == "DR";
        for decision in record["circuit"]["decisions"].as_array().into_iter().flatten() {
            let role = match decision["decision"].as_str() {
                Some("approved") => "Visa",
                Some("refused") => "Refus",
                _ => "Signature (circuit)",
            };
            unit.signers.extend(self.signer(decision, role.into()).await?);
        }
        unit.signers.extend(self.signer(&record, "Auteur".into()).await?);

        let dir = safe_name(&c.reference);
        let export = Export {
            public_keys: self.correspondence.record_keys(&record).await?,
            record: record.clone(),
            entries: Vec::new(),
        };
        unit.files.push(json_file(format!("{dir}/record.json"), &export)?);
        if let Some(body) = record["body"].as_str() {
            unit.files.push(File {
                path: format!("{dir}/body.txt"),
                bytes: body.as_bytes().to_vec(),
                mime_type: "text/plain; charset=utf-8".into(),
                format: "Plain Text File".into(),
            });
        }
        if let Some(html) = record["html"].as_str() {
            unit.files.push(File {
                path: format!("{dir}/body.html"),
                bytes: html.as_bytes().to_vec(),
                mime_type: "text/html; charset=utf-8".into(),
                format: "Hypertext Markup Language".into(),
            });
        }
        let mut missing = Vec::new();
        for (n, uri) in strings(&record["attachments"]).into_iter().enumerate() {
            match self.attachment(&uri).await {
                Some(download) => {
                    let name = download.filename.as_deref().map(safe_name).unwrap_or_else(|| "fichier".into());
                    unit.files.push(File {
                        path: format!("{dir}/pieces-jointes/{}-{name}", n + 1),
                        bytes: download.bytes,
                        mime_type: download.content_type,
                        format: "Pièce jointe".into(),
                    });
                }
                None => missing.push(uri),
            }
        }
        if !missing.is_empty() {
            unit.description = Some(format!("Pièces jointes indisponibles : {}", missing.join(", ")));
        }
        Ok(unit)
    }

    /// An attachment's file, when its server still has it.
    async fn attachment(&self, uri: &str) -> Option<crate::media::Download> {
        let mxc = ruma::OwnedMxcUri::from(uri);
        let (server, media_id) = mxc.parts().ok()?;
        match self.media.download_media(server, media_id, REMOTE_MEDIA_TIMEOUT).await {
            Ok(download) => Some(download),
            Err(e) => {
                tracing::warn!(uri, error = %e, "an attachment could not be archived");
                None
            }
        }
    }

    /// A room's events sent in `from_ms <= t < to_ms` as one document (JSON, in the order the
    /// room holds them), and the time of the last; `None` when there are none.
    pub(crate) async fn room_unit(
        &self,
        room: &RoomId,
        title: String,
        path: String,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Option<(Unit, i64)>> {
        let mut listed = Vec::new();
        let mut after = i64::MIN;
        loop {
            let page =
                events::room_events_sent_between(self.db.pool(), room.as_str(), from_ms, to_ms, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.stream_ordering;
            let full = page.len() as i64 == PAGE;
            for stored in page {
                listed.push(self.as_archived(stored).await?);
            }
            if !full {
                break;
            }
        }
        let (Some(first), Some(last)) = (listed.first(), listed.last()) else { return Ok(None) };
        let ts = |e: &Value| e["origin_server_ts"].as_i64().unwrap_or_default();
        let (start, end) = (ts(first), ts(last));
        let document = json!({ "room_id": room, "events": listed });
        let mut unit = Unit::new(UnitLevel::File, title);
        unit.system_id = Some(room.to_string());
        unit.start_ms = Some(start);
        unit.end_ms = Some(end);
        unit.files.push(json_file(path, &document)?);
        Ok(Some((unit, end)))
    }

    /// An event as the archive keeps it: what was said, by whom, when (no `age`, nothing that
    /// changes between two exports). A redacted event keeps what redaction left, unless it was
    /// under a legal hold: then its original, kept for the archive.
    async fn as_archived(&self, stored: events::StoredEvent) -> Result<Value> {
        let redacted_by = stored.redacted_by.clone();
        let original = match &redacted_by {
            Some(_) => diplomatie_storage::retention::held_original(self.db.pool(), &stored.event_id).await?,
            None => None,
        };
        let pdu = match &original {
            Some(json) => {
                let id = ruma::OwnedEventId::try_from(stored.event_id.as_str()).map_err(crate::internal!())?;
                let room = ruma::OwnedRoomId::try_from(stored.room_id.as_str()).ok();
                Pdu::from_json(id, json.clone(), room)?
            }
            None => Pdu::from_stored(stored)?,
        };
        let mut event = json!({
            "event_id": pdu.event_id,
            "type": pdu.kind,
            "sender": pdu.sender,
            "origin_server_ts": pdu.origin_server_ts,
            "content": pdu.content_value(),
        });
        if let Some(key) = &pdu.state_key {
            event["state_key"] = json!(key);
        }
        if let Some(redacts) = &pdu.redacts {
            event["redacts"] = json!(redacts);
        }
        if let Some(by) = redacted_by {
            event["redacted_by"] = json!(by);
            if original.is_some() {
                event["original_kept_under_legal_hold"] = json!(true);
            }
        }
        Ok(event)
    }

    /// Who signed a signed record (its `author`, at its `signed_at`), in the role given; none
    /// for a record without signatures.
    pub(crate) async fn signer(&self, record: &Value, role: String) -> Result<Option<Signer>> {
        let (Some(author), Some(signed_ms), Some(_)) =
            (record["author"].as_str(), record["signed_at"].as_i64(), record.get("signatures"))
        else {
            return Ok(None);
        };
        let name = self.person(author, None).await?.name;
        Ok(Some(Signer { name, identifier: author.to_owned(), signed_ms, role, signing_type: SIGNING_TYPE.into() }))
    }

    /// A person as an agent: their display name (or user id), and their user id.
    pub(crate) async fn person(&self, user: &str, role: Option<&str>) -> Result<Agent> {
        let name = match UserId::parse(user) {
            Ok(id) if id.server_name() == self.server_name() => {
                self.accounts.profile(&id).await.ok().and_then(|(name, _)| name)
            }
            _ => None,
        };
        Ok(Agent {
            name: name.unwrap_or_else(|| user.to_owned()),
            identifier: user.to_owned(),
            corporate: false,
            role: role.map(str::to_owned),
        })
    }

    async fn group_name(&self, slug: &str) -> Result<String> {
        Ok(self
            .correspondence
            .org_room("g", slug, "correspondence")
            .await?
            .map_or_else(|| slug.to_owned(), |(_, name, _)| name))
    }
}

/// A functional group (or cell) as an organisation agent.
pub(crate) fn group_agent(slug: &str, name: &str, role: Option<&str>) -> Agent {
    Agent { name: name.to_owned(), identifier: slug.to_owned(), corporate: true, role: role.map(str::to_owned) }
}

/// A JSON file (pretty, keys sorted: the same value gives the same bytes).
pub(crate) fn json_file(path: String, value: &impl serde::Serialize) -> Result<File> {
    let bytes = serde_json::to_vec_pretty(value).map_err(crate::internal!())?;
    Ok(File { path, bytes, mime_type: "application/json".into(), format: "JSON".into() })
}

/// The strings of a JSON array (none when it is not one).
fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect()).unwrap_or_default()
}

/// A name safe as one path segment: letters, digits, `.`, `-`, `_` (others become `_`),
/// never `.` or `..`, at most 100 characters.
pub(crate) fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .take(100)
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        format!("_{cleaned}")
    } else {
        cleaned
    }
}

/// `YYYY-MM-DD` (UTC) of a time in milliseconds.
pub(crate) fn day(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}", at.year(), u8::from(at.month()), at.day())
}

/// Midnight UTC of `YYYY-MM-DD`, in milliseconds.
pub fn parse_day(text: &str) -> Result<i64> {
    let bad = || Error::invalid_param(format!("{text:?} is not a date (YYYY-MM-DD)"));
    let mut parts = text.trim().splitn(3, '-');
    let mut number = || parts.next().and_then(|p| p.parse::<i32>().ok()).ok_or_else(bad);
    let (year, month, day) = (number()?, number()?, number()?);
    let month = time::Month::try_from(u8::try_from(month).map_err(|_| bad())?).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(year, month, u8::try_from(day).map_err(|_| bad())?).map_err(|_| bad())?;
    Ok(date.midnight().assume_utc().unix_timestamp() * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_read_and_print() {
        assert_eq!(parse_day("2026-12-07").unwrap(), 1_796_601_600_000);
        assert_eq!(day(1_796_601_600_000 + 86_399_999), "2026-12-07");
        for bad in ["2026-13-01", "2026-02-30", "hier", "2026-1", ""] {
            assert!(parse_day(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_stay_one_safe_segment() {
        assert_eq!(safe_name("rapport final.pdf"), "rapport_final.pdf");
        assert_eq!(safe_name("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(safe_name(".."), "_..");
        assert_eq!(safe_name(""), "_");
    }
}
