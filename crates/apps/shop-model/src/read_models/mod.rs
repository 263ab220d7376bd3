//! The shop's read models: one module per read model with its row type and its fold, and
//! [`all`], their definitions for the engine.
//!
//! Row field names are the PostgreSQL column names (the engine moves rows between Rust and SQL
//! as JSON) and the JSON the query API serves and Redis caches. Tables are in `sql/` of this
//! crate.

pub mod cart_view;
pub mod order_summary;
pub mod product_catalog;
pub mod product_sales_daily;
pub mod user_profile;

pub use cart_view::{CartLineView, CartStatus, CartView};
pub use order_summary::{OrderStatus, OrderSummary};
pub use product_catalog::ProductCatalogEntry;
pub use product_sales_daily::ProductSalesDaily;
pub use user_profile::UserProfile;

use prism_events::Event;
use prism_projections::{ReadModel, Unprojectable};

use crate::aggregates;
use crate::events::ShopEvent;

/// One row per order; cached.
pub const ORDER_SUMMARY: &str = "order_summary";
/// One row per product; cached.
pub const PRODUCT_CATALOG: &str = "product_catalog";
/// One row per cart; cached.
pub const CART_VIEW: &str = "cart_view";
/// One row per user, with order totals from the order stream; cached.
pub const USER_PROFILE: &str = "user_profile";
/// Units and revenue per product and day, fed by every order.
pub const PRODUCT_SALES_DAILY: &str = "product_sales_daily";

/// The shop's five read models, as the engine runs them.
pub fn all() -> Vec<ReadModel> {
    vec![
        ReadModel::new(ORDER_SUMMARY)
            .table(include_str!("../../sql/order_summary.sql"))
            .key(&["order_id"])
            .cached("order")
            .fold(aggregates::ORDER, order_summary::apply),
        ReadModel::new(PRODUCT_CATALOG)
            .table(include_str!("../../sql/product_catalog.sql"))
            .key(&["product_id"])
            .cached("product")
            .fold(aggregates::PRODUCT, product_catalog::apply),
        ReadModel::new(CART_VIEW)
            .table(include_str!("../../sql/cart_view.sql"))
            .key(&["cart_id"])
            .cached("cart")
            .fold(aggregates::CART, cart_view::apply),
        ReadModel::new(USER_PROFILE)
            .table(include_str!("../../sql/user_profile.sql"))
            .key(&["user_id"])
            .cached("user")
            .fold(aggregates::USER, user_profile::apply_account)
            .sum(aggregates::ORDER, user_profile::TOTALS, user_profile::totals),
        ReadModel::new(PRODUCT_SALES_DAILY)
            .table(include_str!("../../sql/product_sales_daily.sql"))
            .key(&["product_id", "day"])
            .sum(aggregates::ORDER, product_sales_daily::AMOUNTS, product_sales_daily::sales),
    ]
}

/// The shop's body of an event, or why a fold cannot read it (an event of another
/// application reaching the shop's projector).
pub fn shop_event(event: &Event) -> Result<&ShopEvent, Unprojectable> {
    event.body::<ShopEvent>().ok_or_else(|| {
        Unprojectable::new(format!(
            "{} {} is not a shop event",
            event.meta.aggregate_type,
            event.event_type()
        ))
    })
}

/// The view an event continues, or why there is none: every event but a creating one needs
/// the view its aggregate's first event created.
fn existing<V>(view: Option<V>, event: &Event) -> Result<V, Unprojectable> {
    view.ok_or_else(|| {
        Unprojectable::new(format!(
            "{} at version {} of {} {} has no view to apply to: the aggregate's creating event was never applied",
            event.event_type(),
            event.meta.aggregate_version,
            event.meta.aggregate_type,
            event.meta.aggregate_id
        ))
    })
}

/// Refuses a creating event for a view that already exists.
fn absent<V>(view: &Option<V>, event: &Event) -> Result<(), Unprojectable> {
    match view {
        None => Ok(()),
        Some(_) => Err(Unprojectable::new(format!(
            "{} at version {} would create {} {}, which already exists",
            event.event_type(),
            event.meta.aggregate_version,
            event.meta.aggregate_type,
            event.meta.aggregate_id
        ))),
    }
}

/// Version as stored (PostgreSQL bigint). Versions are checked to fit on decode.
fn stored_version(event: &Event) -> i64 {
    i64::try_from(event.meta.aggregate_version).unwrap_or(i64::MAX)
}
