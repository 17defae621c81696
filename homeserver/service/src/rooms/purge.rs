//! A room's purge: every row this server holds of it goes, in one transaction under the
//! writer lock (no event can land in it meanwhile), and the in-memory views forget it.

use diplomatie_storage::deletions as store;
use ruma::{OwnedUserId, RoomId};

use super::Rooms;
use crate::Result;

impl Rooms {
    /// Removes the room from the database and from the views; its events are recorded as
    /// purged under `run_id`, for the search index to forget. Answers how many events went.
    pub(crate) async fn purge_room(&self, room_id: &RoomId, run_id: &str) -> Result<u64> {
        let write = self.begin_write().await;
        let local = store::local_members(self.db.pool(), room_id.as_str(), self.server_name().as_str(), false).await?;
        let mut tx = self.db.begin_write().await?;
        let events = store::purge_room(&mut tx, room_id.as_str(), run_id).await?;
        diplomatie_storage::commit(tx).await?;
        self.meta.lock().unwrap().remove(room_id);
        self.joined.lock().unwrap().remove(room_id);
        self.recent.lock().unwrap().pop(room_id);
        self.bumps.lock().unwrap().pop(room_id);
        self.threaded.lock().unwrap().pop(room_id);
        let local: Vec<OwnedUserId> = local.into_iter().filter_map(|u| OwnedUserId::try_from(u).ok()).collect();
        self.marks.memberships_dropped(&local, write.position());
        drop(write);
        Ok(events)
    }
}
