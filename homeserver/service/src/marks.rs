//! Where the streams a `/sync` reads last moved, kept in memory, so that a woken `/sync` asks
//! the database only about the streams that moved since its token: the rooms with new events,
//! each user's memberships and account data, receipts; presence is held whole (each user's
//! last, ordered by position), so `/sync` reads it from memory. Writers set a mark before
//! they publish its position (the room writer through its commit subscriber,
//! `EventMarks` in `lib.rs`), so a reader that sees a position sees its mark too.
//!
//! Marks are exact only from the position the stream had when the process started (`floor`):
//! a token older than it always asks the database.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
};

use diplomatie_storage::streams::Presence;
use lru::LruCache;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

/// Each user's last presence, by the position it was written at (what the `presence` table
/// holds, in memory).
#[derive(Default)]
struct PresenceIndex {
    latest: HashMap<OwnedUserId, (i64, Arc<Presence>)>,
    by_position: BTreeMap<i64, OwnedUserId>,
}

/// A user's rooms and memberships, as `/sync` lists them.
pub type Memberships = Arc<Vec<(String, String)>>;

pub struct StreamMarks {
    floor: i64,
    receipts: AtomicI64,
    presence: Mutex<PresenceIndex>,
    account_data: Mutex<HashMap<OwnedUserId, i64>>,
    memberships: Mutex<HashMap<OwnedUserId, i64>>,
    rooms: Mutex<HashMap<OwnedRoomId, i64>>,
    /// Each recent syncer's memberships, with the position they were read at.
    listed: Mutex<LruCache<OwnedUserId, (i64, Memberships)>>,
}

impl StreamMarks {
    /// Marks for a stream that stands at `floor`.
    pub fn new(floor: i64) -> StreamMarks {
        StreamMarks {
            floor,
            receipts: AtomicI64::new(floor),
            presence: Mutex::default(),
            account_data: Mutex::default(),
            memberships: Mutex::default(),
            rooms: Mutex::default(),
            listed: Mutex::new(crate::lru(100_000)),
        }
    }

    /// Whether a stream whose mark is `mark` may have moved after `since`.
    fn moved(&self, mark: Option<i64>, since: i64) -> bool {
        since < self.floor || mark.is_some_and(|m| m > since)
    }

    pub fn receipt_written(&self, position: i64) {
        self.receipts.fetch_max(position, Ordering::AcqRel);
    }

    /// A user's presence, written at `position`.
    pub fn presence_written(&self, position: i64, presence: Presence) {
        let mut index = self.presence.lock().unwrap();
        let user = OwnedUserId::try_from(presence.user_id.as_str());
        let Ok(user) = user else { return };
        if let Some((old, _)) = index.latest.insert(user.clone(), (position, Arc::new(presence))) {
            index.by_position.remove(&old);
        }
        index.by_position.insert(position, user);
    }

    pub fn account_data_written(&self, user: &UserId, position: i64) {
        let mut marks = self.account_data.lock().unwrap();
        let mark = marks.entry(user.to_owned()).or_insert(position);
        *mark = (*mark).max(position);
    }

    /// Whether any receipt may have been written after `since`.
    pub fn receipts_since(&self, since: i64) -> bool {
        self.moved(Some(self.receipts.load(Ordering::Acquire)), since)
    }

    /// The presence of the users whose presence changed after `since` and up to `to`, each
    /// as last written; `None` when `since` is older than the marks (ask the database).
    pub fn presence_between(&self, since: i64, to: i64) -> Option<Vec<Arc<Presence>>> {
        if since < self.floor {
            return None;
        }
        if since >= to {
            return Some(Vec::new());
        }
        let index = self.presence.lock().unwrap();
        let changed = index.by_position.range(since + 1..=to);
        Some(changed.filter_map(|(_, user)| index.latest.get(user).map(|(_, p)| p.clone())).collect())
    }

    pub fn account_data_since(&self, user: &UserId, since: i64) -> bool {
        self.moved(self.account_data.lock().unwrap().get(user).copied(), since)
    }

    pub fn memberships_since(&self, user: &UserId, since: i64) -> bool {
        self.moved(self.memberships.lock().unwrap().get(user).copied(), since)
    }

    /// Whether the room may have had events after `since`.
    pub fn room_since(&self, room: &RoomId, since: i64) -> bool {
        self.moved(self.rooms.lock().unwrap().get(room).copied(), since)
    }

    /// A user's memberships read earlier, when none changed since.
    pub fn listed(&self, user: &UserId) -> Option<Memberships> {
        let (at, list) = self.listed.lock().unwrap().get(user).cloned()?;
        (!self.memberships_since(user, at)).then_some(list)
    }

    /// Keeps a user's memberships, read from the database once position `at` was published.
    pub fn list(&self, user: &UserId, at: i64, list: Memberships) {
        self.listed.lock().unwrap().put(user.to_owned(), (at, list));
    }
}

impl StreamMarks {
    /// What the room writer committed: each room's last event, each member's last membership
    /// change (told before the positions are published).
    pub(crate) fn events_committed(
        &self,
        events: &[std::sync::Arc<crate::Pdu>],
        memberships: &[(ruma::OwnedUserId, ruma::OwnedRoomId)],
        position: i64,
    ) {
        {
            let mut rooms = self.rooms.lock().unwrap();
            for pdu in events {
                let mark = rooms.entry(pdu.room_id.clone()).or_insert(pdu.stream_ordering);
                *mark = (*mark).max(pdu.stream_ordering);
            }
        }
        let mut members = self.memberships.lock().unwrap();
        for (user, _) in memberships {
            let mark = members.entry(user.clone()).or_insert(position);
            *mark = (*mark).max(position);
        }
    }
}

impl StreamMarks {
    /// Users whose memberships went without an event (a room purged): their lists are read
    /// again.
    pub(crate) fn memberships_dropped(&self, users: &[ruma::OwnedUserId], position: i64) {
        let mut members = self.memberships.lock().unwrap();
        for user in users {
            let mark = members.entry(user.clone()).or_insert(position);
            *mark = (*mark).max(position);
        }
        drop(members);
        let mut listed = self.listed.lock().unwrap();
        for user in users {
            listed.pop(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(user: &str, state: &str) -> Presence {
        Presence { user_id: user.to_owned(), state: state.to_owned(), status_msg: None, last_active_ts: 0 }
    }

    #[test]
    fn marks_answer_from_the_floor_on() {
        let marks = StreamMarks::new(10);
        let alice = <&UserId>::try_from("@alice:a.test").unwrap();
        // Before the floor: nothing is known, the database is asked.
        assert!(marks.receipts_since(9) && marks.account_data_since(alice, 9) && marks.memberships_since(alice, 9));
        assert!(marks.presence_between(9, 12).is_none());
        // From it on: only what was written moves.
        assert!(!marks.receipts_since(10) && !marks.account_data_since(alice, 10));
        marks.receipt_written(12);
        marks.account_data_written(alice, 11);
        assert!(marks.receipts_since(11) && !marks.receipts_since(12));
        assert!(marks.account_data_since(alice, 10) && !marks.account_data_since(alice, 11));
    }

    #[test]
    fn presence_keeps_each_users_last_write_in_range() {
        let marks = StreamMarks::new(0);
        marks.presence_written(3, presence("@alice:a.test", "online"));
        marks.presence_written(5, presence("@bob:a.test", "online"));
        marks.presence_written(7, presence("@alice:a.test", "unavailable"));
        let states = |since, to| -> Vec<(String, String)> {
            let found = marks.presence_between(since, to).unwrap();
            found.iter().map(|p| (p.user_id.clone(), p.state.clone())).collect()
        };
        assert_eq!(
            states(0, 7),
            [("@bob:a.test".into(), "online".into()), ("@alice:a.test".into(), "unavailable".into())]
        );
        assert_eq!(states(5, 7), [("@alice:a.test".to_owned(), "unavailable".to_owned())]);
        // Alice's first write is gone: her last one lies beyond `to`.
        assert_eq!(states(0, 6), [("@bob:a.test".to_owned(), "online".to_owned())]);
        // A token at or past the position asks for nothing (and never panics).
        assert!(states(7, 7).is_empty() && states(9, 7).is_empty());
    }
}
