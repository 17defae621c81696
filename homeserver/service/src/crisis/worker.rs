//! The service account at work in crisis cells: it seals each message of a log room as an
//! entry of the main courante, and runs the commands standard clients type (`!crise`,
//! `!alerte`, `!point`, `!fin-de-crise`). The writer hands it, after each commit, the messages
//! of cell rooms and those starting with `!` through a channel; it never slows the send path.

use std::sync::{Arc, Weak};

use diplomatie_storage::crisis as store;
use ruma::{events::TimelineEventType, OwnedUserId, UserId};
use serde_json::{json, Value};

use super::{Activation, Crisis};
use crate::{rooms::commit, Error, Pdu, Result};

/// Hands the service the messages of each published batch (a commit subscriber).
pub(crate) struct CellEvents(pub(crate) Weak<Crisis>);

impl commit::Subscriber for CellEvents {
    fn published(&self, batch: &commit::Batch<'_>, _at: &commit::Committed<'_>) {
        let Some(crisis) = self.0.upgrade() else { return };
        let Some(queue) = crisis.queue.get() else { return };
        let system = crisis.portal.system.get();
        for pdu in batch.events.iter().filter(|p| p.kind == TimelineEventType::RoomMessage) {
            if Some(&pdu.sender) != system && crisis.may_concern(pdu) {
                let _ = queue.send(pdu.clone());
            }
        }
    }
}

/// Starts the service's worker (serving processes only).
pub fn spawn_worker(crisis: &Arc<Crisis>) {
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Arc<Pdu>>();
    if crisis.queue.set(sender).is_err() {
        return;
    }
    let weak: Weak<Crisis> = Arc::downgrade(crisis);
    tokio::spawn(async move {
        while let Some(pdu) = receiver.recv().await {
            let Some(crisis) = weak.upgrade() else { break };
            if let Err(e) = crisis.handle(&pdu).await {
                tracing::warn!(event = %pdu.event_id, error = %e, "crisis cells");
            }
        }
    });
}

impl Crisis {
    /// Whether a message may concern the service, without I/O (on the commit path): a command,
    /// a message of a log room, or one of a room not looked up yet (the worker looks it up
    /// once; after that, the rooms of no cell cost a lookup in memory).
    fn may_concern(&self, pdu: &Pdu) -> bool {
        if pdu.content.get().contains("\"body\":\"!") {
            return true;
        }
        match self.known.lock().unwrap().get(&pdu.room_id) {
            Some(Some((_, role))) => role == "log",
            Some(None) => false,
            None => true,
        }
    }

    async fn handle(&self, pdu: &Pdu) -> Result<()> {
        let content = pdu.content_value();
        let Some(body) = content.get("body").and_then(Value::as_str) else { return Ok(()) };
        let role = self.role_of(&pdu.room_id).await?;
        if let Some((cell, role)) = &role {
            if role == "log" && content.get("msgtype").and_then(Value::as_str) != Some("m.notice") {
                return self.seal_entry(cell, pdu, body, &content).await;
            }
        }
        if !body.starts_with('!') || pdu.sender.server_name() != self.server_name() {
            return Ok(());
        }
        let mut words = body.splitn(2, char::is_whitespace);
        let command = words.next().unwrap_or("").to_lowercase();
        let rest = words.next().unwrap_or("").trim();
        let answer = match (command.as_str(), &role) {
            ("!crise" | "!crisis", _) => self.activate_from_room(&pdu.sender, &pdu.room_id, rest).await.map(Some),
            ("!alerte" | "!alert", Some(_)) => self.alert(&pdu.sender, &pdu.room_id, rest).await.map(|_| None),
            ("!point" | "!sitrep", Some(_)) => self
                .set_sitrep(&pdu.sender, &pdu.room_id, rest)
                .await
                .map(|s| Some(format!("Point de situation n° {} publié.", s.version))),
            ("!fin-de-crise" | "!stand-down", Some(_)) => {
                self.stand_down(&pdu.sender, &pdu.room_id).await.map(|_| None)
            }
            _ => return Ok(()),
        };
        let text = match answer {
            Ok(Some(text)) => text,
            Ok(None) => return Ok(()),
            Err(Error::Matrix(_, message)) => format!("⚠ {message}"),
            Err(e) => return Err(e),
        };
        // The service account answers where it is (a cell's rooms); elsewhere the coordinator
        // finds the new cell among their rooms, its welcome in the situation room.
        let system = self.organisation.system_user().await?;
        if self.rooms.is_joined(&pdu.room_id, &system).await? {
            self.notice(&pdu.room_id, &text, Some(&pdu.event_id)).await?;
        } else {
            tracing::info!(room = %pdu.room_id, sender = %pdu.sender, answer = %text, "crisis command");
        }
        Ok(())
    }

    /// `!crise <nom>`: a cell with the sender at its head and the room's other members in it.
    async fn activate_from_room(&self, sender: &UserId, room: &ruma::RoomId, name: &str) -> Result<String> {
        if name.is_empty() {
            return Err(Error::invalid_param("Usage : !crise <nom de la cellule>"));
        }
        let system = self.organisation.system_user().await?;
        let members: Vec<OwnedUserId> =
            self.rooms.joined_members(room).await?.iter().filter(|u| *u != sender && **u != system).cloned().collect();
        let a = Activation { name: name.to_owned(), members, ..Activation::default() };
        let done = self.activate(sender, a).await?;
        Ok(format!(
            "Cellule de crise « {name} » activée : {} (#x.{}:{}), {} invitations envoyées.",
            done.cell_id,
            done.slug,
            self.server_name(),
            done.invited
        ))
    }

    /// Seals a message of the log room as the next entry of the main courante.
    async fn seal_entry(&self, cell_id: &str, pdu: &Pdu, body: &str, content: &Value) -> Result<()> {
        let Some(cell) = store::cell_by_id(self.db.pool(), cell_id).await? else { return Ok(()) };
        if cell.status != "active" {
            return Ok(());
        }
        // Entries of this server's members are sealed with their own key; of other servers'
        // members, with the service account's, naming who said it.
        let local = pdu.sender.server_name() == self.server_name();
        let signer = if local { pdu.sender.clone() } else { self.organisation.system_user().await? };
        let reference = |n: i64| format!("{}-MC-{n:04}", cell.slug.to_uppercase());
        let now = crate::now_ms();
        let mut draft = json!({
            "kind": "crisis_log_entry",
            "cell": { "cell_id": cell.cell_id, "slug": cell.slug, "name": cell.name },
            "author": signer,
            "said_by": pdu.sender,
            "text": body,
            "event_id": pdu.event_id,
            "origin_server_ts": pdu.origin_server_ts,
            "signed_at": now,
            "sealed": { "by": self.server_name() },
        });
        if let Some(format) = content.get("formatted_body") {
            draft["formatted_text"] = format.clone();
        }
        // The number is taken in the transaction that stores the entry; the record is sealed
        // for that number before it is written.
        let key = self.correspondence.sealing_key(&signer).await?;
        let mut tx = self.db.begin_write().await?;
        let appended = store::append_log(&mut tx, &cell.cell_id, pdu.event_id.as_str(), signer.as_str(), now, |n| {
            let mut record = draft.clone();
            record["number"] = json!(n);
            record["reference"] = json!(reference(n));
            crate::correspondence::sign_with(&key, signer.as_str(), record)
                .map_err(|e| format!("{e:?}"))
                .and_then(|r| serde_json::to_string(&r).map_err(|e| e.to_string()))
        })
        .await?;
        let Some((n, _)) = appended else { return Ok(()) }; // sealed already: rolled back
        diplomatie_storage::commit(tx).await?;
        {
            let text = format!("Main courante n° {n} ({}) scellée.", reference(n));
            self.notice(&pdu.room_id, &text, Some(&pdu.event_id)).await?;
        }
        Ok(())
    }
}
