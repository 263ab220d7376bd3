//! The version gate and the batch planner.
//!
//! Every event carries its aggregate's version (1, 2, 3, …). A projection instance remembers,
//! per source aggregate, the last version it applied ([`GateState`], stored in the same
//! transaction as the view rows). For each message of a batch, in partition order,
//! [`plan_batch`] decides:
//!
//! - version ≤ last: a duplicate (redelivery, replay after an offset reset, a racing worker
//!   during a rebalance) — skipped, whether or not the aggregate is parked; but a different
//!   event (another `event_id`) at the last applied version is a *conflict* (two writers
//!   decided the same version): skipped too, and reported as such. (Only the last version's
//!   event id is kept, so a conflict at an older version reads as a duplicate.)
//! - version = last + 1: applied through the fold;
//! - version > last + 1: a gap — per [`GapPolicy`], dead-lettered (the aggregate parks until
//!   the missing events are redriven) or applied anyway and counted;
//! - an aggregate already parked behind a dead letter: parked too, so its events are never
//!   applied out of order;
//! - a message that could not be decoded: dead-lettered, parking its aggregate when the
//!   message key names one.
//!
//! A fold that refuses an event ([`Unprojectable`]) dead-letters it and parks the aggregate.

use std::collections::HashMap;

use prism_events::{AggregateType, Event};
use uuid::Uuid;

use crate::error::Unprojectable;

/// A source aggregate: its type and id.
pub type AggregateKey = (AggregateType, Uuid);

/// What a projection instance knows about one source aggregate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateState {
    /// The last version applied (0: none yet).
    pub last_version: u64,
    /// Whether the aggregate waits behind an open dead letter.
    pub parked: bool,
    /// The id of the event applied at `last_version`, when known.
    pub last_event_id: Option<uuid::Uuid>,
}

/// What to do with an event whose version skips ahead of the last one applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GapPolicy {
    /// Dead-letter it and park the aggregate until the gap is redriven: the read model never
    /// reflects a history with holes. The default.
    #[default]
    DeadLetter,
    /// Apply it anyway and count the gap: for read models that prefer freshness over
    /// completeness.
    Apply,
}

impl GapPolicy {
    /// The name in configuration and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeadLetter => "dead_letter",
            Self::Apply => "apply",
        }
    }
}

/// One message of a batch, as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub enum PlannedItem<'a> {
    /// A decoded, valid event.
    Event(&'a Event),
    /// A message that failed to decode or validate. `key` is the aggregate its message key
    /// names, when it names one.
    Poison {
        /// The aggregate the message key names, when it names one.
        key: Option<AggregateKey>,
    },
}

/// Why the planner dead-lettered an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The version skipped ahead of the last applied one.
    VersionGap {
        /// The version that should have come next.
        expected: u64,
        /// The version that came.
        got: u64,
    },
    /// The fold refused the event.
    Unprojectable(Unprojectable),
}

impl DeadLetterReason {
    /// The bounded kind for records and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::VersionGap { .. } => "version_gap",
            Self::Unprojectable(_) => "unprojectable",
        }
    }

    /// The sentence for an operator.
    pub fn message(&self) -> String {
        match self {
            Self::VersionGap { expected, got } => {
                format!("version gap: expected version {expected}, got {got}; events in between are missing")
            }
            Self::Unprojectable(reason) => reason.to_string(),
        }
    }
}

/// The planner's decision for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Applied through the fold.
    Applied,
    /// Applied although versions were missing before it (policy [`GapPolicy::Apply`]).
    AppliedAcrossGap {
        /// The version that should have come next.
        expected: u64,
    },
    /// At or below the last applied version: skipped.
    Duplicate,
    /// Another event than the one applied at this version: skipped, and reported (two
    /// writers decided the same version of the aggregate).
    Conflict {
        /// The event applied at this version.
        applied: uuid::Uuid,
    },
    /// A poison message: dead-lettered (the caller holds its decode error).
    Poisoned,
    /// Dead-lettered by the planner; its aggregate is now parked.
    DeadLettered(DeadLetterReason),
    /// Waits behind an earlier dead letter of its aggregate.
    Parked,
}

impl ItemOutcome {
    /// Whether the message goes to the dead letters (as a failure or parked behind one).
    pub fn is_dead_letter(&self) -> bool {
        matches!(self, Self::Poisoned | Self::DeadLettered(_) | Self::Parked)
    }
}

/// Plans one batch in partition order. `gates` holds the stored state of every aggregate in
/// the batch (absent means never seen) and is updated in place; `apply` folds one event into
/// the caller's in-memory view state and must leave that state untouched when it refuses.
pub fn plan_batch<F>(
    items: &[PlannedItem<'_>],
    gates: &mut HashMap<AggregateKey, GateState>,
    policy: GapPolicy,
    mut apply: F,
) -> Vec<ItemOutcome>
where
    F: FnMut(&Event) -> Result<(), Unprojectable>,
{
    items
        .iter()
        .map(|item| match *item {
            PlannedItem::Poison { key } => {
                if let Some(key) = key {
                    gates.entry(key).or_default().parked = true;
                }
                ItemOutcome::Poisoned
            }
            PlannedItem::Event(event) => {
                let key = (event.meta.aggregate_type, event.meta.aggregate_id);
                let gate = gates.entry(key).or_default();
                let version = event.meta.aggregate_version;
                let expected = gate.last_version + 1;
                // A version already applied is a duplicate even when the aggregate is parked
                // since: a replay must not turn applied events into dead letters.
                if version < expected {
                    return match gate.last_event_id {
                        Some(applied) if version == gate.last_version && applied != event.meta.event_id => {
                            ItemOutcome::Conflict { applied }
                        }
                        _ => ItemOutcome::Duplicate,
                    };
                }
                if gate.parked {
                    return ItemOutcome::Parked;
                }
                if version > expected && policy == GapPolicy::DeadLetter {
                    gate.parked = true;
                    return ItemOutcome::DeadLettered(DeadLetterReason::VersionGap {
                        expected,
                        got: version,
                    });
                }
                match apply(event) {
                    Ok(()) => {
                        gate.last_version = version;
                        gate.last_event_id = Some(event.meta.event_id);
                        if version == expected {
                            ItemOutcome::Applied
                        } else {
                            ItemOutcome::AppliedAcrossGap { expected }
                        }
                    }
                    Err(reason) => {
                        gate.parked = true;
                        ItemOutcome::DeadLettered(DeadLetterReason::Unprojectable(reason))
                    }
                }
            }
        })
        .collect()
}
