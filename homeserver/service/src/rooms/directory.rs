//! Room aliases, the public room directory and the user directory.

use std::sync::Arc;

use ruma::{
    api::{client::user_directory::search_users, error::ErrorKind, federation::directory::get_public_rooms_filtered},
    directory::PublicRoomsChunk,
    events::{room::join_rules::RoomJoinRulesEventContent, StateEventType},
    room::{JoinRuleSummary, RoomSummary, RoomType},
    OwnedRoomAliasId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomAliasId, RoomId, UInt, UserId,
};
use serde_json::Value;

use super::{timeline::Timeline, Rooms};
use crate::{
    accounts::Accounts,
    appservice::Appservices,
    core::Core,
    federation::{client::Transport, Federation},
    portal::Portal,
    Error, Result,
};

/// A page of the public room directory (this server's, or another's asked over federation).
pub struct RoomsPage {
    pub chunk: Vec<PublicRoomsChunk>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total_room_count_estimate: Option<UInt>,
}

impl From<get_public_rooms_filtered::v1::Response> for RoomsPage {
    fn from(r: get_public_rooms_filtered::v1::Response) -> Self {
        RoomsPage {
            chunk: r.chunk,
            next_batch: r.next_batch,
            prev_batch: r.prev_batch,
            total_room_count_estimate: r.total_room_count_estimate,
        }
    }
}

/// Which lists of the room directory a request reads (`/publicRooms`).
#[derive(Clone, Copy, Debug)]
pub enum Networks<'a> {
    /// The server's own list.
    Matrix,
    /// The server's and every application service's.
    All,
    /// One application service's list for one network: `service|network`.
    Instance(&'a str),
}

/// Aliases, the public room directory, the user directory, room summaries and the space
/// hierarchy (`spaces.rs`); over the rooms, the accounts, the portal (what may be listed), the
/// timeline (alias state events), the transport and federation (server ACLs, other servers'
/// hierarchies).
pub struct Directory {
    core: Arc<Core>,
    pub(super) rooms: Arc<Rooms>,
    accounts: Arc<Accounts>,
    pub(super) portal: Arc<Portal>,
    timeline: Arc<Timeline>,
    pub(super) transport: Arc<Transport>,
    pub(super) federation: Arc<Federation>,
    appservices: Arc<Appservices>,
}

crate::core::over_core!(Directory);

impl Directory {
    // One argument per service held: the dependencies are explicit (ARCHITECTURE.md).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        accounts: Arc<Accounts>,
        portal: Arc<Portal>,
        timeline: Arc<Timeline>,
        transport: Arc<Transport>,
        federation: Arc<Federation>,
        appservices: Arc<Appservices>,
    ) -> Directory {
        Directory { core, rooms, accounts, portal, timeline, transport, federation, appservices }
    }

    /// Creates `alias` for the room. An alias in an application service's exclusive namespace
    /// is that service's alone (`appservice`: the service calling, if one is); a service creates
    /// aliases in its namespaces only, without being in the room.
    pub async fn create_alias(
        &self,
        user: &UserId,
        appservice: Option<&str>,
        alias: &RoomAliasId,
        room_id: &RoomId,
    ) -> Result<()> {
        if alias.server_name() != self.server_name() {
            return Err(Error::invalid_param("Aliases must be on this server"));
        }
        let exclusive = |m: String| Err(Error::new(ErrorKind::Exclusive, m));
        if crate::names::is_organisation_alias(alias.alias()) && user.localpart() != crate::names::SYSTEM_LOCALPART {
            return exclusive(format!("{alias} is in the organisation's namespace (g.*, c.*)"));
        }
        if let Some(owner) = self.registrations.exclusive_owner_of_alias(alias.as_str()) {
            if appservice != Some(owner.id()) {
                return exclusive(format!("{alias} is reserved by the application service {}", owner.id()));
            }
        }
        self.rooms.known_room(room_id).await?;
        match appservice.and_then(|id| self.registrations.by_id(id)) {
            Some(service) if !service.owns_alias(alias.as_str()) => {
                return exclusive(format!("{alias} is outside the application service's namespaces"));
            }
            Some(_) => {}
            None if !self.rooms.is_joined(room_id, user).await? => {
                return Err(Error::forbidden("You are not joined to this room"));
            }
            None => {}
        }
        diplomatie_storage::rooms::insert_alias(self.db.pool(), alias.as_str(), room_id.as_str(), user.as_str())
            .await
            .map_err(|e| {
                if e.is_unique_violation() {
                    Error::Conflict(format!("Room alias {alias} already exists"))
                } else {
                    e.into()
                }
            })
    }

    pub async fn delete_alias(&self, user: &UserId, alias: &RoomAliasId) -> Result<()> {
        let (room_id, creator) = diplomatie_storage::rooms::get_alias(self.db.pool(), alias.as_str())
            .await?
            .ok_or_else(|| Error::not_found("Room alias not found"))?;
        let room_id = OwnedRoomId::try_from(room_id).map_err(crate::internal!())?;
        if creator != user.as_str() && !self.accounts.is_admin(user).await? {
            let levels = self.rooms.power_levels(&room_id).await?;
            let needed = levels
                .get("events")
                .and_then(|e| e.get("m.room.canonical_alias"))
                .and_then(Value::as_i64)
                .or_else(|| levels.get("state_default").and_then(Value::as_i64))
                .unwrap_or(50);
            if self.rooms.user_power(&room_id, &levels, user).await? < needed {
                return Err(Error::forbidden("You may not delete this alias"));
            }
        }
        diplomatie_storage::rooms::delete_alias(self.db.pool(), alias.as_str()).await?;
        // The room's canonical alias event stops naming it (as Synapse does), when the user may
        // change that event; the alias is gone either way (the spec's recommendation).
        if let Err(e) = self.forget_canonical_alias(user, &room_id, alias).await {
            tracing::info!(%alias, error = %e, "the canonical alias event was left as it was");
        }
        Ok(())
    }

    /// Removes `alias` from the room's `m.room.canonical_alias` event (`alias` and
    /// `alt_aliases`), if it is there.
    async fn forget_canonical_alias(&self, user: &UserId, room_id: &RoomId, alias: &RoomAliasId) -> Result<()> {
        let Some(event) = self.rooms.state_event(room_id, &StateEventType::RoomCanonicalAlias, "").await? else {
            return Ok(());
        };
        let mut content = event.content_value();
        let Some(object) = content.as_object_mut() else { return Ok(()) };
        let mut changed = false;
        if object.get("alias").and_then(Value::as_str) == Some(alias.as_str()) {
            object.remove("alias");
            changed = true;
        }
        if let Some(Value::Array(alt)) = object.get_mut("alt_aliases") {
            let before = alt.len();
            alt.retain(|a| a.as_str() != Some(alias.as_str()));
            changed |= alt.len() != before;
        }
        if changed {
            self.timeline.send_state(user, room_id, "m.room.canonical_alias", "", content).await?;
        }
        Ok(())
    }

    /// The room an alias names and servers that are in it: this server's aliases from the
    /// database, another server's asked of it (`GET /directory/room/{alias}`).
    pub async fn lookup_alias(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        if alias.server_name() != self.server_name() && self.transport.federation_enabled() {
            return self.transport.query_alias(alias).await;
        }
        Ok((self.resolve_alias(alias).await?, vec![self.server_name().to_owned()]))
    }

    /// A user's display name and avatar: another server's user's asked of their server.
    pub async fn profile(&self, user: &UserId) -> Result<(Option<String>, Option<String>)> {
        if user.server_name() != self.server_name() && self.transport.federation_enabled() {
            return self.transport.query_profile(user).await;
        }
        self.accounts.profile(user).await
    }

    /// The room this server's alias names (an application service whose namespace holds it
    /// is asked when none does).
    pub async fn resolve_alias(&self, alias: &RoomAliasId) -> Result<OwnedRoomId> {
        self.appservices.local_alias(alias).await?.ok_or_else(|| Error::not_found("Room alias not found"))
    }

    /// The room an alias of this server names, or `None` when it names none.
    pub async fn alias_target(&self, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
        match self.resolve_alias(alias).await {
            Ok(id) => Ok(Some(id)),
            Err(Error::Matrix(ErrorKind::NotFound, _)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn room_aliases(&self, user: &UserId, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        self.rooms.readable_until(user, room_id).await?;
        let aliases = diplomatie_storage::rooms::room_aliases(self.db.pool(), room_id.as_str()).await?;
        Ok(aliases.into_iter().filter_map(|a| OwnedRoomAliasId::try_from(a).ok()).collect())
    }

    pub async fn set_room_visibility(&self, user: &UserId, room_id: &RoomId, public: bool) -> Result<()> {
        self.rooms.known_room(room_id).await?;
        let levels = self.rooms.power_levels(room_id).await?;
        let needed = levels.get("state_default").and_then(Value::as_i64).unwrap_or(50);
        if self.rooms.user_power(room_id, &levels, user).await? < needed && !self.accounts.is_admin(user).await? {
            return Err(Error::forbidden("You may not publish this room"));
        }
        if public && !self.portal.room_may_be_listed(room_id).await? {
            return Err(Error::forbidden("A DR (restricted distribution) room is never listed in the directory"));
        }
        diplomatie_storage::rooms::set_public(self.db.pool(), room_id.as_str(), public).await?;
        Ok(())
    }

    pub async fn room_is_public(&self, room_id: &RoomId) -> Result<bool> {
        let room = diplomatie_storage::rooms::get_room(self.db.pool(), room_id.as_str())
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        Ok(room.is_public)
    }

    /// The room's summary as the directory, the hierarchy and room previews show it.
    pub async fn room_summary(&self, room_id: &RoomId) -> Result<RoomSummary> {
        let state = self.rooms.current_state(room_id).await?;
        let content = |kind: StateEventType| {
            let state = state.clone();
            async move {
                let pdu = self.rooms.state_event_in(&state, &kind, "").await?;
                Ok::<_, Error>(pdu.map(|p| p.content.clone()))
            }
        };
        let parse = |raw: &serde_json::value::RawValue| serde_json::from_str::<Value>(raw.get()).ok();
        let text = |raw: Option<Box<serde_json::value::RawValue>>, field: &str| {
            raw.and_then(|r| parse(&r)).and_then(|mut v| v.get_mut(field).map(Value::take)).and_then(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
        };
        let join_rule = content(StateEventType::RoomJoinRules)
            .await?
            .and_then(|c| serde_json::from_str::<RoomJoinRulesEventContent>(c.get()).ok())
            .map_or(JoinRuleSummary::Invite, |c| c.join_rule.into());
        let visibility = text(content(StateEventType::RoomHistoryVisibility).await?, "history_visibility");
        let guest = text(content(StateEventType::RoomGuestAccess).await?, "guest_access");
        let joined = self.rooms.joined_members(room_id).await?.len();
        let mut summary = RoomSummary::new(
            room_id.to_owned(),
            join_rule,
            guest.as_deref() == Some("can_join"),
            UInt::try_from(joined).unwrap_or_default(),
            visibility.as_deref() == Some("world_readable"),
        );
        summary.name = text(content(StateEventType::RoomName).await?, "name").filter(|n| !n.is_empty());
        summary.topic = text(content(StateEventType::RoomTopic).await?, "topic").filter(|t| !t.is_empty());
        summary.avatar_url = text(content(StateEventType::RoomAvatar).await?, "url")
            .filter(|u| !u.is_empty())
            .map(ruma::OwnedMxcUri::from);
        summary.canonical_alias = text(content(StateEventType::RoomCanonicalAlias).await?, "alias")
            .and_then(|a| OwnedRoomAliasId::try_from(a).ok());
        let create = content(StateEventType::RoomCreate).await?;
        summary.room_type = text(create.clone(), "type").map(RoomType::from);
        summary.room_version = self.rooms.room_meta(room_id).await?.map(|m| m.version.clone());
        summary.encryption = text(content(StateEventType::RoomEncryption).await?, "algorithm").map(Into::into);
        Ok(summary)
    }

    /// The public room directory, filtered by a search term, paginated by offset tokens.
    pub async fn public_rooms(
        &self,
        networks: Networks<'_>,
        term: Option<&str>,
        since: Option<&str>,
        limit: Option<usize>,
    ) -> Result<RoomsPage> {
        let ids: Vec<String> = match networks {
            Networks::Matrix => diplomatie_storage::rooms::public_rooms(self.db.pool()).await?,
            Networks::All => {
                let mut ids = diplomatie_storage::rooms::public_rooms(self.db.pool()).await?;
                ids.extend(self.appservices.listed_rooms(None).await?.into_iter().map(String::from));
                ids.sort_unstable();
                ids.dedup();
                ids
            }
            Networks::Instance(id) => {
                self.appservices.listed_rooms(Some(id)).await?.into_iter().map(String::from).collect()
            }
        };
        let term = term.map(str::to_lowercase).filter(|t| !t.is_empty());
        let mut rooms = Vec::new();
        for id in ids {
            let Ok(room_id) = OwnedRoomId::try_from(id) else {
                continue;
            };
            if !self.portal.room_may_be_listed(&room_id).await? {
                continue;
            }
            let summary = self.room_summary(&room_id).await?;
            if let Some(term) = &term {
                let alias = summary.canonical_alias.as_ref().map(|a| a.as_str());
                let hay = [summary.name.as_deref(), summary.topic.as_deref(), alias, Some(summary.room_id.as_str())]
                    .into_iter()
                    .flatten()
                    .map(str::to_lowercase)
                    .collect::<Vec<_>>()
                    .join(" ");
                if !hay.contains(term.as_str()) {
                    continue;
                }
            }
            rooms.push(summary);
        }
        // Largest rooms first, as Synapse orders them.
        rooms.sort_by(|a, b| b.num_joined_members.cmp(&a.num_joined_members).then_with(|| a.room_id.cmp(&b.room_id)));
        let total = rooms.len();
        let offset = match since {
            Some(s) => {
                s.trim_start_matches('o').parse::<usize>().map_err(|_| Error::invalid_param("Invalid since token"))?
            }
            None => 0,
        };
        let limit = limit.unwrap_or(usize::MAX).max(1);
        let chunk: Vec<PublicRoomsChunk> = rooms.into_iter().skip(offset).take(limit).map(Into::into).collect();
        let next_batch = (offset + chunk.len() < total).then(|| format!("o{}", offset + chunk.len()));
        let prev_batch = (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit)));
        Ok(RoomsPage {
            chunk,
            next_batch,
            prev_batch,
            total_room_count_estimate: Some(UInt::try_from(total).unwrap_or_default()),
        })
    }

    /// The user directory: the users matching the term (in their id or display name) that
    /// the searcher may find. Results are sorted by user id; the flag says more matched.
    ///
    /// An agent finds every active local account when `user_directory.search_all_users` is on
    /// (the default), and in any case the members of the rooms they are joined to and of the
    /// public rooms (joinable by anyone, or world-readable) one of this server's users is in,
    /// local or remote. External persons find only the members of the rooms they are in.
    pub async fn search_users(
        &self,
        searcher: &UserId,
        term: &str,
        limit: usize,
    ) -> Result<(Vec<search_users::v3::User>, bool)> {
        let limit = limit.clamp(1, 100);
        // A user id has at most 255 bytes, and so has a display name here: a longer term
        // matches nobody, and is not handed to the database.
        if term.len() > MAX_USER_SEARCH_TERM {
            return Ok((Vec::new(), false));
        }
        let term = term.to_lowercase();
        let internal = diplomatie_policies::may_see_user_directory(self.portal.person(searcher).await?);
        let mut found: std::collections::BTreeMap<String, (Option<String>, Option<String>)> = Default::default();
        if internal && self.config.user_directory.search_all_users {
            let local = diplomatie_storage::accounts::search_users(self.db.pool(), &term, limit as i64 + 1).await?;
            found.extend(local.into_iter().map(|u| (u.user_id, (u.displayname, u.avatar_url))));
        }
        // The public rooms first, then the searcher's others: as in Synapse, sharing a private
        // room with oneself does not list oneself.
        let public = if internal { self.public_rooms_with_local_members().await? } else { Default::default() };
        let mut shared = super::joined_rooms(self, searcher).await?;
        shared.retain(|r| !public.contains(r));
        let public: Vec<&str> = public.iter().map(|r| r.as_str()).collect();
        let shared: Vec<&str> = shared.iter().map(|r| r.as_str()).collect();
        let chunks = public.chunks(500).map(|c| (c, false)).chain(shared.chunks(500).map(|c| (c, true)));
        for (chunk, private) in chunks {
            let members = diplomatie_storage::state::joined_members_matching(self.db.pool(), chunk, &term).await?;
            for (user_id, json) in members {
                if found.contains_key(&user_id) || (private && user_id == searcher.as_str()) {
                    continue;
                }
                let Ok(user) = UserId::parse(&user_id) else { continue };
                let profile = if user.server_name() == self.server_name() {
                    match self.accounts.profile(&user).await {
                        Ok(profile) => profile,
                        Err(_) => continue,
                    }
                } else {
                    let content = serde_json::from_str::<Value>(&json).ok().map(|mut v| v["content"].take());
                    let field = |k: &str| content.as_ref().and_then(|c| c[k].as_str()).map(str::to_owned);
                    (field("displayname"), field("avatar_url"))
                };
                let matches = user_id.to_lowercase().contains(&term)
                    || profile.0.as_deref().is_some_and(|n| n.to_lowercase().contains(&term));
                if matches {
                    found.insert(user_id, profile);
                }
            }
        }
        let limited = found.len() > limit;
        let results = found
            .into_iter()
            .take(limit)
            .filter_map(|(id, (name, avatar))| {
                let mut user = search_users::v3::User::new(OwnedUserId::try_from(id).ok()?);
                user.display_name = name;
                user.avatar_url = avatar.map(Into::into);
                Some(user)
            })
            .collect();
        Ok((results, limited))
    }

    /// The rooms joinable by anyone or world-readable that one of this server's users is
    /// joined to.
    async fn public_rooms_with_local_members(&self) -> Result<std::collections::BTreeSet<OwnedRoomId>> {
        let mut public = std::collections::BTreeSet::new();
        for (room, kind, json) in diplomatie_storage::state::rooms_openness(self.db.pool()).await? {
            let content = serde_json::from_str::<Value>(&json).map(|mut v| v["content"].take()).unwrap_or_default();
            let open = match kind.as_str() {
                "m.room.join_rules" => content["join_rule"] == "public",
                _ => content["history_visibility"] == "world_readable",
            };
            let Ok(room) = OwnedRoomId::try_from(room) else { continue };
            if open {
                public.insert(room);
            }
        }
        let mut with_local = std::collections::BTreeSet::new();
        for room in public {
            if self.rooms.joined_members(&room).await?.iter().any(|u| u.server_name() == self.server_name()) {
                with_local.insert(room);
            }
        }
        Ok(with_local)
    }
}

/// The longest user directory term worth searching: a user id's limit (bytes).
const MAX_USER_SEARCH_TERM: usize = 255;
