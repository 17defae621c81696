//! The portal's organisation in the server: clearances of people and devices, classified
//! rooms, external persons.
//!
//! The decisions themselves are `diplomatie-policies`' pure functions; this module gathers the
//! facts they need (a person's clearance and kind, a room's classification from its state) and
//! enforces them where events are made: [`Clearances::check_portal`] runs in the room writer (as its `EventPolicy`) for
//! every event, whoever makes it (a client's send, invite, join or knock, a join through a
//! restricted space, the server itself), before anything is written.
//!
//! A room's classification is the state event `fr.diplomatie.classification` (`{"level": "NP"}`
//! or `"DR"`; none means NP); a room open to external persons has `fr.diplomatie.externals`
//! with `{"allowed": true}`.

use std::{sync::Arc, sync::Mutex};

use diplomatie_policies::{self as policies, AccountKind, Entry, Level, Person, Room};
use diplomatie_storage::org as store;
use lru::LruCache;
use ruma::events::room::member::MembershipState;
use ruma::{
    events::StateEventType, room_version_rules::RoomVersionRules, state_res::StateMap, DeviceId, OwnedEventId,
    OwnedUserId, RoomId, UserId,
};
use serde_json::Value;

use crate::{
    core::Core,
    now_ms,
    rooms::{find_pdu, power_of, EventPolicy, Rooms},
    Error, Pdu, Result,
};

pub use crate::names::{CLASSIFICATION, EXTERNALS, MANAGER_LEVEL};

/// The portal's rules over events: people as the rules see them (cached), and the checks the
/// room writer runs for every event (its [`EventPolicy`]). Below the rooms: the writer hands
/// itself to the checks, which read the state through it.
pub struct Clearances {
    core: Arc<Core>,
    pub(crate) people: Mutex<LruCache<OwnedUserId, Person>>,
    /// The server's own account, once it exists (see `Organisation::system_user`).
    pub(crate) system: std::sync::OnceLock<OwnedUserId>,
}

crate::core::over_core!(Clearances);

impl Clearances {
    pub(crate) fn new(core: Arc<Core>) -> Arc<Clearances> {
        Arc::new(Clearances { core, people: Mutex::new(crate::lru(65536)), system: std::sync::OnceLock::new() })
    }
}

/// The portal's organisation of rooms and people: classified rooms, clearances of people and
/// devices as administrators and managers set them. Above the rooms.
pub struct Portal {
    rooms: Arc<Rooms>,
    pub clearances: Arc<Clearances>,
}

impl std::ops::Deref for Portal {
    type Target = Clearances;
    fn deref(&self) -> &Clearances {
        &self.clearances
    }
}

impl Portal {
    pub(crate) fn new(rooms: Arc<Rooms>, clearances: Arc<Clearances>) -> Portal {
        Portal { rooms, clearances }
    }
}

impl EventPolicy for Clearances {
    fn check<'a>(
        &'a self,
        rooms: &'a Rooms,
        state: &'a StateMap<OwnedEventId>,
        appended: &'a [Arc<Pdu>],
        pdu: &'a Pdu,
        rules: &'a RoomVersionRules,
    ) -> crate::rooms::Checking<'a> {
        Box::pin(self.check_portal(rooms, state, appended, pdu, rules))
    }
}

/// A refusal of the rules, as the client sees it.
pub(crate) use crate::error::forbidden;

impl Clearances {
    /// A person's clearance and kind. Users of other servers are agents, cleared DR only when
    /// their server is on the DR allow-list.
    pub async fn person(&self, user: &UserId) -> Result<Person> {
        if user.server_name() != self.server_name() {
            let listed = self.config.portal.dr_federation_allowlist.iter().any(|s| s == user.server_name().as_str());
            return Ok(Person { clearance: if listed { Level::DR } else { Level::NP }, kind: AccountKind::Agent });
        }
        if let Some(p) = self.people.lock().unwrap().get(user) {
            return Ok(*p);
        }
        let person = match store::attributes(self.db.pool(), user.as_str()).await? {
            Some(a) => Person {
                clearance: Level::parse(&a.clearance).unwrap_or_default(),
                kind: AccountKind::parse(&a.kind).unwrap_or_default(),
            },
            None => Person::default(),
        };
        self.people.lock().unwrap().put(user.to_owned(), person);
        Ok(person)
    }

    /// What the rules need to know of a room, from its state.
    pub(crate) async fn room_facts(
        &self,
        rooms: &Rooms,
        state: &StateMap<OwnedEventId>,
        appended: &[Arc<Pdu>],
    ) -> Result<Room> {
        let event = |kind: &str| state.get(&(StateEventType::from(kind), String::new())).cloned();
        let mut room = Room::default();
        if let Some(id) = event(CLASSIFICATION) {
            if let Some(p) = find_pdu(rooms, appended, &id).await? {
                room.classification = classification_of(&p).unwrap_or_default();
            }
        }
        if let Some(id) = event(EXTERNALS) {
            if let Some(p) = find_pdu(rooms, appended, &id).await? {
                room.externals = p.content_field("allowed").and_then(|v| v.as_bool()).unwrap_or(false);
            }
        }
        room.encrypted = event("m.room.encryption").is_some();
        room.mls = event(diplomatie_mls::MODE_EVENT).is_some();
        Ok(room)
    }

    /// The rules, for one event about to be appended on top of `state`.
    pub(crate) async fn check_portal(
        &self,
        rooms: &Rooms,
        state: &StateMap<OwnedEventId>,
        appended: &[Arc<Pdu>],
        pdu: &Pdu,
        rules: &RoomVersionRules,
    ) -> Result<()> {
        let creators = rules.authorization.explicitly_privilege_room_creators;
        let kind = pdu.kind.to_string();
        let Some(state_key) = pdu.state_key.as_deref() else {
            // A crisis cell's main courante keeps every entry as written.
            let edit = pdu.content.get().contains("m.replace")
                && pdu.content_value()["m.relates_to"]["rel_type"].as_str() == Some("m.replace");
            if kind == "m.room.redaction" || edit {
                if let Some(id) = state.get(&(StateEventType::from(crate::names::CRISIS_CELL), String::new())) {
                    let role = find_pdu(rooms, appended, id).await?.map(|p| p.content_value()["role"].clone());
                    if role.as_ref().and_then(Value::as_str) == Some("log") {
                        return Err(Error::forbidden(
                            "The main courante keeps every entry as written: no edits nor redactions",
                        ));
                    }
                }
            }
            // A message: what a DR room accepts (the device is checked where it is known).
            let room = self.room_facts(rooms, state, appended).await?;
            // A sealed correspondence the server posts goes by its own classification.
            if Some(&pdu.sender) == self.system.get() && kind == "m.room.message" {
                let content = pdu.content_value();
                if content.get("msgtype").and_then(Value::as_str) == Some(crate::names::MSGTYPE) {
                    let record = match content.get(crate::names::MSGTYPE) {
                        Some(r) => r,
                        None => &content["m.new_content"][crate::names::MSGTYPE],
                    };
                    let level = record["classification"].as_str().and_then(Level::parse).unwrap_or(Level::DR);
                    return policies::may_post_record(room, level).map_err(forbidden);
                }
            }
            return policies::may_send(room, &kind, true, false).map_err(forbidden);
        };
        match kind.as_str() {
            "m.room.member" => {
                let entry = match pdu.membership() {
                    Some(MembershipState::Invite) => Entry::Invite,
                    Some(MembershipState::Knock) => Entry::Knock,
                    Some(MembershipState::Join) => Entry::Join,
                    _ => return Ok(()),
                };
                let Ok(target) = UserId::parse(state_key) else { return Ok(()) };
                // A member changing their profile is not coming in.
                let key = (StateEventType::RoomMember, state_key.to_owned());
                if entry == Entry::Join {
                    if let Some(id) = state.get(&key) {
                        let current = find_pdu(rooms, appended, id).await?;
                        if current.and_then(|p| p.membership()) == Some(MembershipState::Join) {
                            return Ok(());
                        }
                    }
                }
                let room = self.room_facts(rooms, state, appended).await?;
                policies::may_enter(self.person(&target).await?, room, entry).map_err(forbidden)
            }
            CLASSIFICATION => {
                let new = classification_of(pdu)
                    .ok_or_else(|| Error::bad_json("The classification's level must be \"NP\" or \"DR\""))?;
                let mut room = self.room_facts(rooms, state, appended).await?;
                room.has_content = appended.iter().any(|p| p.room_id == pdu.room_id && p.state_key.is_none())
                    || store::room_has_messages(self.db.pool(), pdu.room_id.as_str()).await?;
                let manager =
                    self.power_in_state(rooms, state, appended, &pdu.sender, creators).await? >= MANAGER_LEVEL;
                policies::may_classify(room, new, manager, self.core.config.portal.dr_rooms_mls).map_err(forbidden)?;
                if new == Level::DR && room.classification != Level::DR {
                    // Everyone already in (or invited, or knocking) must be cleared.
                    for ((kind, key), id) in state.iter() {
                        if *kind != StateEventType::RoomMember {
                            continue;
                        }
                        let Some(member) = find_pdu(rooms, appended, id).await? else { continue };
                        let entry = match member.membership() {
                            Some(MembershipState::Join) => Entry::Join,
                            Some(MembershipState::Invite) => Entry::Invite,
                            Some(MembershipState::Knock) => Entry::Knock,
                            _ => continue,
                        };
                        let Ok(user) = UserId::parse(key.as_str()) else { continue };
                        let cleared = Room { classification: Level::DR, ..room };
                        if policies::may_enter(self.person(&user).await?, cleared, entry).is_err() {
                            return Err(Error::forbidden(format!(
                                "{user} has no DR clearance: the room cannot be classified DR while they are in it"
                            )));
                        }
                    }
                }
                Ok(())
            }
            EXTERNALS => {
                let allowed = pdu.content_field("allowed").and_then(|v| v.as_bool()).unwrap_or(false);
                if !allowed {
                    return Ok(());
                }
                let room = self.room_facts(rooms, state, appended).await?;
                let manager =
                    self.power_in_state(rooms, state, appended, &pdu.sender, creators).await? >= MANAGER_LEVEL;
                policies::may_open_to_externals(room, manager).map_err(forbidden)
            }
            _ => Ok(()),
        }
    }

    /// A user's power level in a room's state (creators of v12 rooms above every level).
    async fn power_in_state(
        &self,
        rooms: &Rooms,
        state: &StateMap<OwnedEventId>,
        appended: &[Arc<Pdu>],
        user: &UserId,
        creators_privileged: bool,
    ) -> Result<i64> {
        let get = |kind: StateEventType| state.get(&(kind, String::new())).cloned();
        let create = match get(StateEventType::RoomCreate) {
            Some(id) => find_pdu(rooms, appended, &id).await?,
            None => None,
        };
        let levels = match get(StateEventType::RoomPowerLevels) {
            Some(id) => find_pdu(rooms, appended, &id).await?.map(|p| p.content_value()),
            None => None,
        };
        let levels = levels.as_ref().and_then(Value::as_object);
        Ok(power_of(create.as_deref(), levels, user, creators_privileged))
    }

    /// Whether a device is approved for DR content.
    pub async fn device_is_dr(&self, user: &UserId, device: &DeviceId) -> Result<bool> {
        Ok(store::device_flag(self.db.pool(), user.as_str(), device.as_str()).await?.is_some_and(|(dr, _, _)| dr))
    }
}

impl Portal {
    /// May `room_id` be shared with `server` (invites, joins and events across servers)? DR
    /// rooms only with servers on the DR allow-list of the configuration.
    pub async fn check_federation(&self, room_id: &RoomId, server: &ruma::ServerName) -> Result<()> {
        let listed = self.config.portal.dr_federation_allowlist.iter().any(|s| s == server.as_str());
        policies::may_federate(self.room_facts_now(room_id).await?, listed).map_err(forbidden)
    }

    /// A room's facts from its current state.
    pub async fn room_facts_now(&self, room_id: &RoomId) -> Result<Room> {
        let state = self.rooms.current_state(room_id).await?;
        self.room_facts(&self.rooms, &state, &[]).await
    }

    /// Before a client's message goes into a room: the device's DR flag, for DR rooms.
    pub(crate) async fn check_device_for_send(&self, user: &UserId, device: &DeviceId, room_id: &RoomId) -> Result<()> {
        if !self.config.portal.dr_requires_approved_device {
            return Ok(());
        }
        let room = self.room_facts_now(room_id).await?;
        if room.classification != Level::DR {
            return Ok(());
        }
        let dr = self.device_is_dr(user, device).await?;
        // The type is checked with the event; here only the device.
        policies::may_send(room, "m.room.encrypted", dr, true).map_err(forbidden)
    }

    /// Whether `actor` may set `target`'s clearance (or their devices' flags) to `level`;
    /// `raises` when that is more than the target has (a clearance raised, a device approved).
    pub(crate) async fn may_set_clearance(
        &self,
        actor: &UserId,
        actor_admin: bool,
        target: &UserId,
        level: Level,
        raises: bool,
    ) -> Result<()> {
        let person = self.person(target).await?;
        let mut manages = false;
        if !actor_admin && self.config.portal.delegate_clearance_to_managers {
            let group = store::attributes(self.db.pool(), target.as_str()).await?.and_then(|a| a.primary_group);
            if let Some(group) = group.and_then(|g| ruma::OwnedRoomId::try_from(g).ok()) {
                if let Some(meta) = self.rooms.room_meta(&group).await? {
                    let creators = meta.rules().authorization.explicitly_privilege_room_creators;
                    let state = self.rooms.current_state(&group).await?;
                    manages = self.power_in_state(&self.rooms, &state, &[], actor, creators).await? >= MANAGER_LEVEL;
                }
            }
        }
        let delegated = self.config.portal.delegate_clearance_to_managers;
        let actor = policies::Actor { admin: actor_admin, manages_primary_group: manages, is_target: actor == target };
        policies::may_set_clearance(actor, delegated, person, level, raises).map_err(forbidden)
    }

    /// Sets or clears the DR flag of one of a local user's devices.
    pub async fn set_device_clearance(
        &self,
        actor: &UserId,
        actor_admin: bool,
        target: &UserId,
        device: &DeviceId,
        dr: bool,
    ) -> Result<()> {
        self.local_account(target).await?;
        let level = if dr { Level::DR } else { Level::NP };
        self.may_set_clearance(actor, actor_admin, target, level, dr).await?;
        if dr {
            policies::may_approve_device(self.person(target).await?).map_err(forbidden)?;
        }
        let mut tx = self.db.begin().await?;
        if !store::set_device_flag(&mut tx, target.as_str(), device.as_str(), dr, actor.as_str(), now_ms()).await? {
            return Err(Error::not_found("Unknown device"));
        }
        diplomatie_storage::commit(tx).await?;
        Ok(())
    }

    /// Sets (or clears) a local user's primary functional group (the group's space).
    pub async fn set_primary_group(&self, target: &UserId, group: Option<&RoomId>) -> Result<()> {
        self.local_account(target).await?;
        if let Some(g) = group {
            self.rooms.known_room(g).await?;
        }
        store::set_primary_group(self.db.pool(), target.as_str(), group.map(|g| g.as_str())).await?;
        Ok(())
    }

    /// What administrators see of a user's clearance: level, kind, primary group, who set the
    /// clearance and when, and the history of changes (devices included).
    pub async fn clearance_report(&self, target: &UserId) -> Result<ClearanceReport> {
        self.local_account(target).await?;
        let a = store::attributes(self.db.pool(), target.as_str())
            .await?
            .ok_or_else(crate::internal!("a value present by construction"))?;
        let log = store::clearance_log(self.db.pool(), target.as_str())
            .await?
            .into_iter()
            .map(|(device, level, set_by, set_ts)| ClearanceChange {
                device_id: Some(device).filter(|d| !d.is_empty()),
                level,
                set_by,
                set_ts,
            })
            .collect();
        Ok(ClearanceReport {
            user_id: target.to_owned(),
            clearance: a.clearance,
            kind: a.kind,
            primary_group: a.primary_group,
            set_by: a.clearance_set_by,
            set_ts: a.clearance_set_ts,
            log,
        })
    }

    /// A device's DR flag, who set it and when.
    pub async fn device_clearance_report(&self, target: &UserId, device: &DeviceId) -> Result<DeviceClearanceReport> {
        let (dr, set_by, set_ts) = store::device_flag(self.db.pool(), target.as_str(), device.as_str())
            .await?
            .ok_or_else(|| Error::not_found("Unknown device"))?;
        Ok(DeviceClearanceReport { user_id: target.to_owned(), device_id: device.to_owned(), dr, set_by, set_ts })
    }

    pub(crate) async fn local_account(&self, user: &UserId) -> Result<()> {
        if user.server_name() != self.server_name()
            || !diplomatie_storage::accounts::user_exists(self.db.pool(), user.as_str()).await?
        {
            return Err(Error::not_found("Unknown user"));
        }
        Ok(())
    }

    /// Whether a room may be listed (public directory, search by non-members).
    pub async fn room_may_be_listed(&self, room_id: &RoomId) -> Result<bool> {
        Ok(policies::may_be_listed(self.room_facts_now(room_id).await?))
    }
}

/// A user's clearance, account kind and primary group, with the history of their clearance
/// and device flags (the admin API's answer).
#[derive(Debug, serde::Serialize)]
pub struct ClearanceReport {
    pub user_id: OwnedUserId,
    pub clearance: String,
    pub kind: String,
    pub primary_group: Option<String>,
    pub set_by: Option<String>,
    pub set_ts: Option<i64>,
    pub log: Vec<ClearanceChange>,
}

/// One change of a user's clearance (no device) or of a device's DR flag.
#[derive(Debug, serde::Serialize)]
pub struct ClearanceChange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub level: String,
    pub set_by: String,
    pub set_ts: i64,
}

/// A device's DR flag, who set it and when.
#[derive(Debug, serde::Serialize)]
pub struct DeviceClearanceReport {
    pub user_id: OwnedUserId,
    pub device_id: ruma::OwnedDeviceId,
    pub dr: bool,
    pub set_by: Option<String>,
    pub set_ts: Option<i64>,
}

/// The level of a classification event.
fn classification_of(pdu: &Pdu) -> Option<Level> {
    pdu.content_field("level").and_then(|v| v.as_str().and_then(Level::parse))
}
