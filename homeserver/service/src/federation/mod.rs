//! Federation: this server and others in the same rooms (the server-server API).
//!
//! - `keys.rs`: the verify key this server publishes, other servers' keys (fetched and cached,
//!   or pinned by configuration), and the checks of signatures on events and requests.
//! - `client.rs`: finding another server (server discovery) and sending it signed requests.
//! - `inbound.rs`: PDUs received from others: checked (signatures, hashes, authorisation against
//!   their auth events, the state before them and the current state) and persisted.
//! - `membership.rs`: joining, leaving and inviting across servers, on both sides.
//! - `backfill.rs`, `history.rs`: history asked of other servers, and served to them.
//! - `sender.rs`: the outbound queue, one sender per destination, kept in the database.
//! - `tls.rs`: the certificate of the built-in HTTPS listener.
//!
//! Every exchange with another server first asks [`client::Transport::check_server_allowed`]: federation
//! must be enabled and the server on the allow-list (when there is one).

pub mod backfill;
pub mod client;
pub mod e2ee;
pub mod history;
pub mod inbound;
pub mod keys;
pub mod membership;
pub mod presence;
pub mod sender;
pub mod tls;
pub mod transactions;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{events::StateEventType, state_res::StateMap, OwnedEventId, OwnedRoomId, RoomId, ServerName};

use self::client::Transport;
use crate::{core::Core, rooms::Rooms, Error, Result};

/// The room DAG across servers: events received (`inbound.rs`), history asked of other
/// servers (`backfill.rs`) and served to them (`history.rs`); over the rooms and the transport.
pub struct Federation {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    transport: Arc<Transport>,
    /// Received PDUs of a room are handled one at a time (their order matters to the checks).
    room_locks: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
    /// Events lately rejected by the authorisation rules, with the state before each: still
    /// part of the graph (later events may cite them), changing no state (the state after one
    /// is the state before it). In memory: after a restart, one cited is asked for again.
    pub(crate) rejected: Mutex<lru::LruCache<OwnedEventId, Arc<StateMap<OwnedEventId>>>>,
}

crate::core::over_core!(Federation);

impl Federation {
    pub(crate) fn new(core: Arc<Core>, rooms: Arc<Rooms>, transport: Arc<Transport>) -> Federation {
        Federation { core, rooms, transport, room_locks: Mutex::default(), rejected: Mutex::new(crate::lru(10_000)) }
    }

    /// Refuses `server` if the room's server ACL (`m.room.server_acl`) denies it.
    pub async fn check_server_acl(&self, room_id: &RoomId, server: &ServerName) -> Result<()> {
        let state = self.rooms.current_state(room_id).await?;
        let Some(acl) = self.rooms.state_event_in(&state, &StateEventType::RoomServerAcl, "").await? else {
            return Ok(());
        };
        let content: ruma::events::room::server_acl::RoomServerAclEventContent =
            match serde_json::from_str(acl.content.get()) {
                Ok(c) => c,
                // An ACL that does not parse denies nothing (as Synapse does).
                Err(_) => return Ok(()),
            };
        if content.is_allowed(server) {
            Ok(())
        } else {
            Err(Error::forbidden(format!("Server {server} is denied by the room's server ACL")))
        }
    }

    /// The lock under which received PDUs of a room are handled.
    pub(crate) fn room_lock(&self, room_id: &RoomId) -> Arc<tokio::sync::Mutex<()>> {
        self.room_locks.lock().unwrap().entry(room_id.to_owned()).or_default().clone()
    }
}

pub(crate) use client::remote_error;
