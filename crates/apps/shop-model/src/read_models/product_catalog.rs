//! `product_catalog`: one row per product — price, stock, whether it is on sale.

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
                other => {
                    return Err(Unprojectable::new(format!("{} is not a product event", other.event_type())))
                }
            }
            product
        }
    };
    product.updated_at = at;
    product.version = stored_version(event);
    Ok(product)
}
