//! Wakes the `/sync` requests of the users a change concerns. Nothing polls the database.

use std::{collections::HashMap, sync::Mutex};

use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, watch::Sender<u64>>>,
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
}
