//! The shop's oracle: what every shop read-model row must be, folded in memory from the events
//! that were produced, with code of its own (not the read models' folds, so a bug there cannot
//! hide itself). The test kit compares the result with every row in PostgreSQL and every entry
//! in Redis ([`prism_testkit::oracle`]).
//!
//! Per aggregate the oracle applies versions 1, 2, 3, … once each, in order, stopping at the
//! first missing version ([`prism_testkit::oracle::applicable`]): exactly what the projector
//! must converge to after duplicates, redeliveries and reorderings.
//!
//! Stock in `product_catalog`: the oracle keeps each product's open reservations per order
//! (what `StockReserved` put aside, until `StockReleased` or `StockShipped` of that order)
//! and derives `reserved` as their sum and `available` as on hand minus reserved, instead of
//! adding and subtracting running totals as the read model's fold does.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use prism_events::Event;
use prism_testkit::oracle::{applicable, Expected};
use serde_json::{json, Value};
use shop_model::read_models::{CART_VIEW, ORDER_SUMMARY, PRODUCT_CATALOG, PRODUCT_SALES_DAILY, USER_PROFILE};
use shop_model::ShopEvent;

fn ts(at: DateTime<Utc>) -> Value {
    Value::String(at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn lines_json(lines: &[shop_model::events::OrderLine]) -> Value {
    Value::Array(
        lines
            .iter()
            .map(|l| json!({"product_id": l.product_id.to_string(), "quantity": l.quantity, "unit_price_cents": l.unit_price_cents}))
            .collect(),
    )
}

fn set(row: &mut Value, field: &str, value: Value) {
    if let Value::Object(map) = row {
        map.insert(field.to_owned(), value);
    }
}

fn get_i64(row: &Value, field: &str) -> i64 {
    row.get(field).and_then(Value::as_i64).unwrap_or(0)
}

/// Folds `events` into the rows every shop read model must hold.
pub fn fold(events: &[Event]) -> Expected {
    let mut out = Expected::for_read_models(&[
        ORDER_SUMMARY,
        PRODUCT_CATALOG,
        CART_VIEW,
        USER_PROFILE,
        PRODUCT_SALES_DAILY,
    ]);
    let mut holds = Holds::default();
    for event in applicable(events) {
        out.count(event);
        apply(&mut out, event);
        holds.apply(&mut out, event);
    }
    out
}

/// Units each open order holds, per product: product id → order id → units.
#[derive(Default)]
struct Holds(HashMap<String, HashMap<String, i64>>);

impl Holds {
    /// Follows the stock events and writes `reserved` and `available` into the product's row.
    fn apply(&mut self, out: &mut Expected, e: &Event) {
        let Some(body) = e.body::<ShopEvent>() else { return };
        if body.aggregate_type() != shop_model::aggregates::PRODUCT {
            return;
        }
        let product = e.meta.aggregate_id.to_string();
        let holds = self.0.entry(product.clone()).or_default();
        match body {
            ShopEvent::StockReserved(r) => {
                holds.insert(r.order_id.to_string(), i64::from(r.quantity));
            }
            ShopEvent::StockReleased(r) => {
                holds.remove(&r.order_id.to_string());
            }
            ShopEvent::StockShipped(r) => {
                holds.remove(&r.order_id.to_string());
            }
            // The other product events leave the holds as they are; listing and restocking
            // change what is on hand, so `available` is written again.
            _ => {}
        }
        let reserved: i64 = holds.values().sum();
        if let Some(row) = table(out, PRODUCT_CATALOG).get_mut(&product) {
            let on_hand = get_i64(row, "stock");
            set(row, "reserved", json!(reserved));
            set(row, "available", json!(on_hand - reserved));
        }
    }
}

fn table<'a>(out: &'a mut Expected, read_model: &'static str) -> &'a mut BTreeMap<String, Value> {
    out.rows.entry(read_model).or_default()
}

fn apply(out: &mut Expected, e: &Event) {
    let id = e.meta.aggregate_id.to_string();
    let at = ts(e.meta.occurred_at);
    let version = json!(e.meta.aggregate_version);
    let Some(body) = e.body::<ShopEvent>() else { return };
    match body {
        ShopEvent::UserRegistered(u) => {
            let row = table(out, USER_PROFILE).entry(id.clone()).or_insert_with(|| empty_profile(&id));
            set(row, "registered", json!(true));
            set(row, "email", json!(u.email));
            set(row, "display_name", json!(u.display_name));
            set(row, "marketing_opt_in", json!(u.marketing_opt_in));
            set(row, "registered_at", at);
            set(row, "version", version);
        }
        ShopEvent::UserProfileChanged(c) => {
            let row = table(out, USER_PROFILE).entry(id.clone()).or_insert_with(|| empty_profile(&id));
            if let Some(email) = &c.email {
                set(row, "email", json!(email));
            }
            if let Some(name) = &c.display_name {
                set(row, "display_name", json!(name));
            }
            if let Some(opt_in) = c.marketing_opt_in {
                set(row, "marketing_opt_in", json!(opt_in));
            }
            set(row, "version", version);
        }
        ShopEvent::ProductListed(p) => {
            table(out, PRODUCT_CATALOG).insert(
                id.clone(),
                json!({"product_id": id, "sku": p.sku, "name": p.name, "price_cents": p.price_cents, "stock": p.stock,
                       "reserved": 0, "available": p.stock, "listed": true, "delist_reason": null, "listed_at": at, "delisted_at": null, "updated_at": at, "version": version}),
            );
        }
        body @ (ShopEvent::ProductPriceChanged(_)
        | ShopEvent::ProductRestocked(_)
        | ShopEvent::ProductDelisted(_)
        | ShopEvent::StockReserved(_)
        | ShopEvent::StockReleased(_)
        | ShopEvent::StockShipped(_)) => {
            if let Some(row) = table(out, PRODUCT_CATALOG).get_mut(&id) {
                match body {
                    ShopEvent::ProductPriceChanged(c) => set(row, "price_cents", json!(c.price_cents)),
                    ShopEvent::ProductRestocked(r) => set(row, "stock", json!(r.stock_after)),
                    // Shipped units leave the warehouse; `reserved` and `available` are
                    // derived from the open holds (`Holds`).
                    ShopEvent::StockShipped(s) => {
                        let on_hand = get_i64(row, "stock") - i64::from(s.quantity);
                        set(row, "stock", json!(on_hand));
                    }
                    ShopEvent::ProductDelisted(d) => {
                        set(row, "listed", json!(false));
                        set(row, "delist_reason", json!(d.reason));
                        set(row, "delisted_at", at.clone());
                    }
                    _ => {}
                }
                set(row, "updated_at", at);
                set(row, "version", version);
            }
        }
        ShopEvent::CartOpened(c) => {
            table(out, CART_VIEW).insert(
                id.clone(),
                json!({"cart_id": id, "user_id": c.user_id.to_string(), "status": "open", "lines": [], "item_count": 0,
                       "total_cents": 0, "order_id": null, "opened_at": at, "checked_out_at": null, "updated_at": at, "version": version}),
            );
        }
        body @ (ShopEvent::CartItemAdded(_)
        | ShopEvent::CartItemRemoved(_)
        | ShopEvent::CartCheckedOut(_)) => {
            if let Some(row) = table(out, CART_VIEW).get_mut(&id) {
                let mut lines: Vec<Value> =
                    row.get("lines").and_then(Value::as_array).cloned().unwrap_or_default();
                match body {
                    ShopEvent::CartItemAdded(a) => {
                        let pid = a.product_id.to_string();
                        match lines.iter_mut().find(|l| l["product_id"] == json!(pid)) {
                            Some(line) => {
                                let q = line["quantity"].as_i64().unwrap_or(0) + i64::from(a.quantity);
                                line["quantity"] = json!(q);
                                line["unit_price_cents"] = json!(a.unit_price_cents);
                            }
                            None => lines.push(json!({"product_id": pid, "quantity": a.quantity, "unit_price_cents": a.unit_price_cents})),
                        }
                    }
                    ShopEvent::CartItemRemoved(r) => {
                        lines.retain(|l| l["product_id"] != json!(r.product_id.to_string()))
                    }
                    ShopEvent::CartCheckedOut(c) => {
                        set(row, "status", json!("checked_out"));
                        set(row, "order_id", json!(c.order_id.to_string()));
                        set(row, "checked_out_at", at.clone());
                    }
                    _ => {}
                }
                let count: i64 = lines.iter().map(|l| l["quantity"].as_i64().unwrap_or(0)).sum();
                let total: i64 = lines
                    .iter()
                    .map(|l| {
                        l["quantity"].as_i64().unwrap_or(0) * l["unit_price_cents"].as_i64().unwrap_or(0)
                    })
                    .sum();
                set(row, "lines", Value::Array(lines));
                set(row, "item_count", json!(count));
                set(row, "total_cents", json!(total));
                set(row, "updated_at", at);
                set(row, "version", version);
            }
        }
        ShopEvent::OrderPlaced(o) => {
            let items: i64 = o.lines.iter().map(|l| i64::from(l.quantity)).sum();
            table(out, ORDER_SUMMARY).insert(
                id.clone(),
                json!({"order_id": id, "user_id": o.user_id.to_string(), "cart_id": o.cart_id.map(|c| c.to_string()),
                       "status": "placed", "lines": lines_json(&o.lines), "item_count": items, "total_cents": o.total_cents,
                       "payment_method": null, "payment_reference": null, "payment_failure_reason": null, "carrier": null,
                       "tracking_code": null, "cancel_reason": null, "placed_at": at, "payment_requested_at": null,
                       "paid_at": null, "shipped_at": null, "cancelled_at": null, "updated_at": at, "version": version}),
            );
            let user = o.user_id.to_string();
            let profile =
                table(out, USER_PROFILE).entry(user.clone()).or_insert_with(|| empty_profile(&user));
            let count = get_i64(profile, "order_count") + 1;
            set(profile, "order_count", json!(count));
        }
        body @ (ShopEvent::OrderPaymentRequested(_)
        | ShopEvent::OrderPaymentSucceeded(_)
        | ShopEvent::OrderPaymentFailed(_)
        | ShopEvent::OrderShipped(_)
        | ShopEvent::OrderCancelled(_)) => {
            if let Some(row) = table(out, ORDER_SUMMARY).get_mut(&id) {
                match body {
                    ShopEvent::OrderPaymentRequested(r) => {
                        set(row, "status", json!("payment_pending"));
                        set(row, "payment_method", json!(r.method.as_str()));
                        set(row, "payment_requested_at", at.clone());
                    }
                    ShopEvent::OrderPaymentSucceeded(p) => {
                        set(row, "status", json!("paid"));
                        set(row, "payment_reference", json!(p.payment_reference));
                        set(row, "paid_at", at.clone());
                    }
                    ShopEvent::OrderPaymentFailed(f) => {
                        set(row, "status", json!("payment_failed"));
                        set(row, "payment_failure_reason", json!(f.reason));
                    }
                    ShopEvent::OrderShipped(s) => {
                        set(row, "status", json!("shipped"));
                        set(row, "carrier", json!(s.carrier));
                        set(row, "tracking_code", json!(s.tracking_code));
                        set(row, "shipped_at", at.clone());
                    }
                    ShopEvent::OrderCancelled(c) => {
                        set(row, "status", json!("cancelled"));
                        set(row, "cancel_reason", json!(c.reason));
                        set(row, "cancelled_at", at.clone());
                    }
                    _ => {}
                }
                set(row, "updated_at", at);
                set(row, "version", version);
            }
            if let ShopEvent::OrderPaymentSucceeded(p) = body {
                let user = p.user_id.to_string();
                let profile =
                    table(out, USER_PROFILE).entry(user.clone()).or_insert_with(|| empty_profile(&user));
                let paid = get_i64(profile, "paid_order_count") + 1;
                let spend = get_i64(profile, "lifetime_spend_cents") + p.amount_cents;
                set(profile, "paid_order_count", json!(paid));
                set(profile, "lifetime_spend_cents", json!(spend));
                let day = e.meta.occurred_at.date_naive().to_string();
                for line in &p.lines {
                    let key = format!("{}/{day}", line.product_id);
                    let row = table(out, PRODUCT_SALES_DAILY).entry(key).or_insert_with(|| {
                        json!({"product_id": line.product_id.to_string(), "day": day, "units": 0, "revenue_cents": 0, "order_count": 0})
                    });
                    let units = get_i64(row, "units") + i64::from(line.quantity);
                    let revenue =
                        get_i64(row, "revenue_cents") + i64::from(line.quantity) * line.unit_price_cents;
                    let orders = get_i64(row, "order_count") + 1;
                    set(row, "units", json!(units));
                    set(row, "revenue_cents", json!(revenue));
                    set(row, "order_count", json!(orders));
                }
            }
        }
    }
}

fn empty_profile(user: &str) -> Value {
    json!({"user_id": user, "registered": false, "email": null, "display_name": null, "marketing_opt_in": false,
           "registered_at": null, "order_count": 0, "paid_order_count": 0, "lifetime_spend_cents": 0, "version": 0})
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prism_events::Event;
    use serde_json::json;
    use shop_model::read_models::{product_catalog, ProductCatalogEntry, PRODUCT_CATALOG};

    use super::fold;
    use crate::testing::workload::Workload;

    /// The oracle and the read model's fold, written independently, agree on every product's
    /// stock, reservations and availability over a generated workload, and what they agree on
    /// keeps the rules: nothing reserved beyond what is on hand.
    #[test]
    fn the_oracle_and_the_catalog_fold_agree_on_stock() {
        let events = Workload::generate(23, 5000);
        let mut folded: BTreeMap<String, ProductCatalogEntry> = BTreeMap::new();
        for event in events.iter().filter(|e| e.meta.aggregate_type == shop_model::aggregates::PRODUCT) {
            let id = event.meta.aggregate_id.to_string();
            let view = product_catalog::apply(folded.remove(&id), event).expect("the fold applies");
            folded.insert(id, view);
        }
        let expected = fold(&events);
        let rows = &expected.rows[PRODUCT_CATALOG];
        assert_eq!(rows.len(), folded.len());
        let (mut holding, mut shipped_from) = (0, 0);
        for (id, view) in &folded {
            let row = &rows[id];
            let fields =
                |r: &serde_json::Value| json!([r["stock"], r["reserved"], r["available"], r["version"]]);
            assert_eq!(fields(row), json!([view.stock, view.reserved, view.available, view.version]), "{id}");
            assert!(0 <= view.reserved && view.reserved <= view.stock, "{id}: {view:?}");
            holding += usize::from(view.reserved > 0);
            shipped_from += usize::from(ships(&events, id));
        }
        assert!(
            holding > 0 && shipped_from > 0,
            "the workload must reserve and ship: {holding}, {shipped_from}"
        );
    }

    fn ships(events: &[Event], product: &str) -> bool {
        events.iter().any(|e| {
            e.meta.aggregate_id.to_string() == product
                && matches!(e.body::<shop_model::ShopEvent>(), Some(shop_model::ShopEvent::StockShipped(_)))
        })
    }
}
