//! The domain events of the shop, one module per aggregate type.
//!
//! [`EventType`] is the closed list of event type names with their aggregate type and
//! current schema version; [`DomainEvent`] holds a decoded payload of any of them. Payload
//! structs reject unknown fields: a new field is a new schema version with an upcaster.

pub mod cart;
pub mod order;
pub mod product;
pub mod user;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::aggregate::AggregateType;
use crate::error::DecodeError;

pub use cart::{CartCheckedOut, CartItemAdded, CartItemRemoved, CartOpened};
pub use order::{
    OrderCancelled, OrderLine, OrderPaymentFailed, OrderPaymentRequested, OrderPaymentSucceeded, OrderPlaced,
    OrderShipped, PaymentMethod,
};
pub use product::{ProductDelisted, ProductListed, ProductPriceChanged, ProductRestocked};
pub use user::{UserProfileChanged, UserRegistered};

macro_rules! event_types {
    ($($variant:ident => $aggregate:ident, version $version:literal;)+) => {
        /// Every event type Prism knows, by name.
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
                match self { $(Self::$variant => AggregateType::$aggregate,)+ }
            }

            /// The schema version this code produces and projections consume; older
            /// versions are upcast to it on decode.
            pub fn current_schema_version(self) -> u32 {
                match self { $(Self::$variant => $version,)+ }
            }
        }

        /// A decoded, validated payload of any event type, at its current schema version.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum DomainEvent { $($variant($variant),)+ }

        impl DomainEvent {
            /// The event type of this payload.
            pub fn event_type(&self) -> EventType {
                match self { $(Self::$variant(_) => EventType::$variant,)+ }
            }

            /// Deserialises and validates a payload already upcast to the current version.
            pub(crate) fn from_current_payload(
                event_type: EventType,
                payload: serde_json::Value,
            ) -> Result<Self, DecodeError> {
                match event_type {
                    $(EventType::$variant => {
                        let body: $variant = crate::validate::from_value(payload, "payload")?;
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

        $(impl From<$variant> for DomainEvent {
            fn from(body: $variant) -> Self { Self::$variant(body) }
        })+
    };
}

event_types! {
    UserRegistered => User, version 2;
    UserProfileChanged => User, version 1;
    ProductListed => Product, version 1;
    ProductPriceChanged => Product, version 1;
    ProductRestocked => Product, version 1;
    ProductDelisted => Product, version 1;
    CartOpened => Cart, version 1;
    CartItemAdded => Cart, version 1;
    CartItemRemoved => Cart, version 1;
    CartCheckedOut => Cart, version 1;
    OrderPlaced => Order, version 1;
    OrderPaymentRequested => Order, version 1;
    OrderPaymentSucceeded => Order, version 1;
    OrderPaymentFailed => Order, version 1;
    OrderShipped => Order, version 1;
    OrderCancelled => Order, version 1;
}

impl DomainEvent {
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
            .ok_or_else(|| DecodeError::UnknownEventType { event_type: crate::error::clip(s) })
    }
}
