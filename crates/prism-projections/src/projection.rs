//! The read models Prism maintains and how they are named in PostgreSQL, Redis and Kafka.

use std::fmt;
use std::str::FromStr;

use prism_events::AggregateType;
use serde::{Deserialize, Serialize};

/// A read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionName {
    /// One row per order: status, lines, totals, timestamps.
    OrderSummary,
    /// One row per product: price, stock, listed.
    ProductCatalog,
    /// One row per cart: its lines and totals.
    CartView,
    /// One row per user: profile plus order count and lifetime spend.
    UserProfile,
    /// Units and revenue per product per day.
    ProductSalesDaily,
}

impl ProjectionName {
    /// Every read model.
    pub const ALL: [ProjectionName; 5] = [
        Self::OrderSummary,
        Self::ProductCatalog,
        Self::CartView,
        Self::UserProfile,
        Self::ProductSalesDaily,
    ];

    /// The name in configuration, tables, metrics and consumer groups.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderSummary => "order_summary",
            Self::ProductCatalog => "product_catalog",
            Self::CartView => "cart_view",
            Self::UserProfile => "user_profile",
            Self::ProductSalesDaily => "product_sales_daily",
        }
    }

    /// The aggregate types whose events feed this read model, i.e. the topics it consumes.
    pub fn sources(self) -> &'static [AggregateType] {
        match self {
            Self::OrderSummary | Self::ProductSalesDaily => &[AggregateType::Order],
            Self::ProductCatalog => &[AggregateType::Product],
            Self::CartView => &[AggregateType::Cart],
            Self::UserProfile => &[AggregateType::User, AggregateType::Order],
        }
    }

    /// The Redis key kind of this read model's cached rows (`<prefix>g<N>:<kind>:<id>`), or
    /// `None` for read models served from PostgreSQL only.
    pub fn cache_kind(self) -> Option<&'static str> {
        match self {
            Self::OrderSummary => Some("order"),
            Self::ProductCatalog => Some("product"),
            Self::CartView => Some("cart"),
            Self::UserProfile => Some("user"),
            Self::ProductSalesDaily => None,
        }
    }
}

impl fmt::Display for ProjectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a string that names no read model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown projection `{0}` (expected one of: order_summary, product_catalog, cart_view, user_profile, product_sales_daily)")]
pub struct UnknownProjection(pub String);

impl FromStr for ProjectionName {
    type Err = UnknownProjection;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownProjection(s.to_owned()))
    }
}

/// A projection at one generation. Blue/green rebuilds build generation N+1 beside the
/// active N; each generation has its own tables, gate rows, dead letters and cache keys, all
/// named from this value (never from event data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectionInstance {
    /// The read model.
    pub projection: ProjectionName,
    /// Its generation, from 1.
    pub generation: u32,
}

impl ProjectionInstance {
    /// Generation `generation` of `projection`.
    pub fn new(projection: ProjectionName, generation: u32) -> Self {
        Self { projection, generation }
    }

    /// `<projection>_g<generation>`: the table name and the key of gate rows and dead letters.
    pub fn id(self) -> String {
        format!("{}_g{}", self.projection.as_str(), self.generation)
    }

    /// The Redis key prefix of this instance's cached rows, under the configured prefix, or
    /// `None` when the read model is not cached.
    pub fn cache_prefix(self, key_prefix: &str) -> Option<String> {
        self.projection.cache_kind().map(|kind| format!("{key_prefix}g{}:{kind}:", self.generation))
    }
}

impl fmt::Display for ProjectionInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_instances_name_their_resources() {
        for p in ProjectionName::ALL {
            assert_eq!(p.as_str().parse::<ProjectionName>(), Ok(p));
        }
        let instance = ProjectionInstance::new(ProjectionName::OrderSummary, 2);
        assert_eq!(instance.id(), "order_summary_g2");
        assert_eq!(instance.cache_prefix("prism:").as_deref(), Some("prism:g2:order:"));
        assert_eq!(ProjectionInstance::new(ProjectionName::ProductSalesDaily, 1).cache_prefix("p:"), None);
        assert!("orders".parse::<ProjectionName>().is_err());
    }
}
