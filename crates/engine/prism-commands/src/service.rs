//! Load → decide → append: how a command becomes events, for any application's aggregates.
//!
//! [`CommandService`] loads the addressed aggregate's stream and folds it into state
//! ([`Loaded`]), checks the client's `If-Match` precondition, asks the aggregate to
//! [`decide`](prism_events::Aggregate::decide), wraps the decided bodies in envelopes (ids,
//! next versions, a microsecond timestamp, correlation and causation) and appends them with
//! their outbox rows in one transaction, under the event store's optimistic concurrency check.
//!
//! - [`CommandService::execute`]: the common case, one command to one aggregate.
//! - [`CommandService::execute_with`]: a command the application decides itself from several
//!   loaded aggregates — reading some (a cart reading the catalog's price), appending to one or
//!   more (a checkout appends to the cart and to a new order) — as a [`Decision`], appended in
//!   one transaction: all of its streams land or none does.
//!
//! Idempotency: with a key, a recorded response for the same request is replayed and nothing
//! is appended; a recorded response for another request is [`ServiceError::KeyReused`]. The
//! response to a fresh command is recorded in the append's transaction, so a key either has
//! its events and its response or neither. A refused command records nothing (the same key
//! works once the request is valid). There is no retry on a concurrency conflict: the client
//! decides whether to try again with fresh state.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use prism_event_store::{
    idempotency, Continuation, EventStore, EventStoreError, IdempotencyRecord, StoredResponse, StreamAppend,
};
use prism_events::{truncate_to_micros, Aggregate, AggregateType, Event, EventPosition, EventSet};
use prism_postgres::{ErrorClass, StoreError};
use serde_json::json;
use uuid::Uuid;

use crate::metrics::LoadStart;
use crate::states::{AggregateStates, Folded};

/// Everything about a request that is not the command itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMeta {
    /// The request or saga this command belongs to; copied into every event.
    pub correlation_id: Uuid,
    /// Identifies this command; the causation id of every event it causes.
    pub command_id: Uuid,
    /// The version the client believes the addressed aggregate has (`If-Match`), if it said.
    pub if_match: Option<u64>,
    /// The idempotency key and the request's fingerprint, if the client sent a key.
    pub idempotency: Option<IdempotencyKey>,
}

impl RequestMeta {
    /// A request with fresh correlation and command ids, no precondition and no key.
    pub fn new() -> Self {
        Self { correlation_id: Uuid::new_v4(), command_id: Uuid::new_v4(), if_match: None, idempotency: None }
    }

    /// The same request, for an aggregate other than the addressed one: `If-Match` speaks of
    /// the addressed aggregate only (a checkout's `If-Match` is the cart's, not the new
    /// order's).
    pub fn without_precondition(&self) -> Self {
        Self { if_match: None, ..self.clone() }
    }
}

impl Default for RequestMeta {
    fn default() -> Self {
        Self::new()
    }
}

/// An `Idempotency-Key` with the fingerprint of the request that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The client's key.
    pub key: String,
    /// What identifies the request (over HTTP: method, path and body digest), so the same key
    /// with another request is recognised.
    pub fingerprint: String,
}

/// What a command did to one aggregate; the JSON of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOutcome {
    /// The aggregate's type.
    pub aggregate_type: AggregateType,
    /// The aggregate.
    pub aggregate_id: Uuid,
    /// Its version after the command.
    pub version: u64,
    /// The types of the events appended, in order.
    pub events: Vec<&'static str>,
}

impl StreamOutcome {
    /// What `append` does to its aggregate.
    pub fn of(append: &StreamAppend) -> Self {
        Self {
            aggregate_type: append.aggregate_type,
            aggregate_id: append.aggregate_id,
            version: append.expected_version + append.events.len() as u64,
            events: append.events.iter().map(Event::event_type).collect(),
        }
    }

    /// `{"aggregate_type", "aggregate_id", "version", "events"}`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "aggregate_type": self.aggregate_type.as_str(),
            "aggregate_id": self.aggregate_id,
            "version": self.version,
            "events": self.events,
        })
    }
}

/// The answer to a command: a fresh outcome or a replayed one.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status: 201 when the command created the addressed aggregate, 200 otherwise (or
    /// whatever was recorded, for a replay).
    pub status: u16,
    /// JSON body: the addressed aggregate's [`StreamOutcome`], with the related streams'
    /// outcomes under their names (see [`Decision::with_related`]).
    pub body: serde_json::Value,
    /// True when the response was recorded earlier under the same idempotency key.
    pub replayed: bool,
}

/// Why a command produced no events. `E` is the application's refusal type (its aggregates'
/// [`Aggregate::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError<E> {
    /// The application refused the command (its aggregate's `decide`, or the application's
    /// own checks in [`CommandService::execute_with`]).
    #[error("the command was refused: {0}")]
    Refused(E),
    /// `If-Match` named another version than the current one.
    #[error("the aggregate is at version {actual}, not {expected}")]
    VersionMismatch {
        /// What the client sent.
        expected: u64,
        /// What the store holds.
        actual: u64,
    },
    /// Another command changed the aggregate between load and append.
    #[error("{aggregate_type} {aggregate_id} was modified concurrently; reload and retry")]
    Conflict {
        /// The aggregate's type.
        aggregate_type: AggregateType,
        /// The aggregate.
        aggregate_id: Uuid,
    },
    /// The idempotency key was used before for a different request.
    #[error("this Idempotency-Key was already used for a different request")]
    KeyReused,
    /// A stored stream does not fold: data the service cannot trust.
    #[error("stored events of {aggregate_type} {aggregate_id} do not fold: {source}")]
    Unfoldable {
        /// The aggregate's type.
        aggregate_type: AggregateType,
        /// The aggregate.
        aggregate_id: Uuid,
        /// What did not fit (the aggregate's `EvolveError`).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The event store failed; [`ServiceError::is_transient`] says whether a retry can help.
    #[error(transparent)]
    Store(#[from] EventStoreError),
}

impl<E> From<StoreError> for ServiceError<E> {
    fn from(err: StoreError) -> Self {
        Self::Store(EventStoreError::Store(err))
    }
}

impl<E> ServiceError<E> {
    /// True when the same request may succeed later without anyone changing it: a database
    /// outage or failover, or an event store whose tables are not there yet
    /// ([`ServiceError::missing_table`]: the operator's migration fixes it).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(err) => err.class() == ErrorClass::Transient || self.missing_table().is_some(),
            _ => false,
        }
    }

    /// The table PostgreSQL said does not exist (SQLSTATE `42P01`), when that is why the store
    /// failed: the engine's schema was not migrated (`prismctl migrate`). `"?"` when the
    /// server's message does not name it in the usual form.
    pub fn missing_table(&self) -> Option<String> {
        let Self::Store(EventStoreError::Store(store)) = self else { return None };
        missing_table(store)
    }

    /// The same error with the refusal converted, e.g. to combine aggregates whose refusal types
    /// differ in one [`CommandService::execute_with`].
    pub fn map_refusal<F>(self, convert: impl FnOnce(E) -> F) -> ServiceError<F> {
        match self {
            Self::Refused(err) => ServiceError::Refused(convert(err)),
            Self::VersionMismatch { expected, actual } => ServiceError::VersionMismatch { expected, actual },
            Self::Conflict { aggregate_type, aggregate_id } => {
                ServiceError::Conflict { aggregate_type, aggregate_id }
            }
            Self::KeyReused => ServiceError::KeyReused,
            Self::Unfoldable { aggregate_type, aggregate_id, source } => {
                ServiceError::Unfoldable { aggregate_type, aggregate_id, source }
            }
            Self::Store(err) => ServiceError::Store(err),
        }
    }
}

/// The table named by an "undefined table" error (SQLSTATE `42P01`).
pub(crate) fn missing_table(err: &StoreError) -> Option<String> {
    let StoreError::Postgres(postgres) = err else { return None };
    let db = postgres.as_db_error()?;
    if db.code().code() != "42P01" {
        return None;
    }
    // `relation "events" does not exist` (with lc_messages = C or English).
    let name = db.message().split('"').nth(1).filter(|name| !name.is_empty()).unwrap_or("?");
    Some(name.to_owned())
}

/// An error and its causes as one line, each cause once: `tokio_postgres` says only
/// `db error` at the top and keeps what the server said in its source, which is what an
/// operator needs to read (`ERROR: relation "events" does not exist`).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !line.is_empty() && !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}

/// One aggregate, loaded from the event store and folded.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The aggregate.
    aggregate_id: Uuid,
    /// Its state: the fold of its events.
    state: A,
    /// The version of its last event, 0 when it has none.
    version: u64,
}

impl<A: Aggregate> Loaded<A> {
    /// The aggregate's id.
    pub fn aggregate_id(&self) -> Uuid {
        self.aggregate_id
    }

    /// Its current state.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Its current version (0: no events yet).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Runs `command` against the state and wraps the decided events in envelopes at the next
    /// versions, ready to append. `meta.if_match`, when given, must equal the current version
    /// ([`ServiceError::VersionMismatch`]); an aggregate that does not exist answers with its
    /// refusal (usually "not found") before any version check. Use
    /// [`RequestMeta::without_precondition`] for aggregates other than the addressed one.
    pub fn decide(
        &self,
        command: &A::Command,
        meta: &RequestMeta,
    ) -> Result<StreamAppend, ServiceError<A::Error>> {
        if let Some(expected) = meta.if_match.filter(|expected| *expected != self.version) {
            if !self.state.exists() {
                self.state.decide(command).map_err(ServiceError::Refused)?;
            }
            return Err(ServiceError::VersionMismatch { expected, actual: self.version });
        }
        let bodies = self.state.decide(command).map_err(ServiceError::Refused)?;
        Ok(self.append(bodies, meta))
    }

    /// Wraps `bodies` (events of this aggregate, e.g. decided by the application itself) in
    /// envelopes at the versions following the current one.
    pub fn append(&self, bodies: Vec<A::Event>, meta: &RequestMeta) -> StreamAppend {
        StreamAppend {
            aggregate_type: A::TYPE,
            aggregate_id: self.aggregate_id,
            expected_version: self.version,
            events: envelopes(self.aggregate_id, self.version, bodies, meta),
        }
    }
}

/// Envelopes for `bodies` at versions `version + 1`, `+ 2`, …, all with one timestamp.
fn envelopes<E: EventSet>(
    aggregate_id: Uuid,
    version: u64,
    bodies: Vec<E>,
    meta: &RequestMeta,
) -> Vec<Event> {
    let occurred_at = truncate_to_micros(chrono::Utc::now());
    bodies
        .into_iter()
        .enumerate()
        .map(|(offset, body)| {
            let position = EventPosition {
                event_id: Uuid::new_v4(),
                aggregate_id,
                aggregate_version: version + offset as u64 + 1,
                occurred_at,
                correlation_id: meta.correlation_id,
                causation_id: meta.command_id,
            };
            Event::new(position, body)
        })
        .collect()
}

/// A decided command, ready to append in one transaction: the addressed aggregate's events
/// and, optionally, events of related aggregates (a checkout's new order).
#[derive(Debug, Clone)]
pub struct Decision {
    /// The addressed aggregate: decides the status and the body of the reply.
    primary: StreamAppend,
    /// Further streams, each with the name its outcome has in the reply body.
    related: Vec<(&'static str, StreamAppend)>,
}

impl Decision {
    /// The events of the addressed aggregate.
    pub fn new(primary: StreamAppend) -> Self {
        Self { primary, related: Vec::new() }
    }

    /// Also appends `append` in the same transaction; its outcome appears in the reply body
    /// under `name` (e.g. `"order"`).
    pub fn with_related(mut self, name: &'static str, append: StreamAppend) -> Self {
        self.related.push((name, append));
        self
    }

    /// 201 when the command created the addressed aggregate, 200 otherwise.
    fn status(&self) -> u16 {
        if self.primary.expected_version == 0 && !self.primary.events.is_empty() {
            201
        } else {
            200
        }
    }

    /// The addressed aggregate's outcome, with each related one under its name.
    fn body(&self) -> serde_json::Value {
        let mut body = StreamOutcome::of(&self.primary).to_json();
        if let Some(object) = body.as_object_mut() {
            for (name, append) in &self.related {
                object.insert((*name).to_owned(), StreamOutcome::of(append).to_json());
            }
        }
        body
    }

    /// The streams with events to append, the addressed one first.
    fn appends(&self) -> Vec<StreamAppend> {
        std::iter::once(&self.primary)
            .chain(self.related.iter().map(|(_, append)| append))
            .filter(|append| !append.events.is_empty())
            .cloned()
            .collect()
    }
}

/// Turns commands into appended events.
#[derive(Debug, Clone)]
pub struct CommandService {
    /// Where streams are loaded from and appended to.
    store: EventStore,
    /// How long idempotency records answer.
    idempotency_ttl: Duration,
    /// Recently used aggregates' states, so a load folds only the events appended since.
    states: AggregateStates,
}

impl CommandService {
    /// A service over `store`, keeping idempotency records for `idempotency_ttl`. It keeps no
    /// aggregate's state between commands until [`CommandService::keeping_states`] says how many.
    pub fn new(store: EventStore, idempotency_ttl: Duration) -> Self {
        Self { store, idempotency_ttl, states: AggregateStates::new(0) }
    }

    /// The same service, keeping the states of up to `aggregates` recently used aggregates
    /// between commands (0: none), so that a command reads and folds only the events appended
    /// to its aggregate since (see [`crate::states`]).
    pub fn keeping_states(mut self, aggregates: usize) -> Self {
        self.states = AggregateStates::new(aggregates);
        self
    }

    /// The aggregates' states it keeps.
    pub fn states(&self) -> &AggregateStates {
        &self.states
    }

    /// The event store.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Loads aggregate `aggregate_id` of type `A` and folds its events. An aggregate with no
    /// events is `A::default()` at version 0.
    ///
    /// With a state of it kept from an earlier command, only the events appended since are read
    /// and folded onto it; the store is asked either way, so the state is current.
    pub async fn load<A: Aggregate>(&self, aggregate_id: Uuid) -> Result<Loaded<A>, ServiceError<A::Error>> {
        let (kept, events, start) = match self.states.get::<A>(aggregate_id) {
            None => (None, self.store.load(A::TYPE, aggregate_id).await?.events, LoadStart::Whole),
            Some(kept) => {
                match self.store.load_after(A::TYPE, aggregate_id, kept.version, kept.event_id).await? {
                    Continuation::Events(events) => (Some(kept), events, LoadStart::Kept),
                    Continuation::Diverged => {
                        self.states.forget(A::TYPE, aggregate_id);
                        (None, self.store.load(A::TYPE, aggregate_id).await?.events, LoadStart::Diverged)
                    }
                }
            }
        };
        crate::metrics::aggregate_loaded(start, events.len());
        let unfoldable = |source: Box<dyn std::error::Error + Send + Sync>| ServiceError::Unfoldable {
            aggregate_type: A::TYPE,
            aggregate_id,
            source,
        };
        let kept_version = kept.as_ref().map_or(0, |kept| kept.version);
        let mut state = kept.map(|kept| kept.state).unwrap_or_default();
        for event in &events {
            let body = event.body::<A::Event>().ok_or_else(|| {
                unfoldable(
                    format!(
                        "event {} of type {} is not one of this aggregate's events",
                        event.meta.event_id,
                        event.event_type()
                    )
                    .into(),
                )
            })?;
            state.evolve(body).map_err(|err| unfoldable(Box::new(err)))?;
        }
        let Some(last) = events.last() else {
            return Ok(Loaded { aggregate_id, state, version: kept_version });
        };
        let folded = Folded { state, version: last.meta.aggregate_version, event_id: last.meta.event_id };
        // Only aggregates with events are kept: lookups of ids that do not exist would
        // otherwise push out the states worth keeping.
        self.states.put(aggregate_id, &folded);
        Ok(Loaded { aggregate_id, state: folded.state, version: folded.version })
    }

    /// Runs `command` against aggregate `aggregate_id` of type `A`: load, decide (with
    /// `If-Match`), append with the outbox rows, under the request's idempotency key.
    pub async fn execute<A: Aggregate>(
        &self,
        aggregate_id: Uuid,
        command: A::Command,
        meta: &RequestMeta,
    ) -> Result<Reply, ServiceError<A::Error>> {
        self.execute_with(meta, || async {
            let loaded = self.load::<A>(aggregate_id).await?;
            Ok(Decision::new(loaded.decide(&command, meta)?))
        })
        .await
    }

    /// Runs a command the application decides itself: `decide` loads what it needs
    /// ([`CommandService::load`]), decides ([`Loaded::decide`]) and returns the [`Decision`],
    /// whose streams are then appended in one transaction with the idempotency record.
    /// `decide` is not called at all when the key replays a recorded response.
    ///
    /// A decision with no events (a command the aggregate accepts as a no-op) appends and
    /// records nothing, and answers 200 with the current version.
    pub async fn execute_with<E, F, Fut>(
        &self,
        meta: &RequestMeta,
        decide: F,
    ) -> Result<Reply, ServiceError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Decision, ServiceError<E>>>,
    {
        if let Some(key) = &meta.idempotency {
            if let Some(stored) = self.recorded(key).await? {
                return replay(key, stored);
            }
        }
        let decision = decide().await?;
        let (status, body) = (decision.status(), decision.body());
        let appends = decision.appends();
        if appends.is_empty() {
            return Ok(Reply { status, body, replayed: false });
        }
        let record = meta.idempotency.as_ref().map(|key| IdempotencyRecord {
            key: key.key.clone(),
            fingerprint: key.fingerprint.clone(),
            status,
            body: body.clone(),
            ttl: self.idempotency_ttl,
        });
        match self.store.append(&appends, record.as_ref()).await {
            Ok(()) => Ok(Reply { status, body, replayed: false }),
            Err(err @ (EventStoreError::Conflict { .. } | EventStoreError::IdempotencyKeyTaken)) => {
                // A concurrent request with the same key may have won: answer as it did.
                if let Some(key) = &meta.idempotency {
                    if let Some(stored) = self.recorded(key).await? {
                        return replay(key, stored);
                    }
                }
                match err {
                    EventStoreError::Conflict { aggregate_type, aggregate_id, .. } => {
                        Err(ServiceError::Conflict { aggregate_type, aggregate_id })
                    }
                    other => Err(other.into()),
                }
            }
            Err(other) => Err(other.into()),
        }
    }

    async fn recorded<E>(&self, key: &IdempotencyKey) -> Result<Option<StoredResponse>, ServiceError<E>> {
        Ok(idempotency::lookup(self.store.database(), &key.key, self.idempotency_ttl).await?)
    }
}

fn replay<E>(key: &IdempotencyKey, stored: StoredResponse) -> Result<Reply, ServiceError<E>> {
    if stored.fingerprint != key.fingerprint {
        return Err(ServiceError::KeyReused);
    }
    Ok(Reply { status: stored.status, body: stored.body, replayed: true })
}

impl fmt::Display for StreamOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} at version {}", self.aggregate_type, self.aggregate_id, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("db error")]
    struct Inner(#[source] Server);

    #[derive(Debug, thiserror::Error)]
    #[error("ERROR: relation \"events\" does not exist")]
    struct Server;

    #[derive(Debug, thiserror::Error)]
    #[error("PostgreSQL: db error")]
    struct Repeats(#[source] Inner);

    #[test]
    fn error_chains_name_the_cause_once() {
        assert_eq!(
            error_chain(&Outer(Inner(Server))),
            "outer: db error: ERROR: relation \"events\" does not exist"
        );
        assert_eq!(
            error_chain(&Repeats(Inner(Server))),
            "PostgreSQL: db error: ERROR: relation \"events\" does not exist"
        );
    }

    #[test]
    fn metas_for_other_aggregates_drop_the_precondition() {
        let meta = RequestMeta { if_match: Some(3), ..RequestMeta::new() };
        let other = meta.without_precondition();
        assert_eq!(
            (other.if_match, other.correlation_id, other.command_id),
            (None, meta.correlation_id, meta.command_id)
        );
    }
}
