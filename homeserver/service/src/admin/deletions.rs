//! Room deletion, as Synapse's admin API does it (`DELETE /_synapse/admin/v2/rooms/{roomId}`):
//! the room is blocked when asked, every member of this server is made to leave it, its local
//! aliases go and it leaves the directory; then, unless told not to, everything this server
//! holds of it is purged. It runs as a task: each step is recorded (`room_deletions`), the
//! status endpoints read that record, and a deletion a stop interrupted is taken up again at
//! start-up. A room a legal hold keeps is never purged.

use std::sync::Arc;

use diplomatie_storage::{admin as admin_store, deletions as store, deletions::Deletion, rooms as room_store};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Serialize;
use serde_json::json;

use super::Admin;
use crate::{now_ms, Error, Result};

/// What a deletion is asked to do beyond making the members leave.
#[derive(Clone, Copy, Debug)]
pub struct DeleteRoom {
    /// Block the room: nobody of this server may join it again.
    pub block: bool,
    /// Remove everything this server holds of it.
    pub purge: bool,
    /// Purge even when members of this server could not be made to leave.
    pub force_purge: bool,
}

/// What the members' leaving did (Synapse's `shutdown_room`).
#[derive(Serialize)]
pub struct Shutdown {
    pub kicked_users: Vec<String>,
    pub failed_to_kick_users: Vec<String>,
    pub local_aliases: Vec<String>,
    /// Always none: this server does not create a room to move the members to.
    pub new_room_id: Option<OwnedRoomId>,
}

/// Where a deletion stands (`GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`).
#[derive(Serialize)]
pub struct DeletionStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub shutdown_room: Shutdown,
}

/// A room's deletions (`GET /_synapse/admin/v2/rooms/{roomId}/delete_status`).
#[derive(Serialize)]
pub struct DeletionList {
    pub results: Vec<DeletionStatus>,
}

/// The new deletion's id (`DELETE /_synapse/admin/v2/rooms/{roomId}`).
#[derive(Serialize)]
pub struct DeletionStarted {
    pub delete_id: String,
}

const SHUTTING_DOWN: &str = "shutting_down";
const PURGING: &str = "purging";
const COMPLETE: &str = "complete";
const FAILED: &str = "failed";

/// The reason the members' leave events give.
const LEAVE_REASON: &str = "This room was deleted by the server's administrator";

fn status(d: Deletion, with_ids: bool) -> DeletionStatus {
    DeletionStatus {
        delete_id: with_ids.then(|| d.delete_id.clone()),
        room_id: with_ids.then(|| d.room_id.clone()),
        status: d.status,
        error: d.error,
        shutdown_room: Shutdown {
            kicked_users: d.kicked_users,
            failed_to_kick_users: d.failed_to_kick_users,
            local_aliases: d.local_aliases,
            new_room_id: None,
        },
    }
}

impl Admin {
    /// Starts deleting a room; answers the deletion's id. A room not known here may only be
    /// blocked; a room being deleted is not deleted twice at once.
    pub async fn delete_room(&self, admin: &UserId, room_id: &RoomId, ask: DeleteRoom) -> Result<DeletionStarted> {
        let deletion = self.begin_deletion(admin, room_id, ask).await?;
        let delete_id = deletion.delete_id.clone();
        let me = self.me.upgrade().ok_or(Error::Internal)?;
        tokio::spawn(async move { me.run_deletion(deletion).await });
        Ok(DeletionStarted { delete_id })
    }

    /// `DELETE /_synapse/admin/v1/rooms/{roomId}`: the same, answered once done.
    pub async fn delete_room_now(&self, admin: &UserId, room_id: &RoomId, ask: DeleteRoom) -> Result<Shutdown> {
        let deletion = self.begin_deletion(admin, room_id, ask).await?;
        let done = self.run_deletion(deletion).await;
        if done.status == FAILED {
            return Err(Error::Conflict(done.error.unwrap_or_default()));
        }
        Ok(status(done, false).shutdown_room)
    }

    async fn begin_deletion(&self, admin: &UserId, room_id: &RoomId, ask: DeleteRoom) -> Result<Deletion> {
        let known = room_store::get_room(self.db.pool(), room_id.as_str()).await?.is_some();
        if !known && !ask.block {
            return Err(Error::not_found("Room not found"));
        }
        let running = store::of_room(self.db.pool(), room_id.as_str()).await?;
        if running.iter().any(|d| d.status == SHUTTING_DOWN || d.status == PURGING) {
            return Err(Error::Conflict("The room is being deleted already".to_owned()));
        }
        if known && ask.purge && store::held(self.db.pool(), room_id.as_str()).await? {
            return Err(Error::forbidden("A legal hold keeps this room: it cannot be purged"));
        }
        let deletion = Deletion {
            delete_id: crate::random_string(16),
            room_id: room_id.to_string(),
            admin: admin.to_string(),
            status: SHUTTING_DOWN.to_owned(),
            block: ask.block,
            purge: ask.purge && known,
            force_purge: ask.force_purge,
            error: None,
            kicked_users: Vec::new(),
            failed_to_kick_users: Vec::new(),
            local_aliases: Vec::new(),
            started_ts: now_ms(),
            finished_ts: None,
        };
        store::insert(self.db.pool(), &deletion).await?;
        let detail = json!({ "delete_id": deletion.delete_id, "block": ask.block, "purge": ask.purge,
                             "force_purge": ask.force_purge });
        self.audit(admin, "room.delete", room_id.as_str(), Some(detail)).await?;
        Ok(deletion)
    }

    /// Carries a deletion on from where it stands to its end, recording each step; answers it
    /// as it ended.
    async fn run_deletion(&self, mut deletion: Deletion) -> Deletion {
        if let Err(e) = self.deletion_steps(&mut deletion).await {
            tracing::warn!(room_id = %deletion.room_id, error = %e, "room deletion failed");
            deletion.status = FAILED.to_owned();
            deletion.error = Some(e.to_string());
        }
        deletion.finished_ts = Some(now_ms());
        if let Err(e) = store::update(self.db.pool(), &deletion).await {
            tracing::error!(room_id = %deletion.room_id, error = %e, "a room deletion's end was not recorded");
        }
        deletion
    }

    async fn deletion_steps(&self, d: &mut Deletion) -> Result<()> {
        let room_id = OwnedRoomId::try_from(d.room_id.as_str()).map_err(|_| Error::Internal)?;
        if d.block {
            admin_store::block_room(self.db.pool(), room_id.as_str(), &d.admin, now_ms()).await?;
        }
        if d.status == SHUTTING_DOWN {
            self.shut_down(&room_id, d).await?;
            d.status = if d.purge { PURGING } else { COMPLETE }.to_owned();
            store::update(self.db.pool(), d).await?;
        }
        if d.status == PURGING {
            let left =
                store::local_members(self.db.pool(), room_id.as_str(), self.server_name().as_str(), true).await?;
            if !left.is_empty() && !d.force_purge {
                return Err(Error::Conflict(format!(
                    "{} members of this server are still in the room: not purged",
                    left.len()
                )));
            }
            let events = self.rooms.purge_room(&room_id, &d.delete_id).await?;
            tracing::info!(%room_id, events, "room purged");
            // The index forgets the room's events now, or at the next retention run.
            if let Err(e) = self.search.forget_purged().await {
                tracing::warn!(%room_id, error = %e, "the search index will forget the purged room later");
            }
            d.status = COMPLETE.to_owned();
        }
        Ok(())
    }

    /// Makes every member of this server leave the room (an invite is refused), removes its
    /// local aliases and takes it out of the directory.
    async fn shut_down(&self, room_id: &RoomId, d: &mut Deletion) -> Result<()> {
        if room_store::get_room(self.db.pool(), room_id.as_str()).await?.is_none() {
            return Ok(());
        }
        let members = store::local_members(self.db.pool(), room_id.as_str(), self.server_name().as_str(), true).await?;
        for member in members {
            let Ok(user) = OwnedUserId::try_from(member.as_str()) else { continue };
            match self.membership.leave(&user, room_id, Some(LEAVE_REASON.to_owned())).await {
                Ok(()) => d.kicked_users.push(member),
                Err(e) => {
                    tracing::warn!(%room_id, %user, error = %e, "a member could not be made to leave");
                    d.failed_to_kick_users.push(member);
                }
            }
        }
        for alias in room_store::room_aliases(self.db.pool(), room_id.as_str()).await? {
            room_store::delete_alias(self.db.pool(), &alias).await?;
            d.local_aliases.push(alias);
        }
        room_store::set_public(self.db.pool(), room_id.as_str(), false).await?;
        Ok(())
    }

    /// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`.
    pub async fn deletion_status(&self, delete_id: &str) -> Result<DeletionStatus> {
        let d = store::get(self.db.pool(), delete_id).await?.ok_or_else(|| Error::not_found("delete id not found"))?;
        Ok(status(d, false))
    }

    /// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`: the room's deletions, newest first.
    pub async fn room_deletions(&self, room_id: &RoomId) -> Result<DeletionList> {
        let found = store::of_room(self.db.pool(), room_id.as_str()).await?;
        if found.is_empty() {
            return Err(Error::not_found("No delete task for room"));
        }
        Ok(DeletionList { results: found.into_iter().map(|d| status(d, true)).collect() })
    }
}

/// Takes up the deletions a stop interrupted (at start-up).
pub(crate) fn resume_deletions(admin: &Arc<Admin>) {
    let admin = admin.clone();
    tokio::spawn(async move {
        let unfinished = match store::unfinished(admin.db.pool()).await {
            Ok(found) => found,
            Err(e) => return tracing::error!(error = %e, "the unfinished room deletions could not be read"),
        };
        for deletion in unfinished {
            tracing::info!(room_id = %deletion.room_id, "taking up a room deletion");
            admin.run_deletion(deletion).await;
        }
    });
}
