//! Transactions received (`/send/{txnId}`): their PDUs checked and persisted one by one,
//! their EDUs (typing, receipts) applied when the origin speaks for the user. A transaction
//! received again gets the answer the first one got, and changes nothing.

use std::{collections::BTreeMap, sync::Arc};

use diplomatie_storage::federation as store;
use ruma::{api::federation::transactions::edu::Edu, events::receipt::ReceiptThread, OwnedEventId, ServerName};
use serde_json::{value::RawValue, Value};

use super::{
    inbound::{canonical, event_id_of, room_of},
    Federation,
};
use crate::{accounts::Accounts, core::Core, e2ee::E2ee, ephemeral::Ephemeral, now_ms, rooms::Rooms, Error, Result};

/// The spec's limits on a transaction.
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

/// The answer for each PDU: accepted, or why not.
pub type PduResults = BTreeMap<OwnedEventId, std::result::Result<(), String>>;

/// What other servers send and ask beyond the room DAG: transactions (their PDUs handed to
/// [`Federation`], their EDUs applied), their users' presence, and the keys and to-device
/// messages of end-to-end encryption (`e2ee.rs`, `presence.rs`).
pub struct Peers {
    core: Arc<Core>,
    pub(super) rooms: Arc<Rooms>,
    pub(super) accounts: Arc<Accounts>,
    federation: Arc<Federation>,
    pub(super) ephemeral: Arc<Ephemeral>,
    pub(super) e2ee: Arc<E2ee>,
}

crate::core::over_core!(Peers);

impl Peers {
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        accounts: Arc<Accounts>,
        federation: Arc<Federation>,
        ephemeral: Arc<Ephemeral>,
        e2ee: Arc<E2ee>,
    ) -> Peers {
        Peers { core, rooms, accounts, federation, ephemeral, e2ee }
    }

    /// `/send`: a transaction from `origin`, in a span of its own (origin, id, sizes).
    pub async fn receive_transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
        pdus: &[Box<RawValue>],
        edus: &[Box<RawValue>],
    ) -> Result<PduResults> {
        use tracing::Instrument;
        let span = tracing::info_span!("federation_transaction", %origin, txn_id, pdus = pdus.len(), edus = edus.len());
        self.receive_transaction_in_span(origin, txn_id, pdus, edus).instrument(span).await
    }

    async fn receive_transaction_in_span(
        &self,
        origin: &ServerName,
        txn_id: &str,
        pdus: &[Box<RawValue>],
        edus: &[Box<RawValue>],
    ) -> Result<PduResults> {
        if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
            return Err(Error::bad_json(format!("A transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs")));
        }
        if let Some(answer) = store::txn_response(self.db.pool(), origin.as_str(), txn_id).await? {
            let map: BTreeMap<OwnedEventId, Value> = serde_json::from_str(&answer).unwrap_or_default();
            return Ok(map
                .into_iter()
                .map(|(id, v)| {
                    let r = match v.get("error").and_then(Value::as_str) {
                        Some(e) => Err(e.to_owned()),
                        None => Ok(()),
                    };
                    (id, r)
                })
                .collect());
        }
        let mut results = PduResults::new();
        for raw in pdus {
            let outcome = self.federation.receive_pdu(origin, raw).await;
            let Some(event_id) = pdu_event_id(self, raw).await else {
                if let Err(e) = outcome {
                    tracing::info!(%origin, error = %e, "dropped a PDU without a usable id");
                }
                continue;
            };
            let outcome = match outcome {
                Err(e) if super::inbound::is_rejection(&e) => {
                    tracing::info!(%origin, %event_id, error = %e, "refused a received event");
                    Ok(())
                }
                other => other.map(|_| ()).map_err(|e| e.to_string()),
            };
            results.insert(event_id, outcome);
        }
        for raw in edus {
            if let Err(e) = self.receive_edu(origin, raw).await {
                tracing::debug!(%origin, error = %e, "EDU ignored");
            }
        }
        let stored: BTreeMap<&OwnedEventId, Value> = results
            .iter()
            .map(|(id, r)| {
                (id, r.as_ref().err().map_or(Value::Object(Default::default()), |e| serde_json::json!({ "error": e })))
            })
            .collect();
        let answer = serde_json::to_string(&stored)?;
        store::put_txn_response(self.db.pool(), origin.as_str(), txn_id, &answer, now_ms()).await?;
        Ok(results)
    }

    /// Applies an EDU (ruma's `Edu`): typing and read receipts of the origin's own users in
    /// rooms they are in, to-device messages, device-list and signing-key updates, presence.
    async fn receive_edu(&self, origin: &ServerName, raw: &RawValue) -> Result<()> {
        let edu: Edu = serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("EDU: {e}")))?;
        match edu {
            Edu::Typing(typing) => {
                let (room, user) = (&typing.room_id, &typing.user_id);
                if user.server_name() != origin || !self.rooms.is_joined(room, user).await? {
                    return Err(Error::forbidden("typing of a user the origin does not speak for"));
                }
                self.federation.check_server_acl(room, origin).await?;
                self.ephemeral.apply_typing(user, room, typing.typing, None).await
            }
            Edu::Receipt(receipts) => {
                for (room, map) in receipts.receipts {
                    self.federation.check_server_acl(&room, origin).await?;
                    for (user, receipt) in map.read {
                        if user.server_name() != origin || !self.rooms.is_joined(&room, &user).await? {
                            continue;
                        }
                        let Some(event_id) = receipt.event_ids.first() else { continue };
                        if self.rooms.get_pdu(event_id).await?.is_none_or(|p| p.room_id != room) {
                            continue;
                        }
                        let ts = receipt.data.ts.map(|t| i64::from(t.get())).unwrap_or_else(now_ms);
                        let thread = match &receipt.data.thread {
                            ReceiptThread::Main => Some("main"),
                            ReceiptThread::Thread(id) => Some(id.as_str()),
                            _ => None,
                        };
                        self.ephemeral.store_receipt(&user, &room, "m.read", event_id, thread, ts).await?;
                    }
                }
                Ok(())
            }
            Edu::DirectToDevice(content) => self.receive_to_device(origin, content).await,
            Edu::DeviceListUpdate(update) => self.receive_device_list_update(origin, update).await,
            Edu::SigningKeyUpdate(update) => self.receive_signing_key_update(origin, update).await,
            Edu::Presence(presence) => self.receive_presence(origin, presence).await,
            _ => Ok(()),
        }
    }
}

/// The id of a PDU of a transaction, for the answer (computed with its room's version).
async fn pdu_event_id(services: &Peers, raw: &RawValue) -> Option<OwnedEventId> {
    let object = canonical(raw).ok()?;
    let room = room_of(&object).ok()?;
    let meta = services.rooms.room_meta(&room).await.ok()??;
    event_id_of(&object, &meta.rules()).ok()
}
