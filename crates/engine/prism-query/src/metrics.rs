//! The query side's metrics (names from `prism_runtime::metric_names`, plus
//! [`QUERY_CACHE_UP`]): requests by route and status with their latency, cache lookups by read
//! model and result, reads that went to PostgreSQL and which server answered them (primary or
//! replica, and why the primary answered one a replica could have), stale read-your-writes
//! answers, whether the cache is usable, and each read replica's state and lag. Labels are
//! bounded: routes are route templates (never a path with a key in it), statuses are HTTP
//! codes, read models the application's names, replicas the configured ones.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use prism_projections::Application;
use prism_runtime::metric_names::{
    QUERY_CACHE_LOOKUPS, QUERY_POSTGRES_READS, QUERY_REPLICA_FALLBACKS, QUERY_REQUESTS,
    QUERY_REQUEST_DURATION, QUERY_SOURCE_READS, QUERY_STALE_RESPONSES,
};

use crate::read_path::source::{Fallback, Source};

pub use prism_runtime::metric_names::QUERY_CACHE_UP;

pub use prism_runtime::metric_names::QUERY_WAITING_REQUESTS;

pub use prism_runtime::metric_names::{QUERY_REPLICA_LAG, QUERY_REPLICA_UP};

/// The route label of requests no route matched.
const UNMATCHED: &str = "unmatched";

/// The `result` label values of cache lookups.
const LOOKUP_RESULTS: [&str; 4] = ["hit", "miss", "error", "bypassed"];

/// Registers descriptions and puts every cheap series of `app`'s read models at zero, so
/// dashboards and alert rules see them before the first request.
pub fn describe(app: &Application) {
    describe_counter!(QUERY_REQUESTS, "HTTP requests answered, by route and status.");
    describe_histogram!(QUERY_REQUEST_DURATION, Unit::Seconds, "Request latency, by route.");
    describe_counter!(
        QUERY_CACHE_LOOKUPS,
        "Cache lookups by read model and result (hit, miss, error, bypassed while the cache is degraded)."
    );
    describe_counter!(QUERY_STALE_RESPONSES, "Read-your-writes waits that timed out, by read model.");
    describe_counter!(QUERY_POSTGRES_READS, "Reads that went to PostgreSQL, by read model.");
    describe_gauge!(QUERY_CACHE_UP, "1 while Redis answers; 0 while reads bypass the degraded cache.");
    describe_gauge!(
        QUERY_WAITING_REQUESTS,
        "Read-your-writes requests parked until their version lands, by read model."
    );
    describe_counter!(
        QUERY_SOURCE_READS,
        "PostgreSQL reads by read model and the server that answered (primary, replica)."
    );
    describe_counter!(
        QUERY_REPLICA_FALLBACKS,
        "Reads a replica could have answered that the primary answered, by read model and reason (behind, lagging, unavailable, failed)."
    );
    describe_gauge!(
        QUERY_REPLICA_UP,
        "1 while a read replica serves reads, 0 while it is skipped as down, by replica."
    );
    describe_gauge!(
        QUERY_REPLICA_LAG,
        Unit::Seconds,
        "Time since a read replica was last seen caught up with the primary (+Inf until first seen), by replica."
    );
    for model in app.read_models() {
        let name = model.name();
        counter!(QUERY_POSTGRES_READS, "read_model" => name).absolute(0);
        counter!(QUERY_SOURCE_READS, "read_model" => name, "source" => Source::Primary.label()).absolute(0);
        if model.key_columns().len() == 1 {
            counter!(QUERY_STALE_RESPONSES, "read_model" => name).absolute(0);
            gauge!(QUERY_WAITING_REQUESTS, "read_model" => name).set(0.0);
        }
        if model.cache_kind().is_some() {
            for result in LOOKUP_RESULTS {
                counter!(QUERY_CACHE_LOOKUPS, "read_model" => name, "result" => result).absolute(0);
            }
        }
    }
}

/// Puts the request series of these route templates at zero. Applications call it with their
/// own routes (e.g. `["/devices/{id}"]`); the engine's are declared by [`crate::serve`]. It
/// installs the process's recorder if none is yet, so it may be called before or after serving.
pub fn declare_routes(routes: &[&'static str]) {
    prism_runtime::telemetry::install();
    for route in routes {
        counter!(QUERY_REQUESTS, "route" => *route, "status" => "200").absolute(0);
    }
}

/// Middleware: counts and times every request under its route template.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let response = next.run(request).await;
    let route = route.unwrap_or_else(|| UNMATCHED.to_owned());
    let status = response.status().as_u16().to_string();
    counter!(QUERY_REQUESTS, "route" => route.clone(), "status" => status).increment(1);
    histogram!(QUERY_REQUEST_DURATION, "route" => route).record(started.elapsed().as_secs_f64());
    response
}

/// Counts a cache hit or miss.
pub fn cache_lookup(read_model: &'static str, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    counter!(QUERY_CACHE_LOOKUPS, "read_model" => read_model, "result" => result).increment(1);
}

/// Counts a cache read or refill that failed.
pub fn cache_error(read_model: &'static str) {
    counter!(QUERY_CACHE_LOOKUPS, "read_model" => read_model, "result" => "error").increment(1);
}

/// Counts a lookup skipped because the cache is degraded.
pub fn cache_bypassed(read_model: &'static str) {
    counter!(QUERY_CACHE_LOOKUPS, "read_model" => read_model, "result" => "bypassed").increment(1);
}

/// Records whether the cache is usable.
pub fn cache_up(up: bool) {
    gauge!(QUERY_CACHE_UP).set(if up { 1.0 } else { 0.0 });
}

/// Counts a stale answer.
pub fn stale(read_model: &'static str) {
    counter!(QUERY_STALE_RESPONSES, "read_model" => read_model).increment(1);
}

/// A parked read-your-writes request, counted in [`QUERY_WAITING_REQUESTS`] while it lives
/// (dropped when the wait ends, whether answered or abandoned by a client that went away).
#[derive(Debug)]
pub struct Waiting(&'static str);

impl Waiting {
    /// Counts one more request waiting on `read_model`.
    pub fn start(read_model: &'static str) -> Self {
        gauge!(QUERY_WAITING_REQUESTS, "read_model" => read_model).increment(1.0);
        Self(read_model)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        gauge!(QUERY_WAITING_REQUESTS, "read_model" => self.0).decrement(1.0);
    }
}

/// Counts a read that went to PostgreSQL.
pub fn postgres_read(read_model: &'static str) {
    counter!(QUERY_POSTGRES_READS, "read_model" => read_model).increment(1);
}

/// Puts the replica series of `app`'s read models at zero (called when `query.replica_urls`
/// lists any; the per-replica gauges are set by every probe).
pub(crate) fn describe_replicas(app: &Application) {
    for model in app.read_models() {
        let name = model.name();
        counter!(QUERY_SOURCE_READS, "read_model" => name, "source" => Source::Replica.label()).absolute(0);
        for reason in Fallback::ALL {
            counter!(QUERY_REPLICA_FALLBACKS, "read_model" => name, "reason" => reason.label()).absolute(0);
        }
    }
}

/// Counts a read answered by `source`.
pub(crate) fn source_read(read_model: &'static str, source: Source) {
    counter!(QUERY_SOURCE_READS, "read_model" => read_model, "source" => source.label()).increment(1);
}

/// Counts a read the primary answered in place of a replica.
pub(crate) fn replica_fallback(read_model: &'static str, reason: Fallback) {
    counter!(QUERY_REPLICA_FALLBACKS, "read_model" => read_model, "reason" => reason.label()).increment(1);
}

/// Records whether `replica` serves reads.
pub(crate) fn replica_up(replica: &str, up: bool) {
    gauge!(QUERY_REPLICA_UP, "replica" => replica.to_owned()).set(if up { 1.0 } else { 0.0 });
}

/// Records how long ago `replica` was last seen caught up (`None`: never, +Inf).
pub(crate) fn replica_lag(replica: &str, lag: Option<std::time::Duration>) {
    gauge!(QUERY_REPLICA_LAG, "replica" => replica.to_owned())
        .set(lag.map_or(f64::INFINITY, |lag| lag.as_secs_f64()));
}
