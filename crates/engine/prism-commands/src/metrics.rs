//! The command side's metrics (names from `prism_runtime::metric_names`): requests by
//! command and outcome with their latency, aggregates loaded (from a kept state or the whole
//! stream) and the events folded for them, the outbox backlog gauges, and the relay's
//! published and error counters. Labels are bounded: command names are the route table's,
//! outcomes and error reasons are fixed lists.

use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use prism_event_store::outbox;
use prism_postgres::Database;
use prism_runtime::metric_names::{
    COMMANDS_AGGREGATE_LOADS, COMMANDS_EVENTS_FOLDED, COMMANDS_OUTBOX_BACKLOG, COMMANDS_OUTBOX_OLDEST_AGE,
    COMMANDS_OUTBOX_PUBLISHED, COMMANDS_OUTBOX_PUBLISH_ERRORS, COMMANDS_REQUESTS, COMMANDS_REQUEST_DURATION,
};
use tokio::sync::watch;

/// How often the backlog gauges are refreshed.
pub const BACKLOG_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// The outcome label of `prism_commands_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Events appended.
    Accepted,
    /// A recorded response replayed for an idempotency key.
    Replayed,
    /// A business rule refused the command (409 `rejected`).
    Rejected,
    /// The request could not be read (400, 413, 415, 422).
    Invalid,
    /// The aggregate (or route) does not exist.
    NotFound,
    /// Lost a race or failed `If-Match` (409 `conflict`).
    Conflict,
    /// The service failed (5xx).
    Error,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Replayed => "replayed",
            Self::Rejected => "rejected",
            Self::Invalid => "invalid",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Error => "error",
        }
    }

    /// The outcome of a response that does not say (successes; anything unforeseen).
    fn of(response: &Response) -> Self {
        if let Some(outcome) = response.extensions().get::<Outcome>() {
            return *outcome;
        }
        let status = response.status();
        if response.headers().contains_key("Idempotent-Replayed") {
            Self::Replayed
        } else if status.is_success() {
            Self::Accepted
        } else if status.is_server_error() {
            Self::Error
        } else {
            Self::Invalid
        }
    }
}

/// Registers descriptions, so `/metrics` explains each series.
pub fn describe() {
    describe_counter!(COMMANDS_REQUESTS, "Commands handled, by command and outcome.");
    describe_histogram!(COMMANDS_REQUEST_DURATION, Unit::Seconds, "Command handling time, by command.");
    describe_gauge!(
        COMMANDS_OUTBOX_BACKLOG,
        format!(
            "Events in the outbox not yet acknowledged by the broker: counted up to {}, past that the span of their ids (never fewer).",
            outbox::BACKLOG_COUNTED_UP_TO
        )
    );
    describe_gauge!(COMMANDS_OUTBOX_OLDEST_AGE, Unit::Seconds, "Age of the oldest unpublished outbox entry.");
    describe_counter!(COMMANDS_OUTBOX_PUBLISHED, "Events published by the outbox relay.");
    describe_counter!(
        COMMANDS_OUTBOX_PUBLISH_ERRORS,
        "Relay rounds that failed and will be retried, by reason."
    );
    // Exported at zero from the start, so dashboards and `increase()` see the first failure.
    for reason in ["broker", "postgres", "lock_lost"] {
        counter!(COMMANDS_OUTBOX_PUBLISH_ERRORS, "reason" => reason).absolute(0);
    }
    counter!(COMMANDS_OUTBOX_PUBLISHED).absolute(0);
    describe_counter!(
        COMMANDS_AGGREGATE_LOADS,
        "Aggregates loaded for commands, by where the fold started: kept (a state kept from an earlier command), whole (no state kept), diverged (the kept state's event no longer in the stream)."
    );
    describe_counter!(
        COMMANDS_EVENTS_FOLDED,
        "Events read from the event store and folded to load aggregates."
    );
    for start in LoadStart::ALL {
        counter!(COMMANDS_AGGREGATE_LOADS, "start" => start.as_str()).absolute(0);
    }
    counter!(COMMANDS_EVENTS_FOLDED).absolute(0);
}

/// Where the fold of an aggregate loaded for a command started (the `start` label of
/// `prism_commands_aggregate_loads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadStart {
    /// A state kept from an earlier command: only the events since were folded.
    Kept,
    /// The first event: no state of the aggregate was kept.
    Whole,
    /// The first event: the kept state's last event was no longer in the stream.
    Diverged,
}

impl LoadStart {
    /// Every value, for exporting each series from the start.
    pub const ALL: [LoadStart; 3] = [LoadStart::Kept, LoadStart::Whole, LoadStart::Diverged];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadStart::Kept => "kept",
            LoadStart::Whole => "whole",
            LoadStart::Diverged => "diverged",
        }
    }
}

/// Counts one aggregate loaded for a command and the events its load folded.
pub fn aggregate_loaded(start: LoadStart, events_folded: usize) {
    counter!(COMMANDS_AGGREGATE_LOADS, "start" => start.as_str()).increment(1);
    counter!(COMMANDS_EVENTS_FOLDED).increment(events_folded as u64);
}

/// Middleware: counts and times one command route.
pub async fn track(command: &'static str, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let outcome = Outcome::of(&response);
    counter!(COMMANDS_REQUESTS, "command" => command, "outcome" => outcome.as_str()).increment(1);
    histogram!(COMMANDS_REQUEST_DURATION, "command" => command).record(started.elapsed().as_secs_f64());
    response
}

/// Counts events the relay published.
pub fn published(count: usize) {
    counter!(COMMANDS_OUTBOX_PUBLISHED).increment(count as u64);
}

/// Counts a failed relay round; `reason` is one of `broker`, `postgres`, `lock_lost`.
pub fn publish_error(reason: &'static str) {
    counter!(COMMANDS_OUTBOX_PUBLISH_ERRORS, "reason" => reason).increment(1);
}

/// Samples the backlog gauges every [`BACKLOG_SAMPLE_INTERVAL`] with one query, until
/// `stop` turns true. A failed sample leaves the gauges as they were (readiness reports the
/// database separately).
pub async fn sample_backlog(db: Database, mut stop: watch::Receiver<bool>) {
    loop {
        match outbox::backlog(&db).await {
            Ok(backlog) => {
                gauge!(COMMANDS_OUTBOX_BACKLOG).set(backlog.events as f64);
                gauge!(COMMANDS_OUTBOX_OLDEST_AGE).set(backlog.oldest_age_seconds);
            }
            Err(err) => {
                tracing::debug!(error = %crate::service::error_chain(&err), "outbox backlog sample failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(BACKLOG_SAMPLE_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}
