//! The states of recently used aggregates, kept between commands so that a command folds only
//! the events appended since, not the aggregate's whole history.
//!
//! An aggregate that lives long and is written often — a product whose stock every order
//! reserves — would otherwise cost each command a read and a fold of every event it ever had.
//! A kept state is never taken as current: [`crate::CommandService::load`] always asks the
//! event store for the events after the kept version (usually none) and folds those onto it,
//! so a state kept here is never stale, whatever other instances of the command service
//! appended meanwhile. The same read checks that the stream still holds the event the state
//! was folded up to; a stream that does not (a store restored from an older backup) is folded
//! anew from its first event. The store's optimistic concurrency check at append time stays
//! what decides between concurrent commands.
//!
//! Bounded by a number of aggregates (`commands.cached_aggregates`), the least recently used
//! evicted first. States are kept type-erased, one map for every aggregate type of the
//! application, keyed by aggregate type and id.

use std::any::Any;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use prism_events::{Aggregate, AggregateType};
use uuid::Uuid;

/// One kept state: the fold of an aggregate's events up to `version`, whose event is
/// `event_id` (what the next load checks the stream still holds).
struct KeptState {
    version: u64,
    event_id: Uuid,
    state: Arc<dyn Any + Send + Sync>,
}

/// A state taken out of [`AggregateStates`]: the fold of an aggregate's events up to the event
/// `event_id` at `version`.
#[derive(Debug, Clone)]
pub struct Folded<A> {
    /// The state.
    pub state: A,
    /// The version of the last event folded into it.
    pub version: u64,
    /// That event's id.
    pub event_id: Uuid,
}

/// Kept states by aggregate type and id, least recently used first out.
type KeptStates = LruCache<(AggregateType, Uuid), KeptState>;

/// The states of recently used aggregates, shared by every request of a command service.
#[derive(Clone)]
pub struct AggregateStates {
    /// `None` when keeping states is turned off (a capacity of 0).
    kept: Option<Arc<Mutex<KeptStates>>>,
}

impl std::fmt::Debug for AggregateStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateStates")
            .field("capacity", &self.capacity())
            .field("kept", &self.len())
            .finish()
    }
}

impl AggregateStates {
    /// Keeps the states of up to `capacity` aggregates; 0 keeps none (every command folds its
    /// aggregate's whole history).
    pub fn new(capacity: usize) -> Self {
        Self {
            kept: NonZeroUsize::new(capacity).map(|capacity| Arc::new(Mutex::new(LruCache::new(capacity)))),
        }
    }

    /// How many aggregates' states it may keep.
    pub fn capacity(&self) -> usize {
        self.kept.as_ref().map_or(0, |kept| lock(kept).cap().get())
    }

    /// How many it keeps now.
    pub fn len(&self) -> usize {
        self.kept.as_ref().map_or(0, |kept| lock(kept).len())
    }

    /// Whether it keeps none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kept state of aggregate `id` of type `A`, if any.
    pub fn get<A: Aggregate>(&self, id: Uuid) -> Option<Folded<A>> {
        let kept = self.kept.as_ref()?;
        let mut kept = lock(kept);
        let entry = kept.get(&(A::TYPE, id))?;
        // Two state types under one aggregate type's name cannot happen within one
        // application; a state that is not an `A` is simply not used.
        let state = entry.state.downcast_ref::<A>()?.clone();
        Some(Folded { state, version: entry.version, event_id: entry.event_id })
    }

    /// Keeps `folded` as aggregate `id`'s state, unless a state at a later version is kept
    /// already (a concurrent command's load that read further).
    pub fn put<A: Aggregate>(&self, id: Uuid, folded: &Folded<A>) {
        let Some(kept) = self.kept.as_ref() else { return };
        let mut kept = lock(kept);
        if kept.peek(&(A::TYPE, id)).is_some_and(|entry| entry.version > folded.version) {
            return;
        }
        let entry = KeptState {
            version: folded.version,
            event_id: folded.event_id,
            state: Arc::new(folded.state.clone()),
        };
        kept.put((A::TYPE, id), entry);
    }

    /// Forgets aggregate `id` of `aggregate_type`: its kept state disagreed with the store.
    pub fn forget(&self, aggregate_type: AggregateType, id: Uuid) {
        if let Some(kept) = self.kept.as_ref() {
            lock(kept).pop(&(aggregate_type, id));
        }
    }
}

/// The map, whether or not a thread panicked while holding it (every change to it is one call
/// of the map's, which leaves it whole).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
