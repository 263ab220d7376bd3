//! The query service's metrics (names from `prism_runtime::metric_names`): requests by route
//! and status with their latency, cache lookups by read model and result, and stale
//! read-your-writes answers. Labels are bounded: routes are the route table's templates
//! (never a path with an id in it), statuses are HTTP codes, read models the five names.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, describe_counter, describe_histogram, histogram, Unit};
use prism_projections::ProjectionName;
use prism_runtime::metric_names::{
    QUERY_CACHE_LOOKUPS, QUERY_POSTGRES_READS, QUERY_REQUESTS, QUERY_REQUEST_DURATION, QUERY_STALE_RESPONSES,
};

/// The route label of requests no route matched.
const UNMATCHED: &str = "unmatched";

/// Registers descriptions and puts every cheap series at zero, so dashboards and alert
/// rules see them before the first request.
pub fn describe(routes: &[&'static str]) {
    describe_counter!(QUERY_REQUESTS, "HTTP requests answered, by route and status.");
    describe_histogram!(QUERY_REQUEST_DURATION, Unit::Seconds, "Request latency, by route.");
    describe_counter!(QUERY_CACHE_LOOKUPS, "Cache lookups by read model and result (hit, miss, error).");
    describe_counter!(QUERY_STALE_RESPONSES, "Read-your-writes waits that timed out, by read model.");
    for route in routes {
        counter!(QUERY_REQUESTS, "route" => *route, "status" => "200").absolute(0);
    }
    describe_counter!(QUERY_POSTGRES_READS, "Reads that went to PostgreSQL, by read model.");
    for projection in ProjectionName::ALL {
        counter!(QUERY_POSTGRES_READS, "read_model" => projection.as_str()).absolute(0);
        if projection.cache_kind().is_some() {
            for result in ["hit", "miss", "error"] {
                counter!(QUERY_CACHE_LOOKUPS, "read_model" => projection.as_str(), "result" => result)
                    .absolute(0);
            }
            counter!(QUERY_STALE_RESPONSES, "read_model" => projection.as_str()).absolute(0);
        }
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
pub fn cache_lookup(projection: ProjectionName, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    counter!(QUERY_CACHE_LOOKUPS, "read_model" => projection.as_str(), "result" => result).increment(1);
}

/// Counts a cache read or refill that failed.
pub fn cache_error(projection: ProjectionName) {
    counter!(QUERY_CACHE_LOOKUPS, "read_model" => projection.as_str(), "result" => "error").increment(1);
}

/// Counts a stale answer.
pub fn stale(projection: ProjectionName) {
    counter!(QUERY_STALE_RESPONSES, "read_model" => projection.as_str()).increment(1);
}

/// Counts a read that went to PostgreSQL.
pub fn postgres_read(projection: ProjectionName) {
    counter!(QUERY_POSTGRES_READS, "read_model" => projection.as_str()).increment(1);
}
