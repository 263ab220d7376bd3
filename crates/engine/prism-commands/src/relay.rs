//! The outbox relay: publishes the events stored in the outbox (by any command service: this
//! crate's, or one in another language following the event store's `CONTRACT.md`), in order
//! per aggregate, and deletes each outbox row once the broker has acknowledged it. It reads
//! bytes and never decodes an event, so it needs no application code.
//!
//! How it works:
//! - The outbox is split into `OUTBOX_LANES` lanes by aggregate id. A relay instance holds
//!   session-level advisory locks on the lanes it publishes, over a dedicated control
//!   connection ([`LaneClaims`]); an instance that dies, or whose connection drops, loses
//!   them with it. Instances register under a second lock key and share the lanes: each
//!   aims at `ceil(lanes / instances)`, releasing surplus lanes between rounds (when nothing
//!   of theirs is in flight) and every [`CLAIM_INTERVAL`] taking free lanes, including those
//!   whose holder vanished.
//! - A round: confirm on the control connection which lanes are still held; read the oldest
//!   rows of each held lane (id order, which is version order per aggregate); hand them all
//!   to the idempotent producer in that order; wait for every acknowledgement; delete the
//!   acknowledged rows. Per lane only the acknowledged prefix is deleted, so a row is never
//!   deleted while an earlier row of its lane is still waiting.
//! - Any failure stops the round, counts it, backs off (capped exponential) and starts over
//!   from each lane's first undeleted row. Re-publications carry the stored bytes, so a
//!   duplicate has the same event id and version as the original, and a lane is never
//!   published out of order. The producer is recreated after a failed round (an idempotent
//!   producer can be left in a fatal state).
//! - Wake-ups: `NOTIFY` from each append's transaction, with `relay.poll_interval_ms` as
//!   the fallback.
//!
//! The remaining window: a lock vouches for a lane only while PostgreSQL still sees the
//! control connection. If that connection drops while messages are in flight (a network
//! partition, or PostgreSQL killing the session), another instance can take the lane and
//! publish the same rows while the broker may still accept the first instance's queued
//! copies. Consumers can then see an aggregate's events twice, possibly a re-published
//! older version after a newer one; every copy carries its original event id and version, so
//! the projectors' version gate drops the repeats. The relay narrows the window by checking
//! its locks before every round and stopping as soon as the connection is gone, but cannot
//! recall messages already handed to the producer.

use std::collections::{BTreeSet, HashSet};
use std::task::Poll;
use std::time::Duration;

use futures::future::join_all;
use prism_config::PrismConfig;
use prism_event_store::{outbox, LaneClaims, OutboxMessage, OUTBOX_LANES};
use prism_events::{HEADER_EVENT_TYPE, HEADER_SCHEMA_VERSION};
use prism_kafka::{EventProducer, KafkaError};
use prism_postgres::{Database, StoreError};
use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics;

/// How often an instance re-balances: takes free lanes, gives up surplus ones.
pub const CLAIM_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait for the lock check on the control connection before assuming it is gone.
const LOCK_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows read per lane and round, whatever `relay.batch_size` says: 16 lanes × 5,000 stays
/// below librdkafka's default queue of 100,000 messages, so a send never meets a full queue.
/// (A full queue makes rdkafka retry that send later, letting the next one overtake it.)
const MAX_ROWS_PER_LANE: usize = 5_000;
/// Bytes handed to the producer per round, below librdkafka's default 1 GiB queue.
const MAX_BYTES_PER_ROUND: usize = 256 * 1024 * 1024;
/// First and longest pause after a failed round.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a round in flight may finish after shutdown was asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a relay round failed. Every variant is retried; [`RelayError::reason`] is the metric
/// label.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or deleting outbox rows failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker refused or failed a message.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The control connection (and with it the lane locks) is gone, or cannot vouch for them.
    #[error("the relay's control connection is gone: {0}")]
    LockLost(String),
}

impl RelayError {
    /// The bounded `reason` label of the publish error counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Store(_) => "postgres",
            Self::Kafka(_) => "broker",
            Self::LockLost(_) => "lock_lost",
        }
    }
}

/// What a round did.
enum Round {
    /// Published (and deleted) this many rows; there may be more.
    Published(usize),
    /// Nothing to publish in the held lanes.
    Idle,
}

/// One instance's lanes, held over its control connection.
struct Session {
    /// The control connection with the locks.
    claims: LaneClaims,
    /// The lanes held, as last confirmed.
    held: BTreeSet<i16>,
    /// When to re-balance next.
    next_claim: Instant,
}

/// Runs the relay until `stop` turns true, then lets the round in flight finish (up to
/// 10 s). Returns an error only for a configuration the producer refuses.
pub async fn run(
    config: PrismConfig,
    db: Database,
    mut stop: watch::Receiver<bool>,
) -> Result<(), KafkaError> {
    let relay = &config.relay;
    let per_lane = relay.batch_size.clamp(1, MAX_ROWS_PER_LANE) as i64;
    let poll_interval = Duration::from_millis(relay.poll_interval_ms.max(1));
    // Creating a producer validates its configuration: fail at start, not in the loop.
    let mut producer = Some(new_producer(&config)?);
    let mut session: Option<Session> = None;
    let mut backoff = BACKOFF_MIN;
    tracing::info!(per_lane, ?poll_interval, "outbox relay started");
    while !*stop.borrow() {
        let step = async {
            if session.is_none() {
                session = Some(open_session(&config).await?);
            }
            if producer.is_none() {
                producer = Some(new_producer(&config)?);
            }
            match (session.as_mut(), producer.as_ref()) {
                (Some(session), Some(producer)) => round(session, producer, &db, per_lane).await,
                _ => Ok(Round::Idle),
            }
        };
        let drain_deadline = async {
            let _ = stop.clone().wait_for(|stopped| *stopped).await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };
        let outcome = tokio::select! {
            outcome = step => outcome,
            _ = drain_deadline => {
                tracing::warn!("outbox relay round did not finish within the drain timeout; its rows stay queued");
                break;
            }
        };
        match outcome {
            Ok(Round::Published(count)) => {
                backoff = BACKOFF_MIN;
                tracing::trace!(count, "outbox rows published");
            }
            Ok(Round::Idle) => {
                backoff = BACKOFF_MIN;
                let Some(current) = session.as_ref() else { continue };
                tokio::select! {
                    _ = current.claims.notified() => {}
                    _ = tokio::time::sleep(poll_interval) => {}
                    _ = tokio::time::sleep_until(current.next_claim) => {}
                    _ = stop.wait_for(|stopped| *stopped) => {}
                }
            }
            Err(err) => {
                metrics::publish_error(err.reason());
                tracing::warn!(
                    error = %crate::service::error_chain(&err),
                    reason = err.reason(),
                    retry_in = ?backoff,
                    "outbox relay round failed"
                );
                match err {
                    RelayError::Kafka(_) => producer = None,
                    RelayError::LockLost(_) => session = None,
                    RelayError::Store(_) => {}
                }
                let pause = jittered(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|stopped| *stopped) => {}
                }
            }
        }
    }
    if let Some(producer) = producer {
        // Every round waits for its acknowledgements; this only matters after a drain timeout.
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    }
    tracing::info!("outbox relay stopped");
    Ok(())
}

fn new_producer(config: &PrismConfig) -> Result<EventProducer, KafkaError> {
    EventProducer::new(&config.kafka, "relay", config.topics.max_message_bytes)
}

async fn open_session(config: &PrismConfig) -> Result<Session, RelayError> {
    let claims = LaneClaims::connect(&config.postgres, "prism-commands-relay")
        .await
        .map_err(|err| RelayError::LockLost(err.to_string()))?;
    Ok(Session { claims, held: BTreeSet::new(), next_claim: Instant::now() })
}

/// One round: confirm the locks, re-balance when due, read, publish, delete.
async fn round(
    session: &mut Session,
    producer: &EventProducer,
    db: &Database,
    per_lane: i64,
) -> Result<Round, RelayError> {
    if !session.claims.is_alive() {
        return Err(RelayError::LockLost("the connection closed".into()));
    }
    let status = session
        .claims
        .status(LOCK_CHECK_TIMEOUT)
        .await
        .map_err(|err| RelayError::LockLost(err.to_string()))?;
    let confirmed: BTreeSet<i16> = status.held.iter().copied().collect();
    let lost: Vec<i16> = session.held.difference(&confirmed).copied().collect();
    if !lost.is_empty() {
        tracing::warn!(?lost, "outbox lanes no longer held");
    }
    session.held = confirmed;
    if Instant::now() >= session.next_claim {
        rebalance(session, status.instances).await.map_err(|err| RelayError::LockLost(err.to_string()))?;
        session.next_claim = Instant::now() + CLAIM_INTERVAL;
    }
    let lanes: Vec<i16> = session.held.iter().copied().collect();
    let rows = outbox::read_lanes(db, &lanes, per_lane).await?;
    if rows.is_empty() {
        return Ok(Round::Idle);
    }
    let (acknowledged, failure) = publish(producer, &rows).await;
    if !acknowledged.is_empty() {
        let deleted = outbox::delete(db, &acknowledged).await?;
        metrics::published(acknowledged.len());
        if deleted < acknowledged.len() as u64 {
            // Another instance published and deleted them: it took a lane this one thought it
            // held (see the module header).
            tracing::warn!(published = acknowledged.len(), deleted, "outbox rows were already deleted");
        }
    }
    match failure {
        Some(err) => Err(err.into()),
        None => Ok(Round::Published(acknowledged.len())),
    }
}

/// Aims at `ceil(lanes / instances)` lanes: gives up the highest surplus lanes, then tries
/// free ones from a random starting point (so instances starting together spread out).
async fn rebalance(session: &mut Session, instances: i64) -> Result<(), StoreError> {
    let lanes = i64::from(OUTBOX_LANES);
    let instances = instances.max(1);
    let target = ((lanes + instances - 1) / instances) as usize;
    let before = session.held.clone();
    while session.held.len() > target {
        let Some(lane) = session.held.pop_last() else { break };
        session.claims.release(lane).await?;
    }
    if session.held.len() < target {
        let start = rand::rng().random_range(0..OUTBOX_LANES);
        for step in 0..OUTBOX_LANES {
            let lane = (start + step) % OUTBOX_LANES;
            if session.held.len() >= target {
                break;
            }
            if !session.held.contains(&lane) && session.claims.try_claim(lane).await? {
                session.held.insert(lane);
            }
        }
    }
    if session.held != before {
        tracing::info!(held = ?session.held, instances, "outbox lanes re-balanced");
    }
    Ok(())
}

/// Hands `rows` (ordered by lane, then id) to the producer in order and waits for every
/// acknowledgement. Returns the ids safe to delete (each lane's acknowledged prefix) and the
/// first failure, if any.
async fn publish(producer: &EventProducer, rows: &[OutboxMessage]) -> (Vec<i64>, Option<KafkaError>) {
    let versions: Vec<String> = rows.iter().map(|row| row.schema_version.to_string()).collect();
    let mut results: Vec<Option<Result<(), KafkaError>>> = Vec::with_capacity(rows.len());
    let mut pending = Vec::new();
    let mut bytes = 0_usize;
    for (index, (row, version)) in rows.iter().zip(&versions).enumerate() {
        bytes += row.value.len();
        if bytes > MAX_BYTES_PER_ROUND && index > 0 {
            // The rest waits for the next round; each lane keeps a prefix of its rows.
            break;
        }
        let headers: [(&str, &[u8]); 2] =
            [(HEADER_EVENT_TYPE, row.event_type.as_bytes()), (HEADER_SCHEMA_VERSION, version.as_bytes())];
        let mut send = Box::pin(async move {
            producer.send(&row.topic, row.key.as_bytes(), &row.value, &headers).await.map(|_| ())
        });
        // rdkafka queues the message on the future's first poll. Polling each one here, in
        // row order, queues them in that order: per partition, the producer keeps it.
        match futures::poll!(&mut send) {
            Poll::Ready(result) => results.push(Some(result)),
            Poll::Pending => {
                results.push(None);
                pending.push(async move { (index, send.await) });
            }
        }
    }
    for (index, result) in join_all(pending).await {
        results[index] = Some(result);
    }
    let mut acknowledged = Vec::with_capacity(results.len());
    let mut failed_lanes = HashSet::new();
    let mut failure = None;
    for (row, result) in rows.iter().zip(results) {
        if failed_lanes.contains(&row.lane) {
            continue;
        }
        match result {
            Some(Ok(())) => acknowledged.push(row.id),
            Some(Err(err)) => {
                failed_lanes.insert(row.lane);
                failure.get_or_insert(err);
            }
            // Left for the next round (over the byte budget): so is the rest of its lane.
            None => {
                failed_lanes.insert(row.lane);
            }
        }
    }
    (acknowledged, failure)
}

/// `pause` ± 20%, so instances that failed together do not retry in lockstep.
fn jittered(pause: Duration) -> Duration {
    let factor = rand::rng().random_range(0.8..1.2);
    pause.mul_f64(factor)
}
