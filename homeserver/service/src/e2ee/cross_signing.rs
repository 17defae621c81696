//! Cross-signing (client-server spec, "Cross-signing"): master, self-signing and user-signing
//! keys, and the signatures that link devices and users to them.

use std::collections::BTreeMap;

use diplomatie_storage::e2ee as store;
use ruma::{api::client::uiaa::AuthData, encryption::CrossSigningKey, serde::Raw, OwnedUserId, UserId};
use serde_json::{json, Value};

use super::E2ee;

/// What `/keys/signatures/upload` answers: the signatures refused, by user and key.
#[derive(serde::Serialize)]
pub struct SignatureFailures {
    pub failures: BTreeMap<OwnedUserId, BTreeMap<String, SignatureFailure>>,
}

/// A signature refused, and why.
#[derive(serde::Serialize)]
pub struct SignatureFailure {
    pub errcode: &'static str,
    pub error: String,
}
use crate::{accounts::Caller, Error, Result};

/// The single `ed25519:<public>` entry of a cross-signing key: (key id, public key).
fn single_key(key: &Value) -> Result<(String, String)> {
    let keys = key
        .get("keys")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::invalid_param("A cross-signing key needs keys"))?;
    let mut entries = keys.iter();
    match (entries.next(), entries.next()) {
        (Some((id, Value::String(public))), None) if id.starts_with("ed25519:") => Ok((id.clone(), public.clone())),
        _ => Err(Error::invalid_param("A cross-signing key has exactly one ed25519 key")),
    }
}

fn check_key(key: &Value, user: &UserId, usage: &str) -> Result<(String, String)> {
    if key.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
        return Err(Error::invalid_param("Cross-signing keys must be the uploader's"));
    }
    let usages = key.get("usage").and_then(Value::as_array).ok_or_else(|| Error::invalid_param("usage is required"))?;
    if !usages.iter().any(|u| u.as_str() == Some(usage)) {
        return Err(Error::invalid_param(format!("The {usage} key must have usage {usage}")));
    }
    single_key(key)
}

/// Checks that `signer` signed `object` with the key `key_id` = `public`.
fn verify(object: &Value, signer: &str, key_id: &str, public: &str) -> Result<()> {
    let mut canonical: ruma::CanonicalJsonObject =
        serde_json::from_value(object.clone()).map_err(|_| Error::bad_json("Keys must be canonical JSON"))?;
    canonical.remove("unsigned");
    let public = ruma::serde::Base64::parse(public).map_err(|_| Error::invalid_param("Invalid public key"))?;
    let map = BTreeMap::from([(signer.to_owned(), BTreeMap::from([(key_id.to_owned(), public)]))]);
    ruma::signatures::verify_json(&map, &canonical).map_err(|e| Error::invalid_param(format!("Invalid signature: {e}")))
}

/// Adds `signer`'s signatures from `from` into `into`.
fn merge_signatures(into: &mut Value, from: &Value, signer: &str) {
    if let Some(new) = from.get("signatures").and_then(|s| s.get(signer)).and_then(Value::as_object) {
        let entry = into["signatures"][signer].as_object_mut().map(std::mem::take).unwrap_or_default();
        let mut merged = entry;
        merged.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
        into["signatures"][signer] = Value::Object(merged);
    }
}

impl E2ee {
    /// `POST /keys/device_signing/upload`. The first upload needs no authentication
    /// (MSC3967, in the spec since v1.11); replacing keys needs the password or single sign-on (`operation`, the
    /// request's method and path, binds its user-interactive session).
    pub async fn upload_signing_keys(
        &self,
        caller: &Caller,
        auth: Option<&AuthData>,
        body: &Value,
        operation: &str,
    ) -> Result<()> {
        let user = &caller.user_id;
        let stored_master = store::cross_signing_key(self.db.pool(), user.as_str(), "master").await?;
        if stored_master.is_some() {
            self.uia.reauthenticate(user, auth, operation).await?;
        }
        let master = body.get("master_key").filter(|v| !v.is_null());
        let master_json: Value = match (master, &stored_master) {
            (Some(m), _) => m.clone(),
            (None, Some(s)) => serde_json::from_str(s)?,
            (None, None) => return Err(Error::invalid_param("A master key is required first")),
        };
        let (master_id, master_public) = check_key(&master_json, user, "master")?;
        let mut writes = Vec::new();
        if master.is_some() {
            writes.push(("master", master_json.clone()));
        }
        for (field, usage) in [("self_signing_key", "self_signing"), ("user_signing_key", "user_signing")] {
            if let Some(key) = body.get(field).filter(|v| !v.is_null()) {
                check_key(key, user, usage)?;
                verify(key, user.as_str(), &master_id, &master_public)?;
                writes.push((usage, key.clone()));
            }
        }
        let mut tx = self.db.begin().await?;
        for (kind, key) in &writes {
            store::set_cross_signing_key(&mut tx, user.as_str(), kind, &serde_json::to_string(key)?).await?;
        }
        diplomatie_storage::commit(tx).await?;
        // A user-signing key is the user's own business: only their devices are told of it.
        if writes.iter().all(|(kind, _)| *kind == "user_signing") {
            return self.signatures_changed(user, std::slice::from_ref(user)).await;
        }
        self.device_list_changed(user).await
    }

    /// `POST /keys/signatures/upload`: signatures of own devices (by the self-signing key), of
    /// one's master key (by a device), of others' master keys (by the user-signing key).
    pub async fn upload_signatures(
        &self,
        caller: &Caller,
        signed: &BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    ) -> Result<SignatureFailures> {
        let me = caller.user_id.as_str();
        let pool = self.db.pool();
        let own_key = |kind: &'static str| async move {
            let json = store::cross_signing_key(pool, me, kind).await?;
            json.map(|j| serde_json::from_str::<Value>(&j)).transpose().map_err(Error::from)
        };
        let mut failures: BTreeMap<OwnedUserId, BTreeMap<String, SignatureFailure>> = BTreeMap::new();
        let mut changed = false;
        let mut signed_others: Vec<OwnedUserId> = Vec::new();
        for (user, objects) in signed {
            for (key_id, object) in objects {
                let result: Result<()> = async {
                    if user == &caller.user_id {
                        if let Some(device_json) = store::device_keys(pool, me, key_id).await? {
                            // One of my devices, signed by my self-signing key.
                            let ssk = own_key("self_signing")
                                .await?
                                .ok_or_else(|| Error::invalid_param("No self-signing key"))?;
                            let (ssk_id, ssk_public) = single_key(&ssk)?;
                            let mut stored: Value = serde_json::from_str(&device_json)?;
                            if stored.get("keys") != object.get("keys") {
                                return Err(Error::invalid_param("The signed keys are not the device's keys"));
                            }
                            verify(object, me, &ssk_id, &ssk_public)?;
                            merge_signatures(&mut stored, object, me);
                            let mut tx = self.db.begin().await?;
                            store::set_device_keys(&mut tx, me, key_id, &serde_json::to_string(&stored)?).await?;
                            diplomatie_storage::commit(tx).await?;
                        } else {
                            // My master key, signed by one of my devices.
                            let mut master =
                                own_key("master").await?.ok_or_else(|| Error::invalid_param("No master key"))?;
                            if single_key(&master)?.1 != *key_id || master.get("keys") != object.get("keys") {
                                return Err(Error::invalid_param("Unknown key"));
                            }
                            let signers = object.get("signatures").and_then(|s| s.get(me)).and_then(Value::as_object);
                            let mut verified = false;
                            for signing_key_id in signers.into_iter().flat_map(|m| m.keys()) {
                                let Some(device) = signing_key_id.strip_prefix("ed25519:") else { continue };
                                let Some(dk) = store::device_keys(pool, me, device).await? else { continue };
                                let dk: Value = serde_json::from_str(&dk)?;
                                let Some(public) = dk["keys"][signing_key_id].as_str() else { continue };
                                verify(object, me, signing_key_id, public)?;
                                verified = true;
                            }
                            if !verified {
                                return Err(Error::invalid_param("No signature by a known device"));
                            }
                            merge_signatures(&mut master, object, me);
                            let mut tx = self.db.begin().await?;
                            store::set_cross_signing_key(&mut tx, me, "master", &serde_json::to_string(&master)?)
                                .await?;
                            diplomatie_storage::commit(tx).await?;
                        }
                    } else {
                        // Someone else's master key, signed by my user-signing key.
                        let usk = own_key("user_signing")
                            .await?
                            .ok_or_else(|| Error::invalid_param("No user-signing key"))?;
                        let (usk_id, usk_public) = single_key(&usk)?;
                        let target = store::cross_signing_key(pool, user.as_str(), "master").await?;
                        let target: Value = target
                            .map(|t| serde_json::from_str(&t))
                            .transpose()?
                            .ok_or_else(|| Error::invalid_param("Unknown key"))?;
                        if single_key(&target)?.1 != *key_id || target.get("keys") != object.get("keys") {
                            return Err(Error::invalid_param("Unknown key"));
                        }
                        verify(object, me, &usk_id, &usk_public)?;
                        let signature = object["signatures"][me][&usk_id].as_str().unwrap_or_default();
                        store::add_cross_signing_signature(pool, me, (user.as_str(), key_id), &usk_id, signature)
                            .await?;
                        signed_others.push(user.clone());
                        return Ok(());
                    }
                    changed = true;
                    Ok(())
                }
                .await;
                match result {
                    Ok(()) => {}
                    Err(Error::Internal) => return Err(Error::Internal),
                    Err(e) => {
                        let failure = SignatureFailure { errcode: "M_INVALID_SIGNATURE", error: e.body().message };
                        failures.entry(user.clone()).or_default().insert(key_id.clone(), failure);
                    }
                }
            }
        }
        if changed {
            self.device_list_changed(&caller.user_id).await?;
        }
        if !signed_others.is_empty() {
            signed_others.dedup();
            self.signatures_changed(&caller.user_id, &signed_others).await?;
        }
        Ok(SignatureFailures { failures })
    }

    /// The cross-signing keys `/keys/query` returns for `user`, as `requester` sees them.
    pub async fn cross_signing_keys_for(
        &self,
        requester: &UserId,
        user: &UserId,
    ) -> Result<BTreeMap<&'static str, Raw<CrossSigningKey>>> {
        let mut out = BTreeMap::new();
        for kind in ["master", "self_signing", "user_signing"] {
            if kind == "user_signing" && requester != user {
                continue;
            }
            let Some(json) = store::cross_signing_key(self.db.pool(), user.as_str(), kind).await? else { continue };
            let mut key: Value = serde_json::from_str(&json)?;
            if kind == "master" && requester != user {
                for (target_key, signing_key, signature) in
                    store::cross_signing_signatures(self.db.pool(), requester.as_str(), user.as_str()).await?
                {
                    if single_key(&key).is_ok_and(|(_, public)| public == target_key) {
                        key["signatures"][requester.as_str()][signing_key] = json!(signature);
                    }
                }
            }
            out.insert(kind, crate::to_raw(&key)?);
        }
        Ok(out)
    }
}
