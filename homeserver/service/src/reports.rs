//! Reports of events, rooms and users (client-server spec, "Reporting content"): kept for
//! the server's administrators, who read them all, and for each room's moderators (whoever may
//! redact others' events there), who read those about their room.

use std::sync::Arc;

use diplomatie_storage::reports::{self as store, Report};
use ruma::{EventId, OwnedEventId, RoomId, UserId};
use serde::Serialize;
use serde_json::Value;

use crate::{accounts::Accounts, core::Core, now_ms, rooms::Rooms, Error, Result};

/// The longest reason kept, in bytes (the body's limit is larger).
pub const MAX_REASON_BYTES: usize = 4096;

pub struct Reports {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    accounts: Arc<Accounts>,
}

crate::core::over_core!(Reports);

/// A report as administrators and moderators read it.
#[derive(Serialize)]
pub struct ReportView {
    pub id: i64,
    /// `event`, `room` or `user`.
    pub kind: String,
    /// Who reported.
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The user reported, or the sender of the event reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_user_id: Option<String>,
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<i64>,
    pub received_ts: i64,
    /// The event reported, in the client format, when it is still there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_json: Option<Value>,
}

/// A page of reports, newest first.
#[derive(Serialize)]
pub struct ReportPage {
    pub reports: Vec<ReportView>,
    /// Where the next page starts, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
    pub total: i64,
}

impl Reports {
    pub(crate) fn new(core: Arc<Core>, rooms: Arc<Rooms>, accounts: Arc<Accounts>) -> Reports {
        Reports { core, rooms, accounts }
    }

    /// `POST /rooms/{roomId}/report/{eventId}`: the reporter must be joined to the room and see
    /// the event; otherwise, as for an event that is not there, `M_NOT_FOUND`.
    pub async fn report_event(
        &self,
        reporter: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        reason: Option<&str>,
        score: Option<i64>,
    ) -> Result<i64> {
        check_reason(reason)?;
        if score.is_some_and(|s| !(-100..=0).contains(&s)) {
            return Err(Error::invalid_param("score must be an integer between -100 and 0"));
        }
        let not_found = || Error::not_found("The event was not found or you are not joined to the room");
        if self.rooms.room_meta(room_id).await?.is_none() || !self.rooms.is_joined(room_id, reporter).await? {
            return Err(not_found());
        }
        let pdu = self.rooms.get_pdu(event_id).await?.ok_or_else(not_found)?;
        if pdu.room_id != room_id || !self.rooms.can_see_event(reporter, &pdu).await? {
            return Err(not_found());
        }
        self.record("event", reporter, Some(room_id), Some(event_id), Some(&pdu.sender), reason, score).await
    }

    /// `POST /rooms/{roomId}/report`: any room this server knows, joined or not.
    pub async fn report_room(&self, reporter: &UserId, room_id: &RoomId, reason: &str) -> Result<i64> {
        check_reason(Some(reason))?;
        if self.rooms.room_meta(room_id).await?.is_none() {
            return Err(Error::not_found("The room was not found"));
        }
        self.record("room", reporter, Some(room_id), None, None, Some(reason), None).await
    }

    /// `POST /users/{userId}/report`: a user of this server, or of another one.
    pub async fn report_user(&self, reporter: &UserId, user: &UserId, reason: &str) -> Result<i64> {
        check_reason(Some(reason))?;
        if user.server_name() == self.server_name()
            && !diplomatie_storage::accounts::user_exists(self.db.pool(), user.as_str()).await?
        {
            return Err(Error::not_found("The user was not found"));
        }
        self.record("user", reporter, None, None, Some(user), Some(reason), None).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        kind: &str,
        reporter: &UserId,
        room_id: Option<&RoomId>,
        event_id: Option<&EventId>,
        target: Option<&UserId>,
        reason: Option<&str>,
        score: Option<i64>,
    ) -> Result<i64> {
        let report = Report {
            id: 0,
            kind: kind.to_owned(),
            reporter: reporter.to_string(),
            room_id: room_id.map(ToString::to_string),
            event_id: event_id.map(ToString::to_string),
            target_user: target.map(ToString::to_string),
            reason: reason.map(str::to_owned),
            score,
            received_ts: now_ms(),
        };
        let mut tx = self.db.begin().await?;
        let id = store::insert(&mut tx, &report).await?;
        diplomatie_storage::commit(tx).await?;
        tracing::info!(id, kind, %reporter, room = ?room_id, event = ?event_id, "report received");
        Ok(id)
    }

    /// Reports for an administrator (all of them) or a room's moderator (`room` given: those
    /// about that room), newest first, from `from` (a previous page's `next_token`).
    pub async fn list(
        &self,
        reader: &UserId,
        kind: Option<&str>,
        room: Option<&RoomId>,
        from: Option<&str>,
        limit: usize,
    ) -> Result<ReportPage> {
        match room {
            Some(room) => self.check_moderator(reader, room).await?,
            None => self.check_admin(reader).await?,
        }
        if kind.is_some_and(|k| !["event", "room", "user"].contains(&k)) {
            return Err(Error::invalid_param("kind must be event, room or user"));
        }
        let before = match from {
            Some(f) => f.parse::<i64>().map_err(|_| Error::invalid_param("Invalid from token"))?,
            None => i64::MAX,
        };
        let limit = limit.clamp(1, 1000);
        let room = room.map(RoomId::as_str);
        let rows = store::list(self.db.pool(), kind, room, before, limit as i64 + 1).await?;
        let next_token = (rows.len() > limit).then(|| rows[limit - 1].id.to_string());
        let mut reports = Vec::with_capacity(limit);
        for row in rows.into_iter().take(limit) {
            reports.push(self.view(row, false).await?);
        }
        Ok(ReportPage { reports, next_token, total: store::count(self.db.pool(), kind, room).await? })
    }

    /// One report, with the event reported (an administrator's, or a moderator's of its room).
    pub async fn get(&self, reader: &UserId, id: i64) -> Result<ReportView> {
        let report = store::get(self.db.pool(), id).await?.ok_or_else(|| Error::not_found("No such report"))?;
        self.check_may_read(reader, &report).await?;
        self.view(report, true).await
    }

    /// Removes a report once dealt with.
    pub async fn delete(&self, reader: &UserId, id: i64) -> Result<()> {
        let report = store::get(self.db.pool(), id).await?.ok_or_else(|| Error::not_found("No such report"))?;
        self.check_may_read(reader, &report).await?;
        store::delete(self.db.pool(), id).await?;
        Ok(())
    }

    async fn check_may_read(&self, reader: &UserId, report: &Report) -> Result<()> {
        if self.accounts.is_admin(reader).await? {
            return Ok(());
        }
        match report.room_id.as_deref().and_then(|r| <&RoomId>::try_from(r).ok()) {
            Some(room) => self.check_moderator(reader, room).await,
            None => Err(Error::forbidden("You are not a server administrator")),
        }
    }

    async fn check_admin(&self, reader: &UserId) -> Result<()> {
        if !self.accounts.is_admin(reader).await? {
            return Err(Error::forbidden("You are not a server administrator"));
        }
        Ok(())
    }

    /// An administrator, or a member of the room whose power level lets them redact others'
    /// events (the room's moderators).
    async fn check_moderator(&self, reader: &UserId, room: &RoomId) -> Result<()> {
        if self.accounts.is_admin(reader).await? {
            return Ok(());
        }
        self.rooms.known_room(room).await?;
        let levels = self.rooms.power_levels(room).await?;
        let redact = levels.get("redact").and_then(Value::as_i64).unwrap_or(50);
        if !self.rooms.is_joined(room, reader).await? || self.rooms.user_power(room, &levels, reader).await? < redact {
            return Err(Error::forbidden("Only the room's moderators read its reports"));
        }
        Ok(())
    }

    async fn view(&self, r: Report, with_event: bool) -> Result<ReportView> {
        let event_json = match r.event_id.as_deref().filter(|_| with_event).and_then(|e| OwnedEventId::try_from(e).ok())
        {
            Some(id) => self.rooms.get_pdu(&id).await?.map(|p| p.to_client(true)),
            None => None,
        };
        Ok(ReportView {
            id: r.id,
            kind: r.kind,
            user_id: r.reporter,
            room_id: r.room_id,
            event_id: r.event_id,
            target_user_id: r.target_user,
            reason: r.reason,
            score: r.score,
            received_ts: r.received_ts,
            event_json,
        })
    }
}

fn check_reason(reason: Option<&str>) -> Result<()> {
    if reason.is_some_and(|r| r.len() > MAX_REASON_BYTES) {
        return Err(Error::new(ruma::api::error::ErrorKind::TooLarge, "The reason is too long"));
    }
    Ok(())
}
