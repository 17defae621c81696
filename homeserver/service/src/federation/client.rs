//! Requests to other servers: server discovery (IP literals, explicit ports, `.well-known`,
//! SRV records, port 8448) and requests signed with `X-Matrix`, over TLS (rustls).
//!
//! Discovery decides the address connected to, the name the certificate must carry and the
//! `Host` header; the HTTP client connects through a resolver that answers with the addresses
//! discovery chose. Certificates are verified against the system's roots and an optional extra
//! authority (`federation.trusted_ca`); `federation.insecure_loopback_tls`, for tests, skips the
//! verification only when every address of the destination is a loopback address.

use std::{
    any::TypeId,
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use ruma::{
    api::{
        federation::authentication::{ServerSignatures, XMatrix, XMatrixSigningInput},
        IncomingResponseExt, OutgoingBody, OutgoingRequest,
    },
    OwnedServerName, ServerName,
};

use crate::{
    core::Core,
    outbound::{is_forbidden, read_limited, BodyError},
    Error, Result,
};

/// The longest answer taken from another server (a `send_join` of a very large room fits).
pub(crate) const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// How long a discovered destination is reused.
const DESTINATION_TTL: Duration = Duration::from_secs(3600);

/// Where to reach a server.
#[derive(Clone, Debug)]
pub struct Destination {
    /// `https://host:port`, the host being the name the certificate must carry.
    pub base_url: String,
    /// The `Host` header.
    pub host: String,
    /// The addresses to connect to.
    pub addrs: Vec<SocketAddr>,
}

/// Requests to other servers and the checks of what they sign: discovery, signed requests,
/// other servers' keys (`keys.rs`). Above the core only; every service that speaks to another
/// server holds it.
pub struct Transport {
    core: Arc<Core>,
    clients: Clients,
    /// Other servers' keys in memory.
    pub(crate) remote_keys: KeyCache,
}

crate::core::over_core!(Transport);

impl Transport {
    pub(crate) fn new(core: Arc<Core>) -> Transport {
        Transport { core, clients: Clients::default(), remote_keys: KeyCache::default() }
    }

    /// Whether this server federates at all.
    pub fn federation_enabled(&self) -> bool {
        self.config.federation.enabled
    }

    /// Refuses servers federation may not reach (disabled, or not on the allow-list).
    pub fn check_server_allowed(&self, server: &ServerName) -> Result<()> {
        let config = &self.config.federation;
        if !config.enabled {
            return Err(Error::forbidden("Federation is disabled on this server"));
        }
        if server == self.server_name() {
            return Err(Error::forbidden("A request from this server to itself"));
        }
        if !config.allowed_servers.is_empty() && !config.allowed_servers.iter().any(|s| s == server.as_str()) {
            return Err(Error::forbidden(format!("This server does not federate with {server}")));
        }
        Ok(())
    }
}

/// A server's keys: key id → (public key, valid until).
pub(crate) type KeySet = std::collections::BTreeMap<String, (String, i64)>;

/// Other servers' keys in memory.
#[derive(Default)]
pub struct KeyCache {
    pub(crate) servers: Mutex<HashMap<OwnedServerName, KeySet>>,
    /// As a notary: the last key object each server gave for each of its key ids (checked,
    /// not yet signed by this server), to answer from when it is still valid enough or the
    /// server cannot be reached.
    pub(crate) notarised:
        Mutex<HashMap<OwnedServerName, std::collections::BTreeMap<String, ruma::CanonicalJsonObject>>>,
}

/// HTTP clients and discovered destinations.
#[derive(Default)]
struct Clients {
    built: OnceLock<Built>,
    destinations: Mutex<HashMap<OwnedServerName, (Destination, Instant)>>,
}

struct Built {
    /// Internal ranges other servers may be reached at (`federation.ip_range_allowlist`).
    allowed: Arc<Vec<ipnet::IpNet>>,
    verified: reqwest::Client,
    insecure: Option<reqwest::Client>,
    /// Host name → the addresses discovery chose for it.
    resolved: Arc<Mutex<HashMap<String, Vec<SocketAddr>>>>,
    dns: Option<hickory_resolver::TokioResolver>,
}

/// The resolver the clients connect through: the addresses discovery chose, or the system's
/// answer, without internal addresses the configuration does not allow (checked here, where
/// the connection is made, so that no later answer can slip one in).
struct DiscoveredResolver(Arc<Mutex<HashMap<String, Vec<SocketAddr>>>>, Arc<Vec<ipnet::IpNet>>);

impl reqwest::dns::Resolve for DiscoveredResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let known = self.0.lock().unwrap().get(name.as_str()).cloned();
        let host = name.as_str().to_owned();
        let allowed = self.1.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match known {
                Some(a) => a,
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let addrs: Vec<SocketAddr> = addrs.into_iter().filter(|a| !is_forbidden(a.ip(), &allowed)).collect();
            if addrs.is_empty() {
                return Err(Box::new(crate::outbound::Blocked) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The resolver of SRV records: the configured DNS servers, or the system's.
fn dns_resolver(servers: &[String]) -> std::result::Result<Option<hickory_resolver::TokioResolver>, String> {
    use hickory_resolver::{
        config::{NameServerConfigGroup, ResolverConfig},
        name_server::TokioConnectionProvider,
        TokioResolver,
    };
    if servers.is_empty() {
        return Ok(TokioResolver::builder_tokio().ok().map(|b| b.build()));
    }
    let mut group = NameServerConfigGroup::new();
    for s in servers {
        let addr: SocketAddr = s.parse().map_err(|_| format!("federation.dns_servers: {s:?} is not an ip:port"))?;
        group.merge(NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true));
    }
    let config = ResolverConfig::from_parts(None, Vec::new(), group);
    Ok(Some(TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).build()))
}

/// The HTTP clients and the resolver that the `[federation]` settings describe.
fn build_clients(config: &crate::config::Federation) -> std::result::Result<Built, String> {
    let resolved: Arc<Mutex<HashMap<String, Vec<SocketAddr>>>> = Arc::default();
    let allowed = crate::outbound::parse_allowlist("federation.ip_range_allowlist", &config.ip_range_allowlist)
        .map_err(|_| "federation.ip_range_allowlist: not a list of address ranges".to_owned())?;
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let base = || {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(DiscoveredResolver(resolved.clone(), allowed.clone())))
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(format!("Diplomatie/{}", env!("CARGO_PKG_VERSION")))
    };
    let mut verified = base();
    for cert in crate::outbound::read_ca("federation.trusted_ca", &config.trusted_ca)? {
        verified = verified.add_root_certificate(cert);
    }
    let build =
        |b: reqwest::ClientBuilder| b.build().map_err(|e| format!("cannot build the federation HTTP client: {e}"));
    let verified = build(verified)?;
    let insecure =
        if config.insecure_loopback_tls { Some(build(base().danger_accept_invalid_certs(true))?) } else { None };
    let dns = dns_resolver(&config.dns_servers)?;
    Ok(Built { allowed, verified, insecure, resolved, dns })
}

impl Transport {
    fn federation_clients(&self) -> Result<&Built> {
        if let Some(b) = self.clients.built.get() {
            return Ok(b);
        }
        let built = build_clients(&self.config.federation).map_err(|e| {
            tracing::error!(error = %e, "federation settings");
            Error::Internal
        })?;
        let _ = self.clients.built.set(built);
        Ok(self.clients.built.get().expect("just set"))
    }

    /// Builds the federation clients at start-up, so that unusable `[federation]` settings stop
    /// the server with their reason rather than fail its requests later.
    pub(crate) fn prepare_federation_clients(&self) -> std::result::Result<(), String> {
        if self.clients.built.get().is_none() {
            let _ = self.clients.built.set(build_clients(&self.config.federation)?);
        }
        Ok(())
    }

    /// Where `server` is reached (cached for an hour).
    pub async fn destination(&self, server: &ServerName) -> Result<Destination> {
        if let Some((d, at)) = self.clients.destinations.lock().unwrap().get(server) {
            if at.elapsed() < DESTINATION_TTL {
                return Ok(d.clone());
            }
        }
        let mut d = self.discover(server).await?;
        let built = self.federation_clients()?;
        // Never an internal address unless allowed: a server name is anybody's to write (an
        // unsigned request's origin, a `via`), and must not aim this server at its own network.
        d.addrs.retain(|a| !is_forbidden(a.ip(), &built.allowed));
        if d.addrs.is_empty() {
            return Err(remote_error(
                server,
                "it is reached only at internal addresses, which federation.ip_range_allowlist does not allow",
            ));
        }
        if let Some((host, _)) = split_host(&d.base_url["https://".len()..]) {
            built.resolved.lock().unwrap().insert(host.trim_matches(['[', ']']).to_owned(), d.addrs.clone());
        }
        self.clients.destinations.lock().unwrap().insert(server.to_owned(), (d.clone(), Instant::now()));
        Ok(d)
    }

    /// Server discovery, as the spec orders its steps.
    async fn discover(&self, server: &ServerName) -> Result<Destination> {
        let name = server.as_str();
        let (host, port) = split_host(name).ok_or_else(|| remote_error(server, "not a server name"))?;
        // 1. An IP literal, with or without a port.
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            let port = port.unwrap_or(8448);
            return Ok(Destination {
                base_url: format!("https://{host}:{port}"),
                host: name.to_owned(),
                addrs: vec![SocketAddr::new(ip, port)],
            });
        }
        // 2. A host name with an explicit port.
        if let Some(port) = port {
            return Ok(Destination {
                base_url: format!("https://{host}:{port}"),
                host: name.to_owned(),
                addrs: lookup(server, host, port).await?,
            });
        }
        // 3. `.well-known` delegation.
        if let Some(delegated) = self.well_known(host).await {
            if let Some((dhost, dport)) = split_host(&delegated) {
                if let Ok(ip) = dhost.trim_matches(['[', ']']).parse::<IpAddr>() {
                    let port = dport.unwrap_or(8448);
                    return Ok(Destination {
                        base_url: format!("https://{dhost}:{port}"),
                        host: delegated.clone(),
                        addrs: vec![SocketAddr::new(ip, port)],
                    });
                }
                if let Some(port) = dport {
                    return Ok(Destination {
                        base_url: format!("https://{dhost}:{port}"),
                        host: delegated.clone(),
                        addrs: lookup(server, dhost, port).await?,
                    });
                }
                if let Some((target, port)) = self.srv(dhost).await {
                    return Ok(Destination {
                        base_url: format!("https://{dhost}:{port}"),
                        host: dhost.to_owned(),
                        addrs: lookup(server, &target, port).await?,
                    });
                }
                return Ok(Destination {
                    base_url: format!("https://{dhost}:8448"),
                    host: dhost.to_owned(),
                    addrs: lookup(server, dhost, 8448).await?,
                });
            }
        }
        // 4. SRV records of the server name itself; 5. port 8448.
        if let Some((target, port)) = self.srv(host).await {
            return Ok(Destination {
                base_url: format!("https://{host}:{port}"),
                host: host.to_owned(),
                addrs: lookup(server, &target, port).await?,
            });
        }
        Ok(Destination {
            base_url: format!("https://{host}:8448"),
            host: host.to_owned(),
            addrs: lookup(server, host, 8448).await?,
        })
    }

    /// `m.server` of `https://host/.well-known/matrix/server`, if it says one.
    async fn well_known(&self, host: &str) -> Option<String> {
        let built = self.federation_clients().ok()?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 443))
            .await
            .ok()?
            .filter(|a| !is_forbidden(a.ip(), &built.allowed))
            .collect();
        if addrs.is_empty() {
            return None;
        }
        let client = self.client_for(built, &addrs);
        let response = client
            .get(format!("https://{host}/.well-known/matrix/server"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body: serde_json::Value = response.json().await.ok()?;
        let delegated = body.get("m.server")?.as_str()?.to_owned();
        // It must itself be a valid server name.
        ServerName::parse(&delegated).ok()?;
        Some(delegated)
    }

    /// The first SRV record (`_matrix-fed._tcp`, then the deprecated `_matrix._tcp`).
    async fn srv(&self, host: &str) -> Option<(String, u16)> {
        let dns = self.federation_clients().ok()?.dns.as_ref()?;
        for prefix in ["_matrix-fed._tcp", "_matrix._tcp"] {
            if let Ok(found) = dns.srv_lookup(format!("{prefix}.{host}.")).await {
                if let Some(r) = found.iter().min_by_key(|r| r.priority()) {
                    let target = r.target().to_utf8();
                    return Some((target.trim_end_matches('.').to_owned(), r.port()));
                }
            }
        }
        None
    }

    fn client_for<'b>(&self, built: &'b Built, addrs: &[SocketAddr]) -> &'b reqwest::Client {
        match &built.insecure {
            Some(insecure) if !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()) => insecure,
            _ => &built.verified,
        }
    }

    /// The room another server's alias names, and servers in it (`/query/directory`).
    pub async fn query_alias(&self, alias: &ruma::RoomAliasId) -> Result<(ruma::OwnedRoomId, Vec<OwnedServerName>)> {
        let request = ruma::api::federation::query::get_room_information::v1::Request::new(alias.to_owned());
        let answer = self.federation_request(alias.server_name(), request).await?;
        Ok((answer.room_id, answer.servers))
    }

    /// Another server's user's display name and avatar (`/query/profile`).
    pub async fn query_profile(&self, user: &ruma::UserId) -> Result<(Option<String>, Option<String>)> {
        let request = ruma::api::federation::query::get_profile_information::v1::Request::new(user.to_owned());
        let answer = self.federation_request(user.server_name(), request).await?;
        let text = |field: &str| answer.get(field).and_then(serde_json::Value::as_str).map(str::to_owned);
        Ok((text("displayname"), text("avatar_url")))
    }

    /// Sends a typed request to another server, signed with `X-Matrix` when the endpoint
    /// requires it, and parses its answer. A Matrix error of the other server is passed on.
    pub async fn federation_request<T>(&self, server: &ServerName, request: T) -> Result<T::IncomingResponse>
    where
        T: OutgoingRequest<PathBuilder = ruma::api::path_builder::SinglePath> + 'static,
    {
        self.federation_request_within(server, request, MAX_RESPONSE_BYTES).await
    }

    /// [`Self::federation_request`] whose answer is refused when its body is longer than
    /// `max_bytes`.
    pub async fn federation_request_within<T>(
        &self,
        server: &ServerName,
        request: T,
        max_bytes: u64,
    ) -> Result<T::IncomingResponse>
    where
        T: OutgoingRequest<PathBuilder = ruma::api::path_builder::SinglePath> + 'static,
    {
        let answer = self.federation_http(server, request, max_bytes).await?;
        Self::parse_answer::<T>(server, answer)
    }

    /// Parses another server's answer to a request of type `T`.
    pub(crate) fn parse_answer<T: OutgoingRequest>(
        server: &ServerName,
        answer: http::Response<Vec<u8>>,
    ) -> Result<T::IncomingResponse> {
        let (parts, body) = answer.into_parts();
        let answer = http::Response::from_parts(parts, &body[..]);
        T::IncomingResponse::try_from_http_response(answer).map_err(|e| from_response_error(server, e))
    }

    /// Sends a typed request to another server as [`Self::federation_request_within`] does, and
    /// gives its answer unparsed, for the callers that read it more leniently than ruma's types.
    pub(crate) async fn federation_http<T>(
        &self,
        server: &ServerName,
        request: T,
        max_bytes: u64,
    ) -> Result<http::Response<Vec<u8>>>
    where
        T: OutgoingRequest<PathBuilder = ruma::api::path_builder::SinglePath> + 'static,
    {
        self.check_server_allowed(server)?;
        let destination = self.destination(server).await?;
        let built = self.federation_clients()?;
        let (mut parts, body) = request
            .try_into_http_request_inner(&destination.base_url, ())
            .map_err(|e| remote_error(server, format!("cannot build the request: {e}")))?
            .into_parts();
        if let Some(content_type) = body.content_type() {
            parts.headers.entry(http::header::CONTENT_TYPE).or_insert(content_type);
        }
        let body: Vec<u8> = body.try_into_buf().map_err(|e| {
            remote_error(
                server,
                format!("cannot build the request: {}", Into::<ruma::api::error::IntoHttpError>::into(e)),
            )
        })?;
        let http = http::Request::from_parts(parts, body);
        let signed = TypeId::of::<T::Authentication>() == TypeId::of::<ServerSignatures>();
        self.send_http(server, &destination, built, http, signed, max_bytes).await
    }

    /// Sends a JSON body the caller built to another server, signed (`X-Matrix`): for the
    /// deprecated endpoints ruma's types no longer carry whole (`/v1/invite`, whose body is the
    /// event itself). `path` starts with `/_matrix/`.
    pub(crate) async fn federation_json(
        &self,
        server: &ServerName,
        method: http::Method,
        path: &str,
        body: &serde_json::Value,
        max_bytes: u64,
    ) -> Result<http::Response<Vec<u8>>> {
        self.check_server_allowed(server)?;
        let destination = self.destination(server).await?;
        let built = self.federation_clients()?;
        let bytes = serde_json::to_vec(body).map_err(crate::internal!())?;
        let uri = format!("{}{path}", destination.base_url.trim_end_matches('/'));
        let http = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .map_err(|e| remote_error(server, format!("cannot build the request: {e}")))?;
        self.send_http(server, &destination, built, http, true, max_bytes).await
    }

    /// Signs (when `signed`) and sends a request, and reads its answer within `max_bytes`.
    async fn send_http(
        &self,
        server: &ServerName,
        destination: &Destination,
        built: &Built,
        mut http: http::Request<Vec<u8>>,
        signed: bool,
        max_bytes: u64,
    ) -> Result<http::Response<Vec<u8>>> {
        if signed {
            let input = XMatrixSigningInput::new(self.server_name().to_owned(), server.to_owned(), &self.keys.keypair);
            let header = XMatrix::sign_http_request(&http, input)
                .map_err(|e| remote_error(server, format!("cannot sign the request: {e}")))?;
            http.headers_mut().insert(http::header::AUTHORIZATION, http::HeaderValue::from(&header));
        }
        let client = self.client_for(built, &destination.addrs);
        let (parts, body) = http.into_parts();
        let url = parts.uri.to_string();
        let mut builder = client.request(parts.method, url).headers(parts.headers).body(body);
        builder = builder.header(http::header::HOST, destination.host.clone());
        let response = builder.send().await.map_err(|e| remote_error(server, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = read_limited(response, max_bytes).await.map_err(|e| match e {
            BodyError::TooLarge => remote_error(server, format!("the answer is longer than {max_bytes} bytes")),
            BodyError::Http(e) => remote_error(server, e),
        })?;
        let mut answer = http::Response::builder().status(status);
        if let Some(h) = answer.headers_mut() {
            *h = headers;
        }
        answer.body(bytes).map_err(crate::internal!())
    }
}

/// An error of another server, or of reaching it, as this server reports it.
pub(crate) fn remote_error(server: &ServerName, what: impl std::fmt::Display) -> Error {
    tracing::warn!(%server, error = %what, "federation request failed");
    Error::Remote(format!("Request to {server} failed: {what}"))
}

/// The error of another server's answer: its own Matrix error when it gave one.
fn from_response_error<E: std::fmt::Display + 'static>(
    server: &ServerName,
    e: ruma::api::error::FromHttpResponseError<E>,
) -> Error {
    use ruma::api::error::FromHttpResponseError;
    match e {
        FromHttpResponseError::Server(inner) => {
            let any: &dyn std::any::Any = &inner;
            if let Some(m) = any.downcast_ref::<ruma::api::error::Error>() {
                if let ruma::api::error::ErrorBody::Standard(body) = &m.body {
                    tracing::info!(%server, errcode = ?body.kind, message = %body.message, "other server refused");
                    return Error::new(body.kind.clone(), format!("{server}: {}", body.message));
                }
            }
            remote_error(server, inner)
        }
        other => remote_error(server, other),
    }
}

/// Splits `host[:port]` (IPv6 literals in brackets).
fn split_host(name: &str) -> Option<(&str, Option<u16>)> {
    if name.starts_with('[') {
        let end = name.find(']')?;
        let (host, rest) = name.split_at(end + 1);
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None => None,
        };
        return Some((host, port));
    }
    match name.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((name, None)),
    }
}

async fn lookup(server: &ServerName, host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((host, port)).await.map_err(|e| remote_error(server, e))?.collect();
    if addrs.is_empty() {
        return Err(remote_error(server, format!("{host} has no address")));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::split_host;

    #[test]
    fn server_names_split_into_host_and_port() {
        assert_eq!(split_host("example.org"), Some(("example.org", None)));
        assert_eq!(split_host("example.org:8449"), Some(("example.org", Some(8449))));
        assert_eq!(split_host("127.0.0.1:1234"), Some(("127.0.0.1", Some(1234))));
        assert_eq!(split_host("[::1]:80"), Some(("[::1]", Some(80))));
        assert_eq!(split_host("[::1]"), Some(("[::1]", None)));
        assert_eq!(split_host("example.org:port"), None);
    }
}
