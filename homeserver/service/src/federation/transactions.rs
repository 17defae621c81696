//! Transactions received (`/send/{txnId}`): their PDUs checked and persisted one by one,
//! their EDUs (typing, receipts) applied when the origin speaks for the user. A transaction
//! received again gets the answer the first one got, and changes nothing.

use std::collections::BTreeMap;

use diplomatie_storage::federation as store;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, ServerName};
use serde_json::{value::RawValue, Value};

use super::inbound::{canonical, event_id_of, room_of};
use crate::{now_ms, Error, Result, Services};

/// The spec's limits on a transaction.
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

/// The answer for each PDU: accepted, or why not.
pub type PduResults = BTreeMap<OwnedEventId, std::result::Result<(), String>>;

impl Services {
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
            let outcome = self.receive_pdu(origin, raw).await;
            let Some(event_id) = pdu_event_id(self, raw).await else {
                if let Err(e) = outcome {
                    tracing::info!(%origin, error = %e, "dropped a PDU without a usable id");
                }
                continue;
            };
            results.insert(event_id, outcome.map(|_| ()).map_err(|e| e.to_string()));
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

    /// Applies an EDU: typing and read receipts of the origin's own users in rooms they are in.
    async fn receive_edu(&self, origin: &ServerName, raw: &RawValue) -> Result<()> {
        let edu: Value = serde_json::from_str(raw.get())?;
        let content = edu.get("content").cloned().unwrap_or(Value::Null);
        match edu.get("edu_type").and_then(Value::as_str) {
            Some("m.typing") => {
                let room: OwnedRoomId = serde_json::from_value(content["room_id"].clone())?;
                let user: OwnedUserId = serde_json::from_value(content["user_id"].clone())?;
                if user.server_name() != origin || !self.is_joined(&room, &user).await? {
                    return Err(Error::forbidden("typing of a user the origin does not speak for"));
                }
                self.check_server_acl(&room, origin).await?;
                let typing = content["typing"].as_bool().unwrap_or(false);
                self.apply_typing(&user, &room, typing, None).await
            }
            Some("m.receipt") => {
                let Some(rooms) = content.as_object() else { return Ok(()) };
                for (room, receipts) in rooms {
                    let room = OwnedRoomId::try_from(room.as_str()).map_err(|_| Error::bad_json("room id"))?;
                    self.check_server_acl(&room, origin).await?;
                    let Some(read) = receipts.get("m.read").and_then(Value::as_object) else { continue };
                    for (user, receipt) in read {
                        let user = OwnedUserId::try_from(user.as_str()).map_err(|_| Error::bad_json("user id"))?;
                        if user.server_name() != origin || !self.is_joined(&room, &user).await? {
                            continue;
                        }
                        let Some(event_id) = receipt["event_ids"]
                            .as_array()
                            .and_then(|a| a.first())
                            .and_then(Value::as_str)
                            .and_then(|s| OwnedEventId::try_from(s).ok())
                        else {
                            continue;
                        };
                        if self.get_pdu(&event_id).await?.is_none_or(|p| p.room_id != room) {
                            continue;
                        }
                        let ts = receipt["data"]["ts"].as_i64().unwrap_or_else(now_ms);
                        let thread = receipt["data"]["thread_id"].as_str();
                        self.store_receipt(&user, &room, "m.read", &event_id, thread, ts).await?;
                    }
                }
                Ok(())
            }
            Some("m.direct_to_device") => self.receive_to_device(origin, &content).await,
            Some("m.device_list_update" | "m.signing_key_update") => {
                self.receive_device_list_update(origin, &content).await
            }
            Some("m.presence") => self.receive_presence(origin, &content).await,
            _ => Ok(()),
        }
    }
}

/// The id of a PDU of a transaction, for the answer (computed with its room's version).
async fn pdu_event_id(services: &Services, raw: &RawValue) -> Option<OwnedEventId> {
    let object = canonical(raw).ok()?;
    let room = room_of(&object).ok()?;
    let meta = services.room_meta(&room).await.ok()??;
    event_id_of(&object, &meta.rules()).ok()
}
