//! Aggregate types: the four bounded contexts of the shop, each publishing to its own topic.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kind of aggregate an event belongs to. One Kafka topic per aggregate type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateType {
    User,
    Product,
    Cart,
    Order,
}

impl AggregateType {
    /// Every aggregate type, in a stable order (topic creation, listings).
    pub const ALL: [AggregateType; 4] = [Self::User, Self::Product, Self::Cart, Self::Order];

    /// The name used on the wire and in topic names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Product => "product",
            Self::Cart => "cart",
            Self::Order => "order",
        }
    }

    /// The event topic, `<aggregate_type>.events`, behind an optional deployment prefix
    /// (tests and multi-tenant clusters set one; production usually leaves it empty).
    pub fn topic(self, prefix: &str) -> String {
        format!("{prefix}{}.events", self.as_str())
    }

    /// The dead-letter topic of [`Self::topic`].
    pub fn dead_letter_topic(self, prefix: &str) -> String {
        format!("{}.dlq", self.topic(prefix))
    }

    /// Which aggregate type publishes to `topic`, if any (inverse of [`Self::topic`]).
    pub fn from_topic(topic: &str, prefix: &str) -> Option<Self> {
        let rest = topic.strip_prefix(prefix)?.strip_suffix(".events")?;
        rest.parse().ok()
    }
}

impl fmt::Display for AggregateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a string that names no aggregate type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown aggregate type `{0}` (expected one of: user, product, cart, order)")]
pub struct UnknownAggregateType(pub String);

impl FromStr for AggregateType {
    type Err = UnknownAggregateType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| UnknownAggregateType(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_round_trip() {
        for t in AggregateType::ALL {
            assert_eq!(AggregateType::from_topic(&t.topic("t1."), "t1."), Some(t));
            assert_eq!(AggregateType::from_topic(&t.topic(""), ""), Some(t));
        }
        assert_eq!(AggregateType::Order.topic("").as_str(), "order.events");
        assert_eq!(AggregateType::Order.dead_letter_topic("p."), "p.order.events.dlq");
        assert_eq!(AggregateType::from_topic("order.events.dlq", ""), None);
        assert_eq!(AggregateType::from_topic("invoice.events", ""), None);
    }
}
