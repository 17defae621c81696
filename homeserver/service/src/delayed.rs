//! Delayed events (MSC4140): events a client schedules, that this server sends for it when
//! their delay passes, unless the client (or a service it gave the `delay_id` to, such as an
//! SFU) restarts or cancels them first. MatrixRTC clients schedule their own "left the call"
//! state this way and restart it while they are connected, so that a lost client leaves.
//!
//! The database is the schedule: a row per delayed event, its send time, and its outcome once
//! finalised (sent, cancelled, or failed), kept `finalised_retention_ms` for clients to read.
//! One worker sleeps until the earliest send time (or a wake-up when something is scheduled),
//! takes each due event with a conditional update (`claim`, so that a `send` action and the
//! worker never both send it) and sends it through the timeline, as the user's own request
//! would: power levels and membership are those of the moment it is sent. Events left taken
//! when the server stopped are put back on the schedule at start, and a message keeps an
//! idempotent transaction id (`delayed.<delay_id>`), so a restart never sends one twice.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

pub use diplomatie_storage::delayed::Delayed;
use diplomatie_storage::delayed::{self as store};
use ruma::{api::error::ErrorKind, DeviceId, OwnedTransactionId, RoomId, UserId};
use serde_json::Value;

use crate::{core::Core, rooms::timeline::Timeline, Error, Result};

/// What a client asks to schedule.
pub struct Schedule<'a> {
    pub room_id: &'a RoomId,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub content: Value,
    pub delay_ms: u64,
    /// The request's transaction id: a retried request gets the same `delay_id`.
    pub txn_id: Option<&'a str>,
}

/// What may be done to a scheduled event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Send,
    Cancel,
    Restart,
}

impl Action {
    pub fn parse(action: &str) -> Result<Action> {
        match action {
            "send" => Ok(Action::Send),
            "cancel" => Ok(Action::Cancel),
            "restart" => Ok(Action::Restart),
            other => Err(Error::invalid_param(format!("Unknown action {other}: send, cancel or restart"))),
        }
    }
}

/// Which of a user's delayed events to list.
#[derive(Default)]
pub struct Filter<'a> {
    /// Scheduled only (`Some(false)`), finalised only (`Some(true)`), or both.
    pub finalised: Option<bool>,
    pub room_id: Option<&'a str>,
    pub event_type: Option<&'a str>,
}

/// The most a list answers.
const LIST_LIMIT: i64 = 1000;

pub struct DelayedEvents {
    core: Arc<Core>,
    timeline: Arc<Timeline>,
    wake: tokio::sync::Notify,
}

crate::core::over_core!(DelayedEvents);

impl DelayedEvents {
    pub(crate) fn new(core: Arc<Core>, timeline: Arc<Timeline>) -> DelayedEvents {
        DelayedEvents { core, timeline, wake: tokio::sync::Notify::new() }
    }

    fn enabled(&self) -> Result<()> {
        if self.config.delayed_events.max_delay_ms == 0 {
            return Err(Error::unrecognized("Delayed events are turned off on this server"));
        }
        Ok(())
    }

    /// Schedules an event; answers its `delay_id`.
    pub async fn schedule(&self, user: &UserId, device: &DeviceId, s: Schedule<'_>) -> Result<String> {
        self.enabled()?;
        let limits = &self.config.delayed_events;
        if s.delay_ms == 0 {
            return Err(Error::invalid_param("The delay must be a positive number of milliseconds"));
        }
        if s.delay_ms > limits.max_delay_ms {
            return Err(Error::MaxDelayExceeded { max_delay: limits.max_delay_ms });
        }
        if !s.content.is_object() {
            return Err(Error::bad_json("The content must be a JSON object"));
        }
        if let Some(txn) = s.txn_id {
            if let Some(done) = store::by_txn(self.db.pool(), user.as_str(), device.as_str(), txn).await? {
                return Ok(done.delay_id);
            }
        }
        self.timeline.check_schedulable(user, s.room_id, s.event_type, s.state_key).await?;
        let (count, next) = store::scheduled_count(self.db.pool(), user.as_str()).await?;
        if count as u64 >= limits.max_scheduled_per_user {
            let now = crate::now_ms();
            let wait = next.map(|t| (t - now).max(1000) as u64).unwrap_or(1000);
            let mut data = ruma::api::error::LimitExceededErrorData::new();
            data.retry_after = Some(ruma::api::error::RetryAfter::Delay(Duration::from_millis(wait)));
            return Err(Error::new(
                ErrorKind::LimitExceeded(data),
                "The maximum number of delayed events has been reached",
            ));
        }
        let now = crate::now_ms();
        let delayed = Delayed {
            delay_id: crate::random_string(32),
            user_id: user.to_string(),
            device_id: device.to_string(),
            txn_id: s.txn_id.map(str::to_owned),
            room_id: s.room_id.to_string(),
            event_type: s.event_type.to_owned(),
            state_key: s.state_key.map(str::to_owned),
            content: s.content.to_string(),
            delay_ms: s.delay_ms as i64,
            running_since: now,
            send_ts: now + s.delay_ms as i64,
            status: "scheduled".into(),
            reason: None,
            event_id: None,
            error: None,
            finalised_ts: None,
        };
        if !store::insert(self.db.pool(), &delayed).await? {
            // A retry of the same transaction raced this one: answer what it scheduled.
            let txn = s.txn_id.unwrap_or_default();
            let done = store::by_txn(self.db.pool(), user.as_str(), device.as_str(), txn).await?;
            return done.map(|d| d.delay_id).ok_or(Error::Internal);
        }
        self.wake.notify_one();
        Ok(delayed.delay_id)
    }

    /// Sends, cancels or restarts a delayed event. The `delay_id` is the capability (the
    /// management endpoints take no access token); `owner`, when the caller is known, must be
    /// the user who scheduled it.
    pub async fn update(&self, delay_id: &str, action: Action, owner: Option<&UserId>) -> Result<()> {
        self.enabled()?;
        let Some(d) = store::get(self.db.pool(), delay_id).await? else {
            return Err(Error::not_found("No such delayed event"));
        };
        if owner.is_some_and(|o| o.as_str() != d.user_id) {
            return Err(Error::not_found("No such delayed event"));
        }
        let conflict = |what: &str| Err(Error::Conflict(format!("The delayed event was already {what}")));
        match (action, d.status.as_str()) {
            (Action::Restart, "scheduled") => {
                if store::restart(self.db.pool(), delay_id, crate::now_ms()).await? {
                    return Ok(());
                }
                // Taken for sending meanwhile.
                conflict("sent")
            }
            (Action::Restart, "sending") => Ok(()), // too late to restart, about to be sent
            (Action::Cancel, "scheduled") => {
                let now = crate::now_ms();
                if store::finalise(self.db.pool(), delay_id, "scheduled", "cancel", "action", None, None, now).await? {
                    return Ok(());
                }
                conflict("sent")
            }
            (Action::Send, "scheduled") => {
                if !store::claim(self.db.pool(), delay_id).await? {
                    return Ok(()); // the worker took it at that instant: it is being sent
                }
                match self.send(&d).await {
                    Ok(event_id) => {
                        let now = crate::now_ms();
                        store::finalise(
                            self.db.pool(),
                            delay_id,
                            "sending",
                            "send",
                            "action",
                            Some(&event_id),
                            None,
                            now,
                        )
                        .await?;
                        Ok(())
                    }
                    Err(e) => {
                        // The cause may be gone by its send time: it stays scheduled (MSC4140).
                        store::unclaim(self.db.pool(), delay_id).await?;
                        Err(e)
                    }
                }
            }
            (Action::Send, "sending" | "send") | (Action::Cancel, "cancel" | "error") => Ok(()),
            (Action::Cancel, "sending" | "send") => conflict("sent"),
            (Action::Send | Action::Restart, _) => conflict("cancelled"),
            (Action::Cancel, _) => conflict("finalised"),
        }
    }

    /// One of the user's delayed events.
    pub async fn get(&self, user: &UserId, delay_id: &str) -> Result<Delayed> {
        self.enabled()?;
        match store::get(self.db.pool(), delay_id).await? {
            Some(d) if d.user_id == user.as_str() => Ok(d),
            _ => Err(Error::not_found("No such delayed event")),
        }
    }

    /// The user's delayed events, by send time.
    pub async fn list(&self, user: &UserId, filter: Filter<'_>) -> Result<Vec<Delayed>> {
        self.enabled()?;
        Ok(store::list(self.db.pool(), user.as_str(), filter.finalised, filter.room_id, filter.event_type, LIST_LIMIT)
            .await?)
    }

    /// Sends a delayed event as its user, through the same checks as the user's own request.
    async fn send(&self, d: &Delayed) -> Result<String> {
        let user = UserId::parse(&d.user_id).map_err(crate::internal!())?;
        let device: &DeviceId = d.device_id.as_str().into();
        let room = RoomId::parse(&d.room_id).map_err(crate::internal!())?;
        let content: Value = serde_json::from_str(&d.content).map_err(crate::internal!())?;
        let txn: OwnedTransactionId = format!("delayed.{}", d.delay_id).into();
        let id = match (&d.state_key, d.event_type.as_str()) {
            (Some(key), kind) => self.timeline.send_state(&user, &room, kind, key, content).await?,
            (None, "m.room.redaction") => {
                let target = content
                    .get("redacts")
                    .and_then(Value::as_str)
                    .and_then(|r| ruma::EventId::parse(r).ok())
                    .ok_or_else(|| Error::bad_json("A delayed redaction names the event it redacts (`redacts`)"))?;
                let reason = content.get("reason").and_then(Value::as_str).map(str::to_owned);
                self.timeline.redact(&user, device, &room, &target, &txn, reason).await?
            }
            (None, kind) => self.timeline.send_message(&user, device, &room, kind, &txn, content).await?,
        };
        Ok(id.to_string())
    }

    /// Sends what is due; answers when to look again.
    async fn run_due(&self) -> Result<Option<i64>> {
        loop {
            let now = crate::now_ms();
            let due = store::due(self.db.pool(), now, 100).await?;
            if due.is_empty() {
                break;
            }
            for d in due {
                if !store::claim(self.db.pool(), &d.delay_id).await? {
                    continue;
                }
                let (status, event_id, error) = match self.send(&d).await {
                    Ok(id) => ("send", Some(id), None),
                    Err(e) => {
                        tracing::info!(delay_id = %d.delay_id, user = %d.user_id, error = ?e, "delayed event not sent");
                        let body = serde_json::to_string(&e.body()).unwrap_or_default();
                        ("error", None, Some(body))
                    }
                };
                let at = crate::now_ms();
                store::finalise(
                    self.db.pool(),
                    &d.delay_id,
                    "sending",
                    status,
                    "delay",
                    event_id.as_deref(),
                    error.as_deref(),
                    at,
                )
                .await?;
            }
        }
        let retention = self.config.delayed_events.finalised_retention_ms as i64;
        store::prune(self.db.pool(), crate::now_ms() - retention).await?;
        Ok(store::next_due(self.db.pool()).await?)
    }
}

/// Starts the worker that sends delayed events when they are due (and those that fell due
/// while the server was stopped, at once).
pub fn spawn_worker(service: &Arc<DelayedEvents>) {
    let weak: Weak<DelayedEvents> = Arc::downgrade(service);
    tokio::spawn(async move {
        if let Some(s) = weak.upgrade() {
            match store::unclaim_all(s.db.pool()).await {
                Ok(n) if n > 0 => tracing::info!(count = n, "delayed events put back on the schedule"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not reset delayed events"),
            }
        }
        loop {
            let Some(s) = weak.upgrade() else { return };
            let next = match s.run_due().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = ?e, "delayed events: will retry");
                    Some(crate::now_ms() + 5_000)
                }
            };
            // Wake at the next send time, within a minute at most (clocks move, rows change
            // under a restart), or at once when something is scheduled.
            let wait = next.map(|t| (t - crate::now_ms()).clamp(0, 60_000) as u64).unwrap_or(60_000);
            let wake = async { s.wake.notified().await };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = wake => {}
            }
        }
    });
}
