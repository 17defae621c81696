//! Archiving for administrators (`/_diplomatie/admin/v1/archive`): SEDA 2.3 transfers of a
//! functional group for a period, or of a stood-down crisis cell, answered as the zip itself;
//! and the check of a package (its files against its manifest).

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, request::Parts},
    response::{IntoResponse, Response},
    Json,
};
use diplomatie_service::{archive::parse_day, Error, Services};
use ruma::OwnedRoomId;
use serde::{Deserialize, Serialize};

use crate::{
    admin::{admin, parse_body},
    error::ApiError,
};

type S = State<Arc<Services>>;

const DAY_MS: i64 = 86_400_000;

/// What to export: a group and a period (days, both included), or a cell.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportBody {
    group: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cell: Option<String>,
}

/// `POST /_diplomatie/admin/v1/archive/export` `{"group": "paris", "from": "2026-01-01", "to":
/// "2026-12-31"}` or `{"cell": "!space"}`: the transfer, `application/zip`.
pub async fn export(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Response, ApiError> {
    admin(&s, &parts).await?;
    let req: ExportBody = parse_body(&body)?;
    let (package, name) = match (&req.group, &req.cell) {
        (Some(group), None) => {
            let (Some(from), Some(to)) = (&req.from, &req.to) else {
                return Err(Error::missing_param("A group's export names its period: from and to (YYYY-MM-DD)").into());
            };
            let (from_ms, to_ms) = (parse_day(from)?, parse_day(to)? + DAY_MS);
            (s.archive.group_package(group, from_ms, to_ms).await?, format!("{group}-{from}-{to}.zip"))
        }
        (None, Some(cell)) if req.from.is_none() && req.to.is_none() => {
            let id = OwnedRoomId::try_from(cell.as_str()).map_err(|_| Error::invalid_param("Invalid cell id"))?;
            (s.crisis.cell_package(&id).await?, "cellule.zip".to_owned())
        }
        _ => return Err(Error::invalid_param("Export either a group with from and to, or a cell").into()),
    };
    let disposition = format!(
        "attachment; filename=\"{}\"",
        name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.', "_")
    );
    Ok(([(header::CONTENT_TYPE, "application/zip".to_owned()), (header::CONTENT_DISPOSITION, disposition)], package)
        .into_response())
}

/// What a check found.
#[derive(Serialize)]
pub struct CheckReport {
    valid: bool,
    files: usize,
    problems: Vec<String>,
}

/// `POST /_diplomatie/admin/v1/archive/check` (the zip as the body): whether every file the
/// manifest lists is there with its size and digest, and nothing else.
pub async fn check(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Json<CheckReport>, ApiError> {
    admin(&s, &parts).await?;
    let report = diplomatie_archive::check(&body);
    Ok(Json(CheckReport {
        valid: report.ok(),
        files: report.files,
        problems: report.problems.iter().map(ToString::to_string).collect(),
    }))
}
