//! The ministry's organisation as spaces: functional groups (directions, cabinets, embassies)
//! and communities of interest, created by the server's own account, and the import of a whole
//! organisation from a YAML or CSV file.
//!
//! A group or community is a space with the state event `fr.diplomatie.group` (its kind, slug,
//! project, interest tags, join rule) and the alias `#g.<slug>` (groups) or `#c.<slug>`
//! (communities). Its rooms (a general room; for functional groups also a correspondence room)
//! are its children, restricted to the space's members. Managers have power 100 in the space
//! and its rooms. Joining a functional group is by request: the agent knocks on the space, a
//! manager approves by inviting (what "approve" does in standard clients) and the server then
//! joins the agent to the space and its rooms; a manager refuses by kicking the knock.

use std::sync::Arc;

use diplomatie_policies::{self as policies, AccountKind, Level};
use futures::StreamExt;
use ruma::events::room::member::MembershipState;
use ruma::{
    api::client::room::{
        create_room::v3::{Request as CreateRoomRequest, RoomPreset},
        Visibility,
    },
    events::StateEventType,
    serde::Raw,
    OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub mod people;

use crate::{
    accounts::Accounts,
    core::Core,
    portal::{Portal, CLASSIFICATION, EXTERNALS},
    rooms::{directory::Directory, membership::Membership, timeline::Timeline, Rooms},
    Error, Result,
};

pub use crate::names::GROUP;
/// Memberships an import adds at the same time.
const PARALLEL_JOINS: usize = 32;

/// The localpart of the server's own account, which creates groups and communities.
pub use crate::names::SYSTEM_LOCALPART;

/// A functional group to create.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub slug: String,
    pub name: String,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// "NP" (default) or "DR".
    #[serde(default)]
    pub classification: Option<String>,
    /// Localparts or user ids.
    #[serde(default)]
    pub managers: Vec<String>,
}

/// How one joins a community.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JoinRule {
    Open,
    #[default]
    Request,
    Invite,
}

/// A community of interest to create.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommunitySpec {
    pub slug: String,
    pub name: String,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub avatar_url: Option<String>,
    #[serde(default)]
    pub classification: Option<String>,
    /// The recognised person who runs it (localpart or user id).
    pub manager: String,
    /// The cross-cutting project it is backed by.
    pub project: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub join: JoinRule,
    /// Open to external qualified persons.
    #[serde(default)]
    pub externals: bool,
    /// Members to add (localparts or user ids).
    #[serde(default)]
    pub members: Vec<String>,
}

/// An account to create or update.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub localpart: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// "NP" (default) or "DR".
    #[serde(default)]
    pub clearance: Option<String>,
    /// "agent" (default) or "external".
    #[serde(default)]
    pub kind: Option<String>,
    /// The slug of the user's primary functional group.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub admin: bool,
    /// The e-mail address the ministry's directory gives (recorded as validated: the
    /// directory is the authority); alerts reach agents there when no device of theirs is seen.
    #[serde(default)]
    pub email: Option<String>,
}

/// A whole organisation, as an import file describes it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrganisationFile {
    #[serde(default)]
    pub users: Vec<UserSpec>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    #[serde(default)]
    pub communities: Vec<CommunitySpec>,
}

impl OrganisationFile {
    /// Reads YAML, or CSV of users (`localpart,name,clearance,kind,group,admin`, and
    /// optionally `email`, with that header line) when `csv` is true.
    ///
    /// Hostile files are refused before anything is built from them: a NUL character anywhere,
    /// a CSV line over [`MAX_CSV_LINE`] bytes, YAML anchors and aliases (an alias bomb expands
    /// a few hundred bytes into gigabytes), YAML nested deeper than [`crate::yaml::MAX_DEPTH`].
    pub fn parse(text: &str, csv: bool) -> Result<OrganisationFile> {
        if text.contains('\0') {
            return Err(Error::bad_json("Organisation file: a NUL character is not allowed"));
        }
        if csv {
            if let Some(n) = text.lines().position(|l| l.len() > MAX_CSV_LINE) {
                return Err(Error::bad_json(format!("CSV line {}: longer than {MAX_CSV_LINE} bytes", n + 1)));
            }
            let mut reader = ::csv::Reader::from_reader(text.as_bytes());
            let mut users = Vec::new();
            for (line, record) in reader.deserialize::<CsvUser>().enumerate() {
                let u = record.map_err(|e| Error::bad_json(format!("CSV line {}: {e}", line + 2)))?;
                users.push(UserSpec {
                    localpart: u.localpart,
                    name: u.name.filter(|s| !s.is_empty()),
                    password: None,
                    clearance: u.clearance.filter(|s| !s.is_empty()),
                    kind: u.kind.filter(|s| !s.is_empty()),
                    group: u.group.filter(|s| !s.is_empty()),
                    admin: u.admin.is_some_and(|a| matches!(a.as_str(), "true" | "yes" | "1")),
                    email: u.email.filter(|s| !s.is_empty()),
                });
            }
            return Ok(OrganisationFile { users, ..Default::default() });
        }
        let value = crate::yaml::parse(text).map_err(|e| Error::bad_json(format!("Organisation file: {e}")))?;
        if value.is_null() {
            return Ok(OrganisationFile::default());
        }
        serde_json::from_value(value).map_err(|e| Error::bad_json(format!("Organisation file: {e}")))
    }
}

/// The longest line of an organisation CSV file, in bytes.
pub const MAX_CSV_LINE: usize = 4096;

#[derive(Deserialize)]
struct CsvUser {
    localpart: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    clearance: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    admin: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

/// What an import changed (all zeros when the organisation was already there).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ImportReport {
    pub users_created: usize,
    pub users_updated: usize,
    pub groups_created: usize,
    pub communities_created: usize,
    pub memberships_added: usize,
}

/// A group or community, once created.
#[derive(Clone, Debug, Serialize)]
pub struct Created {
    pub space_id: OwnedRoomId,
    pub rooms: Vec<OwnedRoomId>,
    pub created: bool,
}

fn level(raw: Option<&str>) -> Result<Level> {
    match raw {
        None => Ok(Level::NP),
        Some(s) => Level::parse(s).ok_or_else(|| Error::invalid_param(format!("Unknown level {s:?} (NP or DR)"))),
    }
}

pub(crate) fn raw<T>(v: Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(&v).map_err(crate::internal!())?))
}

fn valid_slug(slug: &str) -> Result<()> {
    let ok = !slug.is_empty()
        && slug.len() <= 64
        && slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_param(format!("Invalid slug {slug:?}: lower-case letters, digits, - and _")))
    }
}

/// The kind of a space of the organisation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SpaceKind {
    Group,
    Community,
}

impl SpaceKind {
    /// The prefix of its aliases: `#g.<slug>`, `#c.<slug>`.
    fn prefix(self) -> &'static str {
        match self {
            SpaceKind::Group => "g",
            SpaceKind::Community => "c",
        }
    }
}

/// A group or community to create: its space, then its rooms.
struct NewSpace<'a> {
    kind: SpaceKind,
    slug: &'a str,
    name: &'a str,
    topic: Option<&'a str>,
    avatar: Option<&'a str>,
    classification: Option<&'a str>,
    managers: &'a [OwnedUserId],
    /// The content of `fr.diplomatie.group`.
    marker: Value,
    /// (label, alias key) of each room.
    rooms: &'a [(&'a str, &'a str)],
    join_rule: &'a str,
    externals: bool,
}

/// Groups, communities and the people in them, over the rooms, the accounts, the portal,
/// memberships, the directory and the timeline (the spaces' state).
pub struct Organisation {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    accounts: Arc<Accounts>,
    portal: Arc<Portal>,
    membership: Arc<Membership>,
    directory: Arc<Directory>,
    timeline: Arc<Timeline>,
}

crate::core::over_core!(Organisation);

impl Organisation {
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        accounts: Arc<Accounts>,
        portal: Arc<Portal>,
        membership: Arc<Membership>,
        directory: Arc<Directory>,
        timeline: Arc<Timeline>,
    ) -> Organisation {
        Organisation { core, rooms, accounts, portal, membership, directory, timeline }
    }

    /// The server's own account (created on first use, cleared DR so that it can create DR
    /// spaces and rooms).
    pub async fn system_user(&self) -> Result<OwnedUserId> {
        if let Some(user) = self.portal.system.get() {
            return Ok(user.clone());
        }
        let user = self.accounts.parse_local_user(SYSTEM_LOCALPART)?;
        if !diplomatie_storage::accounts::user_exists(self.db.pool(), user.as_str()).await? {
            match self.accounts.create_account(Some(SYSTEM_LOCALPART), None, true, Some("Diplomatie")).await {
                Ok(_) | Err(Error::Matrix(ruma::api::error::ErrorKind::UserInUse, _)) => {}
                Err(e) => return Err(e),
            }
            let mut tx = self.db.begin().await?;
            diplomatie_storage::org::set_clearance(&mut tx, user.as_str(), "DR", user.as_str(), crate::now_ms())
                .await?;
            diplomatie_storage::commit(tx).await?;
            self.portal.people.lock().unwrap().pop(&user);
        }
        Ok(self.portal.system.get_or_init(|| user).clone())
    }

    /// Local users named by localpart or id, who must exist.
    async fn existing_users(&self, names: &[String]) -> Result<Vec<OwnedUserId>> {
        let mut users = Vec::with_capacity(names.len());
        for name in names {
            let user = self.accounts.parse_local_user(name)?;
            if !diplomatie_storage::accounts::user_exists(self.db.pool(), user.as_str()).await? {
                return Err(Error::not_found(format!("Unknown user {user}")));
            }
            users.push(user);
        }
        Ok(users)
    }

    /// The space of a group or community, by slug.
    async fn org_space(&self, kind: SpaceKind, slug: &str) -> Result<Option<OwnedRoomId>> {
        let alias = RoomAliasId::parse(format!("#{}.{slug}:{}", kind.prefix(), self.server_name()))
            .map_err(|_| Error::invalid_param("Invalid slug"))?;
        self.directory.alias_target(&alias).await
    }

    /// Creates a functional group (a space, its general and correspondence rooms) unless it
    /// exists.
    pub async fn create_group(&self, spec: &GroupSpec) -> Result<Created> {
        let managers = self.existing_users(&spec.managers).await?;
        self.create_org_space(NewSpace {
            kind: SpaceKind::Group,
            slug: &spec.slug,
            name: &spec.name,
            topic: spec.topic.as_deref(),
            avatar: spec.avatar_url.as_deref(),
            classification: spec.classification.as_deref(),
            managers: &managers,
            marker: json!({ "kind": "functional_group", "slug": spec.slug }),
            rooms: &[("Général", "general"), ("Correspondance", "correspondence")],
            join_rule: "knock",
            externals: false,
        })
        .await
    }

    /// Creates a community of interest unless it exists (its `members` are added apart, with
    /// [`Organisation::add_to_org_space`]). `creator` is whoever asked (an agent, or the server for
    /// an import).
    pub async fn create_community(&self, creator: Option<&UserId>, spec: &CommunitySpec) -> Result<Created> {
        if let Some(c) = creator {
            policies::may_create_community(self.portal.person(c).await?).map_err(crate::error::forbidden)?;
        }
        if spec.project.trim().is_empty() {
            return Err(Error::invalid_param("A community is backed by a named project"));
        }
        let managers = self.existing_users(std::slice::from_ref(&spec.manager)).await?;
        // Members are added by the caller; that they exist is checked before anything is made.
        self.existing_users(&spec.members).await?;
        let join_rule = match spec.join {
            JoinRule::Open => "public",
            JoinRule::Request => "knock",
            JoinRule::Invite => "invite",
        };
        self.create_org_space(NewSpace {
            kind: SpaceKind::Community,
            slug: &spec.slug,
            name: &spec.name,
            topic: spec.topic.as_deref(),
            avatar: spec.avatar_url.as_deref(),
            classification: spec.classification.as_deref(),
            marker: json!({
                "kind": "community", "slug": spec.slug, "project": spec.project, "tags": spec.tags,
                "manager": managers[0], "join": spec.join,
            }),
            managers: &managers,
            rooms: &[("Général", "general")],
            join_rule,
            externals: spec.externals,
        })
        .await
    }

    async fn create_org_space(&self, new: NewSpace<'_>) -> Result<Created> {
        let NewSpace { kind, slug, name, topic, avatar, classification, managers, marker, rooms, join_rule, externals } =
            new;
        valid_slug(slug)?;
        let level = level(classification)?;
        if let Some(space) = self.org_space(kind, slug).await? {
            return Ok(Created {
                space_id: space.clone(),
                rooms: self.directory.space_child_ids(&space).await?,
                created: false,
            });
        }
        let system = self.system_user().await?;
        let mut users = serde_json::Map::new();
        for m in managers {
            users.insert(m.to_string(), json!(crate::names::MANAGER_LEVEL));
        }
        // Only managers approve requests (an invite approves a knock) and remove members.
        let powers = json!({
            "users": users,
            "invite": 100,
            "kick": 100,
            "events": {
                CLASSIFICATION: 100, EXTERNALS: 100, GROUP: 100, "m.space.child": 100,
                "org.matrix.msc3401.call.member": 0, "m.call.member": 0, "m.rtc.member": 0
            },
        });
        let mut common =
            vec![json!({ "type": CLASSIFICATION, "state_key": "", "content": { "level": level.as_str() } })];
        if externals {
            common.push(json!({ "type": EXTERNALS, "state_key": "", "content": { "allowed": true } }));
        }
        if let Some(url) = avatar {
            common.push(json!({ "type": "m.room.avatar", "state_key": "", "content": { "url": url } }));
        }
        let prefix = kind.prefix();

        // The space.
        let mut initial = common.clone();
        initial.push(json!({ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": join_rule } }));
        initial.push(json!({ "type": GROUP, "state_key": "", "content": marker }));
        let mut req = CreateRoomRequest::new();
        req.creation_content = Some(raw(json!({ "type": "m.space" }))?);
        req.name = Some(name.to_owned());
        req.topic = topic.map(str::to_owned);
        req.preset = Some(RoomPreset::PrivateChat);
        req.visibility = Visibility::Private;
        req.room_alias_name = Some(format!("{prefix}.{slug}"));
        req.power_level_content_override = Some(raw(powers.clone())?);
        req.initial_state = initial.into_iter().map(raw).collect::<Result<_>>()?;
        req.invite = managers.to_vec();
        let space = self.membership.create_room(&system, req).await?;
        for m in managers {
            self.membership.join(m, &space, None).await?;
        }

        // Its rooms, restricted to its members.
        let mut children = Vec::new();
        for (i, (label, key)) in rooms.iter().enumerate() {
            let mut initial = common.clone();
            initial.push(json!({ "type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "restricted",
                "allow": [{ "type": "m.room_membership", "room_id": space }],
            } }));
            initial.push(json!({ "type": "m.space.parent", "state_key": space, "content": {
                "via": [self.server_name()], "canonical": true,
            } }));
            let mut req = CreateRoomRequest::new();
            req.name = Some(format!("{name} — {label}"));
            req.preset = Some(RoomPreset::PrivateChat);
            req.visibility = Visibility::Private;
            req.room_alias_name = Some(format!("{prefix}.{slug}.{key}"));
            req.power_level_content_override = Some(raw(powers.clone())?);
            req.initial_state = initial.into_iter().map(raw).collect::<Result<_>>()?;
            let room = self.membership.create_room(&system, req).await?;
            let child = json!({ "via": [self.server_name()], "suggested": true, "order": format!("{:02}", i + 1) });
            self.timeline.send_state(&system, &space, "m.space.child", room.as_str(), child).await?;
            for m in managers {
                self.membership.join(m, &room, None).await?;
            }
            children.push(room);
        }
        tracing::info!(%space, slug, "organisation space created");
        Ok(Created { space_id: space, rooms: children, created: true })
    }

    /// Replaces the managers of a functional group (`community` false) or of a community: power
    /// 100 in the space and its rooms for them, none for the former ones; new managers are
    /// joined to the space and its rooms.
    pub async fn set_managers(&self, community: bool, slug: &str, managers: &[String]) -> Result<Vec<OwnedUserId>> {
        let kind = if community { SpaceKind::Community } else { SpaceKind::Group };
        let space = self.org_space(kind, slug).await?.ok_or_else(|| Error::not_found("Unknown group or community"))?;
        if managers.is_empty() {
            return Err(Error::invalid_param("A group or community keeps at least one manager"));
        }
        let managers = self.existing_users(managers).await?;
        let system = self.system_user().await?;
        let mut rooms = vec![space.clone()];
        rooms.extend(self.directory.space_child_ids(&space).await?);
        for room in &rooms {
            let mut levels = self.rooms.power_levels(room).await?;
            let users = levels.entry("users").or_insert_with(|| json!({}));
            let Some(users) = users.as_object_mut() else { return Err(Error::Internal) };
            users.retain(|u, v| u == system.as_str() || v.as_i64() != Some(crate::names::MANAGER_LEVEL));
            for m in &managers {
                users.insert(m.to_string(), json!(crate::names::MANAGER_LEVEL));
            }
            self.timeline.send_state(&system, room, "m.room.power_levels", "", Value::Object(levels)).await?;
        }
        for m in &managers {
            self.add_to_org_space(&space, m).await?;
        }
        Ok(managers)
    }

    /// Whether a space is a group or community, and which (`fr.diplomatie.group` content).
    pub async fn org_marker(&self, room_id: &RoomId) -> Result<Option<Value>> {
        Ok(self.rooms.state_event(room_id, &StateEventType::from(GROUP), "").await?.map(|p| p.content_value()))
    }

    /// Adds a user to a group or community: the space, then its rooms. False when they already
    /// were in.
    pub async fn add_to_org_space(&self, space: &RoomId, user: &UserId) -> Result<bool> {
        let mut added = false;
        if !self.rooms.is_joined(space, user).await? {
            if self.rooms.membership(space, user).await? != Some(MembershipState::Invite) {
                let system = self.system_user().await?;
                self.membership.invite(&system, space, user, None, false).await?;
            }
            self.membership.join(user, space, None).await?;
            added = true;
        }
        for room in self.directory.space_child_ids(space).await? {
            if !self.rooms.is_joined(&room, user).await? {
                self.membership.join(user, &room, None).await?;
                added = true;
            }
        }
        Ok(added)
    }

    /// Makes a functional group the user's primary one: always (`replace`), or only when the
    /// user has none yet.
    async fn make_primary_group(&self, user: &UserId, space: &RoomId, replace: bool) -> Result<()> {
        let current = diplomatie_storage::org::attributes(self.db.pool(), user.as_str()).await?;
        let Some(current) = current.map(|a| a.primary_group) else { return Ok(()) };
        let change = if replace { current.as_deref() != Some(space.as_str()) } else { current.is_none() };
        if change {
            self.portal.set_primary_group(user, Some(space)).await?;
        }
        Ok(())
    }

    /// `POST /rooms/{roomId}/invite`: an invite, which approves the request of a user who had
    /// knocked on a group or community.
    pub async fn invite_approving_knock(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        invitee: &UserId,
        reason: Option<String>,
        is_direct: bool,
    ) -> Result<()> {
        let knocked = invitee.server_name() == self.server_name()
            && self.rooms.membership(room_id, invitee).await? == Some(MembershipState::Knock);
        self.membership.invite(sender, room_id, invitee, reason, is_direct).await?;
        if knocked {
            self.knock_approved(room_id, invitee).await?;
        }
        Ok(())
    }

    /// After a manager invited a user who had knocked on a group or community: the request is
    /// approved, the server joins the user to the space and its rooms (a user's first
    /// functional group becomes their primary one).
    async fn knock_approved(&self, space: &RoomId, user: &UserId) -> Result<()> {
        if user.server_name() != self.server_name() {
            return Ok(());
        }
        let Some(marker) = self.org_marker(space).await? else { return Ok(()) };
        self.add_to_org_space(space, user).await?;
        if marker.get("kind").and_then(Value::as_str) == Some("functional_group") {
            self.make_primary_group(user, space, false).await?;
        }
        Ok(())
    }

    /// Imports an organisation: creates what is missing, changes what differs, and leaves the
    /// rest alone (importing the same file twice changes nothing the second time).
    pub async fn import_organisation(&self, org: &OrganisationFile) -> Result<ImportReport> {
        let mut report = ImportReport::default();
        let system = self.system_user().await?;
        // Check everything that can be checked before the first change.
        for u in &org.users {
            self.accounts.parse_local_user(&u.localpart)?;
            level(u.clearance.as_deref())?;
            if let Some(k) = &u.kind {
                AccountKind::parse(k).ok_or_else(|| Error::invalid_param(format!("Unknown kind {k:?}")))?;
            }
            if let Some(e) = &u.email {
                if !diplomatie_policies::is_mail_address(e) {
                    return Err(Error::invalid_param(format!("Not an e-mail address: {e:?} (user {})", u.localpart)));
                }
            }
        }
        for g in &org.groups {
            valid_slug(&g.slug)?;
            level(g.classification.as_deref())?;
        }
        for c in &org.communities {
            valid_slug(&c.slug)?;
            level(c.classification.as_deref())?;
        }
        // Every account the file names is in it or exists already: a refused file changes nothing.
        let mut in_file = std::collections::HashSet::new();
        for u in &org.users {
            in_file.insert(self.accounts.parse_local_user(&u.localpart)?);
        }
        let mut named: Vec<&str> = Vec::new();
        for g in &org.groups {
            named.extend(g.managers.iter().map(String::as_str));
        }
        for c in &org.communities {
            named.push(&c.manager);
            named.extend(c.members.iter().map(String::as_str));
        }
        for name in named {
            let user = self.accounts.parse_local_user(name)?;
            if !in_file.contains(&user)
                && !diplomatie_storage::accounts::user_exists(self.db.pool(), user.as_str()).await?
            {
                return Err(Error::not_found(format!("Unknown user {user}")));
            }
        }
        if org.communities.iter().any(|c| c.project.trim().is_empty()) {
            return Err(Error::invalid_param("A community is backed by a named project"));
        }
        for u in &org.users {
            let Some(slug) = &u.group else { continue };
            let in_file = org.groups.iter().any(|g| &g.slug == slug);
            if !in_file && self.org_space(SpaceKind::Group, slug).await?.is_none() {
                return Err(Error::not_found(format!("Unknown functional group {slug:?} (user {})", u.localpart)));
            }
        }
        // Accounts, their kind and clearance.
        for u in &org.users {
            let user = self.accounts.parse_local_user(&u.localpart)?;
            if !diplomatie_storage::accounts::user_exists(self.db.pool(), user.as_str()).await? {
                self.accounts
                    .create_account(Some(&u.localpart), u.password.as_deref(), u.admin, u.name.as_deref())
                    .await?;
                report.users_created += 1;
            }
            let person = self.portal.person(&user).await?;
            let kind = u.kind.as_deref().and_then(AccountKind::parse).unwrap_or_default();
            let clearance = level(u.clearance.as_deref())?;
            let mut changed = false;
            if person.kind != kind {
                self.set_account_kind(&user, kind).await?;
                changed = true;
            }
            if person.clearance != clearance {
                self.set_clearance(&system, true, &user, clearance).await?;
                changed = true;
            }
            if let Some(address) = &u.email {
                let address = address.to_lowercase();
                let known = diplomatie_storage::threepids::list(self.db.pool(), user.as_str()).await?;
                if !known.iter().any(|t| t.medium == "email" && t.address == address) {
                    let now = crate::now_ms();
                    let threepid = diplomatie_storage::threepids::Threepid {
                        medium: "email".into(),
                        address,
                        validated_at: now,
                        added_at: now,
                        id_server: None,
                    };
                    diplomatie_storage::threepids::upsert(self.db.pool(), user.as_str(), &threepid).await?;
                    changed = true;
                }
            }
            report.users_updated += usize::from(changed);
        }
        // Groups and communities.
        for g in &org.groups {
            report.groups_created += usize::from(self.create_group(g).await?.created);
        }
        for c in &org.communities {
            let created = self.create_community(None, c).await?;
            report.communities_created += usize::from(created.created);
            let members: std::collections::BTreeSet<OwnedUserId> =
                c.members.iter().map(|m| self.accounts.parse_local_user(m)).collect::<Result<_>>()?;
            let space = &created.space_id;
            let added: Vec<Result<bool>> = futures::stream::iter(members)
                .map(|user| async move { self.add_to_org_space(space, &user).await })
                .buffer_unordered(PARALLEL_JOINS)
                .collect()
                .await;
            for a in added {
                report.memberships_added += usize::from(a?);
            }
        }
        // Each agent in their primary functional group, many at a time (their joins share the
        // writer's group commits).
        let mut placements = Vec::new();
        for u in &org.users {
            let Some(slug) = &u.group else { continue };
            let user = self.accounts.parse_local_user(&u.localpart)?;
            let space = self
                .org_space(SpaceKind::Group, slug)
                .await?
                .ok_or_else(|| Error::not_found(format!("Unknown functional group {slug:?} (user {user})")))?;
            placements.push((user, space));
        }
        placements.sort();
        placements.dedup_by(|a, b| a.0 == b.0);
        let added: Vec<Result<bool>> = futures::stream::iter(placements)
            .map(|(user, space)| async move {
                let added = self.add_to_org_space(&space, &user).await?;
                self.make_primary_group(&user, &space, true).await?;
                Ok(added)
            })
            .buffer_unordered(PARALLEL_JOINS)
            .collect()
            .await;
        for a in added {
            report.memberships_added += usize::from(a?);
        }
        Ok(report)
    }
}
