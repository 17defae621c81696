//! DR correspondence encrypted end to end with MLS. Each functional group may name a **DR
//! room** (an MLS room classified DR, state `fr.diplomatie.dr_room` in the group's space, set
//! by one of its managers). The author's client (`clients/mls`) signs the whole record with its
//! device key, sends it as an MLS message into the DR room of its own group and of every
//! addressee group, then asks the server to dispatch what it may see: the reference (reserved
//! before), the kind, the sending group and the addressees, with the copies' event ids. The
//! server checks them (the reference reserved by the author for that group, the author's and
//! device's clearance, the addressees cleared for DR, each copy the author's MLS message in the
//! right room) and dispatches as for any correspondence, without posting copies of its own:
//! action items, journal pointers (reference and kind, never subject nor text), deliveries for
//! the audience. Its record holds that metadata only; the signed record travels encrypted.

use diplomatie_policies::Level;
use diplomatie_storage::correspondence as store;
use ruma::{events::StateEventType, OwnedRoomId, RoomId};
use serde_json::json;

use super::{Addressee, Correspondence, Dispatched, EncryptedDispatch, Kind, Plan};
use crate::{accounts::Caller, rooms::PduBuilder, Error, Result};

/// The state event, in a group's space, naming its DR room (`{"room_id"}`).
const DR_ROOM: &str = "fr.diplomatie.dr_room";

impl Correspondence {
    /// The DR room of a group, where its encrypted DR correspondence arrives.
    pub async fn group_dr_room(&self, slug: &str) -> Result<OwnedRoomId> {
        self.dr_room_of(&self.addressee(slug, "origin").await?).await
    }

    async fn dr_room_of(&self, group: &Addressee) -> Result<OwnedRoomId> {
        let named = self.rooms.state_event(&group.space, &StateEventType::from(DR_ROOM), "").await?;
        named
            .and_then(|p| p.content_value().get("room_id").and_then(|r| r.as_str()).map(str::to_owned))
            .and_then(|r| OwnedRoomId::try_from(r).ok())
            .ok_or_else(|| {
                Error::not_found(format!("Group {:?} has no DR room for encrypted correspondence", group.slug))
            })
    }

    /// A manager of the group names its DR room: an MLS room classified DR, which the
    /// manager is in.
    pub async fn set_group_dr_room(&self, caller: &Caller, slug: &str, room_id: &RoomId) -> Result<()> {
        let group = self.addressee(slug, "origin").await?;
        let levels = self.rooms.power_levels(&group.space).await?;
        if self.rooms.user_power(&group.space, &levels, &caller.user_id).await? < crate::names::MANAGER_LEVEL {
            return Err(Error::forbidden("Only a manager of the group names its DR room"));
        }
        self.rooms.known_room(room_id).await?;
        let facts = self.portal.room_facts_now(room_id).await?;
        if !facts.mls || facts.classification != Level::DR {
            return Err(Error::invalid_param("A group's DR room is an MLS room classified DR"));
        }
        if !self.rooms.is_joined(room_id, &caller.user_id).await? {
            return Err(Error::forbidden("You are not joined to that room"));
        }
        let content = json!({ "room_id": room_id });
        self.rooms
            .append_event(
                crate::rooms::Target::Room(&group.space),
                &caller.user_id,
                PduBuilder::state(DR_ROOM, "", content),
                None,
            )
            .await?;
        Ok(())
    }

    /// Dispatches an encrypted DR correspondence whose copies the author's client sent.
    pub async fn send_encrypted_correspondence(&self, caller: &Caller, d: EncryptedDispatch) -> Result<Dispatched> {
        let kind = Kind::parse(&d.kind)
            .filter(|k| k.as_str() == d.kind)
            .ok_or_else(|| Error::invalid_param("The kind is telegram, diplomatic_note or formal_letter".to_owned()))?;
        if d.action.is_empty() && d.information.is_empty() {
            return Err(Error::missing_param("A correspondence has at least one addressee group"));
        }
        self.check_reservation(&d.reference, &d.from, caller.user_id.as_str()).await?;
        let from = self.sender_group(&caller.user_id, Some(&caller.device_id), &d.from, Level::DR).await?;
        let addressees = self.addressees(&d.action, &d.information, Level::DR).await?;
        let mut copies = Vec::new();
        for group in std::iter::once(&from).chain(&addressees) {
            let room = self.dr_room_of(group).await?;
            let event_id = d
                .copies
                .get(&group.slug)
                .ok_or_else(|| Error::missing_param(format!("No copy for group {:?}", group.slug)))?;
            let pdu = self.rooms.get_pdu(event_id).await?;
            let Some(pdu) = pdu.filter(|p| {
                p.room_id == room && p.sender == caller.user_id && p.kind.to_string() == crate::mls::MESSAGE_EVENT
            }) else {
                return Err(Error::invalid_param(format!(
                    "{event_id} is not an MLS message of yours in the DR room of {:?}",
                    group.slug
                )));
            };
            copies.push(store::Delivery {
                reference: d.reference.clone(),
                room_id: room.to_string(),
                event_id: event_id.to_string(),
                stream_ordering: pdu.stream_ordering,
                role: group.role.to_owned(),
                group_slug: group.slug.clone(),
            });
        }
        if copies.len() != d.copies.len() {
            return Err(Error::invalid_param("Copies are given for groups the correspondence does not address"));
        }
        let record = json!({
            "kind": kind.as_str(),
            "reference": d.reference,
            "from": d.from,
            "author": caller.user_id,
            "action": d.action,
            "information": d.information,
            "classification": Level::DR.as_str(),
            "encrypted": "m.mls",
            "signed_at": crate::now_ms(),
        });
        let plan =
            Plan { kind, level: Level::DR, from, addressees, communities: vec![], tags: vec![], copies: Some(copies) };
        self.dispatch(&caller.user_id, None, plan, record).await
    }
}
