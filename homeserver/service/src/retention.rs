//! Retention and legal holds: how long content is kept, the purge that empties what has
//! passed it, and the holds under which nothing is purged nor erased.
//!
//! A room's lifetime for each kind of content (`messages`, `media`: messages carrying a file,
//! `correspondence`: formal correspondence) is its own policy (set by an administrator), else,
//! for messages and media, the room's `m.room.retention` `max_lifetime` (MSC1763), else the
//! server's default for the room's classification (`retention.np`, `retention.dr`); none means
//! kept. The purge empties each expired event as a redaction would (its skeleton stays: the
//! room's history and other servers' references hold), deletes the local files it carried,
//! the record of a correspondence whose origin copy expired, and the search index's entries;
//! it never touches state events. One batch of events is one transaction (the events emptied,
//! their files' rows, the counts of the run); the search index forgets them after the commit,
//! and what it has not confirmed forgetting is forgotten again at the next start or pass, so a
//! purge interrupted by a stop leaves every event either whole or emptied, and finishes at the
//! next pass.
//!
//! A hold (on a room, on a functional group's rooms, on a user's events) stops the purge for
//! what it covers, refuses an erasure of the user, and keeps the original of a held event that
//! is redacted (`held_originals`, which the archive exports); holds are released, never
//! deleted: every hold and release is recorded, with who and why.

use std::{
    collections::HashSet,
    sync::{Arc, Weak},
    time::Duration,
};

use diplomatie_policies::Level;
pub use diplomatie_storage::retention::{Hold, Run};
use diplomatie_storage::{events::StoredEvent, retention as store};
use ruma::{events::StateEventType, OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    config::Lifetimes, core::Core, correspondence::Correspondence, media::Repository, portal::Portal, rooms::Rooms,
    search::Search, Error, Pdu, Result,
};

/// The kinds of content a policy names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Messages,
    Media,
    Correspondence,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Messages => "messages",
            Kind::Media => "media",
            Kind::Correspondence => "correspondence",
        }
    }

    fn of(pdu: &Pdu) -> Kind {
        let kind = pdu.kind.to_string();
        let content = pdu.content_value();
        let msgtype = content.get("msgtype").and_then(Value::as_str).unwrap_or_default();
        match (kind.as_str(), msgtype) {
            (_, "fr.diplomatie.correspondence") => Kind::Correspondence,
            ("m.sticker", _) | (_, "m.image" | "m.file" | "m.audio" | "m.video") => Kind::Media,
            _ => Kind::Messages,
        }
    }
}

/// A room's lifetimes: its own, and the ones that apply.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub messages_ms: Option<u64>,
    #[serde(default)]
    pub media_ms: Option<u64>,
    #[serde(default)]
    pub correspondence_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PolicyView {
    pub room_id: OwnedRoomId,
    pub classification: String,
    /// The room's own policy (`null` fields: not set).
    pub policy: Policy,
    /// What applies (`null`: kept).
    pub effective: Policy,
}

/// Where a hold applies.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// `room`, `group` or `user`.
    pub scope: String,
    pub target: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct HoldView {
    pub hold_id: String,
    pub scope: String,
    pub target: String,
    pub reason: String,
    pub placed_by: String,
    pub placed_ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_ts: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_reason: Option<String>,
    pub rooms: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RunView {
    pub run_id: String,
    pub started_ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ts: Option<i64>,
    pub events: i64,
    pub media: i64,
    pub records: i64,
    pub kept_on_hold: i64,
}

impl From<Run> for RunView {
    fn from(r: Run) -> RunView {
        RunView {
            run_id: r.run_id,
            started_ts: r.started_ts,
            finished_ts: r.finished_ts,
            events: r.events,
            media: r.media,
            records: r.records,
            kept_on_hold: r.kept_on_hold,
        }
    }
}

pub struct Retention {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    portal: Arc<Portal>,
    media: Arc<Repository>,
    search: Arc<Search>,
    correspondence: Arc<Correspondence>,
    /// One purge at a time.
    running: tokio::sync::Mutex<()>,
}

crate::core::over_core!(Retention);

impl Retention {
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        portal: Arc<Portal>,
        media: Arc<Repository>,
        search: Arc<Search>,
        correspondence: Arc<Correspondence>,
    ) -> Retention {
        Retention { core, rooms, portal, media, search, correspondence, running: tokio::sync::Mutex::new(()) }
    }

    async fn known_room(&self, room: &RoomId) -> Result<()> {
        if diplomatie_storage::rooms::get_room(self.db.pool(), room.as_str()).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        Ok(())
    }

    /// `GET .../rooms/{roomId}/retention`.
    pub async fn policy(&self, room: &RoomId) -> Result<PolicyView> {
        self.known_room(room).await?;
        let own = store::policy(self.db.pool(), room.as_str()).await?.unwrap_or_default();
        let level = self.portal.room_facts_now(room).await?.classification;
        let [messages, media, correspondence] = self.lifetimes(room).await?;
        let ms = |v: Option<i64>| v.map(|v| v as u64);
        Ok(PolicyView {
            room_id: room.to_owned(),
            classification: level.as_str().to_owned(),
            policy: Policy {
                messages_ms: ms(own.messages_ms),
                media_ms: ms(own.media_ms),
                correspondence_ms: ms(own.correspondence_ms),
            },
            effective: Policy { messages_ms: ms(messages), media_ms: ms(media), correspondence_ms: ms(correspondence) },
        })
    }

    /// `PUT .../rooms/{roomId}/retention`: a room's own lifetimes (a missing field: the default).
    pub async fn set_policy(&self, by: &UserId, room: &RoomId, p: &Policy) -> Result<PolicyView> {
        self.known_room(room).await?;
        let ms = |v: Option<u64>| {
            v.map(|v| i64::try_from(v).map_err(|_| Error::invalid_param("A lifetime is too large"))).transpose()
        };
        let own = store::Policy {
            messages_ms: ms(p.messages_ms)?,
            media_ms: ms(p.media_ms)?,
            correspondence_ms: ms(p.correspondence_ms)?,
        };
        store::set_policy(self.db.pool(), room.as_str(), &own, by.as_str(), crate::now_ms()).await?;
        tracing::info!(room = %room, by = %by, ?own, "retention policy set");
        self.policy(room).await
    }

    /// The lifetimes that apply in a room: messages, media, correspondence.
    async fn lifetimes(&self, room: &RoomId) -> Result<[Option<i64>; 3]> {
        let own = store::policy(self.db.pool(), room.as_str()).await?.unwrap_or_default();
        let max_lifetime = self
            .rooms
            .state_event(room, &StateEventType::from("m.room.retention"), "")
            .await?
            .and_then(|p| p.content_field("max_lifetime"))
            .and_then(|v| v.as_i64())
            .filter(|v| *v > 0);
        let defaults: &Lifetimes = match self.portal.room_facts_now(room).await?.classification {
            Level::DR => &self.config.retention.dr,
            _ => &self.config.retention.np,
        };
        let default = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok());
        Ok([
            own.messages_ms.or(max_lifetime).or(default(defaults.messages_ms)),
            own.media_ms.or(max_lifetime).or(default(defaults.media_ms)),
            own.correspondence_ms.or(default(defaults.correspondence_ms)),
        ])
    }

    /// Places a hold: on a room, on a functional group's rooms, or on a user's events.
    pub async fn place_hold(&self, by: &UserId, req: &HoldRequest) -> Result<HoldView> {
        if req.reason.trim().is_empty() {
            return Err(Error::missing_param("A hold states its reason"));
        }
        let rooms = match req.scope.as_str() {
            "room" => {
                let room =
                    OwnedRoomId::try_from(req.target.as_str()).map_err(|_| Error::invalid_param("Invalid room id"))?;
                self.known_room(&room).await?;
                vec![room.to_string()]
            }
            "group" => {
                let mut rooms = Vec::new();
                for key in ["correspondence", "general"] {
                    if let Some((space, _, room)) = self.correspondence.org_room("g", &req.target, key).await? {
                        rooms.extend([space.to_string(), room.to_string()]);
                    }
                }
                if rooms.is_empty() {
                    return Err(Error::not_found(format!("Unknown group {:?}", req.target)));
                }
                rooms.sort();
                rooms.dedup();
                rooms
            }
            "user" => {
                UserId::parse(req.target.as_str()).map_err(|_| Error::invalid_param("Invalid user id"))?;
                Vec::new()
            }
            _ => return Err(Error::invalid_param("A hold's scope is room, group or user")),
        };
        let now = crate::now_ms();
        let hold = Hold {
            hold_id: format!("hold-{now}-{}", crate::random_string(6)),
            scope: req.scope.clone(),
            target: req.target.clone(),
            reason: req.reason.trim().to_owned(),
            placed_by: by.to_string(),
            placed_ts: now,
            released_by: None,
            released_ts: None,
            release_reason: None,
        };
        let mut tx = self.db.begin_write().await?;
        store::place_hold(&mut tx, &hold, &rooms).await?;
        diplomatie_storage::commit(tx).await?;
        tracing::info!(hold = hold.hold_id, scope = hold.scope, target = hold.target, by = %by, "legal hold placed");
        Ok(view(hold, rooms))
    }

    /// Releases a hold (recorded with who and why).
    pub async fn release_hold(&self, by: &UserId, hold_id: &str, reason: &str) -> Result<HoldView> {
        if !store::release_hold(self.db.pool(), hold_id, by.as_str(), crate::now_ms(), reason.trim()).await? {
            return match store::get_hold(self.db.pool(), hold_id).await? {
                Some(_) => Err(Error::forbidden("This hold was already released")),
                None => Err(Error::not_found("Unknown hold")),
            };
        }
        tracing::info!(hold = hold_id, by = %by, "legal hold released");
        let hold = store::get_hold(self.db.pool(), hold_id).await?.ok_or_else(|| Error::not_found("Unknown hold"))?;
        Ok(view(hold, Vec::new()))
    }

    /// Every hold, in force or released.
    pub async fn holds(&self) -> Result<Vec<HoldView>> {
        Ok(store::holds(self.db.pool()).await?.into_iter().map(|h| view(h, Vec::new())).collect())
    }

    /// The newest purges first.
    pub async fn runs(&self) -> Result<Vec<RunView>> {
        Ok(store::runs(self.db.pool(), 100).await?.into_iter().map(RunView::from).collect())
    }

    /// One purge pass over every room; answers what it did.
    pub async fn purge(&self) -> Result<RunView> {
        let _one = self.running.lock().await;
        let now = crate::now_ms();
        let run_id = format!("purge-{now}-{}", crate::random_string(6));
        store::start_run(self.db.pool(), &run_id, now).await?;
        self.search.forget_purged().await?;
        let held_rooms: HashSet<String> = store::held_rooms(self.db.pool()).await?.into_iter().collect();
        let held_users: HashSet<String> = store::held_users(self.db.pool()).await?.into_iter().collect();
        for room in store::all_rooms(self.db.pool()).await? {
            let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else { continue };
            let lifetimes = self.lifetimes(&room_id).await?;
            let Some(shortest) = lifetimes.iter().flatten().min().copied() else { continue };
            let batch_size = i64::from(self.config.retention.batch_size.max(1));
            let mut after = i64::MIN;
            loop {
                let batch = store::candidates(self.db.pool(), &room, now - shortest, after, batch_size).await?;
                let Some(last) = batch.last() else { break };
                after = last.stream_ordering;
                let full = batch.len() as i64 == batch_size;
                let held = held_rooms.contains(&room);
                self.purge_batch(&run_id, now, lifetimes, held, &held_users, batch).await?;
                if !full {
                    break;
                }
            }
        }
        store::finish_run(self.db.pool(), &run_id, crate::now_ms()).await?;
        let run = store::runs(self.db.pool(), 100).await?.into_iter().find(|r| r.run_id == run_id).unwrap_or_default();
        tracing::info!(
            run = run_id,
            events = run.events,
            media = run.media,
            records = run.records,
            kept = run.kept_on_hold,
            "purge done"
        );
        Ok(run.into())
    }

    /// Empties the expired events of one batch in one transaction, then their files and their
    /// search entries.
    async fn purge_batch(
        &self,
        run_id: &str,
        now: i64,
        lifetimes: [Option<i64>; 3],
        room_held: bool,
        held_users: &HashSet<String>,
        batch: Vec<store::Candidate>,
    ) -> Result<()> {
        let (mut events, mut media, mut records, mut kept) = (0, 0, 0, 0);
        let (mut files, mut emptied) = (Vec::new(), Vec::new());
        let mut tx = self.db.begin_write().await?;
        for c in batch {
            let stored = StoredEvent {
                stream_ordering: c.stream_ordering,
                event_id: c.event_id.clone(),
                room_id: c.room_id.clone(),
                state_group: c.state_group,
                redacted_by: None,
                json: c.json,
            };
            let pdu = Pdu::from_stored(stored)?;
            let kind = Kind::of(&pdu);
            let lifetime = match kind {
                Kind::Messages => lifetimes[0],
                Kind::Media => lifetimes[1],
                Kind::Correspondence => lifetimes[2],
            };
            if lifetime.is_none_or(|l| c.origin_server_ts >= now - l) {
                continue;
            }
            if room_held || held_users.contains(&c.sender) {
                kept += 1;
                continue;
            }
            let content = pdu.content_value();
            let copy = self.rooms.redacted_copy(&pdu).await?;
            let purged = store::Purged {
                event_id: &c.event_id,
                room_id: &c.room_id,
                kind: kind.name(),
                origin_server_ts: c.origin_server_ts,
                json: &copy.json,
            };
            store::purge_event(&mut tx, run_id, &purged).await?;
            events += 1;
            for (origin, media_id) in local_media(&content, self.server_name().as_str()) {
                files.extend(store::delete_media(&mut tx, &origin, &media_id).await?);
                media += 1;
            }
            if kind == Kind::Correspondence && content["fr.diplomatie.delivery"]["as"] == "origin" {
                if let Some(reference) = content["fr.diplomatie.correspondence"]["reference"].as_str() {
                    if store::delete_record(&mut tx, reference).await? {
                        records += 1;
                    }
                }
            }
            emptied.push(copy);
        }
        store::count_run(&mut tx, run_id, events, media, records, kept).await?;
        diplomatie_storage::commit(tx).await?;
        let ids: Vec<String> = emptied.iter().map(|p| p.event_id.to_string()).collect();
        for pdu in emptied {
            self.rooms.replace_cached(pdu);
        }
        for file in files {
            if !store::file_in_use(self.db.pool(), &file).await? {
                self.media.files.remove(&file).await;
            }
        }
        if self.search.forget(ids.clone()).await {
            let mut tx = self.db.begin_write().await?;
            store::mark_search_cleared(&mut tx, &ids).await?;
            diplomatie_storage::commit(tx).await?;
        }
        Ok(())
    }
}

fn view(h: Hold, rooms: Vec<String>) -> HoldView {
    HoldView {
        hold_id: h.hold_id,
        scope: h.scope,
        target: h.target,
        reason: h.reason,
        placed_by: h.placed_by,
        placed_ts: h.placed_ts,
        released_by: h.released_by,
        released_ts: h.released_ts,
        release_reason: h.release_reason,
        rooms,
    }
}

/// The files of this server an event's content carries (`url`, `file.url`, and their
/// thumbnails'), as (origin, media id).
fn local_media(content: &Value, server_name: &str) -> Vec<(String, String)> {
    crate::media::media_of(content).into_iter().filter(|(server, _)| server == server_name).collect()
}

/// The purge's own schedule (`retention.enabled`): at start, the search entries an
/// interrupted purge left; then a pass every `retention.interval_ms`.
pub fn spawn_worker(retention: &Arc<Retention>) {
    let weak: Weak<Retention> = Arc::downgrade(retention);
    let (enabled, interval) = (retention.config.retention.enabled, retention.config.retention.interval_ms.max(1000));
    tokio::spawn(async move {
        if let Some(r) = weak.upgrade() {
            if let Err(e) = r.search.forget_purged().await {
                tracing::warn!(error = %e, "the search index could not forget purged events");
            }
        }
        if !enabled {
            return;
        }
        loop {
            let Some(r) = weak.upgrade() else { return };
            if let Err(e) = r.purge().await {
                tracing::warn!(error = %e, "the purge failed; it runs again at the next interval");
            }
            drop(r);
            tokio::time::sleep(Duration::from_millis(interval)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_servers_files_are_deleted() {
        let content = serde_json::json!({
            "msgtype": "m.image", "url": "mxc://here.example/abc",
            "info": { "thumbnail_url": "mxc://elsewhere.example/def" },
        });
        assert_eq!(local_media(&content, "here.example"), vec![("here.example".to_owned(), "abc".to_owned())]);
        let encrypted = serde_json::json!({ "file": { "url": "mxc://here.example/enc" } });
        assert_eq!(local_media(&encrypted, "here.example"), vec![("here.example".to_owned(), "enc".to_owned())]);
        assert!(local_media(&serde_json::json!({ "body": "x" }), "here.example").is_empty());
    }
}
