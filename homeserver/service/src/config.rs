//! Configuration: defaults, then a TOML file, then `DIPLOMATIE_*` environment variables.
//!
//! Every option can be overridden by an environment variable named after its path, upper-cased,
//! with `__` between sections: `registration.enabled` is `DIPLOMATIE_REGISTRATION__ENABLED`.
//! `config/diplomatie.example.toml` documents each option.

use std::path::{Path, PathBuf};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The server name: the part after the colon in user ids and room aliases.
    pub server_name: String,
    /// Address and port the client (and later federation) API listens on.
    pub listen: String,
    /// Where the embedded database, the signing key and media live.
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; empty means SQLite in `data_dir`.
    pub database_url: String,
    /// Connections in the pool; 0 picks for the backend (4 for SQLite, whose writes are
    /// serialised anyway and whose every connection costs memory; 16 for PostgreSQL).
    pub database_max_connections: u32,
    /// The URL clients should use, published in `/.well-known/matrix/client`.
    pub public_baseurl: String,
    /// The room version of new rooms when the client names none.
    pub default_room_version: String,
    /// Largest request body accepted, in bytes (`M_TOO_LARGE` above), for the endpoints of
    /// authenticated callers and of other servers; media uploads have `media.max_upload_bytes`,
    /// organisation imports `portal.max_import_bytes`, and requests without an access token
    /// `http.max_unauthenticated_body_bytes`.
    pub max_request_bytes: usize,
    pub http: Http,
    pub registration: Registration,
    pub rate_limits: RateLimits,
    /// Lifetime of access tokens issued with a refresh token, in milliseconds.
    pub access_token_lifetime_ms: u64,
    pub media: Media,
    pub url_preview: UrlPreview,
    pub push: Push,
    /// The identity servers users name for third-party invites and bindings.
    pub identity: IdentityServers,
    /// TLS trust of the requests made to other hosts than homeservers (push gateways, URL
    /// previews, identity servers, application services, remote media locations).
    pub outbound: Outbound,
    pub portal: Portal,
    pub user_directory: UserDirectory,
    pub metrics: Metrics,
    pub federation: Federation,
    /// Registration files of application services (bridges, bots), in the YAML format Synapse
    /// reads under the same name. Relative paths are read from the working directory. Files
    /// in `<data_dir>/appservices/` (where `diplomatie-email` writes its own) are read too.
    pub app_service_config_files: Vec<PathBuf>,
    pub voip: Voip,
    pub delayed_events: DelayedEvents,
    pub crisis: Crisis,
    pub archive: Archive,
    pub retention: Retention,
    pub sso: Sso,
    /// Single sign-on through a CAS server (Synapse's `cas_config`).
    pub cas: Cas,
    /// The mail this server sends itself (address validation), Synapse's `email` settings.
    pub email: Email,
}

/// The SMTP relay this server sends its own mail through: the links that validate an e-mail
/// address (registering with it, adding it to an account). No `smtp_host`: no mail is sent,
/// and addresses are validated by identity servers only.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Email {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_user: Option<String>,
    pub smtp_pass: Option<String>,
    /// How the relay is reached: `starttls` (the default), `implicit` (TLS from the start)
    /// or `none` (plain text: a relay on loopback).
    pub tls: SmtpTls,
    /// The sender of the mail; empty: `noreply@<server_name>`.
    pub notif_from: String,
    /// How long a validation link holds, in milliseconds.
    pub validation_token_lifetime_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    #[default]
    Starttls,
    Implicit,
}

impl Default for Email {
    fn default() -> Self {
        Email {
            smtp_host: String::new(),
            smtp_port: 25,
            smtp_user: None,
            smtp_pass: None,
            tls: SmtpTls::Starttls,
            notif_from: String::new(),
            validation_token_lifetime_ms: 3600 * 1000,
        }
    }
}

/// Single sign-on through OpenID Connect providers (`m.login.sso`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sso {
    pub oidc_providers: Vec<OidcProvider>,
    /// Where a client may be sent back with its login token without a confirmation page
    /// (URL prefixes, as Synapse's `sso.client_whitelist`).
    pub client_allowlist: Vec<String>,
}

/// One OpenID Connect provider. Its callback on this server is
/// `<public_baseurl>/_synapse/client/oidc/callback` (Synapse's, so that a provider's
/// registration carries over).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProvider {
    /// The provider's id in the login flows (`oidc-<id>`, as Synapse names them).
    pub id: String,
    /// Its name on the client's login page.
    pub name: String,
    /// The issuer, whose `/.well-known/openid-configuration` is read.
    pub issuer: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The claim the localpart comes from (lower-cased, characters a user id refuses
    /// replaced by `_`).
    #[serde(default = "default_localpart_claim")]
    pub localpart_claim: String,
    #[serde(default = "default_display_name_claim")]
    pub display_name_claim: String,
    /// The claim that makes an account an outside person's: `external` when its value is one
    /// of `external_values`, an agent's otherwise. Empty: every account is an agent's.
    #[serde(default)]
    pub kind_claim: String,
    #[serde(default = "default_external_values")]
    pub external_values: Vec<String>,
}

/// A CAS server (protocol 2 and 3: `/login`, then `/proxyValidate`), offered as the
/// `m.login.sso` provider `cas` and as the older `m.login.cas`. Its users come back to
/// `<public_baseurl>/_matrix/client/r0/login/cas/ticket` (Synapse's path).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cas {
    pub enabled: bool,
    /// The CAS server's base URL (`https://cas.example/cas`).
    pub server_url: String,
    /// The base of the service URL sent to it; empty: `public_baseurl`.
    pub service_url: String,
    /// The provider's name on the clients' login pages.
    pub display_name: String,
    /// The attribute a new account's display name comes from; empty: none.
    pub displayname_attribute: String,
    /// Attributes (name, value) the CAS server must send for an identity to be let in.
    pub required_attributes: std::collections::BTreeMap<String, String>,
    /// A CAS user whose name is a local account's not yet linked to CAS logs into that
    /// account (as Synapse does); off: a new account gets a free user id. Turn it on only
    /// when the CAS server and the local accounts name the same people.
    pub allow_existing_users: bool,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into()]
}
fn default_localpart_claim() -> String {
    "preferred_username".into()
}
fn default_display_name_claim() -> String {
    "name".into()
}
fn default_external_values() -> Vec<String> {
    vec!["external".into()]
}

/// How long content is kept, and the purge that removes what has passed it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Whether the purge runs by itself every `interval_ms` (an administrator can always run
    /// one: `POST /_diplomatie/admin/v1/retention/purge`).
    pub enabled: bool,
    pub interval_ms: u64,
    /// Events emptied per transaction.
    pub batch_size: u32,
    /// The defaults of NP rooms and of DR rooms, where a room has no policy of its own.
    pub np: Lifetimes,
    pub dr: Lifetimes,
}

/// Lifetimes by kind of content, in milliseconds; none: kept.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Lifetimes {
    pub messages_ms: Option<u64>,
    pub media_ms: Option<u64>,
    pub correspondence_ms: Option<u64>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            enabled: false,
            interval_ms: 3600 * 1000,
            batch_size: 200,
            np: Lifetimes::default(),
            dr: Lifetimes::default(),
        }
    }
}

/// Transfers to the archives service (SEDA 2.3).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Archive {
    /// The archives service's identifier (`ArchivalAgency`).
    pub archival_agency: String,
    /// The service agreement with it (`ArchivalAgreement`), when there is one.
    pub agreement: Option<String>,
    /// Where the packages of stood-down crisis cells are written; empty means
    /// `<data_dir>/archives`.
    pub directory: std::path::PathBuf,
}

impl Default for Archive {
    fn default() -> Self {
        Archive { archival_agency: "archives".into(), agreement: None, directory: Default::default() }
    }
}

/// Crisis cells: who activates them, and from which template.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Crisis {
    /// Who may activate a cell: `agents` (any agent of this server) or `admins`.
    pub activation: String,
    /// The template used when a request names none.
    pub default_template: String,
    /// How long a stood-down cell is kept by the archives (ISO 8601 duration, as SEDA writes
    /// it), handed to archiving with the cell.
    pub retention: String,
    /// How long a member may go without any device seen before an alert also goes to them by
    /// e-mail (through the e-mail bridge), in milliseconds.
    pub unreached_after_ms: u64,
    /// The templates; `standard` (situation, decisions, logistics, press) when empty.
    pub templates: Vec<CrisisTemplate>,
}

/// The rooms of a cell.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CrisisTemplate {
    pub id: String,
    pub rooms: Vec<CrisisRoom>,
}

/// A room of a cell's template.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CrisisRoom {
    /// Its key in the cell (`situation`): part of its alias, `#x.<cell>.<key>`.
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub topic: String,
    /// `NP` or `DR` (a DR room is an MLS room, and only DR-cleared members are invited).
    #[serde(default = "np")]
    pub classification: String,
    /// Whether outside experts (externals) are invited to it.
    #[serde(default)]
    pub externals: bool,
    /// `situation` (alerts and the situation report go there), `log` (the main courante:
    /// each message a sealed, numbered entry; no edits nor redactions), or none.
    #[serde(default)]
    pub role: String,
}

fn np() -> String {
    "NP".into()
}

impl Default for Crisis {
    fn default() -> Self {
        Crisis {
            activation: "agents".into(),
            default_template: "standard".into(),
            retention: "P10Y".into(),
            unreached_after_ms: 3600 * 1000,
            templates: Vec::new(),
        }
    }
}

impl Crisis {
    /// A template by id: the configured ones, then the built-in `standard`.
    pub fn template(&self, id: &str) -> Option<CrisisTemplate> {
        if let Some(t) = self.templates.iter().find(|t| t.id == id) {
            return Some(t.clone());
        }
        let room = |key: &str, name: &str, topic: &str, externals: bool, role: &str| CrisisRoom {
            key: key.into(),
            name: name.into(),
            topic: topic.into(),
            classification: "NP".into(),
            externals,
            role: role.into(),
        };
        (id == "standard").then(|| CrisisTemplate {
            id: "standard".into(),
            rooms: vec![
                room("situation", "Situation", "Alertes et point de situation", false, "situation"),
                room("decisions", "Décisions", "Main courante : chaque message est une entrée scellée", false, "log"),
                room("logistique", "Logistique", "Moyens, déplacements, relèves", true, ""),
                room("presse", "Presse", "Éléments de langage et communication", true, ""),
            ],
        })
    }
}

/// Calls: the TURN servers clients are given, the built-in relay, and the MatrixRTC foci.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Voip {
    /// TURN URIs handed to clients by `/voip/turnServer` (`turn:turn.example.org:3478?transport=udp`),
    /// as Synapse's `turn_uris`. Empty with the built-in relay on: its own.
    pub turn_uris: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`): credentials are
    /// the TURN REST scheme's. Empty with the built-in relay on: one made once in
    /// `<data_dir>/turn_secret`.
    pub turn_shared_secret: String,
    /// How long credentials stay valid, in milliseconds.
    pub turn_user_lifetime_ms: u64,
    /// Whether guests get credentials too.
    pub turn_allow_guests: bool,
    pub turn: Turn,
    /// The MatrixRTC foci (SFUs) published in `/.well-known/matrix/client` as
    /// `org.matrix.msc4143.rtc_foci` and at `/_matrix/client/unstable/org.matrix.msc4143/rtc/transports`:
    /// each a table with its `type`, such as
    /// `{ type = "livekit", livekit_service_url = "https://livekit-jwt.example.org" }`.
    pub rtc_foci: Vec<serde_json::Value>,
}

/// The built-in TURN relay (UDP, and TCP on the same port), off by default.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Turn {
    pub enabled: bool,
    /// The UDP address it listens on.
    pub listen: String,
    /// The address clients and peers reach it at: the host in the URIs given to clients and
    /// the address of relayed candidates. Empty: the listen address, unless that is
    /// unspecified (`0.0.0.0`), when it must be set.
    pub public_address: String,
    /// The ports relayed addresses are taken from.
    pub min_port: u16,
    pub max_port: u16,
    /// Peers the relay may reach besides public unicast addresses, as CIDR ranges: loopback
    /// and private ranges are refused unless listed (`["10.0.0.0/8"]` for an internal network).
    pub allowed_peers: Vec<String>,
    /// Peers refused even when allowed otherwise.
    pub denied_peers: Vec<String>,
    /// Allocations one user may hold at once; 0: no limit.
    pub max_allocations_per_user: usize,
    /// Whether clients may also reach it over TCP, on the same port (for networks that let
    /// no UDP out; relayed traffic stays UDP).
    pub tcp: bool,
}

/// Delayed events (MSC4140), which MatrixRTC clients use to leave a call they lost.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DelayedEvents {
    /// The longest delay a client may ask for, in milliseconds (`M_MAX_DELAY_EXCEEDED` above);
    /// 0 turns delayed events off.
    pub max_delay_ms: u64,
    /// Delayed events one user may have scheduled at once (`M_LIMIT_EXCEEDED` above).
    pub max_scheduled_per_user: u64,
    /// How long the outcome of a finalised delayed event stays readable, in milliseconds.
    pub finalised_retention_ms: u64,
}

impl Default for Voip {
    fn default() -> Self {
        Voip {
            turn_uris: Vec::new(),
            turn_shared_secret: String::new(),
            turn_user_lifetime_ms: 3600 * 1000,
            turn_allow_guests: true,
            turn: Turn::default(),
            rtc_foci: Vec::new(),
        }
    }
}

impl Default for Turn {
    fn default() -> Self {
        Turn {
            enabled: false,
            listen: "0.0.0.0:3478".into(),
            public_address: String::new(),
            min_port: 49152,
            max_port: 65535,
            allowed_peers: Vec::new(),
            denied_peers: Vec::new(),
            max_allocations_per_user: 10,
            tcp: true,
        }
    }
}

impl Default for DelayedEvents {
    fn default() -> Self {
        DelayedEvents {
            max_delay_ms: 24 * 3600 * 1000,
            max_scheduled_per_user: 100,
            finalised_retention_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// What the HTTP listeners allow a client: time, connections and memory. A slow or idle
/// client is disconnected, one address cannot hold every connection, and request bodies never
/// take more memory than `max_buffered_body_bytes` together.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// Time a client has to send a request's headers, counted from the opening of the
    /// connection or the end of the previous response: idle connections, kept alive or never
    /// used, are closed after it too. Milliseconds.
    pub header_timeout_ms: u64,
    /// Time a client has to send a whole request body (media uploads excepted, which are held to
    /// `body_idle_timeout_ms` alone). Milliseconds.
    pub body_timeout_ms: u64,
    /// Longest silence inside any request body. Milliseconds.
    pub body_idle_timeout_ms: u64,
    /// Connections open at once, all addresses together; more wait to be accepted.
    pub max_connections: usize,
    /// Connections open at once from one address; more are closed at once.
    pub max_connections_per_ip: usize,
    /// Address ranges (CIDR) held to `max_connections` alone, not to the per-address cap: a
    /// reverse proxy on the same machine, whose every connection comes from loopback.
    pub connection_limit_exempt: Vec<String>,
    /// Memory all request bodies may take together: each holds the bytes it has sent until its
    /// response (a client that declares much and sends little holds little). A body that finds
    /// no room waits for it, within its timeouts. Media uploads are written to disk as they
    /// arrive and are not counted.
    pub max_buffered_body_bytes: u64,
    /// Largest body of a request without an access token (login, registration, and the like).
    pub max_unauthenticated_body_bytes: usize,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            header_timeout_ms: 30_000,
            body_timeout_ms: 60_000,
            body_idle_timeout_ms: 30_000,
            max_connections: 16_384,
            max_connections_per_ip: 256,
            connection_limit_exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_buffered_body_bytes: 256 * 1024 * 1024,
            max_unauthenticated_body_bytes: 64 * 1024,
        }
    }
}

/// Federation with other servers (the server-server API).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Federation {
    /// Off by default: a ministry's server talks to no other server until its administrator
    /// says which (`allowed_servers`). The federation API is then served on `listen` (behind a
    /// TLS reverse proxy, as Synapse's usually is) and on `tls_listen` if set.
    pub enabled: bool,
    /// Servers this one federates with, inbound and outbound; empty means every server.
    /// Requests from others are refused with `M_FORBIDDEN`, and nothing is sent to them.
    pub allowed_servers: Vec<String>,
    /// Verify keys pinned per partner server (`"server" = { "ed25519:id" = "base64" }`): they
    /// are the only keys accepted for that server, and are never fetched from the network.
    pub pinned_keys: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// An address on which the server itself serves HTTPS (federation and client API), such as
    /// `0.0.0.0:8448`; empty: none.
    pub tls_listen: String,
    /// Certificate chain and private key (PEM) for `tls_listen`; both empty: a self-signed
    /// certificate for `server_name` is made in the data directory (tests, trials).
    pub tls_certificate: PathBuf,
    pub tls_private_key: PathBuf,
    /// An extra certificate authority (PEM) trusted for outbound requests (a ministry's own CA).
    pub trusted_ca: PathBuf,
    /// Tests only: skip the verification of other servers' certificates when, and only when,
    /// the address connected to is a loopback address.
    pub insecure_loopback_tls: bool,
    /// DNS servers asked for other servers' SRV records (`"10.0.0.53:53"`, a ministry's own
    /// resolvers); empty: the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<String>,
    /// Notaries asked for a server's keys when that server cannot be reached itself
    /// (`/_matrix/key/v2/query`), as Synapse's `trusted_key_servers`; none by default.
    pub trusted_key_servers: Vec<String>,
    /// What `/.well-known/matrix/server` answers as `m.server` (`host:port` where other servers
    /// reach this one, for delegation); empty: `server_name:443` when the name has no port,
    /// nothing (404) when it has one.
    pub well_known_server: String,
    /// How long the verify key this server publishes is valid, in milliseconds.
    pub key_validity_ms: u64,
    /// Time allowed for one request to another server, in milliseconds.
    pub request_timeout_ms: u64,
    /// Address ranges (CIDR) other servers may be reached at although they are loopback,
    /// private, link-local or otherwise internal. Empty (the default): a server name that
    /// resolves only to such addresses is never connected to, whoever names it (a request's
    /// `X-Matrix` origin, `publicRooms?server=`, a join's `via`). A private deployment whose
    /// partners sit on internal addresses lists their ranges here.
    pub ip_range_allowlist: Vec<String>,
    /// Longest wait between two attempts to reach a failing server, in milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for Federation {
    fn default() -> Self {
        Federation {
            enabled: false,
            allowed_servers: Vec::new(),
            pinned_keys: Default::default(),
            tls_listen: String::new(),
            tls_certificate: PathBuf::new(),
            tls_private_key: PathBuf::new(),
            trusted_ca: PathBuf::new(),
            insecure_loopback_tls: false,
            dns_servers: Vec::new(),
            trusted_key_servers: Vec::new(),
            well_known_server: String::new(),
            key_validity_ms: 24 * 3600 * 1000,
            request_timeout_ms: 30_000,
            ip_range_allowlist: Vec::new(),
            max_backoff_ms: 3600 * 1000,
        }
    }
}

/// The portal's rules: clearances (NP, DR) and classified rooms.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Portal {
    /// Other servers DR (restricted distribution) rooms may be shared with; their users count
    /// as cleared DR. Empty: DR rooms stay on this server.
    pub dr_federation_allowlist: Vec<String>,
    /// Sending into a DR room needs a device approved for DR (its flag set by an
    /// administrator).
    pub dr_requires_approved_device: bool,
    /// Every DR room is an MLS room (`fr.diplomatie.mls`, added at its creation), and a room
    /// cannot be raised to DR later. Off by default: Megolm DR rooms stay usable from Element
    /// and the other Matrix clients, which do not speak MLS yet.
    pub dr_rooms_mls: bool,
    /// Managers of a user's primary functional group may set the user's clearance and the DR
    /// flag of the user's devices, besides administrators.
    pub delegate_clearance_to_managers: bool,
    /// Largest organisation file `POST /_diplomatie/admin/v1/import` accepts, in bytes
    /// (administrators only).
    pub max_import_bytes: usize,
}

impl Default for Portal {
    fn default() -> Self {
        Portal {
            dr_federation_allowlist: Vec::new(),
            dr_requires_approved_device: true,
            dr_rooms_mls: false,
            delegate_clearance_to_managers: true,
            max_import_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Prometheus's endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Address and port of a listener of its own serving `/metrics` (and `/health`), plain
    /// HTTP: keep it on a private address. Empty (the default): no metrics listener.
    pub listen: String,
}

/// Who `POST /user_directory/search` finds (Synapse's `user_directory` options).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserDirectory {
    /// Every agent of this server finds every active local account (the ministry's directory).
    /// Off, as Synapse's default: only the users who share a room with the searcher or are
    /// joined to a public room (joinable by anyone or world-readable) that one of this server's
    /// users is in. Either way, users of other servers are found through those rooms, and
    /// external persons find only the users they share a room with.
    pub search_all_users: bool,
}

impl Default for UserDirectory {
    fn default() -> Self {
        UserDirectory { search_all_users: true }
    }
}

/// Delivery of notifications to push gateways (`/_matrix/push/v1/notify`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Push {
    /// Time allowed for one request to a gateway, in milliseconds.
    pub timeout_ms: u64,
    /// Internal address ranges (CIDR) gateways may be reached at: pushers are set by users, so
    /// the same address checks as URL previews apply. Allow a local Sygnal's range here.
    pub ip_range_allowlist: Vec<String>,
    /// Longest wait between two attempts to reach a failing gateway, in milliseconds.
    pub max_backoff_ms: u64,
    /// Whether connections to gateways stay open between notifications (on by default; a
    /// gateway that cannot take two requests on one connection needs it off).
    pub keep_alive: bool,
}

/// Requests to the identity servers users name (`id_server`): third-party invites, lookups,
/// bindings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityServers {
    /// Time allowed for one request to an identity server, in milliseconds.
    pub timeout_ms: u64,
    /// Internal address ranges (CIDR) identity servers may be reached at: users name them, so
    /// the same address checks as URL previews apply. Allow a ministry's own Sydent here.
    pub ip_range_allowlist: Vec<String>,
    /// Tests only: identity servers on loopback are spoken to over plain HTTP.
    pub plain_http_loopback: bool,
}

impl Default for IdentityServers {
    fn default() -> Self {
        IdentityServers { timeout_ms: 10_000, ip_range_allowlist: Vec::new(), plain_http_loopback: false }
    }
}

/// What the HTTP clients that reach other hosts than homeservers trust (federation has its own
/// `federation.trusted_ca` and `federation.insecure_loopback_tls`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Outbound {
    /// An extra certificate authority (PEM, one or more certificates) trusted besides the
    /// built-in web roots: a ministry's own CA signing its push gateway or identity server.
    pub trusted_ca: PathBuf,
    /// Tests only: certificates are not checked for `localhost` and loopback addresses.
    pub insecure_loopback_tls: bool,
}

/// The media repository (`/_matrix/client/v1/media`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Media {
    /// Largest file accepted, in bytes (`M_TOO_LARGE` above).
    pub max_upload_bytes: u64,
    /// Total bytes a user may have uploaded; 0 means no quota.
    pub user_quota_bytes: u64,
    /// Media ids a user may hold created (`/media/v1/create`) but not yet uploaded.
    pub max_pending_uploads: u64,
    /// How long a created media id waits for its upload, in milliseconds.
    pub pending_expiry_ms: u64,
    /// Content types refused at upload (exact types such as `text/html`, or prefixes such as
    /// `application/x-`); `M_FORBIDDEN`.
    pub refused_content_types: Vec<String>,
    /// Whether the deprecated unauthenticated `/_matrix/media/v3/download` and `/thumbnail`
    /// endpoints serve media. Off, as the spec recommends since v1.11 (authenticated media).
    pub legacy_downloads: bool,
    /// Largest image, in pixels, the server decodes to make a thumbnail.
    pub max_thumbnail_source_pixels: u64,
    /// Uploads in progress at once, all users together; more are answered `M_LIMIT_EXCEEDED`.
    pub max_concurrent_uploads: usize,
    /// Uploads in progress at once for one user.
    pub max_concurrent_uploads_per_user: usize,
}

/// URL previews (`/media/preview_url`): the server fetches pages on the users' behalf.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UrlPreview {
    /// Off by default: fetching arbitrary URLs from the server is a risk to weigh.
    pub enabled: bool,
    /// Largest page or image fetched, in bytes.
    pub max_bytes: u64,
    /// Time allowed for a whole fetch, in milliseconds.
    pub timeout_ms: u64,
    /// Address ranges (CIDR) the server may fetch although they are loopback, private or
    /// link-local. Empty in production; tests allow `127.0.0.1/32`.
    pub ip_range_allowlist: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Registration {
    /// Whether anyone may register through the client API.
    pub enabled: bool,
    /// Whether registration requires a registration token (`m.login.registration_token`).
    pub require_token: bool,
    /// Shared secret of the Synapse-compatible admin registration endpoint; empty disables it.
    pub shared_secret: String,
    /// Whether anyone may register a guest account (`/register?kind=guest`): read
    /// world-readable rooms, join rooms whose `m.room.guest_access` is `can_join`. Off.
    pub allow_guests: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    pub enabled: bool,
    /// Sustained requests per second per user (or per address when unauthenticated).
    pub per_second: f64,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: f64,
    /// Sustained login and registration attempts per second per address.
    pub login_per_second: f64,
    pub login_burst: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost".into(),
            listen: "127.0.0.1:8008".into(),
            data_dir: PathBuf::from("data"),
            database_url: String::new(),
            database_max_connections: 0,
            public_baseurl: String::new(),
            default_room_version: "12".into(),
            max_request_bytes: 10 * 1024 * 1024,
            http: Http::default(),
            registration: Registration::default(),
            rate_limits: RateLimits::default(),
            access_token_lifetime_ms: 24 * 3600 * 1000,
            media: Media::default(),
            url_preview: UrlPreview::default(),
            push: Push::default(),
            identity: IdentityServers::default(),
            outbound: Outbound::default(),
            portal: Portal::default(),
            user_directory: UserDirectory::default(),
            metrics: Metrics::default(),
            federation: Federation::default(),
            app_service_config_files: Vec::new(),
            voip: Voip::default(),
            delayed_events: DelayedEvents::default(),
            crisis: Crisis::default(),
            archive: Archive::default(),
            retention: Retention::default(),
            sso: Sso::default(),
            cas: Cas::default(),
            email: Email::default(),
        }
    }
}

impl Default for Media {
    fn default() -> Self {
        Media {
            max_upload_bytes: 50 * 1024 * 1024,
            user_quota_bytes: 0,
            max_pending_uploads: 5,
            pending_expiry_ms: 24 * 3600 * 1000,
            refused_content_types: Vec::new(),
            legacy_downloads: false,
            max_thumbnail_source_pixels: 32 * 1024 * 1024,
            max_concurrent_uploads: 32,
            max_concurrent_uploads_per_user: 4,
        }
    }
}

impl Default for Push {
    fn default() -> Self {
        Push { timeout_ms: 10_000, ip_range_allowlist: Vec::new(), max_backoff_ms: 600_000, keep_alive: true }
    }
}

impl Default for UrlPreview {
    fn default() -> Self {
        UrlPreview { enabled: false, max_bytes: 10 * 1024 * 1024, timeout_ms: 10_000, ip_range_allowlist: Vec::new() }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits { enabled: true, per_second: 50.0, burst: 200.0, login_per_second: 1.0, login_burst: 10.0 }
    }
}

impl Config {
    /// Loads the configuration: defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        // Only variables naming an option (a field of `Config`) are read: others with the
        // prefix (DIPLOMATIE_LOG, DIPLOMATIE_CONFIG, or a test harness's DIPLOMATIE_BIN)
        // belong to someone else.
        let options: Vec<String> = match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let env = Env::prefixed("DIPLOMATIE_")
            .filter(move |key| {
                let key = key.as_str().to_ascii_lowercase();
                let top = key.split("__").next().unwrap_or_default();
                options.iter().any(|o| o == top)
            })
            .split("__");
        figment = figment.merge(env);
        figment.extract().map_err(Box::new)
    }

    /// The database URL, defaulting to SQLite in the data directory.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}?mode=rwc", self.data_dir.join("diplomatie.db").display())
        } else {
            self.database_url.clone()
        }
    }

    /// The pool size, with 0 meaning "the backend's default".
    pub fn database_max_connections(&self) -> u32 {
        match self.database_max_connections {
            0 if self.database_url().starts_with("sqlite:") => 4,
            0 => 16,
            n => n,
        }
    }

    pub fn public_baseurl(&self) -> String {
        if self.public_baseurl.is_empty() {
            format!("http://{}", self.listen)
        } else {
            self.public_baseurl.trim_end_matches('/').to_owned()
        }
    }
}
