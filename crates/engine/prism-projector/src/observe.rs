//! What the group member's consumer reports, turned into metrics (labelled by consumer group)
//! and into the readiness verdict: ready unless there is lag and nothing landed for
//! `stall_after`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge, histogram};
use prism_kafka::consumer::{PartitionId, TransientError};
use prism_runtime::metric_names as m;

/// Per consumer group member: metric labels and the state readiness is judged on.
#[derive(Debug)]
pub struct Progress {
    /// The `group` label value.
    label: String,
    /// When the last batch landed (or the consumer started).
    last_progress: Mutex<Instant>,
    /// Latest lag in messages per partition.
    lag: Mutex<HashMap<PartitionId, i64>>,
}

impl Progress {
    pub fn new(label: String) -> Self {
        Self::preregister(&label);
        Self { label, last_progress: Mutex::new(Instant::now()), lag: Mutex::new(HashMap::new()) }
    }

    /// Exports the group's event-driven series at zero from the start, so `/metrics` lists them
    /// before the first rebalance or failure and Prometheus' `increase()` sees the first one
    /// (a series that appears at 1 has no increase). Last progress starts at the start time,
    /// as the stall verdict does.
    fn preregister(label: &str) {
        for dependency in ["postgres", "redis", "kafka"] {
            counter!(m::PROJECTOR_TRANSIENT_ERRORS, "group" => label.to_owned(), "dependency" => dependency)
                .absolute(0);
        }
        for kind in ["assign", "revoke"] {
            counter!(m::PROJECTOR_REBALANCES, "group" => label.to_owned(), "kind" => kind).absolute(0);
        }
        counter!(m::PROJECTOR_GENERATION_SWITCHES, "group" => label.to_owned()).absolute(0);
        for outcome in ["ok", "failed"] {
            counter!(m::PROJECTOR_OFFSET_COMMITS, "group" => label.to_owned(), "outcome" => outcome).absolute(0);
        }
        gauge!(m::PROJECTOR_ASSIGNED_PARTITIONS, "group" => label.to_owned()).set(0.0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        gauge!(m::PROJECTOR_LAST_PROGRESS, "group" => label.to_owned()).set(now);
    }

    /// Exports the per-read-model counters at zero, for the same reason as the group's.
    pub fn preregister_read_models(instances: &[prism_projections::ProjectionInstance]) {
        for instance in instances {
            let label = instance.id();
            counter!(m::PROJECTOR_EVENTS_APPLIED, "projection" => label.clone()).absolute(0);
            counter!(m::PROJECTOR_EVENTS_SKIPPED, "projection" => label.clone(), "reason" => "duplicate")
                .absolute(0);
            for policy in ["apply", "dead_letter"] {
                counter!(m::PROJECTOR_VERSION_GAPS, "projection" => label.clone(), "policy" => policy)
                    .absolute(0);
            }
            counter!(m::PROJECTOR_EVENTS_DEAD_LETTERED, "projection" => label.clone(), "kind" => "version_gap")
                .absolute(0);
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Why the projection is stalled, if it is: lag above zero and no batch landed within
    /// `stall_after`.
    pub fn stalled(&self, stall_after: Duration) -> Option<String> {
        let lag: i64 = self.lag.lock().unwrap_or_else(|p| p.into_inner()).values().sum();
        let idle = self.last_progress.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
        (lag > 0 && idle > stall_after)
            .then(|| format!("lag {lag} messages and nothing landed for {}s", idle.as_secs()))
    }

    pub fn rebalanced(&self, added: &[PartitionId], removed: &[PartitionId], total: usize) {
        if !added.is_empty() {
            counter!(m::PROJECTOR_REBALANCES, "group" => self.label.clone(), "kind" => "assign").increment(1);
        }
        if !removed.is_empty() {
            counter!(m::PROJECTOR_REBALANCES, "group" => self.label.clone(), "kind" => "revoke").increment(1);
            let mut lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
            for partition in removed {
                lag.remove(partition);
                gauge!(m::PROJECTOR_LAG_MESSAGES, "group" => self.label.clone(), "topic" => partition.topic.clone(), "partition" => partition.partition.to_string()).set(0.0);
                gauge!(m::PROJECTOR_LAG_SECONDS, "group" => self.label.clone(), "topic" => partition.topic.clone(), "partition" => partition.partition.to_string()).set(0.0);
            }
        }
        gauge!(m::PROJECTOR_ASSIGNED_PARTITIONS, "group" => self.label.clone()).set(total as f64);
        // A fresh assignment is not a stall: give it time to land its first batch.
        *self.last_progress.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn batch_landed(&self, messages: usize, elapsed: Duration) {
        histogram!(m::PROJECTOR_BATCH_DURATION, "group" => self.label.clone()).record(elapsed.as_secs_f64());
        histogram!(m::PROJECTOR_BATCH_SIZE, "group" => self.label.clone()).record(messages as f64);
        *self.last_progress.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        gauge!(m::PROJECTOR_LAST_PROGRESS, "group" => self.label.clone()).set(now);
    }

    /// An offset commit finished (`error`: why it failed). A failed commit loses nothing: the
    /// stored offsets go with the next one, and until then a new owner of the partition
    /// re-reads events the version gate skips.
    pub fn committed(&self, error: Option<&str>) {
        let outcome = if error.is_some() { "failed" } else { "ok" };
        counter!(m::PROJECTOR_OFFSET_COMMITS, "group" => self.label.clone(), "outcome" => outcome).increment(1);
    }

    pub fn transient(&self, error: &TransientError) {
        if error.is_switch() {
            counter!(m::PROJECTOR_GENERATION_SWITCHES, "group" => self.label.clone()).increment(1);
        } else {
            counter!(m::PROJECTOR_TRANSIENT_ERRORS, "group" => self.label.clone(), "dependency" => error.dependency)
                .increment(1);
        }
    }

    pub fn lag(&self, partition: &PartitionId, messages: i64, seconds: f64) {
        let labels = [
            ("group", self.label.clone()),
            ("topic", partition.topic.clone()),
            ("partition", partition.partition.to_string()),
        ];
        gauge!(m::PROJECTOR_LAG_MESSAGES, &labels).set(messages as f64);
        gauge!(m::PROJECTOR_LAG_SECONDS, &labels).set(seconds);
        self.lag.lock().unwrap_or_else(|p| p.into_inner()).insert(partition.clone(), messages);
    }
}
