//! The folds, given/when/then: each event type changes exactly what it should, and events a
//! view cannot follow are refused rather than guessed at.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use prism_events::{Event, EventPosition};
use shop_model::events::*;
use shop_model::read_models::*;
use shop_model::ShopEvent;
use uuid::Uuid;

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 23, minute, 0).single().expect("time")
}

fn event(aggregate: Uuid, version: u64, minute: u32, body: impl Into<ShopEvent>) -> Event {
    let position = EventPosition {
        event_id: Uuid::new_v4(),
        aggregate_id: aggregate,
        aggregate_version: version,
        occurred_at: at(minute),
        correlation_id: Uuid::nil(),
        causation_id: Uuid::nil(),
    };
    Event::new(position, body.into())
}

const ORDER: Uuid = Uuid::from_u128(0x0d);
const USER: Uuid = Uuid::from_u128(0x05);
const CART: Uuid = Uuid::from_u128(0x0c);
const P1: Uuid = Uuid::from_u128(0xa1);
const P2: Uuid = Uuid::from_u128(0xa2);

fn lines() -> Vec<OrderLine> {
    vec![
        OrderLine { product_id: P1, quantity: 2, unit_price_cents: 500 },
        OrderLine { product_id: P2, quantity: 1, unit_price_cents: 250 },
    ]
}

fn fold_order(events: &[Event]) -> Result<OrderSummary, prism_projections::Unprojectable> {
    let mut view = None;
    for e in events {
        view = Some(order_summary::apply(view, e)?);
    }
    Ok(view.expect("at least one event"))
}

#[test]
fn an_order_goes_from_placed_to_shipped() {
    let placed = event(
        ORDER,
        1,
        0,
        OrderPlaced { user_id: USER, cart_id: Some(CART), lines: lines(), total_cents: 1250 },
    );
    let view = fold_order(std::slice::from_ref(&placed)).expect("placed");
    assert_eq!(view.status, OrderStatus::Placed);
    assert_eq!((view.item_count, view.total_cents, view.version), (3, 1250, 1));
    assert_eq!((view.user_id, view.cart_id, view.placed_at), (USER, Some(CART), at(0)));

    let history = [
        placed,
        event(ORDER, 2, 1, OrderPaymentRequested { amount_cents: 1250, method: PaymentMethod::Card }),
        event(ORDER, 3, 2, OrderPaymentFailed { reason: "declined".into() }),
        event(ORDER, 4, 3, OrderPaymentRequested { amount_cents: 1250, method: PaymentMethod::Wallet }),
        event(
            ORDER,
            5,
            4,
            OrderPaymentSucceeded {
                payment_reference: "pay-9".into(),
                user_id: USER,
                amount_cents: 1250,
                lines: lines(),
            },
        ),
        event(ORDER, 6, 5, OrderShipped { carrier: "DHL".into(), tracking_code: "T1".into() }),
    ];
    let view = fold_order(&history).expect("folds");
    assert_eq!(view.status, OrderStatus::Shipped);
    assert_eq!(view.payment_method, Some(PaymentMethod::Wallet));
    assert_eq!(view.payment_failure_reason.as_deref(), Some("declined"));
    assert_eq!(view.payment_reference.as_deref(), Some("pay-9"));
    assert_eq!(
        (view.payment_requested_at, view.paid_at, view.shipped_at),
        (Some(at(3)), Some(at(4)), Some(at(5)))
    );
    assert_eq!((view.carrier.as_deref(), view.tracking_code.as_deref()), (Some("DHL"), Some("T1")));
    assert_eq!((view.updated_at, view.version), (at(5), 6));
}

#[test]
fn a_cancelled_order_records_why_and_when() {
    let view = fold_order(&[
        event(ORDER, 1, 0, OrderPlaced { user_id: USER, cart_id: None, lines: lines(), total_cents: 1250 }),
        event(ORDER, 2, 7, OrderCancelled { reason: "too slow".into() }),
    ])
    .expect("folds");
    assert_eq!(view.status, OrderStatus::Cancelled);
    assert_eq!((view.cancel_reason.as_deref(), view.cancelled_at), (Some("too slow"), Some(at(7))));
}

#[test]
fn order_events_without_a_placement_or_placed_twice_are_refused() {
    let err =
        fold_order(&[event(ORDER, 1, 0, OrderShipped { carrier: "x".into(), tracking_code: "y".into() })])
            .expect_err("no view");
    assert!(err.to_string().contains("never applied"), "{err}");
    let placed =
        event(ORDER, 1, 0, OrderPlaced { user_id: USER, cart_id: None, lines: lines(), total_cents: 1250 });
    let mut again = placed.clone();
    again.meta.aggregate_version = 2;
    assert!(fold_order(&[placed, again]).expect_err("twice").to_string().contains("already exists"));
}

#[test]
fn a_product_is_listed_repriced_restocked_and_delisted() {
    let mut view = None;
    let events = [
        event(
            P1,
            1,
            0,
            ProductListed { sku: "S-1".into(), name: "Teapot".into(), price_cents: 900, stock: 3 },
        ),
        event(P1, 2, 1, ProductPriceChanged { price_cents: 800, previous_price_cents: 900 }),
        event(P1, 3, 2, ProductRestocked { quantity: 7, stock_after: 10 }),
        event(P1, 4, 3, ProductRestocked { quantity: -4, stock_after: 6 }),
    ];
    for e in &events {
        view = Some(product_catalog::apply(view, e).expect("applies"));
    }
    let listed = view.clone().expect("view");
    assert_eq!((listed.price_cents, listed.stock, listed.listed, listed.version), (800, 6, true, 4));
    let delisted =
        product_catalog::apply(view, &event(P1, 5, 9, ProductDelisted { reason: "recalled".into() }))
            .expect("delists");
    assert!(!delisted.listed);
    assert_eq!((delisted.delist_reason.as_deref(), delisted.delisted_at), (Some("recalled"), Some(at(9))));
    assert_eq!((delisted.sku.as_str(), delisted.listed_at), ("S-1", at(0)));
}

#[test]
fn a_product_shows_what_orders_reserve_release_and_ship() {
    const OTHER: Uuid = Uuid::from_u128(0x0e);
    let stock = |v: &ProductCatalogEntry| (v.stock, v.reserved, v.available, v.version);
    let listed = product_catalog::apply(
        None,
        &event(
            P1,
            1,
            0,
            ProductListed { sku: "S-1".into(), name: "Lamp".into(), price_cents: 900, stock: 5 },
        ),
    )
    .expect("lists");
    assert_eq!(stock(&listed), (5, 0, 5, 1), "everything on hand is available at first");
    let steps: [(ShopEvent, (i64, i64, i64, i64)); 5] = [
        (StockReserved { order_id: ORDER, quantity: 2 }.into(), (5, 2, 3, 2)),
        (StockReserved { order_id: OTHER, quantity: 3 }.into(), (5, 5, 0, 3)),
        (StockReleased { order_id: OTHER, quantity: 3 }.into(), (5, 2, 3, 4)),
        (StockShipped { order_id: ORDER, quantity: 2 }.into(), (3, 0, 3, 5)),
        (ProductRestocked { quantity: 4, stock_after: 7 }.into(), (7, 0, 7, 6)),
    ];
    let mut view = listed;
    for (minute, (body, expected)) in steps.into_iter().enumerate() {
        let version = view.version as u64 + 1;
        view = product_catalog::apply(Some(view), &event(P1, version, minute as u32 + 1, body))
            .expect("applies");
        assert_eq!(stock(&view), expected, "after version {version}");
    }
    // Reservations made while listed still end after delisting, and the row shows it.
    let reserved =
        product_catalog::apply(Some(view), &event(P1, 7, 20, StockReserved { order_id: ORDER, quantity: 1 }))
            .expect("reserves");
    let delisted =
        product_catalog::apply(Some(reserved), &event(P1, 8, 21, ProductDelisted { reason: "gone".into() }))
            .expect("delists");
    let released = product_catalog::apply(
        Some(delisted),
        &event(P1, 9, 22, StockReleased { order_id: ORDER, quantity: 1 }),
    )
    .expect("releases after delisting");
    assert_eq!((stock(&released), released.listed), ((7, 0, 7, 9), false));
}

#[test]
fn a_product_refuses_to_reserve_more_than_it_has_or_release_what_it_never_held() {
    let listed = product_catalog::apply(
        None,
        &event(
            P1,
            1,
            0,
            ProductListed { sku: "S-1".into(), name: "Lamp".into(), price_cents: 900, stock: 2 },
        ),
    )
    .expect("lists");
    let over = product_catalog::apply(
        Some(listed.clone()),
        &event(P1, 2, 1, StockReserved { order_id: ORDER, quantity: 3 }),
    )
    .expect_err("3 reserved of 2");
    assert!(over.to_string().contains("3 units reserved of 2 on hand"), "{over}");
    let under = product_catalog::apply(
        Some(listed),
        &event(P1, 2, 1, StockReleased { order_id: ORDER, quantity: 1 }),
    )
    .expect_err("released what was never reserved");
    assert!(under.to_string().contains("-1 units reserved"), "{under}");
}

#[test]
fn a_cart_sums_its_lines_and_records_its_order() {
    let mut view = None;
    let events = [
        event(CART, 1, 0, CartOpened { user_id: USER }),
        event(CART, 2, 1, CartItemAdded { product_id: P1, quantity: 2, unit_price_cents: 500 }),
        event(CART, 3, 2, CartItemAdded { product_id: P2, quantity: 1, unit_price_cents: 250 }),
        event(CART, 4, 3, CartItemAdded { product_id: P1, quantity: 1, unit_price_cents: 450 }),
    ];
    for e in &events {
        view = Some(cart_view::apply(view, e).expect("applies"));
    }
    let cart = view.clone().expect("view");
    assert_eq!(
        cart.lines.iter().map(|l| (l.product_id, l.quantity, l.unit_price_cents)).collect::<Vec<_>>(),
        vec![(P1, 3, 450), (P2, 1, 250)]
    );
    assert_eq!((cart.item_count, cart.total_cents), (4, 1600));
    let removed =
        cart_view::apply(view, &event(CART, 5, 4, CartItemRemoved { product_id: P1 })).expect("removes");
    assert_eq!((removed.item_count, removed.total_cents, removed.lines.len()), (1, 250, 1));
    let err = cart_view::apply(Some(removed.clone()), &event(CART, 6, 5, CartItemRemoved { product_id: P1 }))
        .expect_err("not held");
    assert!(err.to_string().contains("does not hold"), "{err}");
    let done = cart_view::apply(Some(removed), &event(CART, 6, 6, CartCheckedOut { order_id: ORDER }))
        .expect("checks out");
    assert_eq!(
        (done.status, done.order_id, done.checked_out_at, done.version),
        (CartStatus::CheckedOut, Some(ORDER), Some(at(6)), 6)
    );
}

#[test]
fn a_profile_takes_registration_and_changes_and_keeps_totals_that_came_first() {
    let mut with_totals = UserProfile::empty(USER);
    with_totals.order_count = 2;
    let registered = user_profile::apply_account(
        Some(with_totals),
        &event(
            USER,
            1,
            0,
            UserRegistered { email: "a@b.io".into(), display_name: "Ada".into(), marketing_opt_in: false },
        ),
    )
    .expect("registers");
    assert!(registered.registered);
    assert_eq!((registered.order_count, registered.version), (2, 1));
    let changed = user_profile::apply_account(
        Some(registered.clone()),
        &event(
            USER,
            2,
            1,
            UserProfileChanged {
                email: None,
                display_name: Some("Ada L.".into()),
                marketing_opt_in: Some(true),
            },
        ),
    )
    .expect("changes");
    assert_eq!(
        (changed.email.as_deref(), changed.display_name.as_deref(), changed.marketing_opt_in),
        (Some("a@b.io"), Some("Ada L."), true)
    );
    assert_eq!(changed.version, 2);
    let twice = user_profile::apply_account(
        Some(changed),
        &event(
            USER,
            3,
            2,
            UserRegistered { email: "a@b.io".into(), display_name: "Ada".into(), marketing_opt_in: false },
        ),
    );
    assert!(twice.is_err());
    let unregistered = user_profile::apply_account(
        Some(UserProfile::empty(USER)),
        &event(
            USER,
            1,
            0,
            UserProfileChanged { email: Some("c@d.io".into()), display_name: None, marketing_opt_in: None },
        ),
    );
    assert!(unregistered.is_err(), "a change before registration has nothing to change");
}

#[test]
fn orders_credit_their_user_and_paid_lines_count_as_sales_of_their_day() {
    let placed =
        event(ORDER, 1, 0, OrderPlaced { user_id: USER, cart_id: None, lines: lines(), total_cents: 1250 });
    let paid = event(
        ORDER,
        3,
        59,
        OrderPaymentSucceeded {
            payment_reference: "p".into(),
            user_id: USER,
            amount_cents: 1250,
            lines: lines(),
        },
    );
    let credit = |orders, paid, cents| UserProfile {
        order_count: orders,
        paid_order_count: paid,
        lifetime_spend_cents: cents,
        ..UserProfile::empty(USER)
    };
    assert_eq!(user_profile::totals(&placed), vec![credit(1, 0, 0)]);
    assert_eq!(user_profile::totals(&paid), vec![credit(0, 1, 1250)]);
    assert!(user_profile::totals(&event(ORDER, 2, 1, OrderCancelled { reason: "x".into() })).is_empty());

    let day = NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
    let sold = |product_id, units, revenue_cents| ProductSalesDaily {
        product_id,
        day,
        units,
        revenue_cents,
        order_count: 1,
    };
    assert_eq!(product_sales_daily::sales(&paid), vec![sold(P1, 2, 1000), sold(P2, 1, 250)]);
    assert!(product_sales_daily::sales(&placed).is_empty(), "sales count when paid, not when placed");
}

#[test]
fn the_definitions_check_against_the_shop_events() {
    let registry = shop_model::registry();
    let models = all();
    assert_eq!(models.len(), 5);
    for model in &models {
        model.check(&registry).unwrap_or_else(|e| panic!("{e}"));
    }
    let profile = models.iter().find(|m| m.name() == USER_PROFILE).expect("user_profile");
    assert_eq!(profile.sources(), vec![shop_model::aggregates::USER, shop_model::aggregates::ORDER]);
    assert_eq!(profile.additive_columns(), vec!["lifetime_spend_cents", "order_count", "paid_order_count"]);
}
