//! Given/when/then tests of the `product` aggregate: every command's success and refusals.

use crate::events::fields::bounds::MAX_STOCK;
use crate::events::{
    OrderCancelled, ProductDelisted, ProductListed, ProductPriceChanged, ProductRestocked,
};
use crate::events::ShopEvent;

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
