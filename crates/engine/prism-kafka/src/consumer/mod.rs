//! The consumer runtime: one consumer group member that processes its partitions
//! concurrently, each in offset order, in bounded batches, and marks offsets for commit only
//! after a batch's effects have landed.
//!
//! Structure:
//! - a dedicated poll thread owns the librdkafka consumer: it polls, routes each message to
//!   its partition's worker, pauses partitions whose worker falls behind (and resumes them),
//!   stores the offsets workers report as landed, and serves rebalance callbacks;
//! - one tokio task per assigned partition (`worker`) fills a batch (up to
//!   `batch_max_messages` or `batch_max_bytes`, or whatever arrived within `batch_max_wait`),
//!   waits for a turn (at most `max_concurrent_batches` workers of the member hold one; none is
//!   held while a batch fills) and for room for the messages it may grow to (the batches in
//!   flight hold at most `max_messages_in_flight` and `max_bytes_in_flight`: full batches bound
//!   memory, small ones use every turn) and hands it to the [`BatchHandler`], retrying
//!   transient failures with capped exponential backoff — never skipping a batch;
//! - offsets: `enable.auto.commit=true` with `enable.auto.offset.store=false`: librdkafka
//!   commits periodically only what this runtime stored, and the runtime stores an offset only
//!   after the handler returned `Ok` for every message before it (invariant 1). When every
//!   worker has landed all it received, the stored offsets are committed at once (at most every
//!   100 ms) rather than at the next interval: a member that caught up shows no lag. On
//!   revocation and shutdown the runtime commits synchronously; a shutdown commit the broker
//!   refuses because the group is rebalancing is made again once the member has rejoined
//!   (within the shutdown deadline, at least a second), and partitions assigned meanwhile get
//!   no worker.
//!
//! Flow control: a partition whose worker has `max_buffered_per_partition` messages or
//! `max_buffered_bytes_per_partition` bytes waiting (a batch still waiting for its turn counts)
//! is paused, and resumed once at most half of each is left. Batches and the budget of the
//! batches in flight are bounded in bytes too (`batch_max_bytes`, `max_bytes_in_flight`), so a
//! member's memory stays bounded when messages are large, whatever their count. A batch that gets its turn leaves the count; if its partition had reached the bound
//! (a backlog) it keeps filling from the resumed fetch, so a batch can outgrow the buffer
//! while the member's memory stays bounded by partitions × buffer plus the messages in flight.
//! librdkafka keeps such a pause across unassignment, so every newly assigned partition is
//! resumed explicitly: its new worker starts with nothing buffered.
//!
//! Revocation (cooperative rebalancing hands over only the partitions that move): the
//! callback stops the affected workers, lets an in-flight batch finish (or aborts it after
//! `shutdown_deadline`), stores what landed, commits, and only then returns, so the partition
//! is released with nothing of it still being written.
//!
//! - [`settings`]: the [`ConsumerSettings`] of a member.
//! - `context`: the librdkafka context with the rebalance and statistics callbacks.
//! - `worker`: the per-partition task.

mod context;
mod poll;
pub mod settings;
mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use settings::ConsumerSettings;

use crate::error::KafkaError;
use crate::message::ConsumedMessage;

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A reason to run a batch again: a failure that waiting can cure (the partition waits with
/// backoff), or an expected retry that is not a failure at all (see [`TransientError::switch`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{dependency} unavailable: {detail}")]
pub struct TransientError {
    /// What failed: `postgres`, `redis`, `kafka`, … (a bounded metric label), or
    /// [`TransientError::SWITCH`].
    pub dependency: &'static str,
    /// What happened.
    pub detail: String,
}

impl TransientError {
    /// The `dependency` of an expected retry: the batch landed in a read-model generation that
    /// a blue/green switch retired meanwhile, and is applied again, at once, to the new one.
    pub const SWITCH: &'static str = "generation_switch";

    /// An expected retry after a blue/green switch (not an outage: no backoff, logged at info).
    pub fn switch(detail: impl Into<String>) -> Self {
        Self { dependency: Self::SWITCH, detail: detail.into() }
    }

    /// Whether this is the expected retry after a switch.
    pub fn is_switch(&self) -> bool {
        self.dependency == Self::SWITCH
    }
}

/// What the runtime reports as it goes, for metrics and readiness. Every method has an
/// empty default.
pub trait ConsumerObserver: Send + Sync + 'static {
    /// Partitions were assigned (`added`) or revoked (`removed`); `total` now held.
    fn on_rebalance(&self, _added: &[PartitionId], _removed: &[PartitionId], _total: usize) {}
    /// Flow control paused a partition whose worker has too much waiting (`paused`), or
    /// resumed it once the worker caught up.
    fn on_flow_control(&self, _partition: &PartitionId, _paused: bool) {}
    /// A batch landed.
    fn on_batch(&self, _partition: &PartitionId, _messages: usize, _elapsed: Duration) {}
    /// A batch failed transiently and will be retried after `backoff`.
    fn on_transient(&self, _partition: &PartitionId, _error: &TransientError, _backoff: Duration) {}
    /// Lag of a partition: messages between the landed position and the high watermark,
    /// and the age of the oldest message not yet landed (0 when caught up).
    fn on_lag(&self, _partition: &PartitionId, _messages: i64, _seconds: f64) {}
    /// An offset commit finished: `None` when the broker stored the offsets, otherwise the
    /// broker's or librdkafka's error code (e.g. `StaleMemberEpoch` while a KIP-848 group
    /// reconciles). A failed commit is not retried as such: the offsets stay stored and the
    /// next commit carries them.
    fn on_commit(&self, _error: Option<&str>) {}
}

/// Processes the batches of one consumer. Every effect of a batch must be durable when
/// `handle` returns `Ok`: the runtime then stores its offsets. Permanent problems with
/// individual messages are the handler's to settle (e.g. by dead-lettering them) before
/// returning `Ok`.
pub trait BatchHandler: ConsumerObserver {
    /// Handles one batch of one partition, in offset order.
    fn handle<'a>(
        &'a self,
        partition: &'a PartitionId,
        messages: &'a [ConsumedMessage],
    ) -> impl Future<Output = Result<(), TransientError>> + Send + 'a;
}

/// A running consumer group member.
#[derive(Debug)]
pub struct ConsumerRuntime {
    poll: poll::PollThread,
}

impl ConsumerRuntime {
    /// Joins the group and starts consuming. Must be called inside a tokio runtime.
    pub fn start<H: BatchHandler>(settings: ConsumerSettings, handler: Arc<H>) -> Result<Self, KafkaError> {
        Ok(Self { poll: poll::PollThread::start(settings, handler)? })
    }

    /// Stops consuming: in-flight batches finish (or are aborted after the shutdown
    /// deadline), landed offsets are committed, and the member leaves the group.
    pub async fn shutdown(self) {
        self.poll.stop().await;
    }

    /// Resolves if the consumer stops by itself (a fatal error), with the reason.
    pub async fn stopped(&mut self) -> String {
        self.poll.stopped().await
    }
}
