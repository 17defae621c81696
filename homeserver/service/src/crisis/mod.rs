//! Crisis cells: interministerial task forces in a space of their own.
//!
//! A cell is activated in one step (the portal's API, or `!crise <nom>` in any room from any
//! client): the service account creates a space and the rooms of a template (`crisis` in the
//! configuration; `standard` built in), the coordinator at power 100 and the focal points at
//! 50, and invites the members (from other servers over federation too), experts (externals)
//! only where a room allows them, DR rooms only to the DR-cleared. The service account is the
//! rooms' creator (room version 12), above every level, so that it alone can stand the cell
//! down.
//!
//! - **Alert** (`fr.diplomatie.crisis.alert`, power 100 in the cell's rooms, so every server's
//!   auth rules keep it to the coordinator): the push rule `.fr.diplomatie.crisis.alert`
//!   comes first of every user's rules and cannot be changed, so it notifies loudly even in
//!   muted rooms, where the room is an active cell (`push.rs` checks); the alert names the
//!   members with no device seen for `crisis.unreached_after_ms`, whom the e-mail bridge mails.
//! - **Log** (main courante): each message in the log room becomes a numbered entry, sealed
//!   with its author's key like a correspondence (or, for a member of another server, the
//!   service account's); the portal refuses edits and redactions there; the whole log exports
//!   as one document that `diplomatie verify` checks offline.
//! - **Situation report**: a state event of the situation room (power 50: focal points),
//!   pinned as a message, every version kept.
//! - **Stand-down**: the log is closed (a record listing every entry's digest, signed by the
//!   coordinator), every room becomes read-only, and the cell is handed to archiving with its
//!   retention: its SEDA 2.3 transfer (`handover.rs`) is written to the archive directory.

mod handover;
pub mod worker;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, OnceLock},
};

use diplomatie_policies::{AccountKind, Level};
use diplomatie_storage::crisis::{self as store, Cell, CellRoom};
use futures::StreamExt as _;
use ruma::{
    api::client::room::{create_room::v3::Request as CreateRoomRequest, Visibility},
    events::{room::member::MembershipState, StateEventType},
    room::RoomType,
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    accounts::Accounts,
    archive::Archive,
    config::{CrisisRoom, CrisisTemplate},
    core::Core,
    correspondence::{record_digest, Correspondence, Export},
    names::{CLASSIFICATION, CRISIS_ALERT, CRISIS_CELL, CRISIS_SITREP, EXTERNALS},
    organisation::{raw, Organisation},
    portal::Portal,
    rooms::{membership::Membership, timeline::Timeline, PduBuilder, Rooms, Target},
    Error, Pdu, Result,
};

/// The power level of focal points.
pub const FOCAL_POINT_LEVEL: i64 = 50;
/// Invitations sent at once at activation.
const PARALLEL_INVITES: usize = 32;
/// The level every action needs in a stood-down cell: above everyone but the rooms' creator.
const READ_ONLY_LEVEL: i64 = 1000;

/// What activates a cell.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activation {
    pub name: String,
    #[serde(default)]
    pub template: Option<String>,
    /// One per ministry (power 50): they update the situation report.
    #[serde(default)]
    pub focal_points: Vec<OwnedUserId>,
    #[serde(default)]
    pub members: Vec<OwnedUserId>,
    /// Outside experts: externals, invited only to the rooms that allow them.
    #[serde(default)]
    pub experts: Vec<OwnedUserId>,
}

/// What an activation made.
#[derive(Clone, Debug, Serialize)]
pub struct Activated {
    pub cell_id: OwnedRoomId,
    pub slug: String,
    pub rooms: BTreeMap<String, OwnedRoomId>,
    /// Invitations sent.
    pub invited: usize,
    /// Who was not invited where, and why (`user`, `room`, `reason`).
    pub skipped: Vec<Value>,
}

/// A cell as clients read it.
#[derive(Clone, Debug, Serialize)]
pub struct CellInfo {
    pub cell_id: String,
    pub slug: String,
    pub name: String,
    pub template: String,
    pub coordinator: String,
    pub status: String,
    pub created_ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stood_down_ts: Option<i64>,
    pub retention: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_status: Option<String>,
    pub rooms: BTreeMap<String, String>,
}

/// A version of the situation report.
#[derive(Clone, Debug, Serialize)]
pub struct Sitrep {
    pub version: i64,
    pub author: String,
    pub body: String,
    pub event_id: String,
    pub ts: i64,
}

pub struct Crisis {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    accounts: Arc<Accounts>,
    portal: Arc<Portal>,
    membership: Arc<Membership>,
    timeline: Arc<Timeline>,
    organisation: Arc<Organisation>,
    correspondence: Arc<Correspondence>,
    archive: Arc<Archive>,
    /// Which rooms are a cell's (and which cell, which role): read on the commit path.
    known: Mutex<HashMap<OwnedRoomId, Option<(String, String)>>>,
    queue: OnceLock<tokio::sync::mpsc::UnboundedSender<Arc<Pdu>>>,
}

crate::core::over_core!(Crisis);

/// A slug for aliases and references: lowercase letters, digits and dashes.
fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'à' | 'â' | 'ä' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'î' | 'ï' => 'i',
            'ô' | 'ö' => 'o',
            'ù' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            c if c.is_ascii_alphanumeric() => c,
            _ => '-',
        };
        if c != '-' || !slug.ends_with('-') {
            slug.push(c);
        }
    }
    let slug: String = slug.trim_matches('-').chars().take(40).collect();
    let slug = slug.trim_end_matches('-').to_owned();
    if slug.is_empty() {
        "cellule".into()
    } else {
        slug
    }
}

impl Crisis {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        accounts: Arc<Accounts>,
        portal: Arc<Portal>,
        membership: Arc<Membership>,
        timeline: Arc<Timeline>,
        organisation: Arc<Organisation>,
        correspondence: Arc<Correspondence>,
        archive: Arc<Archive>,
    ) -> Crisis {
        Crisis {
            core,
            rooms,
            accounts,
            portal,
            membership,
            timeline,
            organisation,
            correspondence,
            archive,
            known: Mutex::new(HashMap::new()),
            queue: OnceLock::new(),
        }
    }

    /// Activates a cell with `coordinator` at its head.
    pub async fn activate(&self, coordinator: &UserId, a: Activation) -> Result<Activated> {
        if coordinator.server_name() != self.server_name()
            || self.portal.person(coordinator).await?.kind != AccountKind::Agent
        {
            return Err(Error::forbidden("Only an agent of this server activates a crisis cell"));
        }
        if self.config.crisis.activation == "admins" && !self.accounts.is_admin(coordinator).await? {
            return Err(Error::forbidden("Only administrators activate crisis cells on this server"));
        }
        let name = a.name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(Error::invalid_param("A cell has a name (200 characters at most)"));
        }
        let template_id = a.template.clone().unwrap_or_else(|| self.config.crisis.default_template.clone());
        let template = self
            .config
            .crisis
            .template(&template_id)
            .ok_or_else(|| Error::invalid_param(format!("Unknown crisis template {template_id}")))?;
        check_template(&template)?;
        // Everyone named is checked before anything is made.
        let mut people: Vec<(OwnedUserId, i64, bool)> = Vec::new();
        for (users, level, expert) in
            [(&a.focal_points, FOCAL_POINT_LEVEL, false), (&a.members, 0, false), (&a.experts, 0, true)]
        {
            for u in users {
                if u == coordinator || people.iter().any(|(p, _, _)| p == u) {
                    continue;
                }
                if u.server_name() == self.server_name() && !self.accounts.is_active(u).await? {
                    return Err(Error::not_found(format!("Unknown user {u}")));
                }
                people.push((u.clone(), level, expert));
            }
        }
        let mut slug = slugify(name);
        if store::slug_taken(self.db.pool(), &slug).await? {
            let mut n = 2;
            while store::slug_taken(self.db.pool(), &format!("{slug}-{n}")).await? {
                n += 1;
            }
            slug = format!("{slug}-{n}");
        }
        let system = self.organisation.system_user().await?;
        let mut users = serde_json::Map::new();
        users.insert(coordinator.to_string(), json!(crate::names::MANAGER_LEVEL));
        for (u, level, _) in &people {
            if *level > 0 {
                users.insert(u.to_string(), json!(level));
            }
        }
        let powers = json!({
            "users": users,
            "invite": FOCAL_POINT_LEVEL,
            "kick": 100,
            "ban": 100,
            "redact": 100,
            "events": {
                CRISIS_ALERT: 100, CRISIS_SITREP: FOCAL_POINT_LEVEL, CRISIS_CELL: READ_ONLY_LEVEL,
                CLASSIFICATION: 100, EXTERNALS: 100, "m.room.power_levels": 100, "m.space.child": 100,
                "m.room.pinned_events": FOCAL_POINT_LEVEL, "m.room.name": 100, "m.room.topic": FOCAL_POINT_LEVEL,
                "org.matrix.msc3401.call.member": 0, "m.call.member": 0, "m.rtc.member": 0
            },
        });
        let any_externals = template.rooms.iter().any(|r| r.externals);
        let marker = |role: &str, key: &str, cell: Option<&RoomId>| {
            json!({ "slug": slug, "name": name, "role": role, "key": key, "cell": cell,
                    "status": "active", "coordinator": coordinator })
        };

        // The space.
        let mut initial = vec![
            json!({ "type": CLASSIFICATION, "state_key": "", "content": { "level": "NP" } }),
            json!({ "type": CRISIS_CELL, "state_key": "", "content": marker("space", "", None) }),
        ];
        if any_externals {
            initial.push(json!({ "type": EXTERNALS, "state_key": "", "content": { "allowed": true } }));
        }
        let mut req = CreateRoomRequest::new();
        req.creation_content = Some(raw(json!({ "type": RoomType::Space }))?);
        req.name = Some(format!("Cellule de crise — {name}"));
        req.topic = Some(format!("Activée par {coordinator}"));
        req.preset = Some(ruma::api::client::room::create_room::v3::RoomPreset::PrivateChat);
        req.visibility = Visibility::Private;
        req.room_version = Some(ruma::RoomVersionId::V12);
        req.room_alias_name = Some(format!("x.{slug}"));
        req.power_level_content_override = Some(raw(powers.clone())?);
        req.initial_state = initial.into_iter().map(raw).collect::<Result<_>>()?;
        req.invite = vec![coordinator.to_owned()];
        let space = self.membership.create_room(&system, req).await?;
        self.membership.join(coordinator, &space, None).await?;

        let mut rooms = vec![CellRoom { room_id: space.to_string(), key: String::new(), role: "space".into() }];
        let mut by_key = BTreeMap::new();
        for (i, r) in template.rooms.iter().enumerate() {
            let mut initial = vec![
                json!({ "type": CLASSIFICATION, "state_key": "", "content": { "level": r.classification } }),
                json!({ "type": CRISIS_CELL, "state_key": "", "content": marker(&r.role, &r.key, Some(&space)) }),
                json!({ "type": "m.space.parent", "state_key": space, "content": { "via": [self.server_name()], "canonical": true } }),
            ];
            if r.externals {
                initial.push(json!({ "type": EXTERNALS, "state_key": "", "content": { "allowed": true } }));
            }
            let mut req = CreateRoomRequest::new();
            req.name = Some(format!("{name} — {}", r.name));
            req.topic = (!r.topic.is_empty()).then(|| r.topic.clone());
            req.preset = Some(ruma::api::client::room::create_room::v3::RoomPreset::PrivateChat);
            req.visibility = Visibility::Private;
            req.room_version = Some(ruma::RoomVersionId::V12);
            req.room_alias_name = Some(format!("x.{slug}.{}", r.key));
            req.power_level_content_override = Some(raw(powers.clone())?);
            req.initial_state = initial.into_iter().map(raw).collect::<Result<_>>()?;
            req.invite = vec![coordinator.to_owned()];
            let room = self.membership.create_room(&system, req).await?;
            let child = json!({ "via": [self.server_name()], "suggested": true, "order": format!("{:02}", i + 1) });
            self.timeline.send_state(&system, &space, "m.space.child", room.as_str(), child).await?;
            self.membership.join(coordinator, &room, None).await?;
            rooms.push(CellRoom { room_id: room.to_string(), key: r.key.clone(), role: r.role.clone() });
            by_key.insert(r.key.clone(), room);
        }

        let cell = Cell {
            cell_id: space.to_string(),
            slug: slug.clone(),
            name: name.to_owned(),
            template: template.id.clone(),
            coordinator: coordinator.to_string(),
            status: "active".into(),
            created_ts: crate::now_ms(),
            stood_down_ts: None,
            retention: self.config.crisis.retention.clone(),
            closing_record: None,
            archive_status: None,
        };
        let mut tx = self.db.begin().await?;
        store::insert_cell(&mut tx, &cell, &rooms).await?;
        diplomatie_storage::commit(tx).await?;
        self.known.lock().unwrap().clear();

        // The invitations: the space, then each room the person may enter.
        // Who goes where, then the invitations, many at a time: an invitation to another
        // server waits for its answer (it signs the event), and local ones share the writer's
        // group commits.
        let mut skipped = Vec::new();
        let mut invitations: Vec<(OwnedUserId, String, OwnedRoomId)> = Vec::new();
        for (user, _, expert) in &people {
            let person = self.portal.person(user).await?;
            let external = *expert || person.kind == AccountKind::External;
            let mut targets: Vec<(&str, OwnedRoomId, Option<&CrisisRoom>)> = vec![("", space.clone(), None)];
            for r in &template.rooms {
                targets.push((&r.key, by_key[&r.key].clone(), Some(r)));
            }
            for (key, room, spec) in targets {
                if let Some(spec) = spec {
                    if external && !spec.externals {
                        continue;
                    }
                    if spec.classification == "DR" && person.clearance != Level::DR {
                        skipped.push(json!({ "user": user, "room": key, "reason": "not cleared DR" }));
                        continue;
                    }
                } else if external && !any_externals {
                    continue;
                }
                invitations.push((user.clone(), key.to_owned(), room));
            }
        }
        let outcomes: Vec<(OwnedUserId, String, Result<()>)> = futures::stream::iter(invitations)
            .map(|(user, key, room)| {
                let system = system.clone();
                async move {
                    let outcome = self.membership.invite(&system, &room, &user, None, false).await;
                    (user, key, outcome)
                }
            })
            .buffer_unordered(PARALLEL_INVITES)
            .collect()
            .await;
        let mut invited = 0;
        for (user, key, outcome) in outcomes {
            match outcome {
                Ok(()) => invited += 1,
                Err(Error::Matrix(_, reason)) => skipped.push(json!({ "user": user, "room": key, "reason": reason })),
                Err(e) => return Err(e),
            }
        }
        // The e-mail bridge mails alerts to members no device of theirs has been seen for: its
        // bot is invited into the situation room (NP: a DR room is never bridged).
        let situation_np = template.rooms.iter().any(|r| r.role == "situation" && r.classification == "NP");
        if let (Some(situation), true) = (self.room_with_role(&rooms, "situation"), situation_np) {
            for service in self.registrations.all().iter().filter(|s| s.protocols().iter().any(|p| p == "email")) {
                if let Err(e) = self.membership.invite(&system, &situation, &service.sender, None, false).await {
                    tracing::warn!(bridge = %service.sender, error = ?e, "the e-mail bridge could not be invited");
                }
            }
        }
        if let Some(situation) = self.room_with_role(&rooms, "situation") {
            let text = format!(
                "Cellule de crise « {name} » activée par {coordinator}. Commandes : !alerte <texte> (coordinateur), \
                 !point <texte> (points focaux), !fin-de-crise (coordinateur). Chaque message du salon de main \
                 courante est scellé."
            );
            self.notice(&situation, &text, None).await?;
        }
        tracing::info!(cell = %space, slug, invited, "crisis cell activated");
        Ok(Activated { cell_id: space, slug, rooms: by_key, invited, skipped })
    }

    fn room_with_role(&self, rooms: &[CellRoom], role: &str) -> Option<OwnedRoomId> {
        rooms.iter().find(|r| r.role == role).and_then(|r| OwnedRoomId::try_from(r.room_id.as_str()).ok())
    }

    /// A cell by its space's id (or any of its rooms' ids).
    async fn cell(&self, id: &RoomId) -> Result<(Cell, Vec<CellRoom>)> {
        let cell_id = match store::room(self.db.pool(), id.as_str()).await? {
            Some((cell, _)) => cell,
            None => return Err(Error::not_found("Not a crisis cell")),
        };
        let cell =
            store::cell_by_id(self.db.pool(), &cell_id).await?.ok_or_else(|| Error::not_found("Not a crisis cell"))?;
        let rooms = store::rooms(self.db.pool(), &cell_id).await?;
        Ok((cell, rooms))
    }

    /// A cell, for a member of it (or an administrator).
    pub async fn info(&self, user: &UserId, id: &RoomId) -> Result<CellInfo> {
        let (cell, rooms) = self.cell(id).await?;
        self.check_member(user, &cell).await?;
        Ok(CellInfo {
            rooms: rooms.iter().filter(|r| r.role != "space").map(|r| (r.key.clone(), r.room_id.clone())).collect(),
            cell_id: cell.cell_id,
            slug: cell.slug,
            name: cell.name,
            template: cell.template,
            coordinator: cell.coordinator,
            status: cell.status,
            created_ts: cell.created_ts,
            stood_down_ts: cell.stood_down_ts,
            retention: cell.retention,
            archive_status: cell.archive_status,
        })
    }

    async fn check_member(&self, user: &UserId, cell: &Cell) -> Result<()> {
        let space = OwnedRoomId::try_from(cell.cell_id.as_str()).map_err(crate::internal!())?;
        if self.rooms.is_joined(&space, user).await? || self.accounts.is_admin(user).await? {
            return Ok(());
        }
        Err(Error::not_found("Not a crisis cell"))
    }

    async fn check_active(cell: &Cell) -> Result<()> {
        if cell.status != "active" {
            return Err(Error::forbidden("The crisis cell was stood down"));
        }
        Ok(())
    }

    async fn power(&self, room: &RoomId, user: &UserId) -> Result<i64> {
        let levels = self.rooms.power_levels(room).await?;
        self.rooms.user_power(room, &levels, user).await
    }

    /// An active cell's situation room, for a sender with at least `level` there.
    async fn situation_for(
        &self,
        id: &RoomId,
        sender: &UserId,
        level: i64,
        refusal: &str,
    ) -> Result<(Cell, OwnedRoomId)> {
        let (cell, rooms) = self.cell(id).await?;
        Self::check_active(&cell).await?;
        let situation = self
            .room_with_role(&rooms, "situation")
            .ok_or_else(|| Error::not_found("The cell has no situation room"))?;
        if self.power(&situation, sender).await? < level {
            return Err(Error::forbidden(refusal));
        }
        Ok((cell, situation))
    }

    /// Sends an alert into the cell's situation room, as its coordinator.
    pub async fn alert(&self, sender: &UserId, id: &RoomId, body: &str) -> Result<OwnedEventId> {
        let (cell, situation) = self.situation_for(id, sender, 100, "Only the coordinator sends alerts").await?;
        let body = non_empty(body, "An alert has a text")?;
        let unreached = self.unreached(&situation).await?;
        let content = json!({
            "body": format!("🚨 ALERTE — {} : {body}", cell.name),
            "msgtype": "m.text",
            "text": body,
            "cell": { "cell_id": cell.cell_id, "slug": cell.slug, "name": cell.name },
            "unreached": unreached,
        });
        let pdu = self
            .rooms
            .append_event(Target::Room(&situation), sender, PduBuilder::message(CRISIS_ALERT, content), None)
            .await?;
        Ok(pdu.event_id.clone())
    }

    /// Members of this server (people, not application services), joined or invited, with no
    /// device seen for
    /// `crisis.unreached_after_ms` (or none at all).
    async fn unreached(&self, room: &RoomId) -> Result<Vec<OwnedUserId>> {
        let since = crate::now_ms() - self.config.crisis.unreached_after_ms as i64;
        let system = self.organisation.system_user().await?;
        let mut out = Vec::new();
        let state = self.rooms.current_state(room).await?;
        for (kind, key) in state.keys() {
            if *kind != StateEventType::RoomMember {
                continue;
            }
            let Ok(user) = OwnedUserId::try_from(key.as_str()) else { continue };
            // Application services' users (bridges, bots) have no devices to be seen on.
            let service = self.registrations.all().iter().any(|s| s.owns_user(user.as_str()));
            if user == system || user.server_name() != self.server_name() || service {
                continue;
            }
            let membership = self.rooms.membership(room, &user).await?;
            if !matches!(membership, Some(MembershipState::Join | MembershipState::Invite)) {
                continue;
            }
            let devices = self.accounts.devices(&user).await?;
            if !devices.iter().any(|d| d.last_seen_ts.is_some_and(|t| t >= since)) {
                out.push(user);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The e-mail addresses of the members an alert names as unreached, for an e-mail bridge
    /// (an application service of the `email` protocol) or an administrator.
    pub async fn alert_recipients(
        &self,
        caller: &crate::accounts::Caller,
        id: &RoomId,
        alert: &ruma::EventId,
    ) -> Result<Vec<(String, String)>> {
        let bridge = caller.appservice.as_deref().is_some_and(|id| {
            self.registrations.all().iter().any(|s| s.id() == id && s.protocols().iter().any(|p| p == "email"))
        });
        if !bridge && !caller.is_admin {
            return Err(Error::forbidden("Only an e-mail bridge reads where alerts go by mail"));
        }
        let (cell, rooms) = self.cell(id).await?;
        let pdu = self.rooms.get_pdu(alert).await?.ok_or_else(|| Error::not_found("No such alert"))?;
        if pdu.kind.to_string() != CRISIS_ALERT || !rooms.iter().any(|r| r.room_id == pdu.room_id.as_str()) {
            return Err(Error::not_found(format!("No such alert in {}", cell.cell_id)));
        }
        let mut out = Vec::new();
        for user in pdu.content_value()["unreached"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            for t in diplomatie_storage::threepids::list(self.db.pool(), user).await? {
                if t.medium == "email" {
                    out.push((user.to_owned(), t.address));
                }
            }
        }
        Ok(out)
    }

    /// Publishes a new situation report: its state event, pinned as a message.
    pub async fn set_sitrep(&self, sender: &UserId, id: &RoomId, body: &str) -> Result<Sitrep> {
        let refusal = "Only focal points and the coordinator update the situation report";
        let (cell, situation) = self.situation_for(id, sender, FOCAL_POINT_LEVEL, refusal).await?;
        let body = non_empty(body, "A situation report has a text")?;
        let now = crate::now_ms();
        let message = json!({ "msgtype": "m.text", "body": format!("📌 Point de situation — {body}") });
        let shown = self
            .rooms
            .append_event(Target::Room(&situation), sender, PduBuilder::message("m.room.message", message), None)
            .await?
            .event_id
            .clone();
        let mut tx = self.db.begin_write().await?;
        let version = store::add_sitrep(&mut tx, &cell.cell_id, sender.as_str(), body, shown.as_str(), now).await?;
        diplomatie_storage::commit(tx).await?;
        let state = json!({ "body": body, "version": version, "event_id": shown, "author": sender });
        self.timeline.send_state(sender, &situation, CRISIS_SITREP, "", state).await?;
        let system = self.organisation.system_user().await?;
        self.timeline.send_state(&system, &situation, "m.room.pinned_events", "", json!({ "pinned": [shown] })).await?;
        Ok(Sitrep { version, author: sender.to_string(), body: body.to_owned(), event_id: shown.to_string(), ts: now })
    }

    /// Every version of the situation report, oldest first.
    pub async fn sitreps(&self, user: &UserId, id: &RoomId) -> Result<Vec<Sitrep>> {
        let (cell, _) = self.cell(id).await?;
        self.check_member(user, &cell).await?;
        Ok(store::sitreps(self.db.pool(), &cell.cell_id)
            .await?
            .into_iter()
            .map(|(version, author, body, event_id, ts)| Sitrep { version, author, body, event_id, ts })
            .collect())
    }

    /// The log as one document: its entries, the closing record once stood down, and the keys
    /// that verify them (`diplomatie verify` reads it).
    pub async fn export_log(&self, user: &UserId, id: &RoomId) -> Result<Export> {
        let (cell, _) = self.cell(id).await?;
        self.check_member(user, &cell).await?;
        self.log_document(&cell).await
    }

    async fn log_document(&self, cell: &Cell) -> Result<Export> {
        let mut entries = Vec::new();
        let mut keys = BTreeMap::new();
        for (_, author, record) in store::log(self.db.pool(), &cell.cell_id).await? {
            let record: Value = serde_json::from_str(&record).map_err(crate::internal!())?;
            let signer = record["author"].as_str().unwrap_or(&author).to_owned();
            if let std::collections::btree_map::Entry::Vacant(slot) = keys.entry(signer) {
                let u = OwnedUserId::try_from(slot.key().as_str()).map_err(crate::internal!())?;
                slot.insert(self.correspondence.correspondence_keys(&u).await?);
            }
            entries.push(record);
        }
        let record = match &cell.closing_record {
            Some(r) => {
                let r: Value = serde_json::from_str(r).map_err(crate::internal!())?;
                let signer = OwnedUserId::try_from(cell.coordinator.as_str()).map_err(crate::internal!())?;
                keys.insert(cell.coordinator.clone(), self.correspondence.correspondence_keys(&signer).await?);
                r
            }
            None => {
                json!({ "kind": "crisis_log", "reference": format!("{}-MC", cell.slug.to_uppercase()), "open": true })
            }
        };
        Ok(Export { record, public_keys: keys, entries })
    }

    /// Stands the cell down: the log closed and signed, every room read-only, the cell handed
    /// to archiving.
    pub async fn stand_down(&self, sender: &UserId, id: &RoomId) -> Result<String> {
        let (cell, rooms) = self.cell(id).await?;
        Self::check_active(&cell).await?;
        let space = OwnedRoomId::try_from(cell.cell_id.as_str()).map_err(crate::internal!())?;
        if self.power(&space, sender).await? < 100 {
            return Err(Error::forbidden("Only the coordinator stands the cell down"));
        }
        let now = crate::now_ms();
        let mut listed = Vec::new();
        for (number, _, record) in store::log(self.db.pool(), &cell.cell_id).await? {
            let value: Value = serde_json::from_str(&record).map_err(crate::internal!())?;
            listed.push(json!({ "number": number, "reference": value["reference"], "sha256": record_digest(&value)? }));
        }
        let reference = format!("{}-MC", cell.slug.to_uppercase());
        let record = json!({
            "kind": "crisis_log",
            "reference": reference,
            "cell": { "cell_id": cell.cell_id, "slug": cell.slug, "name": cell.name },
            "author": sender,
            "opened_at": cell.created_ts,
            "closed_at": now,
            "signed_at": now,
            "entries": listed,
            "retention": cell.retention,
            "sealed": { "by": self.server_name() },
        });
        let record = self.correspondence.seal(sender, record).await?;
        let text = serde_json::to_string(&record).map_err(crate::internal!())?;
        if !store::stand_down(self.db.pool(), &cell.cell_id, now, &text).await? {
            return Err(Error::forbidden("The crisis cell was stood down"));
        }
        self.known.lock().unwrap().clear();
        let system = self.organisation.system_user().await?;
        for r in &rooms {
            let room = OwnedRoomId::try_from(r.room_id.as_str()).map_err(crate::internal!())?;
            if r.role == "situation" {
                let text = format!("Cellule levée par {sender}. Main courante close et scellée ({reference}) ; salons en lecture seule.");
                self.notice(&room, &text, None).await?;
            }
            let mut marker = self
                .rooms
                .state_event(&room, &StateEventType::from(CRISIS_CELL), "")
                .await?
                .map(|p| p.content_value())
                .unwrap_or_else(|| json!({}));
            marker["status"] = json!("stood_down");
            marker["stood_down_ts"] = json!(now);
            self.timeline.send_state(&system, &room, CRISIS_CELL, "", marker).await?;
            let mut levels = self.rooms.power_levels(&room).await?;
            for key in ["events_default", "state_default", "invite", "redact", "kick", "ban"] {
                levels.insert(key.into(), json!(READ_ONLY_LEVEL));
            }
            if let Some(events) = levels.get_mut("events").and_then(Value::as_object_mut) {
                for v in events.values_mut() {
                    *v = json!(READ_ONLY_LEVEL);
                }
            }
            self.timeline.send_state(&system, &room, "m.room.power_levels", "", Value::Object(levels)).await?;
        }
        tracing::info!(cell = %cell.cell_id, reference, "crisis cell stood down");
        self.hand_over(&cell.cell_id).await;
        Ok(reference)
    }

    async fn notice(&self, room: &RoomId, text: &str, reply_to: Option<&ruma::EventId>) -> Result<Arc<Pdu>> {
        let system = self.organisation.system_user().await?;
        let mut content = json!({ "msgtype": "m.notice", "body": text });
        if let Some(event) = reply_to {
            content["m.relates_to"] = json!({ "m.in_reply_to": { "event_id": event } });
        }
        self.rooms.append_event(Target::Room(room), &system, PduBuilder::message("m.room.message", content), None).await
    }

    /// The cell and role of a room, if it is a cell's (cached; activation and stand-down clear it).
    async fn role_of(&self, room: &RoomId) -> Result<Option<(String, String)>> {
        if let Some(known) = self.known.lock().unwrap().get(room) {
            return Ok(known.clone());
        }
        let found = store::room(self.db.pool(), room.as_str()).await?.map(|(cell, r)| (cell, r.role));
        self.known.lock().unwrap().insert(room.to_owned(), found.clone());
        Ok(found)
    }
}

/// A text, trimmed, that says something.
fn non_empty<'a>(text: &'a str, refusal: &str) -> Result<&'a str> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::invalid_param(refusal));
    }
    Ok(text)
}

/// A template's rooms: keys unique and alias-safe, one situation and one log room at most.
fn check_template(t: &CrisisTemplate) -> Result<()> {
    let mut keys: Vec<&str> = t.rooms.iter().map(|r| r.key.as_str()).collect();
    keys.sort();
    keys.dedup();
    let bad_key = t
        .rooms
        .iter()
        .any(|r| r.key.is_empty() || !r.key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    let roles = |role: &str| t.rooms.iter().filter(|r| r.role == role).count();
    if t.rooms.is_empty() || keys.len() != t.rooms.len() || bad_key || roles("situation") > 1 || roles("log") > 1 {
        return Err(Error::invalid_param(format!("Crisis template {} is not valid", t.id)));
    }
    if t.rooms.iter().any(|r| {
        !matches!(r.classification.as_str(), "NP" | "DR") || !matches!(r.role.as_str(), "" | "situation" | "log")
    }) {
        return Err(Error::invalid_param(format!(
            "Crisis template {}: classification NP or DR, role situation, log or none",
            t.id
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_alias_safe() {
        assert_eq!(slugify("Séisme à Tōkyō — 2026"), "seisme-a-t-ky-2026");
        assert_eq!(slugify("  "), "cellule");
        assert_eq!(slugify("Crue de la Seine"), "crue-de-la-seine");
    }

    #[test]
    fn the_standard_template_is_valid_and_others_are_checked() {
        let config = crate::config::Crisis::default();
        let standard = config.template("standard").unwrap();
        check_template(&standard).unwrap();
        assert_eq!(standard.rooms.iter().filter(|r| r.role == "log").count(), 1);
        let mut twice = standard.clone();
        twice.rooms.push(standard.rooms[0].clone());
        assert!(check_template(&twice).is_err());
        assert!(config.template("nope").is_none());
    }
}
