//! Media administration, in the shapes of Synapse's admin API: a user's media listed and
//! deleted, any media item deleted (this server's), quarantined (never served again, this
//! server's or another's) or protected from quarantine, a room's media listed and quarantined.

pub use diplomatie_storage::media::MediaOrder;
use diplomatie_storage::{
    events as ev_store,
    media::{self as store, AdminMedia},
};
use ruma::{RoomId, UserId};
use serde::Serialize;
use serde_json::{json, Value};

use super::Admin;
use crate::{media::media_of, now_ms, Error, Result};

/// A media item as `GET /_synapse/admin/v1/users/{userId}/media` lists it.
#[derive(Serialize)]
pub struct MediaView {
    pub media_id: String,
    pub media_type: Option<String>,
    pub media_length: Option<i64>,
    pub upload_name: Option<String>,
    pub created_ts: i64,
    /// Not tracked here: always none.
    pub last_access_ts: Option<i64>,
    pub quarantined_by: Option<String>,
    pub safe_from_quarantine: bool,
}

impl From<AdminMedia> for MediaView {
    fn from(m: AdminMedia) -> Self {
        MediaView {
            media_id: m.media_id,
            media_type: m.content_type,
            media_length: m.size,
            upload_name: m.filename,
            created_ts: m.created_ts,
            last_access_ts: None,
            quarantined_by: m.quarantined_by,
            safe_from_quarantine: m.protected,
        }
    }
}

#[derive(Serialize)]
pub struct MediaPage {
    pub media: Vec<MediaView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<i64>,
    pub total: i64,
}

/// What a deletion of media removed.
#[derive(Serialize)]
pub struct DeletedMedia {
    pub deleted_media: Vec<String>,
    pub total: usize,
}

/// A room's media, as `mxc://` URIs (`GET /_synapse/admin/v1/room/{roomId}/media`).
#[derive(Serialize)]
pub struct RoomMedia {
    pub local: Vec<String>,
    pub remote: Vec<String>,
}

/// How many media items a quarantine took.
#[derive(Serialize)]
pub struct Quarantined {
    pub num_quarantined: usize,
}

impl Admin {
    /// `GET /_synapse/admin/v1/users/{userId}/media`.
    pub async fn user_media(
        &self,
        user: &UserId,
        order: MediaOrder,
        descending: bool,
        from: i64,
        limit: i64,
    ) -> Result<MediaPage> {
        self.local_user(user).await?;
        let (media, total) = store::user_media(self.db.pool(), user.as_str(), order, descending, from, limit).await?;
        let next = from + media.len() as i64;
        Ok(MediaPage {
            next_token: (next < total && !media.is_empty()).then_some(next),
            media: media.into_iter().map(MediaView::from).collect(),
            total,
        })
    }

    fn check_local_media(&self, server: &str) -> Result<()> {
        if server != self.server_name().as_str() {
            return Err(Error::invalid_param("Only media of this server can be deleted"));
        }
        Ok(())
    }

    /// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`.
    pub async fn delete_media(&self, admin: &UserId, server: &str, media_id: &str) -> Result<DeletedMedia> {
        self.check_local_media(server)?;
        if !self.media.delete_local(media_id).await? {
            return Err(Error::not_found("Media not found"));
        }
        self.audit(admin, "media.delete", &format!("mxc://{server}/{media_id}"), None).await?;
        Ok(DeletedMedia { deleted_media: vec![media_id.to_owned()], total: 1 })
    }

    /// Deletes each of these local media items; answers those that went.
    async fn delete_each(&self, admin: &UserId, ids: Vec<String>, target: &str) -> Result<DeletedMedia> {
        let mut deleted = Vec::new();
        for id in ids {
            if self.media.delete_local(&id).await? {
                deleted.push(id);
            }
        }
        self.audit(admin, "media.delete", target, Some(json!({ "deleted": deleted.len() }))).await?;
        Ok(DeletedMedia { total: deleted.len(), deleted_media: deleted })
    }

    /// `DELETE /_synapse/admin/v1/users/{userId}/media`: every media item the user uploaded.
    pub async fn delete_user_media(&self, admin: &UserId, user: &UserId) -> Result<DeletedMedia> {
        self.local_user(user).await?;
        let ids = store::uploads_of(self.db.pool(), user.as_str()).await?;
        self.delete_each(admin, ids, user.as_str()).await
    }

    /// `POST /_synapse/admin/v1/media/{serverName}/delete?before_ts=&size_gt=`: this server's
    /// media uploaded before a time and larger than a size, but the protected ones.
    pub async fn delete_media_before(
        &self,
        admin: &UserId,
        server: &str,
        before_ts: i64,
        size_gt: i64,
    ) -> Result<DeletedMedia> {
        self.check_local_media(server)?;
        let ids = store::local_media_before(self.db.pool(), server, before_ts, size_gt).await?;
        self.delete_each(admin, ids, &format!("mxc://{server}/ before {before_ts}")).await
    }

    /// The media item, which must be known here.
    async fn known_media(&self, server: &str, media_id: &str) -> Result<()> {
        match store::get_media(self.db.pool(), server, media_id).await? {
            Some(_) => Ok(()),
            None => Err(Error::not_found("Media not found")),
        }
    }

    /// `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}` (and `unquarantine`).
    pub async fn quarantine_media(&self, admin: &UserId, server: &str, media_id: &str, on: bool) -> Result<()> {
        self.known_media(server, media_id).await?;
        if on {
            store::quarantine(self.db.pool(), server, media_id, admin.as_str(), now_ms()).await?;
        } else {
            store::unquarantine(self.db.pool(), server, media_id).await?;
        }
        let action = if on { "media.quarantine" } else { "media.unquarantine" };
        self.audit(admin, action, &format!("mxc://{server}/{media_id}"), None).await
    }

    /// `POST /_synapse/admin/v1/media/protect/{mediaId}` (and `unprotect`): this server's
    /// media only.
    pub async fn protect_media(&self, admin: &UserId, media_id: &str, on: bool) -> Result<()> {
        let server = self.server_name().to_string();
        self.known_media(&server, media_id).await?;
        store::set_protected(self.db.pool(), media_id, on).await?;
        let action = if on { "media.protect" } else { "media.unprotect" };
        self.audit(admin, action, &format!("mxc://{server}/{media_id}"), None).await
    }

    /// The media the room's events carry, this server's and others', each once.
    async fn media_in_room(&self, room_id: &RoomId) -> Result<Vec<(String, String)>> {
        self.rooms.known_room(room_id).await?;
        let mut found = Vec::new();
        for json in ev_store::room_event_jsons(self.db.pool(), room_id.as_str()).await? {
            let Ok(event) = serde_json::from_str::<Value>(&json) else { continue };
            for item in media_of(&event["content"]) {
                if !found.contains(&item) {
                    found.push(item);
                }
            }
        }
        Ok(found)
    }

    /// `GET /_synapse/admin/v1/room/{roomId}/media`.
    pub async fn room_media(&self, room_id: &RoomId) -> Result<RoomMedia> {
        let (mut local, mut remote) = (Vec::new(), Vec::new());
        for (server, id) in self.media_in_room(room_id).await? {
            let uri = format!("mxc://{server}/{id}");
            if server == self.server_name().as_str() {
                local.push(uri)
            } else {
                remote.push(uri)
            }
        }
        Ok(RoomMedia { local, remote })
    }

    /// Quarantines each (server, media id); answers how many were quarantined now.
    async fn quarantine_each(&self, admin: &UserId, items: Vec<(String, String)>, target: &str) -> Result<Quarantined> {
        let mut count = 0;
        for (server, id) in items {
            if store::quarantine(self.db.pool(), &server, &id, admin.as_str(), now_ms()).await? {
                count += 1;
            }
        }
        self.audit(admin, "media.quarantine", target, Some(json!({ "quarantined": count }))).await?;
        Ok(Quarantined { num_quarantined: count })
    }

    /// `POST /_synapse/admin/v1/room/{roomId}/media/quarantine`.
    pub async fn quarantine_room_media(&self, admin: &UserId, room_id: &RoomId) -> Result<Quarantined> {
        let items = self.media_in_room(room_id).await?;
        self.quarantine_each(admin, items, room_id.as_str()).await
    }

    /// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`.
    pub async fn quarantine_user_media(&self, admin: &UserId, user: &UserId) -> Result<Quarantined> {
        self.local_user(user).await?;
        let server = self.server_name().to_string();
        let ids = store::uploads_of(self.db.pool(), user.as_str()).await?;
        let items = ids.into_iter().map(|id| (server.clone(), id)).collect();
        self.quarantine_each(admin, items, user.as_str()).await
    }
}
