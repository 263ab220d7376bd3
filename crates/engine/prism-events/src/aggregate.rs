//! Aggregates: [`AggregateType`], the name of a kind of aggregate (which also names its Kafka
//! topic), and [`Aggregate`], the pure decide/evolve pair a command service runs.
//!
//! An application declares its aggregate types as constants (`AggregateType::new("order")`);
//! names read from the wire are resolved against the application's [`crate::EventRegistry`],
//! so an `AggregateType` always holds a name the application declared. It is `Copy` and
//! compares by name.

use std::fmt;

use crate::registry::EventSet;

/// An aggregate: a consistency boundary whose state is the fold of its own events. The
/// application implements it per aggregate type; `prism-commands` loads a stream, folds it
/// with [`Aggregate::evolve`] (as [`rehydrate`] does, or onto a state kept from an earlier
/// command), runs [`Aggregate::decide`] and appends what it returns.
pub trait Aggregate: Default + Clone + fmt::Debug + Send + Sync + 'static {
    /// The application's events.
    type Event: EventSet;
    /// What a client can ask of this aggregate.
    type Command;
    /// Why a command is refused (the application's rejections: not found, a rule, a field).
    type Error: std::error::Error + Send + Sync + 'static;
    /// Why a stored event cannot follow the state (a stream this aggregate could not have
    /// produced).
    type EvolveError: std::error::Error + Send + Sync + 'static;

    /// The aggregate type whose events this state folds.
    const TYPE: AggregateType;

    /// Applies one event of this aggregate to the state. Never fails for events this
    /// aggregate's own `decide` produced from this state.
    fn evolve(&mut self, event: &Self::Event) -> Result<(), Self::EvolveError>;

    /// The events `command` causes in this state, or why it is refused. Pure: the same state
    /// and command always give the same answer (no clock, no ids, no I/O: the command service
    /// wraps the events in envelopes).
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Whether the aggregate has been created (its first event applied).
    fn exists(&self) -> bool;
}

/// Folds an aggregate's events, oldest first, into its current state.
pub fn rehydrate<'a, A: Aggregate>(
    events: impl IntoIterator<Item = &'a A::Event>,
) -> Result<A, A::EvolveError> {
    let mut state = A::default();
    for event in events {
        state.evolve(event)?;
    }
    Ok(state)
}

/// A kind of aggregate (`user`, `order`, `device`, …). One Kafka topic per aggregate type:
/// `<prefix><name>.events`, and its dead letters in `<prefix><name>.events.dlq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateType(&'static str);

impl AggregateType {
    /// The aggregate type called `name`: lowercase ASCII letters, digits and `_`, starting
    /// with a letter (it becomes part of topic names and database keys). Checked by
    /// [`crate::EventRegistry`] when the application registers its events.
    pub const fn new(name: &'static str) -> Self {
        Self(name)
    }

    /// The name used on the wire, in topic names and in the event store.
    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// The event topic, `<aggregate_type>.events`, behind an optional deployment prefix
    /// (tests and multi-tenant clusters set one; production usually leaves it empty).
    pub fn topic(self, prefix: &str) -> String {
        format!("{prefix}{}.events", self.0)
    }

    /// The dead-letter topic of [`Self::topic`].
    pub fn dead_letter_topic(self, prefix: &str) -> String {
        format!("{}.dlq", self.topic(prefix))
    }

    /// Whether `name` is a valid aggregate type name (see [`Self::new`]).
    pub fn is_valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && name.len() <= 48
    }
}

impl serde::Serialize for AggregateType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl fmt::Display for AggregateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The aggregate type name of `topic` (inverse of [`AggregateType::topic`]): the part between
/// the prefix and `.events`, if the topic has that shape.
pub fn aggregate_name_of_topic<'a>(topic: &'a str, prefix: &str) -> Option<&'a str> {
    topic.strip_prefix(prefix)?.strip_suffix(".events").filter(|name| AggregateType::is_valid_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_round_trip() {
        let order = AggregateType::new("order");
        assert_eq!(order.topic(""), "order.events");
        assert_eq!(order.dead_letter_topic("p."), "p.order.events.dlq");
        assert_eq!(aggregate_name_of_topic(&order.topic("t1."), "t1."), Some("order"));
        assert_eq!(aggregate_name_of_topic("order.events.dlq", ""), None);
        assert!(AggregateType::is_valid_name("device_group2"));
        for bad in ["", "Order", "2fa", "a-b", "a.b", &"x".repeat(49)] {
            assert!(!AggregateType::is_valid_name(bad), "{bad}");
        }
    }
}
