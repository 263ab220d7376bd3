//! One module per read model: the row type and its fold.
//!
//! Row field names are the PostgreSQL column names (rows travel between Rust and SQL as JSON,
//! via `to_jsonb` and `jsonb_populate_recordset`) and the JSON the query API serves and Redis
//! caches. Every row carries the revision the cache compares before overwriting: the
//! aggregate version for entity views, a per-row change counter for totals.

pub mod cart_view;
pub mod order_summary;
pub mod product_catalog;
pub mod product_sales_daily;
pub mod user_profile;

pub use cart_view::{CartLineView, CartStatus, CartView};
pub use order_summary::{OrderStatus, OrderSummary};
pub use product_catalog::ProductCatalogEntry;
pub use product_sales_daily::{ProductSalesDaily, SalesDelta};
pub use user_profile::{UserProfile, UserTotalsDelta};

use prism_events::Event;

use crate::error::Unprojectable;

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
