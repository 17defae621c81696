//! The streams beside the room DAG: typing (in memory), receipts and presence. (Account data
//! and filters are in [`crate::account_data`].)

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use diplomatie_storage::{streams, Db};
use ruma::{
    api::{
        client::receipt::create_receipt::v3::ReceiptType,
        federation::transactions::edu::{Edu, PresenceUpdate, ReceiptContent, ReceiptData, ReceiptMap, TypingContent},
    },
    events::{
        fully_read::FullyReadEventContent,
        receipt::{Receipt, ReceiptThread},
    },
    presence::PresenceState,
    EventId, MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};

use crate::{
    account_data::AccountData, core::Core, federation::sender::Outbox, now_ms, push::Push, rooms::Rooms, Error, Result,
};

/// Typing, receipts and presence, over the rooms (who hears of them), the account data (where
/// a fully-read marker goes), push (receipts clear unread counts) and the outbox (other
/// servers hear of them too).
pub struct Ephemeral {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    account_data: Arc<AccountData>,
    push: Arc<Push>,
    outbox: Arc<Outbox>,
    pub typing: Typing,
    /// The last presence state written for each user (see `presence_on_sync`).
    presence_states: Mutex<HashMap<OwnedUserId, String>>,
}

crate::core::over_core!(Ephemeral);

impl Ephemeral {
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        account_data: Arc<AccountData>,
        push: Arc<Push>,
        outbox: Arc<Outbox>,
    ) -> Ephemeral {
        Ephemeral {
            core,
            rooms,
            account_data,
            push,
            outbox,
            typing: Typing::default(),
            presence_states: Mutex::default(),
        }
    }
}

/// Who is typing where. Typing never touches the database: it is worthless after a restart.
#[derive(Default)]
pub struct Typing {
    rooms: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    serial: AtomicU64,
}

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    /// The typing serial of the last change in this room.
    changed: u64,
}

impl Typing {
    pub fn serial(&self) -> u64 {
        self.serial.load(Ordering::Acquire)
    }

    /// Who types in the room, if that changed after `since`.
    pub fn changed_since(&self, room_id: &RoomId, since: u64) -> Option<Vec<OwnedUserId>> {
        let rooms = self.rooms.lock().unwrap();
        let room = rooms.get(room_id)?;
        (room.changed > since).then(|| {
            let now = Instant::now();
            let mut users: Vec<_> =
                room.users.iter().filter(|(_, until)| **until > now).map(|(u, _)| u.clone()).collect();
            users.sort();
            users
        })
    }

    /// The users currently typing in a room.
    pub fn current(&self, room_id: &RoomId) -> Vec<OwnedUserId> {
        self.changed_since(room_id, 0).unwrap_or_default()
    }
}

/// The highest stream position in the database, to resume the stream after a restart.
pub async fn max_stream_position(db: &Db) -> diplomatie_storage::Result<i64> {
    streams::max_stream_position(db.pool()).await
}

/// Expires typing notifications every second, so that syncs learn when typing stopped.
pub fn spawn_typing_expiry(services: Weak<Ephemeral>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(services) = services.upgrade() else {
                return;
            };
            let now = Instant::now();
            let mut changed_rooms = Vec::new();
            {
                let mut rooms = services.typing.rooms.lock().unwrap();
                for (room_id, room) in rooms.iter_mut() {
                    let before = room.users.len();
                    room.users.retain(|_, until| *until > now);
                    if room.users.len() != before {
                        room.changed = services.typing.serial.fetch_add(1, Ordering::AcqRel) + 1;
                        changed_rooms.push(room_id.clone());
                    }
                }
                rooms.retain(|_, r| !r.users.is_empty() || r.changed + 1_000_000 > services.typing.serial());
            }
            for room_id in changed_rooms {
                // A room whose members cannot be read now wakes nobody; the expiry is in the
                // typing stream all the same.
                let _ = services.rooms.wake(&room_id).await;
            }
        }
    });
}

impl Ephemeral {
    /// `PUT /rooms/{roomId}/typing/{userId}`.
    pub async fn set_typing(
        &self,
        user: &UserId,
        room_id: &RoomId,
        typing: bool,
        timeout_ms: Option<u64>,
    ) -> Result<()> {
        if !self.rooms.is_joined(room_id, user).await? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        self.apply_typing(user, room_id, typing, timeout_ms).await?;
        if user.server_name() == self.server_name() {
            let edu = Edu::Typing(TypingContent::new(room_id.to_owned(), user.to_owned(), typing));
            self.outbox.federate_edu(room_id, &edu).await?;
        }
        Ok(())
    }

    /// Changes who types in a room (a local user, or one another server speaks for).
    pub(crate) async fn apply_typing(
        &self,
        user: &UserId,
        room_id: &RoomId,
        typing: bool,
        timeout_ms: Option<u64>,
    ) -> Result<()> {
        {
            let mut rooms = self.typing.rooms.lock().unwrap();
            let room = rooms.entry(room_id.to_owned()).or_default();
            let was = room.users.contains_key(user);
            if typing {
                let timeout = Duration::from_millis(timeout_ms.unwrap_or(30_000).min(120_000));
                room.users.insert(user.to_owned(), Instant::now() + timeout);
            } else {
                room.users.remove(user);
            }
            if typing || was {
                room.changed = self.typing.serial.fetch_add(1, Ordering::AcqRel) + 1;
            }
        }
        self.rooms.wake(room_id).await
    }

    /// Records a receipt (`m.read`, `m.read.private`) or a read marker.
    pub async fn set_receipt(
        &self,
        user: &UserId,
        room_id: &RoomId,
        receipt_type: &ReceiptType,
        event_id: &EventId,
        thread: &ReceiptThread,
    ) -> Result<()> {
        if !self.rooms.is_joined(room_id, user).await? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        let event = self
            .rooms
            .get_pdu(event_id)
            .await?
            .filter(|p| p.room() == room_id)
            .ok_or_else(|| Error::not_found("Event not found"))?;
        let kind = match receipt_type {
            ReceiptType::FullyRead => {
                let content = FullyReadEventContent::new(event.event_id.clone());
                let content = serde_json::to_value(content)?;
                return self.account_data.set(user, Some(room_id), "m.fully_read", &content).await;
            }
            ReceiptType::Read | ReceiptType::ReadPrivate => receipt_type.as_str(),
            _ => return Err(Error::invalid_param("Unknown receipt type")),
        };
        if !matches!(thread, ReceiptThread::Unthreaded | ReceiptThread::Main | ReceiptThread::Thread(_)) {
            return Err(Error::invalid_param("thread_id must be main or an event id"));
        }
        // A receipt only moves forward (as Synapse has it): one for an event before the one
        // the same receipt is at changes nothing, so that unread counts never grow back.
        let thread_id = thread.as_str().unwrap_or("");
        let current = streams::user_receipt(self.db.pool(), room_id.as_str(), user.as_str(), kind, thread_id).await?;
        if let Some(current) = current.as_deref().and_then(|id| <&EventId>::try_from(id).ok()) {
            if self.rooms.get_pdu(current).await?.is_some_and(|c| c.stream_ordering > event.stream_ordering) {
                return Ok(());
            }
        }
        let ts = now_ms();
        self.store_receipt(user, room_id, kind, event_id, thread.as_str(), ts).await?;
        if *receipt_type == ReceiptType::Read && user.server_name() == self.server_name() {
            let mut data = Receipt::new(MilliSecondsSinceUnixEpoch(UInt::new_saturating(ts as u64)));
            data.thread = thread.clone();
            let read = BTreeMap::from([(user.to_owned(), ReceiptData::new(data, vec![event_id.to_owned()]))]);
            let receipts = BTreeMap::from([(room_id.to_owned(), ReceiptMap::new(read))]);
            self.outbox.federate_edu(room_id, &Edu::Receipt(ReceiptContent::new(receipts))).await?;
        }
        Ok(())
    }

    /// Records a receipt (of a local user, or one another server speaks for) and wakes readers.
    pub(crate) async fn store_receipt(
        &self,
        user: &UserId,
        room_id: &RoomId,
        receipt_type: &str,
        event_id: &EventId,
        thread_id: Option<&str>,
        ts: i64,
    ) -> Result<()> {
        let mut write = self.begin_write().await;
        let position = write.next_position();
        streams::set_receipt(
            self.db.pool(),
            room_id.as_str(),
            user.as_str(),
            receipt_type,
            thread_id.unwrap_or(""),
            event_id.as_str(),
            ts,
            position,
        )
        .await?;
        self.push.unread_receipt(user, room_id);
        self.marks.receipt_written(position);
        write.publish();
        if receipt_type == "m.read.private" {
            self.notifier.notify([user]);
        } else {
            self.rooms.wake(room_id).await?;
        }
        Ok(())
    }

    pub async fn set_presence(&self, user: &UserId, state: &PresenceState, status_msg: Option<&str>) -> Result<()> {
        if !matches!(state, PresenceState::Online | PresenceState::Offline | PresenceState::Unavailable) {
            return Err(Error::invalid_param("Unknown presence state"));
        }
        let targets = self.store_presence(user, state.as_str(), status_msg, now_ms()).await?;
        if user.server_name() == self.server_name() {
            let mut presence = PresenceUpdate::new(user.to_owned(), state.clone(), UInt::MIN);
            presence.status_msg = status_msg.map(str::to_owned);
            presence.currently_active = *state == PresenceState::Online;
            self.outbox.federate_presence(&targets, presence).await?;
        }
        Ok(())
    }

    /// Records a user's presence (local, or one another server speaks for) and wakes who
    /// shares a room with the user; answers those users.
    pub(crate) async fn store_presence(
        &self,
        user: &UserId,
        state: &str,
        status_msg: Option<&str>,
        last_active_ts: i64,
    ) -> Result<std::collections::HashSet<ruma::OwnedUserId>> {
        let mut write = self.begin_write().await;
        let position = write.next_position();
        streams::set_presence(self.db.pool(), user.as_str(), state, status_msg, last_active_ts, position).await?;
        let row = streams::Presence {
            user_id: user.to_string(),
            state: state.to_owned(),
            status_msg: status_msg.map(str::to_owned),
            last_active_ts,
        };
        self.marks.presence_written(position, row);
        write.publish();
        self.presence_states.lock().unwrap().insert(user.to_owned(), state.to_owned());
        let mut targets = self.rooms.users_sharing_rooms_with(user).await?;
        targets.insert(user.to_owned());
        self.notifier.notify(targets.iter().map(|u| &**u));
        // Who peeks into a room the user is in sees their presence too.
        for room in self.notifier.watched_rooms() {
            if self.rooms.is_joined(&room, user).await? {
                self.notifier.notify_watchers(&room);
            }
        }
        Ok(targets)
    }

    /// Presence set by a `/sync` request (`set_presence`): written only when it changes, and
    /// known in memory after the first time, so that syncing costs no query for it.
    pub async fn presence_on_sync(&self, user: &UserId, state: &PresenceState) -> Result<()> {
        if self.presence_states.lock().unwrap().get(user).is_some_and(|s| s == state.as_str()) {
            return Ok(());
        }
        let current = streams::get_presence(self.db.pool(), user.as_str()).await?;
        match current {
            Some(p) if p.state == state.as_str() => {
                self.presence_states.lock().unwrap().insert(user.to_owned(), p.state);
                Ok(())
            }
            Some(p) => self.set_presence(user, state, p.status_msg.as_deref()).await,
            None => self.set_presence(user, state, None).await,
        }
    }

    pub async fn presence(&self, user: &UserId) -> Result<streams::Presence> {
        let remote = user.server_name() != self.server_name();
        if !remote && !diplomatie_storage::accounts::user_exists(self.db.pool(), user.as_str()).await? {
            return Err(Error::not_found("Unknown user"));
        }
        Ok(streams::get_presence(self.db.pool(), user.as_str()).await?.unwrap_or(streams::Presence {
            user_id: user.to_string(),
            state: "offline".into(),
            status_msg: None,
            last_active_ts: 0,
        }))
    }
}
