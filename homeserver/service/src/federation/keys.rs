//! Server keys: the verify key this server publishes (`/_matrix/key/v2/server`), the keys of
//! other servers (fetched from them, checked against their own signature, cached in memory and
//! in the database; or pinned in the configuration and then never fetched), and the checks of
//! signatures on received events and requests.

use std::collections::BTreeMap;

use diplomatie_storage::federation as store;
use ruma::{
    api::{
        error::ErrorKind,
        federation::{
            authentication::XMatrix,
            discovery::{get_remote_server_keys, get_server_keys, ServerSigningKeys},
        },
    },
    serde::{Base64, Raw},
    signatures::{PublicKeyMap, PublicKeySet, Verified},
    CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, RoomVersionId, ServerName,
};
use serde_json::json;

use super::client::{KeySet, Transport};
use crate::{now_ms, Error, Result};

impl Transport {
    /// This server's keys, signed by itself, as `/_matrix/key/v2/server` serves them.
    pub fn own_server_keys(&self) -> Result<Raw<ServerSigningKeys>> {
        use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
        let key = STANDARD_NO_PAD.encode(self.keys.keypair.public_key());
        let valid_until = now_ms() + self.config.federation.key_validity_ms as i64;
        let object = json!({
            "server_name": self.server_name(),
            "valid_until_ts": valid_until,
            "verify_keys": { self.keys.key_id(): { "key": key } },
            "old_verify_keys": {},
        });
        let mut object: CanonicalJsonObject = serde_json::from_value(object).map_err(crate::internal!())?;
        ruma::signatures::sign_json(self.server_name().as_str(), &self.keys.keypair, &mut object)
            .map_err(crate::internal!())?;
        Ok(Raw::from_json(serde_json::value::to_raw_value(&object).map_err(crate::internal!())?))
    }

    /// The keys of `server` valid at `valid_at` (ms), fetching them when none known is.
    pub async fn server_keys(&self, server: &ServerName, valid_at: i64) -> Result<PublicKeySet> {
        self.server_keys_from(server, valid_at, true).await
    }

    /// [`Self::server_keys`], asking notaries for them only when `notaries` (a notary's own keys
    /// are taken from the notary alone, so that notaries never vouch for each other in a loop).
    async fn server_keys_from(&self, server: &ServerName, valid_at: i64, notaries: bool) -> Result<PublicKeySet> {
        if server == self.server_name() {
            let mut set = PublicKeySet::new();
            set.insert(self.keys.key_id(), Base64::new(self.keys.keypair.public_key().to_vec()));
            return Ok(set);
        }
        // A partner's pinned keys are the only ones accepted for it.
        if let Some(pinned) = self.config.federation.pinned_keys.get(server.as_str()) {
            return pinned
                .iter()
                .map(|(id, key)| {
                    let key = Base64::parse(key.trim_end_matches('=')).map_err(|_| {
                        tracing::error!(%server, key_id = %id, "federation.pinned_keys: not base64");
                        Error::Internal
                    })?;
                    Ok((id.clone(), key))
                })
                .collect();
        }
        let usable = |keys: &BTreeMap<String, (String, i64)>| -> PublicKeySet {
            keys.iter()
                .filter(|(_, (_, until))| *until >= valid_at)
                .filter_map(|(id, (key, _))| Some((id.clone(), Base64::parse(key).ok()?)))
                .collect()
        };
        if let Some(keys) = self.remote_keys.servers.lock().unwrap().get(server) {
            let set = usable(keys);
            if !set.is_empty() {
                return Ok(set);
            }
        }
        let stored: BTreeMap<String, (String, i64)> = store::server_keys(self.db.pool(), server.as_str())
            .await?
            .into_iter()
            .map(|(id, key, until, expired)| (id, (key, expired.unwrap_or(until))))
            .collect();
        let set = usable(&stored);
        if !set.is_empty() {
            self.remote_keys.servers.lock().unwrap().insert(server.to_owned(), stored);
            return Ok(set);
        }
        let (_, fetched) = self.fetch_server_keys(server, notaries).await?;
        let set = usable(&fetched);
        self.remote_keys.servers.lock().unwrap().insert(server.to_owned(), fetched);
        if set.is_empty() {
            return Err(Error::forbidden(format!("No key of {server} is valid at {valid_at}")));
        }
        Ok(set)
    }

    /// Asks `server` for its keys and keeps those its own signature vouches for; when it cannot
    /// be reached, asks the notaries of `federation.trusted_key_servers` in turn (if `notaries`).
    async fn fetch_server_keys(&self, server: &ServerName, notaries: bool) -> Result<(CanonicalJsonObject, KeySet)> {
        let direct = async {
            let response = self.federation_request(server, get_server_keys::v2::Request::new()).await?;
            let object: CanonicalJsonObject = response
                .server_key
                .deserialize_as_unchecked()
                .map_err(|e| super::client::remote_error(server, format!("bad key response: {e}")))?;
            self.accept_server_keys(server, object, None).await
        };
        let error = match direct.await {
            Ok(found) => return Ok(found),
            Err(e) => e,
        };
        let notaries = if notaries { self.config.federation.trusted_key_servers.as_slice() } else { &[] };
        for notary in notaries {
            let Ok(notary) = ServerName::parse(notary) else { continue };
            if notary == server || notary == self.server_name() {
                continue;
            }
            match self.fetch_server_keys_via(server, &notary).await {
                Ok(found) => return Ok(found),
                Err(e) => tracing::info!(%server, %notary, error = %e, "no keys from the notary"),
            }
        }
        Err(error)
    }

    /// `server`'s keys as `notary` vouches for them (`/_matrix/key/v2/query/{server}`): signed
    /// by `server` itself and by the notary.
    async fn fetch_server_keys_via(
        &self,
        server: &ServerName,
        notary: &ServerName,
    ) -> Result<(CanonicalJsonObject, KeySet)> {
        let request =
            get_remote_server_keys::v2::Request::new(server.to_owned(), ruma::MilliSecondsSinceUnixEpoch::now());
        let response = self.federation_request(notary, request).await?;
        let mut found: Option<(CanonicalJsonObject, KeySet)> = None;
        for raw in response.server_keys {
            let Ok(object) = raw.deserialize_as_unchecked::<CanonicalJsonObject>() else { continue };
            let Ok((object, keys)) = self.accept_server_keys(server, object, Some(notary)).await else { continue };
            match &mut found {
                Some((_, all)) => all.extend(keys),
                None => found = Some((object, keys)),
            }
        }
        found.ok_or_else(|| super::client::remote_error(notary, format!("no usable keys of {server}")))
    }

    /// Checks a key object of `server` (its name, its validity, its own signature and, from a
    /// notary, the notary's), stores its keys and answers them.
    async fn accept_server_keys(
        &self,
        server: &ServerName,
        object: CanonicalJsonObject,
        notary: Option<&ServerName>,
    ) -> Result<(CanonicalJsonObject, KeySet)> {
        let from = notary.unwrap_or(server);
        let bad = |what: &str| super::client::remote_error(from, format!("bad keys of {server}: {what}"));
        if object.get("server_name").and_then(|v| v.as_str()) != Some(server.as_str()) {
            return Err(bad("server_name is another server's"));
        }
        let valid_until = match object.get("valid_until_ts") {
            Some(CanonicalJsonValue::Integer(i)) => i64::from(*i),
            _ => return Err(bad("no valid_until_ts")),
        };
        let mut keys = BTreeMap::new();
        let mut set = PublicKeySet::new();
        if let Some(CanonicalJsonValue::Object(verify)) = object.get("verify_keys") {
            for (id, v) in verify {
                if let Some(key) = v.as_object().and_then(|o| o.get("key")).and_then(|k| k.as_str()) {
                    let parsed = Base64::parse(key).map_err(|_| bad("key is not base64"))?;
                    set.insert(id.clone(), parsed);
                    keys.insert(id.clone(), (key.to_owned(), valid_until));
                }
            }
        }
        // The object must be signed by the keys it lists (and, from a notary, by the notary).
        verify_signature_of(server, set, &object).map_err(|e| bad(&format!("self-signature: {e}")))?;
        if let Some(notary) = notary {
            let notary_keys = Box::pin(self.server_keys_from(notary, now_ms(), false)).await?;
            verify_signature_of(notary, notary_keys, &object).map_err(|e| bad(&format!("notary signature: {e}")))?;
        }
        if let Some(CanonicalJsonValue::Object(old)) = object.get("old_verify_keys") {
            for (id, v) in old {
                let o = v.as_object();
                let key = o.and_then(|o| o.get("key")).and_then(|k| k.as_str());
                let expired = match o.and_then(|o| o.get("expired_ts")) {
                    Some(CanonicalJsonValue::Integer(i)) => i64::from(*i),
                    _ => continue,
                };
                if let Some(key) = key {
                    keys.insert(id.clone(), (key.to_owned(), expired));
                }
            }
        }
        for (id, (key, until)) in &keys {
            store::put_server_key(self.db.pool(), server.as_str(), id, key, *until, None).await?;
        }
        Ok((object, keys))
    }

    /// As a notary (`/_matrix/key/v2/query`): `server`'s key objects, signed by this server,
    /// for the key ids asked (every key when none), each valid until `min_valid` at least
    /// (`None`: now). What was fetched before and is valid enough is answered without asking
    /// `server` again; otherwise `server` is asked, and when it cannot answer, what was last
    /// fetched of it is answered, expired or not (as Synapse's notary). Nothing known: an error.
    pub async fn notary_keys(
        &self,
        server: &ServerName,
        key_ids: &[String],
        min_valid: Option<i64>,
    ) -> Result<Vec<Raw<ServerSigningKeys>>> {
        if server == self.server_name() {
            return Ok(vec![self.own_server_keys()?]);
        }
        self.check_server_allowed(server)?;
        let min_valid = min_valid.unwrap_or_else(now_ms);
        let valid_until = |o: &CanonicalJsonObject| match o.get("valid_until_ts") {
            Some(CanonicalJsonValue::Integer(i)) => i64::from(*i),
            _ => 0,
        };
        let cached = |all: bool| -> Vec<CanonicalJsonObject> {
            let notarised = self.remote_keys.notarised.lock().unwrap();
            let Some(known) = notarised.get(server) else { return Vec::new() };
            let mut out: Vec<CanonicalJsonObject> = Vec::new();
            let mut wanted: Vec<&CanonicalJsonObject> = key_ids.iter().filter_map(|id| known.get(id)).collect();
            // No key id asked, or (when the server is unreachable) none of those asked known:
            // every key known of the server.
            if key_ids.is_empty() || all && wanted.is_empty() {
                wanted = known.values().collect();
            }
            if !all && (wanted.is_empty() || (!key_ids.is_empty() && wanted.len() < key_ids.len())) {
                return Vec::new();
            }
            for object in wanted {
                if !all && valid_until(object) < min_valid {
                    return Vec::new();
                }
                if !out.contains(object) {
                    out.push(object.clone());
                }
            }
            out
        };
        let mut objects = cached(false);
        if objects.is_empty() {
            match self.fetch_server_keys(server, false).await {
                Ok((object, keys)) => {
                    self.remote_keys.servers.lock().unwrap().insert(server.to_owned(), keys);
                    if let Some(CanonicalJsonValue::Object(verify)) = object.get("verify_keys") {
                        let mut notarised = self.remote_keys.notarised.lock().unwrap();
                        let known = notarised.entry(server.to_owned()).or_default();
                        for id in verify.keys() {
                            known.insert(id.clone(), object.clone());
                        }
                    }
                    objects.push(object);
                }
                Err(e) => {
                    objects = cached(true);
                    if objects.is_empty() {
                        return Err(e);
                    }
                    tracing::info!(%server, error = %e, "notary: answering the keys fetched before");
                }
            }
        }
        let mut out = Vec::new();
        for mut object in objects {
            ruma::signatures::sign_json(self.server_name().as_str(), &self.keys.keypair, &mut object)
                .map_err(crate::internal!())?;
            out.push(Raw::from_json(serde_json::value::to_raw_value(&object).map_err(crate::internal!())?));
        }
        Ok(out)
    }

    /// Checks the signatures and content hash of a received event. A hash that does not match
    /// (an event redacted on the way, or altered) gives the redacted event, as the spec says.
    pub async fn verify_pdu(
        &self,
        object: &CanonicalJsonObject,
        version: &RoomVersionId,
    ) -> Result<CanonicalJsonObject> {
        let rules =
            version.rules().ok_or_else(|| Error::new(ErrorKind::UnsupportedRoomVersion, "Unknown room version"))?;
        let bad = |e: String| Error::forbidden(format!("Event signature check failed: {e}"));
        // No NUL in any string: identifiers cannot hold one, and PostgreSQL cannot store one.
        // Such an event is refused alone, like one with a bad signature.
        if canonical_has_nul(object) {
            return Err(Error::bad_json("The event contains a NUL character"));
        }
        let servers = ruma::signatures::required_server_signatures_to_verify_event(object, &rules.signatures)
            .map_err(|e| bad(e.to_string()))?;
        let ts = match object.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(i)) => i64::from(*i),
            _ => return Err(bad("no origin_server_ts".into())),
        };
        // Since v5, keys must be valid when the event was sent; before, any known key will do.
        let valid_at = if rules.enforce_key_validity { ts } else { 0 };
        let mut map = PublicKeyMap::new();
        for server in servers {
            let keys = self.server_keys(&server, valid_at).await?;
            map.insert(server.to_string(), keys);
        }
        match ruma::signatures::verify_event(&map, object, &rules) {
            Ok(Verified::All) => Ok(object.clone()),
            Ok(Verified::Signatures) => {
                tracing::info!("received event whose content hash does not match: kept redacted");
                ruma::canonical_json::redact(object.clone(), &rules.redaction, None).map_err(|e| bad(e.to_string()))
            }
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// The first half of authenticating a request from another server, before its body is
    /// read: the `X-Matrix` header is well formed, names a server this one federates with, and
    /// a key of that server that is known here or can be fetched from it. Whatever fails is
    /// `401 M_UNAUTHORIZED` (an unreachable origin included): an unsigned request never learns
    /// more, and its body is never read.
    pub async fn request_signer(&self, headers: &http::HeaderMap) -> Result<RequestSigner> {
        let unauthorized = |m: String| Error::new(ErrorKind::Unauthorized, m);
        let header = XMatrix::extract_from_http_headers(headers).map_err(|e| {
            let message = format!("Missing or malformed X-Matrix authorization: {e}");
            if headers.contains_key(http::header::AUTHORIZATION) {
                // Present but unreadable (an origin that is no server name): a bad request (400),
                // as Synapse answers it.
                Error::new(ErrorKind::InvalidParam, message)
            } else {
                unauthorized(message)
            }
        })?;
        if header.destination.as_deref().is_some_and(|d| d != self.server_name()) {
            return Err(unauthorized("The X-Matrix destination is another server".into()));
        }
        let origin = header.origin.clone();
        self.check_server_allowed(&origin)?;
        let keys = self.server_keys(&origin, now_ms()).await.map_err(|e| match e {
            Error::Matrix(_, m) | Error::Remote(m) => unauthorized(format!("Cannot get the keys of {origin}: {m}")),
            other => other,
        })?;
        if !keys.contains_key(header.key.as_str()) {
            return Err(unauthorized(format!("Unknown key {} of {origin}", header.key)));
        }
        Ok(RequestSigner { header, keys })
    }

    /// The second half: the `X-Matrix` signature of `signer` covers this very request (method,
    /// path, body, destination). Answers the origin.
    pub fn verify_request(&self, request: &http::Request<&[u8]>, signer: RequestSigner) -> Result<OwnedServerName> {
        let RequestSigner { header, keys } = signer;
        let origin = header.origin.clone();
        let map: PublicKeyMap = BTreeMap::from([(origin.to_string(), keys)]);
        if !request.body().is_empty() && serde_json::from_slice::<CanonicalJsonObject>(request.body()).is_err() {
            // Not canonical JSON (floats, numbers out of range): refused as such, not as a
            // signature that cannot be checked.
            return Err(Error::bad_json("The request body is not canonical JSON"));
        }
        header
            .verify_http_request(request, self.server_name(), &map)
            .map_err(|e| Error::new(ErrorKind::Unauthorized, format!("Bad X-Matrix signature: {e}")))?;
        Ok(origin)
    }
}

/// A federation request's `X-Matrix` header and the keys of the server it names, checked
/// before the body is read ([`Transport::request_signer`]).
pub struct RequestSigner {
    header: XMatrix,
    keys: PublicKeySet,
}

/// Whether a string or a key anywhere in `object` holds a NUL character.
pub fn canonical_has_nul(object: &CanonicalJsonObject) -> bool {
    fn value_has_nul(v: &CanonicalJsonValue) -> bool {
        match v {
            CanonicalJsonValue::String(s) => s.contains('\0'),
            CanonicalJsonValue::Array(items) => items.iter().any(value_has_nul),
            CanonicalJsonValue::Object(map) => canonical_has_nul(map),
            _ => false,
        }
    }
    object.iter().any(|(k, v)| k.contains('\0') || value_has_nul(v))
}

/// Checks `signer`'s signature on `object` with its `keys`, whoever else signed it too.
fn verify_signature_of(
    signer: &ServerName,
    keys: PublicKeySet,
    object: &CanonicalJsonObject,
) -> std::result::Result<(), String> {
    let mut only = object.clone();
    match only.get_mut("signatures") {
        Some(CanonicalJsonValue::Object(signatures)) if signatures.contains_key(signer.as_str()) => {
            signatures.retain(|name, _| name == signer.as_str());
        }
        _ => return Err(format!("no signature of {signer}")),
    }
    let map: PublicKeyMap = BTreeMap::from([(signer.to_string(), keys)]);
    ruma::signatures::verify_json(&map, &only).map_err(|e| e.to_string())
}
