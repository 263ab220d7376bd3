//! What a decoded event keeps in memory. A projector holds every event of the batches it
//! applies at once (thousands), so an event must hold its payload once: as the application's
//! typed body, not also as the JSON value it was decoded from.
//!
//! One test in this binary: it counts the bytes every allocation of the process holds.

use std::alloc::System;

use chrono::{TimeZone, Utc};
use prism_events::{decode_event, Event, EventPosition, Limits, WireHeaders};
use shop_model::events::{OrderLine, OrderPlaced};
use shop_model::{registry, ShopEvent};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use uuid::Uuid;

/// The system allocator, counting what is allocated and freed.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn a_decoded_order_holds_less_than_its_wire_bytes() {
    let lines = (1..=3_u128)
        .map(|n| OrderLine { product_id: Uuid::from_u128(0xa0 + n), quantity: 2, unit_price_cents: 1250 })
        .collect();
    let order = Event::new(
        EventPosition {
            event_id: Uuid::from_u128(1),
            aggregate_id: Uuid::from_u128(2),
            aggregate_version: 1,
            occurred_at: Utc.with_ymd_and_hms(2026, 11, 23, 12, 30, 0).single().expect("valid date"),
            correlation_id: Uuid::from_u128(3),
            causation_id: Uuid::from_u128(4),
        },
        ShopEvent::from(OrderPlaced { user_id: Uuid::from_u128(5), cart_id: None, lines, total_cents: 7500 }),
    );
    let wire = order.to_json_bytes();
    let registry = registry();
    let limits = Limits::default();

    const EVENTS: usize = 1_000;
    let region = Region::new(ALLOCATOR);
    let decoded: Vec<Event> = (0..EVENTS)
        .map(|_| decode_event(&registry, Some(&wire), WireHeaders::default(), &limits).expect("decodes"))
        .collect();
    let change = region.change();
    let held_per_event = (change.bytes_allocated - change.bytes_deallocated) / EVENTS;

    eprintln!("a decoded order holds {held_per_event} bytes, its wire form is {} bytes", wire.len());
    assert_eq!(decoded[0], order, "the decoded order is the order");
    // With a JSON value of the payload kept beside the body it held 3 292 bytes for these 723.
    assert!(
        held_per_event < wire.len(),
        "a decoded order holds {held_per_event} bytes, its wire form is {} bytes",
        wire.len()
    );
}
