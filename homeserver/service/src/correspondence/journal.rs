//! The agents' journals: one server-managed room per agent ("Journal") listing what their
//! groups must act on, with the status of each item, and the correspondence matching the tags
//! they follow. Any member of an addressee group changes an item's status (a reaction on the
//! entry, or a command); every member's entry is then edited to show it.

use std::collections::HashMap;

use diplomatie_storage::correspondence as store;
use futures::StreamExt;
use ruma::{
    api::client::room::{create_room::v3::Request as CreateRoomRequest, Visibility},
    OwnedRoomId, OwnedUserId, UserId,
};
use serde_json::{json, Value};

use super::{
    model::{normalise_tag, ActionItem, JournalItems, Kind},
    status::{ItemStatus, Status},
    text, Correspondence,
};
use crate::pdu::raw;
use crate::{
    rooms::{PduBuilder, Target},
    Error, Result,
};

/// Journals created at once when a dispatch needs many.
const PARALLEL_CREATIONS: usize = 16;

const JOURNAL_TOPIC: &str = "Ce que vos groupes doivent traiter, et la correspondance de vos centres d'intérêt. \
     Commandes : !suivre <mot-clé>, !ne-plus-suivre <mot-clé>, !mots-clés, !statut <référence> \
     nouveau|attribué|traité, !audience <référence>, !aide. Réagissez à une entrée avec 👀 (je m'en charge) \
     ou ✅ (traité).";

impl Correspondence {
    /// The journal room of `user`, if they have one.
    pub async fn journal_of(&self, user: &UserId) -> Result<Option<OwnedRoomId>> {
        self.correspondence_state().await?;
        Ok(self.state.journals.read().unwrap().get(user).cloned())
    }

    /// Loads the journals into memory, once.
    async fn correspondence_state(&self) -> Result<()> {
        if self.state.loaded.get().is_some() {
            return Ok(());
        }
        let rows = store::journals(self.db.pool()).await?;
        let mut journals = self.state.journals.write().unwrap();
        let mut owners = self.state.owners.write().unwrap();
        for (user, room) in rows {
            if let (Ok(u), Ok(r)) = (OwnedUserId::try_from(user), OwnedRoomId::try_from(room)) {
                owners.insert(r.clone(), u.clone());
                journals.insert(u, r);
            }
        }
        let _ = self.state.loaded.set(());
        Ok(())
    }

    /// The owner of a journal room.
    pub(crate) async fn journal_owner(&self, room: &ruma::RoomId) -> Result<Option<OwnedUserId>> {
        self.correspondence_state().await?;
        Ok(self.state.owners.read().unwrap().get(room).cloned())
    }

    /// The journals of `users`, created for those who have none yet.
    pub(crate) async fn ensure_journals(&self, users: &[OwnedUserId]) -> Result<HashMap<OwnedUserId, OwnedRoomId>> {
        self.correspondence_state().await?;
        let _creating = self.state.creating.lock().await;
        let missing: Vec<OwnedUserId> = {
            let journals = self.state.journals.read().unwrap();
            users.iter().filter(|u| !journals.contains_key(*u)).cloned().collect()
        };
        let created: Vec<Result<(OwnedUserId, OwnedRoomId)>> = futures::stream::iter(missing)
            .map(|u| async move {
                let room = self.create_journal(&u).await?;
                Ok((u, room))
            })
            .buffer_unordered(PARALLEL_CREATIONS)
            .collect()
            .await;
        for c in created {
            let (user, room) = c?;
            self.state.owners.write().unwrap().insert(room.clone(), user.clone());
            self.state.journals.write().unwrap().insert(user, room);
        }
        let journals = self.state.journals.read().unwrap();
        Ok(users.iter().filter_map(|u| journals.get(u).map(|r| (u.clone(), r.clone()))).collect())
    }

    /// Creates `user`'s journal: a private room of the system account that the user is joined
    /// to, where they may post (commands, reactions) but change nothing.
    async fn create_journal(&self, user: &UserId) -> Result<OwnedRoomId> {
        let system = self.organisation.system_user().await?;
        let powers = json!({
            "users": {},
            "users_default": 0, "events_default": 0, "state_default": 100,
            "invite": 100, "kick": 100, "ban": 100, "redact": 100,
        });
        let mut req = CreateRoomRequest::new();
        req.name = Some("Journal".to_owned());
        req.topic = Some(JOURNAL_TOPIC.to_owned());
        req.preset = Some(ruma::api::client::room::create_room::v3::RoomPreset::PrivateChat);
        req.visibility = Visibility::Private;
        req.power_level_content_override = Some(raw(&powers));
        req.initial_state = vec![raw(&json!({
            "type": "fr.diplomatie.journal", "state_key": "", "content": { "owner": user },
        }))];
        req.invite = vec![user.to_owned()];
        let room = self.membership.create_room(&system, req).await?;
        self.membership.join(user, &room, None).await?;
        store::insert_journal(self.db.pool(), user.as_str(), room.as_str()).await?;
        Ok(room)
    }

    /// Follows an interest tag (its journal is created if needed). False when followed already.
    pub async fn follow_tag(&self, user: &UserId, tag: &str) -> Result<bool> {
        let tag = valid_tag(tag)?;
        if !policies_allow_journal(self, user).await? {
            return Err(Error::forbidden("External persons have no journal"));
        }
        self.ensure_journals(&[user.to_owned()]).await?;
        Ok(store::follow(self.db.pool(), user.as_str(), &tag).await?)
    }

    /// Stops following an interest tag. False when it was not followed.
    pub async fn unfollow_tag(&self, user: &UserId, tag: &str) -> Result<bool> {
        Ok(store::unfollow(self.db.pool(), user.as_str(), &valid_tag(tag)?).await?)
    }

    pub async fn followed_tags(&self, user: &UserId) -> Result<Vec<String>> {
        Ok(store::followed(self.db.pool(), user.as_str()).await?)
    }

    /// Changes the status of `group`'s action item for `reference`, by `actor` (a member of
    /// the group), and edits every member's journal entry to show it.
    pub async fn set_action_status(&self, actor: &UserId, reference: &str, group: &str, status: Status) -> Result<()> {
        let mut item = store::action(self.db.pool(), reference, group)
            .await?
            .ok_or_else(|| Error::not_found(format!("{reference} is not for action by {group}")))?;
        let addressee = self.addressee(group, "action").await?;
        if !self.rooms.is_joined(&addressee.space, actor).await? {
            return Err(Error::forbidden(format!("Only members of {group} change its action items")));
        }
        item.status = status.as_str().to_owned();
        item.assignee = match status {
            Status::Assigned => Some(actor.to_string()),
            _ => None,
        };
        item.updated_by = Some(actor.to_string());
        item.updated_ts = crate::now_ms();
        store::set_action(self.db.pool(), &item).await?;
        let stored = store::get(self.db.pool(), reference)
            .await?
            .ok_or_else(crate::internal!("a value present by construction"))?;
        let record: Value = serde_json::from_str(&stored.record).map_err(crate::internal!())?;
        let kind = Kind::parse(&stored.kind).ok_or_else(crate::internal!("a value present by construction"))?;
        let level = diplomatie_policies::Level::parse(&stored.classification)
            .ok_or_else(crate::internal!("a value present by construction"))?;
        let shown = ItemStatus { status, assignee: item.assignee.clone() };
        let system = self.organisation.system_user().await?;
        for entry in store::action_entries(self.db.pool(), reference, group).await? {
            let Ok(room) = OwnedRoomId::try_from(entry.room_id.as_str()) else { continue };
            let Some(owner) = self.journal_owner(&room).await? else { continue };
            let view = diplomatie_policies::journal_view(self.portal.person(&owner).await?, level);
            let new = text::journal_entry(&record, kind, view, "action", Some((&addressee, &shown)));
            let body = format!("* {}", new["body"].as_str().unwrap_or_default());
            let mut edit = json!({
                "msgtype": new["msgtype"], "body": body, "m.new_content": new,
                "m.relates_to": { "rel_type": "m.replace", "event_id": entry.event_id },
            });
            if let Some(f) = edit["m.new_content"].get("formatted_body").cloned() {
                edit["format"] = json!("org.matrix.custom.html");
                edit["formatted_body"] = json!(format!("* {}", f.as_str().unwrap_or_default()));
            }
            self.rooms
                .append_event(Target::Room(&room), &system, PduBuilder::message("m.room.message", edit), None)
                .await?;
        }
        Ok(())
    }

    /// The action items of the groups `user` belongs to, with their status.
    pub async fn journal_items(&self, user: &UserId) -> Result<JournalItems> {
        let cleared = self.portal.person(user).await?.clearance == diplomatie_policies::Level::DR;
        let mut items = Vec::new();
        for slug in self.groups_of(user).await? {
            for a in store::group_actions(self.db.pool(), &slug).await? {
                let subject = store::get(self.db.pool(), &a.reference)
                    .await?
                    .filter(|s| s.classification != "DR" || cleared)
                    .map(|s| s.subject);
                items.push(ActionItem {
                    reference: a.reference,
                    group: a.group_slug,
                    status: a.status,
                    assignee: a.assignee,
                    updated_by: a.updated_by,
                    updated_ts: a.updated_ts,
                    subject,
                });
            }
        }
        Ok(JournalItems { action: items, tags: self.followed_tags(user).await? })
    }

    /// The slugs of the functional groups `user` is a member of.
    async fn groups_of(&self, user: &UserId) -> Result<Vec<String>> {
        let mut slugs = Vec::new();
        for room in crate::rooms::joined_rooms(self, user).await? {
            if let Some(marker) = self.organisation.org_marker(&room).await? {
                if marker.get("kind").and_then(Value::as_str) == Some("functional_group") {
                    if let Some(slug) = marker.get("slug").and_then(Value::as_str) {
                        slugs.push(slug.to_owned());
                    }
                }
            }
        }
        Ok(slugs)
    }

    /// An agent's addressee groups among a correspondence's action items.
    pub(crate) async fn action_groups_of(&self, user: &UserId, reference: &str) -> Result<Vec<String>> {
        let mut groups = Vec::new();
        for slug in self.groups_of(user).await? {
            if store::action(self.db.pool(), reference, &slug).await?.is_some() {
                groups.push(slug);
            }
        }
        Ok(groups)
    }
}

fn valid_tag(tag: &str) -> Result<String> {
    let tag = normalise_tag(tag);
    if tag.is_empty() || tag.len() > 64 || tag.chars().any(char::is_whitespace) {
        return Err(Error::invalid_param("A tag is one word of at most 64 characters"));
    }
    Ok(tag)
}

async fn policies_allow_journal(s: &Correspondence, user: &UserId) -> Result<bool> {
    Ok(s.portal.person(user).await?.kind != diplomatie_policies::AccountKind::External)
}
