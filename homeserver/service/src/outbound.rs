//! Requests the server makes on its users' behalf (URL previews, push gateways), guarded
//! against server-side request forgery.
//!
//! Every address a host name resolves to is checked before any connection is made, in the
//! resolver the HTTP client connects with, so a host cannot pass the check with one address and
//! connect with another (DNS rebinding): loopback, private, link-local, carrier-grade NAT,
//! unique-local, multicast and unspecified addresses are refused unless an operator allows their
//! range explicitly. Address literals bypass resolvers, so URLs are checked too, redirects
//! included.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;

use crate::{Error, Result};

/// Parses an allow-list of ranges (`127.0.0.1/32`) or single addresses from the configuration.
pub fn parse_allowlist(option: &str, ranges: &[String]) -> Result<Arc<Vec<IpNet>>> {
    let nets = ranges.iter().map(|r| {
        r.parse::<IpNet>().or_else(|_| r.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
            tracing::error!(range = %r, "{option}: not an address range");
            Error::Internal
        })
    });
    Ok(Arc::new(nets.collect::<Result<Vec<_>>>()?))
}

/// The HTTP clients of one purpose: one that checks certificates against the web roots and
/// `outbound.trusted_ca`, and, when `outbound.insecure_loopback_tls` is on, one that does not,
/// used for `localhost` and loopback addresses only.
pub struct Client {
    verified: reqwest::Client,
    insecure: Option<reqwest::Client>,
}

impl Client {
    /// The client to reach `url` with.
    pub fn for_url(&self, url: &reqwest::Url) -> &reqwest::Client {
        match &self.insecure {
            Some(insecure) if is_loopback(url) => insecure,
            _ => &self.verified,
        }
    }

    pub fn get(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.for_url(&url).get(url)
    }

    pub fn post(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.for_url(&url).post(url)
    }
}

pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// HTTP clients whose every connection, redirects included, passes the address check, with a
/// bound on the time of a whole request, trusting what `[outbound]` says.
pub fn client(
    tls: &crate::config::Outbound,
    allowed: Arc<Vec<IpNet>>,
    timeout: std::time::Duration,
    purpose: &str,
) -> Result<Client> {
    client_with(tls, allowed, timeout, purpose, true)
}

/// [`client`], with or without keeping connections open between requests (`keep_alive`).
pub fn client_with(
    tls: &crate::config::Outbound,
    allowed: Arc<Vec<IpNet>>,
    timeout: std::time::Duration,
    purpose: &str,
    keep_alive: bool,
) -> Result<Client> {
    // `loopback_only`: the unchecked client never follows a redirect off loopback.
    let builder = |loopback_only: bool| {
        let for_redirects = allowed.clone();
        reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckingResolver::new(allowed.clone())))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    attempt.error("too many redirects")
                } else if literal_is_forbidden(attempt.url(), &for_redirects)
                    || (loopback_only && !is_loopback(attempt.url()))
                {
                    attempt.error(Blocked)
                } else {
                    attempt.follow()
                }
            }))
            .timeout(timeout)
            .pool_max_idle_per_host(if keep_alive { usize::MAX } else { 0 })
            .user_agent(format!("Diplomatie/{} ({purpose})", env!("CARGO_PKG_VERSION")))
    };
    let insecure =
        if tls.insecure_loopback_tls { Some(built(builder(true).danger_accept_invalid_certs(true))?) } else { None };
    Ok(Client { verified: built(trusting(builder(false), tls)?)?, insecure })
}

fn built(b: reqwest::ClientBuilder) -> Result<reqwest::Client> {
    b.build().map_err(|e| {
        tracing::error!(error = %e, "cannot build an HTTP client");
        Error::Internal
    })
}

/// `b`, also trusting `outbound.trusted_ca`.
fn trusting(mut b: reqwest::ClientBuilder, tls: &crate::config::Outbound) -> Result<reqwest::ClientBuilder> {
    let certs = read_ca("outbound.trusted_ca", &tls.trusted_ca).map_err(|e| {
        tracing::error!(error = %e, "outbound settings");
        Error::Internal
    })?;
    for cert in certs {
        b = b.add_root_certificate(cert);
    }
    Ok(b)
}

/// HTTP clients to servers the operator configured (identity providers, a CAS server): no
/// address check (they are often on the ministry's own network), no redirect followed, the
/// web roots and `outbound.trusted_ca` trusted, loopback unchecked when
/// `outbound.insecure_loopback_tls` is on.
pub fn operator_client(tls: &crate::config::Outbound, timeout: std::time::Duration, purpose: &str) -> Result<Client> {
    let builder = || {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .user_agent(format!("Diplomatie/{} ({purpose})", env!("CARGO_PKG_VERSION")))
    };
    let insecure =
        if tls.insecure_loopback_tls { Some(built(builder().danger_accept_invalid_certs(true))?) } else { None };
    Ok(Client { verified: built(trusting(builder(), tls)?)?, insecure })
}

/// The certificates of a `trusted_ca` option (`option` names it in errors); none when it is
/// empty.
pub fn read_ca(option: &str, path: &std::path::Path) -> std::result::Result<Vec<reqwest::Certificate>, String> {
    if path.as_os_str().is_empty() {
        return Ok(Vec::new());
    }
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("{option} {shown}: {e}"))?;
    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{option} {shown}: not PEM certificates: {e}"))
}

/// Whether a request failed because of the address check.
pub fn was_blocked(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.is::<Blocked>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Whether an address is one the server must never reach on a user's behalf, unless `allowed` names its range.
pub fn is_forbidden(ip: IpAddr, allowed: &[IpNet]) -> bool {
    if allowed.iter().any(|net| net.contains(&ip)) {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden(IpAddr::V4(v4), allowed);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || (first & 0xffc0) == 0xfec0 // site local (deprecated)
                || first == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
                || first == 0x0064 && v6.segments()[1] == 0xff9b // NAT64 to IPv4 space
        }
    }
}

/// The resolver the preview client connects through: it drops forbidden addresses, and fails
/// with [`Blocked`] when none is left.
pub struct CheckingResolver {
    allowed: Arc<Vec<IpNet>>,
}

impl CheckingResolver {
    pub fn new(allowed: Arc<Vec<IpNet>>) -> Self {
        CheckingResolver { allowed }
    }
}

/// A host that resolves only to forbidden addresses.
#[derive(Debug)]
pub struct Blocked;

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the host resolves only to addresses previews may not reach")
    }
}

impl std::error::Error for Blocked {}

impl reqwest::dns::Resolve for CheckingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| !is_forbidden(a.ip(), &allowed))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(Blocked) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a URL names a forbidden address literally (literals bypass the resolver).
pub fn literal_is_forbidden(url: &reqwest::Url, allowed: &[IpNet]) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => is_forbidden(IpAddr::V4(ip), allowed),
        Some(url::Host::Ipv6(ip)) => is_forbidden(IpAddr::V6(ip), allowed),
        Some(url::Host::Domain(_)) => false,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_forbidden_unless_allowed() {
        let none: &[IpNet] = &[];
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_forbidden(ip.parse().unwrap(), none), "{ip} must be forbidden");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"] {
            assert!(!is_forbidden(ip.parse().unwrap(), none), "{ip} is public");
        }
        let allowed: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        assert!(!is_forbidden("127.0.0.1".parse().unwrap(), &allowed));
        assert!(is_forbidden("127.0.0.2".parse().unwrap(), &allowed));
    }
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    /// It is longer than the limit (said in advance or found on the way).
    TooLarge,
    Http(reqwest::Error),
}

/// Reads a response's body, refusing it as soon as it is longer than `max` bytes: what another
/// host sends is never held in memory beyond the limit.
pub async fn read_limited(mut response: reqwest::Response, max: u64) -> std::result::Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Http)? {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
