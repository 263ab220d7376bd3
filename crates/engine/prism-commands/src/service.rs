//! Load → decide → append: how a command becomes events.
//!
//! [`CommandService`] loads the addressed aggregate's stream, folds it into state, checks the
//! client's `If-Match` precondition, asks the aggregate to decide, wraps the decided payloads
//! in envelopes (ids, next versions, a microsecond timestamp, correlation) and appends them
//! with their outbox rows in one transaction. Commands that read another aggregate (adding a
//! product to a cart, placing an order from items) read it from the event store; checkout
//! appends to the cart and the new order in the same transaction.
//!
//! Idempotency: with a key, a recorded response for the same request is replayed and nothing
//! is appended; a recorded response for another request is [`ServiceError::KeyReused`]. The
//! response to a fresh command is recorded in the append's transaction, so a key either has
//! its events and its response or neither. There is no retry on a concurrency conflict: the
//! client decides whether to try again with fresh state.

use std::time::Duration;

use futures::future::try_join_all;
use prism_domain::{
    rehydrate, Aggregate, CartCommand, CartState, DomainError, EvolveError, OrderCommand, OrderState,
    ProductSnapshot, ProductState, Rejection,
};
use prism_events::bounds::MAX_LINES;
use prism_events::events::OrderLine;
use prism_events::{truncate_to_micros, AggregateType, DomainEvent, Event, EventMeta};
use prism_store::{
    idempotency, EventStore, EventStoreError, IdempotencyRecord, StoreError, StoredResponse, Stream,
    StreamAppend,
};
use serde_json::json;
use uuid::Uuid;

/// Everything about a request that is not the command itself.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The request or saga this command belongs to; copied into every event.
    pub correlation_id: Uuid,
    /// Identifies this command; the causation id of every event it causes.
    pub command_id: Uuid,
    /// The version the client believes the aggregate has (`If-Match`), if it said.
    pub if_match: Option<u64>,
    /// The idempotency key and the request's fingerprint, if the client sent a key.
    pub idempotency: Option<IdempotencyKey>,
}

/// An `Idempotency-Key` with the fingerprint of the request that carried it.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The client's key.
    pub key: String,
    /// Method, path and body digest.
    pub fingerprint: String,
}

/// What a command did to one aggregate.
#[derive(Debug, Clone, PartialEq)]
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
    fn to_json(&self) -> serde_json::Value {
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
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
    /// True when the response was recorded earlier under the same idempotency key.
    pub replayed: bool,
}

/// Why a command produced no events.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The domain refused it (404, 409 or 400).
    #[error(transparent)]
    Domain(#[from] DomainError),
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
        /// What did not fit.
        source: EvolveError,
    },
    /// The event store failed; `is_transient` says whether a retry can help.
    #[error(transparent)]
    Store(#[from] EventStoreError),
}

impl From<StoreError> for ServiceError {
    fn from(err: StoreError) -> Self {
        Self::Store(EventStoreError::Store(err))
    }
}

impl ServiceError {
    /// True when the same request may succeed later (database outage, failover).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store(err) if err.class() == prism_store::ErrorClass::Transient)
    }
}

/// A decided command, ready to append.
struct Decision {
    /// The streams to append to, the addressed aggregate first.
    appends: Vec<StreamAppend>,
}

impl Decision {
    fn outcome(&self, index: usize) -> Option<StreamOutcome> {
        let append = self.appends.get(index)?;
        Some(StreamOutcome {
            aggregate_type: append.aggregate_type,
            aggregate_id: append.aggregate_id,
            version: append.expected_version + append.events.len() as u64,
            events: append.events.iter().map(|e| e.event_type().as_str()).collect(),
        })
    }

    /// 201 when the command created the addressed aggregate, 200 otherwise.
    fn status(&self) -> u16 {
        match self.appends.first() {
            Some(append) if append.expected_version == 0 => 201,
            _ => 200,
        }
    }

    /// The response body: the addressed aggregate, and for a checkout the order it placed.
    fn body(&self) -> serde_json::Value {
        let mut body = self.outcome(0).map(|o| o.to_json()).unwrap_or_default();
        if let (Some(order), Some(object)) = (self.outcome(1), body.as_object_mut()) {
            object.insert("order".into(), order.to_json());
        }
        body
    }
}

/// An order line as the client asks for it: the price comes from the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestedItem {
    /// The product.
    pub product_id: Uuid,
    /// Units.
    pub quantity: u32,
}

/// Turns commands into appended events.
#[derive(Debug, Clone)]
pub struct CommandService {
    /// Where streams are loaded from and appended to.
    store: EventStore,
    /// How long idempotency records answer.
    idempotency_ttl: Duration,
}

impl CommandService {
    /// A service over `store`, keeping idempotency records for `idempotency_ttl`.
    pub fn new(store: EventStore, idempotency_ttl: Duration) -> Self {
        Self { store, idempotency_ttl }
    }

    /// The event store.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Runs a command against one aggregate of type `A`.
    pub async fn execute<A: Aggregate>(
        &self,
        aggregate_id: Uuid,
        command: A::Command,
        meta: &RequestMeta,
    ) -> Result<Reply, ServiceError> {
        self.idempotent(meta, || async {
            let (state, stream) = self.load::<A>(aggregate_id).await?;
            let append = self.decide(&state, &stream, aggregate_id, &command, meta)?;
            Ok(Decision { appends: vec![append] })
        })
        .await
    }

    /// Adds units of a product to a cart, at the catalog's current price.
    pub async fn add_cart_item(
        &self,
        cart_id: Uuid,
        user_id: Uuid,
        item: RequestedItem,
        meta: &RequestMeta,
    ) -> Result<Reply, ServiceError> {
        self.idempotent(meta, || async {
            let (product, _) = self.load::<ProductState>(item.product_id).await?;
            let snapshot =
                product.product().map(|p| ProductSnapshot { listed: p.listed, price_cents: p.price_cents });
            let command = CartCommand::AddItem {
                user_id,
                product_id: item.product_id,
                quantity: item.quantity,
                product: snapshot,
            };
            let (state, stream) = self.load::<CartState>(cart_id).await?;
            Ok(Decision { appends: vec![self.decide(&state, &stream, cart_id, &command, meta)?] })
        })
        .await
    }

    /// Checks a cart out and places the order from its lines, in one transaction.
    pub async fn check_out(
        &self,
        cart_id: Uuid,
        order_id: Uuid,
        meta: &RequestMeta,
    ) -> Result<Reply, ServiceError> {
        self.idempotent(meta, || async {
            let (cart, cart_stream) = self.load::<CartState>(cart_id).await?;
            let cart_append =
                self.decide(&cart, &cart_stream, cart_id, &CartCommand::CheckOut { order_id }, meta)?;
            let (order, order_stream) = self.load::<OrderState>(order_id).await?;
            let place = OrderCommand::Place {
                // The cart exists: deciding the checkout succeeded.
                user_id: cart.owner().unwrap_or_default(),
                cart_id: Some(cart_id),
                lines: cart.order_lines(),
            };
            // If-Match speaks of the cart, the addressed aggregate, not of the new order.
            let order_meta = RequestMeta { if_match: None, ..meta.clone() };
            let order_append = self.decide(&order, &order_stream, order_id, &place, &order_meta)?;
            Ok(Decision { appends: vec![cart_append, order_append] })
        })
        .await
    }

    /// Places an order from items priced by the catalog. A product the catalog does not have
    /// or has delisted refuses the order (`product_not_found`, `product_not_listed`).
    pub async fn place_order(
        &self,
        order_id: Uuid,
        user_id: Uuid,
        items: &[RequestedItem],
        meta: &RequestMeta,
    ) -> Result<Reply, ServiceError> {
        self.idempotent(meta, || async {
            let (order, stream) = self.load::<OrderState>(order_id).await?;
            let mut lines = Vec::with_capacity(items.len());
            // Already placed, or more lines than the contract allows: answer before reading
            // up to that many products.
            if !order.exists() && items.len() <= MAX_LINES {
                let products =
                    try_join_all(items.iter().map(|item| self.load::<ProductState>(item.product_id))).await?;
                for (index, (item, (product, _))) in items.iter().zip(products).enumerate() {
                    let Some(product) = product.product() else {
                        return Err(DomainError::rejected(
                            Rejection::ProductNotFound,
                            format!("items[{index}]: the catalog has no product {}", item.product_id),
                        )
                        .into());
                    };
                    if !product.listed {
                        return Err(DomainError::rejected(
                            Rejection::ProductNotListed,
                            format!("items[{index}]: product {} was delisted", item.product_id),
                        )
                        .into());
                    }
                    lines.push(OrderLine {
                        product_id: item.product_id,
                        quantity: item.quantity,
                        unit_price_cents: product.price_cents,
                    });
                }
            } else {
                lines = items
                    .iter()
                    .map(|i| OrderLine {
                        product_id: i.product_id,
                        quantity: i.quantity,
                        unit_price_cents: 1,
                    })
                    .collect();
            }
            let command = OrderCommand::Place { user_id, cart_id: None, lines };
            Ok(Decision { appends: vec![self.decide(&order, &stream, order_id, &command, meta)?] })
        })
        .await
    }

    /// Loads and folds one aggregate.
    async fn load<A: Aggregate>(&self, aggregate_id: Uuid) -> Result<(A, Stream), ServiceError> {
        let stream = self.store.load(A::TYPE, aggregate_id).await?;
        let state = rehydrate::<A>(stream.events.iter().map(|e| &e.body))
            .map_err(|source| ServiceError::Unfoldable { aggregate_type: A::TYPE, aggregate_id, source })?;
        Ok((state, stream))
    }

    /// Checks `If-Match`, decides, and wraps the payloads in envelopes at the next versions.
    fn decide<A: Aggregate>(
        &self,
        state: &A,
        stream: &Stream,
        aggregate_id: Uuid,
        command: &A::Command,
        meta: &RequestMeta,
    ) -> Result<StreamAppend, ServiceError> {
        let version = stream.version();
        if let Some(expected) = meta.if_match.filter(|expected| *expected != version) {
            // A command to an aggregate that does not exist is a 404 before anything else.
            if !state.exists() {
                state.decide(command)?;
            }
            return Err(ServiceError::VersionMismatch { expected, actual: version });
        }
        let bodies = state.decide(command)?;
        Ok(StreamAppend {
            aggregate_type: A::TYPE,
            aggregate_id,
            expected_version: version,
            events: self.envelopes(A::TYPE, aggregate_id, version, bodies, meta),
        })
    }

    fn envelopes(
        &self,
        aggregate_type: AggregateType,
        aggregate_id: Uuid,
        version: u64,
        bodies: Vec<DomainEvent>,
        meta: &RequestMeta,
    ) -> Vec<Event> {
        let occurred_at = truncate_to_micros(chrono::Utc::now());
        bodies
            .into_iter()
            .enumerate()
            .map(|(offset, body)| Event {
                meta: EventMeta {
                    event_id: Uuid::new_v4(),
                    aggregate_type,
                    aggregate_id,
                    aggregate_version: version + offset as u64 + 1,
                    occurred_at,
                    correlation_id: meta.correlation_id,
                    causation_id: meta.command_id,
                },
                body,
            })
            .collect()
    }

    /// Replays or refuses a recorded key, or runs `decide` and appends its events (with the
    /// response recorded under the key).
    async fn idempotent<F, Fut>(&self, meta: &RequestMeta, decide: F) -> Result<Reply, ServiceError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Decision, ServiceError>>,
    {
        if let Some(key) = &meta.idempotency {
            if let Some(stored) = self.recorded(key).await? {
                return replay(key, stored);
            }
        }
        let decision = decide().await?;
        let (status, body) = (decision.status(), decision.body());
        let record = meta.idempotency.as_ref().map(|key| IdempotencyRecord {
            key: key.key.clone(),
            fingerprint: key.fingerprint.clone(),
            status,
            body: body.clone(),
            ttl: self.idempotency_ttl,
        });
        match self.store.append(&decision.appends, record.as_ref()).await {
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

    async fn recorded(&self, key: &IdempotencyKey) -> Result<Option<StoredResponse>, ServiceError> {
        Ok(idempotency::lookup(self.store.database(), &key.key, self.idempotency_ttl).await?)
    }
}

fn replay(key: &IdempotencyKey, stored: StoredResponse) -> Result<Reply, ServiceError> {
    if stored.fingerprint != key.fingerprint {
        return Err(ServiceError::KeyReused);
    }
    Ok(Reply { status: stored.status, body: stored.body, replayed: true })
}
