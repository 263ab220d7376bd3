//! Given/when/then tests of the `order` aggregate: every command's success, every refusal,
//! and the status machine as `evolve` enforces it.

use crate::events::ShopEvent;
use crate::events::{
    CartOpened, OrderCancelled, OrderLine, OrderPaymentFailed, OrderPaymentRequested, OrderPaymentSucceeded,
    OrderPlaced, OrderShipped, PaymentMethod,
};
use uuid::Uuid;

use super::{OrderCommand, OrderState, OrderStatus};
use crate::domain::testing::given;
use crate::domain::{rehydrate, Aggregate, EvolveError};

const USER: Uuid = Uuid::from_u128(0xA11CE);
const CART: Uuid = Uuid::from_u128(0xCA);
const MUG: Uuid = Uuid::from_u128(1);
const TEAPOT: Uuid = Uuid::from_u128(2);

fn line(product_id: Uuid, quantity: u32, unit_price_cents: i64) -> OrderLine {
    OrderLine { product_id, quantity, unit_price_cents }
}

fn lines() -> Vec<OrderLine> {
    vec![line(MUG, 2, 1200), line(TEAPOT, 1, 3000)]
}

fn placed() -> ShopEvent {
    OrderPlaced { user_id: USER, cart_id: Some(CART), lines: lines(), total_cents: 5400 }.into()
}

fn requested() -> ShopEvent {
    OrderPaymentRequested { amount_cents: 5400, method: PaymentMethod::Card }.into()
}

fn succeeded() -> ShopEvent {
    OrderPaymentSucceeded {
        payment_reference: "psp-42".into(),
        user_id: USER,
        amount_cents: 5400,
        lines: lines(),
    }
    .into()
}

fn failed() -> ShopEvent {
    OrderPaymentFailed { reason: "card declined".into() }.into()
}

fn shipped() -> ShopEvent {
    OrderShipped { carrier: "DHL".into(), tracking_code: "JD0001".into() }.into()
}

fn cancelled() -> ShopEvent {
    OrderCancelled { reason: "changed my mind".into() }.into()
}

/// Placing for a registered user (as the service says when the user aggregate exists).
fn place(lines: Vec<OrderLine>) -> OrderCommand {
    OrderCommand::Place { user_id: USER, user_registered: true, cart_id: Some(CART), lines }
}

fn pay() -> OrderCommand {
    OrderCommand::RequestPayment { method: PaymentMethod::Wallet }
}

fn payment_succeeded() -> OrderCommand {
    OrderCommand::RecordPaymentSucceeded { payment_reference: "psp-43".into() }
}

fn payment_failed() -> OrderCommand {
    OrderCommand::RecordPaymentFailed { reason: "insufficient funds".into() }
}

fn ship() -> OrderCommand {
    OrderCommand::Ship { carrier: "UPS".into(), tracking_code: "1Z999".into() }
}

fn cancel() -> OrderCommand {
    OrderCommand::Cancel { reason: "ordered twice".into() }
}

/// The histories that lead to each status.
fn history(status: OrderStatus) -> Vec<ShopEvent> {
    match status {
        OrderStatus::Placed => vec![placed()],
        OrderStatus::PaymentPending => vec![placed(), requested()],
        OrderStatus::PaymentFailed => vec![placed(), requested(), failed()],
        OrderStatus::Paid => vec![placed(), requested(), succeeded()],
        OrderStatus::Shipped => vec![placed(), requested(), succeeded(), shipped()],
        OrderStatus::Cancelled => vec![placed(), cancelled()],
    }
}

#[test]
fn place_totals_the_lines() {
    let state = given::<OrderState>([]).when(place(lines())).then_events([placed()]);
    let order = state.order().expect("placed");
    assert_eq!((order.status, order.total_cents, order.user_id), (OrderStatus::Placed, 5400, USER));
}

#[test]
fn place_twice_is_rejected() {
    given::<OrderState>([placed()]).when(place(lines())).then_rejected("already_placed");
}

#[test]
fn place_for_an_unregistered_user_is_rejected_naming_the_user() {
    let stranger = Uuid::from_u128(0x5742);
    let command =
        OrderCommand::Place { user_id: stranger, user_registered: false, cart_id: None, lines: lines() };
    let state = OrderState::default();
    match state.decide(&command) {
        Err(crate::domain::DomainError::Rejected { reason, message }) => {
            assert_eq!(reason.as_str(), "user_not_found");
            assert!(message.contains(&stranger.to_string()), "the message names the user: {message}");
        }
        other => panic!("expected user_not_found, got {other:?}"),
    }
    // Before the lines are judged; after the order's own lifecycle.
    let malformed =
        OrderCommand::Place { user_id: stranger, user_registered: false, cart_id: None, lines: vec![] };
    given::<OrderState>([]).when(malformed.clone()).then_rejected("user_not_found");
    given::<OrderState>([placed()]).when(malformed).then_rejected("already_placed");
}

#[test]
fn place_checks_the_lines_with_the_contract() {
    given::<OrderState>([]).when(place(vec![])).then_invalid("lines");
    given::<OrderState>([])
        .when(place(vec![line(MUG, 1, 100), line(TEAPOT, 0, 100)]))
        .then_invalid("lines[1].quantity");
    given::<OrderState>([]).when(place(vec![line(MUG, 1000, 100)])).then_invalid("lines[0].quantity");
    given::<OrderState>([]).when(place(vec![line(MUG, 1, 0)])).then_invalid("lines[0].unit_price_cents");
    given::<OrderState>([])
        .when(place(vec![line(MUG, 1, i64::MAX)]))
        .then_invalid("lines[0].unit_price_cents");
    given::<OrderState>([])
        .when(place(vec![line(MUG, 1, 100), line(MUG, 2, 100)]))
        .then_invalid("lines[1].product_id");
    let too_many: Vec<OrderLine> = (0..101).map(|i| line(Uuid::from_u128(100 + i), 1, 100)).collect();
    given::<OrderState>([]).when(place(too_many)).then_invalid("lines");
}

#[test]
fn commands_on_a_missing_order_are_not_found() {
    for command in [pay(), payment_succeeded(), payment_failed(), ship(), cancel()] {
        given::<OrderState>([]).when(command).then_not_found();
    }
}

#[test]
fn request_payment_asks_for_the_total() {
    let expected: ShopEvent =
        OrderPaymentRequested { amount_cents: 5400, method: PaymentMethod::Wallet }.into();
    let state = given::<OrderState>(history(OrderStatus::Placed)).when(pay()).then_events([expected.clone()]);
    assert_eq!(state.status(), Some(OrderStatus::PaymentPending));
    let again = given::<OrderState>(history(OrderStatus::PaymentFailed)).when(pay()).then_events([expected]);
    assert_eq!(again.order().and_then(|o| o.payment_method), Some(PaymentMethod::Wallet));
}

#[test]
fn request_payment_refusals() {
    given::<OrderState>(history(OrderStatus::Cancelled)).when(pay()).then_rejected("order_cancelled");
    given::<OrderState>(history(OrderStatus::PaymentPending))
        .when(pay())
        .then_rejected("payment_in_progress");
    given::<OrderState>(history(OrderStatus::Paid)).when(pay()).then_rejected("order_already_paid");
    given::<OrderState>(history(OrderStatus::Shipped)).when(pay()).then_rejected("order_already_paid");
}

#[test]
fn payment_success_carries_user_total_and_lines() {
    let state = given::<OrderState>(history(OrderStatus::PaymentPending))
        .when(payment_succeeded())
        .then_events([OrderPaymentSucceeded {
            payment_reference: "psp-43".into(),
            user_id: USER,
            amount_cents: 5400,
            lines: lines(),
        }
        .into()]);
    let order = state.order().expect("placed");
    assert_eq!((order.status, order.payment_reference.as_deref()), (OrderStatus::Paid, Some("psp-43")));
}

#[test]
fn payment_failure_allows_another_attempt() {
    let state = given::<OrderState>(history(OrderStatus::PaymentPending))
        .when(payment_failed())
        .then_events([OrderPaymentFailed { reason: "insufficient funds".into() }.into()]);
    assert_eq!(state.status(), Some(OrderStatus::PaymentFailed));
}

#[test]
fn payment_results_need_a_pending_payment() {
    for status in [
        OrderStatus::Placed,
        OrderStatus::PaymentFailed,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Cancelled,
    ] {
        given::<OrderState>(history(status)).when(payment_succeeded()).then_rejected("no_payment_pending");
        given::<OrderState>(history(status)).when(payment_failed()).then_rejected("no_payment_pending");
    }
}

#[test]
fn payment_results_check_fields_with_the_contract() {
    given::<OrderState>(history(OrderStatus::PaymentPending))
        .when(OrderCommand::RecordPaymentSucceeded { payment_reference: String::new() })
        .then_invalid("payment_reference");
    given::<OrderState>(history(OrderStatus::PaymentPending))
        .when(OrderCommand::RecordPaymentFailed { reason: String::new() })
        .then_invalid("reason");
}

#[test]
fn ship_a_paid_order() {
    let state = given::<OrderState>(history(OrderStatus::Paid)).when(ship()).then_events([OrderShipped {
        carrier: "UPS".into(),
        tracking_code: "1Z999".into(),
    }
    .into()]);
    let order = state.order().expect("placed");
    assert_eq!(order.status, OrderStatus::Shipped);
    assert_eq!(order.shipment.as_ref().map(|s| s.tracking_code.as_str()), Some("1Z999"));
}

#[test]
fn ship_refusals() {
    for unpaid in [OrderStatus::Placed, OrderStatus::PaymentPending, OrderStatus::PaymentFailed] {
        given::<OrderState>(history(unpaid)).when(ship()).then_rejected("order_not_paid");
    }
    given::<OrderState>(history(OrderStatus::Shipped)).when(ship()).then_rejected("order_shipped");
    given::<OrderState>(history(OrderStatus::Cancelled)).when(ship()).then_rejected("order_cancelled");
    given::<OrderState>(history(OrderStatus::Paid))
        .when(OrderCommand::Ship { carrier: "UPS".into(), tracking_code: "x".repeat(65) })
        .then_invalid("tracking_code");
}

#[test]
fn cancel_an_unpaid_order() {
    for status in [OrderStatus::Placed, OrderStatus::PaymentFailed] {
        let state = given::<OrderState>(history(status))
            .when(cancel())
            .then_events([OrderCancelled { reason: "ordered twice".into() }.into()]);
        assert_eq!(state.status(), Some(OrderStatus::Cancelled));
    }
}

#[test]
fn cancel_refusals() {
    given::<OrderState>(history(OrderStatus::Paid)).when(cancel()).then_rejected("order_already_paid");
    given::<OrderState>(history(OrderStatus::Shipped)).when(cancel()).then_rejected("order_shipped");
    given::<OrderState>(history(OrderStatus::PaymentPending))
        .when(cancel())
        .then_rejected("payment_in_progress");
    given::<OrderState>(history(OrderStatus::Cancelled)).when(cancel()).then_rejected("order_cancelled");
    given::<OrderState>(history(OrderStatus::Placed))
        .when(OrderCommand::Cancel { reason: String::new() })
        .then_invalid("reason");
}

#[test]
fn evolve_follows_the_status_machine() {
    let inconsistent = |events: &[ShopEvent]| {
        matches!(rehydrate::<OrderState>(events), Err(EvolveError::Inconsistent { .. }))
    };
    assert!(inconsistent(&[requested()]), "nothing before placement");
    assert!(inconsistent(&[placed(), placed()]));
    assert!(inconsistent(&[placed(), shipped()]), "never shipped unpaid");
    assert!(inconsistent(&[placed(), succeeded()]), "no success without a request");
    assert!(inconsistent(&[placed(), requested(), requested()]));
    assert!(inconsistent(&[placed(), requested(), cancelled()]));
    assert!(inconsistent(&[placed(), cancelled(), requested()]));
    assert!(inconsistent(&[placed(), requested(), succeeded(), cancelled()]));
    let foreign: ShopEvent = CartOpened { user_id: USER }.into();
    assert!(matches!(rehydrate::<OrderState>(&[placed(), foreign]), Err(EvolveError::WrongAggregate { .. })));
    let state: OrderState =
        rehydrate(&[placed(), requested(), failed(), requested(), succeeded(), shipped()])
            .expect("a valid life");
    assert_eq!(state.status(), Some(OrderStatus::Shipped));
}

#[test]
fn status_names_are_snake_case() {
    assert_eq!(OrderStatus::PaymentPending.to_string(), "payment_pending");
    assert_eq!(OrderStatus::Cancelled.as_str(), "cancelled");
}
