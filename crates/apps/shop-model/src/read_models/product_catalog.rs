//! `product_catalog`: one row per product — price, stock, whether it is on sale.
//!
//! Stock is shown three ways, as the product aggregate keeps it: `stock` on hand, `reserved`
//! by open orders (placed, neither shipped nor cancelled), and `available = stock - reserved`,
//! what a new order can take. `available` is stored rather than computed by readers so a
//! query can filter and sort on it.

use chrono::{DateTime, Utc};
use prism_events::Event;
use prism_projections::Unprojectable;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{absent, existing, shop_event, stored_version};
use crate::events::ShopEvent;

/// One product as the shop front shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductCatalogEntry {
    /// The product (the aggregate id).
    pub product_id: Uuid,
    /// The merchant's stock-keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Current unit price, in cents.
    pub price_cents: i64,
    /// Units on hand.
    pub stock: i64,
    /// Units of `stock` held by open orders.
    pub reserved: i64,
    /// Units a new order can take: `stock - reserved`.
    pub available: i64,
    /// Whether it is on sale (false once delisted).
    pub listed: bool,
    /// Why it was delisted, if it was.
    pub delist_reason: Option<String>,
    /// When it was listed.
    pub listed_at: DateTime<Utc>,
    /// When it was delisted.
    pub delisted_at: Option<DateTime<Utc>>,
    /// Time of the latest event applied.
    pub updated_at: DateTime<Utc>,
    /// The product's aggregate version this row reflects .
    pub version: i64,
}

/// Folds one product event into the catalog entry.
pub fn apply(view: Option<ProductCatalogEntry>, event: &Event) -> Result<ProductCatalogEntry, Unprojectable> {
    let at = event.meta.occurred_at;
    let mut product = match shop_event(event)? {
        ShopEvent::ProductListed(listed) => {
            absent(&view, event)?;
            ProductCatalogEntry {
                product_id: event.meta.aggregate_id,
                sku: listed.sku.clone(),
                name: listed.name.clone(),
                price_cents: listed.price_cents,
                stock: listed.stock,
                reserved: 0,
                available: listed.stock,
                listed: true,
                delist_reason: None,
                listed_at: at,
                delisted_at: None,
                updated_at: at,
                version: 0,
            }
        }
        body => {
            let mut product = existing(view, event)?;
            match body {
                ShopEvent::ProductPriceChanged(e) => product.price_cents = e.price_cents,
                // The event states the resulting stock: the view takes it rather than summing
                // deltas, so it can never drift from the aggregate.
                ShopEvent::ProductRestocked(e) => product.stock = e.stock_after,
                ShopEvent::ProductDelisted(e) => {
                    product.listed = false;
                    product.delist_reason = Some(e.reason.clone());
                    product.delisted_at = Some(at);
                }
                // The version gate applies each event once, in order: summing is exact.
                ShopEvent::StockReserved(e) => product.reserved += i64::from(e.quantity),
                ShopEvent::StockReleased(e) => product.reserved -= i64::from(e.quantity),
                ShopEvent::StockShipped(e) => {
                    product.reserved -= i64::from(e.quantity);
                    product.stock -= i64::from(e.quantity);
                }
                other => {
                    return Err(Unprojectable::new(format!("{} is not a product event", other.event_type())))
                }
            }
            product
        }
    };
    if product.reserved < 0 || product.reserved > product.stock {
        return Err(Unprojectable::new(format!(
            "{} at version {} leaves {} units reserved of {} on hand",
            event.event_type(),
            event.meta.aggregate_version,
            product.reserved,
            product.stock
        )));
    }
    product.available = product.stock - product.reserved;
    product.updated_at = at;
    product.version = stored_version(event);
    Ok(product)
}
