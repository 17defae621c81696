//! The identity servers users name (identity service API v2): looking up whom an e-mail
//! address belongs to, storing a third-party invite for an address nobody has bound yet, binding
//! and unbinding a user's addresses. Requests carry the user's identity-server token, except the
//! unbind, which this server signs (`X-Matrix`), as the spec asks.

use std::sync::{Arc, OnceLock};

use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{json, Value};

use diplomatie_storage::threepids::{self, Threepid};

use crate::{core::Core, Error, Result};

/// The answer a request to an identity server may be read to, in bytes.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

pub struct Identity {
    core: Arc<Core>,
    client: OnceLock<crate::outbound::Client>,
}

crate::core::over_core!(Identity);

/// What an identity server answers `store-invite`: the invite's token and the keys that will
/// sign it once the address is bound.
#[derive(Debug, Deserialize)]
pub struct StoredInvite {
    pub token: String,
    #[serde(default)]
    pub public_keys: Vec<Value>,
    #[serde(default)]
    pub display_name: String,
}

/// An address bound to a user on an identity server (`/3pid/bind`'s answer).
#[derive(Debug, Deserialize)]
pub struct Bound {
    pub medium: String,
    pub address: String,
    pub mxid: OwnedUserId,
}

impl Identity {
    pub(crate) fn new(core: Arc<Core>) -> Identity {
        Identity { core, client: OnceLock::new() }
    }

    /// Whose `medium` `address` is, according to `id_server` (hashed lookup, `sha256`).
    pub async fn lookup(
        &self,
        id_server: &str,
        token: &str,
        medium: &str,
        address: &str,
    ) -> Result<Option<OwnedUserId>> {
        use base64::Engine;
        use sha2::Digest;
        let details =
            self.call(id_server, reqwest::Method::GET, "/_matrix/identity/v2/hash_details", token, None).await?;
        let pepper = details.get("lookup_pepper").and_then(Value::as_str).unwrap_or_default().to_owned();
        let sha256 =
            details.get("algorithms").and_then(Value::as_array).is_some_and(|a| a.iter().any(|x| x == "sha256"));
        let (algorithm, key) = if sha256 {
            let digest = sha2::Sha256::digest(format!("{address} {medium} {pepper}").as_bytes());
            ("sha256", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest))
        } else {
            ("none", format!("{address} {medium}"))
        };
        let body = json!({ "addresses": [key], "algorithm": algorithm, "pepper": pepper });
        let answer =
            self.call(id_server, reqwest::Method::POST, "/_matrix/identity/v2/lookup", token, Some(&body)).await?;
        let found = answer.get("mappings").and_then(|m| m.get(&key)).and_then(Value::as_str);
        Ok(found.and_then(|m| OwnedUserId::try_from(m).ok()))
    }

    /// Stores an invite of `address` on `id_server` (`store-invite`), which e-mails it; `room`
    /// says what the invite shows of the room and its sender.
    pub async fn store_invite(&self, id_server: &str, token: &str, invite: &Value) -> Result<StoredInvite> {
        let answer = self
            .call(id_server, reqwest::Method::POST, "/_matrix/identity/v2/store-invite", token, Some(invite))
            .await?;
        serde_json::from_value(answer).map_err(|e| {
            Error::new(ruma::api::error::ErrorKind::Unknown, format!("{id_server}: bad store-invite answer: {e}"))
        })
    }

    /// Binds the address `id_server` validated in session `sid` to `user`.
    pub async fn bind(
        &self,
        id_server: &str,
        token: &str,
        sid: &str,
        client_secret: &str,
        user: &UserId,
    ) -> Result<Bound> {
        let body = json!({ "sid": sid, "client_secret": client_secret, "mxid": user });
        let answer =
            self.call(id_server, reqwest::Method::POST, "/_matrix/identity/v2/3pid/bind", token, Some(&body)).await?;
        serde_json::from_value(answer)
            .map_err(|e| Error::new(ruma::api::error::ErrorKind::Unknown, format!("{id_server}: bad bind answer: {e}")))
    }

    /// Unbinds `user`'s address on `id_server`, a request this server signs. The signed JSON
    /// names the identity server `destination_is` (not `destination`, which names homeservers),
    /// as Sydent checks and Synapse signs.
    pub async fn unbind(&self, id_server: &str, user: &UserId, medium: &str, address: &str) -> Result<()> {
        use ruma::{signatures::Ed25519KeyPair, CanonicalJsonValue};
        let body = json!({ "mxid": user, "threepid": { "medium": medium, "address": address } });
        let path = "/_matrix/identity/v2/3pid/unbind";
        let signed = json!({
            "method": "POST",
            "uri": path,
            "origin": self.server_name(),
            "destination_is": id_server,
            "content": body,
        });
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(signed).map_err(crate::internal!())?;
        let keypair: &Ed25519KeyPair = &self.keys.keypair;
        ruma::signatures::sign_json(self.server_name().as_str(), keypair, &mut object).map_err(crate::internal!())?;
        let signature = object
            .get("signatures")
            .and_then(|s| match s {
                CanonicalJsonValue::Object(by_server) => by_server.get(self.server_name().as_str()),
                _ => None,
            })
            .and_then(|s| match s {
                CanonicalJsonValue::Object(by_key) => by_key.iter().next(),
                _ => None,
            })
            .and_then(|(key, sig)| match sig {
                CanonicalJsonValue::String(sig) => Some((key.clone(), sig.clone())),
                _ => None,
            })
            .ok_or(Error::Internal)?;
        let header =
            format!("X-Matrix origin=\"{}\",key=\"{}\",sig=\"{}\"", self.server_name(), signature.0, signature.1);
        let url = self.url(id_server, path)?;
        let request = self
            .client()?
            .post(url)
            .header(http::header::AUTHORIZATION, header)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?);
        self.send(id_server, request).await.map(|_| ())
    }

    /// Whether the identity server still vouches for `public_key` (its `key_validity_url`, as
    /// a third-party invite names it). Unreachable or unclear is not valid.
    pub async fn key_is_valid(&self, validity_url: &str, public_key: &str) -> Result<bool> {
        let mut url = reqwest::Url::parse(validity_url)
            .map_err(|_| Error::forbidden("The invite's key_validity_url is not a URL"))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(Error::forbidden("The invite's key_validity_url is not HTTP(S)"));
        }
        if url.scheme() == "https" && self.config.identity.plain_http_loopback && crate::outbound::is_loopback(&url) {
            let _ = url.set_scheme("http");
        }
        url.query_pairs_mut().append_pair("public_key", public_key);
        let host = url.host_str().unwrap_or_default().to_owned();
        let answer = self.send(&host, self.client()?.get(url)).await?;
        Ok(answer.get("valid").and_then(Value::as_bool) == Some(true))
    }

    /// `POST /account/3pid/bind`: binds the address the identity server validated to `user`
    /// there, and records it as the account's.
    pub async fn bind_address(
        &self,
        user: &UserId,
        id_server: &str,
        token: &str,
        sid: &str,
        client_secret: &str,
    ) -> Result<Threepid> {
        let bound = self.bind(id_server, token, sid, client_secret, user).await?;
        if bound.mxid != user {
            return Err(Error::new(
                ruma::api::error::ErrorKind::ThreepidAuthFailed,
                "The identity server bound the address to someone else",
            ));
        }
        let now = crate::now_ms();
        let threepid = Threepid {
            medium: bound.medium,
            address: bound.address,
            validated_at: now,
            added_at: now,
            id_server: Some(id_server.to_owned()),
        };
        threepids::upsert(self.db.pool(), user.as_str(), &threepid).await?;
        Ok(threepid)
    }

    /// `GET /account/3pid`.
    pub async fn addresses(&self, user: &UserId) -> Result<Vec<Threepid>> {
        Ok(threepids::list(self.db.pool(), user.as_str()).await?)
    }

    /// `POST /account/3pid/delete` (`forget`: the account loses the address) and
    /// `/account/3pid/unbind` (it keeps it): unbinds it on `id_server`, or the identity server
    /// it was bound through. Answers whether an identity server unbound it.
    pub async fn unbind_address(
        &self,
        user: &UserId,
        id_server: Option<&str>,
        medium: &str,
        address: &str,
        forget: bool,
    ) -> Result<bool> {
        let known = threepids::list(self.db.pool(), user.as_str())
            .await?
            .into_iter()
            .find(|t| t.medium == medium && t.address == address);
        let Some(known) = known else {
            // An address bound out of band (through the identity server itself) is unbound
            // there when the client names the server.
            return match id_server {
                Some(server) => match self.unbind(server, user, medium, address).await {
                    Ok(()) => Ok(true),
                    Err(e) if forget => Err(e),
                    Err(_) => Ok(false),
                },
                None if forget => Err(Error::not_found("No such address on this account")),
                None => Ok(false),
            };
        };
        let server = id_server.map(str::to_owned).or(known.id_server.clone());
        let unbound = match &server {
            Some(server) => match self.unbind(server, user, medium, address).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(%user, %server, error = %e, "could not unbind an address");
                    false
                }
            },
            None => false,
        };
        if forget {
            threepids::delete(self.db.pool(), user.as_str(), medium, address).await?;
        } else if unbound {
            threepids::upsert(self.db.pool(), user.as_str(), &Threepid { id_server: None, ..known }).await?;
        }
        Ok(unbound)
    }

    /// Unbinds every address of `user` from the identity server it was bound at, and forgets
    /// them all (a deactivation). An identity server out of reach does not stop it.
    pub async fn forget_all(&self, user: &UserId) -> Result<()> {
        for known in threepids::list(self.db.pool(), user.as_str()).await? {
            if let Some(server) = &known.id_server {
                if let Err(e) = self.unbind(server, user, &known.medium, &known.address).await {
                    tracing::info!(%user, %server, error = %e, "could not unbind an address");
                }
            }
            threepids::delete(self.db.pool(), user.as_str(), &known.medium, &known.address).await?;
        }
        Ok(())
    }

    /// `https://id_server/path`; plain HTTP for a server on loopback when
    /// `identity.plain_http_loopback` says so (tests).
    fn url(&self, id_server: &str, path: &str) -> Result<reqwest::Url> {
        let invalid = || Error::invalid_param(format!("Invalid identity server {id_server:?}"));
        if id_server.is_empty() || id_server.contains(['/', '?', '#', '@']) {
            return Err(invalid());
        }
        let url = reqwest::Url::parse(&format!("https://{id_server}{path}")).map_err(|_| invalid())?;
        if self.config.identity.plain_http_loopback && crate::outbound::is_loopback(&url) {
            let mut plain = url;
            let _ = plain.set_scheme("http");
            return Ok(plain);
        }
        Ok(url)
    }

    async fn call(
        &self,
        id_server: &str,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let url = self.url(id_server, path)?;
        let client = self.client()?;
        let mut request = client.for_url(&url).request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(id_server, request).await
    }

    /// Sends a request and reads its JSON answer; the identity server's own Matrix errors are
    /// passed on (an unknown token is the caller's), anything else is a 502-like `M_UNKNOWN`.
    async fn send(&self, id_server: &str, request: reqwest::RequestBuilder) -> Result<Value> {
        let unreachable = |e: String| {
            tracing::info!(%id_server, error = %e, "identity server request failed");
            Error::new(ruma::api::error::ErrorKind::Unknown, format!("Identity server {id_server}: {e}"))
        };
        let response = request.send().await.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = crate::outbound::read_limited(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| unreachable(format!("{e:?}")))?;
        let value: Value = serde_json::from_slice(&body).map_err(|_| unreachable(format!("{status}, not JSON")))?;
        if status.is_success() {
            return Ok(value);
        }
        let errcode = value.get("errcode").and_then(Value::as_str).unwrap_or("M_UNKNOWN");
        let message = value.get("error").and_then(Value::as_str).unwrap_or("refused");
        use ruma::api::error::ErrorKind;
        let said = format!("Identity server {id_server}: {message}");
        let kind = match errcode {
            "M_UNAUTHORIZED" | "M_UNKNOWN_TOKEN" | "M_TERMS_NOT_SIGNED" => Error::forbidden(said),
            "M_NO_VALID_SESSION" | "M_SESSION_NOT_VALIDATED" => Error::new(ErrorKind::ThreepidAuthFailed, said),
            "M_THREEPID_IN_USE" => Error::new(ErrorKind::ThreepidInUse, said),
            "M_INVALID_PARAM" => Error::invalid_param(said),
            "M_NOT_FOUND" => Error::not_found(said),
            _ => unreachable(format!("{status} {errcode} {message}")),
        };
        Err(kind)
    }

    fn client(&self) -> Result<&crate::outbound::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let allowed =
            crate::outbound::parse_allowlist("identity.ip_range_allowlist", &self.config.identity.ip_range_allowlist)?;
        let client = crate::outbound::client(
            &self.config.outbound,
            allowed,
            std::time::Duration::from_millis(self.config.identity.timeout_ms),
            "identity",
        )?;
        Ok(self.client.get_or_init(|| client))
    }
}
