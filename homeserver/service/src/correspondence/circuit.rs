//! The signature circuit (e-parapheur): a draft goes through approvals ("visas") in the order
//! the drafter named, then the signature of an authorised signatory of the sending group, and
//! only then is it sealed and dispatched. Each decision is a record signed by whoever gave it
//! (with `acting_for` when a delegate acts within a delegation's period), over the digest of
//! the draft it decided on; a refusal returns the draft to its drafter with a comment, who may
//! submit it again (approvals then start over, the history stays). The dispatched record
//! carries the whole chain and is signed by the signatory: `diplomatie verify` checks every
//! decision's signature, that the approvals of the final draft are the named approvers' in
//! their order, and the signature (`verify_circuit` in `mod.rs`).
//!
//! Each step is a notice in the group's correspondence room; ✅ on the circuit's notice by
//! the person awaited approves (or signs, at the signatory's turn), ❌ refuses.

use ruma::UserId;
use serde_json::{json, Value};

use super::{
    model::{CircuitRequest, CircuitView, Composition, Decision, DelegationRequest, DelegationView, Signatory},
    record_digest, text, Correspondence,
};
use crate::{Error, Result};
use diplomatie_storage::circuits as store;

/// Approvers a circuit may name.
const MAX_APPROVERS: usize = 10;
/// The longest delegation (a year).
const MAX_DELEGATION_MS: i64 = 366 * 86_400_000;

impl Correspondence {
    /// `PUT /_diplomatie/admin/v1/groups/{slug}/signatories`: who signs for a group.
    pub async fn set_signatories(&self, group: &str, list: &[Signatory]) -> Result<Vec<Signatory>> {
        self.addressee(group, "origin").await?;
        let mut rows = Vec::new();
        for s in list {
            let user = UserId::parse(s.user_id.as_str()).map_err(|_| Error::invalid_param("Invalid user id"))?;
            if s.title.trim().is_empty() {
                return Err(Error::missing_param("A signatory has a title (head of post, director...)"));
            }
            rows.push((user.to_string(), s.title.trim().to_owned()));
        }
        let mut tx = self.db.begin_write().await?;
        store::set_signatories(&mut tx, group, &rows).await?;
        diplomatie_storage::commit(tx).await?;
        self.signatories(group).await
    }

    async fn signatories(&self, group: &str) -> Result<Vec<Signatory>> {
        Ok(store::signatories(self.db.pool(), group)
            .await?
            .into_iter()
            .map(|(user_id, title)| Signatory { user_id, title })
            .collect())
    }

    /// Starts a circuit for a draft: checked as if it were sent now by its drafter.
    pub async fn start_circuit(
        &self,
        drafter: &UserId,
        device: Option<&ruma::DeviceId>,
        req: CircuitRequest,
    ) -> Result<CircuitView> {
        let draft = self.normalised(drafter, device, &req.correspondence).await?;
        let mut approvers: Vec<String> = Vec::new();
        for a in &req.approvers {
            let user =
                UserId::parse(a.as_str()).map_err(|_| Error::invalid_param(format!("Invalid approver {a:?}")))?;
            if approvers.contains(&user.to_string()) {
                return Err(Error::invalid_param(format!("{user} is named twice")));
            }
            approvers.push(user.to_string());
        }
        if approvers.len() > MAX_APPROVERS {
            return Err(Error::invalid_param(format!("At most {MAX_APPROVERS} approvers")));
        }
        let signatory = UserId::parse(req.signatory.as_str()).map_err(|_| Error::invalid_param("Invalid signatory"))?;
        if !self.signatories(&draft.from).await?.iter().any(|s| s.user_id == signatory.as_str()) {
            return Err(Error::forbidden(format!("{signatory} is not an authorised signatory of {}", draft.from)));
        }
        let from = self.addressee(&draft.from, "origin").await?;
        let now = crate::now_ms();
        let mut c = store::Circuit {
            circuit_id: format!("C-{}", crate::random_string(10)),
            group_slug: draft.from.clone(),
            drafter: drafter.to_string(),
            draft: serde_json::to_string(&draft).map_err(crate::internal!())?,
            approvers: serde_json::to_string(&approvers).map_err(crate::internal!())?,
            signatory: signatory.to_string(),
            status: "pending".into(),
            step: 0,
            chain: "[]".into(),
            room_id: from.room.to_string(),
            event_id: None,
            reference: None,
            created_ts: now,
            updated_ts: now,
        };
        store::insert(self.db.pool(), &c).await?;
        let opened = format!("Circuit {} ouvert par {drafter}\n\n{}\n", c.circuit_id, text::summary(&draft));
        let notice = self.circuit_notice(&c, &opened).await?;
        store::set_event(self.db.pool(), &c.circuit_id, &notice).await?;
        c.event_id = Some(notice);
        tracing::info!(circuit = c.circuit_id, group = c.group_slug, "signature circuit started");
        view(&c)
    }

    /// A composition as a circuit keeps it: checked as if sent now, its kind, classification
    /// and tags in the record's own form, so that the dispatched record gives back the same
    /// draft (and digest).
    async fn normalised(
        &self,
        author: &UserId,
        device: Option<&ruma::DeviceId>,
        c: &Composition,
    ) -> Result<Composition> {
        let plan = self.plan(author, device, c).await?;
        let mut draft = c.clone();
        draft.kind = plan.kind.as_str().to_owned();
        draft.classification = Some(plan.level.as_str().to_owned());
        draft.tags = plan.tags.clone();
        Ok(draft)
    }

    /// A circuit, for the people in it, the group's members, or an administrator.
    pub async fn circuit(&self, user: &UserId, is_admin: bool, circuit_id: &str) -> Result<CircuitView> {
        let c = self.readable_circuit(user, is_admin, circuit_id).await?;
        view(&c)
    }

    async fn readable_circuit(&self, user: &UserId, is_admin: bool, circuit_id: &str) -> Result<store::Circuit> {
        let c = store::get(self.db.pool(), circuit_id).await?.ok_or_else(|| Error::not_found("Unknown circuit"))?;
        let named = c.drafter == user.as_str()
            || c.signatory == user.as_str()
            || approvers(&c)?.iter().any(|a| a == user.as_str());
        let room = ruma::OwnedRoomId::try_from(c.room_id.as_str()).map_err(crate::internal!())?;
        if is_admin || named || self.rooms.is_joined(&room, user).await? {
            return Ok(c);
        }
        Err(Error::not_found("Unknown circuit"))
    }

    /// A decision by `user` (the person awaited, or their delegate): approve, refuse (with a
    /// comment), or sign (the signatory's, once every approval is given: then the record is
    /// sealed and dispatched).
    pub async fn decide(
        &self,
        user: &UserId,
        circuit_id: &str,
        decision: Decision,
        comment: Option<&str>,
    ) -> Result<CircuitView> {
        let c = store::get(self.db.pool(), circuit_id).await?.ok_or_else(|| Error::not_found("Unknown circuit"))?;
        if c.status != "pending" {
            return Err(Error::forbidden(format!("The circuit is {}", c.status)));
        }
        let list = approvers(&c)?;
        let signing_turn = c.step as usize >= list.len();
        let awaited = if signing_turn { c.signatory.clone() } else { list[c.step as usize].clone() };
        let now = crate::now_ms();
        let acting_for = if awaited == user.as_str() {
            None
        } else if let Some(d) = store::delegation_at(self.db.pool(), &awaited, user.as_str(), now).await? {
            Some(d)
        } else {
            return Err(Error::forbidden(format!("The circuit awaits {awaited}'s decision")));
        };
        let comment = comment.map(str::trim).filter(|c| !c.is_empty());
        match decision {
            Decision::Approve if signing_turn => {
                return Err(Error::forbidden("Every approval is given: the signatory signs"))
            }
            Decision::Sign if !signing_turn => {
                return Err(Error::forbidden(format!("The circuit awaits {awaited}'s approval")))
            }
            Decision::Refuse if comment.is_none() => return Err(Error::missing_param("A refusal says why (comment)")),
            _ => {}
        }
        let draft: Value = serde_json::from_str(&c.draft).map_err(crate::internal!())?;
        let mut entry = json!({
            "circuit_id": c.circuit_id,
            "step": c.step,
            "decision": decision.as_str(),
            "by": awaited,
            "author": user,
            "draft_sha256": record_digest(&draft)?,
            "signed_at": now,
        });
        if let Some(text) = comment {
            entry["comment"] = json!(text);
        }
        if let Some(d) = &acting_for {
            entry["acting_for"] = json!(awaited);
            entry["delegation"] = json!({ "id": d.delegation_id, "from_ts": d.from_ts, "until_ts": d.until_ts });
        }
        let entry = self.seal(user, entry).await?;
        let mut chain: Vec<Value> = serde_json::from_str(&c.chain).map_err(crate::internal!())?;
        chain.push(entry);
        let mut next = c.clone();
        next.chain = serde_json::to_string(&chain).map_err(crate::internal!())?;
        next.updated_ts = now;
        let on_behalf = acting_for.as_ref().map(|_| format!(" pour {awaited}")).unwrap_or_default();
        let text = match decision {
            Decision::Refuse => {
                next.status = "returned".into();
                format!("❌ Refusé par {user}{on_behalf} ; renvoyé au rédacteur : {}", comment.unwrap_or_default())
            }
            Decision::Approve => {
                next.step += 1;
                format!("✅ Visa de {user}{on_behalf} ({}/{})", next.step, list.len())
            }
            Decision::Sign => {
                // Claimed first ("signing"), so that two signatures cannot both dispatch; a
                // failed dispatch gives the circuit back as it was.
                next.status = "signing".into();
                if !store::advance(self.db.pool(), &next, c.step, &c.status).await? {
                    return Err(Error::forbidden("Another decision on this circuit was recorded first"));
                }
                let draft: Composition = serde_json::from_value(draft).map_err(crate::internal!())?;
                let reference = match self.sign_and_dispatch(user, &c, &draft, &chain).await {
                    Ok(reference) => reference,
                    Err(e) => {
                        store::advance(self.db.pool(), &c, c.step, "signing").await?;
                        return Err(e);
                    }
                };
                next.status = "signed".into();
                next.reference = Some(reference.clone());
                store::advance(self.db.pool(), &next, c.step, "signing").await?;
                let text = format!("🖋 Signé par {user}{on_behalf} et envoyé : {reference}");
                self.circuit_notice(&next, &text).await?;
                return view(&next);
            }
        };
        if !store::advance(self.db.pool(), &next, c.step, &c.status).await? {
            return Err(Error::forbidden("Another decision on this circuit was recorded first"));
        }
        self.circuit_notice(&next, &text).await?;
        view(&next)
    }

    /// The signatory's seal over the draft and the chain, then the dispatch.
    async fn sign_and_dispatch(
        &self,
        user: &UserId,
        c: &store::Circuit,
        draft: &Composition,
        chain: &[Value],
    ) -> Result<String> {
        let plan = self.plan(user, None, draft).await?;
        let reference = self.new_reference(user, &plan.from.slug).await?;
        let mut record = serde_json::to_value(draft).map_err(crate::internal!())?;
        record["reference"] = json!(reference);
        record["author"] = json!(user);
        record["signed_at"] = json!(crate::now_ms());
        record["sealed"] = json!({ "by": self.server_name(), "device_id": Value::Null });
        record["circuit"] = json!({
            "circuit_id": c.circuit_id,
            "drafted_by": c.drafter,
            "approvers": approvers(c)?,
            "signatory": c.signatory,
            "decisions": chain,
        });
        let record = self.seal(user, record).await?;
        self.dispatch(user, None, plan, record).await?;
        Ok(reference)
    }

    /// A returned draft, amended and submitted again by its drafter: approvals start over.
    pub async fn resubmit(
        &self,
        drafter: &UserId,
        device: Option<&ruma::DeviceId>,
        circuit_id: &str,
        composition: &Composition,
    ) -> Result<CircuitView> {
        let c = store::get(self.db.pool(), circuit_id).await?.ok_or_else(|| Error::not_found("Unknown circuit"))?;
        if c.drafter != drafter.as_str() {
            return Err(Error::forbidden("Only the drafter submits the draft again"));
        }
        if c.status != "returned" {
            return Err(Error::forbidden(format!("The circuit is {}", c.status)));
        }
        let draft = self.normalised(drafter, device, composition).await?;
        if draft.from != c.group_slug {
            return Err(Error::invalid_param("The draft stays with its sending group"));
        }
        let mut next = c.clone();
        next.draft = serde_json::to_string(&draft).map_err(crate::internal!())?;
        next.status = "pending".into();
        next.step = 0;
        next.updated_ts = crate::now_ms();
        if !store::advance(self.db.pool(), &next, c.step, &c.status).await? {
            return Err(Error::forbidden("Another decision on this circuit was recorded first"));
        }
        let again = format!("Circuit {} soumis à nouveau par {drafter}\n\n{}\n", c.circuit_id, text::summary(&draft));
        let notice = self.circuit_notice(&next, &again).await?;
        store::set_event(self.db.pool(), &c.circuit_id, &notice).await?;
        next.event_id = Some(notice);
        view(&next)
    }

    /// `POST /_diplomatie/client/v1/delegations`: `delegator` lets `delegate` act for them in
    /// circuits for a period (recorded, never deleted).
    pub async fn delegate(&self, delegator: &UserId, req: &DelegationRequest) -> Result<DelegationView> {
        let delegate = UserId::parse(req.delegate.as_str()).map_err(|_| Error::invalid_param("Invalid delegate"))?;
        if delegate == delegator {
            return Err(Error::invalid_param("One does not delegate to oneself"));
        }
        let now = crate::now_ms();
        let from_ts = req.from_ts.unwrap_or(now);
        if req.until_ts <= from_ts || req.until_ts - from_ts > MAX_DELEGATION_MS {
            return Err(Error::invalid_param("A delegation ends after it starts, within a year"));
        }
        let d = store::Delegation {
            delegation_id: format!("D-{}", crate::random_string(10)),
            delegator: delegator.to_string(),
            delegate: delegate.to_string(),
            from_ts,
            until_ts: req.until_ts,
            created_ts: now,
        };
        store::insert_delegation(self.db.pool(), &d).await?;
        tracing::info!(delegation = d.delegation_id, delegator = %delegator, delegate = %delegate, "delegation recorded");
        Ok(DelegationView {
            delegation_id: d.delegation_id,
            delegator: d.delegator,
            delegate: d.delegate,
            from_ts: d.from_ts,
            until_ts: d.until_ts,
        })
    }

    /// A reaction on a circuit's notice: ✅ approves (or signs at the signatory's turn), ❌
    /// refuses; other keys are ignored. A refused decision is the error (the worker posts it).
    pub(super) async fn on_circuit_reaction(&self, user: &UserId, c: &store::Circuit, key: &str) -> Result<()> {
        let decision = match key {
            "✅" | "✔" if c.step as usize >= approvers(c)?.len() => Decision::Sign,
            "✅" | "✔" => Decision::Approve,
            "❌" | "👎" => Decision::Refuse,
            _ => return Ok(()),
        };
        let comment = (decision == Decision::Refuse).then_some("Refusé (réaction ❌)");
        self.decide(user, &c.circuit_id, decision, comment).await.map(|_| ())
    }

    /// A step's notice in the group's correspondence room (a reply to the circuit's notice).
    async fn circuit_notice(&self, c: &store::Circuit, headline: &str) -> Result<String> {
        let draft: Composition = serde_json::from_str(&c.draft).map_err(crate::internal!())?;
        let list = approvers(c)?;
        let next = match c.status.as_str() {
            "pending" if (c.step as usize) < list.len() => {
                format!(
                    "Visa attendu de {} ({}/{}) : ✅ pour viser, ❌ pour refuser.",
                    list[c.step as usize],
                    c.step + 1,
                    list.len()
                )
            }
            "pending" => format!("Signature attendue de {} : ✅ pour signer, ❌ pour refuser.", c.signatory),
            "returned" => format!("Brouillon renvoyé à {}.", c.drafter),
            _ => String::new(),
        };
        let text = format!("{headline}\n{} « {} » ({})\n{next}", draft.kind, draft.subject, c.circuit_id);
        let room = ruma::OwnedRoomId::try_from(c.room_id.as_str()).map_err(crate::internal!())?;
        let reply_to = c.event_id.as_deref().and_then(|e| ruma::OwnedEventId::try_from(e).ok());
        let pdu = self.notice(&room, text.trim_end(), reply_to.as_deref()).await?;
        Ok(pdu.event_id.to_string())
    }
}

fn approvers(c: &store::Circuit) -> Result<Vec<String>> {
    serde_json::from_str(&c.approvers).map_err(crate::internal!())
}

fn view(c: &store::Circuit) -> Result<CircuitView> {
    let list = approvers(c)?;
    let awaiting =
        (c.status == "pending").then(|| list.get(c.step as usize).cloned().unwrap_or_else(|| c.signatory.clone()));
    Ok(CircuitView {
        circuit_id: c.circuit_id.clone(),
        group: c.group_slug.clone(),
        drafter: c.drafter.clone(),
        status: c.status.clone(),
        approvers: list,
        signatory: c.signatory.clone(),
        awaiting,
        draft: serde_json::from_str(&c.draft).map_err(crate::internal!())?,
        decisions: serde_json::from_str(&c.chain).map_err(crate::internal!())?,
        reference: c.reference.clone(),
        event_id: c.event_id.clone(),
    })
}
