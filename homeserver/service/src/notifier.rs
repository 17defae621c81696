//! Wakes the `/sync` requests of the users a change concerns. Nothing polls the database.

use std::{collections::HashMap, sync::Mutex};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::watch;

#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, watch::Sender<u64>>>,
    /// Users who follow rooms they are not in (peeks, see `peeks`), with how many of their
    /// devices do: woken by the rooms' events as members are.
    watchers: Mutex<HashMap<OwnedRoomId, HashMap<OwnedUserId, usize>>>,
}

impl Notifier {
    /// A receiver that changes whenever something for `user` happens. Subscribe *before*
    /// reading the streams, so that no change between the read and the wait is missed.
    pub fn subscribe(&self, user: &UserId) -> watch::Receiver<u64> {
        let mut users = self.users.lock().unwrap();
        users.entry(user.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    pub fn notify<'a>(&self, targets: impl IntoIterator<Item = &'a UserId>) {
        let mut users = self.users.lock().unwrap();
        for user in targets {
            if let Some(tx) = users.get(user) {
                if tx.receiver_count() == 0 {
                    users.remove(user);
                } else {
                    tx.send_modify(|v| *v += 1);
                }
            }
        }
    }

    /// One more of `user`'s devices follows `room`.
    pub fn watch(&self, room: &RoomId, user: &UserId) {
        *self.watchers.lock().unwrap().entry(room.to_owned()).or_default().entry(user.to_owned()).or_default() += 1;
    }

    /// `devices` of `user`'s devices no longer follow `room`.
    pub fn unwatch(&self, room: &RoomId, user: &UserId, devices: usize) {
        let mut watchers = self.watchers.lock().unwrap();
        let Some(users) = watchers.get_mut(room) else { return };
        if let Some(count) = users.get_mut(user) {
            *count = count.saturating_sub(devices);
            if *count == 0 {
                users.remove(user);
            }
        }
        if users.is_empty() {
            watchers.remove(room);
        }
    }

    /// The rooms some users follow without being in them.
    pub fn watched_rooms(&self) -> Vec<OwnedRoomId> {
        self.watchers.lock().unwrap().keys().cloned().collect()
    }

    /// Wakes those who follow `room` without being in it.
    pub fn notify_watchers(&self, room: &RoomId) {
        let users: Vec<OwnedUserId> = match self.watchers.lock().unwrap().get(room) {
            Some(users) => users.keys().cloned().collect(),
            None => return,
        };
        self.notify(users.iter().map(|u| &**u));
    }
}
