//! What every service shares: the configuration, the database, the server's name and signing
//! key, the stream of positions that orders every write, and the notifier that wakes readers.
//!
//! [`Core`] sits at the bottom of the service layer: it calls no service, and every service
//! holds an `Arc<Core>` (and dereferences to it, so that `self.db` reads the same everywhere).

use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc,
};

use diplomatie_storage::Db;
use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedServerName, ServerName, UserId};

use crate::{
    config::Config, keys::ServerKeys, marks::StreamMarks, notifier::Notifier, registrations::Registry, Result,
};

/// Lets a service (a struct with a `core: Arc<Core>` field) read the core's fields as its own.
macro_rules! over_core {
    ($service:ty) => {
        impl std::ops::Deref for $service {
            type Target = $crate::core::Core;
            fn deref(&self) -> &$crate::core::Core {
                &self.core
            }
        }
    };
}
pub(crate) use over_core;

pub struct Core {
    pub config: Config,
    pub db: Db,
    server_name: OwnedServerName,
    pub keys: ServerKeys,
    /// Serialises every write that takes a stream position, so that positions are committed in
    /// the order they are handed out and a reader never skips one.
    writer: tokio::sync::Mutex<()>,
    /// The highest stream position whose write is committed and visible.
    stream: AtomicI64,
    pub notifier: Notifier,
    /// Where the streams `/sync` reads last moved.
    pub marks: Arc<StreamMarks>,
    /// The application services registered (`app_service_config_files`).
    pub registrations: Registry,
    /// What `/metrics` tells (counted where things happen).
    pub metrics: crate::metrics::Metrics,
}

impl Core {
    pub(crate) fn new(
        config: Config,
        db: Db,
        server_name: OwnedServerName,
        keys: ServerKeys,
        stream: i64,
        registrations: Registry,
    ) -> Core {
        Core {
            config,
            db,
            server_name,
            keys,
            writer: tokio::sync::Mutex::new(()),
            stream: AtomicI64::new(stream),
            notifier: Notifier::default(),
            marks: Arc::new(StreamMarks::new(stream)),
            registrations,
            metrics: crate::metrics::Metrics::default(),
        }
    }

    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// The current stream position (what a `/sync` made now would be up to).
    pub fn stream_position(&self) -> i64 {
        self.stream.load(Ordering::Acquire)
    }

    /// Takes the write lock. Stream positions handed out by [`StreamWrite::next_position`]
    /// become visible to readers only through [`StreamWrite::publish`], after the commit.
    pub(crate) async fn begin_write(&self) -> StreamWrite<'_> {
        let guard = self.writer.lock().await;
        let position = self.stream.load(Ordering::Acquire);
        StreamWrite { core: self, position, _guard: guard }
    }

    /// The rooms a user has a membership in (any, `leave` included), with that membership:
    /// where the storage's strings become ruma's type.
    pub(crate) async fn memberships_of(&self, user: &UserId) -> Result<Vec<(OwnedRoomId, MembershipState)>> {
        Ok(diplomatie_storage::state::rooms_for_user(self.db.pool(), user.as_str())
            .await?
            .into_iter()
            .filter_map(|(room, m)| Some((OwnedRoomId::try_from(room).ok()?, MembershipState::from(m.as_str()))))
            .collect())
    }
}

/// A write in progress under the writer lock.
pub(crate) struct StreamWrite<'a> {
    core: &'a Core,
    /// The last position handed out.
    position: i64,
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

impl StreamWrite<'_> {
    /// The last position handed out.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Hands out the next stream position.
    pub fn next_position(&mut self) -> i64 {
        self.position += 1;
        self.position
    }

    /// Makes the positions visible, once the write is committed. Dropping a `StreamWrite`
    /// without publishing leaves a gap in the stream, which readers tolerate.
    pub fn publish(self) {
        self.core.stream.store(self.position, Ordering::Release);
    }
}
