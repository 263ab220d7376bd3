//! The cache as the read path uses it: optional and never in the way.
//!
//! Redis only makes reads cheaper; PostgreSQL can answer every read alone. So a cache that is
//! down, slow or not connected yet must cost neither availability nor much latency:
//! - every cache call is bounded by [`CALL_TIMEOUT`];
//! - after a failure the cache is bypassed for [`BYPASS_AFTER_ERROR`] (so a Redis outage does
//!   not add a timeout to every read), and after a failed readiness probe until a probe sees it
//!   answer again;
//! - the process may start while Redis is unreachable: the probe connects later
//!   ([`CacheSlot::fill`]).
//!
//! On a Redis Cluster (`redis.mode = "cluster"`) the same calls work unchanged: reads follow
//! the cluster's redirections, one master that fails (until its replica takes over) is a
//! failed call like any other, and the readiness probe pings every master. Refills do not wait
//! for replicas ([`Cache::refill_if_newer`]): the projector writes the same revision (or a
//! newer one) and waits for them, so a refill lost in a failover leaves nothing stale, and
//! reads are spared the replication round trip.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prism_cache::{Cache, CacheError, Cached, Entry};
use tokio::time::Instant;

/// Longest wait for one cache call on the request path.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// How long reads skip the cache after a cache call failed.
pub(crate) const BYPASS_AFTER_ERROR: Duration = Duration::from_secs(1);
/// How long reads skip the cache after a failed readiness probe, unless the next probe passes
/// first (probes run every few seconds; this only bounds a bypass if they stopped).
const PROBE_BYPASS: Duration = Duration::from_secs(60);

/// Why a cache call did not answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheFailure {
    /// Redis answered with an error or could not be reached.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
}

/// The connection to Redis once there is one, and whether to use it now. Cheap to clone;
/// clones share state.
#[derive(Debug, Clone, Default)]
pub(crate) struct CacheSlot {
    /// Set once connected; the connection reconnects by itself afterwards.
    cache: Arc<OnceLock<Cache>>,
    /// Reads skip the cache until then (after a failure, or while the probe fails).
    bypass_until: Arc<Mutex<Option<Instant>>>,
    /// The last probe's verdict (for logging changes only).
    degraded: Arc<AtomicBool>,
}

impl CacheSlot {
    /// A slot holding `cache`, or empty (connected later by [`fill`](Self::fill)).
    pub(crate) fn new(cache: Option<Cache>) -> Self {
        let slot = Self::default();
        if let Some(cache) = cache {
            let _ = slot.cache.set(cache);
        }
        slot
    }

    /// Whether a connection exists.
    pub(crate) fn is_connected(&self) -> bool {
        self.cache.get().is_some()
    }

    /// Keeps `cache` unless a connection exists already.
    pub(crate) fn fill(&self, cache: Cache) {
        let _ = self.cache.set(cache);
    }

    /// The cache, when it is connected and not bypassed.
    pub(crate) fn usable(&self) -> Option<&Cache> {
        let cache = self.cache.get()?;
        let bypass = *self.bypass_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match bypass {
            Some(until) if Instant::now() < until => None,
            _ => Some(cache),
        }
    }

    /// Records what the readiness probe saw: a passing probe ends any bypass, a failing one
    /// starts one that lasts until the next probe passes. Returns whether the verdict changed
    /// since the last probe (the first probe counts as a change when it fails).
    pub(crate) fn probed(&self, answered: bool) -> bool {
        let mut bypass = self.bypass_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *bypass = if answered { None } else { Some(Instant::now() + PROBE_BYPASS) };
        let was_degraded = self.degraded.swap(!answered, Ordering::Relaxed);
        was_degraded == answered
    }

    /// Records a failed call on the request path.
    fn failed(&self) {
        let mut bypass = self.bypass_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let until = Instant::now() + BYPASS_AFTER_ERROR;
        if bypass.is_none_or(|current| current < until) {
            *bypass = Some(until);
        }
    }

    /// Reads one entry, bounded by [`CALL_TIMEOUT`].
    pub(crate) async fn get(&self, cache: &Cache, key: &str) -> Result<Option<Cached>, CacheFailure> {
        let outcome = match tokio::time::timeout(CALL_TIMEOUT, cache.get(key)).await {
            Ok(outcome) => outcome.map_err(CacheFailure::from),
            Err(_) => Err(CacheFailure::Timeout),
        };
        if outcome.is_err() {
            self.failed();
        }
        outcome
    }

    /// Refills entries that are newer than the cached ones (without waiting for replicas),
    /// bounded by [`CALL_TIMEOUT`].
    pub(crate) async fn put_if_newer(
        &self,
        cache: &Cache,
        entries: &[Entry<'_>],
    ) -> Result<usize, CacheFailure> {
        let outcome = match tokio::time::timeout(CALL_TIMEOUT, cache.refill_if_newer(entries)).await {
            Ok(outcome) => outcome.map_err(CacheFailure::from),
            Err(_) => Err(CacheFailure::Timeout),
        };
        if outcome.is_err() {
            self.failed();
        }
        outcome
    }

    /// Pings the connection (the readiness probe); `None` while not connected.
    pub(crate) async fn ping(&self) -> Option<Result<(), CacheError>> {
        Some(self.cache.get()?.ping().await)
    }
}
