//! Account data (global and per room) and the filters clients store for `/sync`: a user's own
//! settings, kept in the database and ordered on the stream like every other write.

use std::sync::Arc;

use diplomatie_storage::streams;
use ruma::{RoomId, UserId};
use serde_json::Value;

use crate::{core::Core, rooms::Rooms, Error, Result};

/// Account data and stored filters, over the core (and the rooms, to check a room exists).
pub struct AccountData {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
}

crate::core::over_core!(AccountData);

impl AccountData {
    pub(crate) fn new(core: Arc<Core>, rooms: Arc<Rooms>) -> AccountData {
        AccountData { core, rooms }
    }

    /// Sets the user's account data of `data_type` (in `room_id`, or global), and wakes their
    /// `/sync`.
    pub async fn set(&self, user: &UserId, room_id: Option<&RoomId>, data_type: &str, content: &Value) -> Result<()> {
        if !content.is_object() {
            return Err(Error::bad_json("Account data must be a JSON object"));
        }
        if data_type == "m.fully_read" && room_id.is_none() {
            return Err(Error::bad_json("m.fully_read is per room"));
        }
        if let Some(room_id) = room_id {
            self.rooms.known_room(room_id).await?;
        }
        let json = serde_json::to_string(content)?;
        let mut write = self.begin_write().await;
        let position = write.next_position();
        streams::set_account_data(
            self.db.pool(),
            user.as_str(),
            room_id.map_or("", |r| r.as_str()),
            data_type,
            &json,
            position,
        )
        .await?;
        self.marks.account_data_written(user, position);
        write.publish();
        self.notifier.notify([user]);
        Ok(())
    }

    /// The user's account data of `data_type`; `M_NOT_FOUND` when there is none.
    pub async fn get(&self, user: &UserId, room_id: Option<&RoomId>, data_type: &str) -> Result<Value> {
        let json =
            streams::get_account_data(self.db.pool(), user.as_str(), room_id.map_or("", |r| r.as_str()), data_type)
                .await?
                .ok_or_else(|| Error::not_found("Account data not found"))?;
        Ok(serde_json::from_str(&json)?)
    }

    /// Every account data event of the user's in a room (`""` for the global ones), as events.
    pub async fn all_in(&self, user: &UserId, room_id: Option<&RoomId>) -> Result<Vec<Value>> {
        let room = room_id.map_or("", |r| r.as_str());
        let rows = streams::account_data_in(self.db.pool(), user.as_str(), room).await?;
        let mut events = Vec::new();
        for (kind, content) in rows {
            events.push(serde_json::json!({ "type": kind, "content": serde_json::from_str::<Value>(&content)? }));
        }
        Ok(events)
    }

    /// Stores a filter; answers its id.
    pub async fn create_filter(&self, user: &UserId, filter: &Value) -> Result<String> {
        let json = serde_json::to_string(filter)?;
        let mut tx = self.db.begin().await?;
        let id = streams::next_counter(&mut tx, "filter").await?;
        streams::insert_filter(&mut *tx, user.as_str(), id, &json).await?;
        diplomatie_storage::commit(tx).await?;
        Ok(id.to_string())
    }

    /// A filter the user stored.
    pub async fn filter(&self, user: &UserId, filter_id: &str) -> Result<Value> {
        let id: i64 = filter_id.parse().map_err(|_| Error::not_found("Unknown filter"))?;
        let json = streams::get_filter(self.db.pool(), user.as_str(), id)
            .await?
            .ok_or_else(|| Error::not_found("Unknown filter"))?;
        Ok(serde_json::from_str(&json)?)
    }
}
