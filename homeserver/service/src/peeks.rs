//! Peeking (MSC2753): a device follows a world-readable room without joining it. `POST
//! /peek/{roomIdOrAlias}` starts a peek, `POST /rooms/{roomId}/unpeek` ends it; meanwhile the
//! device's `/sync` shows the room under `rooms.peek`, as a joined room (the whole room on the
//! first sync after the peek, then what is new), and the room's events wake that sync.
//!
//! A peek is the device's, not the user's (another device of the same user does not see the
//! room). It ends when the user joins the room (the room moves to `rooms.join`, and a later
//! leave does not bring the peek back), or when the room stops being world readable. Peeks
//! are kept in the database (`room_peeks`) and in memory (read at start-up): `/sync` asks the
//! database nothing for devices that peek into no room.
//!
//! The portal's rules apply as to a join: a person who may not enter a room (a DR room for a
//! user without DR clearance, a room closed to external persons) may not peek into it either.
//! Only rooms this server holds can be peeked into (peeking over federation, MSC2444, is not
//! built).

use std::{collections::HashMap, sync::Arc, sync::Mutex};

use diplomatie_policies::{self as policies, Entry};
use diplomatie_storage::rooms as store;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::{core::Core, portal::Portal, rooms::Rooms, Error, Result};

/// A device's peeks: each room, with the stream position the peek took (0: from the caller's
/// token on, not the whole room).
type DevicePeeks = Vec<(OwnedRoomId, i64)>;

pub struct Peeks {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    portal: Arc<Portal>,
    /// Each user's devices that peek, with their peeks (looked up by reference on every
    /// `/sync`: no key is built).
    users: Mutex<HashMap<OwnedUserId, HashMap<String, DevicePeeks>>>,
}

crate::core::over_core!(Peeks);

impl Peeks {
    /// The peeks kept in the database, in memory, their rooms watched.
    pub(crate) async fn load(core: Arc<Core>, rooms: Arc<Rooms>, portal: Arc<Portal>) -> Result<Peeks> {
        let mut users: HashMap<OwnedUserId, HashMap<String, DevicePeeks>> = HashMap::new();
        for peek in store::all_peeks(core.db.pool()).await? {
            let (Ok(user), Ok(room)) = (OwnedUserId::try_from(peek.user_id), OwnedRoomId::try_from(peek.room_id))
            else {
                continue;
            };
            core.notifier.watch(&room, &user);
            users.entry(user).or_default().entry(peek.device_id).or_default().push((room, peek.since));
        }
        Ok(Peeks { core, rooms, portal, users: Mutex::new(users) })
    }

    /// `POST /peek/{roomIdOrAlias}` once the alias is resolved: `device` of `user` follows the
    /// room. `whole`: the next sync shows the room whole, as a newly joined one (MSC2753);
    /// otherwise only what happens from the caller's sync token on (the old `/events` stream's
    /// peeking, asked again at every call: once the device follows the room, the call checks
    /// that it still may and records nothing). A member of the room has nothing to peek at:
    /// nothing is recorded.
    pub async fn peek(&self, user: &UserId, device: &str, room_id: &RoomId, whole: bool) -> Result<()> {
        self.rooms.known_room(room_id).await.map_err(|_| {
            Error::not_found("This server is in no such room (peeking into other servers' rooms is not supported)")
        })?;
        if self.rooms.is_joined(room_id, user).await? {
            return Ok(());
        }
        if !self.rooms.is_world_readable(room_id).await? {
            return Err(Error::forbidden("Only members may read this room: its history is not world readable"));
        }
        let person = self.portal.person(user).await?;
        let room = self.portal.room_facts_now(room_id).await?;
        policies::may_enter(person, room, Entry::Peek).map_err(crate::portal::forbidden)?;
        let follows = self.of_device(user, device).iter().any(|(r, _)| r == room_id);
        if follows && !whole {
            return Ok(());
        }

        // A whole room takes a stream position, so that the device's next sync (whose token is
        // before it) shows the room as new.
        let mut write = if whole { Some(self.begin_write().await) } else { None };
        let since = write.as_mut().map_or(0, |w| w.next_position());
        let peek = store::Peek {
            user_id: user.to_string(),
            device_id: device.to_owned(),
            room_id: room_id.to_string(),
            since,
        };
        store::add_peek(self.db.pool(), &peek).await?;
        {
            let mut users = self.users.lock().unwrap();
            let rooms = users.entry(user.to_owned()).or_default().entry(device.to_owned()).or_default();
            rooms.retain(|(r, _)| r != room_id);
            rooms.push((room_id.to_owned(), since));
        }
        if !follows {
            self.notifier.watch(room_id, user);
        }
        // The device's waiting sync wakes to show the room.
        if let Some(write) = write {
            write.publish();
            self.notifier.notify([user]);
        }
        Ok(())
    }

    /// `POST /rooms/{roomId}/unpeek`: the device no longer follows the room.
    pub async fn unpeek(&self, user: &UserId, device: &str, room_id: &RoomId) -> Result<()> {
        self.end(user, Some(device), room_id).await
    }

    /// Ends the peeks of `user` into `room_id`: of one device, or of all (`None`).
    pub(crate) async fn end(&self, user: &UserId, device: Option<&str>, room_id: &RoomId) -> Result<()> {
        store::remove_peeks(self.db.pool(), user.as_str(), device, room_id.as_str()).await?;
        let mut ended = 0;
        {
            let mut users = self.users.lock().unwrap();
            if let Some(devices) = users.get_mut(user) {
                devices.retain(|d, rooms| {
                    if device.is_none_or(|device| device == d) {
                        let before = rooms.len();
                        rooms.retain(|(r, _)| r != room_id);
                        ended += before - rooms.len();
                    }
                    !rooms.is_empty()
                });
                if devices.is_empty() {
                    users.remove(user);
                }
            }
        }
        self.notifier.unwatch(room_id, user, ended);
        Ok(())
    }

    /// The rooms a device peeks into, with the stream positions their peeks took.
    pub(crate) fn of_device(&self, user: &UserId, device: &str) -> DevicePeeks {
        let users = self.users.lock().unwrap();
        users.get(user).and_then(|devices| devices.get(device)).cloned().unwrap_or_default()
    }
}
