//! Properties of the version gate and batch planner: whatever the batching, duplication and
//! interleaving Kafka delivers, each aggregate's events apply exactly once, in version order;
//! a gap or a refused event parks the aggregate and nothing of it applies afterwards.

use std::collections::{BTreeMap, HashMap};

use prism_events::{AggregateType, DecodeError, Event, EventPosition, EventSet, EventTypeInfo};
use prism_projections::gate::{plan_batch, DeadLetterReason};
use prism_projections::{GapPolicy, GateState, ItemOutcome, PlannedItem, Unprojectable};
use proptest::prelude::*;
use uuid::Uuid;

/// The planner looks at positions only: one event type of one aggregate type will do.
const CLOCK: AggregateType = AggregateType::new("clock");

#[derive(Debug, Clone)]
struct Ticked;

impl EventSet for Ticked {
    fn event_types() -> &'static [EventTypeInfo] {
        &[EventTypeInfo { name: "Ticked", aggregate_type: CLOCK, current_version: 1 }]
    }
    fn from_payload(_: &'static str, _: serde_json::Value) -> Result<Self, DecodeError> {
        Ok(Self)
    }
    fn event_type(&self) -> &'static str {
        "Ticked"
    }
    fn to_payload(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

fn event(aggregate: u8, version: u64) -> Event {
    let position = EventPosition {
        event_id: Uuid::new_v4(),
        aggregate_id: Uuid::from_u128(u128::from(aggregate)),
        aggregate_version: version,
        occurred_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time"),
        correlation_id: Uuid::nil(),
        causation_id: Uuid::nil(),
    };
    Event::new(position, Ticked)
}

/// Runs `deliveries` through the planner in batches of the given sizes, carrying gate state
/// between batches as the store does; returns every outcome and the versions applied per
/// aggregate, in application order.
/// Every outcome as (aggregate, version, outcome), and applied versions per aggregate.
type RunResult = (Vec<(u8, u64, ItemOutcome)>, BTreeMap<u8, Vec<u64>>);

fn run(
    deliveries: &[Event],
    batch_sizes: &[usize],
    policy: GapPolicy,
    refuse: impl Fn(&Event) -> bool,
) -> RunResult {
    let mut gates: HashMap<_, GateState> = HashMap::new();
    let mut applied: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
    let mut outcomes = Vec::new();
    let mut rest = deliveries;
    let mut sizes = batch_sizes.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let (batch, tail) = rest.split_at(size);
        rest = tail;
        let items: Vec<PlannedItem<'_>> = batch.iter().map(PlannedItem::Event).collect();
        let result = plan_batch(&items, &mut gates, policy, |e| {
            if refuse(e) {
                return Err(Unprojectable::new("refused"));
            }
            applied.entry(e.meta.aggregate_id.as_u128() as u8).or_default().push(e.meta.aggregate_version);
            Ok(())
        });
        for (e, outcome) in batch.iter().zip(result) {
            outcomes.push((e.meta.aggregate_id.as_u128() as u8, e.meta.aggregate_version, outcome));
        }
    }
    (outcomes, applied)
}

/// Per-aggregate streams 1..=n interleaved in a random order that keeps each stream's order
/// (as one Kafka partition does), with some stretches delivered again (redelivery after a
/// crash or a rebalance, replay after an offset reset).
fn deliveries() -> impl Strategy<Value = (Vec<Event>, BTreeMap<u8, u64>)> {
    (
        prop::collection::btree_map(0u8..6, 1u64..12, 1..6),
        any::<u64>(),
        prop::collection::vec((0usize..200, 1usize..20), 0..4),
    )
        .prop_map(|(lengths, seed, replays)| {
            let mut cursors: BTreeMap<u8, u64> = lengths.keys().map(|k| (*k, 0)).collect();
            let mut order = Vec::new();
            let mut state = seed | 1;
            while cursors.iter().any(|(k, c)| *c < lengths[k]) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let open: Vec<u8> =
                    cursors.iter().filter(|(k, c)| **c < lengths[*k]).map(|(k, _)| *k).collect();
                let k = open[(state % open.len() as u64) as usize];
                let c = cursors.get_mut(&k).expect("cursor");
                *c += 1;
                order.push(event(k, *c));
            }
            for (at, len) in replays {
                let end = at.min(order.len());
                let start = end.saturating_sub(len);
                let again: Vec<Event> = order[start..end].to_vec();
                order.splice(end..end, again);
            }
            (order, lengths)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_version_applies_exactly_once_in_order(
        (delivered, lengths) in deliveries(),
        batch_sizes in prop::collection::vec(1usize..40, 1..8),
    ) {
        let (outcomes, applied) = run(&delivered, &batch_sizes, GapPolicy::DeadLetter, |_| false);
        for (aggregate, n) in &lengths {
            let expected: Vec<u64> = (1..=*n).collect();
            prop_assert_eq!(applied.get(aggregate).cloned().unwrap_or_default(), expected);
        }
        prop_assert!(outcomes.iter().all(|(_, _, o)| matches!(o, ItemOutcome::Applied | ItemOutcome::Duplicate)));
        let duplicates = outcomes.iter().filter(|(_, _, o)| *o == ItemOutcome::Duplicate).count();
        let total: u64 = lengths.values().sum();
        prop_assert_eq!(duplicates as u64, delivered.len() as u64 - total);
    }

    #[test]
    fn a_gap_parks_the_aggregate_and_nothing_of_it_applies_afterwards(
        (delivered, lengths) in deliveries(),
        batch_sizes in prop::collection::vec(1usize..40, 1..8),
        pick in any::<prop::sample::Index>(),
    ) {
        let (victim, n) = {
            let v: Vec<(&u8, &u64)> = lengths.iter().collect();
            let (k, n) = v[pick.index(v.len())];
            (*k, *n)
        };
        prop_assume!(n >= 2);
        let missing = 1 + (u64::from(victim) % (n - 1)); // 1..n-1, so something follows it
        let with_gap: Vec<Event> = delivered
            .into_iter()
            .filter(|e| !(e.meta.aggregate_id.as_u128() as u8 == victim && e.meta.aggregate_version == missing))
            .collect();
        let (outcomes, applied) = run(&with_gap, &batch_sizes, GapPolicy::DeadLetter, |_| false);

        let expected: Vec<u64> = (1..missing).collect();
        prop_assert_eq!(applied.get(&victim).cloned().unwrap_or_default(), expected);
        let mut first_after_gap = true;
        for (aggregate, version, outcome) in &outcomes {
            if *aggregate != victim || *version < missing {
                continue;
            }
            if first_after_gap {
                prop_assert_eq!(
                    outcome,
                    &ItemOutcome::DeadLettered(DeadLetterReason::VersionGap { expected: missing, got: *version })
                );
                first_after_gap = false;
            } else {
                prop_assert_eq!(outcome, &ItemOutcome::Parked);
            }
        }
        for (aggregate, n) in lengths.iter().filter(|(k, _)| **k != victim) {
            prop_assert_eq!(applied.get(aggregate).cloned().unwrap_or_default(), (1..=*n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_apply_policy_crosses_gaps_and_counts_them(
        (delivered, lengths) in deliveries(),
        batch_sizes in prop::collection::vec(1usize..40, 1..8),
    ) {
        // Drop every version 2: each aggregate with more than one event has exactly one gap.
        let with_gaps: Vec<Event> = delivered.into_iter().filter(|e| e.meta.aggregate_version != 2).collect();
        let (outcomes, applied) = run(&with_gaps, &batch_sizes, GapPolicy::Apply, |_| false);
        for (aggregate, n) in &lengths {
            let expected: Vec<u64> = (1..=*n).filter(|v| *v != 2).collect();
            prop_assert_eq!(applied.get(aggregate).cloned().unwrap_or_default(), expected);
        }
        let gaps = outcomes.iter().filter(|(_, _, o)| matches!(o, ItemOutcome::AppliedAcrossGap { expected: 2 })).count();
        prop_assert_eq!(gaps, lengths.values().filter(|n| **n >= 3).count());
    }

    #[test]
    fn a_refused_event_parks_its_aggregate(
        (delivered, lengths) in deliveries(),
        batch_sizes in prop::collection::vec(1usize..40, 1..8),
    ) {
        // Every aggregate's version 3 is refused by the fold.
        let (outcomes, applied) = run(&delivered, &batch_sizes, GapPolicy::DeadLetter, |e| e.meta.aggregate_version == 3);
        for (aggregate, n) in &lengths {
            let expected: Vec<u64> = (1..=(*n).min(2)).collect();
            prop_assert_eq!(applied.get(aggregate).cloned().unwrap_or_default(), expected);
        }
        let refused = outcomes.iter().filter(|(_, _, o)| matches!(o, ItemOutcome::DeadLettered(DeadLetterReason::Unprojectable(_)))).count();
        prop_assert_eq!(refused, lengths.values().filter(|n| **n >= 3).count());
    }
}

#[test]
fn a_poison_message_parks_the_aggregate_its_key_names() {
    let mut gates = HashMap::new();
    let (e1, e2, other) = (event(1, 1), event(1, 2), event(2, 1));
    let key = Some((CLOCK, Uuid::from_u128(1)));
    let items = [
        PlannedItem::Event(&e1),
        PlannedItem::Poison { key },
        PlannedItem::Event(&e2),
        PlannedItem::Poison { key: None },
        PlannedItem::Event(&other),
    ];
    let outcomes = plan_batch(&items, &mut gates, GapPolicy::DeadLetter, |_| Ok(()));
    assert_eq!(
        outcomes,
        vec![
            ItemOutcome::Applied,
            ItemOutcome::Poisoned,
            ItemOutcome::Parked,
            ItemOutcome::Poisoned,
            ItemOutcome::Applied
        ]
    );
    assert!(gates[&(CLOCK, Uuid::from_u128(1))].parked);
    assert!(!gates[&(CLOCK, Uuid::from_u128(2))].parked);
}

#[test]
fn a_replayed_applied_version_of_a_parked_aggregate_is_a_duplicate() {
    let mut gates = HashMap::new();
    let (v1, v3) = (event(1, 1), event(1, 3));
    let first = [PlannedItem::Event(&v1), PlannedItem::Event(&v3)];
    let outcomes = plan_batch(&first, &mut gates, GapPolicy::DeadLetter, |_| Ok(()));
    assert_eq!(outcomes[0], ItemOutcome::Applied);
    assert!(matches!(
        outcomes[1],
        ItemOutcome::DeadLettered(DeadLetterReason::VersionGap { expected: 2, got: 3 })
    ));
    // Offsets reset: the same two messages again.
    let outcomes = plan_batch(&first, &mut gates, GapPolicy::DeadLetter, |_| Ok(()));
    assert_eq!(outcomes, vec![ItemOutcome::Duplicate, ItemOutcome::Parked]);
}

#[test]
fn another_event_at_the_last_applied_version_is_a_conflict_not_a_duplicate() {
    let first = event(1, 1);
    let second = event(1, 2);
    let rival = event(1, 2); // the same version, decided by another writer: another event id
    let deliveries = [first.clone(), second.clone(), second.clone(), rival.clone(), first.clone()];
    let (outcomes, applied) = run(&deliveries, &[1, 2, 2], GapPolicy::DeadLetter, |_| false);
    let got: Vec<&ItemOutcome> = outcomes.iter().map(|(_, _, o)| o).collect();
    assert_eq!(
        got,
        [
            &ItemOutcome::Applied,
            &ItemOutcome::Applied,
            &ItemOutcome::Duplicate,
            &ItemOutcome::Conflict { applied: second.meta.event_id },
            // Older versions keep no event id: a redelivery of version 1 is a duplicate.
            &ItemOutcome::Duplicate,
        ]
    );
    assert_eq!(applied[&1], vec![1, 2], "the rival event is never applied");
}
