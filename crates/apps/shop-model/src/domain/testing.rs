//! Given/when/then for aggregate tests:
//! `given::<OrderState>([placed]).when(cmd).then_rejected("order_not_paid")`.
//!
//! Every check that succeeds also checks what all tests should: emitted events belong to the
//! aggregate, pass the event contract's validation and apply to the state with `evolve`.

use crate::events::ShopEvent;

use crate::domain::{rehydrate, DomainError, ShopAggregate};

/// The state built from the given history.
pub(crate) struct Given<A> {
    state: A,
}

/// The outcome of a command, ready to be checked.
pub(crate) struct Then<A> {
    state: A,
    outcome: Result<Vec<ShopEvent>, DomainError>,
}

/// Starts a test from the aggregate's history (oldest event first).
#[track_caller]
pub(crate) fn given<A: ShopAggregate>(history: impl IntoIterator<Item = ShopEvent>) -> Given<A> {
    let history: Vec<ShopEvent> = history.into_iter().collect();
    for event in &history {
        assert_eq!(event.validate(), Ok(()), "given event {event:?} breaks the contract");
    }
    let state = rehydrate(&history).unwrap_or_else(|e| panic!("given history does not fold: {e}"));
    Given { state }
}

impl<A: ShopAggregate> Given<A> {
    /// Decides `command` against the given state.
    pub(crate) fn when(self, command: A::Command) -> Then<A> {
        let outcome = self.state.decide(&command);
        Then { state: self.state, outcome }
    }
}

impl<A: ShopAggregate> Then<A> {
    /// The command succeeded with exactly `expected`; returns the state after them.
    #[track_caller]
    pub(crate) fn then_events(self, expected: impl IntoIterator<Item = ShopEvent>) -> A {
        let expected: Vec<ShopEvent> = expected.into_iter().collect();
        let events = match self.outcome {
            Ok(events) => events,
            Err(e) => panic!("expected events {expected:?}, got error {e:?}"),
        };
        assert_eq!(events, expected, "emitted events differ");
        let mut state = self.state;
        for event in &events {
            assert_eq!(event.aggregate_type(), A::TYPE, "{event:?} belongs to another aggregate");
            assert_eq!(event.validate(), Ok(()), "emitted {event:?} breaks the contract");
            let before = state.clone();
            state.evolve(event).unwrap_or_else(|e| panic!("emitted {event:?} does not apply: {e}"));
            assert_ne!(state, before, "{event:?} did not change the state");
        }
        assert!(state.exists(), "state after a successful command must exist");
        state
    }

    /// The command was refused by the business rule with code `reason`.
    #[track_caller]
    pub(crate) fn then_rejected(self, reason: &str) {
        match self.outcome {
            Err(DomainError::Rejected { reason: actual, message }) => {
                assert_eq!(actual.as_str(), reason, "wrong rejection (message: {message})");
                assert!(!message.is_empty(), "rejection {reason} has no message");
            }
            other => panic!("expected rejection {reason}, got {other:?}"),
        }
    }

    /// The command was refused because its field `field` is malformed.
    #[track_caller]
    pub(crate) fn then_invalid(self, field: &str) {
        match self.outcome {
            Err(DomainError::InvalidField { field: actual, reason }) => {
                assert_eq!(actual, field, "wrong field (reason: {reason})");
                assert!(!reason.is_empty(), "invalid {field} has no reason");
            }
            other => panic!("expected invalid field {field}, got {other:?}"),
        }
    }

    /// The command was addressed to an aggregate that does not exist.
    #[track_caller]
    pub(crate) fn then_not_found(self) {
        match self.outcome {
            Err(DomainError::NotFound { aggregate_type }) => assert_eq!(aggregate_type, A::TYPE),
            other => panic!("expected not found, got {other:?}"),
        }
        assert!(!self.state.exists(), "not found on an aggregate that exists");
    }
}
