//! The shop's domain events, one module per aggregate type, and their registration with the
//! engine.
//!
//! [`EventType`] is the closed list of event type names with their aggregate type and
//! current schema version; [`ShopEvent`] holds a decoded payload of any of them and implements
//! the engine's [`EventSet`], so the engine can decode, upcast and validate shop events
//! ([`registry`]). Payload structs reject unknown fields: a new field is a new schema version
//! with an upcaster ([`upcast`]). The JSON Schemas of every payload and version are in
//! `schemas/` of this crate: the contract for producers in other languages.

pub mod cart;
pub mod fields;
pub mod order;
pub mod product;
pub mod upcast;
pub mod user;

use std::fmt;
use std::str::FromStr;

use prism_events::{AggregateType, DecodeError, EventRegistry, EventSet, EventTypeInfo, Upcaster};
use serde::{Deserialize, Serialize};

use crate::aggregates;

pub use cart::{CartCheckedOut, CartItemAdded, CartItemRemoved, CartOpened};
pub use order::{
    OrderCancelled, OrderLine, OrderPaymentFailed, OrderPaymentRequested, OrderPaymentSucceeded, OrderPlaced,
    OrderShipped, PaymentMethod,
};
pub use product::{
    ProductDelisted, ProductListed, ProductPriceChanged, ProductRestocked, StockReleased, StockReserved,
    StockShipped,
};
pub use user::{UserProfileChanged, UserRegistered};

macro_rules! event_types {
    ($($variant:ident => $aggregate:ident, version $version:literal;)+) => {
        /// Every event type of the shop, by name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum EventType { $($variant,)+ }

        impl EventType {
            /// Every event type, in declaration order.
            pub const ALL: &'static [EventType] = &[$(Self::$variant,)+];

            /// The name carried in the envelope's `event_type` and in the Kafka header.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => stringify!($variant),)+ }
            }

            /// The aggregate type that emits this event.
            pub fn aggregate_type(self) -> AggregateType {
                match self { $(Self::$variant => aggregates::$aggregate,)+ }
            }

            /// The schema version this code produces and projections consume; older
            /// versions are upcast to it on decode.
            pub fn current_schema_version(self) -> u32 {
                match self { $(Self::$variant => $version,)+ }
            }
        }

        /// The registration of every event type with the engine.
        const EVENT_TYPES: &[EventTypeInfo] = &[$(EventTypeInfo {
            name: stringify!($variant),
            aggregate_type: aggregates::$aggregate,
            current_version: $version,
        },)+];

        /// A decoded, validated payload of any shop event type, at its current schema version.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum ShopEvent { $(
            #[doc = concat!("A `", stringify!($variant), "` event.")]
            $variant($variant),
        )+ }

        impl ShopEvent {
            /// The event type of this payload.
            pub fn event_type(&self) -> EventType {
                match self { $(Self::$variant(_) => EventType::$variant,)+ }
            }

            /// Deserialises and validates a payload already upcast to the current version.
            pub fn from_current_payload(
                event_type: EventType,
                payload: serde_json::Value,
            ) -> Result<Self, DecodeError> {
                match event_type {
                    $(EventType::$variant => {
                        let body: $variant = prism_events::fields::from_value(payload, "payload")?;
                        body.validate()?;
                        Ok(Self::$variant(body))
                    })+
                }
            }

            /// Checks the payload's own rules (ranges, lengths, consistency).
            pub fn validate(&self) -> Result<(), DecodeError> {
                match self { $(Self::$variant(body) => body.validate(),)+ }
            }
        }

        $(impl From<$variant> for ShopEvent {
            fn from(body: $variant) -> Self { Self::$variant(body) }
        })+
    };
}

event_types! {
    UserRegistered => USER, version 2;
    UserProfileChanged => USER, version 1;
    ProductListed => PRODUCT, version 1;
    ProductPriceChanged => PRODUCT, version 1;
    ProductRestocked => PRODUCT, version 1;
    ProductDelisted => PRODUCT, version 1;
    StockReserved => PRODUCT, version 1;
    StockReleased => PRODUCT, version 1;
    StockShipped => PRODUCT, version 1;
    CartOpened => CART, version 1;
    CartItemAdded => CART, version 1;
    CartItemRemoved => CART, version 1;
    CartCheckedOut => CART, version 1;
    OrderPlaced => ORDER, version 1;
    OrderPaymentRequested => ORDER, version 1;
    OrderPaymentSucceeded => ORDER, version 1;
    OrderPaymentFailed => ORDER, version 1;
    OrderShipped => ORDER, version 1;
    OrderCancelled => ORDER, version 1;
}

impl ShopEvent {
    /// The aggregate type that emits this event.
    pub fn aggregate_type(&self) -> AggregateType {
        self.event_type().aggregate_type()
    }

    /// The payload as JSON, in its current schema version.
    pub fn to_payload(&self) -> serde_json::Value {
        // Payload types are plain structs of strings, numbers, UUIDs and vectors of those:
        // serialising them to a `Value` cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl EventSet for ShopEvent {
    fn event_types() -> &'static [EventTypeInfo] {
        EVENT_TYPES
    }

    fn upcasters() -> &'static [Upcaster] {
        upcast::UPCASTERS
    }

    fn from_payload(event_type: &'static str, payload: serde_json::Value) -> Result<Self, DecodeError> {
        Self::from_current_payload(event_type.parse()?, payload)
    }

    fn event_type(&self) -> &'static str {
        ShopEvent::event_type(self).as_str()
    }

    fn to_payload(&self) -> serde_json::Value {
        ShopEvent::to_payload(self)
    }
}

/// The shop's events as the engine sees them.
pub fn registry() -> EventRegistry {
    // The declarations above are fixed; their consistency is checked by this crate's tests.
    EventRegistry::of::<ShopEvent>()
        .unwrap_or_else(|err| panic!("the shop's event declarations are inconsistent: {err}"))
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| DecodeError::UnknownEventType { event_type: prism_events::error::clip(s) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registration_is_consistent_and_names_every_type() {
        let registry = EventRegistry::of::<ShopEvent>().expect("consistent declarations");
        assert_eq!(registry.event_types().count(), EventType::ALL.len());
        for event_type in EventType::ALL {
            let info = registry.event_type(event_type.as_str()).expect("registered");
            assert_eq!(info.aggregate_type, event_type.aggregate_type());
            assert_eq!(info.current_version, event_type.current_schema_version());
        }
        assert_eq!(
            registry.aggregate_types(),
            &[aggregates::USER, aggregates::PRODUCT, aggregates::CART, aggregates::ORDER]
        );
    }
}
