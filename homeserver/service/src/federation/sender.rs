//! The outbound queue: what this server sends to each other server, kept in the database
//! (`federation_outbox`) until that server acknowledged it, so a restart loses nothing.
//!
//! PDUs are queued in the transaction that commits them (`RoomWriter::commit`); EDUs (typing,
//! receipts) when they happen. One task per destination sends transactions of up to 50 PDUs
//! and 100 EDUs in order, and backs off (doubling, up to `federation.max_backoff_ms`) while the
//! destination fails.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use diplomatie_storage::federation as store;
use ruma::events::room::member::MembershipState;
use ruma::{
    api::federation::transactions::{
        edu::{Edu, PresenceContent, PresenceUpdate},
        send_transaction_message,
    },
    serde::Raw,
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedServerName, OwnedTransactionId, OwnedUserId, RoomId, ServerName,
};
use serde_json::Value;

use super::client::Transport;
use crate::pdu::federation_json;
use crate::{
    core::Core,
    rooms::{commit, Rooms},
    Pdu, Result,
};

/// The outbound queue and its running senders, over the core, the rooms (their servers, the
/// events to send) and the transport.
pub struct Outbox {
    /// This very value, for the sender tasks it starts.
    me: Weak<Outbox>,
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    transport: Arc<Transport>,
    next_id: AtomicI64,
    /// Transaction ids are `<this>-<first>-<last>`: a retry reuses its id, a restart (whose
    /// queue ids may repeat once delivered rows are gone) does not.
    prefix: String,
    running: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Notify>>>,
}

crate::core::over_core!(Outbox);

/// Rows for the outbox, computed before a commit and written in its transaction.
#[derive(Default)]
pub struct Outgoing {
    rows: Vec<(i64, String, &'static str, String)>,
    destinations: HashSet<OwnedServerName>,
}

/// The federation outbox of each batch: the PDUs this server built, queued for the rooms'
/// other servers in the batch's transaction (a committed event is never lost to federation),
/// their senders woken once published (a commit subscriber).
pub(crate) struct OutboxRows(pub(crate) Weak<Outbox>);

impl commit::RowsSubscriber for OutboxRows {
    fn prepare<'a>(&'a self, batch: &'a commit::Batch<'a>) -> commit::Preparing<'a> {
        Box::pin(async move {
            let outbox = crate::upgrade(&self.0)?;
            let out = outbox.outgoing_pdus(batch.events).await?;
            Ok(Box::new(OutboxBatch { outbox, out }) as Box<dyn commit::Rows>)
        })
    }
}

/// A batch's outbox rows, with the outbox that starts the senders once they are published.
struct OutboxBatch {
    outbox: Arc<Outbox>,
    out: Outgoing,
}

impl commit::Rows for OutboxBatch {
    fn write<'a>(&'a self, tx: &'a mut commit::Transaction) -> commit::Writing<'a> {
        Box::pin(async move {
            if !self.out.is_empty() {
                self.out.write(tx).await?;
            }
            Ok(())
        })
    }

    fn published(&self) {
        self.outbox.outgoing_committed(&self.out);
    }
}

impl Outgoing {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the rows in the commit's transaction.
    pub async fn write(&self, tx: &mut diplomatie_storage::Connection) -> Result<()> {
        let rows: Vec<(i64, &str, &str, &str)> =
            self.rows.iter().map(|(id, d, k, p)| (*id, d.as_str(), *k, p.as_str())).collect();
        store::enqueue(tx, &rows).await?;
        Ok(())
    }
}

impl Outbox {
    pub(crate) fn new(core: Arc<Core>, rooms: Arc<Rooms>, transport: Arc<Transport>) -> Arc<Outbox> {
        Arc::new_cyclic(|me| Outbox {
            me: me.clone(),
            core,
            rooms,
            transport,
            next_id: AtomicI64::new(0),
            prefix: crate::random_string(8),
            running: Mutex::default(),
        })
    }

    async fn outbox_id(&self) -> Result<i64> {
        if self.next_id.load(Ordering::Acquire) == 0 {
            let max = store::max_outbox_id(self.db.pool()).await?;
            let _ = self.next_id.compare_exchange(0, max + 1, Ordering::AcqRel, Ordering::Acquire);
        }
        Ok(self.next_id.fetch_add(1, Ordering::AcqRel))
    }

    /// The PDUs of a batch this server built, for every other server of their rooms.
    pub(crate) async fn outgoing_pdus(&self, appended: &[Arc<Pdu>]) -> Result<Outgoing> {
        let mut out = Outgoing::default();
        if !self.transport.federation_enabled() {
            return Ok(out);
        }
        let me = self.server_name();
        let mut by_room: HashMap<&RoomId, HashSet<OwnedServerName>> = HashMap::new();
        for pdu in appended.iter().filter(|p| p.sender.server_name() == me) {
            if !by_room.contains_key(&*pdu.room_id) {
                let servers: HashSet<OwnedServerName> =
                    self.rooms.joined_members(&pdu.room_id).await?.iter().map(|u| u.server_name().to_owned()).collect();
                by_room.insert(&pdu.room_id, servers);
            }
            let mut servers = by_room[&*pdu.room_id].clone();
            // The server of a user whose membership changes learns of it (an invite reached it
            // already, through `invite`).
            let member = pdu.kind.to_string() == "m.room.member" && pdu.membership() != Some(MembershipState::Invite);
            if let Some(target) = pdu.state_key.as_deref().filter(|_| member) {
                if let Ok(user) = <&ruma::UserId>::try_from(target) {
                    servers.insert(user.server_name().to_owned());
                }
            }
            for server in servers {
                if server == me || self.transport.check_server_allowed(&server).is_err() {
                    continue;
                }
                let id = self.outbox_id().await?;
                out.rows.push((id, server.to_string(), "pdu", pdu.event_id.to_string()));
                out.destinations.insert(server);
            }
        }
        Ok(out)
    }

    /// Starts (or wakes) the senders of what a commit queued.
    pub(crate) fn outgoing_committed(&self, out: &Outgoing) {
        for d in &out.destinations {
            self.wake_sender(d);
        }
    }

    /// Queues PDUs for destinations outside a room batch (a join relayed to the room's servers).
    pub(crate) async fn enqueue_pdus(&self, servers: &[OwnedServerName], events: &[OwnedEventId]) -> Result<()> {
        let mut out = Outgoing::default();
        for server in
            servers.iter().filter(|s| *s != self.server_name() && self.transport.check_server_allowed(s).is_ok())
        {
            for e in events {
                out.rows.push((self.outbox_id().await?, server.to_string(), "pdu", e.to_string()));
            }
            out.destinations.insert(server.clone());
        }
        self.enqueue(out).await
    }

    /// Queues an EDU for `servers`.
    pub(crate) async fn enqueue_edu(&self, servers: &[OwnedServerName], edu: &Edu) -> Result<()> {
        let payload = serde_json::to_string(edu)?;
        let mut out = Outgoing::default();
        for server in
            servers.iter().filter(|s| *s != self.server_name() && self.transport.check_server_allowed(s).is_ok())
        {
            out.rows.push((self.outbox_id().await?, server.to_string(), "edu", payload.clone()));
            out.destinations.insert(server.clone());
        }
        self.enqueue(out).await
    }

    /// Queues an EDU for every other server in the room.
    pub(crate) async fn federate_edu(&self, room_id: &RoomId, edu: &Edu) -> Result<()> {
        if !self.transport.federation_enabled() {
            return Ok(());
        }
        self.enqueue_edu(&self.rooms.servers_in_room(room_id).await?, edu).await
    }

    async fn enqueue(&self, out: Outgoing) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        out.write(&mut tx).await?;
        diplomatie_storage::commit(tx).await?;
        self.outgoing_committed(&out);
        Ok(())
    }

    /// Wakes the sender of `destination`, starting it if it is not running.
    fn wake_sender(&self, destination: &ServerName) {
        let mut running = self.running.lock().unwrap();
        if let Some(n) = running.get(destination) {
            n.notify_one();
            return;
        }
        let notify = Arc::new(tokio::sync::Notify::new());
        running.insert(destination.to_owned(), notify.clone());
        let Some(me) = self.me.upgrade() else { return };
        let destination = destination.to_owned();
        tokio::spawn(async move { run_sender(me, destination, notify).await });
    }
}

/// Starts the senders of destinations with something queued (after a restart).
pub fn spawn_senders(outbox: &Arc<Outbox>) {
    if !outbox.transport.federation_enabled() {
        return;
    }
    let outbox = outbox.clone();
    tokio::spawn(async move {
        match store::pending_destinations(outbox.db.pool()).await {
            Ok(destinations) => {
                for d in destinations {
                    if let Ok(server) = OwnedServerName::try_from(d) {
                        outbox.wake_sender(&server);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the federation outbox"),
        }
    });
}

async fn run_sender(outbox: Arc<Outbox>, destination: OwnedServerName, notify: Arc<tokio::sync::Notify>) {
    let weak = Arc::downgrade(&outbox);
    drop(outbox);
    let mut backoff = Duration::ZERO;
    loop {
        let Some(outbox) = weak.upgrade() else { return };
        let sent = send_once(&outbox, &destination).await;
        let max_backoff = Duration::from_millis(outbox.config.federation.max_backoff_ms);
        drop(outbox);
        match sent {
            Ok(true) => backoff = Duration::ZERO,
            Ok(false) => {
                // Nothing waits: sleep until woken (or check again now and then).
                let _ = tokio::time::timeout(Duration::from_secs(60), notify.notified()).await;
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(500), max_backoff.max(Duration::from_millis(500)));
                tracing::info!(%destination, error = %e, retry_in = ?backoff, "federation transaction failed");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// Sends one transaction of what waits for `destination`; `Ok(false)` when nothing waited.
async fn send_once(outbox: &Outbox, destination: &ServerName) -> Result<bool> {
    use tracing::Instrument;
    let span = tracing::info_span!("federation_send", %destination);
    send_once_in_span(outbox, destination).instrument(span).await
}

async fn send_once_in_span(outbox: &Outbox, destination: &ServerName) -> Result<bool> {
    let items = store::outbox(outbox.db.pool(), destination.as_str(), 150).await?;
    if items.is_empty() {
        return Ok(false);
    }
    let mut pdus = Vec::new();
    let mut edus = Vec::new();
    let first = items[0].0;
    let mut last = first;
    for (id, kind, payload) in &items {
        if (kind == "pdu" && pdus.len() >= 50) || (kind == "edu" && edus.len() >= 100) {
            break;
        }
        last = *id;
        match kind.as_str() {
            "pdu" => {
                let Ok(event_id) = OwnedEventId::try_from(payload.as_str()) else { continue };
                if let Some(p) = outbox.rooms.get_pdu(&event_id).await? {
                    pdus.push(federation_json(&p)?);
                }
            }
            _ => {
                let raw = serde_json::value::RawValue::from_string(payload.clone()).map_err(crate::internal!())?;
                edus.push(Raw::from_json(raw));
            }
        }
    }
    let txn_id = OwnedTransactionId::from(format!("{}-{first}-{last}", outbox.prefix));
    let mut request = send_transaction_message::v1::Request::new(
        txn_id,
        outbox.server_name().to_owned(),
        MilliSecondsSinceUnixEpoch::now(),
    );
    request.pdus = pdus;
    request.edus = edus;
    let answer = outbox.transport.federation_http(destination, request, 1024 * 1024).await?;
    if !answer.status().is_success() {
        // The other server's own error, as ruma reads it.
        Transport::parse_answer::<send_transaction_message::v1::Request>(destination, answer)?;
        return Err(crate::federation::remote_error(destination, "the transaction was refused"));
    }
    // The spec requires `pdus` in the answer, but servers answer `{}` to a transaction of EDUs
    // alone (Synapse accepts it): what matters is the success status.
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        pdus: BTreeMap<String, Value>,
    }
    let pdus = serde_json::from_slice::<Answer>(answer.body()).map(|a| a.pdus).unwrap_or_default();
    for (event_id, result) in pdus {
        if let Some(e) = result.get("error") {
            tracing::info!(%destination, %event_id, error = %e, "the other server did not accept an event");
        }
    }
    store::delivered(outbox.db.pool(), destination.as_str(), last).await?;
    Ok(true)
}

impl Outbox {
    /// Sends a local user's presence to the servers of the users sharing a room with them.
    pub(crate) async fn federate_presence(
        &self,
        sharing: &HashSet<OwnedUserId>,
        presence: PresenceUpdate,
    ) -> Result<()> {
        if !self.transport.federation_enabled() {
            return Ok(());
        }
        let mut servers: Vec<OwnedServerName> =
            sharing.iter().map(|u| u.server_name().to_owned()).filter(|s| s != self.server_name()).collect();
        servers.sort();
        servers.dedup();
        if servers.is_empty() {
            return Ok(());
        }
        self.enqueue_edu(&servers, &Edu::Presence(PresenceContent::new(vec![presence]))).await
    }
}
