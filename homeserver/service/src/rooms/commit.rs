//! What happens to a batch of events around its commit, told to subscribers registered at
//! start-up (`Services::start` assembles them): the room writer names none of them, so a new
//! concern (MLS, a bridge) subscribes without touching the writer. Each subscriber holds the
//! handles it needs; the writer hands it the batch only.
//!
//! Two kinds: [`RowsSubscriber`]s add rows to the batch's own transaction (push notifications,
//! the federation outbox), so that nothing reads the events without them; [`Subscriber`]s
//! only learn of the batch once it is committed (device-list positions, the search indexer,
//! the correspondence worker). Each is told, in this order: `committed` (after the commit,
//! still under the writer lock, before the stream positions are published: what readers of
//! the new positions need must be exact by then), then `published` (after).

use std::{collections::HashSet, sync::Arc};

use futures::future::BoxFuture;
use ruma::{state_res::StateMap, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId};

use crate::{pdu::Pdu, Result};

/// A batch of events on its way to the database, as subscribers see it.
pub(crate) struct Batch<'a> {
    /// The events appended, in order.
    pub events: &'a [Arc<Pdu>],
    /// Events whose stored copy the batch redacts.
    pub redacted: &'a [Pdu],
    /// The state maps the batch created (not in the caches before the commit).
    pub states: &'a [(i64, Arc<StateMap<OwnedEventId>>)],
    /// The rooms the batch creates.
    pub created: &'a HashSet<&'a RoomId>,
    /// `[user, device, transaction id, event id]` of the clients' sends.
    pub txns: &'a [[String; 4]],
}

/// A batch once committed.
pub(crate) struct Committed<'a> {
    /// The batch's last stream position.
    pub position: i64,
    /// The (user, room) pairs whose membership the batch changed.
    pub memberships: &'a [(OwnedUserId, OwnedRoomId)],
}

/// What [`RowsSubscriber::prepare`] answers: the rows, once computed.
pub(crate) type Preparing<'a> = BoxFuture<'a, Result<Box<dyn Rows>>>;
/// What [`Rows::write`] answers.
pub(crate) type Writing<'a> = BoxFuture<'a, Result<()>>;
/// The batch's transaction.
pub(crate) type Transaction = diplomatie_storage::Connection;

/// A concern that writes rows in the batch's transaction.
pub(crate) trait RowsSubscriber: Send + Sync {
    /// Computes its rows, reading through the pool, before the transaction opens (no read
    /// may go through the pool while a connection holds SQLite's write lock).
    fn prepare<'a>(&'a self, batch: &'a Batch<'a>) -> Preparing<'a>;
}

/// The rows one [`RowsSubscriber`] prepared for one batch.
pub(crate) trait Rows: Send + Sync {
    fn write<'a>(&'a self, tx: &'a mut Transaction) -> Writing<'a>;
    fn committed(&self, _at: &Committed<'_>) {}
    fn published(&self) {}
}

/// A concern told of a batch after its commit, and of history stored by backfill (events
/// below every stream position, committed at once: nothing reads them before they are).
pub(crate) trait Subscriber: Send + Sync {
    fn committed(&self, _batch: &Batch<'_>, _at: &Committed<'_>) {}
    fn published(&self, _batch: &Batch<'_>, _at: &Committed<'_>) {}
    fn backfilled(&self, _events: &[Arc<Pdu>]) {}
}

/// The subscribers of every batch.
pub(crate) struct CommitSubscribers {
    pub rows: Vec<Box<dyn RowsSubscriber>>,
    pub others: Vec<Box<dyn Subscriber>>,
}
