//! The business logic of the Diplomatie homeserver.
//!
//! Handlers in `diplomatie-api` call [`Services`]; services call `diplomatie-storage`. Calls go
//! downwards only. Nothing here knows HTTP: failures are Matrix error kinds ([`Error`]).
//!
//! Each area is a service, a struct holding the services it calls, assembled bottom up by
//! [`Services::start`]: [`accounts`] (registration, login, devices, profile), [`rooms`] (the
//! room DAG: building, authorising and persisting events, state; memberships, the timeline,
//! the directory), [`sync`] (the `/sync` algorithm), [`ephemeral`] (typing, receipts,
//! presence), [`account_data`], [`e2ee`], [`push`], [`search`], [`federation`],
//! [`organisation`] and [`correspondence`] (the portal's).

pub mod account_data;
pub mod accounts;
pub mod admin;
pub mod appservice;
pub mod archive;
pub mod cas;
pub mod config;
pub mod core;
pub mod correspondence;
pub mod crisis;
pub mod delayed;
pub mod e2ee;
pub mod email;
pub mod ephemeral;
pub mod error;
pub mod federation;
pub mod identity;
pub mod keys;
pub mod marks;
pub mod media;
pub mod metrics;
pub mod mls;
pub mod names;
pub mod notifier;
pub mod openid;
pub mod organisation;
pub mod outbound;
pub mod password;
pub mod pdu;
pub mod peeks;
pub mod portal;
pub mod push;
pub mod ratelimit;
pub mod registrations;
pub mod reports;
pub mod retention;
pub mod rooms;
pub mod search;
pub mod sessions;
pub mod sliding;
pub mod sso;
pub mod stats;
pub mod sync;
pub mod uia;
pub mod url_preview;
pub mod voip;
pub mod yaml;

use std::sync::{Arc, Weak};

use diplomatie_storage::Db;
use ruma::ServerName;

pub use config::Config;
pub use error::{Error, Result};
pub use pdu::Pdu;

/// Every service of the homeserver, shared by all request handlers: where they are assembled,
/// bottom up (each service holds handles only to those above it in this list). It
/// dereferences to [`core::Core`] (configuration, database, stream positions, notifier).
pub struct Services {
    core: Arc<core::Core>,
    /// Requests to other servers, other servers' keys.
    pub transport: Arc<federation::client::Transport>,
    pub media: Arc<media::Repository>,
    pub previews: Arc<url_preview::Previews>,
    /// The identity servers users name.
    pub identity: Arc<identity::Identity>,
    /// The addresses this server validates itself, by mail.
    pub email: Arc<email::AddressValidation>,
    /// OpenID tokens for third parties.
    pub openid: openid::OpenId,
    pub admin_nonces: uia::Nonces,
    pub ratelimiter: Arc<ratelimit::RateLimiter>,
    /// The rooms' DAG, state and writer.
    pub rooms: Arc<rooms::Rooms>,
    pub accounts: Arc<accounts::Accounts>,
    /// Application services: what they are sent, what they are asked.
    pub appservices: Arc<appservice::Appservices>,
    pub uia: Arc<uia::Uia>,
    /// Reports of events, rooms and users, for administrators and moderators.
    pub reports: Arc<reports::Reports>,
    /// Account data and stored filters.
    pub account_data: Arc<account_data::AccountData>,
    pub portal: Arc<portal::Portal>,
    /// What this server sends to others, queued until they acknowledge it.
    pub outbox: Arc<federation::sender::Outbox>,
    /// The room DAG across servers: events received, history asked and served.
    pub federation: Arc<federation::Federation>,
    pub e2ee: Arc<e2ee::E2ee>,
    pub push: Arc<push::Push>,
    /// Typing, receipts, presence.
    pub ephemeral: Arc<ephemeral::Ephemeral>,
    /// Sending events and reading the timeline.
    pub timeline: Arc<rooms::timeline::Timeline>,
    /// Events clients scheduled (MSC4140).
    pub delayed: Arc<delayed::DelayedEvents>,
    pub search: Arc<search::Search>,
    /// Devices following world-readable rooms they are not in (MSC2753).
    pub peeks: Arc<peeks::Peeks>,
    /// `/sync`.
    pub sync: Arc<sync::Syncer>,
    /// Simplified sliding sync (MSC4186).
    pub sliding: Arc<sliding::SlidingSync>,
    /// Joins, leaves, knocks and invites across servers.
    pub remote_membership: Arc<federation::membership::RemoteMembership>,
    /// Room creation and memberships.
    pub membership: Arc<rooms::membership::Membership>,
    /// Aliases, directories, room summaries, space hierarchies.
    pub directory: Arc<rooms::directory::Directory>,
    /// Transactions, presence and keys other servers send or ask.
    pub peers: Arc<federation::transactions::Peers>,
    /// Logging out, deleting devices, changing passwords, deactivating accounts.
    pub sessions: Arc<sessions::Sessions>,
    pub admin: Arc<admin::Admin>,
    /// Groups, communities, people's clearances and kinds.
    pub organisation: Arc<organisation::Organisation>,
    pub sso: Arc<sso::Sso>,
    pub cas: Arc<cas::Cas>,
    pub stats: Arc<stats::Stats>,
    /// Formal correspondence and journals.
    pub correspondence: Arc<correspondence::Correspondence>,
    /// Transfers to the archives service (SEDA 2.3).
    pub archive: Arc<archive::Archive>,
    /// Retention policies, the purge, legal holds.
    pub retention: Arc<retention::Retention>,
    /// Crisis cells: activation, alerts, the sealed log, situation reports, stand-down.
    pub crisis: Arc<crisis::Crisis>,
    /// The MLS delivery service of DR rooms.
    pub mls: Arc<mls::Mls>,
}

crate::core::over_core!(Services);

impl Services {
    /// Opens the database (creating and migrating it if needed), loads or creates the signing
    /// key, and restores the stream position: enough for commands run beside a server.
    pub async fn start(config: Config) -> anyhow_like::Result<Arc<Services>> {
        let server_name = ServerName::parse(&config.server_name)
            .map_err(|e| anyhow_like::msg(format!("invalid server_name {:?}: {e}", config.server_name)))?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| anyhow_like::msg(format!("cannot create {}: {e}", config.data_dir.display())))?;
        let db = Db::connect(&config.database_url(), config.database_max_connections())
            .await
            .map_err(|e| anyhow_like::msg(format!("cannot open the database: {e}")))?;
        let keys = keys::ServerKeys::load_or_create(&config.data_dir)?;
        let stream = ephemeral::max_stream_position(&db).await.map_err(|e| anyhow_like::msg(e.to_string()))?;
        let ratelimiter = Arc::new(ratelimit::RateLimiter::new(&config.rate_limits));
        let e2ee_state = e2ee::E2eeState::load(&db, stream).await.map_err(|e| anyhow_like::msg(e.to_string()))?;
        let files = media::MediaState::new(&config.data_dir);
        let search_state = search::SearchState::new(&config.data_dir);
        let push_state = push::PushState::load(&db).await.map_err(|e| anyhow_like::msg(e.to_string()))?;

        let mut registration_files = config.app_service_config_files.clone();
        let listed: Vec<_> = registration_files.iter().filter_map(|f| f.canonicalize().ok()).collect();
        registration_files.extend(
            registrations::dropped_in(&config.data_dir.join("appservices"))
                .into_iter()
                .filter(|f| f.canonicalize().is_ok_and(|c| !listed.contains(&c))),
        );
        let appservices = registrations::Registry::load(&registration_files, &server_name)
            .map_err(|e| anyhow_like::msg(format!("app_service_config_files: {e}")))?;
        let core = Arc::new(core::Core::new(config, db, server_name, keys, stream, appservices));
        let c = || core.clone();
        let transport = Arc::new(federation::client::Transport::new(c()));
        let media = Arc::new(media::Repository::new(c(), transport.clone(), files));
        let previews = Arc::new(url_preview::Previews::new(c(), media.clone()));
        let identity = Arc::new(identity::Identity::new(c()));
        let email = Arc::new(email::AddressValidation::new(c()));
        let clearances = portal::Clearances::new(c());
        let rooms = rooms::Rooms::new(c(), clearances.clone());
        let accounts = Arc::new(accounts::Accounts::new(c(), rooms.clone()));
        let appservices = Arc::new(appservice::Appservices::new(c(), rooms.clone()));
        let uia = Arc::new(uia::Uia::new(c(), accounts.clone(), email.clone()));
        let reports = Arc::new(reports::Reports::new(c(), rooms.clone(), accounts.clone()));
        let account_data = Arc::new(account_data::AccountData::new(c(), rooms.clone()));
        let portal = Arc::new(portal::Portal::new(rooms.clone(), clearances));
        let outbox = federation::sender::Outbox::new(c(), rooms.clone(), transport.clone());
        let federation = Arc::new(federation::Federation::new(c(), rooms.clone(), transport.clone()));
        let e2ee = Arc::new(e2ee::E2ee::new(
            c(),
            rooms.clone(),
            accounts.clone(),
            uia.clone(),
            transport.clone(),
            outbox.clone(),
            e2ee_state,
        ));
        let push = Arc::new(push::Push::new(c(), rooms.clone(), account_data.clone(), push_state));
        let ephemeral =
            Arc::new(ephemeral::Ephemeral::new(c(), rooms.clone(), account_data.clone(), push.clone(), outbox.clone()));
        let timeline = Arc::new(rooms::timeline::Timeline::new(c(), rooms.clone(), portal.clone(), federation.clone()));
        let delayed = Arc::new(delayed::DelayedEvents::new(c(), timeline.clone()));
        let search = Arc::new(search::Search::new(c(), rooms.clone(), portal.clone(), search_state));
        let peeks = Arc::new(
            peeks::Peeks::load(c(), rooms.clone(), portal.clone())
                .await
                .map_err(|e| anyhow_like::msg(e.to_string()))?,
        );
        let sync = Arc::new(sync::Syncer::new(
            c(),
            rooms.clone(),
            e2ee.clone(),
            push.clone(),
            ephemeral.clone(),
            peeks.clone(),
        ));
        let sliding = Arc::new(sliding::SlidingSync::new(
            c(),
            rooms.clone(),
            sync.clone(),
            e2ee.clone(),
            push.clone(),
            ephemeral.clone(),
            account_data.clone(),
        ));
        let remote_membership = Arc::new(federation::membership::RemoteMembership::new(
            c(),
            rooms.clone(),
            accounts.clone(),
            portal.clone(),
            transport.clone(),
            outbox.clone(),
            federation.clone(),
        ));
        let membership = Arc::new(rooms::membership::Membership::new(
            c(),
            rooms.clone(),
            accounts.clone(),
            portal.clone(),
            transport.clone(),
            remote_membership.clone(),
            identity.clone(),
            appservices.clone(),
        ));
        let directory = Arc::new(rooms::directory::Directory::new(
            c(),
            rooms.clone(),
            accounts.clone(),
            portal.clone(),
            timeline.clone(),
            transport.clone(),
            federation.clone(),
            appservices.clone(),
        ));
        let peers = Arc::new(federation::transactions::Peers::new(
            c(),
            rooms.clone(),
            accounts.clone(),
            federation.clone(),
            ephemeral.clone(),
            e2ee.clone(),
        ));
        let mls = Arc::new(
            mls::Mls::new(c(), rooms.clone(), portal.clone(), accounts.clone(), e2ee.clone(), transport.clone())
                .map_err(|e| anyhow_like::msg(format!("the MLS signing key: {e}")))?,
        );
        let sessions = Arc::new(sessions::Sessions::new(
            c(),
            accounts.clone(),
            push.clone(),
            e2ee.clone(),
            mls.clone(),
            membership.clone(),
            identity.clone(),
        ));
        let admin = admin::Admin::new(
            c(),
            accounts.clone(),
            sessions.clone(),
            rooms.clone(),
            membership.clone(),
            search.clone(),
            ratelimiter.clone(),
            media.clone(),
        );
        let organisation = Arc::new(organisation::Organisation::new(
            c(),
            rooms.clone(),
            accounts.clone(),
            portal.clone(),
            membership.clone(),
            directory.clone(),
            timeline.clone(),
        ));
        let sso = Arc::new(
            sso::Sso::new(c(), accounts.clone(), organisation.clone(), uia.clone())
                .map_err(|e| anyhow_like::msg(e.to_string()))?,
        );
        let cas = Arc::new(cas::Cas::new(c(), sso.clone()).map_err(|e| anyhow_like::msg(e.to_string()))?);
        let correspondence = Arc::new(correspondence::Correspondence::new(
            c(),
            rooms.clone(),
            accounts.clone(),
            portal.clone(),
            organisation.clone(),
            directory.clone(),
            membership.clone(),
        ));
        let stats = Arc::new(stats::Stats::new(c(), rooms.clone(), organisation.clone(), correspondence.clone()));
        let archive = Arc::new(archive::Archive::new(c(), accounts.clone(), media.clone(), correspondence.clone()));
        let retention = Arc::new(retention::Retention::new(
            c(),
            rooms.clone(),
            portal.clone(),
            media.clone(),
            search.clone(),
            correspondence.clone(),
        ));
        let crisis = Arc::new(crisis::Crisis::new(
            c(),
            rooms.clone(),
            accounts.clone(),
            portal.clone(),
            membership.clone(),
            timeline.clone(),
            organisation.clone(),
            correspondence.clone(),
            archive.clone(),
        ));

        // What follows a commit, told to the services that subscribe (the writer names none):
        // notifications and the federation outbox write rows in its transaction; the marks
        // `/sync` reads and device-list positions are recorded before its positions are
        // published; the search indexer and the correspondence worker hear of it after.
        rooms.subscribe(rooms::commit::CommitSubscribers {
            rows: vec![
                Box::new(push::NotificationRows(Arc::downgrade(&push))),
                Box::new(federation::sender::OutboxRows(Arc::downgrade(&outbox))),
                Box::new(appservice::AppserviceRows(Arc::downgrade(&appservices))),
            ],
            others: vec![
                Box::new(EventMarks(core.marks.clone())),
                Box::new(e2ee::MembershipPositions(Arc::downgrade(&e2ee))),
                Box::new(search::Indexer(Arc::downgrade(&search))),
                Box::new(correspondence::worker::Drafts(Arc::downgrade(&correspondence))),
                Box::new(mls::MlsMembers(Arc::downgrade(&mls))),
                Box::new(crisis::worker::CellEvents(Arc::downgrade(&crisis))),
            ],
        });

        let services = Arc::new(Services {
            core,
            transport,
            media,
            previews,
            identity,
            email,
            openid: openid::OpenId::default(),
            admin_nonces: uia::Nonces::default(),
            ratelimiter,
            rooms,
            accounts,
            appservices,
            uia,
            reports,
            account_data,
            portal,
            outbox,
            federation,
            e2ee,
            push,
            ephemeral,
            timeline,
            delayed,
            search,
            peeks,
            sync,
            sliding,
            remote_membership,
            membership,
            directory,
            peers,
            sessions,
            admin,
            organisation,
            sso,
            cas,
            stats,
            correspondence,
            archive,
            retention,
            crisis,
            mls,
        });
        ephemeral::spawn_typing_expiry(Arc::downgrade(&services.ephemeral));
        // Every process that writes (the server, an import) keeps the write-ahead log short.
        services.db.spawn_checkpointer();
        Ok(services)
    }

    /// Starts the services of a serving process: [`Services::start`], then the search index
    /// and the background workers (indexer, pushers).
    pub async fn start_serving(config: Config) -> anyhow_like::Result<Arc<Services>> {
        let services = Services::start(config).await?;
        if services.config.federation.enabled {
            services.transport.prepare_federation_clients().map_err(anyhow_like::msg)?;
        }
        services.media.files.remove_interrupted_uploads();
        services
            .search
            .state
            .open()
            .await
            .map_err(|e| anyhow_like::msg(format!("cannot open the search index: {e}")))?;
        push::spawn_pusher_worker(Arc::downgrade(&services.push));
        accounts::Accounts::spawn_last_seen_writer(Arc::downgrade(&services.accounts));
        search::spawn_indexer(&services.search);
        correspondence::worker::spawn_worker(&services.correspondence);
        federation::sender::spawn_senders(&services.outbox);
        services.accounts.create_appservice_users().await.map_err(|e| anyhow_like::msg(e.to_string()))?;
        appservice::spawn_senders(&services.appservices);
        mls::partners::spawn_revocation_retries(Arc::downgrade(&services.mls));
        delayed::spawn_worker(&services.delayed);
        crisis::worker::spawn_worker(&services.crisis);
        retention::spawn_worker(&services.retention);
        admin::deletions::resume_deletions(&services.admin);
        services.admin.load_ratelimit_overrides().await.map_err(|e| anyhow_like::msg(e.to_string()))?;
        Ok(services)
    }
}

/// An LRU cache of at most `cap` entries whose table grows with use (`LruCache::new` allocates
/// the table for `cap` entries at once: megabytes for caches that may stay nearly empty).
pub(crate) fn lru<K: std::hash::Hash + Eq, V>(cap: usize) -> lru::LruCache<K, V> {
    let mut cache = lru::LruCache::unbounded();
    cache.resize(std::num::NonZeroUsize::new(cap.max(1)).expect("at least 1"));
    cache
}

/// The streams' marks as a commit subscriber (`marks` itself knows nothing of the writer).
struct EventMarks(Arc<marks::StreamMarks>);

impl rooms::commit::Subscriber for EventMarks {
    fn committed(&self, batch: &rooms::commit::Batch<'_>, at: &rooms::commit::Committed<'_>) {
        self.0.events_committed(batch.events, at.memberships, at.position);
    }
}

/// The service behind a subscriber's handle; gone only while the process stops.
pub(crate) fn upgrade<T>(me: &Weak<T>) -> Result<Arc<T>> {
    me.upgrade().ok_or_else(internal!("the services are stopping"))
}

/// A JSON value as the raw value of a typed field of ruma's types.
pub(crate) fn to_raw<T>(value: &serde_json::Value) -> Result<ruma::serde::Raw<T>> {
    Ok(ruma::serde::Raw::from_json(serde_json::value::to_raw_value(value)?))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    ruma::MilliSecondsSinceUnixEpoch::now().get().into()
}

/// A random alphanumeric string, for tokens and ids.
pub fn random_string(len: usize) -> String {
    use rand::{distributions::Alphanumeric, Rng};
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// Start-up errors: plain messages for the operator.
pub mod anyhow_like {
    #[derive(Debug)]
    pub struct StartError(pub String);
    impl std::fmt::Display for StartError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for StartError {}
    pub type Result<T> = std::result::Result<T, StartError>;
    pub fn msg(s: impl Into<String>) -> StartError {
        StartError(s.into())
    }
}

#[cfg(test)]
mod send_checks {
    use super::*;
    fn assert_send<T: Send>(_: &T) {}
    #[allow(dead_code)]
    fn futures_are_send(s: &Services, u: &ruma::UserId) {
        assert_send(&s.sessions.deactivate(u, false));
        assert_send(&s.accounts.set_profile_field(u, "displayname", None));
    }
}
