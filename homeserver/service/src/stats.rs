//! The portal's dashboards' figures (`/_diplomatie/admin/v1/stats/...`): for each functional
//! group and community, its members, its activity per day (messages, members who wrote), the
//! correspondence it sent (with the audience it reached) and received, and its journal's backlog
//! (action items new, assigned, done); for administrators, the server's health. Administrators
//! see every group and community, managers (power 100 in its space) only theirs.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use diplomatie_storage::stats as store;
use ruma::{OwnedRoomId, RoomId, UserId};
use serde::Serialize;
use serde_json::Value;

use crate::{
    core::Core, correspondence::Correspondence, now_ms, organisation::Organisation, rooms::Rooms, Error, Result,
};

const DAY_MS: i64 = 86_400_000;

pub struct Stats {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    organisation: Arc<Organisation>,
    correspondence: Arc<Correspondence>,
    started: Instant,
}

crate::core::over_core!(Stats);

/// One day's activity.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Day {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub messages: i64,
    /// Members who wrote that day.
    pub active_members: i64,
}

#[derive(Serialize, Debug, Default)]
pub struct CorrespondenceFigures {
    pub sent: usize,
    pub received: i64,
    /// Readers the correspondence it sent reached (its audience, summed).
    pub readers: u64,
}

#[derive(Serialize, Debug, Default)]
pub struct Backlog {
    pub new: i64,
    pub assigned: i64,
    pub done: i64,
}

/// A group's or community's figures.
#[derive(Serialize, Debug)]
pub struct Unit {
    pub slug: String,
    pub name: String,
    /// `functional_group` or `community`.
    pub kind: String,
    pub space_id: OwnedRoomId,
    pub members: usize,
    pub managers: Vec<String>,
    pub messages: i64,
    /// One entry per day of the period, the days without activity included.
    pub activity: Vec<Day>,
    pub correspondence: CorrespondenceFigures,
    pub journal: Backlog,
}

/// `GET /_diplomatie/admin/v1/stats/units?days=`.
#[derive(Serialize, Debug)]
pub struct Units {
    pub since_ts: i64,
    pub days: u32,
    pub units: Vec<Unit>,
}

/// `GET /_diplomatie/admin/v1/stats/server`.
#[derive(Serialize, Debug)]
pub struct ServerHealth {
    pub server_name: String,
    pub version: &'static str,
    pub database: &'static str,
    pub uptime_seconds: u64,
    pub users: i64,
    pub rooms: i64,
    pub events: i64,
    /// The process's resident memory, when the system says.
    pub resident_memory_bytes: Option<u64>,
}

/// `YYYY-MM-DD` of a day counted from the epoch.
fn date_of(day: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(day * 86_400)
        .map(|t| format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()))
        .unwrap_or_default()
}

fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Stats {
    pub(crate) fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        organisation: Arc<Organisation>,
        correspondence: Arc<Correspondence>,
    ) -> Stats {
        Stats { core, rooms, organisation, correspondence, started: Instant::now() }
    }

    /// The users with power 100 in a space, the server's own account left out.
    async fn managers(&self, space: &RoomId, system: &UserId) -> Result<Vec<String>> {
        let levels = self.rooms.power_levels(space).await?;
        let mut managers: Vec<String> = levels
            .get("users")
            .and_then(Value::as_object)
            .map(|users| {
                users.iter().filter(|(_, level)| level.as_i64().unwrap_or(0) >= 100).map(|(u, _)| u.clone()).collect()
            })
            .unwrap_or_default();
        managers.retain(|m| m != system.as_str());
        managers.sort();
        Ok(managers)
    }

    /// The figures of the groups and communities `caller` may see over the last `days` days.
    pub async fn units(&self, caller: &UserId, is_admin: bool, days: u32) -> Result<Units> {
        let days = days.clamp(1, 366);
        let today = now_ms().div_euclid(DAY_MS);
        let first_day = today - i64::from(days) + 1;
        let since_ts = first_day * DAY_MS;
        let system = self.organisation.system_user().await?;
        let mut units = Vec::new();
        for (space, marker) in store::org_spaces(self.db.pool()).await? {
            let Ok(space) = OwnedRoomId::try_from(space) else { continue };
            let Ok(event) = serde_json::from_str::<Value>(&marker) else { continue };
            let content = &event["content"];
            let text = |f: &str| content.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
            let managers = self.managers(&space, &system).await?;
            if !is_admin && !managers.iter().any(|m| m == caller.as_str()) {
                continue;
            }
            let slug = text("slug");
            let kind = text("kind");
            let mut rooms = vec![space.to_string()];
            for (child, json) in store::space_children(self.db.pool(), space.as_str()).await? {
                let linked = serde_json::from_str::<Value>(&json)
                    .ok()
                    .and_then(|e| e["content"]["via"].as_array().map(|v| !v.is_empty()))
                    .unwrap_or(false);
                if linked {
                    rooms.push(child);
                }
            }
            let counted = store::daily_activity(self.db.pool(), &rooms, since_ts, system.as_str()).await?;
            let by_day: BTreeMap<i64, (i64, i64)> = counted.into_iter().map(|(d, m, a)| (d, (m, a))).collect();
            let activity: Vec<Day> = (first_day..=today)
                .map(|d| {
                    let (messages, active_members) = by_day.get(&d).copied().unwrap_or_default();
                    Day { day: date_of(d), messages, active_members }
                })
                .collect();
            let mut correspondence = CorrespondenceFigures::default();
            let mut journal = Backlog::default();
            if kind == "functional_group" {
                let sent = store::sent_by(self.db.pool(), &slug, since_ts).await?;
                for reference in &sent {
                    correspondence.readers += self.correspondence.audience_for(caller, true, reference).await?.readers;
                }
                correspondence.sent = sent.len();
                correspondence.received = store::received_by(self.db.pool(), &slug, since_ts).await?;
                for (status, n) in store::backlog(self.db.pool(), &slug).await? {
                    match status.as_str() {
                        "new" => journal.new = n,
                        "assigned" => journal.assigned = n,
                        "done" => journal.done = n,
                        _ => {}
                    }
                }
            }
            let mut members = self.rooms.joined_members(&space).await?.len();
            if self.rooms.is_joined(&space, &system).await? {
                members -= 1;
            }
            let name = self
                .rooms
                .state_event(&space, &ruma::events::StateEventType::RoomName, "")
                .await?
                .and_then(|p| p.content_field("name").and_then(|v| v.as_str().map(str::to_owned)))
                .unwrap_or_else(|| slug.clone());
            units.push(Unit {
                name,
                slug,
                kind,
                space_id: space,
                members,
                managers,
                messages: activity.iter().map(|d| d.messages).sum(),
                activity,
                correspondence,
                journal,
            });
        }
        if !is_admin && units.is_empty() {
            return Err(Error::forbidden("You manage no functional group or community"));
        }
        units.sort_by(|a, b| a.kind.cmp(&b.kind).then_with(|| a.name.cmp(&b.name)));
        Ok(Units { since_ts, days, units })
    }

    /// The server's health, for administrators.
    pub async fn server(&self) -> Result<ServerHealth> {
        let (users, rooms, events) = store::totals(self.db.pool()).await?;
        Ok(ServerHealth {
            server_name: self.server_name().to_string(),
            version: env!("CARGO_PKG_VERSION"),
            database: if self.config.database_url().starts_with("postgres") { "postgresql" } else { "sqlite" },
            uptime_seconds: self.started.elapsed().as_secs(),
            users,
            rooms,
            events,
            resident_memory_bytes: resident_memory(),
        })
    }
}
