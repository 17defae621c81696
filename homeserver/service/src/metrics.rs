//! What the server tells Prometheus (`/metrics`, on a listener of its own, off by default):
//! requests by endpoint and status with their latency, events persisted, `/sync` long-polls
//! waiting, push deliveries, the search index's lag, and, read when scraped, the database
//! pool, the federation queue per destination, and the process's memory and CPU. Counted where
//! things happen (each a few atomic operations); nothing is kept per user.

use prometheus::{
    core::Collector, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use diplomatie_storage::Db;

use crate::Result;

/// The server's metrics, registered once (held by `Core`).
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by method, route (the path's template) and status.
    pub requests: IntCounterVec,
    /// Seconds from a request's arrival to its answer's head, by method and route.
    pub request_seconds: HistogramVec,
    /// Events written to rooms (local and received).
    pub events_persisted: IntCounter,
    /// `/sync` requests waiting for something new.
    pub sync_waiting: IntGauge,
    /// Notifications handed to push gateways, by outcome (`sent`, `failed`).
    pub push_deliveries: IntCounterVec,
    /// Batches of events committed but not yet searchable (the search index's lag).
    pub search_pending: IntGauge,
    db_connections: IntGaugeVec,
    federation_queue: IntGaugeVec,
}

/// A metric made and registered: its name and labels are fixed here and distinct, so neither
/// step can fail but for a mistake in this file, which the metrics test would show at once.
fn registered<C: Collector + Clone + 'static>(registry: &Registry, made: prometheus::Result<C>) -> C {
    let metric = made.expect("a valid metric");
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new_custom(Some("diplomatie".into()), None).unwrap_or_default();
        let r = &registry;
        let buckets = prometheus::exponential_buckets(0.001, 2.0, 16).unwrap_or_default();
        let metrics = Metrics {
            requests: registered(
                r,
                IntCounterVec::new(
                    Opts::new("http_requests_total", "Requests answered, by method, route and status"),
                    &["method", "route", "status"],
                ),
            ),
            request_seconds: registered(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "http_request_duration_seconds",
                        "Time to answer a request, by method and route",
                    )
                    .buckets(buckets),
                    &["method", "route"],
                ),
            ),
            events_persisted: registered(r, IntCounter::new("events_persisted_total", "Events written to rooms")),
            sync_waiting: registered(r, IntGauge::new("sync_waiting", "/sync requests waiting for something new")),
            push_deliveries: registered(
                r,
                IntCounterVec::new(
                    Opts::new("push_deliveries_total", "Notifications handed to push gateways, by outcome"),
                    &["outcome"],
                ),
            ),
            search_pending: registered(
                r,
                IntGauge::new("search_index_pending_batches", "Batches of events committed, not yet searchable"),
            ),
            db_connections: registered(
                r,
                IntGaugeVec::new(
                    Opts::new("database_connections", "Connections of the database pool, by state (idle, in_use)"),
                    &["state"],
                ),
            ),
            federation_queue: registered(
                r,
                IntGaugeVec::new(
                    Opts::new("federation_queue_items", "Items waiting to be sent, by destination server"),
                    &["destination"],
                ),
            ),
            registry,
        };
        // The process's resident memory, CPU seconds, open files (Linux).
        let _ = metrics.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        metrics
    }
}

impl Metrics {
    /// The text exposition of every metric, the scrape-time ones read now.
    pub async fn render(&self, db: &Db) -> Result<String> {
        let pool = db.pool();
        let size = i64::from(pool.size());
        let idle = pool.num_idle() as i64;
        self.db_connections.with_label_values(&["idle"]).set(idle);
        self.db_connections.with_label_values(&["in_use"]).set(size - idle);
        self.federation_queue.reset();
        for (destination, items) in diplomatie_storage::federation::outbox_lengths(pool).await? {
            self.federation_queue.with_label_values(&[destination.as_str()]).set(items);
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).map_err(crate::internal!())?;
        String::from_utf8(out).map_err(crate::internal!())
    }
}
