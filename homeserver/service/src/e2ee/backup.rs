//! Server-side key backup (client-server spec, "Server-side key backups"): encrypted room keys,
//! stored per backup version, with an etag that changes on every change.

use std::collections::BTreeMap;

use diplomatie_storage::e2ee as store;
use ruma::{
    api::{
        client::backup::{BackupAlgorithm, KeyBackupData},
        error::{ErrorKind, WrongRoomKeysVersionErrorData},
    },
    serde::Raw,
    OwnedRoomId, UInt, UserId,
};
use serde_json::Value;

use super::E2ee;
use crate::{Error, Result};

fn parse_version(version: &str) -> Result<i64> {
    version.parse().map_err(|_| Error::not_found("Unknown backup version"))
}

/// Whether `new` should replace `old` (the spec's rules for a key already backed up): the
/// lower first message index wins, then verification, then the lower forwarded count.
fn better(new: &Value, old: &Value) -> bool {
    let index = |v: &Value| v["first_message_index"].as_u64().unwrap_or(u64::MAX);
    let verified = |v: &Value| v["is_verified"].as_bool().unwrap_or(false);
    let forwarded = |v: &Value| v["forwarded_count"].as_u64().unwrap_or(u64::MAX);
    (index(new), !verified(new), forwarded(new)) < (index(old), !verified(old), forwarded(old))
}

/// A backup version's description.
pub struct BackupInfo {
    pub algorithm: Raw<BackupAlgorithm>,
    pub count: UInt,
    pub etag: String,
    pub version: String,
}

/// What a change of a backup's keys answers: its new etag and how many keys it holds.
pub struct BackupCount {
    pub etag: String,
    pub count: u64,
}

impl E2ee {
    pub async fn create_backup(&self, user: &UserId, algorithm: &Value) -> Result<String> {
        if !algorithm.get("algorithm").is_some_and(Value::is_string)
            || algorithm.get("auth_data").is_none_or(Value::is_null)
        {
            return Err(Error::bad_json("algorithm and auth_data are required"));
        }
        let mut tx = self.db.begin().await?;
        let version = store::create_backup(&mut tx, user.as_str(), &serde_json::to_string(algorithm)?).await?;
        diplomatie_storage::commit(tx).await?;
        Ok(version.to_string())
    }

    /// A backup's etag and key count, after a change of its keys.
    async fn backup_count(&self, user: &UserId, version: &str) -> Result<BackupCount> {
        let (v, _, etag) = self.existing_backup(user, version).await?;
        let count = store::backup_count(self.db.pool(), user.as_str(), v).await?;
        Ok(BackupCount { etag: etag.to_string(), count: u64::try_from(count).unwrap_or(0) })
    }

    /// The backup's description: its algorithm and auth data, count, etag and version.
    pub async fn backup_info(&self, user: &UserId, version: Option<&str>) -> Result<BackupInfo> {
        let pool = self.db.pool();
        let (version, algorithm, etag) = match version {
            None => store::current_backup(pool, user.as_str())
                .await?
                .ok_or_else(|| Error::not_found("No current backup version"))?,
            Some(v) => self.existing_backup(user, v).await?,
        };
        let count = store::backup_count(pool, user.as_str(), version).await?;
        Ok(BackupInfo {
            algorithm: Raw::from_json_string(algorithm)?,
            count: UInt::try_from(count).unwrap_or_default(),
            etag: etag.to_string(),
            version: version.to_string(),
        })
    }

    pub async fn update_backup(&self, user: &UserId, version: &str, algorithm: &Value) -> Result<()> {
        let (v, current, _) = self.existing_backup(user, version).await?;
        if algorithm.get("version").and_then(Value::as_str).is_some_and(|b| b != version) {
            return Err(Error::invalid_param("The version in the body does not match the path"));
        }
        let current: Value = serde_json::from_str(&current)?;
        if current.get("algorithm") != algorithm.get("algorithm") {
            return Err(Error::invalid_param("The algorithm of a backup cannot change"));
        }
        let mut stored = algorithm.clone();
        if let Value::Object(m) = &mut stored {
            m.remove("version");
        }
        store::update_backup(self.db.pool(), user.as_str(), v, &serde_json::to_string(&stored)?).await?;
        Ok(())
    }

    pub async fn delete_backup(&self, user: &UserId, version: &str) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let deleted = store::delete_backup(&mut tx, user.as_str(), parse_version(version)?).await?;
        diplomatie_storage::commit(tx).await?;
        if deleted {
            Ok(())
        } else {
            Err(Error::not_found("Unknown backup version"))
        }
    }

    /// A backup version that exists and is not deleted: (version, algorithm JSON, etag).
    async fn existing_backup(&self, user: &UserId, version: &str) -> Result<(i64, String, i64)> {
        let v = parse_version(version)?;
        let (algorithm, etag) = store::backup_version(self.db.pool(), user.as_str(), v)
            .await?
            .ok_or_else(|| Error::not_found("Unknown backup version"))?;
        Ok((v, algorithm, etag))
    }

    /// The version keys may be uploaded to: only the current one.
    async fn writable_backup(&self, user: &UserId, version: &str) -> Result<i64> {
        let current = store::current_backup(self.db.pool(), user.as_str()).await?;
        match current {
            Some((v, _, _)) if v.to_string() == version => Ok(v),
            Some((v, _, _)) => Err(Error::new(
                ErrorKind::WrongRoomKeysVersion(WrongRoomKeysVersionErrorData::new(v.to_string())),
                "Not the current backup version",
            )),
            None => Err(Error::not_found("No current backup version")),
        }
    }

    /// Stores keys (room -> session -> key data) and returns the new etag and count.
    pub async fn put_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        rooms: &BTreeMap<String, BTreeMap<String, Value>>,
    ) -> Result<BackupCount> {
        let v = self.writable_backup(user, version).await?;
        let pool = self.db.pool();
        let mut tx = self.db.begin().await?;
        for (room, sessions) in rooms {
            for (session, data) in sessions {
                if !data.is_object() {
                    return Err(Error::bad_json("Key data must be objects"));
                }
                let keep_old = match store::backup_key(pool, user.as_str(), v, room, session).await? {
                    Some(old) => !better(data, &serde_json::from_str(&old)?),
                    None => false,
                };
                if !keep_old {
                    store::set_backup_key(&mut tx, user.as_str(), v, (room, session), &serde_json::to_string(data)?)
                        .await?;
                }
            }
        }
        store::bump_backup_etag(&mut *tx, user.as_str(), v).await?;
        diplomatie_storage::commit(tx).await?;
        self.backup_count(user, version).await
    }

    /// Backed-up keys at the granularity asked for.
    /// The keys of a backup, by room and session: all of them, a room's, or one session's.
    pub async fn get_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>>> {
        let v = self.existing_backup(user, version).await?.0;
        let mut rooms: BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>> = BTreeMap::new();
        for (room_id, session_id, json) in store::backup_keys(self.db.pool(), user.as_str(), v, room, session).await? {
            let room_id = OwnedRoomId::try_from(room_id).map_err(crate::internal!())?;
            rooms.entry(room_id).or_default().insert(session_id, Raw::from_json_string(json)?);
        }
        Ok(rooms)
    }

    pub async fn delete_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<BackupCount> {
        let v = self.existing_backup(user, version).await?.0;
        store::delete_backup_keys(self.db.pool(), user.as_str(), v, room, session).await?;
        store::bump_backup_etag(self.db.pool(), user.as_str(), v).await?;
        self.backup_count(user, version).await
    }
}
