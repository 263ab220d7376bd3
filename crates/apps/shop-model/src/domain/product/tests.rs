//! Given/when/then tests of the `product` aggregate: every command's success and refusals.

use crate::events::fields::bounds::MAX_STOCK;
use crate::events::ShopEvent;
use crate::events::{
    OrderCancelled, ProductDelisted, ProductListed, ProductPriceChanged, ProductRestocked, StockReleased,
    StockReserved, StockShipped,
};
use uuid::Uuid;

use super::{ProductCommand, ProductState};
use crate::domain::testing::given;
use crate::domain::{Aggregate, EvolveError};

fn listed(stock: i64) -> ShopEvent {
    ProductListed { sku: "MUG-01".into(), name: "Mug".into(), price_cents: 1200, stock }.into()
}

fn delisted() -> ShopEvent {
    ProductDelisted { reason: "discontinued".into() }.into()
}

fn list(sku: &str, price_cents: i64, stock: i64) -> ProductCommand {
    ProductCommand::List { sku: sku.into(), name: "Teapot".into(), price_cents, stock }
}

fn restock(quantity: i64) -> ProductCommand {
    ProductCommand::Restock { quantity }
}

fn change_price(price_cents: i64) -> ProductCommand {
    ProductCommand::ChangePrice { price_cents }
}

fn delist() -> ProductCommand {
    ProductCommand::Delist { reason: "end of line".into() }
}

const ORDER_A: Uuid = Uuid::from_u128(0x0A);
const ORDER_B: Uuid = Uuid::from_u128(0x0B);

fn reserved(order_id: Uuid, quantity: u32) -> ShopEvent {
    StockReserved { order_id, quantity }.into()
}

fn released(order_id: Uuid, quantity: u32) -> ShopEvent {
    StockReleased { order_id, quantity }.into()
}

fn shipped(order_id: Uuid, quantity: u32) -> ShopEvent {
    StockShipped { order_id, quantity }.into()
}

fn reserve(order_id: Uuid, quantity: u32) -> ProductCommand {
    ProductCommand::Reserve { order_id, quantity }
}

/// `(stock, reserved, available)` of a product state.
fn stock_of(state: &ProductState) -> (i64, i64, i64) {
    let product = state.product().expect("listed");
    (product.stock, product.reserved, product.available())
}

#[test]
fn list_creates_the_product() {
    let state = given::<ProductState>([]).when(list("TEA-7", 2500, 3)).then_events([ProductListed {
        sku: "TEA-7".into(),
        name: "Teapot".into(),
        price_cents: 2500,
        stock: 3,
    }
    .into()]);
    let product = state.product().expect("listed");
    assert!(product.listed);
    assert_eq!((product.price_cents, product.stock), (2500, 3));
}

#[test]
fn list_twice_is_rejected_even_after_delisting() {
    given::<ProductState>([listed(1)]).when(list("TEA-7", 2500, 3)).then_rejected("already_listed");
    given::<ProductState>([listed(1), delisted()])
        .when(list("TEA-7", 2500, 3))
        .then_rejected("already_listed");
}

#[test]
fn list_checks_fields_with_the_contract() {
    given::<ProductState>([]).when(list("has space", 2500, 3)).then_invalid("sku");
    given::<ProductState>([]).when(list("TEA-7", 0, 3)).then_invalid("price_cents");
    given::<ProductState>([]).when(list("TEA-7", 2500, -1)).then_invalid("stock");
    given::<ProductState>([]).when(list("TEA-7", 2500, MAX_STOCK + 1)).then_invalid("stock");
}

#[test]
fn commands_on_a_never_listed_product_are_not_found() {
    given::<ProductState>([]).when(change_price(100)).then_not_found();
    given::<ProductState>([]).when(restock(5)).then_not_found();
    given::<ProductState>([]).when(delist()).then_not_found();
}

#[test]
fn change_price_records_the_previous_price() {
    let state = given::<ProductState>([listed(1)])
        .when(change_price(1500))
        .then_events([ProductPriceChanged { price_cents: 1500, previous_price_cents: 1200 }.into()]);
    assert_eq!(state.product().map(|p| p.price_cents), Some(1500));
}

#[test]
fn change_price_refusals() {
    given::<ProductState>([listed(1)]).when(change_price(1200)).then_rejected("price_unchanged");
    given::<ProductState>([listed(1)]).when(change_price(-5)).then_invalid("price_cents");
    given::<ProductState>([listed(1), delisted()]).when(change_price(1500)).then_rejected("product_delisted");
}

#[test]
fn restock_adds_and_corrects_stock() {
    let state = given::<ProductState>([listed(10)]).when(restock(5)).then_events([ProductRestocked {
        quantity: 5,
        stock_after: 15,
    }
    .into()]);
    assert_eq!(state.product().map(|p| p.stock), Some(15));
    given::<ProductState>([listed(10)]).when(restock(-10)).then_events([ProductRestocked {
        quantity: -10,
        stock_after: 0,
    }
    .into()]);
}

#[test]
fn restock_below_zero_is_rejected_with_the_numbers() {
    let state: ProductState = crate::domain::rehydrate(&[listed(3)]).expect("folds");
    match state.decide(&restock(-4)) {
        Err(crate::domain::DomainError::Rejected { reason, message }) => {
            assert_eq!(reason.as_str(), "stock_below_zero");
            assert!(message.contains('3') && message.contains("-4"), "message: {message}");
        }
        other => panic!("expected stock_below_zero, got {other:?}"),
    }
    given::<ProductState>([listed(3)]).when(restock(i64::MIN)).then_invalid("quantity");
}

#[test]
fn restock_above_the_maximum_is_rejected() {
    given::<ProductState>([listed(MAX_STOCK - 1)]).when(restock(2)).then_rejected("stock_above_maximum");
    given::<ProductState>([listed(MAX_STOCK - 1)]).when(restock(1)).then_events([ProductRestocked {
        quantity: 1,
        stock_after: MAX_STOCK,
    }
    .into()]);
}

#[test]
fn restock_refusals() {
    given::<ProductState>([listed(3)]).when(restock(0)).then_invalid("quantity");
    given::<ProductState>([listed(3)]).when(restock(MAX_STOCK + 1)).then_invalid("quantity");
    given::<ProductState>([listed(3), delisted()]).when(restock(1)).then_rejected("product_delisted");
}

#[test]
fn delist_takes_the_product_off_sale() {
    let state = given::<ProductState>([listed(3)])
        .when(delist())
        .then_events([ProductDelisted { reason: "end of line".into() }.into()]);
    assert_eq!(state.product().map(|p| p.listed), Some(false));
    given::<ProductState>([listed(3), delisted()]).when(delist()).then_rejected("product_delisted");
    given::<ProductState>([listed(3)])
        .when(ProductCommand::Delist { reason: "x".repeat(501) })
        .then_invalid("reason");
}

#[test]
fn reserve_sets_units_aside_for_the_order() {
    let state =
        given::<ProductState>([listed(5)]).when(reserve(ORDER_A, 3)).then_events([reserved(ORDER_A, 3)]);
    assert_eq!(stock_of(&state), (5, 3, 2), "still on hand, no longer available");
    assert_eq!(state.product().map(|p| p.reservations.get(&ORDER_A).copied()), Some(Some(3)));
    // The last available units can be taken, exactly.
    let state = given::<ProductState>([listed(5), reserved(ORDER_A, 3)])
        .when(reserve(ORDER_B, 2))
        .then_events([reserved(ORDER_B, 2)]);
    assert_eq!(stock_of(&state), (5, 5, 0));
}

#[test]
fn reserving_more_than_is_available_is_rejected_with_the_numbers() {
    // The case: 50 units ordered, 2 in stock.
    let state: ProductState = crate::domain::rehydrate(&[listed(2)]).expect("folds");
    match state.decide(&reserve(ORDER_A, 50)) {
        Err(crate::domain::DomainError::Rejected { reason, message }) => {
            assert_eq!(reason.as_str(), "insufficient_stock");
            assert!(message.contains("50 units requested, 2 available"), "message: {message}");
        }
        other => panic!("expected insufficient_stock, got {other:?}"),
    }
    // Reserved units are not available, though they are on hand.
    let state: ProductState = crate::domain::rehydrate(&[listed(5), reserved(ORDER_A, 4)]).expect("folds");
    match state.decide(&reserve(ORDER_B, 2)) {
        Err(crate::domain::DomainError::Rejected { reason, message }) => {
            assert_eq!(reason.as_str(), "insufficient_stock");
            assert!(
                message.contains("2 units requested, 1 available") && message.contains("4 reserved"),
                "message: {message}"
            );
        }
        other => panic!("expected insufficient_stock, got {other:?}"),
    }
    given::<ProductState>([listed(0)]).when(reserve(ORDER_A, 1)).then_rejected("insufficient_stock");
}

#[test]
fn reserve_refusals() {
    given::<ProductState>([]).when(reserve(ORDER_A, 1)).then_not_found();
    given::<ProductState>([listed(5), delisted()])
        .when(reserve(ORDER_A, 1))
        .then_rejected("product_delisted");
    given::<ProductState>([listed(5), reserved(ORDER_A, 1)])
        .when(reserve(ORDER_A, 1))
        .then_rejected("already_reserved");
    given::<ProductState>([listed(5)]).when(reserve(ORDER_A, 0)).then_invalid("quantity");
    given::<ProductState>([listed(5_000)]).when(reserve(ORDER_A, 1_000)).then_invalid("quantity");
}

#[test]
fn release_gives_back_exactly_what_the_order_held() {
    let history = [listed(5), reserved(ORDER_A, 3), reserved(ORDER_B, 1)];
    let state = given::<ProductState>(history.clone())
        .when(ProductCommand::Release { order_id: ORDER_A })
        .then_events([released(ORDER_A, 3)]);
    assert_eq!(stock_of(&state), (5, 1, 4));
    // Delisting does not strand reserved units.
    let state = given::<ProductState>([listed(5), reserved(ORDER_A, 3), delisted()])
        .when(ProductCommand::Release { order_id: ORDER_A })
        .then_events([released(ORDER_A, 3)]);
    assert_eq!(stock_of(&state), (5, 0, 5));
}

#[test]
fn ship_reserved_takes_the_units_out_of_stock() {
    let state = given::<ProductState>([listed(5), reserved(ORDER_A, 3)])
        .when(ProductCommand::ShipReserved { order_id: ORDER_A })
        .then_events([shipped(ORDER_A, 3)]);
    assert_eq!(stock_of(&state), (2, 0, 2), "on hand drops, available does not change");
    let state = given::<ProductState>([listed(5), reserved(ORDER_A, 3), delisted()])
        .when(ProductCommand::ShipReserved { order_id: ORDER_A })
        .then_events([shipped(ORDER_A, 3)]);
    assert_eq!(stock_of(&state), (2, 0, 2));
}

#[test]
fn release_and_ship_of_an_order_holding_nothing_are_no_ops() {
    for command in
        [ProductCommand::Release { order_id: ORDER_B }, ProductCommand::ShipReserved { order_id: ORDER_B }]
    {
        let state: ProductState =
            crate::domain::rehydrate(&[listed(5), reserved(ORDER_A, 3)]).expect("folds");
        assert_eq!(state.decide(&command), Ok(vec![]), "{command:?}");
        // A product that was never listed holds nothing either.
        assert_eq!(ProductState::default().decide(&command), Ok(vec![]), "{command:?}");
    }
    // Released once, nothing is left to release or ship.
    let state: ProductState =
        crate::domain::rehydrate(&[listed(5), reserved(ORDER_A, 3), released(ORDER_A, 3)]).expect("folds");
    assert_eq!(state.decide(&ProductCommand::Release { order_id: ORDER_A }), Ok(vec![]));
    assert_eq!(state.decide(&ProductCommand::ShipReserved { order_id: ORDER_A }), Ok(vec![]));
}

#[test]
fn a_correction_cannot_take_stock_below_what_is_reserved() {
    let state: ProductState = crate::domain::rehydrate(&[listed(5), reserved(ORDER_A, 3)]).expect("folds");
    match state.decide(&restock(-3)) {
        Err(crate::domain::DomainError::Rejected { reason, message }) => {
            assert_eq!(reason.as_str(), "stock_below_reserved");
            assert!(message.contains("3 of them reserved") && message.contains("-3"), "message: {message}");
        }
        other => panic!("expected stock_below_reserved, got {other:?}"),
    }
    let state = given::<ProductState>([listed(5), reserved(ORDER_A, 3)])
        .when(restock(-2))
        .then_events([ProductRestocked { quantity: -2, stock_after: 3 }.into()]);
    assert_eq!(stock_of(&state), (3, 3, 0));
    // Below zero is still below zero, whatever is reserved.
    given::<ProductState>([listed(5), reserved(ORDER_A, 3)])
        .when(restock(-6))
        .then_rejected("stock_below_zero");
}

#[test]
fn evolve_refuses_reservation_streams_a_product_cannot_have() {
    let fold = |events: &[ShopEvent]| crate::domain::rehydrate::<ProductState>(events);
    let inconsistent =
        |r: Result<ProductState, EvolveError>| matches!(r, Err(EvolveError::Inconsistent { .. }));
    assert!(inconsistent(fold(&[listed(2), reserved(ORDER_A, 3)])), "more than available");
    assert!(inconsistent(fold(&[listed(5), reserved(ORDER_A, 1), reserved(ORDER_A, 1)])), "twice per order");
    assert!(inconsistent(fold(&[listed(5), delisted(), reserved(ORDER_A, 1)])), "after delisting");
    assert!(inconsistent(fold(&[listed(5), released(ORDER_A, 1)])), "nothing held");
    assert!(
        inconsistent(fold(&[listed(5), reserved(ORDER_A, 2), released(ORDER_A, 1)])),
        "not what was held"
    );
    assert!(inconsistent(fold(&[listed(5), reserved(ORDER_A, 2), shipped(ORDER_B, 2)])), "another order's");
    assert!(inconsistent(fold(&[
        listed(5),
        reserved(ORDER_A, 2),
        released(ORDER_A, 2),
        shipped(ORDER_A, 2)
    ])));
    let restocked: ShopEvent = ProductRestocked { quantity: -4, stock_after: 1 }.into();
    assert!(inconsistent(fold(&[listed(5), reserved(ORDER_A, 2), restocked])), "below reserved");
    let state = fold(&[
        listed(5),
        reserved(ORDER_A, 2),
        reserved(ORDER_B, 1),
        shipped(ORDER_A, 2),
        released(ORDER_B, 1),
    ])
    .expect("a consistent stream folds");
    assert_eq!(stock_of(&state), (3, 0, 3));
    assert!(state.product().is_some_and(|p| p.reservations.is_empty()));
}

#[test]
fn evolve_refuses_streams_a_product_cannot_have() {
    let fold = |events: &[ShopEvent]| crate::domain::rehydrate::<ProductState>(events);
    let restocked: ShopEvent = ProductRestocked { quantity: 1, stock_after: 4 }.into();
    let repriced: ShopEvent = ProductPriceChanged { price_cents: 5, previous_price_cents: 999 }.into();
    let foreign: ShopEvent = OrderCancelled { reason: "x".into() }.into();
    let inconsistent =
        |r: Result<ProductState, EvolveError>| matches!(r, Err(EvolveError::Inconsistent { .. }));
    assert!(inconsistent(fold(std::slice::from_ref(&restocked))));
    assert!(inconsistent(fold(&[listed(3), listed(3)])));
    assert!(inconsistent(fold(&[listed(3), delisted(), restocked.clone()])));
    assert!(inconsistent(fold(&[listed(9), restocked.clone()])), "stock_after must add up");
    assert!(inconsistent(fold(&[listed(3), repriced])), "previous price must match");
    assert!(fold(&[listed(3), restocked]).is_ok());
    assert!(matches!(fold(&[listed(3), foreign]), Err(EvolveError::WrongAggregate { .. })));
}
