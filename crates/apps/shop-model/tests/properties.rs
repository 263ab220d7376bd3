//! Property tests over random command sequences, through the public API as the command
//! service uses it.
//!
//! For every aggregate driven here, each step checks that (a) `evolve` accepts every event
//! `decide` produced and every such event passes the contract's validation, (b) rehydrating
//! the whole log gives the same state as evolving step by step, and (c) the aggregate's own
//! invariants hold — for orders, against an independent table of the status machine.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use shop_model::domain::{
    rehydrate, CartCommand, CartState, DomainError, OrderCommand, OrderState, OrderStatus, ProductCommand,
    ProductSnapshot, ProductState, ShopAggregate,
};
use shop_model::events::fields::bounds::{MAX_LINES, MAX_LINE_QUANTITY, MAX_STOCK};
use shop_model::events::{OrderLine, PaymentMethod};
use shop_model::{EventType, ShopEvent};
use uuid::Uuid;

type Outcome = Result<Vec<ShopEvent>, DomainError>;

/// Runs `commands` from the empty state; after each, checks (a) and (b) and calls `check`
/// with the state before, the state after, the command, its outcome and the log so far.
/// A successful command emits at least one event unless `no_op` says the command may be a
/// no-op in the state before it.
fn run<A: ShopAggregate>(
    commands: &[A::Command],
    no_op: impl Fn(&A, &A::Command) -> bool,
    mut check: impl FnMut(&A, &A, &A::Command, &Outcome, &[ShopEvent]) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut state = A::default();
    let mut log: Vec<ShopEvent> = Vec::new();
    for command in commands {
        let before = state.clone();
        let outcome = state.decide(command);
        if let Ok(events) = &outcome {
            prop_assert!(
                !events.is_empty() || no_op(&before, command),
                "a successful command emitted no event"
            );
            for event in events {
                prop_assert_eq!(event.aggregate_type(), A::TYPE);
                prop_assert_eq!(event.validate(), Ok(()), "{:?} breaks the contract", event);
                state
                    .evolve(event)
                    .map_err(|e| TestCaseError::fail(format!("own event {event:?} refused: {e}")))?;
                log.push(event.clone());
            }
        }
        if matches!(outcome, Err(DomainError::NotFound { .. })) {
            prop_assert!(!before.exists(), "NotFound for an aggregate that exists");
        }
        let rehydrated: A =
            rehydrate(&log).map_err(|e| TestCaseError::fail(format!("the log does not rehydrate: {e}")))?;
        prop_assert_eq!(&rehydrated, &state, "rehydrated state differs from the stepwise one");
        check(&before, &state, command, &outcome, &log)?;
    }
    Ok(())
}

/// Mostly valid short text, sometimes empty (which the contract refuses for most fields).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![9 => "[A-Za-z0-9]{1,12}", 1 => Just(String::new())]
}

fn product_id() -> impl Strategy<Value = Uuid> {
    (1_u128..=5).prop_map(Uuid::from_u128)
}

/// Mostly valid quantities, sometimes 0 or above the line limit.
fn quantity() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 1_u32..=5, 1 => Just(0_u32), 1 => 990_u32..=1_000]
}

fn order_line() -> impl Strategy<Value = OrderLine> {
    let price = prop_oneof![9 => 1_i64..=50_000, 1 => Just(0_i64)];
    (product_id(), quantity(), price).prop_map(|(product_id, quantity, unit_price_cents)| OrderLine {
        product_id,
        quantity,
        unit_price_cents,
    })
}

/// Placing: usually with one line per product, sometimes with whatever the lines are.
fn place_command() -> impl Strategy<Value = OrderCommand> {
    let cart_id = prop::option::of(Just(Uuid::from_u128(0xCA)));
    let dedupe = prop::bool::weighted(0.9);
    let user_registered = prop::bool::weighted(0.9);
    (cart_id, dedupe, user_registered, prop::collection::vec(order_line(), 0..4)).prop_map(
        |(cart_id, dedupe, user_registered, mut lines)| {
            if dedupe {
                let mut seen = HashSet::new();
                lines.retain(|line| seen.insert(line.product_id));
            }
            OrderCommand::Place { user_id: Uuid::from_u128(7), user_registered, cart_id, lines }
        },
    )
}

fn order_command() -> impl Strategy<Value = OrderCommand> {
    let place = place_command();
    let method = prop_oneof![
        Just(PaymentMethod::Card),
        Just(PaymentMethod::BankTransfer),
        Just(PaymentMethod::Wallet)
    ];
    prop_oneof![
        2 => place,
        4 => method.prop_map(|method| OrderCommand::RequestPayment { method }),
        2 => text().prop_map(|payment_reference| OrderCommand::RecordPaymentSucceeded { payment_reference }),
        2 => text().prop_map(|reason| OrderCommand::RecordPaymentFailed { reason }),
        2 => (text(), text()).prop_map(|(carrier, tracking_code)| OrderCommand::Ship { carrier, tracking_code }),
        1 => text().prop_map(|reason| OrderCommand::Cancel { reason }),
    ]
}

/// The status machine as the specification states it, written independently of the crate:
/// from which statuses each (non-placing) command may succeed.
fn allowed(status: OrderStatus, command: &OrderCommand) -> bool {
    use OrderStatus::*;
    match command {
        OrderCommand::Place { .. } => false,
        OrderCommand::RequestPayment { .. } => matches!(status, Placed | PaymentFailed),
        OrderCommand::RecordPaymentSucceeded { .. } | OrderCommand::RecordPaymentFailed { .. } => {
            status == PaymentPending
        }
        OrderCommand::Ship { .. } => status == Paid,
        OrderCommand::Cancel { .. } => matches!(status, Placed | PaymentFailed),
    }
}

fn position(log: &[ShopEvent], event_type: EventType) -> Option<usize> {
    log.iter().position(|e| e.event_type() == event_type)
}

fn check_order(
    before: &OrderState,
    after: &OrderState,
    command: &OrderCommand,
    outcome: &Outcome,
    log: &[ShopEvent],
) -> Result<(), TestCaseError> {
    // The outcome agrees with the independent table.
    match (before.status(), command, outcome) {
        (None, OrderCommand::Place { user_registered, .. }, Ok(_)) => {
            prop_assert!(*user_registered, "an order was placed for an unregistered user");
        }
        (None, OrderCommand::Place { user_registered: false, .. }, Err(e)) => {
            prop_assert_eq!(e.code(), "user_not_found");
        }
        (None, OrderCommand::Place { .. }, Err(e)) => {
            prop_assert!(matches!(e, DomainError::InvalidField { .. }), "placing refused by {:?}", e);
        }
        (None, _, result) => prop_assert!(
            matches!(result, Err(DomainError::NotFound { .. })),
            "{:?} on a missing order gave {:?}",
            command,
            result
        ),
        (Some(_), OrderCommand::Place { .. }, result) => prop_assert!(
            matches!(result, Err(DomainError::Rejected { .. })),
            "placing a placed order gave {:?}",
            result
        ),
        (Some(status), _, Ok(_)) => {
            prop_assert!(allowed(status, command), "{:?} succeeded in {}", command, status)
        }
        (Some(status), _, Err(DomainError::Rejected { .. })) => {
            prop_assert!(!allowed(status, command), "{:?} rejected in {}", command, status);
        }
        (Some(status), _, Err(DomainError::InvalidField { .. })) => {
            prop_assert!(allowed(status, command), "{:?} in {} judged on fields first", command, status);
        }
        (Some(_), _, Err(e)) => prop_assert!(false, "unexpected {:?}", e),
    }
    if outcome.is_ok() {
        prop_assert_ne!(before.status(), after.status(), "every order event moves the status");
    }
    let Some(order) = after.order() else {
        prop_assert!(log.is_empty());
        return Ok(());
    };
    let sum: i64 = order.lines.iter().map(OrderLine::line_total_cents).sum();
    prop_assert_eq!(order.total_cents, sum, "total equals the sum of the lines");
    prop_assert!(!order.lines.is_empty() && order.lines.len() <= MAX_LINES);
    let paid_at = position(log, EventType::OrderPaymentSucceeded);
    let is_paid = matches!(order.status, OrderStatus::Paid | OrderStatus::Shipped);
    prop_assert_eq!(paid_at.is_some(), is_paid, "paid exactly when a payment succeeded");
    prop_assert_eq!(order.payment_reference.is_some(), is_paid);
    if let Some(shipped_at) = position(log, EventType::OrderShipped) {
        prop_assert!(paid_at.is_some_and(|paid| paid < shipped_at), "shipped only after being paid");
        prop_assert_eq!(order.status, OrderStatus::Shipped);
    }
    if order.status == OrderStatus::Cancelled {
        prop_assert!(paid_at.is_none(), "a cancelled order was never paid");
    }
    for event in log {
        match event {
            ShopEvent::OrderPaymentRequested(e) => {
                prop_assert_eq!(e.amount_cents, order.total_cents)
            }
            ShopEvent::OrderPaymentSucceeded(e) => {
                prop_assert_eq!(e.amount_cents, order.total_cents);
                prop_assert_eq!(&e.lines, &order.lines);
                prop_assert_eq!(e.user_id, order.user_id);
            }
            _ => {}
        }
    }
    Ok(())
}

fn cart_command() -> impl Strategy<Value = CartCommand> {
    let owner = Uuid::from_u128(0xA);
    let user = prop_oneof![9 => Just(owner), 1 => Just(Uuid::from_u128(0xB))];
    let user_registered = prop::bool::weighted(0.9);
    let snapshot = prop_oneof![
        8 => (1_i64..=5_000).prop_map(|price_cents| Some(ProductSnapshot { listed: true, price_cents })),
        1 => Just(Some(ProductSnapshot { listed: false, price_cents: 100 })),
        1 => Just(None),
    ];
    prop_oneof![
        6 => (user, user_registered, product_id(), quantity(), snapshot).prop_map(
            |(user_id, user_registered, product_id, quantity, product)| {
                CartCommand::AddItem { user_id, user_registered, product_id, quantity, product }
            }
        ),
        2 => product_id().prop_map(|product_id| CartCommand::RemoveItem { product_id }),
        1 => Just(CartCommand::CheckOut { order_id: Uuid::from_u128(0x0D) }),
    ]
}

/// An independent model of a cart's lines: (product, quantity, unit price), first-added order.
type ModelLines = Vec<(Uuid, u32, i64)>;

fn check_cart(
    model: &mut ModelLines,
    before: &CartState,
    after: &CartState,
    command: &CartCommand,
    outcome: &Outcome,
) -> Result<(), TestCaseError> {
    if before.checked_out_into().is_some() {
        prop_assert!(outcome.is_err(), "a checked-out cart accepted {:?}", command);
    }
    if let Some(owner) = before.owner() {
        prop_assert_eq!(after.owner(), Some(owner), "the owner never changes");
    }
    if let CartCommand::AddItem { user_registered: false, .. } = command {
        prop_assert!(outcome.is_err(), "an unregistered user added to a cart");
    }
    if outcome.is_ok() {
        match command {
            CartCommand::AddItem { product_id, quantity, product, .. } => {
                let price = product.map(|p| p.price_cents).unwrap_or_default();
                match model.iter_mut().find(|(id, _, _)| id == product_id) {
                    Some(line) => *line = (line.0, line.1 + quantity, price),
                    None => model.push((*product_id, *quantity, price)),
                }
            }
            CartCommand::RemoveItem { product_id } => model.retain(|(id, _, _)| id != product_id),
            CartCommand::CheckOut { order_id } => {
                prop_assert!(!before.lines().is_empty(), "checked out an empty cart");
                prop_assert_eq!(after.checked_out_into(), Some(*order_id));
            }
        }
    }
    let lines: ModelLines =
        after.lines().iter().map(|l| (l.product_id, l.quantity, l.unit_price_cents)).collect();
    prop_assert_eq!(&lines, model, "lines differ from the model");
    let distinct: HashSet<Uuid> = lines.iter().map(|l| l.0).collect();
    prop_assert_eq!(distinct.len(), lines.len(), "one line per product");
    prop_assert!(lines.len() <= MAX_LINES);
    prop_assert!(lines.iter().all(|l| (1..=MAX_LINE_QUANTITY).contains(&l.1)));
    Ok(())
}

fn product_command() -> impl Strategy<Value = ProductCommand> {
    let list = (0_i64..=20).prop_map(|stock| ProductCommand::List {
        sku: "SKU-1".into(),
        name: "Thing".into(),
        price_cents: 1_000,
        stock,
    });
    let delta = prop_oneof![
        8 => -15_i64..=15,
        1 => Just(MAX_STOCK),
        1 => Just(i64::MIN),
    ];
    // A few orders, so reservations collide, end and are attempted twice.
    let order_id = (1_u128..=4).prop_map(Uuid::from_u128);
    let units = prop_oneof![9 => 1_u32..=8, 1 => Just(0_u32)];
    prop_oneof![
        1 => list,
        2 => prop_oneof![Just(1_000_i64), 1_i64..=2_000].prop_map(|price_cents| ProductCommand::ChangePrice { price_cents }),
        5 => delta.prop_map(|quantity| ProductCommand::Restock { quantity }),
        1 => text().prop_map(|reason| ProductCommand::Delist { reason }),
        4 => (order_id.clone(), units).prop_map(|(order_id, quantity)| ProductCommand::Reserve { order_id, quantity }),
        2 => order_id.clone().prop_map(|order_id| ProductCommand::Release { order_id }),
        2 => order_id.prop_map(|order_id| ProductCommand::ShipReserved { order_id }),
    ]
}

/// Release and ship move nothing for an order that holds nothing.
fn product_no_op(before: &ProductState, command: &ProductCommand) -> bool {
    match command {
        ProductCommand::Release { order_id } | ProductCommand::ShipReserved { order_id } => {
            before.product().is_none_or(|p| !p.reservations.contains_key(order_id))
        }
        _ => false,
    }
}

/// An independent model of a product's stock: units on hand and units held per order.
#[derive(Debug, Default)]
struct ModelStock {
    on_hand: i64,
    held: BTreeMap<Uuid, u32>,
}

fn check_product(
    model: &mut ModelStock,
    before: &ProductState,
    after: &ProductState,
    command: &ProductCommand,
    outcome: &Outcome,
) -> Result<(), TestCaseError> {
    let ends_reservation =
        matches!(command, ProductCommand::Release { .. } | ProductCommand::ShipReserved { .. });
    if before.product().is_some_and(|p| !p.listed) && !ends_reservation {
        prop_assert!(outcome.is_err(), "a delisted product accepted {:?}", command);
    }
    if ends_reservation {
        prop_assert!(outcome.is_ok(), "{:?} refused: {:?}", command, outcome);
    }
    if let ProductCommand::Reserve { order_id, quantity } = command {
        let available = model.on_hand - model.held.values().map(|q| i64::from(*q)).sum::<i64>();
        let listed = before.product().is_some_and(|p| p.listed);
        let fits = *quantity >= 1 && i64::from(*quantity) <= available && !model.held.contains_key(order_id);
        prop_assert_eq!(
            outcome.is_ok(),
            listed && fits,
            "{:?} with {} available gave {:?}",
            command,
            available,
            outcome
        );
    }
    if outcome.is_ok() {
        match command {
            ProductCommand::List { stock, .. } => model.on_hand = *stock,
            ProductCommand::Restock { quantity } => model.on_hand += quantity,
            ProductCommand::Reserve { order_id, quantity } => {
                model.held.insert(*order_id, *quantity);
            }
            ProductCommand::Release { order_id } => {
                model.held.remove(order_id);
            }
            ProductCommand::ShipReserved { order_id } => {
                model.on_hand -= model.held.remove(order_id).map_or(0, i64::from);
            }
            _ => {}
        }
    }
    if let Some(product) = after.product() {
        let reserved: i64 = model.held.values().map(|q| i64::from(*q)).sum();
        prop_assert_eq!(product.stock, model.on_hand);
        prop_assert_eq!(&product.reservations, &model.held);
        prop_assert_eq!(product.reserved, reserved);
        prop_assert!((0..=MAX_STOCK).contains(&product.stock), "stock {} out of range", product.stock);
        prop_assert!(
            (0..=product.stock).contains(&product.reserved),
            "{} reserved of {} on hand",
            product.reserved,
            product.stock
        );
        prop_assert_eq!(product.available(), product.stock - product.reserved);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn order_sequences_keep_their_invariants(
        first in place_command(),
        rest in prop::collection::vec(order_command(), 0..30),
    ) {
        let commands: Vec<OrderCommand> = std::iter::once(first).chain(rest).collect();
        run::<OrderState>(&commands, |_, _| false, check_order)?;
    }

    #[test]
    fn cart_sequences_keep_their_invariants(commands in prop::collection::vec(cart_command(), 0..40)) {
        let mut model = ModelLines::new();
        run::<CartState>(&commands, |_, _| false, |before, after, command, outcome, _| {
            check_cart(&mut model, before, after, command, outcome)
        })?;
    }

    #[test]
    fn product_sequences_keep_stock_in_range(commands in prop::collection::vec(product_command(), 0..40)) {
        let mut model = ModelStock::default();
        run::<ProductState>(&commands, product_no_op, |before, after, command, outcome, _| {
            check_product(&mut model, before, after, command, outcome)
        })?;
    }
}
