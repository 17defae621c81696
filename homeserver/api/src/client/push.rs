//! Push notifications (client-server spec, "Push Notifications"): push rules, notifications,
//! pushers.

use std::sync::Arc;

use axum::extract::State;
use diplomatie_service::{Error, Services};
use ruma::{
    api::client::push::{
        delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions, get_pushrule_enabled,
        get_pushrules_all, get_pushrules_global_scope, set_pusher, set_pushrule, set_pushrule_actions,
        set_pushrule_enabled, PushRule,
    },
    push::{AnyPushRule, RuleKind},
    UserId,
};

use crate::{
    error::ApiError,
    ruma_wrapper::{ApiResult, Ruma},
};

type S = State<Arc<Services>>;

pub async fn all(State(s): S, req: Ruma<get_pushrules_all::v3::Request>) -> ApiResult<get_pushrules_all::v3::Response> {
    let rules = s.push.push_rules(&req.caller().user_id).await?;
    Ok(get_pushrules_all::v3::Response::new((*rules).clone()).into())
}

pub async fn global(
    State(s): S,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> ApiResult<get_pushrules_global_scope::v3::Response> {
    let rules = s.push.push_rules(&req.caller().user_id).await?;
    Ok(get_pushrules_global_scope::v3::Response::new((*rules).clone()).into())
}

/// `GET /pushrules/global/{kind}/`: the user's rules of one kind, in their order (Synapse
/// serves it; clients and Sytest read it).
pub async fn of_kind(
    State(s): S,
    axum::extract::Path(kind): axum::extract::Path<String>,
    parts: http::request::Parts,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let caller = crate::ruma_wrapper::authenticate(&s, &parts).await?;
    if !matches!(kind.as_str(), "override" | "content" | "room" | "sender" | "underride") {
        return Ok(malformed().await);
    }
    let rules = s.push.push_rules(&caller.user_id).await?;
    let all = serde_json::to_value(&*rules).map_err(diplomatie_service::internal!())?;
    Ok(axum::Json(all.get(&kind).cloned().unwrap_or_else(|| serde_json::json!([]))).into_response())
}

/// A path under `/pushrules/` that names no scope, kind, rule or attribute the spec has (an
/// unknown scope or kind, a missing or empty rule id, an unknown attribute, or a scope or kind
/// without its final slash): 400 `M_UNRECOGNIZED`, as Synapse answers. Only `/pushrules` itself,
/// without its slash, is unknown (404).
pub async fn malformed() -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({ "errcode": "M_UNRECOGNIZED", "error": "Malformed push rule path" });
    (http::StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// One rule of the user's, or the spec's 404.
async fn find(s: &Services, user: &UserId, kind: &RuleKind, rule_id: &str) -> Result<PushRule, ApiError> {
    let rules = s.push.push_rules(user).await?;
    let rule = rules.get(kind.clone(), rule_id).ok_or_else(|| Error::not_found("Unknown push rule"))?;
    Ok(match rule.to_owned() {
        AnyPushRule::Override(r) | AnyPushRule::Underride(r) => r.into(),
        AnyPushRule::Content(r) => r.into(),
        AnyPushRule::Room(r) => r.into(),
        AnyPushRule::Sender(r) => r.into(),
        _ => return Err(Error::not_found("Unknown push rule").into()),
    })
}

pub async fn get(State(s): S, req: Ruma<get_pushrule::v3::Request>) -> ApiResult<get_pushrule::v3::Response> {
    let rule = find(&s, &req.caller().user_id, &req.body.kind, &req.body.rule_id).await?;
    Ok(get_pushrule::v3::Response::new(rule).into())
}

pub async fn set(State(s): S, req: Ruma<set_pushrule::v3::Request>) -> ApiResult<set_pushrule::v3::Response> {
    let b = req.body;
    let user =
        &req.caller.as_ref().ok_or_else(diplomatie_service::internal!("a value present by construction"))?.user_id;
    s.push.set_push_rule(user, b.rule, b.before.as_deref(), b.after.as_deref()).await?;
    Ok(set_pushrule::v3::Response::new().into())
}

pub async fn delete(State(s): S, req: Ruma<delete_pushrule::v3::Request>) -> ApiResult<delete_pushrule::v3::Response> {
    s.push.delete_push_rule(&req.caller().user_id, req.body.kind.clone(), &req.body.rule_id).await?;
    Ok(delete_pushrule::v3::Response::new().into())
}

pub async fn enabled(
    State(s): S,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> ApiResult<get_pushrule_enabled::v3::Response> {
    let rule = find(&s, &req.caller().user_id, &req.body.kind, &req.body.rule_id).await?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled).into())
}

pub async fn set_enabled(
    State(s): S,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> ApiResult<set_pushrule_enabled::v3::Response> {
    let b = &req.body;
    s.push.set_push_rule_enabled(&req.caller().user_id, b.kind.clone(), &b.rule_id, b.enabled).await?;
    Ok(set_pushrule_enabled::v3::Response::new().into())
}

pub async fn actions(
    State(s): S,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> ApiResult<get_pushrule_actions::v3::Response> {
    let rule = find(&s, &req.caller().user_id, &req.body.kind, &req.body.rule_id).await?;
    Ok(get_pushrule_actions::v3::Response::new(rule.actions).into())
}

pub async fn set_actions(
    State(s): S,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> ApiResult<set_pushrule_actions::v3::Response> {
    let b = req.body;
    let user =
        &req.caller.as_ref().ok_or_else(diplomatie_service::internal!("a value present by construction"))?.user_id;
    s.push.set_push_rule_actions(user, b.kind, &b.rule_id, b.actions).await?;
    Ok(set_pushrule_actions::v3::Response::new().into())
}

/// `GET /notifications`. Each notification names its `profile_tag`, `null` when it has none,
/// as Synapse answers (ruma's type leaves an absent one out).
pub async fn notifications(
    State(s): S,
    req: Ruma<get_notifications::v3::Request>,
) -> Result<axum::Json<serde_json::Value>, crate::error::ApiError> {
    let b = &req.body;
    let limit = b.limit.map(|l| u64::from(l).min(1000) as usize);
    let only_highlight = b.only.as_deref() == Some("highlight");
    let (list, next) = s.push.notifications(&req.caller().user_id, b.from.as_deref(), limit, only_highlight).await?;
    let mut notifications = Vec::with_capacity(list.len());
    for n in list {
        let mut n = serde_json::to_value(n).map_err(diplomatie_service::internal!())?;
        if let Some(n) = n.as_object_mut() {
            n.entry("profile_tag").or_insert(serde_json::Value::Null);
        }
        notifications.push(n);
    }
    let mut body = serde_json::json!({ "notifications": notifications });
    if let Some(next) = next {
        body["next_token"] = next.into();
    }
    Ok(axum::Json(body))
}

pub async fn pushers(State(s): S, req: Ruma<get_pushers::v3::Request>) -> ApiResult<get_pushers::v3::Response> {
    Ok(get_pushers::v3::Response::new(s.push.pushers(&req.caller().user_id)).into())
}

pub async fn set_pusher(State(s): S, req: Ruma<set_pusher::v3::Request>) -> ApiResult<set_pusher::v3::Response> {
    let caller = req.caller.clone().ok_or_else(diplomatie_service::internal!("a value present by construction"))?;
    match req.body.action {
        set_pusher::v3::PusherAction::Post(data) => {
            let pusher = serde_json::to_value(&data.pusher).map_err(diplomatie_service::internal!())?;
            s.push.set_pusher(&caller.user_id, Some(caller.device_id.as_str()), &pusher, data.append).await?;
        }
        set_pusher::v3::PusherAction::Delete(ids) => {
            s.push.delete_pusher(&caller.user_id, &ids.app_id, &ids.pushkey).await?;
        }
        _ => return Err(Error::invalid_param("Unknown pusher action").into()),
    }
    Ok(set_pusher::v3::Response::new().into())
}
