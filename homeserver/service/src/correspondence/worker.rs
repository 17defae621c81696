//! The correspondence service account at work in rooms: it answers drafts typed in a group's
//! correspondence room with a preview, dispatches a draft when its author reacts ✅ to the
//! preview, changes action items on reactions and status commands, and runs the journal's
//! commands (follow and unfollow tags, audience, help).
//!
//! The writer hands it, after each commit, the few events that may concern it (messages that
//! start with `!`, reactions) through a channel: it never slows the send path, and it works
//! on what is durable.

use std::sync::{Arc, Weak};

use diplomatie_storage::correspondence as store;
use ruma::{events::TimelineEventType, OwnedDeviceId, RoomId, UserId};
use serde_json::Value;
use tokio::sync::mpsc::unbounded_channel;

use super::{
    model::{normalise_tag, CircuitRequest, Composition},
    state::{CorrespondenceState, Job},
    status::Status,
    text, Correspondence,
};
use crate::{rooms::commit, Error, Pdu, Result};

/// Whether a committed event changes the organisation's directory: a group's marker, a
/// classification, or the name of a space or room the directory holds.
fn changes_directory(state: &CorrespondenceState, pdu: &Pdu) -> bool {
    if pdu.state_key.is_none() {
        return false;
    }
    match pdu.kind.to_string().as_str() {
        crate::organisation::GROUP | crate::portal::CLASSIFICATION => true,
        "m.room.name" => state
            .directory
            .lock()
            .unwrap()
            .values()
            .flatten()
            .any(|(space, _, room)| *space == pdu.room_id || *room == pdu.room_id),
        _ => false,
    }
}

const HELP: &str = "Commandes : !suivre <mot-clé> · !ne-plus-suivre <mot-clé> · !mots-clés · \
     !statut <référence> nouveau|attribué|traité · !audience <référence> · !aide. \
     Dans le salon de correspondance d'un groupe, un brouillon commence par !telegram, !note ou !letter \
     (en-têtes Action:, Information:, Tags:, Classification:, Subject:, puis une ligne vide et le texte) ; \
     avec Visas: et Signataire:, il suit un circuit de signature (✅ ou ❌ sur son avis).";

/// Starts the service account's worker (serving processes only).
pub fn spawn_worker(correspondence: &Arc<Correspondence>) {
    let (sender, mut receiver) = unbounded_channel::<Job>();
    if correspondence.state.queue.set(sender).is_err() {
        return;
    }
    let weak: Weak<Correspondence> = Arc::downgrade(correspondence);
    tokio::spawn(async move {
        while let Some((pdu, device)) = receiver.recv().await {
            let Some(services) = weak.upgrade() else { break };
            if let Err(e) = services.handle_event(&pdu, device.as_deref()).await {
                tracing::warn!(event = %pdu.event_id, error = %e, "correspondence service");
            }
        }
    });
}

/// Whether a committed event may concern the service: a message starting with `!`, or a
/// reaction (a cheap look at the raw content; the worker reads it properly).
fn may_concern(pdu: &Pdu) -> bool {
    match pdu.kind {
        TimelineEventType::Reaction => true,
        TimelineEventType::RoomMessage => pdu.content.get().contains("\"body\":\"!"),
        _ => false,
    }
}

impl Correspondence {
    /// Called by the writer after each commit (`txns`: user, device, transaction, event).
    pub(crate) fn correspondence_committed(&self, appended: &[Arc<Pdu>], txns: &[[String; 4]]) {
        if appended.iter().any(|p| changes_directory(&self.state, p)) {
            self.state.forget_directory();
        }
        let Some(queue) = self.state.queue.get() else { return };
        let system = self.portal.system.get();
        for pdu in appended.iter().filter(|p| may_concern(p)) {
            if Some(&pdu.sender) == system || pdu.sender.server_name() != self.server_name() {
                continue;
            }
            let device = txns
                .iter()
                .find(|[_, _, _, e]| e == pdu.event_id.as_str())
                .map(|[_, d, _, _]| OwnedDeviceId::from(d.as_str()));
            let _ = queue.send((pdu.clone(), device));
        }
    }

    /// The functional group whose correspondence room `room` is.
    async fn correspondence_room_group(&self, room: &RoomId) -> Result<Option<String>> {
        if let Some(known) = self.state.rooms.lock().unwrap().get(room) {
            return Ok(known.clone());
        }
        let suffix = format!(".correspondence:{}", self.server_name());
        let slug = diplomatie_storage::rooms::room_aliases(self.db.pool(), room.as_str())
            .await?
            .into_iter()
            .find_map(|a| a.strip_prefix("#g.").and_then(|a| a.strip_suffix(&suffix)).map(str::to_owned));
        self.state.rooms.lock().unwrap().insert(room.to_owned(), slug.clone());
        Ok(slug)
    }

    async fn handle_event(&self, pdu: &Pdu, device: Option<&ruma::DeviceId>) -> Result<()> {
        let owner = self.journal_owner(&pdu.room_id).await?;
        let group = match owner {
            Some(ref owner) if *owner != pdu.sender => return Ok(()),
            Some(_) => None,
            None => match self.correspondence_room_group(&pdu.room_id).await? {
                Some(g) => Some(g),
                None => return Ok(()),
            },
        };
        let content = pdu.content_value();
        if pdu.kind == TimelineEventType::Reaction {
            return self.on_reaction(pdu, &content, device).await;
        }
        let Some(body) = content.get("body").and_then(Value::as_str) else { return Ok(()) };
        let answer = match group {
            Some(slug) if text::is_draft(body) => self.on_draft(pdu, body, &slug, device).await,
            _ => self.on_command(&pdu.sender, body).await,
        };
        let text = match answer {
            Ok(Some(text)) => text,
            Ok(None) => return Ok(()),
            Err(Error::Matrix(_, message)) => format!("⚠ {message}"),
            Err(e) => return Err(e),
        };
        self.notice(&pdu.room_id, &text, Some(&pdu.event_id)).await?;
        Ok(())
    }

    /// A draft: checked as if it were sent, then previewed; the preview waits for ✅.
    async fn on_draft(
        &self,
        pdu: &Pdu,
        body: &str,
        group: &str,
        device: Option<&ruma::DeviceId>,
    ) -> Result<Option<String>> {
        let typed = text::parse_typed_draft(body, group)?;
        let c = typed.composition;
        if let Some(circuit_id) = typed.circuit {
            self.resubmit(&pdu.sender, device, &circuit_id, &c).await?;
            return Ok(None);
        }
        if let Some(signatory) = typed.signatory {
            let request = CircuitRequest { correspondence: c, approvers: typed.approvers, signatory };
            self.start_circuit(&pdu.sender, device, request).await?;
            return Ok(None);
        }
        self.plan(&pdu.sender, device, &c).await?;
        let preview = self.notice(&pdu.room_id, &text::preview(&c), Some(&pdu.event_id)).await?;
        let draft = store::Draft {
            preview_event_id: preview.event_id.to_string(),
            room_id: pdu.room_id.to_string(),
            author: pdu.sender.to_string(),
            device_id: device.map(|d| d.to_string()),
            draft: serde_json::to_string(&c).map_err(crate::internal!())?,
            ts: crate::now_ms(),
        };
        store::insert_draft(self.db.pool(), &draft).await?;
        Ok(None)
    }

    async fn on_reaction(&self, pdu: &Pdu, content: &Value, device: Option<&ruma::DeviceId>) -> Result<()> {
        let relation = &content["m.relates_to"];
        if relation["rel_type"] != "m.annotation" {
            return Ok(());
        }
        let (Some(target), Some(key)) = (relation["event_id"].as_str(), relation["key"].as_str()) else {
            return Ok(());
        };
        let key = key.trim_end_matches('\u{fe0f}');
        // ✅ or ❌ on a circuit's notice, by the person awaited (or their delegate).
        if let Some(circuit) = diplomatie_storage::circuits::by_event(self.db.pool(), target).await? {
            if let Err(Error::Matrix(_, message)) = self.on_circuit_reaction(&pdu.sender, &circuit, key).await {
                self.notice(&pdu.room_id, &format!("⚠ {message}"), Some(&pdu.event_id)).await?;
            }
            return Ok(());
        }
        // ✅ on a preview, by its author: seal and dispatch.
        if let Some(draft) = store::draft(self.db.pool(), target).await? {
            if draft.author != pdu.sender.as_str() || !matches!(key, "✅" | "✔") {
                return Ok(());
            }
            if !store::take_draft(self.db.pool(), target).await? {
                return Ok(()); // dispatched already
            }
            let c: Composition = serde_json::from_str(&draft.draft).map_err(crate::internal!())?;
            let text = match self.send_correspondence(&pdu.sender, device, &c).await {
                Ok(d) => format!(
                    "✅ Signé et envoyé : {} ({} salons, {} entrées de journal).",
                    d.reference,
                    d.deliveries.len() - d.journal_entries,
                    d.journal_entries
                ),
                Err(Error::Matrix(_, message)) => format!("⚠ Envoi refusé, rien n'a été diffusé : {message}"),
                Err(e) => return Err(e),
            };
            let preview = ruma::OwnedEventId::try_from(target).map_err(crate::internal!())?;
            self.notice(&pdu.room_id, &text, Some(&preview)).await?;
            return Ok(());
        }
        // A status on an action item (its copy in a group's room, or a journal entry).
        let Some(delivery) = store::delivery_of(self.db.pool(), target).await? else { return Ok(()) };
        if !matches!(delivery.role.as_str(), "action" | "journal_action" | "journal_action_pointer") {
            return Ok(());
        }
        let Some(status) = Status::parse(key) else { return Ok(()) };
        if let Err(Error::Matrix(_, message)) =
            self.set_action_status(&pdu.sender, &delivery.reference, &delivery.group_slug, status).await
        {
            self.notice(&pdu.room_id, &format!("⚠ {message}"), Some(&pdu.event_id)).await?;
        }
        Ok(())
    }

    /// A command (`!...`) typed in a journal or a correspondence room; the answer to post.
    async fn on_command(&self, user: &UserId, body: &str) -> Result<Option<String>> {
        let mut words = body.split_whitespace();
        let command = words.next().unwrap_or("").to_lowercase();
        let args: Vec<&str> = words.collect();
        let one = |what: &str| -> Result<&str> {
            match args[..] {
                [a] => Ok(a),
                _ => Err(Error::invalid_param(format!("Usage : {command} <{what}>"))),
            }
        };
        let answer = match command.as_str() {
            "!suivre" | "!follow" | "!ne-plus-suivre" | "!unfollow" => {
                let follow = matches!(command.as_str(), "!suivre" | "!follow");
                let tag = one("mot-clé")?;
                let changed =
                    if follow { self.follow_tag(user, tag).await? } else { self.unfollow_tag(user, tag).await? };
                let tag = normalise_tag(tag);
                match (follow, changed) {
                    (true, true) => format!("Vous suivez désormais « {tag} »."),
                    (true, false) => format!("Vous suiviez déjà « {tag} »."),
                    (false, true) => format!("Vous ne suivez plus « {tag} »."),
                    (false, false) => format!("Vous ne suiviez pas « {tag} »."),
                }
            }
            "!mots-clés" | "!mots-cles" | "!tags" => {
                let tags = self.followed_tags(user).await?;
                if tags.is_empty() {
                    "Vous ne suivez aucun mot-clé.".to_owned()
                } else {
                    format!("Vous suivez : {}.", tags.join(", "))
                }
            }
            "!statut" | "!status" => {
                let [reference, status] = args[..] else {
                    return Err(Error::invalid_param("Usage : !statut <référence> nouveau|attribué|traité"));
                };
                let status = Status::parse(status)
                    .ok_or_else(|| Error::invalid_param("Statut inconnu : nouveau, attribué ou traité"))?;
                let groups = self.action_groups_of(user, reference).await?;
                if groups.is_empty() {
                    return Err(Error::not_found(format!("{reference} n'est pour action d'aucun de vos groupes")));
                }
                for g in &groups {
                    self.set_action_status(user, reference, g, status).await?;
                }
                format!("{reference} : {} pour {}.", status.as_str(), groups.join(", "))
            }
            "!audience" => {
                let reference = one("référence")?;
                let admin = self.accounts.is_admin(user).await?;
                let a = self.audience_for(user, admin, reference).await?;
                let groups: Vec<String> = a.by_group.iter().map(|(g, n)| format!("{g} : {n}")).collect();
                format!(
                    "Audience de {reference} : {} lecteurs{}.",
                    a.readers,
                    if groups.is_empty() { String::new() } else { format!(" ({})", groups.join(", ")) }
                )
            }
            "!aide" | "!help" => HELP.to_owned(),
            _ => return Ok(None),
        };
        Ok(Some(answer))
    }
}

/// Hands the service account the events of each published batch that may concern it (a commit
/// subscriber).
pub(crate) struct Drafts(pub(crate) Weak<Correspondence>);

impl commit::Subscriber for Drafts {
    fn published(&self, batch: &commit::Batch<'_>, _at: &commit::Committed<'_>) {
        let Some(correspondence) = self.0.upgrade() else { return };
        correspondence.correspondence_committed(batch.events, batch.txns);
    }
}
