//! A stood-down cell handed to archiving: its SEDA 2.3 transfer (the sealed log with the keys
//! that verify it, the situation reports, each room's messages up to the stand-down), with the
//! cell's retention as the appraisal rule, written to the archive directory at stand-down and
//! exported again on demand (the same bytes: everything in it predates the stand-down).

use diplomatie_archive::{Appraisal, Level as UnitLevel, Unit};
use diplomatie_storage::crisis::{self as store, Cell};
use ruma::{OwnedRoomId, RoomId};
use serde_json::json;

use super::Crisis;
use crate::{
    archive::{day, group_agent, json_file},
    Error, Result,
};

impl Crisis {
    /// The transfer of a stood-down cell (`id`: its space or one of its rooms). A zip.
    pub async fn cell_package(&self, id: &RoomId) -> Result<Vec<u8>> {
        let (cell, rooms) = self.cell(id).await?;
        let Some(closed) = cell.stood_down_ts.filter(|_| cell.status == "stood_down") else {
            return Err(Error::forbidden("The crisis cell is active: it is archived once stood down"));
        };
        let mut root = Unit::new(UnitLevel::RecordGrp, format!("Cellule de crise « {} »", cell.name));
        root.system_id = Some(cell.cell_id.clone());
        root.originating_agency = Some(group_agent(&cell.slug, &cell.name, None));
        root.writers.push(self.archive.person(&cell.coordinator, Some("Coordinateur")).await?);
        root.start_ms = Some(cell.created_ts);
        root.end_ms = Some(closed);
        root.appraisal = Some(Appraisal { rule: cell.retention.clone(), start_ms: closed, keep: true });

        root.children.push(self.log_unit(&cell).await?);
        let sitreps = store::sitreps(self.db.pool(), &cell.cell_id).await?;
        if !sitreps.is_empty() {
            let versions: Vec<_> = sitreps
                .iter()
                .map(|(version, author, body, event_id, ts)| json!({ "version": version, "author": author, "body": body, "event_id": event_id, "ts": ts }))
                .collect();
            let mut unit = Unit::new(UnitLevel::Item, "Points de situation");
            unit.document_type = Some("Point de situation".into());
            unit.files.push(json_file("cellule/points-de-situation.json".into(), &versions)?);
            root.children.push(unit);
        }
        for r in &rooms {
            let room = OwnedRoomId::try_from(r.room_id.as_str()).map_err(crate::internal!())?;
            let title = format!("Salon « {} » de la cellule", r.key);
            if let Some((unit, _)) = self
                .archive
                .room_unit(&room, title, format!("salons/{}.json", r.key), cell.created_ts, closed + 1)
                .await?
            {
                root.children.push(unit);
            }
        }
        let identifier = format!("{}-cellule-{}-{}", self.server_name(), cell.slug, day(closed));
        self.archive.package(identifier, closed, &cell.slug, root)?.to_zip().map_err(crate::internal!())
    }

    /// The log as an item: the document `diplomatie verify` checks, and who signed what.
    async fn log_unit(&self, cell: &Cell) -> Result<Unit> {
        let document = self.log_document(cell).await?;
        let reference = document.record["reference"].as_str().unwrap_or_default().to_owned();
        let mut unit = Unit::new(UnitLevel::Item, format!("Main courante {reference}"));
        unit.system_id = Some(reference);
        unit.document_type = Some("Main courante".into());
        for (n, entry) in document.entries.iter().enumerate() {
            let role = format!("Entrée {}", entry["number"].as_i64().unwrap_or(n as i64 + 1));
            unit.signers.extend(self.archive.signer(entry, role).await?);
        }
        unit.signers.extend(self.archive.signer(&document.record, "Clôture de la main courante".into()).await?);
        unit.files.push(json_file("cellule/main-courante.json".into(), &document)?);
        Ok(unit)
    }

    /// Writes the cell's transfer to the archive directory and records it `exported`; on
    /// failure the cell stays `pending` (an administrator exports it on demand).
    pub(super) async fn hand_over(&self, cell_id: &str) {
        let result = async {
            let space = OwnedRoomId::try_from(cell_id).map_err(crate::internal!())?;
            let package = self.cell_package(&space).await?;
            let cell = store::cell_by_id(self.db.pool(), cell_id)
                .await?
                .ok_or_else(|| Error::not_found("Not a crisis cell"))?;
            let name = format!("cellule-{}-{}.zip", cell.slug, day(cell.stood_down_ts.unwrap_or_default()));
            let path = self.archive.write(&name, &package).await?;
            store::set_archive_status(self.db.pool(), cell_id, "exported").await?;
            Ok::<_, Error>(path)
        }
        .await;
        match result {
            Ok(path) => tracing::info!(cell = cell_id, path = %path.display(), "crisis cell handed to archiving"),
            Err(e) => tracing::warn!(cell = cell_id, error = %e, "the crisis cell's transfer could not be written"),
        }
    }
}
