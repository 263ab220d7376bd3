//! Given/when/then tests of the `cart` aggregate: every command's success and refusals.

use crate::events::fields::bounds::{MAX_LINES, MAX_LINE_QUANTITY};
use crate::events::ShopEvent;
use crate::events::{CartCheckedOut, CartItemAdded, CartItemRemoved, CartOpened, OrderLine, UserRegistered};
use uuid::Uuid;

use super::{CartCommand, CartLine, CartState, ProductSnapshot};
use crate::domain::testing::given;
use crate::domain::{rehydrate, Aggregate, EvolveError};

const OWNER: Uuid = Uuid::from_u128(0xA11CE);
const STRANGER: Uuid = Uuid::from_u128(0xB0B);
const MUG: Uuid = Uuid::from_u128(1);
const TEAPOT: Uuid = Uuid::from_u128(2);
const ORDER: Uuid = Uuid::from_u128(0x0D);

fn opened() -> ShopEvent {
    CartOpened { user_id: OWNER }.into()
}

fn added(product_id: Uuid, quantity: u32, unit_price_cents: i64) -> ShopEvent {
    CartItemAdded { product_id, quantity, unit_price_cents }.into()
}

fn removed(product_id: Uuid) -> ShopEvent {
    CartItemRemoved { product_id }.into()
}

fn checked_out() -> ShopEvent {
    CartCheckedOut { order_id: ORDER }.into()
}

fn on_sale(price_cents: i64) -> Option<ProductSnapshot> {
    Some(ProductSnapshot { listed: true, price_cents })
}

/// Adding as a registered user (as the service says when the user aggregate exists).
fn add(user_id: Uuid, product_id: Uuid, quantity: u32, product: Option<ProductSnapshot>) -> CartCommand {
    CartCommand::AddItem { user_id, user_registered: true, product_id, quantity, product }
}

/// Adding as a user id that was never registered.
fn add_unregistered(user_id: Uuid, product_id: Uuid, product: Option<ProductSnapshot>) -> CartCommand {
    CartCommand::AddItem { user_id, user_registered: false, product_id, quantity: 1, product }
}

#[test]
fn first_item_opens_the_cart() {
    let state = given::<CartState>([])
        .when(add(OWNER, MUG, 2, on_sale(1200)))
        .then_events([opened(), added(MUG, 2, 1200)]);
    assert_eq!(state.owner(), Some(OWNER));
    assert_eq!(state.lines(), [CartLine { product_id: MUG, quantity: 2, unit_price_cents: 1200 }]);
}

#[test]
fn adding_again_raises_the_quantity_and_takes_the_new_price() {
    let state = given::<CartState>([opened(), added(MUG, 2, 1200), added(TEAPOT, 1, 3000)])
        .when(add(OWNER, MUG, 3, on_sale(1100)))
        .then_events([added(MUG, 3, 1100)]);
    assert_eq!(
        state.order_lines(),
        [
            OrderLine { product_id: MUG, quantity: 5, unit_price_cents: 1100 },
            OrderLine { product_id: TEAPOT, quantity: 1, unit_price_cents: 3000 },
        ],
        "lines keep their first-added order"
    );
}

#[test]
fn add_item_refusals_about_the_product() {
    given::<CartState>([]).when(add(OWNER, MUG, 1, None)).then_rejected("product_not_found");
    given::<CartState>([opened()])
        .when(add(OWNER, MUG, 1, Some(ProductSnapshot { listed: false, price_cents: 1200 })))
        .then_rejected("product_not_listed");
}

#[test]
fn only_a_registered_user_opens_or_fills_a_cart() {
    let state = CartState::default();
    match state.decide(&add_unregistered(STRANGER, MUG, on_sale(1200))) {
        Err(crate::domain::DomainError::Rejected { reason, message }) => {
            assert_eq!(reason.as_str(), "user_not_found");
            assert!(message.contains(&STRANGER.to_string()), "the message names the user: {message}");
        }
        other => panic!("expected user_not_found, got {other:?}"),
    }
    // Checked before the product: an unknown user learns nothing about the catalog.
    given::<CartState>([]).when(add_unregistered(STRANGER, MUG, None)).then_rejected("user_not_found");
    // A cart opened before the rule existed by an unregistered owner takes no more items.
    given::<CartState>([opened(), added(MUG, 1, 1200)])
        .when(add_unregistered(OWNER, TEAPOT, on_sale(3000)))
        .then_rejected("user_not_found");
    // Someone else's cart stays someone else's, registered or not.
    given::<CartState>([opened()])
        .when(add_unregistered(STRANGER, TEAPOT, on_sale(3000)))
        .then_rejected("not_cart_owner");
}

#[test]
fn only_the_owner_adds_to_a_cart() {
    given::<CartState>([opened(), added(MUG, 1, 1200)])
        .when(add(STRANGER, TEAPOT, 1, on_sale(3000)))
        .then_rejected("not_cart_owner");
}

#[test]
fn add_item_checks_the_quantity_with_the_contract() {
    given::<CartState>([]).when(add(OWNER, MUG, 0, on_sale(1200))).then_invalid("quantity");
    given::<CartState>([opened()])
        .when(add(OWNER, MUG, MAX_LINE_QUANTITY + 1, on_sale(1200)))
        .then_invalid("quantity");
}

#[test]
fn a_line_cannot_exceed_the_quantity_limit() {
    given::<CartState>([opened(), added(MUG, MAX_LINE_QUANTITY - 1, 1200)])
        .when(add(OWNER, MUG, 2, on_sale(1200)))
        .then_rejected("quantity_limit");
    given::<CartState>([opened(), added(MUG, MAX_LINE_QUANTITY - 1, 1200)])
        .when(add(OWNER, MUG, 1, on_sale(1200)))
        .then_events([added(MUG, 1, 1200)]);
}

#[test]
fn a_cart_cannot_exceed_the_line_limit() {
    let full: Vec<ShopEvent> = std::iter::once(opened())
        .chain((0..MAX_LINES as u128).map(|i| added(Uuid::from_u128(1000 + i), 1, 100)))
        .collect();
    given::<CartState>(full.clone())
        .when(add(OWNER, Uuid::from_u128(5000), 1, on_sale(100)))
        .then_rejected("too_many_lines");
    // Raising the quantity of an existing line is still fine in a full cart.
    given::<CartState>(full).when(add(OWNER, Uuid::from_u128(1000), 1, on_sale(100))).then_events([added(
        Uuid::from_u128(1000),
        1,
        100,
    )]);
}

#[test]
fn remove_item_drops_the_line() {
    let state = given::<CartState>([opened(), added(MUG, 2, 1200), added(TEAPOT, 1, 3000)])
        .when(CartCommand::RemoveItem { product_id: MUG })
        .then_events([removed(MUG)]);
    assert_eq!(state.lines(), [CartLine { product_id: TEAPOT, quantity: 1, unit_price_cents: 3000 }]);
}

#[test]
fn remove_item_refusals() {
    given::<CartState>([]).when(CartCommand::RemoveItem { product_id: MUG }).then_not_found();
    given::<CartState>([opened(), added(TEAPOT, 1, 3000)])
        .when(CartCommand::RemoveItem { product_id: MUG })
        .then_rejected("item_not_in_cart");
    given::<CartState>([opened(), added(MUG, 1, 1200), removed(MUG)])
        .when(CartCommand::RemoveItem { product_id: MUG })
        .then_rejected("item_not_in_cart");
}

#[test]
fn check_out_freezes_the_cart() {
    let state = given::<CartState>([opened(), added(MUG, 2, 1200)])
        .when(CartCommand::CheckOut { order_id: ORDER })
        .then_events([checked_out()]);
    assert_eq!(state.checked_out_into(), Some(ORDER));
    assert_eq!(state.lines().len(), 1, "the lines stay for the order");
}

#[test]
fn check_out_refusals() {
    given::<CartState>([]).when(CartCommand::CheckOut { order_id: ORDER }).then_not_found();
    given::<CartState>([opened(), added(MUG, 1, 1200), removed(MUG)])
        .when(CartCommand::CheckOut { order_id: ORDER })
        .then_rejected("cart_empty");
}

#[test]
fn a_checked_out_cart_accepts_no_command() {
    let history = || [opened(), added(MUG, 1, 1200), checked_out()];
    given::<CartState>(history())
        .when(add(OWNER, TEAPOT, 1, on_sale(3000)))
        .then_rejected("cart_checked_out");
    given::<CartState>(history())
        .when(CartCommand::RemoveItem { product_id: MUG })
        .then_rejected("cart_checked_out");
    given::<CartState>(history())
        .when(CartCommand::CheckOut { order_id: Uuid::from_u128(0x0E) })
        .then_rejected("cart_checked_out");
}

#[test]
fn a_missing_cart_has_no_owner_and_no_lines() {
    let state = CartState::default();
    assert_eq!((state.owner(), state.lines(), state.checked_out_into()), (None, &[][..], None));
}

#[test]
fn evolve_refuses_streams_a_cart_cannot_have() {
    let inconsistent = |events: &[ShopEvent]| {
        matches!(rehydrate::<CartState>(events), Err(EvolveError::Inconsistent { .. }))
    };
    assert!(inconsistent(&[added(MUG, 1, 100)]));
    assert!(inconsistent(&[opened(), opened()]));
    assert!(inconsistent(&[opened(), removed(MUG)]));
    assert!(inconsistent(&[opened(), added(MUG, 1, 100), checked_out(), added(MUG, 1, 100)]));
    let foreign: ShopEvent =
        UserRegistered { email: "a@b.co".into(), display_name: "A".into(), marketing_opt_in: false }.into();
    assert!(matches!(rehydrate::<CartState>(&[opened(), foreign]), Err(EvolveError::WrongAggregate { .. })));
}
