//! What the group member's consumer reports, turned into metrics (labelled by consumer group)
//! and into the readiness verdict.
//!
//! Progress is judged per partition: a member whose other partitions move on is still stalled
//! when one of its partitions has lag and landed nothing for `stall_after` (a batch failing
//! over and over holds back every later event of its partition). Such a partition shows in
//! `/readyz`, in `prism_projector_stalled_partitions`, and in its lag series, which keep
//! growing (lag is reported for partitions that never committed too).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use prism_kafka::consumer::{PartitionId, TransientError};
use prism_runtime::metric_names as m;

/// What readiness knows of one assigned partition.
#[derive(Debug, Clone)]
struct PartitionProgress {
    /// Messages not yet landed, as last reported (0 until the first report).
    lag: i64,
    /// When a batch last landed, or the partition was assigned.
    last_landed: Instant,
    /// When the batch now being retried first failed, and why it last failed.
    failing: Option<(Instant, String)>,
}

impl PartitionProgress {
    fn assigned() -> Self {
        Self { lag: 0, last_landed: Instant::now(), failing: None }
    }
}

/// Per consumer group member: metric labels and the state readiness is judged on.
#[derive(Debug)]
pub struct Progress {
    /// The `group` label value.
    label: String,
    /// The partitions held now.
    partitions: Mutex<HashMap<PartitionId, PartitionProgress>>,
}

impl Progress {
    /// The state of a member of group `label`, with its metrics described and at zero.
    pub fn new(label: String) -> Self {
        describe();
        Self::preregister(&label);
        Self { label, partitions: Mutex::new(HashMap::new()) }
    }

    fn partitions(&self) -> std::sync::MutexGuard<'_, HashMap<PartitionId, PartitionProgress>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Exports the group's event-driven series at zero from the start, so `/metrics` lists them
    /// before the first rebalance or failure and Prometheus' `increase()` sees the first one
    /// (a series that appears at 1 has no increase).
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
            counter!(m::PROJECTOR_OFFSET_COMMITS, "group" => label.to_owned(), "outcome" => outcome)
                .absolute(0);
        }
        gauge!(m::PROJECTOR_ASSIGNED_PARTITIONS, "group" => label.to_owned()).set(0.0);
        gauge!(m::PROJECTOR_STALLED_PARTITIONS, "group" => label.to_owned()).set(0.0);
        gauge!(m::PROJECTOR_LAST_PROGRESS, "group" => label.to_owned()).set(unix_now());
    }

    /// Exports the per-read-model counters at zero, for the same reason as the group's.
    pub fn preregister_read_models(instances: &[prism_projections::ProjectionInstance]) {
        for instance in instances {
            let label = instance.id();
            counter!(m::PROJECTOR_EVENTS_APPLIED, "projection" => label.clone()).absolute(0);
            for reason in ["duplicate", "conflict"] {
                counter!(m::PROJECTOR_EVENTS_SKIPPED, "projection" => label.clone(), "reason" => reason)
                    .absolute(0);
            }
            for policy in ["apply", "dead_letter"] {
                counter!(m::PROJECTOR_VERSION_GAPS, "projection" => label.clone(), "policy" => policy)
                    .absolute(0);
            }
            counter!(m::PROJECTOR_EVENTS_DEAD_LETTERED, "projection" => label.clone(), "kind" => "version_gap")
                .absolute(0);
            counter!(m::PROJECTOR_GAPS_HEALED, "projection" => label.clone()).absolute(0);
        }
    }

    /// The `group` label value.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Why the member is stalled, if it is: the partitions with lag that landed nothing within
    /// `stall_after`, each with how long and the last failure of its batch. Also sets the
    /// stalled-partitions and retrying-seconds gauges (called periodically).
    pub fn stalled(&self, stall_after: Duration) -> Option<String> {
        let partitions = self.partitions();
        let mut reasons = Vec::new();
        for (id, state) in partitions.iter() {
            let retrying = state.failing.as_ref().map_or(0.0, |(since, _)| since.elapsed().as_secs_f64());
            gauge!(m::PROJECTOR_RETRYING_SECONDS, &partition_labels(&self.label, id)).set(retrying);
            let idle = state.last_landed.elapsed();
            if state.lag > 0 && idle > stall_after {
                let mut reason =
                    format!("{id}: lag {} messages, nothing landed for {}s", state.lag, idle.as_secs());
                if let Some((since, error)) = &state.failing {
                    reason.push_str(&format!(
                        "; its batch has failed for {}s, last: {error}",
                        since.elapsed().as_secs()
                    ));
                }
                reasons.push(reason);
            }
        }
        gauge!(m::PROJECTOR_STALLED_PARTITIONS, "group" => self.label.clone()).set(reasons.len() as f64);
        reasons.sort();
        (!reasons.is_empty()).then(|| format!("stalled partitions: {}", reasons.join(" | ")))
    }

    /// Partitions were assigned or revoked.
    pub fn rebalanced(&self, added: &[PartitionId], removed: &[PartitionId], total: usize) {
        if !added.is_empty() {
            counter!(m::PROJECTOR_REBALANCES, "group" => self.label.clone(), "kind" => "assign").increment(1);
        }
        let mut partitions = self.partitions();
        for partition in added {
            // A fresh assignment is not a stall: give it time to land its first batch.
            partitions.insert(partition.clone(), PartitionProgress::assigned());
        }
        if !removed.is_empty() {
            counter!(m::PROJECTOR_REBALANCES, "group" => self.label.clone(), "kind" => "revoke").increment(1);
            for partition in removed {
                partitions.remove(partition);
                let labels = partition_labels(&self.label, partition);
                gauge!(m::PROJECTOR_LAG_MESSAGES, &labels).set(0.0);
                gauge!(m::PROJECTOR_LAG_SECONDS, &labels).set(0.0);
                gauge!(m::PROJECTOR_RETRYING_SECONDS, &labels).set(0.0);
            }
        }
        gauge!(m::PROJECTOR_ASSIGNED_PARTITIONS, "group" => self.label.clone()).set(total as f64);
    }

    /// A batch of `partition` landed.
    pub fn batch_landed(&self, partition: &PartitionId, messages: usize, elapsed: Duration) {
        histogram!(m::PROJECTOR_BATCH_DURATION, "group" => self.label.clone()).record(elapsed.as_secs_f64());
        histogram!(m::PROJECTOR_BATCH_SIZE, "group" => self.label.clone()).record(messages as f64);
        {
            let mut partitions = self.partitions();
            let state = partitions.entry(partition.clone()).or_insert_with(PartitionProgress::assigned);
            state.last_landed = Instant::now();
            state.failing = None;
        }
        gauge!(m::PROJECTOR_LAST_PROGRESS, "group" => self.label.clone()).set(unix_now());
    }

    /// An offset commit finished (`error`: why it failed). A failed commit loses nothing: the
    /// stored offsets go with the next one, and until then a new owner of the partition
    /// re-reads events the version gate skips.
    pub fn committed(&self, error: Option<&str>) {
        let outcome = if error.is_some() { "failed" } else { "ok" };
        counter!(m::PROJECTOR_OFFSET_COMMITS, "group" => self.label.clone(), "outcome" => outcome)
            .increment(1);
    }

    /// A batch of `partition` failed and will be retried (a blue/green switch is only counted).
    pub fn transient(&self, partition: &PartitionId, error: &TransientError) {
        if error.is_switch() {
            counter!(m::PROJECTOR_GENERATION_SWITCHES, "group" => self.label.clone()).increment(1);
            return;
        }
        counter!(m::PROJECTOR_TRANSIENT_ERRORS, "group" => self.label.clone(), "dependency" => error.dependency)
            .increment(1);
        let mut partitions = self.partitions();
        let state = partitions.entry(partition.clone()).or_insert_with(PartitionProgress::assigned);
        let since = state.failing.take().map_or_else(Instant::now, |(since, _)| since);
        state.failing = Some((since, prism_events::error::clip(&error.to_string())));
    }

    /// The consumer's latest lag report for `partition`.
    pub fn lag(&self, partition: &PartitionId, messages: i64, seconds: f64) {
        let labels = partition_labels(&self.label, partition);
        gauge!(m::PROJECTOR_LAG_MESSAGES, &labels).set(messages as f64);
        gauge!(m::PROJECTOR_LAG_SECONDS, &labels).set(seconds);
        if let Some(state) = self.partitions().get_mut(partition) {
            state.lag = messages;
        }
    }
}

fn partition_labels(group: &str, partition: &PartitionId) -> [(&'static str, String); 3] {
    [
        ("group", group.to_owned()),
        ("topic", partition.topic.clone()),
        ("partition", partition.partition.to_string()),
    ]
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The HELP text of every projector metric (`# HELP` lines in `/metrics`).
fn describe() {
    describe_counter!(
        m::PROJECTOR_EVENTS_APPLIED,
        "Events applied to a read model, by projection (read model and generation)."
    );
    describe_counter!(m::PROJECTOR_EVENTS_SKIPPED, "Events skipped by the version gate, by projection and reason (duplicate: already applied; conflict: another event was applied at its version).");
    describe_counter!(
        m::PROJECTOR_EVENTS_DEAD_LETTERED,
        "Events moved to the dead letters, by projection and error kind (parked: waiting behind another)."
    );
    describe_counter!(m::PROJECTOR_GAPS_HEALED, "Version gaps healed by themselves: the missing event arrived and the events parked behind it applied, by projection.");
    describe_counter!(
        m::PROJECTOR_VERSION_GAPS,
        "Events that arrived after a missing aggregate version, by projection and gap policy."
    );
    describe_histogram!(
        m::PROJECTOR_BATCH_DURATION,
        Unit::Seconds,
        "Time from a batch's first message to its offsets being stored."
    );
    describe_histogram!(
        m::PROJECTOR_BATCH_PHASE,
        Unit::Seconds,
        "Time a batch's handler spends in each step once it has its turn, by phase (replays, decode, postgres, cache, dead_letters)."
    );
    describe_histogram!(m::PROJECTOR_BATCH_SIZE, "Messages per batch.");
    describe_counter!(m::PROJECTOR_REBALANCES, "Rebalance callbacks, by kind (assign, revoke).");
    describe_counter!(m::PROJECTOR_GENERATION_SWITCHES, "Batches applied again because a blue/green switch made another generation active while they ran (expected, not an error).");
    describe_counter!(
        m::PROJECTOR_OFFSET_COMMITS,
        "Offset commits answered by the broker, by outcome (failed ones are carried by the next commit)."
    );
    describe_gauge!(m::PROJECTOR_ASSIGNED_PARTITIONS, "Partitions assigned to this member.");
    describe_gauge!(m::PROJECTOR_LAG_MESSAGES, "Messages between the landed position and the high watermark, per partition (the whole log when nothing was ever committed).");
    describe_gauge!(
        m::PROJECTOR_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest message not yet landed, per partition (0 when caught up)."
    );
    describe_counter!(
        m::PROJECTOR_TRANSIENT_ERRORS,
        "Batch failures that a retry can cure, by dependency (postgres, redis, kafka)."
    );
    describe_gauge!(m::PROJECTOR_LAST_PROGRESS, Unit::Seconds, "Unix time of the last batch that landed.");
    describe_gauge!(
        m::PROJECTOR_STALLED_PARTITIONS,
        "Assigned partitions with lag that landed nothing for projector.stall_after_seconds."
    );
    describe_gauge!(
        m::PROJECTOR_RETRYING_SECONDS,
        Unit::Seconds,
        "Seconds since the partition's current batch first failed (0 while its batches land)."
    );
}
