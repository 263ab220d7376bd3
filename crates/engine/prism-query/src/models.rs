//! The entity read models the query API serves by id, described once each: which projection
//! holds them, how PostgreSQL selects one, and which of their fields are the version a client
//! waits for and the revision the cache compares.
//!
//! Rows are the `prism-projections` row types, so a document this service refills into Redis
//! is byte-for-byte what the projector writes there (both serialise the same type).

use prism_projections::views::{CartView, OrderSummary, ProductCatalogEntry, UserProfile};
use prism_projections::ProjectionName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

/// A read model addressed by one aggregate id.
pub trait EntityModel: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The projection that holds it.
    const PROJECTION: ProjectionName;
    /// `SELECT to_jsonb(t) FROM <view> t WHERE <id> = $1`.
    const BY_ID: &'static str;
    /// The word for it in messages ("order", …).
    const NOUN: &'static str;

    /// The aggregate id the row is keyed by (its cache key's id).
    fn id(&self) -> Uuid;
    /// The aggregate version the row reflects: what `min_version` is compared with and
    /// `X-Prism-Version` reports.
    fn version(&self) -> i64;
    /// The cache revision (strictly increasing per row; the projector's guard compares it).
    fn revision(&self) -> i64;
}

impl EntityModel for OrderSummary {
    const PROJECTION: ProjectionName = ProjectionName::OrderSummary;
    const BY_ID: &'static str = include_str!("../sql/order_by_id.sql");
    const NOUN: &'static str = "order";

    fn id(&self) -> Uuid {
        self.order_id
    }

    fn version(&self) -> i64 {
        self.version
    }
    fn revision(&self) -> i64 {
        self.version
    }
}

impl EntityModel for ProductCatalogEntry {
    const PROJECTION: ProjectionName = ProjectionName::ProductCatalog;
    const BY_ID: &'static str = include_str!("../sql/product_by_id.sql");
    const NOUN: &'static str = "product";

    fn id(&self) -> Uuid {
        self.product_id
    }

    fn version(&self) -> i64 {
        self.version
    }
    fn revision(&self) -> i64 {
        self.version
    }
}

impl EntityModel for CartView {
    const PROJECTION: ProjectionName = ProjectionName::CartView;
    const BY_ID: &'static str = include_str!("../sql/cart_by_id.sql");
    const NOUN: &'static str = "cart";

    fn id(&self) -> Uuid {
        self.cart_id
    }

    fn version(&self) -> i64 {
        self.version
    }
    fn revision(&self) -> i64 {
        self.version
    }
}

impl EntityModel for UserProfile {
    const PROJECTION: ProjectionName = ProjectionName::UserProfile;
    const BY_ID: &'static str = include_str!("../sql/user_by_id.sql");
    const NOUN: &'static str = "user";

    fn id(&self) -> Uuid {
        self.user_id
    }

    /// The user aggregate's version: order totals change the row without changing it, so a
    /// client that placed an order waits on the order, not on the profile.
    fn version(&self) -> i64 {
        self.version
    }
    fn revision(&self) -> i64 {
        self.revision
    }
}

/// The Redis key of `id` under a cache prefix (`<key_prefix>g<N>:<kind>:`).
pub fn cache_key(prefix: &str, id: Uuid) -> String {
    format!("{prefix}{id}")
}
