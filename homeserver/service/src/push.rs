//! Push rules and notifications (client-server spec, "Push Notifications").
//!
//! Each user's rules are the spec's defaults (ruma's `Ruleset::server_default`, with the legacy
//! mention rules Synapse still has: see [`default_rules`]) until the user changes one; the changed set is kept as the user's `m.push_rules` account data, so clients
//! see it through `/sync` as the spec says. Rules are evaluated with ruma for every event a
//! batch writes, for every local member it may notify, and the notifications are written in
//! the batch's own transaction: the counts `/sync` reports never lag behind the timeline it
//! returns. The event is flattened once, whatever the number of recipients. `/sync` reads the
//! counts from an in-memory cache that the writer and receipts keep exact.
//!
//! Pushers deliver those notifications to push gateways from a background worker that resumes,
//! after a restart, from the last notification each pusher delivered, and retries a failing
//! gateway with exponential back-off.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use diplomatie_storage::{
    push::{self as store, NewPushAction, NewPushDefault, Scan},
    streams,
};
use lru::LruCache;
use ruma::events::room::member::MembershipState;
use ruma::{
    api::{
        client::push::{get_notifications::v3::Notification as Listed, Pusher, PusherIds, PusherInit, PusherKind},
        error::ErrorKind,
    },
    events::{room::power_levels::RoomPowerLevelsEventContent, StateEventType, TimelineEventType},
    push::{
        Action, FlattenedJson, HttpPusherData, InsertPushRuleError, NewPushRule, PushConditionPowerLevelsCtx,
        PushConditionRoomCtx, RemovePushRuleError, RuleKind, RuleNotFoundError, Ruleset, Tweak,
    },
    state_res::StateMap,
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::{json, Value};

use crate::{
    account_data::AccountData,
    core::Core,
    names::{CRISIS_ALERT, CRISIS_ALERT_RULE, CRISIS_CELL},
    now_ms,
    rooms::{commit, Rooms},
    Error, Pdu, Result,
};

/// Push rules, notifications, unread counts and pushers, over the rooms (who is notified, with
/// which power) and the account data (where the rules are kept).
pub struct Push {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    account_data: Arc<AccountData>,
    state: PushState,
}

crate::core::over_core!(Push);

impl Push {
    pub(crate) fn new(core: Arc<Core>, rooms: Arc<Rooms>, account_data: Arc<AccountData>, state: PushState) -> Push {
        Push { core, rooms, account_data, state }
    }
}

/// Push rules in memory, and what wakes the pusher worker.
pub struct PushState {
    /// Each user's rules; `None` for the spec's defaults (the user never changed a rule).
    rules: Mutex<LruCache<OwnedUserId, Option<Arc<Ruleset>>>>,
    /// Serialises changes of rules, so that two concurrent edits cannot lose one another.
    edit: tokio::sync::Mutex<()>,
    /// The users who have pushers, with them (loaded at start, kept in step with the table).
    pushers: Mutex<HashMap<String, Vec<store::Pusher>>>,
    wake: Arc<tokio::sync::Notify>,
    /// The gateways' HTTP client, built once (its resolver checks every address).
    client: std::sync::OnceLock<crate::outbound::Client>,
    /// Unread counts of the rooms `/sync` asked about lately.
    unread: Mutex<UnreadCache>,
    /// The default rules of a user no event names, and that user.
    anyone: std::sync::OnceLock<(OwnedUserId, Ruleset)>,
    /// Pushers (app id, pushkey, user) whose badge a receipt may have changed, and the badge
    /// each was last sent: a receipt that changes it sends it again (a push with counts only).
    badges: Mutex<(HashSet<PusherKey>, HashMap<PusherKey, u64>)>,
}

/// A pusher: (app id, pushkey, user).
type PusherKey = (String, String, String);

/// Unread counts per (user, room), computed from the database once and then kept up to date
/// by the writer (new notifications) and by receipts (which drop the entry), so that `/sync`
/// does not count rows that grow as long as a user reads nothing.
///
/// A count computed from the database is only cached if no batch and no receipt was applied
/// while it was computed (`applied` and `generation` unchanged): it can never miss one.
struct UnreadCache {
    entries: LruCache<(OwnedUserId, ruma::OwnedRoomId), Arc<RoomUnread>>,
    /// The last position of the batches applied to the entries: a count is cached only when
    /// no batch was applied while it was computed.
    applied: i64,
    /// Bumped by every receipt.
    generation: u64,
}

/// A room's unread notifications after the user's receipts.
#[derive(Clone, Debug, Default)]
struct RoomUnread {
    /// (notifications, highlights) per thread ("main" for the main timeline).
    threads: HashMap<String, (u64, u64)>,
}

impl PushState {
    pub async fn load(db: &diplomatie_storage::Db) -> diplomatie_storage::Result<PushState> {
        let mut pushers: HashMap<String, Vec<store::Pusher>> = HashMap::new();
        for p in store::all_pushers(db.pool()).await? {
            pushers.entry(p.user_id.clone()).or_default().push(p);
        }
        Ok(PushState {
            rules: Mutex::new(crate::lru(4096)),
            edit: tokio::sync::Mutex::new(()),
            pushers: Mutex::new(pushers),
            wake: Arc::new(tokio::sync::Notify::new()),
            client: std::sync::OnceLock::new(),
            anyone: std::sync::OnceLock::new(),
            badges: Mutex::default(),
            unread: Mutex::new(UnreadCache { entries: crate::lru(65536), applied: 0, generation: 0 }),
        })
    }
}

/// The notifications a batch decided, written with it: per event, the outcome of the default
/// rules for the members it does not name, and the users whose outcome differs.
#[derive(Default)]
pub(crate) struct PushBatch {
    defaults: Vec<PushRow>,
    /// Users' own outcomes (`user_id` set).
    own: Vec<PushRow>,
}

/// One outcome: for every member not named (`user_id` empty), or for one user.
struct PushRow {
    user_id: String,
    room_id: String,
    event_id: String,
    sender: String,
    stream_ordering: i64,
    thread_id: String,
    notify: bool,
    highlight: bool,
    actions: String,
    ts: i64,
}

/// A notification read back: the merge of an event's default outcome and the user's own.
#[derive(Clone, Debug)]
struct Notification {
    room_id: String,
    event_id: String,
    stream_ordering: i64,
    thread_id: String,
    highlight: bool,
    actions: String,
    ts: i64,
}

/// Unread notifications of a room as `/sync` shows them.
#[derive(Debug, Default)]
pub struct UnreadCounts {
    pub notifications: u64,
    pub highlights: u64,
    /// Per thread root, when the client asked for thread counts.
    pub threads: BTreeMap<String, (u64, u64)>,
}

impl RoomUnread {
    fn counts(&self, by_thread: bool) -> UnreadCounts {
        let mut counts = UnreadCounts::default();
        for (thread, (n, h)) in &self.threads {
            if by_thread && thread != "main" {
                counts.threads.insert(thread.clone(), (*n, *h));
            } else {
                counts.notifications += n;
                counts.highlights += h;
            }
        }
        counts
    }
}

/// The first rule of `rules` that applies: whether it highlights and its actions as JSON, or
/// `None` when it does not notify.
async fn evaluate(
    rules: &Ruleset,
    event: &FlattenedJson,
    ctx: &PushConditionRoomCtx,
) -> Result<Option<(bool, String)>> {
    for rule in rules.iter() {
        if rule.applies(event, ctx).await {
            if !rule.triggers_notification() {
                return Ok(None);
            }
            let actions = serde_json::to_string(rule.actions()).map_err(crate::internal!())?;
            return Ok(Some((rule.triggers_highlight(), actions)));
        }
    }
    Ok(None)
}

/// The default rules of `user`: the spec's, with the legacy mention rules.
fn default_rules(user: &UserId) -> Ruleset {
    let mut rules = Ruleset::server_default(user);
    with_server_rules(&mut rules, user);
    rules
}

/// The rules of this server every user has as they are: the crisis alert rule, first of all
/// (before `.m.rule.master`, so that muting everything does not mute an alert), then the
/// legacy mention rules.
fn with_server_rules(rules: &mut Ruleset, user: &UserId) {
    let alert = json!({
        "rule_id": CRISIS_ALERT_RULE, "default": true, "enabled": true,
        "conditions": [{ "kind": "event_match", "key": "type", "pattern": CRISIS_ALERT }],
        "actions": ["notify", { "set_tweak": "sound", "value": "ring" }, { "set_tweak": "highlight" }],
    });
    rules.override_.shift_remove(CRISIS_ALERT_RULE);
    if let Ok(rule) = serde_json::from_value(alert) {
        rules.override_.shift_insert(0, rule);
    }
    with_legacy_mentions(rules, user);
}

/// Whether a rule is one of this server's that users cannot change.
fn fixed_rule(rule_id: &str) -> Result<()> {
    if rule_id == CRISIS_ALERT_RULE {
        return Err(Error::forbidden("Crisis alerts always notify: this rule cannot be changed"));
    }
    Ok(())
}

/// Adds the legacy mention rules where they are missing: `.m.rule.contains_user_name` (the
/// user's localpart in a message's body) and `.m.rule.contains_display_name` (after
/// `.m.rule.is_user_mention`), which Matrix 1.7 deprecated and ruma's defaults no longer hold.
/// Synapse still has them, clients' settings (Element, FluffyChat) toggle them, and messages
/// of older clients and bridges carry no `m.mentions` (events that do are not matched by them).
fn with_legacy_mentions(rules: &mut Ruleset, user: &UserId) {
    let highlight = json!(["notify", { "set_tweak": "sound", "value": "default" }, { "set_tweak": "highlight" }]);
    if !rules.content.iter().any(|r| r.rule_id == ".m.rule.contains_user_name") {
        let rule = json!({
            "rule_id": ".m.rule.contains_user_name", "default": true, "enabled": true,
            "pattern": user.localpart(), "actions": highlight,
        });
        if let Ok(rule) = serde_json::from_value(rule) {
            rules.content.shift_insert(0, rule);
        }
    }
    if !rules.override_.iter().any(|r| r.rule_id == ".m.rule.contains_display_name") {
        let rule = json!({
            "rule_id": ".m.rule.contains_display_name", "default": true, "enabled": true,
            "conditions": [{ "kind": "contains_display_name" }], "actions": highlight,
        });
        let at = rules.override_.iter().position(|r| r.rule_id == ".m.rule.is_user_mention").map_or(0, |i| i + 1);
        if let Ok(rule) = serde_json::from_value(rule) {
            rules.override_.shift_insert(at, rule);
        }
    }
}

/// A user id no event names, to evaluate the default rules once for every recipient an event
/// does not name.
fn anonymous_recipient(server: &ruma::ServerName) -> OwnedUserId {
    UserId::parse(format!("@_diplomatie_anyone:{server}")).expect("a valid user id")
}

/// The content of the `m.push_rules` account data event.
fn account_data_content(ruleset: &Ruleset) -> Value {
    json!({ "global": ruleset })
}

fn rule_error(e: impl std::fmt::Display, not_found: bool) -> Error {
    let kind = if not_found { ErrorKind::NotFound } else { ErrorKind::InvalidParam };
    Error::new(kind, e.to_string())
}

impl Push {
    /// A user's push rules.
    pub async fn push_rules(&self, user: &UserId) -> Result<Arc<Ruleset>> {
        Ok(self.custom_push_rules(user).await?.unwrap_or_else(|| Arc::new(default_rules(user))))
    }

    /// The user's rules when they changed any, `None` when they are the spec's defaults.
    async fn custom_push_rules(&self, user: &UserId) -> Result<Option<Arc<Ruleset>>> {
        if let Some(r) = self.state.rules.lock().unwrap().get(user) {
            return Ok(r.clone());
        }
        let stored = streams::get_account_data(self.db.pool(), user.as_str(), "", "m.push_rules").await?;
        let ruleset = stored
            .and_then(|json| serde_json::from_str::<Value>(&json).ok())
            .and_then(|v| serde_json::from_value::<Ruleset>(v.get("global")?.clone()).ok())
            .map(|mut rules| {
                with_server_rules(&mut rules, user);
                Arc::new(rules)
            });
        self.state.rules.lock().unwrap().put(user.to_owned(), ruleset.clone());
        Ok(ruleset)
    }

    /// The `m.push_rules` account data event of an initial `/sync` for a user who never
    /// changed a rule (the stored one comes with the rest of the account data).
    pub async fn default_push_rules_event(&self, user: &UserId) -> Result<Value> {
        Ok(json!({ "type": "m.push_rules", "content": account_data_content(&*self.push_rules(user).await?) }))
    }

    /// Applies `change` to the user's rules and stores the result.
    async fn edit_push_rules(&self, user: &UserId, change: impl FnOnce(&mut Ruleset) -> Result<()>) -> Result<()> {
        let _guard = self.state.edit.lock().await;
        let mut ruleset = (*self.push_rules(user).await?).clone();
        change(&mut ruleset)?;
        self.account_data.set(user, None, "m.push_rules", &account_data_content(&ruleset)).await?;
        self.state.rules.lock().unwrap().put(user.to_owned(), Some(Arc::new(ruleset)));
        Ok(())
    }

    /// What a user set for a room follows them into the room that replaced it (an upgrade):
    /// the room's push rule, its tags, its place in `m.direct` (as Synapse carries them).
    pub async fn follow_upgrade(&self, user: &UserId, old: &RoomId, new: &RoomId) -> Result<()> {
        let rules = self.push_rules(user).await?;
        if let Some(rule) = rules.room.iter().find(|r| r.rule_id == old) {
            let mut copy = rule.clone();
            copy.rule_id = new.to_owned();
            self.edit_push_rules(user, |rules| {
                rules.room.insert(copy);
                Ok(())
            })
            .await?;
        }
        if let Ok(tags) = self.account_data.get(user, Some(old), "m.tag").await {
            self.account_data.set(user, Some(new), "m.tag", &tags).await?;
        }
        if let Ok(mut direct) = self.account_data.get(user, None, "m.direct").await {
            let mut changed = false;
            for rooms in direct.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                if let Some(list) = rooms.as_array_mut() {
                    if list.iter().any(|r| r == old.as_str()) && !list.iter().any(|r| r == new.as_str()) {
                        list.push(json!(new));
                        changed = true;
                    }
                }
            }
            if changed {
                self.account_data.set(user, None, "m.direct", &direct).await?;
            }
        }
        Ok(())
    }

    /// Whether a room's state is an active crisis cell's.
    async fn active_cell(&self, state: &StateMap<OwnedEventId>) -> Result<bool> {
        let cell = self.rooms.state_event_in(state, &StateEventType::from(CRISIS_CELL), "").await?;
        Ok(cell.is_some_and(|p| p.content_value()["status"].as_str() == Some("active")))
    }

    /// `PUT /pushrules/global/{kind}/{ruleId}`.
    pub async fn set_push_rule(
        &self,
        user: &UserId,
        rule: NewPushRule,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<()> {
        self.edit_push_rules(user, |rules| {
            rules.insert(rule, after, before).map_err(|e| {
                let not_found = matches!(e, InsertPushRuleError::UnknownRuleId);
                rule_error(e, not_found)
            })
        })
        .await
    }

    /// `DELETE /pushrules/global/{kind}/{ruleId}`.
    pub async fn delete_push_rule(&self, user: &UserId, kind: RuleKind, rule_id: &str) -> Result<()> {
        fixed_rule(rule_id)?;
        self.edit_push_rules(user, |rules| {
            rules.remove(kind, rule_id).map_err(|e| {
                let not_found = matches!(e, RemovePushRuleError::NotFound);
                rule_error(e, not_found)
            })
        })
        .await
    }

    /// `PUT /pushrules/global/{kind}/{ruleId}/enabled`.
    pub async fn set_push_rule_enabled(
        &self,
        user: &UserId,
        kind: RuleKind,
        rule_id: &str,
        enabled: bool,
    ) -> Result<()> {
        fixed_rule(rule_id)?;
        self.edit_push_rules(user, |rules| {
            rules.set_enabled(kind, rule_id, enabled).map_err(|e: RuleNotFoundError| rule_error(e, true))
        })
        .await
    }

    /// `PUT /pushrules/global/{kind}/{ruleId}/actions`.
    pub async fn set_push_rule_actions(
        &self,
        user: &UserId,
        kind: RuleKind,
        rule_id: &str,
        actions: Vec<Action>,
    ) -> Result<()> {
        fixed_rule(rule_id)?;
        self.edit_push_rules(user, |rules| {
            rules.set_actions(kind, rule_id, actions).map_err(|e: RuleNotFoundError| rule_error(e, true))
        })
        .await
    }

    /// Evaluates the push rules of every local user an event may notify, for the events of a
    /// batch. `states` are the state maps the batch created (not in the caches yet);
    /// `new_rooms` the rooms it created (whose members are not in the caches either).
    pub(crate) async fn push_rows(
        &self,
        events: &[Arc<Pdu>],
        states: &[(i64, Arc<StateMap<OwnedEventId>>)],
        new_rooms: &HashSet<&RoomId>,
    ) -> Result<PushBatch> {
        let mut batch = PushBatch::default();
        let me = self.server_name();
        for pdu in events {
            let mut recipients: Vec<OwnedUserId> = Vec::new();
            let mut member_count = 0;
            if !new_rooms.contains(pdu.room()) {
                let joined = self.rooms.joined_members(pdu.room()).await?;
                member_count = joined.len();
                recipients.extend(joined.iter().filter(|u| **u != pdu.sender && u.server_name() == me).cloned());
            }
            // An invite notifies its invitee, who is not a member yet.
            let mut invitee = None;
            if pdu.kind == TimelineEventType::RoomMember && pdu.membership() == Some(MembershipState::Invite) {
                if let Some(target) = pdu.state_key.as_deref().and_then(|s| OwnedUserId::try_from(s).ok()) {
                    if target.server_name() == me && !recipients.contains(&target) {
                        recipients.push(target.clone());
                        invitee = Some(target);
                    }
                }
            }
            if recipients.is_empty() {
                continue;
            }
            let state = match states.iter().find(|(id, _)| *id == pdu.state_group) {
                Some((_, map)) => map.clone(),
                None => self.rooms.state_map(pdu.state_group).await?,
            };
            // An alert notifies (first rule) where it is a cell's alert: in an active cell,
            // whose power levels keep it to the coordinator. Elsewhere it notifies nobody.
            if pdu.kind.to_string() == CRISIS_ALERT && !self.active_cell(&state).await? {
                continue;
            }
            let event = FlattenedJson::from_raw(&pdu.to_raw::<Value>(true));
            let power_levels = self.push_power_levels(pdu.room(), &state).await?;
            let mut ctx = PushConditionRoomCtx::new(
                pdu.room_id.clone(),
                UInt::new_saturating(member_count as u64),
                pdu.sender.clone(),
                String::new(),
            )
            .with_power_levels(power_levels);
            let thread_id = pdu
                .content_field("m.relates_to")
                .filter(|rel| rel.get("rel_type").and_then(Value::as_str) == Some("m.thread"))
                .and_then(|rel| rel.get("event_id").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| "main".to_owned());
            let row = |user_id: String, outcome: Option<(bool, String)>| PushRow {
                user_id,
                room_id: pdu.room_id.to_string(),
                event_id: pdu.event_id.to_string(),
                sender: pdu.sender.to_string(),
                stream_ordering: pdu.stream_ordering,
                thread_id: thread_id.clone(),
                notify: outcome.is_some(),
                highlight: outcome.as_ref().is_some_and(|o| o.0),
                actions: outcome.map(|o| o.1).unwrap_or_default(),
                ts: pdu.origin_server_ts.get().into(),
            };
            // Members with the default rules whom the event does not name (no mention, not the
            // target of a membership) all get the same outcome: computed and written once.
            let (anyone, anyones_rules) = self.state.anyone.get_or_init(|| {
                let anyone = anonymous_recipient(me);
                let rules = default_rules(&anyone);
                (anyone, rules)
            });
            ctx.user_id = anyone.clone();
            // A display name no body holds (an empty one would match an empty body).
            ctx.user_display_name = anyone.to_string();
            let default = evaluate(anyones_rules, &event, &ctx).await?;
            // Without `m.mentions`, the legacy rules match a member's localpart or display name
            // in the body: such members are named too (the rules then decide, word by word).
            let legacy_body = match pdu.content_field("m.mentions") {
                Some(_) => None,
                None => pdu.content_field("body").and_then(|b| b.as_str().map(str::to_lowercase)),
            };
            for user in recipients {
                let custom = self.custom_push_rules(&user).await?;
                let mut named = pdu.json.contains(user.as_str());
                if let (false, Some(body)) = (named, &legacy_body) {
                    named = body.contains(&user.localpart().to_lowercase())
                        || body.contains(&self.display_name_in(&state, &user).await?.to_lowercase());
                }
                if custom.is_none() && !named {
                    continue;
                }
                let rules = custom.unwrap_or_else(|| Arc::new(default_rules(&user)));
                ctx.user_display_name = self.display_name_in(&state, &user).await?;
                ctx.user_id = user.clone();
                let outcome = evaluate(&rules, &event, &ctx).await?;
                // The default covers joined members only: an invitee's notification is their own.
                let member = invitee.as_ref() != Some(&user);
                if outcome != default || !member && outcome.is_some() {
                    batch.own.push(row(user.to_string(), outcome));
                }
            }
            if default.is_some() {
                batch.defaults.push(row(String::new(), default));
            }
        }
        Ok(batch)
    }

    /// Writes a batch's notifications into its transaction.
    pub(crate) async fn write_push_rows(
        &self,
        tx: &mut diplomatie_storage::Connection,
        batch: &PushBatch,
    ) -> Result<()> {
        let defaults: Vec<NewPushDefault<'_>> = batch
            .defaults
            .iter()
            .map(|r| NewPushDefault {
                room_id: &r.room_id,
                stream_ordering: r.stream_ordering,
                event_id: &r.event_id,
                sender: &r.sender,
                thread_id: &r.thread_id,
                highlight: r.highlight,
                actions: &r.actions,
                ts: r.ts,
            })
            .collect();
        store::insert_push_defaults(tx, &defaults).await?;
        let own: Vec<NewPushAction<'_>> = batch
            .own
            .iter()
            .map(|r| NewPushAction {
                user_id: &r.user_id,
                room_id: &r.room_id,
                event_id: &r.event_id,
                stream_ordering: r.stream_ordering,
                thread_id: &r.thread_id,
                notify: r.notify,
                highlight: r.highlight,
                actions: &r.actions,
                ts: r.ts,
            })
            .collect();
        store::insert_push_actions(tx, &own).await?;
        Ok(())
    }

    /// The rooms whose members a batch's default outcomes notify, with those members.
    pub(crate) async fn notified_members(
        &self,
        batch: &PushBatch,
    ) -> Result<HashMap<String, Arc<HashSet<OwnedUserId>>>> {
        let mut rooms = HashMap::new();
        for row in &batch.defaults {
            if !rooms.contains_key(&row.room_id) {
                let Ok(room) = <&RoomId>::try_from(row.room_id.as_str()) else { continue };
                rooms.insert(row.room_id.clone(), self.rooms.joined_members(room).await?);
            }
        }
        Ok(rooms)
    }

    /// After the commit of a batch: wakes the pusher worker if a notified user has a pusher.
    pub(crate) fn notifications_committed(
        &self,
        batch: &PushBatch,
        members: &HashMap<String, Arc<HashSet<OwnedUserId>>>,
    ) {
        let pushers = self.state.pushers.lock().unwrap();
        if pushers.is_empty() {
            return;
        }
        let own = batch.own.iter().any(|r| r.notify && pushers.contains_key(&r.user_id));
        let shared = || {
            pushers.keys().any(|u| {
                let Ok(user) = <&UserId>::try_from(u.as_str()) else { return false };
                batch.defaults.iter().any(|r| members.get(&r.room_id).is_some_and(|m| m.contains(user)))
            })
        };
        if own || shared() {
            self.state.wake.notify_one();
        }
    }

    /// The display name a user has in a room's state (for `.m.rule.contains_display_name`).
    async fn display_name_in(&self, state: &StateMap<OwnedEventId>, user: &UserId) -> Result<String> {
        let member = self.rooms.state_event_in(state, &StateEventType::RoomMember, user.as_str()).await?;
        Ok(member
            .and_then(|m| m.content_field("displayname"))
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| user.localpart().to_owned()))
    }

    /// The power levels the push conditions need (`sender_notification_permission`).
    async fn push_power_levels(
        &self,
        room_id: &RoomId,
        state: &StateMap<OwnedEventId>,
    ) -> Result<PushConditionPowerLevelsCtx> {
        use ruma::events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsSource};
        let rules = match self.rooms.room_meta(room_id).await? {
            Some(meta) => meta.rules(),
            None => ruma::RoomVersionId::V12.rules().ok_or_else(crate::internal!("a value present by construction"))?,
        };
        let content = match self.rooms.state_event_in(state, &StateEventType::RoomPowerLevels, "").await? {
            Some(p) => serde_json::from_value::<RoomPowerLevelsEventContent>(p.content_value()).ok(),
            None => None,
        };
        let mut creators = Vec::new();
        if let Some(create) = self.rooms.state_event_in(state, &StateEventType::RoomCreate, "").await? {
            creators.push(create.sender.clone());
            if let Some(extra) = create.content_field("additional_creators").and_then(|v| v.as_array().cloned()) {
                creators.extend(extra.iter().filter_map(|u| u.as_str().and_then(|s| OwnedUserId::try_from(s).ok())));
            }
        }
        let source = content.map(RoomPowerLevelsSource::Original).unwrap_or_default();
        let levels = RoomPowerLevels::new(source, &rules.authorization, creators);
        Ok(levels.into())
    }

    /// A room's unread notifications for `/sync`: after the user's read receipt (for threads,
    /// after the unthreaded receipt or the thread's own).
    pub async fn unread_counts(&self, user: &UserId, room_id: &RoomId, by_thread: bool) -> Result<UnreadCounts> {
        let key = (user.to_owned(), room_id.to_owned());
        let (applied, generation) = {
            let mut cache = self.state.unread.lock().unwrap();
            if let Some(entry) = cache.entries.get(&key) {
                return Ok(entry.counts(by_thread));
            }
            (cache.applied, cache.generation)
        };
        // Every notification up to the published position is committed (a batch publishes its
        // positions after its commit), and so is every one up to `applied` (a batch is applied
        // after its commit, before it publishes): counting up to the later of the two misses
        // none that the cache has seen, and a batch applied after this point changes `applied`.
        let up_to = applied.max(self.stream_position());
        let entry = self.count_unread(user, room_id, up_to).await?;
        let counts = entry.counts(by_thread);
        let mut cache = self.state.unread.lock().unwrap();
        if cache.applied == applied && cache.generation == generation {
            cache.entries.put(key, Arc::new(entry));
        }
        Ok(counts)
    }

    /// Counts a room's unread notifications up to `up_to` from the database.
    async fn count_unread(&self, user: &UserId, room_id: &RoomId, up_to: i64) -> Result<RoomUnread> {
        let read: HashMap<String, i64> =
            store::read_positions(self.db.pool(), user.as_str(), room_id.as_str()).await?.into_iter().collect();
        let unthreaded = read.get("").copied().unwrap_or(0);
        let joined_at = self.join_position(user, room_id).await?;
        let scan = Scan { after: unthreaded, before: up_to.saturating_add(1), newest_first: false, limit: 100_000 };
        let room = room_id.to_string();
        let found = self.merged_notifications(user, &[(room.clone(), joined_at)], Some(&room), scan).await?;
        let mut threads: HashMap<String, (u64, u64)> = HashMap::new();
        for n in found.into_iter().filter(|n| n.stream_ordering > read.get(&n.thread_id).copied().unwrap_or(0)) {
            let counts = threads.entry(n.thread_id).or_insert((0, 0));
            counts.0 += 1;
            counts.1 += u64::from(n.highlight);
        }
        Ok(RoomUnread { threads })
    }

    /// The position at which a user joined a room (`None` when not joined).
    async fn join_position(&self, user: &UserId, room_id: &RoomId) -> Result<Option<i64>> {
        let member = self.rooms.state_event(room_id, &StateEventType::RoomMember, user.as_str()).await?;
        Ok(member.filter(|m| m.membership() == Some(MembershipState::Join)).map(|m| m.stream_ordering))
    }

    /// A user's notifications within `scan`: the default outcomes of events in `rooms` (each
    /// with the position the user joined it at) sent after the join by someone else, merged
    /// with the user's own outcomes (which win) in `only_room` or in every room (invites
    /// included). At most `scan.limit`, and never a gap: a scan cut short by its limit stops
    /// where it is complete.
    async fn merged_notifications(
        &self,
        user: &UserId,
        rooms: &[(String, Option<i64>)],
        only_room: Option<&str>,
        scan: Scan,
    ) -> Result<Vec<Notification>> {
        let joined: HashMap<&str, i64> = rooms.iter().filter_map(|(r, at)| at.map(|at| (r.as_str(), at))).collect();
        let ids: Vec<&str> = joined.keys().copied().collect();
        let mut conn = self.db.acquire().await?;
        let defaults = store::default_notifications(&mut conn, &ids, scan).await?;
        drop(conn);
        let own = store::user_notifications(self.db.pool(), user.as_str(), only_room, scan).await?;
        // Where a source was cut short by the limit, only what lies before its last row is
        // complete.
        let cut = |rows: &[store::PushAction]| {
            (rows.len() as i64 >= scan.limit).then(|| rows.last().map(|r| r.stream_ordering)).flatten()
        };
        let horizon = [cut(&defaults), cut(&own)].into_iter().flatten().reduce(|a, b| {
            if scan.newest_first {
                a.max(b)
            } else {
                a.min(b)
            }
        });
        let complete = |p: i64| horizon.is_none_or(|h| if scan.newest_first { p >= h } else { p <= h });
        let mut merged: BTreeMap<i64, Notification> = BTreeMap::new();
        let as_notification = |r: store::PushAction| Notification {
            room_id: r.room_id,
            event_id: r.event_id,
            stream_ordering: r.stream_ordering,
            thread_id: r.thread_id,
            highlight: r.highlight,
            actions: r.actions,
            ts: r.ts,
        };
        for d in defaults {
            let after_join = joined.get(d.room_id.as_str()).is_some_and(|at| d.stream_ordering > *at);
            if after_join && d.sender != user.as_str() && complete(d.stream_ordering) {
                merged.insert(d.stream_ordering, as_notification(d));
            }
        }
        for o in own {
            if !complete(o.stream_ordering) {
                continue;
            }
            if o.notify {
                merged.insert(o.stream_ordering, as_notification(o));
            } else {
                merged.remove(&o.stream_ordering);
            }
        }
        let mut list: Vec<Notification> = merged.into_values().collect();
        if scan.newest_first {
            list.reverse();
        }
        list.truncate(scan.limit as usize);
        Ok(list)
    }

    /// Where the user has read a notification's thread up to: the unthreaded receipt, or the
    /// thread's own when later. Each room's receipts are read once into `cache`.
    async fn read_up_to(
        &self,
        user: &UserId,
        n: &Notification,
        cache: &mut HashMap<String, HashMap<String, i64>>,
    ) -> Result<i64> {
        if !cache.contains_key(&n.room_id) {
            let positions = store::read_positions(self.db.pool(), user.as_str(), &n.room_id).await?;
            cache.insert(n.room_id.clone(), positions.into_iter().collect());
        }
        let receipts = &cache[&n.room_id];
        let at = |thread: &str| receipts.get(thread).copied().unwrap_or(0);
        Ok(at("").max(at(&n.thread_id)))
    }

    /// A user's notifications in all their rooms within `scan`, paging past the ones the merge
    /// drops until `scan.limit` are found or there are no more.
    async fn user_notifications(&self, user: &UserId, mut scan: Scan) -> Result<Vec<Notification>> {
        let mut rooms = Vec::new();
        for room in crate::rooms::joined_rooms(self, user).await? {
            let at = self.join_position(user, &room).await?;
            rooms.push((room.to_string(), at));
        }
        let wanted = scan.limit as usize;
        let mut out: Vec<Notification> = Vec::new();
        loop {
            let page = self.merged_notifications(user, &rooms, None, scan).await?;
            let Some(last) = page.last().map(|n| n.stream_ordering) else { return Ok(out) };
            out.extend(page);
            if out.len() >= wanted {
                out.truncate(wanted);
                return Ok(out);
            }
            if scan.newest_first {
                scan.before = last;
            } else {
                scan.after = last;
            }
        }
    }

    /// After a batch's commit, under the writer lock: adds its notifications to the cached
    /// counts; `position` is the batch's last stream position and `members` the members of
    /// the rooms its default outcomes notify.
    pub(crate) fn unread_committed(
        &self,
        batch: &PushBatch,
        members: &HashMap<String, Arc<HashSet<OwnedUserId>>>,
        memberships: &[(OwnedUserId, ruma::OwnedRoomId)],
        position: i64,
    ) {
        let mut cache = self.state.unread.lock().unwrap();
        let own: HashSet<(&str, i64)> = batch.own.iter().map(|r| (r.user_id.as_str(), r.stream_ordering)).collect();
        let add = |cache: &mut UnreadCache, key: (OwnedUserId, ruma::OwnedRoomId), row: &PushRow| {
            if let Some(entry) = cache.entries.get_mut(&key) {
                let counts = Arc::make_mut(entry).threads.entry(row.thread_id.clone()).or_insert((0, 0));
                counts.0 += 1;
                counts.1 += u64::from(row.highlight);
            }
        };
        for row in &batch.defaults {
            let Ok(room) = ruma::OwnedRoomId::try_from(row.room_id.as_str()) else { continue };
            for user in members.get(&row.room_id).into_iter().flat_map(|m| m.iter()) {
                if user.as_str() != row.sender && !own.contains(&(user.as_str(), row.stream_ordering)) {
                    add(&mut cache, (user.clone(), room.clone()), row);
                }
            }
        }
        for row in batch.own.iter().filter(|r| r.notify) {
            if let (Ok(user), Ok(room)) = (OwnedUserId::try_from(row.user_id.as_str()), row.room_id.parse()) {
                add(&mut cache, (user, room), row);
            }
        }
        // A membership change moves the join position the counts start from.
        for key in memberships {
            cache.entries.pop(key);
        }
        if !memberships.is_empty() {
            cache.generation += 1;
        }
        cache.applied = cache.applied.max(position);
    }

    /// After a receipt's commit: the room's counts are computed again when next asked for.
    pub(crate) fn unread_receipt(&self, user: &UserId, room_id: &RoomId) {
        {
            let mut cache = self.state.unread.lock().unwrap();
            cache.entries.pop(&(user.to_owned(), room_id.to_owned()));
            cache.generation += 1;
        }
        // The user's devices may show another badge now: the pusher worker sees to it.
        let keys: Vec<PusherKey> = match self.state.pushers.lock().unwrap().get(user.as_str()) {
            Some(list) => list.iter().map(|p| (p.app_id.clone(), p.pushkey.clone(), p.user_id.clone())).collect(),
            None => return,
        };
        self.state.badges.lock().unwrap().0.extend(keys);
        self.state.wake.notify_one();
    }

    /// `GET /notifications`: newest first, `from` being the token of the previous page.
    pub async fn notifications(
        &self,
        user: &UserId,
        from: Option<&str>,
        limit: Option<usize>,
        only_highlight: bool,
    ) -> Result<(Vec<Listed>, Option<String>)> {
        let before = match from {
            Some(t) => t.parse::<i64>().map_err(|_| Error::invalid_param("Unknown pagination token"))?,
            None => i64::MAX,
        };
        let limit = limit.unwrap_or(20).clamp(1, 100);
        let mut out = Vec::new();
        let mut next = None;
        let mut receipts = HashMap::new();
        let mut cursor = before;
        'pages: loop {
            let scan = Scan { after: 0, before: cursor, newest_first: true, limit: limit as i64 + 1 };
            let rows = self.user_notifications(user, scan).await?;
            let exhausted = (rows.len() as i64) < scan.limit;
            for row in rows {
                cursor = row.stream_ordering;
                if only_highlight && !row.highlight {
                    continue;
                }
                if out.len() == limit {
                    next = Some(out.last().map(|(p, _): &(i64, Listed)| p.to_string()).unwrap_or_default());
                    break 'pages;
                }
                let Ok(event_id) = OwnedEventId::try_from(row.event_id.as_str()) else { continue };
                let Some(pdu) = self.rooms.get_pdu(&event_id).await? else { continue };
                let read_up_to = self.read_up_to(user, &row, &mut receipts).await?;
                let actions: Vec<Action> = serde_json::from_str(&row.actions).unwrap_or_default();
                let ts = MilliSecondsSinceUnixEpoch(UInt::try_from(row.ts).unwrap_or_default());
                let entry =
                    Listed::new(actions, pdu.to_raw(false), row.stream_ordering <= read_up_to, pdu.room_id.clone(), ts);
                out.push((row.stream_ordering, entry));
            }
            if exhausted {
                break;
            }
        }
        Ok((out.into_iter().map(|(_, v)| v).collect(), next))
    }

    /// `GET /pushers`.
    pub fn pushers(&self, user: &UserId) -> Vec<Pusher> {
        let pushers = self.state.pushers.lock().unwrap();
        pushers.get(user.as_str()).map(|list| list.iter().filter_map(typed_pusher).collect()).unwrap_or_default()
    }

    /// `POST /pushers/set` with a pusher: creates or replaces it. Without `append`, the same
    /// app id and push key of other users are removed (the spec's default).
    pub async fn set_pusher(&self, user: &UserId, device: Option<&str>, pusher: &Value, append: bool) -> Result<()> {
        let text = |k: &str| pusher.get(k).and_then(Value::as_str).map(str::to_owned);
        let required = |k: &str| text(k).ok_or_else(|| Error::missing_param(format!("Missing {k}")));
        let app_id = required("app_id")?;
        let pushkey = required("pushkey")?;
        let kind = required("kind")?;
        if app_id.len() > 64 {
            return Err(Error::invalid_param("app_id is longer than 64 characters"));
        }
        if pushkey.len() > 512 {
            return Err(Error::invalid_param("pushkey is longer than 512 bytes"));
        }
        if kind != "http" {
            return Err(Error::invalid_param(format!("Pushers of kind {kind:?} are not supported: use http")));
        }
        let data = pusher.get("data").cloned().unwrap_or(json!({}));
        let url = data
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::missing_param("http pushers need data.url"))?;
        let parsed = url::Url::parse(url).map_err(|e| Error::invalid_param(format!("data.url: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.path() != "/_matrix/push/v1/notify" {
            return Err(Error::invalid_param("data.url must be an http(s) URL ending in /_matrix/push/v1/notify"));
        }
        let row = store::Pusher {
            user_id: user.to_string(),
            device_id: device.map(str::to_owned),
            kind,
            app_id,
            pushkey,
            app_display_name: required("app_display_name")?,
            device_display_name: required("device_display_name")?,
            profile_tag: text("profile_tag"),
            lang: required("lang")?,
            data: data.to_string(),
            created_ts: now_ms(),
            // Only what happens from now on is pushed.
            last_stream_ordering: self.stream_position(),
        };
        let mut tx = self.db.begin().await?;
        if !append {
            store::delete_pushers(&mut *tx, &row.app_id, &row.pushkey, user.as_str(), true).await?;
        }
        store::upsert_pusher(&mut *tx, &row).await?;
        diplomatie_storage::commit(tx).await?;
        self.pushers_changed().await
    }

    /// `POST /pushers/set` with `kind: null`: deletes the user's pusher.
    pub async fn delete_pusher(&self, user: &UserId, app_id: &str, pushkey: &str) -> Result<()> {
        store::delete_pushers(self.db.pool(), app_id, pushkey, user.as_str(), false).await?;
        self.pushers_changed().await
    }

    /// Reloads the pushers after a change of the table.
    pub(crate) async fn pushers_changed(&self) -> Result<()> {
        let mut by_user: HashMap<String, Vec<store::Pusher>> = HashMap::new();
        for p in store::all_pushers(self.db.pool()).await? {
            by_user.entry(p.user_id.clone()).or_default().push(p);
        }
        *self.state.pushers.lock().unwrap() = by_user;
        self.state.wake.notify_one();
        Ok(())
    }
}

/// A stored pusher as `GET /pushers` lists it (only http pushers are accepted).
fn typed_pusher(p: &store::Pusher) -> Option<Pusher> {
    let data: HttpPusherData = serde_json::from_str(&p.data)
        .inspect_err(|e| tracing::error!(app_id = %p.app_id, "stored pusher data unreadable: {e}"))
        .ok()?;
    Some(Pusher::from(PusherInit {
        ids: PusherIds::new(p.pushkey.clone(), p.app_id.clone()),
        kind: PusherKind::Http(data),
        app_display_name: p.app_display_name.clone(),
        device_display_name: p.device_display_name.clone(),
        profile_tag: p.profile_tag.clone(),
        lang: p.lang.clone(),
    }))
}

/// Starts the worker that delivers notifications to push gateways.
pub fn spawn_pusher_worker(services: Weak<Push>) {
    tokio::spawn(async move {
        // Pushers whose gateway failed: when to try again, and the last wait.
        let mut backoff: HashMap<(String, String, String), (tokio::time::Instant, Duration)> = HashMap::new();
        let mut in_flight: HashSet<(String, String, String)> = HashSet::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<((String, String, String), bool)>();
        loop {
            let Some(s) = services.upgrade() else { return };
            let now = tokio::time::Instant::now();
            let pushers: Vec<store::Pusher> = s.state.pushers.lock().unwrap().values().flatten().cloned().collect();
            let mut next_retry: Option<tokio::time::Instant> = None;
            for p in pushers {
                let key = (p.app_id.clone(), p.pushkey.clone(), p.user_id.clone());
                if in_flight.contains(&key) {
                    continue;
                }
                if let Some((at, _)) = backoff.get(&key) {
                    if *at > now {
                        next_retry = Some(next_retry.map_or(*at, |n| n.min(*at)));
                        continue;
                    }
                }
                in_flight.insert(key.clone());
                let (s, done) = (s.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let ok = s.deliver(&p).await.unwrap_or(false);
                    let _ = done.send((key, ok));
                });
            }
            let max_backoff = Duration::from_millis(s.config.push.max_backoff_ms.max(1));
            // Only the signal is held while waiting, not the services.
            let wake = s.state.wake.clone();
            drop(s);
            let sleep_until = next_retry.unwrap_or_else(|| now + Duration::from_secs(3600));
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(sleep_until) => {}
                Some((key, ok)) = done_rx.recv() => {
                    in_flight.remove(&key);
                    if ok {
                        backoff.remove(&key);
                    } else {
                        let wait = backoff.get(&key).map_or(Duration::from_millis(500), |(_, w)| (*w * 2).min(max_backoff));
                        backoff.insert(key, (tokio::time::Instant::now() + wait, wait));
                    }
                }
            }
        }
    });
}

impl Push {
    /// Sends a pusher's pending notifications to its gateway, oldest first. False when the
    /// gateway could not be reached or failed (the worker retries later).
    async fn deliver(&self, p: &store::Pusher) -> Result<bool> {
        let data: Value = serde_json::from_str(&p.data).unwrap_or(json!({}));
        let Some(url) = data.get("url").and_then(Value::as_str).and_then(|u| reqwest::Url::parse(u).ok()) else {
            return Ok(true);
        };
        let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
        let mut device_data = data.clone();
        if let Some(o) = device_data.as_object_mut() {
            o.remove("url");
        }
        let client = self.push_client()?;
        loop {
            let user = OwnedUserId::try_from(p.user_id.as_str()).map_err(crate::internal!())?;
            let scan = Scan { after: p_position(self, p), before: i64::MAX, newest_first: false, limit: 20 };
            let pending = self.user_notifications(&user, scan).await?;
            let key: PusherKey = (p.app_id.clone(), p.pushkey.clone(), p.user_id.clone());
            if pending.is_empty() {
                return self.send_badge(p, &key, &user, &url, &device_data).await;
            }
            // The badge and the receipts, once for the page.
            let unread = self.total_unread(&user).await?;
            self.state.badges.lock().unwrap().1.insert(key, unread);
            let mut receipts = HashMap::new();
            for n in pending {
                let still_there = self
                    .state
                    .pushers
                    .lock()
                    .unwrap()
                    .get(&p.user_id)
                    .is_some_and(|l| l.iter().any(|q| q.app_id == p.app_id && q.pushkey == p.pushkey));
                if !still_there {
                    return Ok(true);
                }
                let read = n.stream_ordering <= self.read_up_to(&user, &n, &mut receipts).await?;
                let body = if read {
                    None
                } else {
                    self.gateway_notification(&user, &n, unread, p, &device_data, event_id_only).await?
                };
                if let Some(body) = body {
                    let response = match client.post(url.clone()).json(&body).send().await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e, app_id = %p.app_id, "push gateway unreachable");
                            self.metrics.push_deliveries.with_label_values(&["failed"]).inc();
                            return Ok(false);
                        }
                    };
                    if !response.status().is_success() {
                        tracing::warn!(status = %response.status(), app_id = %p.app_id, "push gateway failed");
                        self.metrics.push_deliveries.with_label_values(&["failed"]).inc();
                        return Ok(false);
                    }
                    self.metrics.push_deliveries.with_label_values(&["sent"]).inc();
                    let answer: Value = response.json().await.unwrap_or(json!({}));
                    let rejected = answer.get("rejected").and_then(Value::as_array);
                    if rejected.is_some_and(|r| r.iter().any(|k| k.as_str() == Some(p.pushkey.as_str()))) {
                        // The gateway no longer knows this device: the spec says to drop it.
                        self.delete_pusher(&user, &p.app_id, &p.pushkey).await?;
                        return Ok(true);
                    }
                }
                store::set_pusher_position(self.db.pool(), &p.app_id, &p.pushkey, &p.user_id, n.stream_ordering)
                    .await?;
                self.set_cached_pusher_position(p, n.stream_ordering);
            }
        }
    }

    /// Sends the pusher its badge alone (a notification with counts only) when a receipt
    /// asked for it and it differs from the last one sent. False when the gateway failed.
    async fn send_badge(
        &self,
        p: &store::Pusher,
        key: &PusherKey,
        user: &UserId,
        url: &reqwest::Url,
        device_data: &Value,
    ) -> Result<bool> {
        if !self.state.badges.lock().unwrap().0.remove(key) {
            return Ok(true);
        }
        let unread = self.total_unread(user).await?;
        if self.state.badges.lock().unwrap().1.get(key) == Some(&unread) {
            return Ok(true);
        }
        let body = json!({ "notification": {
            "counts": { "unread": unread },
            "devices": [gateway_device(p, device_data)],
        }});
        let sent = match self.push_client()?.post(url.clone()).json(&body).send().await {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                tracing::warn!(status = %r.status(), app_id = %p.app_id, "push gateway failed a badge");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, app_id = %p.app_id, "push gateway unreachable");
                false
            }
        };
        let mut badges = self.state.badges.lock().unwrap();
        if sent {
            badges.1.insert(key.clone(), unread);
        } else {
            badges.0.insert(key.clone());
        }
        Ok(sent)
    }

    fn push_client(&self) -> Result<&crate::outbound::Client> {
        if let Some(c) = self.state.client.get() {
            return Ok(c);
        }
        let allowed =
            crate::outbound::parse_allowlist("push.ip_range_allowlist", &self.config.push.ip_range_allowlist)?;
        let client = crate::outbound::client_with(
            &self.config.outbound,
            allowed,
            Duration::from_millis(self.config.push.timeout_ms),
            "push",
            self.config.push.keep_alive,
        )?;
        Ok(self.state.client.get_or_init(|| client))
    }

    fn set_cached_pusher_position(&self, p: &store::Pusher, position: i64) {
        let mut pushers = self.state.pushers.lock().unwrap();
        if let Some(list) = pushers.get_mut(&p.user_id) {
            for q in list.iter_mut().filter(|q| q.app_id == p.app_id && q.pushkey == p.pushkey) {
                q.last_stream_ordering = q.last_stream_ordering.max(position);
            }
        }
    }

    /// The body of `POST /_matrix/push/v1/notify` for one notification (push gateway spec).
    async fn gateway_notification(
        &self,
        user: &UserId,
        n: &Notification,
        unread: u64,
        p: &store::Pusher,
        device_data: &Value,
        event_id_only: bool,
    ) -> Result<Option<Value>> {
        let Ok(event_id) = OwnedEventId::try_from(n.event_id.as_str()) else { return Ok(None) };
        let Some(pdu) = self.rooms.get_pdu(&event_id).await? else { return Ok(None) };
        let actions: Vec<Action> = serde_json::from_str(&n.actions).unwrap_or_default();
        let mut tweaks = serde_json::Map::new();
        for action in &actions {
            if let Action::SetTweak(tweak) = action {
                match tweak {
                    Tweak::Sound(s) => {
                        tweaks.insert("sound".into(), json!(s));
                    }
                    Tweak::Highlight(h) => {
                        let on = matches!(h, ruma::push::HighlightTweakValue::Yes);
                        tweaks.insert("highlight".into(), json!(on));
                    }
                    _ => {}
                }
            }
        }
        let mut notification = json!({
            "event_id": pdu.event_id,
            // The name push gateways read before the spec's `event_id` (Synapse sends both).
            "id": pdu.event_id,
            "room_id": pdu.room_id,
            "prio": if n.highlight { "high" } else { "low" },
            "counts": { "unread": unread },
            "devices": [gateway_device(p, device_data)],
        });
        notification["devices"][0]["tweaks"] = Value::Object(tweaks);
        if !event_id_only {
            notification["type"] = json!(pdu.kind);
            notification["sender"] = json!(pdu.sender);
            notification["content"] = pdu.content_value();
            let state = self.rooms.current_state(pdu.room()).await?;
            let sender_name = self.display_name_in(&state, &pdu.sender).await?;
            notification["sender_display_name"] = json!(sender_name);
            // The room's name, else its canonical alias, as Synapse names rooms in pushes.
            let name = match self.rooms.state_event_in(&state, &StateEventType::RoomName, "").await? {
                Some(e) => e.content_field("name").filter(|n| n.as_str().is_some_and(|n| !n.is_empty())),
                None => None,
            };
            let name = match name {
                Some(name) => Some(name),
                None => self
                    .rooms
                    .state_event_in(&state, &StateEventType::RoomCanonicalAlias, "")
                    .await?
                    .and_then(|e| e.content_field("alias")),
            };
            // A room this server is not in (an invite over federation): what the inviter showed.
            let name = name.or_else(|| {
                let shown = pdu.unsigned.get("invite_room_state")?.as_array()?;
                let of = |kind: &str, field: &str| {
                    shown.iter().find(|e| e["type"] == kind).and_then(|e| e["content"].get(field)).cloned()
                };
                of("m.room.name", "name")
                    .filter(|n| n.as_str().is_some_and(|n| !n.is_empty()))
                    .or_else(|| of("m.room.canonical_alias", "alias"))
            });
            if let Some(name) = name {
                notification["room_name"] = name;
            }
            if pdu.kind == TimelineEventType::RoomMember {
                notification["user_is_target"] = json!(pdu.state_key.as_deref() == Some(user.as_str()));
                if let Some(membership) = pdu.content_field("membership") {
                    notification["membership"] = membership;
                }
            }
        }
        Ok(Some(json!({ "notification": notification })))
    }
}

impl Push {
    /// The unread notifications of a user in all rooms, and the invites waiting (the badge a
    /// push carries, as Synapse counts it).
    async fn total_unread(&self, user: &UserId) -> Result<u64> {
        let invites = self.memberships_of(user).await?.iter().filter(|(_, m)| *m == MembershipState::Invite).count();
        let mut total = invites as u64;
        for room in crate::rooms::joined_rooms(self, user).await? {
            let counts = self.unread_counts(user, &room, false).await?;
            total += counts.notifications;
        }
        Ok(total)
    }
}

/// The device a push is for, as its gateway knows it (push gateway spec, `devices`).
fn gateway_device(p: &store::Pusher, device_data: &Value) -> Value {
    json!({
        "app_id": p.app_id,
        "pushkey": p.pushkey,
        "pushkey_ts": p.created_ts / 1000,
        "data": device_data,
    })
}

/// A pusher's delivery position, as the cache knows it (ahead of the copy a task started with).
fn p_position(s: &Push, p: &store::Pusher) -> i64 {
    s.state
        .pushers
        .lock()
        .unwrap()
        .get(&p.user_id)
        .and_then(|l| l.iter().find(|q| q.app_id == p.app_id && q.pushkey == p.pushkey))
        .map_or(p.last_stream_ordering, |q| q.last_stream_ordering)
}

/// The notifications of each batch, written in its transaction: no `/sync` ever sees an event
/// without them (a commit subscriber).
pub(crate) struct NotificationRows(pub(crate) Weak<Push>);

struct PreparedNotifications {
    push: Arc<Push>,
    rows: PushBatch,
    notified: HashMap<String, Arc<HashSet<OwnedUserId>>>,
}

impl commit::RowsSubscriber for NotificationRows {
    fn prepare<'a>(&'a self, batch: &'a commit::Batch<'a>) -> commit::Preparing<'a> {
        Box::pin(async move {
            let push = crate::upgrade(&self.0)?;
            let rows = push.push_rows(batch.events, batch.states, batch.created).await?;
            let notified = push.notified_members(&rows).await?;
            Ok(Box::new(PreparedNotifications { push, rows, notified }) as Box<dyn commit::Rows>)
        })
    }
}

impl commit::Rows for PreparedNotifications {
    fn write<'a>(&'a self, tx: &'a mut commit::Transaction) -> commit::Writing<'a> {
        Box::pin(self.push.write_push_rows(tx, &self.rows))
    }

    fn committed(&self, at: &commit::Committed<'_>) {
        self.push.unread_committed(&self.rows, &self.notified, at.memberships, at.position);
    }

    fn published(&self) {
        self.push.notifications_committed(&self.rows, &self.notified);
    }
}
